#include "engine/config/memory.h"

#include <algorithm>
#include <cstdio>
#include <optional>
#include <utility>

#include "io/units.h"

namespace ds::engine {

int64_t ModelParameterCount(const ModelConfig& m) {
  if (m.hf_parameters > 0) return m.hf_parameters;  // a Hugging Face folder's family
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

std::pair<int64_t, int64_t> StageLayers(int64_t n_layer, int64_t pp, int64_t stage) {
  const int64_t base = n_layer / pp, extra = n_layer % pp;
  const int64_t first = stage * base + std::min(stage, extra);
  return {first, first + base + (stage < extra ? 1 : 0)};
}

std::optional<HfModelSpec> FolderModel(const ModelConfig& m) {
  if (m.hf_config_json.empty()) return std::nullopt;
  Result<HfModelSpec> s = ParseHfConfig(m.hf_path, m.hf_config_json);
  return s.ok() ? std::optional<HfModelSpec>(std::move(*s)) : std::nullopt;
}

namespace {

// One layer's parameters on a tensor-parallel rank of `tp`: the cut ones (column-parallel rows
// with their biases, row-parallel columns) divided, norms and row-parallel biases whole.
int64_t LayerParameters(const HfModelSpec& s, int64_t tp) {
  const int64_t h = s.hidden, i = s.intermediate;
  if (s.family == "llama") {
    const int64_t q = s.n_head * s.head_dim, kv = s.n_kv_head * s.head_dim;
    int64_t cut = h * q + 2 * h * kv + q * h + 3 * h * i, whole = 2 * h;
    if (s.attention_bias || s.qkv_bias) cut += q + 2 * kv;
    if (s.attention_bias) whole += h;
    if (s.mlp_bias) {
      cut += 2 * i;
      whole += h;
    }
    return cut / tp + whole;
  }
  // GPT-2 and BERT: q, k, v and the attention output, two norms, the MLP (BERT's as GPT-2's).
  const int64_t cut = 3 * h * h + 3 * h + h * h + h * i + i + i * h;
  return cut / tp + 2 * h + 4 * h;
}

// The built-in GPT's block on a tensor-parallel rank of `tp`.
int64_t GptBlockParameters(int64_t c, int64_t tp) {
  return 4 * c + (3 * c * c + 3 * c) / tp + c * c / tp + c + (4 * c * c + 4 * c) / tp +
         4 * c * c / tp + c;
}

}  // namespace

int64_t ParametersOnLargestRank(const ModelConfig& m, const ParallelConfig& par) {
  if (par.tp * par.pp == 1) return ModelParameterCount(m);
  const std::optional<HfModelSpec> hf = FolderModel(m);
  if (hf && hf->family == "bert") return ModelParameterCount(m);  // not split
  // Column-parallel layers keep 1/tp of their rows, row-parallel ones 1/tp of their columns
  // (and the whole bias); norms and embeddings are whole on every tensor-parallel rank.
  const int64_t h = m.d_model;
  const int64_t layer = hf ? LayerParameters(*hf, par.tp) : GptBlockParameters(h, par.tp);
  // The first stage holds the token (and GPT-2's position) embeddings, the last the final norm
  // and the head: lm_head, or a copy of the tied token embedding.
  const int64_t positions = hf ? (hf->family == "gpt2" ? hf->max_positions : 0) : m.seq_len;
  const int64_t final_norm = hf && hf->family == "llama" ? h : 2 * h;
  const bool tied = hf ? hf->tie_embeddings : true;
  int64_t most = 0;
  for (int64_t stage = 0; stage < par.pp; ++stage) {
    const auto [first, last] = StageLayers(m.n_layer, par.pp, stage);
    int64_t n = (last - first) * layer;
    if (stage == 0) n += (m.vocab + positions) * h;
    if (stage == par.pp - 1) n += final_norm + (stage > 0 || !tied ? m.vocab * h : 0);
    most = std::max(most, n);
  }
  return most;
}

int64_t LargestGatheredParameters(const ModelConfig& m) {
  const int64_t c = m.d_model;
  const std::optional<HfModelSpec> hf = FolderModel(m);
  return std::max(m.vocab * c, hf ? LayerParameters(*hf, 1) : 12 * c * c + 13 * c);
}

MemoryEstimate EstimateMemory(const ModelConfig& model, int64_t world_size, const ZeroConfig& zero,
                              Precision precision, const ParallelConfig& parallel) {
  const uint64_t p = static_cast<uint64_t>(ParametersOnLargestRank(model, parallel));
  const uint64_t n = static_cast<uint64_t>(std::max<int64_t>(world_size, 1));
  const uint64_t shard = (p + n - 1) / n;  // elements per rank of a partitioned flat buffer
  const bool mixed = precision != Precision::kFp32;
  const uint64_t weight_bytes = mixed ? 2 : 4;
  // What engine/zero keeps: an fp32 master copy (even when the weights are fp32) and Adam's two
  // fp32 moments (K = 12), and fp32 gradients: the flat accumulator of every parameter at
  // stages 0 and 1, this rank's partition at stages 2 and 3.
  constexpr uint64_t kOptimizerBytes = 12, kGradBytes = 4;

  const ZeroStage stage = zero.Stage();
  MemoryEstimate e;
  e.stage = stage.number();
  e.params = weight_bytes * (stage.partitions_parameters() ? shard : p);
  e.grads = kGradBytes * (stage.partitions_gradients() ? shard : p);
  e.optimizer = kOptimizerBytes * (stage.partitions_optimizer() ? shard : p);
  if (stage.partitions_parameters()) {
    e.gathered = weight_bytes * static_cast<uint64_t>(LargestGatheredParameters(model));
  }
  if (stage.partitions_optimizer() &&
      zero.offload_optimizer.device != OffloadConfig::Device::kNone) {
    // The master, the moments and the gradient partition (at stage 1, besides the accumulator);
    // with NVMe the first three in its swap files, the gradients on the host.
    const bool nvme = zero.offload_optimizer.device == OffloadConfig::Device::kNvme;
    e.host += (nvme ? 0 : e.optimizer) + kGradBytes * shard;
    e.nvme += nvme ? e.optimizer : 0;
    e.optimizer = 0;
    if (stage.partitions_gradients()) e.grads = 0;
  }
  if (stage.partitions_parameters() && zero.offload_param.device != OffloadConfig::Device::kNone) {
    // On NVMe: the partition in its swap file; each unit passes through host memory as it is
    // gathered (the gathered unit, counted on the device, is the bound).
    (zero.offload_param.device == OffloadConfig::Device::kNvme ? e.nvme : e.host) += e.params;
    e.params = 0;
  }
  return e;
}

std::string FormatMemoryTable(const Config& config) {
  const int64_t count = ModelParameterCount(config.model);
  std::string model = config.model.preset.empty() ? "custom GPT" : config.model.preset;
  if (const std::optional<HfModelSpec> hf = FolderModel(config.model)) {
    // As its config.json names it (architectures, else model_type's family).
    model = (hf->architecture.empty() ? hf->family : hf->architecture) + " from " +
            config.model.hf_path;
  }
  char line[512];
  std::snprintf(line, sizeof(line),
                "Model states per rank: %s, %lld parameters, %s, data-parallel size %lld%s\n"
                "(activations and temporary buffers come on top; docs/config.md has the "
                "formulas)\n",
                model.c_str(), static_cast<long long>(count),
                std::string(PrecisionName(config.precision())).c_str(),
                static_cast<long long>(config.batch.data_parallel_size),
                config.parallel.tp * config.parallel.pp > 1
                    ? (" (TP " + std::to_string(config.parallel.tp) + " x PP " +
                       std::to_string(config.parallel.pp) + ": the rank holding the most, " +
                       std::to_string(ParametersOnLargestRank(config.model, config.parallel)) +
                       " parameters)")
                          .c_str()
                    : "");
  std::string out = line;
  std::snprintf(line, sizeof(line), "  %-6s %12s %12s %12s %12s %14s %12s\n", "stage", "params",
                "grads", "optimizer", "gathered", "device total", "host");
  out += line;
  for (int stage = 0; stage <= 3; ++stage) {
    ZeroConfig zero = config.zero;
    zero.stage = stage;
    MemoryEstimate e = EstimateMemory(config.model, config.batch.data_parallel_size, zero,
                                      config.precision(), config.parallel);
    std::string label = std::to_string(stage) + (stage == config.zero.stage ? "*" : "");
    std::snprintf(line, sizeof(line), "  %-6s %12s %12s %12s %12s %14s %12s\n", label.c_str(),
                  io::FormatBytes(e.params).c_str(), io::FormatBytes(e.grads).c_str(),
                  io::FormatBytes(e.optimizer).c_str(), io::FormatBytes(e.gathered).c_str(),
                  io::FormatBytes(e.device_total()).c_str(), io::FormatBytes(e.host).c_str());
    out += line;
  }
  return out;
}

uint64_t ActivationBytes(const Config& config, bool recomputed, bool on_gpu) {
  const ModelConfig& m = config.model;
  const ParallelConfig& par = config.parallel;
  const uint64_t e = config.precision() == Precision::kFp32 ? 4 : 2;  // bytes per value
  const uint64_t tokens = static_cast<uint64_t>(config.batch.micro_batch_per_gpu * m.seq_len);
  const uint64_t c = static_cast<uint64_t>(m.d_model);
  const uint64_t tp = static_cast<uint64_t>(std::max<int64_t>(par.tp, 1));
  const uint64_t pp = static_cast<uint64_t>(std::max<int64_t>(par.pp, 1));
  const uint64_t layers = (static_cast<uint64_t>(m.n_layer) + pp - 1) / pp;
  // One layer's saved values per token: `whole` on every tensor-parallel rank, `cut` divided.
  uint64_t whole = 5 * c, cut = 12 * c;  // the built-in GPT (and GPT-2, BERT: 4C-wide MLPs)
  if (const std::optional<HfModelSpec> hf = FolderModel(m)) {
    const uint64_t i = static_cast<uint64_t>(hf->intermediate);
    if (hf->family == "llama") {
      // x, both RMSNorms' outputs (the weight applied inside the fused norm) and the residual
      // sum (4h); attention's q, k and v as SDPA sees them (k and v repeated to every query
      // head), its output and o_proj's input (5 query widths); the MLP's gate, up and their
      // SwiGLU product (3i on a GPU, whose fused kernel keeps no SiLU output; 4i on the CPU).
      whole = 4 * c;
      cut = 5 * static_cast<uint64_t>(hf->n_head * hf->head_dim) + (on_gpu ? 3 : 4) * i;
    } else {
      cut = 4 * c + 2 * i;  // q, k, v, attention's output; the MLP's two i-wide tensors
    }
  }
  const uint64_t layer = tokens * (whole + cut / tp) * e;  // one layer's saved values
  uint64_t bytes = recomputed ? layers * tokens * c * e + layer : layers * layer;
  bytes += tokens * c * e;  // the embedding's output
  // The head: the logits and their gradient (fp32 log-softmax and its gradient on the CPU).
  bytes += tokens * static_cast<uint64_t>(m.vocab) * (on_gpu ? 2 * e : e + 8);
  return bytes * (pp > 1 ? pp : 1);
}

MemoryNeed NeedOf(const Config& config, const ZeroConfig& zero, bool on_gpu) {
  const MemoryEstimate e = EstimateMemory(config.model, config.batch.data_parallel_size, zero,
                                          config.precision(), config.parallel);
  const bool recomputed =
      config.model.activation_checkpointing || zero.Stage().partitions_parameters();
  MemoryNeed n;
  n.zero = zero;
  n.setting = "stage " + std::to_string(zero.stage);
  if (zero.offload_optimizer.device != OffloadConfig::Device::kNone) {
    n.setting += zero.offload_optimizer.device == OffloadConfig::Device::kNvme
                     ? " + offload_optimizer nvme"
                     : " + offload_optimizer cpu";
  }
  if (zero.offload_param.device != OffloadConfig::Device::kNone) {
    n.setting += zero.offload_param.device == OffloadConfig::Device::kNvme ? " + offload_param nvme"
                                                                           : " + offload_param cpu";
  }
  const uint64_t device = e.device_total() + ActivationBytes(config, recomputed, on_gpu);
  n.device = on_gpu ? device : 0;
  n.host = e.host + (on_gpu ? 0 : device);
  n.nvme = e.nvme;
  return n;
}

std::vector<MemoryNeed> SettingsByCost(const Config& config, bool on_gpu) {
  std::vector<MemoryNeed> out;
  ZeroConfig z = config.zero;
  z.offload_optimizer.device = OffloadConfig::Device::kNone;
  z.offload_param.device = OffloadConfig::Device::kNone;
  // What the layout allows: pipeline stages take ZeRO 0-1, tensor parallelism 0-2.
  const int top = config.parallel.pp > 1 ? 1 : config.parallel.tp > 1 ? 2 : 3;
  for (int stage = 0; stage <= top; ++stage) {
    z.stage = stage;
    out.push_back(NeedOf(config, z, on_gpu));
  }
  if (!on_gpu) return out;  // offloading to the host one trains on moves nothing
  z.offload_optimizer.device = OffloadConfig::Device::kCpu;
  for (int stage : {1, 2, 3}) {
    if (stage > top || (stage == 1 && top > 1)) continue;  // stage 1: only where 2 cannot run
    z.stage = stage;
    out.push_back(NeedOf(config, z, on_gpu));
  }
  if (top < 3) return out;  // parameters are offloaded at stage 3 only
  z.offload_param.device = OffloadConfig::Device::kCpu;
  out.push_back(NeedOf(config, z, on_gpu));
  z.offload_optimizer.device = OffloadConfig::Device::kNvme;
  out.push_back(NeedOf(config, z, on_gpu));
  z.offload_param.device = OffloadConfig::Device::kNvme;
  out.push_back(NeedOf(config, z, on_gpu));
  return out;
}

std::string MemoryAdvice(const Config& config, const MachineMemory& machine) {
  const bool on_gpu = machine.device_bytes > 0;
  const uint64_t ranks = static_cast<uint64_t>(std::max(machine.ranks_per_host, 1));
  const double usable = 0.92;
  auto fits = [&](const MemoryNeed& n) {
    return (!on_gpu || static_cast<double>(n.device) <= usable * machine.device_bytes) &&
           (machine.host_bytes == 0 ||
            static_cast<double>(ranks * n.host) <= usable * machine.host_bytes);
  };
  const auto gib = [](uint64_t b) { return io::FormatBytes(b); };
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line,
                "Activations per micro batch (%lld x %lld tokens): %s as it is, %s with "
                "activation checkpointing (stage 3 recomputes every unit: the latter)\n",
                static_cast<long long>(config.batch.micro_batch_per_gpu),
                static_cast<long long>(config.model.seq_len),
                gib(ActivationBytes(config, false, on_gpu)).c_str(),
                gib(ActivationBytes(config, true, on_gpu)).c_str());
  out += line;
  out +=
      "At start-up a rank holds its model state only (partitioned construction: no rank builds "
      "the whole model), plus one tensor's initial values in fp32 on the host\n";
  std::snprintf(
      line, sizeof line, "Per rank while training, on %s%s, host %s shared by %llu rank(s):\n",
      machine.device_name.c_str(), on_gpu ? (" (" + gib(machine.device_bytes) + ")").c_str() : "",
      machine.host_bytes > 0 ? gib(machine.host_bytes).c_str() : "(not this one)",
      static_cast<unsigned long long>(ranks));
  out += line;
  std::snprintf(line, sizeof line, "  %-52s %12s %12s %12s  %s\n", "setting", "device", "host",
                "nvme", "fits");
  out += line;
  const std::vector<MemoryNeed> settings = SettingsByCost(config, on_gpu);
  const MemoryNeed* cheapest = nullptr;
  for (const MemoryNeed& n : settings) {
    const bool ok = fits(n);
    if (ok && cheapest == nullptr) cheapest = &n;
    std::snprintf(line, sizeof line, "  %-52s %12s %12s %12s  %s\n", n.setting.c_str(),
                  on_gpu ? gib(n.device).c_str() : "-", gib(n.host).c_str(),
                  n.nvme > 0 ? gib(n.nvme).c_str() : "-", ok ? "yes" : "no");
    out += line;
  }
  if (cheapest == nullptr) {
    return out + "No setting fits: lower train_micro_batch_size_per_gpu (now " +
           std::to_string(config.batch.micro_batch_per_gpu) +
           "), turn on model.activation_checkpointing, train on more ranks, or a smaller model\n";
  }
  out += "Cheapest setting that fits: " + cheapest->setting + ": ";
  if (on_gpu) {
    out += gib(cheapest->device) + " of " + gib(machine.device_bytes) + " per GPU, ";
  }
  out += machine.host_bytes > 0
             ? gib(ranks * cheapest->host) + " of " + gib(machine.host_bytes) + " host\n"
             : gib(ranks * cheapest->host) + " of host memory (not checked: not this machine)\n";
  return out;
}

Status CheckMemoryFits(const Config& config, const MachineMemory& machine) {
  const MemoryEstimate e = EstimateMemory(config.model, config.batch.data_parallel_size,
                                          config.zero, config.precision(), config.parallel);
  const uint64_t ranks = static_cast<uint64_t>(std::max(machine.ranks_per_host, 1));
  const bool on_cpu = machine.device_bytes == 0;
  // On the CPU the device is the host: everything shares its memory.
  const uint64_t host_need = ranks * (e.host + (on_cpu ? e.device_total() : 0));
  std::string where;
  uint64_t need = 0, have = 0;
  if (machine.host_bytes > 0 && host_need > machine.host_bytes) {
    where = "host memory (" + std::to_string(ranks) + " rank(s) on this host" +
            (on_cpu ? ", training on the CPU" : ", offloaded state") + ")";
    need = host_need;
    have = machine.host_bytes;
  } else if (!on_cpu && e.device_total() > machine.device_bytes) {
    where = "memory of " + machine.device_name;
    need = e.device_total();
    have = machine.device_bytes;
  } else {
    return Status::OK();
  }
  const ModelConfig& m = config.model;
  std::string sizes = "model.n_layer " + std::to_string(m.n_layer) + ", model.d_model " +
                      std::to_string(m.d_model) + ", model.vocab " + std::to_string(m.vocab);
  std::string ways = "lower the model's size (" + sizes + ")";
  if (!config.zero.Stage().partitions_parameters()) {
    ways += ", raise zero_optimization.stage (now " + std::to_string(config.zero.stage) +
            ") and train on more ranks";
  } else {
    ways += ", train on more ranks";
  }
  if (!on_cpu && config.zero.Stage().partitions_optimizer() &&
      config.zero.offload_optimizer.device != OffloadConfig::Device::kCpu) {
    ways += ", or offload the optimizer (zero_optimization.offload_optimizer.device: cpu)";
  }
  return Status::InvalidArgument(
      "the model does not fit: " + std::to_string(ParametersOnLargestRank(m, config.parallel)) +
      " parameters need " + io::FormatBytes(need) + " of model state at ZeRO stage " +
      std::to_string(config.zero.stage) +
      " (weights, gradients, optimizer; activations come on "
      "top), but the " +
      where + " is " + io::FormatBytes(have) + ": " + ways +
      ". 'dsrun --config ... --dry-run' prints the memory table");
}

}  // namespace ds::engine
