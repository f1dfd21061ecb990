#include "engine/config/memory.h"

#include <algorithm>
#include <cstdio>

#include "io/units.h"

namespace ds::engine {

int64_t ModelParameterCount(const ModelConfig& m) {
  const int64_t c = m.d_model;
  const int64_t block = 2 * c                // ln_1 weight, bias
                        + 3 * c * c + 3 * c  // attention qkv (C, 3C) + bias
                        + c * c + c          // attention output projection
                        + 2 * c              // ln_2
                        + c * 4 * c + 4 * c  // mlp up (C, 4C) + bias
                        + 4 * c * c + c;     // mlp down (4C, C) + bias
  return m.vocab * c                         // wte, tied with the output head
         + m.seq_len * c                     // wpe
         + m.n_layer * block                 //
         + 2 * c;                            // ln_f
}

int64_t LargestGatheredParameters(const ModelConfig& m) {
  const int64_t c = m.d_model;
  return std::max(m.vocab * c, 12 * c * c + 13 * c);
}

MemoryEstimate EstimateMemory(const ModelConfig& model, int64_t world_size, const ZeroConfig& zero,
                              Precision precision) {
  const uint64_t p = static_cast<uint64_t>(ModelParameterCount(model));
  const uint64_t n = static_cast<uint64_t>(std::max<int64_t>(world_size, 1));
  const uint64_t shard = (p + n - 1) / n;  // elements per rank of a partitioned flat buffer
  const bool mixed = precision != Precision::kFp32;
  const uint64_t weight_bytes = mixed ? 2 : 4;
  // What engine/zero keeps: an fp32 master copy (even when the weights are fp32) and Adam's two
  // fp32 moments (K = 12), and fp32 gradients: the flat accumulator of every parameter at
  // stages 0 and 1, this rank's partition at stages 2 and 3.
  constexpr uint64_t kOptimizerBytes = 12, kGradBytes = 4;

  MemoryEstimate e;
  e.stage = zero.stage;
  e.params = weight_bytes * (zero.stage >= 3 ? shard : p);
  e.grads = kGradBytes * (zero.stage >= 2 ? shard : p);
  e.optimizer = kOptimizerBytes * (zero.stage >= 1 ? shard : p);
  if (zero.stage >= 3) {
    e.gathered = weight_bytes * static_cast<uint64_t>(LargestGatheredParameters(model));
  }
  if (zero.stage >= 1 && zero.offload_optimizer.device == OffloadConfig::Device::kCpu) {
    // The master, the moments and the gradient partition (at stage 1, besides the accumulator).
    e.host += e.optimizer + kGradBytes * shard;
    e.optimizer = 0;
    if (zero.stage >= 2) e.grads = 0;
  }
  if (zero.stage >= 3 && zero.offload_param.device == OffloadConfig::Device::kCpu) {
    e.host += e.params;
    e.params = 0;
  }
  return e;
}

std::string FormatMemoryTable(const Config& config) {
  const int64_t count = ModelParameterCount(config.model);
  std::string model = config.model.preset.empty() ? "custom GPT" : config.model.preset;
  char line[256];
  std::snprintf(line, sizeof(line),
                "Model states per rank: %s, %lld parameters, %s, data-parallel size %lld\n"
                "(activations and temporary buffers come on top; docs/config.md has the "
                "formulas)\n",
                model.c_str(), static_cast<long long>(count),
                std::string(PrecisionName(config.precision())).c_str(),
                static_cast<long long>(config.batch.data_parallel_size));
  std::string out = line;
  std::snprintf(line, sizeof(line), "  %-6s %12s %12s %12s %12s %14s %12s\n", "stage", "params",
                "grads", "optimizer", "gathered", "device total", "host");
  out += line;
  for (int stage = 0; stage <= 3; ++stage) {
    ZeroConfig zero = config.zero;
    zero.stage = stage;
    MemoryEstimate e =
        EstimateMemory(config.model, config.batch.data_parallel_size, zero, config.precision());
    std::string label = std::to_string(stage) + (stage == config.zero.stage ? "*" : "");
    std::snprintf(line, sizeof(line), "  %-6s %12s %12s %12s %12s %14s %12s\n", label.c_str(),
                  io::FormatBytes(e.params).c_str(), io::FormatBytes(e.grads).c_str(),
                  io::FormatBytes(e.optimizer).c_str(), io::FormatBytes(e.gathered).c_str(),
                  io::FormatBytes(e.device_total()).c_str(), io::FormatBytes(e.host).c_str());
    out += line;
  }
  return out;
}

}  // namespace ds::engine
