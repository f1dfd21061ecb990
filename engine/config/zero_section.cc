// zero_optimization, with DeepSpeed 0.19.8's keys, aliases, deprecated names and defaults
// (deepspeed/runtime/zero/config.py, offload_config.py), and Hugging Face's "auto" rules for the
// bucket sizes (derived from the model's hidden size).
#include <limits>

#include "engine/config/sections.h"
#include "engine/config/zero_stage.h"

namespace ds::engine::internal {

namespace {

// Keys DeepSpeed removed and now refuses (runtime/config.py _REMOVED_ZERO_CONFIG_KEYS).
const char* const kRemovedZeroKeys[] = {"mics_shard_size", "mics_hierarchical_params_gather",
                                        "zeropp_loco_param"};

// pydantic aliases: both names are accepted; the first is the one DeepSpeed documents.
const std::pair<const char*, const char*> kZeroAliases[] = {
    {"stage3_prefetch_bucket_size", "prefetch_bucket_size"},
    {"stage3_param_persistence_threshold", "param_persistence_threshold"},
    {"stage3_model_persistence_threshold", "model_persistence_threshold"},
    {"stage3_max_live_parameters", "max_live_parameters"},
    {"stage3_max_reuse_distance", "max_reuse_distance"},
    {"stage3_gather_16bit_weights_on_model_save", "gather_16bit_weights_on_model_save"},
    {"stage3_module_granularity_threshold", "module_granularity_threshold"},
    {"stage3_use_all_reduce_for_fetch_params", "use_all_reduce_for_fetch_params"},
    {"stage3_allgather_sequential", "allgather_sequential"},
};

OffloadConfig ReadOffload(SectionReader& z, std::string_view key, bool is_param, ZeroStage stage) {
  SectionReader r = z.Child(key);
  OffloadConfig out;
  std::string device = r.Choice("device", "none", {"none", "cpu", "nvme"}, false);
  out.device = device == "cpu"    ? OffloadConfig::Device::kCpu
               : device == "nvme" ? OffloadConfig::Device::kNvme
                                  : OffloadConfig::Device::kNone;
  const bool nvme = device == "nvme";
  const json path = r.Any("nvme_path", nullptr, nvme ? Use::kImplemented : Use::kIgnored);
  out.buffer_count =
      r.Int("buffer_count", is_param ? 5 : 4, 1, nvme ? Use::kImplemented : Use::kIgnored);
  out.pin_memory = r.Bool("pin_memory", true);
  if (nvme && r.diag()->ok()) {
    if (!is_param && !stage.partitions_optimizer()) {
      r.diag()->Error(r.KeyPath("device") + " 'nvme' needs ZeRO stage 1-3 (as in DeepSpeed)");
    } else if (!path.is_string() || path.get<std::string>().empty()) {
      r.diag()->Error(r.KeyPath("nvme_path") +
                      " must name a directory on the NVMe disk when device is 'nvme'");
    } else {
      out.nvme_path = path.get<std::string>();
    }
  }
  if (is_param) {
    r.Int("buffer_size", 100'000'000, 0, Use::kIgnored);
    r.Int("max_in_cpu", 1'000'000'000, 0, Use::kIgnored);
  } else {
    r.Bool("pipeline_read", false, Use::kIgnored);
    r.Bool("pipeline_write", false, Use::kIgnored);
    r.Bool("fast_init", false, Use::kIgnored);
    double ratio = r.Number("ratio", 1.0, Use::kIgnored);
    r.Bool("super_offload", false, Use::kIgnored);
    double cores = r.Number("cpuadam_cores_perc", 0.8, Use::kIgnored);
    if (r.diag()->ok() && !(ratio >= 0 && ratio <= 1)) {
      r.diag()->Error(r.KeyPath("ratio") + " must be in [0, 1], got " + ShowNumber(ratio));
    } else if (r.diag()->ok() && ratio < 1 && !stage.partitions_parameters()) {
      r.diag()->Error(r.KeyPath("ratio") + " < 1 (partial offload) needs stage 3, as in DeepSpeed");
    } else if (r.diag()->ok() && !(cores >= 0 && cores <= 1)) {
      r.diag()->Error(r.KeyPath("cpuadam_cores_perc") + " must be in [0, 1], got " +
                      ShowNumber(cores));
    }
  }
  r.Finish();
  return out;
}

// DeepSpeed's deprecated booleans that stand for an offload section.
void ReplaceDeprecatedOffload(SectionReader& z, const char* old_key, const char* new_key) {
  z.Know(old_key);
  const json* v = z.Get(old_key);
  if (v == nullptr) return;
  if (z.Has(new_key)) {
    z.diag()->Error("give " + z.KeyPath(new_key) + " or the deprecated " + z.KeyPath(old_key) +
                    ", not both");
    return;
  }
  z.diag()->Warn(z.KeyPath(old_key) + " is deprecated: use " + z.KeyPath(new_key) +
                 " {\"device\": \"cpu\"}");
  bool on = v->is_boolean() && v->get<bool>();
  z.Replace(new_key, on ? json{{"device", "cpu"}} : json(nullptr));
  z.Replace(old_key, nullptr);
}

}  // namespace

void ReadZero(SectionReader& top, const ModelConfig& model, ZeroConfig* out) {
  Diagnostics* d = top.diag();
  // DeepSpeed's oldest form: "zero_optimization": true means stage 1, with the top-level
  // allgather_size as the bucket.
  top.Know("allgather_size");
  const json* old = top.Get("zero_optimization");
  if (old != nullptr && old->is_boolean()) {
    json converted = {{"stage", old->get<bool>() ? 1 : 0}};
    if (old->get<bool>()) {
      const json* size = top.Get("allgather_size");
      converted["allgather_bucket_size"] = size != nullptr ? *size : json(500'000'000);
    }
    d->Warn("\"zero_optimization\": " + Show(*old) +
            " is deprecated: use \"zero_optimization\": {\"stage\": N}");
    top.Replace("zero_optimization", converted);
  }
  SectionReader z = top.Child("zero_optimization");
  for (const char* key : kRemovedZeroKeys) {
    z.Know(key);
    if (z.Has(key) && d->ok()) {
      d->Error(z.KeyPath(key) + " was removed from DeepSpeed, which refuses it: remove the key");
    }
  }
  for (const auto& [key, alias] : kZeroAliases) z.Alias(key, alias);

  const int64_t stage = z.Int("stage", 0, 0);
  if (Result<ZeroStage> valid = ZeroStage::Of(stage); !valid.ok()) {
    if (d->ok()) d->Error(valid.status().message());
  } else {
    out->stage = valid->number();
  }
  out->contiguous_gradients = z.Bool("contiguous_gradients", true);
  out->reduce_scatter = z.Bool("reduce_scatter", true);
  // Hugging Face's "auto" for the bucket sizes: from the hidden size.
  const int64_t h = model.d_model;
  if (h > 0) {
    z.FillAuto("reduce_bucket_size", h * h, "d_model^2, as Hugging Face derives it");
    z.FillAuto("stage3_prefetch_bucket_size",
               static_cast<int64_t>(0.9 * static_cast<double>(h * h)),
               "0.9 * d_model^2, as Hugging Face derives it");
    z.FillAuto("stage3_param_persistence_threshold", 10 * h,
               "10 * d_model, as Hugging Face derives it");
  }
  out->reduce_bucket_size = z.Int("reduce_bucket_size", 500'000'000, 1);
  z.Bool("use_multi_rank_bucket_allreduce", true, Use::kIgnored);
  out->allgather_partitions = z.Bool("allgather_partitions", true);
  out->allgather_bucket_size = z.Int("allgather_bucket_size", 500'000'000, 0);
  out->overlap_comm =
      z.Bool("overlap_comm", out->Stage().partitions_parameters());  // DeepSpeed: on at stage 3
  bool grad_norm = z.Bool("compute_grad_norm", true, Use::kIgnored);
  if (d->ok() && !grad_norm && out->stage != 1 && out->stage != 2) {
    d->Error("zero_optimization.compute_grad_norm=false is supported only with ZeRO stage 1 or 2");
  }
  z.Bool("load_from_fp32_weights", true, Use::kIgnored);
  z.Bool("elastic_checkpoint", false, Use::kIgnored);

  ReplaceDeprecatedOffload(z, "cpu_offload", "offload_optimizer");
  ReplaceDeprecatedOffload(z, "cpu_offload_param", "offload_param");
  z.Know("cpu_offload_use_pin_memory");
  if (z.Has("cpu_offload_use_pin_memory")) {
    d->Warn(z.KeyPath("cpu_offload_use_pin_memory") +
            " is deprecated and has no effect: use offload_optimizer.pin_memory or "
            "offload_param.pin_memory");
  }
  out->offload_param = ReadOffload(z, "offload_param", true, out->Stage());
  out->offload_optimizer = ReadOffload(z, "offload_optimizer", false, out->Stage());
  if (out->offload_param.device != OffloadConfig::Device::kNone &&
      !out->Stage().partitions_parameters()) {
    d->Warn("zero_optimization.offload_param has no effect below stage 3 (as in DeepSpeed)");
  }
  if (out->offload_optimizer.device == OffloadConfig::Device::kCpu &&
      !out->Stage().partitions_optimizer()) {
    d->Warn("zero_optimization.offload_optimizer has no effect at stage 0 (as in DeepSpeed)");
  }
  z.Opaque("zenflow");

  out->sub_group_size = z.Int("sub_group_size", 1'000'000'000, 0);
  out->stage3_prefetch_bucket_size = z.Int("stage3_prefetch_bucket_size", 50'000'000, 0);
  out->stage3_param_persistence_threshold = z.Int("stage3_param_persistence_threshold", 100'000, 0);
  z.Int("stage3_model_persistence_threshold", std::numeric_limits<int64_t>::max(), 0,
        Use::kIgnored);
  out->stage3_max_live_parameters = z.Int("stage3_max_live_parameters", 1'000'000'000, 0);
  out->stage3_max_reuse_distance = z.Int("stage3_max_reuse_distance", 1'000'000'000, 0);
  // The deprecated fp16 name sets the 16-bit one.
  z.Know("stage3_gather_fp16_weights_on_model_save");
  if (z.Has("stage3_gather_fp16_weights_on_model_save")) {
    if (z.Has("stage3_gather_16bit_weights_on_model_save")) {
      d->Error(
          "give zero_optimization.stage3_gather_16bit_weights_on_model_save or the "
          "deprecated stage3_gather_fp16_weights_on_model_save, not both");
    }
    d->Warn(
        "zero_optimization.stage3_gather_fp16_weights_on_model_save is deprecated: use "
        "stage3_gather_16bit_weights_on_model_save");
    z.Alias("stage3_gather_16bit_weights_on_model_save",
            "stage3_gather_fp16_weights_on_model_save");
  }
  out->stage3_gather_16bit_weights_on_model_save =
      z.Bool("stage3_gather_16bit_weights_on_model_save", false);
  z.Int("stage3_module_granularity_threshold", 0, INT64_MIN, Use::kIgnored);
  z.Bool("stage3_use_all_reduce_for_fetch_params", false, Use::kIgnored);
  z.Bool("stage3_allgather_sequential", false, Use::kIgnored);
  z.Bool("ignore_unused_parameters", true, Use::kIgnored);
  z.Bool("legacy_stage1", false, Use::kIgnored);
  out->round_robin_gradients = z.Bool("round_robin_gradients", false);
  z.Bool("parameter_alignment", false, Use::kIgnored);
  z.Int("zero_hpz_partition_size", 1, 0, Use::kIgnored);
  z.Bool("zero_quantized_weights", false, Use::kIgnored);
  z.Bool("zero_quantized_nontrainable_weights", false, Use::kIgnored);
  z.Bool("zero_quantized_gradients", false, Use::kIgnored);
  z.Bool("memory_efficient_linear", true, Use::kIgnored);
  z.Bool("pipeline_loading_checkpoint", false, Use::kIgnored);
  z.Bool("override_module_apply", true, Use::kIgnored);
  z.Bool("log_trace_cache_warnings", false, Use::kIgnored);
  z.Bool("enable_sanity_checks", false, Use::kIgnored);
  z.Bool("save_muon_momentum_buffer_in_memory", false, Use::kIgnored);
  z.Opaque("leaf_module");
  z.Finish();
}

}  // namespace ds::engine::internal
