// dstrain's own sections: model, trainer, data, checkpoint (our keys beside DeepSpeed's) and
// comms. DeepSpeed has none of these (its users write Python for them).
#include <limits>

#include "engine/config/sections.h"
#include "io/units.h"

namespace ds::engine {

// ---- model presets

namespace {

struct PresetEntry {
  const char* name;
  ModelConfig model;
};

// GPT-2 sizes keep GPT-2's vocabulary unpadded (50257); nanoGPT pads to 50304 for speed, which
// a config can do with "vocab": 50304. gpt-1.3b is GPT-3 XL's shape (Brown et al. 2020,
// table 2.1) with 16 heads of 128 (the paper's 24 heads do not divide 2048).
const PresetEntry kPresets[] = {
    {"demo", {"demo", 4, 4, 128, 128, 256}},  // byte-level, trains on a CPU
    {"gpt2-124m", {"gpt2-124m", 12, 12, 768, 1024, 50257}},
    {"gpt2-350m", {"gpt2-350m", 24, 16, 1024, 1024, 50257}},
    {"gpt2-774m", {"gpt2-774m", 36, 20, 1280, 1024, 50257}},
    {"gpt2-1558m", {"gpt2-1558m", 48, 25, 1600, 1024, 50257}},
    {"gpt-1.3b", {"gpt-1.3b", 24, 16, 2048, 2048, 50257}},
};

std::string PresetList() {
  std::string out;
  for (const PresetEntry& p : kPresets) out += (out.empty() ? "" : ", ") + std::string(p.name);
  return out;
}

}  // namespace

std::vector<std::string> ModelPresetNames() {
  std::vector<std::string> out;
  for (const PresetEntry& p : kPresets) out.emplace_back(p.name);
  return out;
}

Result<ModelConfig> ModelPreset(std::string_view name) {
  for (const PresetEntry& p : kPresets) {
    if (name == p.name) return p.model;
  }
  return Status::InvalidArgument("model preset '" + std::string(name) +
                                 "' is not known (presets: " + PresetList() + ")");
}

std::string_view DataFormatName(DataConfig::Format f) {
  switch (f) {
    case DataConfig::Format::kAuto: return "auto";
    case DataConfig::Format::kNanoGpt: return "nanogpt";
    case DataConfig::Format::kLlmc: return "llmc";
    case DataConfig::Format::kText: return "text";
  }
  return "auto";
}

namespace internal {

namespace {

// A byte size given as a number of bytes or as text ("4MiB", "4G": io::ParseByteSize).
uint64_t ByteSize(SectionReader& r, std::string_view key, uint64_t def) {
  r.Know(key);
  const json* v = r.Get(key);
  uint64_t out = def;
  if (v == nullptr || IsAuto(v)) {
    // default
  } else if (v->is_number_unsigned() || (v->is_number_integer() && v->get<int64_t>() >= 0)) {
    out = v->get<uint64_t>();
  } else if (v->is_string()) {
    Result<uint64_t> parsed = io::ParseByteSize(v->get<std::string>());
    if (parsed.ok()) {
      out = *parsed;
    } else {
      r.diag()->Error(r.KeyPath(key) + " " + Show(*v) + ": " + parsed.status().message());
    }
  } else {
    r.diag()->Error(r.KeyPath(key) + " must be a byte count or a size like \"4MiB\", got " +
                    Show(*v));
  }
  r.resolved()[std::string(key)] = out;
  return out;
}

}  // namespace

// ---- model

int64_t ModelSizeLimit(std::string_view key) {
  if (key == "n_layer") return 10'000;
  if (key == "n_head") return 4'096;
  if (key == "d_model") return int64_t{1} << 17;
  if (key == "seq_len") return int64_t{1} << 22;
  if (key == "vocab") return int64_t{1} << 24;  // token ids are stored in 32 bits
  return INT64_MAX;
}

void ReadModel(SectionReader& top, ModelConfig* out) {
  SectionReader m = top.Child("model");
  const char* kSizes[] = {"n_layer", "n_head", "d_model", "seq_len", "vocab"};
  if (!m.present()) {
    top.diag()->Error(
        "model is not set: add \"model\": {\"preset\": \"gpt2-124m\"} (presets: " + PresetList() +
        "), or give model.n_layer, n_head, d_model, seq_len and vocab");
  }
  ModelConfig base;
  const std::string hf_path = m.String("hf_path", "");
  std::string preset = m.String("preset", "");
  if (!hf_path.empty()) {
    // Sizes come from the folder's config.json (LoadConfig); only the sequence is ours.
    base.arch = "hf";
    base.seq_len = 1024;
    for (const char* key : {"preset", "n_layer", "n_head", "d_model", "vocab"}) {
      if (m.Has(key)) {
        m.diag()->Error("model." + std::string(key) + " is set beside model.hf_path: the " +
                        "folder's config.json gives the model's sizes (remove model." + key + ")");
      }
    }
  } else if (!preset.empty()) {
    Result<ModelConfig> p = ModelPreset(preset);
    if (p.ok()) {
      base = *p;
    } else {
      m.diag()->Error("model.preset '" + preset + "' is not known (presets: " + PresetList() + ")");
    }
  } else if (m.present()) {
    for (const char* key : kSizes) {
      if (m.IsAutoValue(key)) {
        m.diag()->Error("\"auto\" for model." + std::string(key) +
                        " cannot be derived: give a number, or a model.preset (" + PresetList() +
                        ")");
      } else if (!m.Has(key)) {
        m.diag()->Error("model." + std::string(key) + " is not set: give it, or a model.preset (" +
                        PresetList() + ")");
      }
    }
  }
  *out = base;
  out->hf_path = hf_path;
  out->arch = m.String("arch", base.arch.empty() ? "gpt" : base.arch);
  out->seq_len = m.Int("seq_len", base.seq_len, 1);
  out->activation_checkpointing = m.Bool("activation_checkpointing", false);
  if (!hf_path.empty()) {
    m.Finish();
    return;
  }
  out->n_layer = m.Int("n_layer", base.n_layer, 1);
  out->n_head = m.Int("n_head", base.n_head, 1);
  out->d_model = m.Int("d_model", base.d_model, 1);
  out->vocab = m.Int("vocab", base.vocab, 1);
  // Far beyond any model trained today, and small enough that parameter counts and memory
  // estimates cannot overflow; what does not fit the machine is refused later, by memory.
  const std::pair<const char*, int64_t> limits[] = {{"n_layer", out->n_layer},
                                                    {"n_head", out->n_head},
                                                    {"d_model", out->d_model},
                                                    {"seq_len", out->seq_len},
                                                    {"vocab", out->vocab}};
  for (const auto& [key, value] : limits) {
    const int64_t max = ModelSizeLimit(key);
    if (m.diag()->ok() && value > max) {
      m.diag()->Error("model." + std::string(key) + " is " + std::to_string(value) + ": at most " +
                      std::to_string(max) + " (lower model." + key + ")");
    }
  }
  if (m.diag()->ok() && out->d_model % out->n_head != 0) {
    m.diag()->Error("model.d_model (" + std::to_string(out->d_model) +
                    ") must be a multiple of model.n_head (" + std::to_string(out->n_head) + ")");
  }
  m.Finish();
}

namespace {

// "auto", "true" or "false", where JSON booleans mean what they say (as DeepSpeed's flags are
// booleans); absent: `def`.
std::string AutoOrBool(SectionReader& section, std::string_view key, std::string_view def) {
  if (const auto* v = section.Get(key); v != nullptr && v->is_boolean()) {
    section.Know(key);
    const std::string value = v->get<bool>() ? "true" : "false";
    section.resolved()[std::string(key)] = value;
    return value;
  }
  return section.Choice(key, def, {"auto", "true", "false"}, true);
}

}  // namespace

// ---- trainer

void ReadTrainer(SectionReader& top, std::optional<int64_t> scheduler_total_steps,
                 TrainerConfig* out) {
  SectionReader t = top.Child("trainer");
  if (!t.Has("max_steps") || t.IsAutoValue("max_steps")) {
    if (scheduler_total_steps.has_value()) {
      // Train as long as the schedule runs.
      t.resolved()["max_steps"] = *scheduler_total_steps;
      top.diag()->auto_filled.push_back(
          "trainer.max_steps = " + std::to_string(*scheduler_total_steps) +
          " (scheduler.params.total_num_steps)");
      out->max_steps = *scheduler_total_steps;
    } else {
      // As a DeepSpeed user's script does: train over the data trainer.epochs times.
      out->max_steps = 0;
      top.diag()->auto_filled.push_back(
          "trainer.max_steps = trainer.epochs passes over the training data (counted when the "
          "data is opened; --max-steps N to choose)");
    }
    t.Know("max_steps");
    out->epochs = t.Int("epochs", 1, 1);
  } else {
    out->max_steps = t.Int("max_steps", 0, 1);
    if (t.Has("epochs")) {
      t.diag()->Warn("trainer.epochs is ignored: trainer.max_steps (" +
                     std::to_string(out->max_steps) + ") sets the length");
      out->epochs = t.Int("epochs", 1, 1);
    }
  }
  out->eval_interval = t.Int("eval_interval", out->eval_interval, 0);
  out->eval_iters = t.Int("eval_iters", out->eval_iters, 1);
  out->seed = static_cast<uint64_t>(t.Int("seed", static_cast<int64_t>(out->seed), 0));
  out->output_dir = t.String("output_dir", out->output_dir);
  out->cuda_graphs = AutoOrBool(t, "cuda_graphs", out->cuda_graphs);
  t.Finish();
}

// ---- data

void ReadData(SectionReader& top, DataConfig* out) {
  SectionReader d = top.Child("data");
  out->path = d.String("path", "");
  std::string format = d.Choice("format", "auto", {"auto", "nanogpt", "llmc", "text"}, true);
  out->format = format == "nanogpt" ? DataConfig::Format::kNanoGpt
                : format == "llmc"  ? DataConfig::Format::kLlmc
                : format == "text"  ? DataConfig::Format::kText
                                    : DataConfig::Format::kAuto;
  out->val_path = d.String("val_path", "");
  out->val_fraction = d.Number("val_fraction", out->val_fraction);
  if (d.diag()->ok() && !(out->val_fraction >= 0 && out->val_fraction < 1)) {
    d.diag()->Error("data.val_fraction must be in [0, 1), got " + ShowNumber(out->val_fraction));
  }
  if (d.Has("mlm_probability")) {
    const double p = d.Number("mlm_probability", 0.15);
    if (d.diag()->ok() && !(p > 0 && p < 1)) {
      d.diag()->Error("data.mlm_probability must be in (0, 1) (BERT's is 0.15), got " +
                      ShowNumber(p));
    }
    out->mlm_probability = p;
  }
  d.Finish();
}

// ---- checkpoint

void ReadCheckpoint(SectionReader& top, CheckpointConfig* out) {
  SectionReader c = top.Child("checkpoint");
  // Ours.
  out->save_dir = c.String("save_dir", out->save_dir);
  out->save_interval_steps = c.Int("save_interval_steps", out->save_interval_steps, 0);
  out->save_interval_minutes = c.Int("save_interval_minutes", out->save_interval_minutes, 0);
  const int64_t kMaxKeep = std::numeric_limits<uint32_t>::max();
  out->keep_last = static_cast<uint32_t>(std::min(c.Int("keep_last", 0, 0), kMaxKeep));
  out->keep_best = static_cast<uint32_t>(std::min(c.Int("keep_best", 0, 0), kMaxKeep));
  out->keep_every = c.Int("keep_every", 0, 0);
  out->max_bytes = ByteSize(c, "max_bytes", 0);
  out->best_metric = c.String("best_metric", out->best_metric);
  out->best_mode = c.Choice("best_mode", "min", {"min", "max"}, true);
  out->enabled = c.Bool("enabled", out->enabled);
  out->codec = c.Choice("codec", out->codec, {"bytegroup+zstd", "zstd", "raw"}, true);
  out->zstd_level = static_cast<int>(c.Int("zstd_level", out->zstd_level, -(1 << 17)));
  if (c.diag()->ok() && out->zstd_level > 22) {
    c.diag()->Error("checkpoint.zstd_level must be at most 22 (zstd's maximum), got " +
                    std::to_string(out->zstd_level));
  }
  out->chunk_bytes = ByteSize(c, "chunk_bytes", out->chunk_bytes);
  out->staging_bytes = ByteSize(c, "staging_bytes", out->staging_bytes);
  // The save pipeline's own limits (ckpt/writer.cc), checked here so a bad value fails at start.
  if (c.diag()->ok() && (out->chunk_bytes < 4096 || out->chunk_bytes > (uint64_t{256} << 20))) {
    c.diag()->Error("checkpoint.chunk_bytes must be between 4 KiB and 256 MiB, got " +
                    io::FormatBytes(out->chunk_bytes));
  }
  if (c.diag()->ok() && out->staging_bytes != 0 && out->staging_bytes < 2 * out->chunk_bytes) {
    c.diag()->Error("checkpoint.staging_bytes (" + io::FormatBytes(out->staging_bytes) +
                    ") must hold at least two chunks (2 * checkpoint.chunk_bytes = " +
                    io::FormatBytes(2 * out->chunk_bytes) + ")");
  }
  out->when_busy = c.Choice("when_busy", "wait", {"wait", "skip"}, true);
  out->encode_threads =
      static_cast<uint32_t>(std::min<int64_t>(c.Int("encode_threads", 0, 0), 4096));
  out->background_nice = static_cast<int>(c.Int("background_nice", out->background_nice, 0));
  out->max_failed_saves = c.Int("max_failed_saves", out->max_failed_saves, 0);
  if (c.diag()->ok() && out->background_nice > 19) {
    c.diag()->Error("checkpoint.background_nice must be between 0 and 19 (Linux niceness), got " +
                    std::to_string(out->background_nice));
  }
  out->device_staging = AutoOrBool(c, "device_staging", out->device_staging);
  // DeepSpeed's. Our checkpoints always hold logical tensors, so every load is what DeepSpeed
  // calls a universal load: load_universal changes nothing.
  out->tag_validation = c.Choice("tag_validation", "WARN", {"IGNORE", "WARN", "FAIL"}, true);
  out->load_universal = c.Bool("load_universal", false);
  out->use_node_local_storage = c.Bool("use_node_local_storage", false, Use::kIgnored);
  SectionReader parallel_write = c.Child("parallel_write");
  parallel_write.Bool("pipeline_stage", false, Use::kIgnored);
  parallel_write.Finish();
  c.Bool("checkpoint_serialization", true, Use::kIgnored);
  c.Opaque("writer");
  c.Finish();
}

// ---- comms

void ReadComms(SectionReader& top, CommsConfig* out) {
  top.Know("communication_data_type");
  if (top.Has("communication_data_type") && !top.IsAutoValue("communication_data_type")) {
    std::string type =
        top.Choice("communication_data_type", "fp32", {"fp32", "fp16", "bf16"}, true);
    out->communication_data_type = type == "fp16"   ? Precision::kFp16
                                   : type == "bf16" ? Precision::kBf16
                                                    : Precision::kFp32;
  } else {
    top.resolved()["communication_data_type"] = nullptr;  // DeepSpeed: the training precision
  }
  out->prescale_gradients = top.Bool("prescale_gradients", false);
  out->gradient_predivide_factor = top.Number("gradient_predivide_factor", 1.0);
  if (top.diag()->ok() && !(out->gradient_predivide_factor > 0)) {
    top.diag()->Error("gradient_predivide_factor must be > 0, got " +
                      ShowNumber(out->gradient_predivide_factor));
  }
  // "sum" changes the update itself (gradients world_size times larger), so it is refused
  // rather than ignored.
  if (top.Choice("gradient_allreduce_op", "mean", {"mean", "sum"}, true) == "sum" &&
      top.diag()->ok()) {
    top.diag()->Error(
        "gradient_allreduce_op 'sum' is not implemented in dstrain (gradients are averaged: "
        "use \"mean\")");
  }
  top.Choice("seq_parallel_communication_data_type", "fp32", {"fp32", "fp16", "bf16"}, true,
             Use::kIgnored);
  SectionReader c = top.Child("comms");
  out->timeout_s = c.Int("timeout_s", out->timeout_s, 1);
  c.Finish();
}

}  // namespace internal
}  // namespace ds::engine
