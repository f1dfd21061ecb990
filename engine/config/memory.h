// The built-in GPT's parameter count, and the model-state memory one rank needs for parameters,
// gradients and optimizer state at each ZeRO stage (what DeepSpeed's memory estimators report;
// activations and temporary buffers come on top). docs/config.md gives the formulas.
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/config/config.h"
#include "engine/config/hf_model.h"

namespace ds::engine {

// Pre-LN GPT-2 with tied embeddings: V*C + T*C + L*(12*C*C + 13*C) + 2*C.
int64_t ModelParameterCount(const ModelConfig& model);
// The parameters of the rank that holds the most when the model is split `parallel.tp` ways and
// over `parallel.pp` stages (as engine/model/split.h splits the GPT and a folder's family).
int64_t ParametersOnLargestRank(const ModelConfig& model, const ParallelConfig& parallel);
// Parameters of the largest unit ZeRO stage 3 gathers whole: the token embedding (V*C) or one
// layer (the GPT's 12*C*C + 13*C, or the folder's), whichever is larger.
int64_t LargestGatheredParameters(const ModelConfig& model);
// The layers of pipeline stage `stage` of `pp`: [first, last). As even as it goes; earlier
// stages take the remainder (the last also runs the head).
std::pair<int64_t, int64_t> StageLayers(int64_t n_layer, int64_t pp, int64_t stage);
// A Hugging Face folder's model, from the config.json LoadConfig kept (model.hf_config_json);
// nullopt for the built-in GPT.
std::optional<HfModelSpec> FolderModel(const ModelConfig& model);

struct MemoryEstimate {  // bytes, per rank
  int stage = 0;
  uint64_t params = 0;     // model weights kept on the device (16-bit, or fp32 without fp16/bf16)
  uint64_t grads = 0;      // gradients, same precision as the weights
  uint64_t optimizer = 0;  // fp32 master weights (fp16/bf16 only) + Adam's two fp32 moments
  uint64_t gathered = 0;   // stage 3: the largest unit's weights, gathered whole
  uint64_t host = 0;       // what CPU offload moves to host memory
  uint64_t nvme = 0;       // what NVMe offload moves to its swap files
  uint64_t device_total() const { return params + grads + optimizer + gathered; }
};

// `zero.stage` picks the stage; offload_optimizer (stages 1-3) and offload_param (stage 3) with
// device cpu move their part to `host`.
// `world_size` is the data-parallel size; with tensor or pipeline parallelism (`parallel`) the
// estimate is for the rank holding the most parameters (ParametersOnLargestRank).
MemoryEstimate EstimateMemory(const ModelConfig& model, int64_t world_size, const ZeroConfig& zero,
                              Precision precision, const ParallelConfig& parallel = {});

// A table of EstimateMemory at stages 0-3 for this config (its data-parallel size, precision
// and offload settings), the configured stage marked with '*', for dsrun --dry-run.
std::string FormatMemoryTable(const Config& config);

// The memory a rank may use: on the device it trains on (0 when that is the host) and on the
// host, shared by `ranks_per_host` ranks.
struct MachineMemory {
  uint64_t device_bytes = 0;  // one GPU's memory; 0: training on the CPU
  uint64_t host_bytes = 0;    // the host's physical memory
  int ranks_per_host = 1;
  std::string device_name = "cpu";  // for messages
};

// Activations one rank keeps for backward over one micro batch (bytes), on the rank holding the
// most layers: per layer 17 values per token and channel in the training precision (5 whole and
// 12 cut by tensor parallelism: layer-norm inputs and outputs, q, k, v, attention's output, the
// MLP's two 4C-wide tensors; a Llama folder's layer 4h whole and 5 query widths plus 3
// intermediate widths (4 on the CPU) cut, a GPT-2 or BERT folder's 5h whole and 4h + 2
// intermediate cut), or with `recomputed` (activation checkpointing, and always at
// stage 3, which reruns every unit in backward) 1 per layer plus one layer's 17; the embedding's
// output; the head's logits and their gradient (on the CPU also the fp32 log-softmax pair). A
// pipeline's first stage holds `pp` micro batches at once (1F1B). docs/config.md derives it.
uint64_t ActivationBytes(const Config& config, bool recomputed, bool on_gpu);

// What one setting of ZeRO needs per rank while training: the model state (EstimateMemory),
// stage 3's largest gathered unit and the activations on the device (on the CPU, everything is
// host memory), and the offloaded state on the host.
struct MemoryNeed {
  std::string setting;  // "stage 3 + offload_param cpu"
  ZeroConfig zero;
  uint64_t device = 0;  // bytes per rank; 0 when training on the CPU
  uint64_t host = 0;    // bytes per rank
  uint64_t nvme = 0;    // bytes per rank
};
MemoryNeed NeedOf(const Config& config, const ZeroConfig& zero, bool on_gpu);

// The settings dsrun weighs, cheapest (fastest) first: stages 0-3 (those the layout allows:
// pipeline stages 0-1, tensor parallelism 0-2), then stage 2 and 3 (with pipeline stages: 1) with
// the optimizer offloaded, then stage 3 with the parameters too, then that with the optimizer on
// NVMe instead, then the parameters there too (on the CPU: stages 0-3 only). NVMe's disk is not
// checked.
std::vector<MemoryNeed> SettingsByCost(const Config& config, bool on_gpu);

// For --dry-run and an out-of-memory step: activations with and without checkpointing, what
// each setting needs against `machine`, and the cheapest one that fits (or that none does).
// A setting fits when its device bytes are at most 92% of the GPU's (the CUDA context and the
// allocator's slack) and the host bytes of all `ranks_per_host` ranks at most 92% of the host's.
std::string MemoryAdvice(const Config& config, const MachineMemory& machine);

// OK when the model state of the configured stage (EstimateMemory) fits `machine`;
// InvalidArgument otherwise, with the need, what there is, and the keys that change it. Only
// the model state is counted (activations come on top), so what it refuses cannot train.
Status CheckMemoryFits(const Config& config, const MachineMemory& machine);

}  // namespace ds::engine
