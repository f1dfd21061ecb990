// DeepSpeed's monitors (monitor/config.py, profiling/config.py), and the DeepSpeed keys dstrain
// accepts without acting on them, with DeepSpeed 0.19.8's defaults so the resolved config shows
// them. Keys DeepSpeed itself now refuses are refused here too, with DeepSpeed's reason.
#include <algorithm>

#include "engine/config/sections.h"

namespace ds::engine::internal {

namespace {

MonitorConfig::Writer ReadWriter(SectionReader& top, std::string_view key) {
  SectionReader r = top.Child(key);
  MonitorConfig::Writer w;
  w.enabled = r.Bool("enabled", false);
  w.output_path = r.String("output_path", "");
  w.job_name = r.String("job_name", w.job_name);
  r.Finish();
  return w;
}

// A monitor that needs a network service: accepted, warned about, not run.
void ReadOnlineMonitor(SectionReader& top, std::string_view key,
                       std::initializer_list<std::pair<const char*, json>> keys) {
  SectionReader r = top.Child(key);
  bool enabled = r.Bool("enabled", false, Use::kIgnored);
  for (const auto& [name, def] : keys) r.Any(name, def, Use::kIgnored);
  if (enabled) {
    r.diag()->Warn(std::string(key) + ".enabled: " + std::string(key) +
                   " is not supported (dstrain runs offline): ignored; use tensorboard or "
                   "csv_monitor");
  }
  r.Finish();
}

// A parallelism degree dstrain does not implement: 1 (or absent) is fine, more is an error,
// since ignoring it would change what each rank computes.
void RefuseDegree(SectionReader& r, std::string_view key, std::string_view what) {
  r.Know(key);
  const json* v = r.Get(key);
  if (v == nullptr || IsAuto(v)) return;
  if (!v->is_number() || v->get<double>() > 1) {
    r.diag()->Error(r.KeyPath(key) + " " + Show(*v) + ": " + std::string(what) +
                    " is not implemented in dstrain (use 1)");
  }
}

// pipeline.stages: "auto" (DeepSpeed's default, which takes the stages from the model's code)
// means one stage here; otherwise a positive integer.
int64_t ReadStages(SectionReader& pipe) {
  const json v = pipe.Any("stages", "auto");
  if (IsAuto(&v)) return 1;
  const std::optional<int64_t> n = AsInteger(v);
  if (!n || *n < 1) {
    pipe.diag()->Error(pipe.KeyPath("stages") + " " + Show(v) +
                       ": the number of pipeline stages is a positive integer (or \"auto\": 1)");
    return 1;
  }
  return *n;
}

struct Removed {
  const char* key;
  const char* advice;
};
// DeepSpeed 0.19.8 refuses these (runtime/config.py _REMOVED_TOP_LEVEL_CONFIG_KEYS).
const Removed kRemovedKeys[] = {
    {"nebula", "checkpoints would silently fall back to local saves"},
    {"compression_training", "the model would train unquantized"},
    {"amp", "use fp16 or bf16"},
    {"quantize_training", "Mixture-of-Quantization is gone"},
    {"sparse_gradients", "embedding gradients are reduced dense"},
    {"eigenvalue", "Mixture-of-Quantization is gone"},
    {"sparse_attention", "DeepSpeed Sparse Attention is gone"},
    {"elasticity",
     "set train_batch_size / train_micro_batch_size_per_gpu / gradient_accumulation_steps "
     "directly"},
    {"graph_harvesting", "the option is gone"},
    {"curriculum_learning", "use data_efficiency.data_sampling.curriculum_learning"},
    {"progressive_layer_drop", "Progressive Layer Dropping is gone"},
};

}  // namespace

void ReadMonitor(SectionReader& top, MonitorConfig* out) {
  out->tensorboard = ReadWriter(top, "tensorboard");
  out->csv_monitor = ReadWriter(top, "csv_monitor");
  ReadOnlineMonitor(top, "wandb",
                    {{"group", nullptr}, {"team", nullptr}, {"project", "deepspeed"}});
  ReadOnlineMonitor(top, "comet",
                    {{"samples_log_interval", 100},
                     {"project", nullptr},
                     {"workspace", nullptr},
                     {"api_key", nullptr},
                     {"experiment_name", nullptr},
                     {"experiment_key", nullptr},
                     {"online", nullptr},
                     {"mode", nullptr}});
  // steps_per_print: DeepSpeed 0.19's default is null (no periodic line).
  top.Know("steps_per_print");
  if (top.Has("steps_per_print") && !top.IsAutoValue("steps_per_print")) {
    out->steps_per_print = top.Int("steps_per_print", 10, 1);
  } else {
    top.resolved()["steps_per_print"] = nullptr;
  }
  out->wall_clock_breakdown = top.Bool("wall_clock_breakdown", false);
  top.Bool("memory_breakdown", false, Use::kIgnored);

  SectionReader f = top.Child("flops_profiler");
  bool profiler = f.Bool("enabled", false, Use::kIgnored);
  f.Number("recompute_fwd_factor", 0.0, Use::kIgnored);
  f.Int("profile_step", 1, INT64_MIN, Use::kIgnored);
  f.Int("module_depth", -1, INT64_MIN, Use::kIgnored);
  f.Int("top_modules", 1, INT64_MIN, Use::kIgnored);
  f.Bool("detailed", true, Use::kIgnored);
  f.Any("output_file", nullptr, Use::kIgnored);
  f.Finish();
  // DeepSpeed turns the step-time breakdown on with the profiler.
  out->wall_clock_breakdown = out->wall_clock_breakdown || profiler;
}

void ReadOtherDeepSpeedKeys(SectionReader& top, ParallelConfig* parallel, ZeroConfig* zero) {
  Diagnostics* d = top.diag();
  for (const Removed& r : kRemovedKeys) {
    top.Know(r.key);
    if (top.Has(r.key) && d->ok()) {
      d->Error(std::string(r.key) + " was removed from DeepSpeed, which refuses it (" + r.advice +
               "): remove the key");
    }
  }

  SectionReader act = top.Child("activation_checkpointing");
  act.Bool("partition_activations", false, Use::kIgnored);
  act.Any("number_checkpoints", nullptr, Use::kIgnored);
  act.Bool("contiguous_memory_optimization", false, Use::kIgnored);
  act.Bool("synchronize_checkpoint_boundary", false, Use::kIgnored);
  act.Bool("profile", false, Use::kIgnored);
  act.Bool("cpu_checkpointing", false, Use::kIgnored);
  act.Finish();

  SectionReader logger = top.Child("comms_logger");
  logger.Bool("enabled", false, Use::kIgnored);
  logger.Bool("prof_all", true, Use::kIgnored);
  logger.Any("prof_ops", json::array(), Use::kIgnored);
  logger.Bool("verbose", false, Use::kIgnored);
  logger.Bool("debug", false, Use::kIgnored);
  logger.Finish();

  // Pipeline and tensor parallelism: the sizes are checked, the rest only accepted.
  SectionReader pipe = top.Child("pipeline");
  parallel->pp = ReadStages(pipe);
  pipe.Any("partition", "best", Use::kIgnored);
  pipe.Bool("seed_layers", false, Use::kIgnored);
  pipe.Int("activation_checkpoint_interval", 0, 0, Use::kIgnored);
  pipe.Bool("pipe_partitioned", true, Use::kIgnored);
  pipe.Bool("grad_partitioned", true, Use::kIgnored);
  pipe.Any("use_reentrant", nullptr, Use::kIgnored);
  pipe.Finish();

  SectionReader tp = top.Child("tensor_parallel");
  // DeepSpeed's AutoTP training: autotp_size 0 (off) or 1 is one rank per model.
  const int64_t autotp = std::max<int64_t>(1, tp.Int("autotp_size", 0, 0));
  tp.Alias("tp", "tensor_parallel");
  SectionReader tp_inner = tp.Child("tp");
  const int64_t tp_size = tp_inner.Int("tp_size", 1, 1);
  if (autotp > 1 && tp_size > 1 && autotp != tp_size) {
    top.diag()->Error("tensor_parallel.autotp_size (" + std::to_string(autotp) +
                      ") and tensor_parallel.tp.tp_size (" + std::to_string(tp_size) +
                      ") disagree: give one of them");
  }
  parallel->tp = std::max(autotp, tp_size);
  tp_inner.Int("tp_grain_size", 1, 1, Use::kIgnored);
  tp_inner.Any("mpu", nullptr, Use::kIgnored);
  tp_inner.Any("tp_group", nullptr, Use::kIgnored);
  tp_inner.Finish();
  tp.Any("dtype", "fp16", Use::kIgnored);
  tp.Bool("tp_overlap_comm", false, Use::kIgnored);
  tp.Any("vocab_parallel_lm_head", nullptr, Use::kIgnored);
  tp.Any("vocab_parallel_ce_backend", "torch", Use::kIgnored);
  tp.Any("injection_policy_tuple", nullptr, Use::kIgnored);
  tp.Any("partition_config", nullptr, Use::kIgnored);
  tp.Any("preset_model", nullptr, Use::kIgnored);
  tp.Bool("keep_module_on_host", false, Use::kIgnored);
  tp.Alias("replace_with_kernel_inject", "kernel_inject");
  tp.Bool("replace_with_kernel_inject", false, Use::kIgnored);
  tp.Finish();
  RefuseDegree(top, "sequence_parallel_size", "sequence parallelism");
  top.Any("sequence_parallel_size", 1);

  // Top-level switches.
  top.Bool("managed_gradient_accumulation", true, Use::kIgnored);
  top.Bool("dump_state", false, Use::kIgnored);
  top.Bool("disable_python_gc", false, Use::kIgnored);
  top.Bool("disable_allgather", false, Use::kIgnored);
  top.Bool("zero_allow_untested_optimizer", false, Use::kIgnored);
  top.Bool("zero_force_ds_cpu_optimizer", true, Use::kIgnored);
  top.Bool("use_data_before_expert_parallelism", false, Use::kIgnored);
  top.Bool("dataloader_drop_last", false, Use::kIgnored);
  top.Any("log_level", nullptr, Use::kIgnored);
  json vocabulary = top.Any("vocabulary_size", nullptr, Use::kIgnored);
  if (vocabulary.is_number_integer() && vocabulary.get<int64_t>() % 8 != 0) {
    d->Warn("vocabulary_size " + Show(vocabulary) +
            " is not a multiple of 8, which may lower tensor core use (DeepSpeed's warning)");
  }

  SectionReader types = top.Child("data_types");
  types.Any("grad_accum_dtype", nullptr, Use::kIgnored);
  types.Any("param_dtype", nullptr, Use::kIgnored);
  types.Any("buffer_dtype", nullptr, Use::kIgnored);
  types.Any("keep_in_fp32_modules", "auto", Use::kIgnored);
  types.Finish();

  SectionReader aio = top.Child("aio");
  // NVMe offload reads and writes its swap files in chunks of block_size * queue_depth bytes;
  // the rest of the section is DeepSpeed's async I/O engine's (ours is io_uring, io::Env).
  zero->aio_block_size = aio.Int("block_size", 1'048'576, 4);
  zero->aio_queue_depth = aio.Int("queue_depth", 8, 1);
  aio.Int("intra_op_parallelism", 1, 0, Use::kIgnored);
  aio.Bool("single_submit", false, Use::kIgnored);
  aio.Bool("overlap_events", true, Use::kIgnored);
  aio.Bool("use_gds", false, Use::kIgnored);
  aio.Finish();

  SectionReader timers = top.Child("timers");
  SectionReader throughput = timers.Child("throughput");
  throughput.Bool("enabled", true, Use::kIgnored);
  throughput.Bool("synchronized", true, Use::kIgnored);
  throughput.Finish();
  timers.Finish();

  // Whole blocks dstrain does not read; kept as given.
  for (const char* key : {"autotuning", "hybrid_engine", "data_efficiency", "datastates_ckpt",
                          "weight_quantization", "compile", "expert_parallel"}) {
    top.Opaque(key);
  }
}

}  // namespace ds::engine::internal
