// The training configuration: DeepSpeed's JSON, unchanged (same keys, defaults, batch arithmetic
// and errors), plus dstrain's own sections `model`, `data`, `trainer`, `comms` and our keys in
// `checkpoint`. docs/config.md lists every key. No LibTorch: dsrun --dry-run and doctor use it.
// Thread safety: pure functions over values; a Config is a value.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/config/zero_stage.h"
#include "io/env.h"
#include "io/status.h"

namespace ds::engine {

// ---- DeepSpeed's sections

// train_batch_size = train_micro_batch_size_per_gpu * gradient_accumulation_steps *
// data_parallel_size, always (any two of the three keys give the third).
struct BatchConfig {
  int64_t train_batch_size = 0;             // samples per optimizer step, all ranks
  int64_t micro_batch_per_gpu = 0;          // samples per forward/backward on one rank
  int64_t gradient_accumulation_steps = 0;  // micro batches per optimizer step
  int64_t data_parallel_size = 1;           // ranks (Overrides::world_size)
};

enum class Precision : uint8_t { kFp32, kFp16, kBf16 };
std::string_view PrecisionName(Precision p);  // "fp32", "fp16", "bf16"

// fp16: dynamic loss scaling as DeepSpeed's DynamicLossScaler when loss_scale == 0.
struct Fp16Config {
  bool enabled = false;
  bool auto_cast = false;
  double loss_scale = 0;             // 0: dynamic; otherwise a static scale
  int64_t initial_scale_power = 16;  // dynamic scaling starts at 2^power
  int64_t loss_scale_window = 1000;  // steps without overflow before the scale doubles
  int64_t hysteresis = 2;            // overflows tolerated before the scale halves
  bool consecutive_hysteresis = false;
  int64_t min_loss_scale = 1;
  bool dynamic() const { return loss_scale == 0; }
};

struct Bf16Config {
  bool enabled = false;
  bool immediate_grad_update = false;
  bool check_grad_overflow = true;
};

// DeepSpeed's "Adam" is AdamW (decoupled weight decay) unless params.adam_w_mode is false.
struct OptimizerConfig {
  enum class Type : uint8_t { kAdam, kAdamW };
  Type type = Type::kAdamW;
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0;
  bool bias_correction = true;
  bool adam_w_mode = true;  // effective: true for AdamW, params.adam_w_mode for Adam
};

// DeepSpeed's schedules (deepspeed/runtime/lr_schedules.py); one flat struct, each schedule
// reads its own fields. Steps count optimizer steps.
struct SchedulerConfig {
  enum class Type : uint8_t {
    kNone,
    kWarmupLR,
    kWarmupDecayLR,
    kWarmupCosineLR,
    kOneCycle,
    kLRRangeTest
  };
  enum class WarmupType : uint8_t { kLog, kLinear };
  Type type = Type::kNone;  // kNone: constant optimizer.params.lr
  // WarmupLR, WarmupDecayLR, WarmupCosineLR
  int64_t warmup_num_steps = 1000;  // DeepSpeed uses max(2, this)
  WarmupType warmup_type = WarmupType::kLog;
  int64_t total_num_steps = 0;  // WarmupDecayLR, WarmupCosineLR; 0 with "auto": the run's length
  // WarmupLR, WarmupDecayLR (absolute rates)
  double warmup_min_lr = 0;
  double warmup_max_lr = 1e-3;  // WarmupLR: the optimizer's lr unless given
  // WarmupCosineLR (ratios of the optimizer's lr)
  double warmup_min_ratio = 0;
  double cos_min_ratio = 1e-4;
  // OneCycle
  double cycle_min_lr = 0;
  double cycle_max_lr = 0;
  double decay_lr_rate = 0;
  double cycle_first_step_size = 2000;
  double cycle_second_step_size = 2000;  // resolved: cycle_first_step_size unless given
  int64_t cycle_first_stair_count = 0;
  int64_t cycle_second_stair_count = 0;  // resolved: cycle_first_stair_count unless given
  double decay_step_size = 0;
  bool cycle_momentum = true;
  double cycle_min_mom = 0.8;
  double cycle_max_mom = 0.9;
  double decay_mom_rate = 0;
  // LRRangeTest
  double lr_range_test_min_lr = 1e-3;
  int64_t lr_range_test_step_size = 2000;
  double lr_range_test_step_rate = 1.0;
  bool lr_range_test_staircase = false;
};
std::string_view SchedulerTypeName(SchedulerConfig::Type t);  // DeepSpeed's spelling; "none"

struct OffloadConfig {
  // kNvme: offload_optimizer only (stages 1-3); offload_param's is refused (not built yet).
  enum class Device : uint8_t { kNone, kCpu, kNvme };
  Device device = Device::kNone;
  bool pin_memory = true;
  std::string nvme_path;     // kNvme: the directory the swap files go under
  int64_t buffer_count = 4;  // kNvme: host buffers of each swap stream (DeepSpeed's default 4)
};

// zero_optimization: the keys dstrain implements (the rest are in Config::resolved).
struct ZeroConfig {
  int stage = 0;  // 0 off; 1 optimizer state; 2 + gradients; 3 + parameters are partitioned
  // What `stage` partitions (checked when the config is read: ZeroStage::Of).
  ZeroStage Stage() const {
    Result<ZeroStage> s = ZeroStage::Of(stage);
    return s.ok() ? *s : ZeroStage();
  }
  bool contiguous_gradients = true;
  bool reduce_scatter = true;
  int64_t reduce_bucket_size = 500'000'000;  // elements
  bool allgather_partitions = true;
  int64_t allgather_bucket_size = 500'000'000;  // elements
  bool overlap_comm = false;                    // DeepSpeed's default: true at stage 3 only
  OffloadConfig offload_optimizer;              // stages 1-3
  // The top-level `aio` section, for NVMe offload: the swap files stream through the host in
  // chunks of block_size * queue_depth bytes.
  int64_t aio_block_size = 1'048'576;  // bytes
  int64_t aio_queue_depth = 8;
  OffloadConfig offload_param;                           // stage 3 only
  int64_t sub_group_size = 1'000'000'000;                // elements
  int64_t stage3_prefetch_bucket_size = 50'000'000;      // elements
  int64_t stage3_param_persistence_threshold = 100'000;  // elements
  int64_t stage3_max_live_parameters = 1'000'000'000;    // elements
  int64_t stage3_max_reuse_distance = 1'000'000'000;     // elements
  bool stage3_gather_16bit_weights_on_model_save = false;
  bool round_robin_gradients = false;
};

// Gradient reduction and the process group (DeepSpeed's top-level keys plus our `comms`).
struct CommsConfig {
  // communication_data_type: empty means "the training precision" (DeepSpeed's null).
  std::optional<Precision> communication_data_type;
  bool prescale_gradients = false;
  double gradient_predivide_factor = 1.0;
  // comms.timeout_s (ours; DeepSpeed has no key: it reads DEEPSPEED_TIMEOUT, minutes, default
  // 10). How long a collective may wait before the job fails.
  int64_t timeout_s = 600;
};

struct MonitorConfig {
  struct Writer {  // tensorboard, csv_monitor
    bool enabled = false;
    std::string output_path;  // "" : under trainer.output_dir
    std::string job_name = "DeepSpeedJobName";
  };
  Writer tensorboard;
  Writer csv_monitor;
  // steps_per_print: DeepSpeed 0.19 defaults to null (no periodic line); dstrain prints its
  // progress line every 10 steps then, as DeepSpeed did before.
  int64_t steps_per_print = 10;
  bool wall_clock_breakdown = false;  // or'ed with flops_profiler.enabled, as DeepSpeed does
};

// ---- dstrain's sections

// The built-in GPT: pre-LN GPT-2 with tied input/output embeddings.
struct ModelConfig {
  std::string preset;  // "" when given by sizes
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t d_model = 0;
  int64_t seq_len = 0;  // context length (wpe rows)
  int64_t vocab = 0;    // not padded: GPT-2 presets use 50257
  // Recompute each block's activations in the backward pass instead of keeping them (ours:
  // DeepSpeed's activation_checkpointing section configures an API the model calls).
  bool activation_checkpointing = false;
  // Which registered model to build (engine/model/model.h): "gpt", the built-in, or a name a
  // program registered with RegisterModel before it called DsrunMain.
  std::string arch = "gpt";
  // A Hugging Face model folder (config.json, model.safetensors; dsrun --model_name): the
  // family it names is built ("hf"), its sizes read from there by LoadConfig, its weights from
  // there (engine/config/hf_model.h). "": the sizes above.
  std::string hf_path;
  int64_t hf_parameters = 0;  // the folder's model's parameters (LoadConfig), else 0
  std::string hf_config_json;  // the folder's config.json as LoadConfig read it (saved with each
                               // checkpoint, for export --format hf)
};
// "demo", "gpt2-124m", "gpt2-350m", "gpt2-774m", "gpt2-1558m", "gpt-1.3b" (docs/config.md).
std::vector<std::string> ModelPresetNames();
Result<ModelConfig> ModelPreset(std::string_view name);

struct DataConfig {
  enum class Format : uint8_t {
    kAuto,     // decided when the file is opened: llm.c header magic, else by extension
    kNanoGpt,  // raw little-endian uint16 tokens (nanoGPT's prepare.py)
    kLlmc,     // llm.c: 256 int32 header, then uint16 (magic 20240520) or uint32 (20240801) tokens
    kText,     // bytes are tokens (vocab 256)
  };
  std::string path;  // "": the embedded default corpus
  Format format = Format::kAuto;
  std::string val_path;  // "": hold out the last val_fraction of `path`
  double val_fraction = 0.1;
  // The masked-LM objective's masking rate (transformers' mlm_probability), in (0, 1); nullopt:
  // the model's own (BERT: 0.15). A warning, and no effect, for a next-token model.
  std::optional<double> mlm_probability;
};
std::string_view DataFormatName(DataConfig::Format f);

struct TrainerConfig {
  // Optimizer steps (trainer.max_steps, --max-steps). 0: `epochs` passes over the training
  // data, counted by the trainer when it opens the data (Hugging Face Trainer's rule: a
  // max_steps given wins over epochs).
  int64_t max_steps = 0;
  int64_t epochs = 1;  // trainer.epochs, --epochs
  int64_t eval_interval = 250;  // steps between evaluations; 0: never
  int64_t eval_iters = 20;      // micro batches per evaluation
  uint64_t seed = 42;
  std::string output_dir = "out";  // logs, metrics.jsonl, TensorBoard events
  // Replay each step as CUDA graphs (engine/train/step_graphs.cc): "auto" (where the step can
  // be captured: one GPU rank, ZeRO 0-1 without offload, no fp16), "true" (an error where it
  // cannot), "false". Off by default until it has been measured on a GPU.
  std::string cuda_graphs = "false";
};

// Ours (save_dir ... when_busy) and DeepSpeed's (tag_validation, load_universal,
// use_node_local_storage; the rest of DeepSpeed's are in Config::resolved).
struct CheckpointConfig {
  std::string save_dir;                // "": <trainer.output_dir>/checkpoints
  int64_t save_interval_steps = 1000;  // 0: not by steps
  int64_t save_interval_minutes = 0;   // 0: not by time
  uint32_t keep_last = 0;              // retention; 0 in each rule: no limit from it
  uint32_t keep_best = 0;
  int64_t keep_every = 0;
  uint64_t max_bytes = 0;
  std::string best_metric = "eval_loss";  // "": no `best` pointer
  std::string best_mode = "min";          // or "max"
  bool enabled = true;                    // false: never save (resuming still works)
  std::string codec = "bytegroup+zstd";   // or "zstd", "raw" (formats/chunk_codec.h names)
  int zstd_level = 1;
  uint64_t chunk_bytes = uint64_t{4} << 20;  // raw bytes per chunk
  uint64_t staging_bytes = 0;      // snapshot memory; 0 ("auto"): this rank's whole state, at most
                                   // half the host's memory (engine/train/checkpoint.cc)
  std::string when_busy = "wait";  // or "skip": a save while the last still writes
  // A GPU copy of the state that the snapshot reads from, so training waits only for a
  // device-to-device copy: "auto" (when the GPU has room for it), "true" or "false".
  std::string device_staging = "auto";
  uint32_t encode_threads = 0;  // compressing and checksumming threads; 0: hardware threads
  // Niceness of those threads (0-19): training's own threads come first for the CPU (kernel
  // launches on a GPU, the step itself on the CPU) while a save runs in the background.
  int background_nice = 10;
  // Saves that may fail in a row before training stops with an error (0: never stop); the
  // final save failing always ends the run with an error. dstrain's own key.
  int64_t max_failed_saves = 3;
  // DeepSpeed's
  std::string tag_validation = "WARN";  // "IGNORE", "WARN", "FAIL"
  bool load_universal = false;
  bool use_node_local_storage = false;
};

// Tensor and pipeline parallelism (DeepSpeed's tensor_parallel.autotp_size and pipeline.stages):
// the world is data-parallel x pipeline x tensor-parallel ranks, tensor-parallel ranks adjacent
// (Megatron's order): global rank = (stage * dp + dp_rank) * tp + tp_rank.
struct ParallelConfig {
  int64_t tp = 1;  // tensor-parallel degree (Megatron-style column/row-parallel GPT layers)
  int64_t pp = 1;  // pipeline stages (1F1B over gradient_accumulation_steps micro batches)
  int64_t dp = 1;  // data-parallel size: the world size / (tp * pp)
};

// ---- the whole configuration

struct Config {
  std::string source;  // where it came from, for messages: the file name
  BatchConfig batch;
  double gradient_clipping = 1.0;  // max global gradient norm; 0: off
  Fp16Config fp16;
  Bf16Config bf16;
  OptimizerConfig optimizer;
  SchedulerConfig scheduler;
  ZeroConfig zero;
  ParallelConfig parallel;
  CommsConfig comms;
  MonitorConfig monitor;
  CheckpointConfig checkpoint;
  ModelConfig model;
  DataConfig data;
  TrainerConfig trainer;

  // Printed at start, one line each: unknown keys (with the closest known key), deprecated
  // keys, "auto" values that were filled, and one line naming the keys we accept but do not
  // implement. Every line starts with `source`.
  std::vector<std::string> warnings;
  std::vector<std::string> not_implemented;  // key paths set to non-defaults that have no effect
  std::vector<std::string> auto_filled;      // "key.path = value (why)"
  // Every key with its resolved value (defaults filled, "auto" replaced, batch derived): printed
  // by --dry-run and stored in checkpoints.
  nlohmann::json resolved;

  Precision precision() const {
    return fp16.enabled ? Precision::kFp16 : bf16.enabled ? Precision::kBf16 : Precision::kFp32;
  }
};

// Changes the command line makes to the file's values, applied before anything is resolved.
struct Overrides {
  // "key.path=value": the value is parsed as JSON when it is valid JSON, else taken as a string
  // (optimizer.params.lr=3e-4, zero_optimization.stage=2, optimizer.type=AdamW,
  // optimizer.params.betas=[0.9,0.95]). Missing sections are created; null restores the
  // default. Applied in order.
  std::vector<std::string> set;
  std::optional<int64_t> max_steps;  // --max-steps: trainer.max_steps (after `set`)
  std::optional<uint64_t> seed;      // --seed: trainer.seed (after `set`)
  // Ranks in the job: the data-parallel size of the batch arithmetic is world_size / (tp * pp).
  int64_t world_size = 1;
  bool strict = false;  // unknown keys are errors, not warnings
};

// Parses, applies `overrides`, fills defaults and "auto", checks everything. Errors are
// InvalidArgument and start with `source_name` and the key path: "cfg.json: train_batch_size
// (32) != ...". Duplicate keys are errors (as in DeepSpeed); // and /* */ comments are allowed.
Result<Config> ParseConfig(std::string_view json_text, const Overrides& overrides,
                           std::string_view source_name);
// Reads `path` through `env`, then ParseConfig with the path as the source name.
Result<Config> LoadConfig(io::Env* env, const std::string& path, const Overrides& overrides);

// Where checkpoints go: checkpoint.save_dir, or <trainer.output_dir>/checkpoints when it is "".
std::string CheckpointDir(const Config& config);

// Applies one "key.path=value" to `root` (an object). InvalidArgument on bad syntax, or when a
// section on the path is not an object.
Status ApplySetOverride(std::string_view assignment, nlohmann::json* root);

}  // namespace ds::engine
