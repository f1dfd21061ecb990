// DeepSpeed's sections, with DeepSpeed 0.19.8's defaults and checks: batch sizes
// (runtime/config.py), fp16/bf16 (runtime/precision_config.py), optimizer (runtime/engine.py,
// ops/adam), scheduler (runtime/lr_schedules.py), monitors (monitor/config.py, profiling/), and
// the keys dstrain accepts without acting on them. ZeRO is in zero_section.cc.
#include <cmath>
#include <optional>

#include "engine/config/sections.h"

namespace ds::engine {

std::string_view PrecisionName(Precision p) {
  switch (p) {
    case Precision::kFp32: return "fp32";
    case Precision::kFp16: return "fp16";
    case Precision::kBf16: return "bf16";
  }
  return "fp32";
}

std::string_view SchedulerTypeName(SchedulerConfig::Type t) {
  switch (t) {
    case SchedulerConfig::Type::kNone: return "none";
    case SchedulerConfig::Type::kWarmupLR: return "WarmupLR";
    case SchedulerConfig::Type::kWarmupDecayLR: return "WarmupDecayLR";
    case SchedulerConfig::Type::kWarmupCosineLR: return "WarmupCosineLR";
    case SchedulerConfig::Type::kOneCycle: return "OneCycle";
    case SchedulerConfig::Type::kLRRangeTest: return "LRRangeTest";
  }
  return "none";
}

namespace internal {

namespace {

std::string Str(int64_t v) { return std::to_string(v); }

// Samples per step, per rank or in all: far beyond any real batch, small enough that the
// products below and the data loader's arithmetic cannot overflow.
constexpr int64_t kMaxBatchValue = int64_t{1} << 24;

// a * b * c, or nullopt when it overflows int64.
std::optional<int64_t> Product(int64_t a, int64_t b, int64_t c) {
  int64_t ab = 0, abc = 0;
  if (__builtin_mul_overflow(a, b, &ab) || __builtin_mul_overflow(ab, c, &abc)) {
    return std::nullopt;
  }
  return abc;
}

// A value the user must give: absent or "auto" is an error saying how to give it.
bool Required(SectionReader& r, std::string_view key, std::string_view needed_by) {
  r.Know(key);
  if (r.IsAutoValue(key)) {
    r.diag()->Error("\"auto\" for " + r.KeyPath(key) + " cannot be derived: give a number, or " +
                    "pass --set " + r.KeyPath(key) + "=X");
    return false;
  }
  if (!r.Has(key)) {
    r.diag()->Error(r.KeyPath(key) + " is required by " + std::string(needed_by) +
                    " (DeepSpeed has no default): give a number");
    return false;
  }
  return true;
}

}  // namespace

// ---- batch sizes: DeepSpeedConfig._set_batch_related_parameters and _batch_assertion

void ReadBatch(SectionReader& top, int64_t world_size, BatchConfig* out) {
  Diagnostics* d = top.diag();
  struct Given {
    const char* key;
    std::optional<int64_t> value;  // absent, null or "auto": empty
    bool is_auto = false;
  };
  Given tbs{"train_batch_size"}, micro{"train_micro_batch_size_per_gpu"},
      gas{"gradient_accumulation_steps"};
  // All three are known before any is checked: an invalid one must not make another look
  // like an unknown key.
  for (Given* g : {&tbs, &micro, &gas}) top.Know(g->key);
  for (Given* g : {&tbs, &micro, &gas}) {
    const json* v = top.Get(g->key);
    g->is_auto = IsAuto(v);
    if (v == nullptr || g->is_auto) continue;
    g->value = AsInteger(*v);
    if (!g->value || *g->value <= 0) {
      d->Error(std::string(g->key) + " must be a positive integer, got " + Show(*v));
      return;
    }
    if (*g->value > kMaxBatchValue) {
      d->Error(std::string(g->key) + " is " + Str(*g->value) + ": at most " + Str(kMaxBatchValue) +
               " (samples per step; lower " + g->key + ")");
      return;
    }
  }
  const int64_t w = world_size;
  std::string why;  // how the missing values were derived
  // derived = train_batch_size / (by * w), which must divide exactly.
  auto divide = [&](const Given& by, Given* derived, std::string_view divisor_text) {
    int64_t divisor = *by.value * w;
    if (*tbs.value % divisor != 0) {
      d->Error("cannot derive " + std::string(derived->key) + ": train_batch_size (" +
               Str(*tbs.value) + ") is not a multiple of " + std::string(divisor_text) + " = " +
               Str(divisor));
      return false;
    }
    derived->value = *tbs.value / divisor;
    why = "train_batch_size / (" + std::string(by.key) + " * data-parallel size)";
    return true;
  };
  auto times_world = [&](const Given& g) {
    return std::string(g.key) + " (" + Str(*g.value) + ") * data-parallel size (" + Str(w) + ")";
  };
  if (tbs.value && micro.value && gas.value) {
    // All given: only the check below.
  } else if (tbs.value && micro.value) {
    if (!divide(micro, &gas, times_world(micro))) return;
  } else if (tbs.value && gas.value) {
    if (!divide(gas, &micro, times_world(gas))) return;
  } else if (micro.value && gas.value) {
    tbs.value = Product(*micro.value, *gas.value, w);
    if (!tbs.value || *tbs.value > kMaxBatchValue) {
      d->Error("train_micro_batch_size_per_gpu (" + Str(*micro.value) +
               ") * gradient_accumulation_steps (" + Str(*gas.value) + ") * data-parallel size (" +
               Str(w) + ") is more than " + Str(kMaxBatchValue) +
               " samples per step: lower train_micro_batch_size_per_gpu or "
               "gradient_accumulation_steps");
      return;
    }
    why = "train_micro_batch_size_per_gpu * gradient_accumulation_steps * data-parallel size";
  } else if (tbs.value) {
    // DeepSpeed: no accumulation, the whole batch split over the ranks.
    gas.value = 1;
    if (!divide(gas, &micro,
                "the data-parallel size (" + Str(w) +
                    ") (gradient_accumulation_steps is 1 when not given, as in DeepSpeed)")) {
      return;
    }
    why = "DeepSpeed's rule when only train_batch_size is given";
  } else if (micro.value) {
    gas.value = 1;
    tbs.value = Product(*micro.value, 1, w);
    if (!tbs.value || *tbs.value > kMaxBatchValue) {
      d->Error("train_micro_batch_size_per_gpu (" + Str(*micro.value) + ") * data-parallel size (" +
               Str(w) + ") is more than " + Str(kMaxBatchValue) +
               " samples per step: lower train_micro_batch_size_per_gpu");
      return;
    }
    why = "DeepSpeed's rule when only train_micro_batch_size_per_gpu is given";
  } else if (micro.is_auto) {
    d->Error(
        "\"auto\" for train_micro_batch_size_per_gpu cannot be derived: give train_batch_size "
        "and gradient_accumulation_steps, or pass --set train_micro_batch_size_per_gpu=N");
    return;
  } else if (tbs.is_auto) {
    d->Error(
        "\"auto\" for train_batch_size cannot be derived: give train_micro_batch_size_per_gpu "
        "(and gradient_accumulation_steps), or pass --set train_batch_size=N");
    return;
  } else {
    d->Error(
        "give train_batch_size or train_micro_batch_size_per_gpu (DeepSpeed needs at least one; "
        "gradient_accumulation_steps alone is not enough)");
    return;
  }
  if (Product(*micro.value, *gas.value, w) != tbs.value) {
    d->Error("train_batch_size (" + Str(*tbs.value) + ") != train_micro_batch_size_per_gpu (" +
             Str(*micro.value) + ") * gradient_accumulation_steps (" + Str(*gas.value) +
             ") * data-parallel size (" + Str(w) + ")" +
             (Product(*micro.value, *gas.value, w)
                  ? " = " + Str(*Product(*micro.value, *gas.value, w))
                  : std::string(" overflows")));
    return;
  }
  for (Given* g : {&tbs, &micro, &gas}) {
    top.resolved()[g->key] = *g->value;
    if (g->is_auto) {
      d->auto_filled.push_back(std::string(g->key) + " = " + Str(*g->value) + " (" + why + ")");
    }
  }
  *out = {*tbs.value, *micro.value, *gas.value, w};
}

// ---- fp16, bf16 (runtime/precision_config.py)

void ReadPrecision(SectionReader& top, Fp16Config* fp16, Bf16Config* bf16) {
  SectionReader f = top.Child("fp16");
  fp16->enabled = f.Bool("enabled", false);
  fp16->auto_cast = f.Bool("auto_cast", false, Use::kIgnored);
  fp16->loss_scale = f.Number("loss_scale", 0);
  if (f.diag()->ok() && !(std::isfinite(fp16->loss_scale) && fp16->loss_scale >= 0)) {
    f.diag()->Error("fp16.loss_scale must be >= 0 (0 enables dynamic loss scaling), got " +
                    ShowNumber(fp16->loss_scale));
  }
  fp16->initial_scale_power = f.Int("initial_scale_power", 16, 0);
  fp16->loss_scale_window = f.Int("loss_scale_window", 1000, INT64_MIN);
  fp16->hysteresis = f.Int("hysteresis", 2, 0);
  fp16->consecutive_hysteresis = f.Bool("consecutive_hysteresis", false);
  fp16->min_loss_scale = f.Int("min_loss_scale", 1, INT64_MIN);
  // Needs ZeRO stage 1-3: checked with the ZeRO section (config.cc).
  f.Bool("fp16_master_weights_and_grads", false, Use::kIgnored);
  if (f.diag()->ok() && fp16->enabled && fp16->dynamic()) {
    // Only checked when they are used, as DeepSpeed does.
    if (fp16->loss_scale_window <= 0) {
      f.diag()->Error(
          "fp16.loss_scale_window must be > 0 when dynamic loss scaling is enabled "
          "(loss_scale=0), got " +
          Str(fp16->loss_scale_window));
    } else if (fp16->min_loss_scale <= 0) {
      f.diag()->Error(
          "fp16.min_loss_scale must be > 0 when dynamic loss scaling is enabled (loss_scale=0), "
          "got " +
          Str(fp16->min_loss_scale));
    }
  }
  f.Finish();

  // "bfloat16" is DeepSpeed's old name; DeepSpeed reads it only when "bf16" is absent.
  if (top.Has("bf16") && top.Has("bfloat16")) {
    top.Know("bfloat16");
    top.diag()->Warn("bfloat16 is ignored: bf16 is given (bfloat16 is its old name)");
  } else {
    top.Alias("bf16", "bfloat16");
  }
  SectionReader b = top.Child("bf16");
  bf16->enabled = b.Bool("enabled", false);
  bf16->immediate_grad_update = b.Bool("immediate_grad_update", false, Use::kIgnored);
  bf16->check_grad_overflow = b.Bool("check_grad_overflow", true);
  bool bf16_master = b.Bool("bf16_master_weights_and_grads", false, Use::kIgnored);
  bool bf16_states = b.Bool("bf16_optimizer_states", false, Use::kIgnored);
  if (b.diag()->ok() && bf16_states && !bf16_master) {
    b.diag()->Error(
        "bf16.bf16_optimizer_states requires bf16.bf16_master_weights_and_grads (as in "
        "DeepSpeed)");
  }
  b.Finish();
  if (fp16->enabled && bf16->enabled) {  // independent of any other error
    top.diag()->Error(
        "fp16.enabled and bf16.enabled are both true: choose one (DeepSpeed: bfloat16 and fp16 "
        "modes cannot be simultaneously enabled)");
  }

  SectionReader autocast = top.Child("torch_autocast");
  autocast.Bool("enabled", false, Use::kIgnored);
  autocast.Any("dtype", nullptr, Use::kIgnored);
  autocast.Any("lower_precision_safe_modules", nullptr, Use::kIgnored);
  autocast.Finish();
}

// ---- optimizer (runtime/engine.py _configure_basic_optimizer; ops/adam/fused_adam.py)

void ReadOptimizer(SectionReader& top, OptimizerConfig* out) {
  SectionReader o = top.Child("optimizer");
  Diagnostics* d = top.diag();
  const char* kExample =
      "add \"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 0.0003}} (supported: Adam, "
      "AdamW)";
  if (!o.present()) {
    // DeepSpeed would take the optimizer of the user's script; with none, what that script
    // most often is: Hugging Face Trainer's default AdamW.
    *out = OptimizerConfig();
    out->lr = 5e-5;
    d->Warn(
        "optimizer is not set: training with AdamW, lr 5e-05, betas [0.9, 0.999], eps 1e-08, "
        "weight_decay 0 (Hugging Face Trainer's defaults); to choose, " +
        std::string(kExample));
    return;
  }
  o.Know("type");
  const json* type = o.Get("type");
  std::string name = type != nullptr && type->is_string() ? type->get<std::string>() : "";
  std::string lower = name;
  for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (type == nullptr) {
    d->Error(std::string("optimizer.type is not set: ") + kExample);
  } else if (!type->is_string()) {
    d->Error("optimizer.type must be a string (supported: Adam, AdamW), got " + Show(*type));
  } else if (lower != "adam" && lower != "adamw") {
    d->Error("optimizer.type '" + name + "' is not supported (supported: Adam, AdamW)");
  }
  out->type = lower == "adam" ? OptimizerConfig::Type::kAdam : OptimizerConfig::Type::kAdamW;
  o.resolved()["type"] = lower == "adam" ? "Adam" : "AdamW";
  o.Bool("legacy_fusion", false, Use::kIgnored);

  SectionReader p = o.Child("params");
  if (p.IsAutoValue("lr")) {
    d->Error(
        "\"auto\" for optimizer.params.lr cannot be derived: give a number, or pass --set "
        "optimizer.params.lr=X");
  }
  out->lr = p.Number("lr", 1e-3);
  p.Know("betas");
  const json* betas = p.Get("betas");
  if (IsAuto(betas)) {
    d->auto_filled.push_back("optimizer.params.betas = [0.9,0.999] (default)");
  } else if (betas != nullptr) {
    if (!betas->is_array() || betas->size() != 2 || !(*betas)[0].is_number() ||
        !(*betas)[1].is_number()) {
      d->Error("optimizer.params.betas must be two numbers like [0.9, 0.999], got " + Show(*betas));
    } else {
      out->beta1 = (*betas)[0].get<double>();
      out->beta2 = (*betas)[1].get<double>();
    }
  }
  p.resolved()["betas"] = json::array({out->beta1, out->beta2});
  out->eps = p.Number("eps", 1e-8);
  out->weight_decay = p.Number("weight_decay", 0);
  out->bias_correction = p.Bool("bias_correction", true);
  if (p.Bool("amsgrad", false) && d->ok()) {
    d->Error("optimizer.params.amsgrad is not supported (DeepSpeed's FusedAdam refuses it too)");
  }
  bool adam_w_mode = p.Bool("adam_w_mode", true);
  // DeepSpeed: AdamW always decouples weight decay; Adam does unless adam_w_mode is false.
  out->adam_w_mode = out->type == OptimizerConfig::Type::kAdamW || adam_w_mode;
  p.resolved()["adam_w_mode"] = out->adam_w_mode;
  p.Bool("torch_adam", false, Use::kIgnored);
  p.Bool("fp32_optimizer_states", true, Use::kIgnored);
  p.Any("foreach", nullptr, Use::kIgnored);
  p.Know("max_grad_norm");
  if (p.Has("max_grad_norm")) {
    d->Error(
        "optimizer.params.max_grad_norm is not supported: use the top-level gradient_clipping "
        "(DeepSpeed refuses it too)");
  }
  if (d->ok()) {
    if (!(out->lr >= 0)) d->Error("optimizer.params.lr must be >= 0, got " + ShowNumber(out->lr));
    for (double beta : {out->beta1, out->beta2}) {
      if (!(beta >= 0 && beta < 1)) {
        d->Error("optimizer.params.betas must each be in [0, 1), got " + ShowNumber(beta));
        break;
      }
    }
    if (!(out->eps >= 0)) {
      d->Error("optimizer.params.eps must be >= 0, got " + ShowNumber(out->eps));
    }
    if (!(out->weight_decay >= 0)) {
      d->Error("optimizer.params.weight_decay must be >= 0, got " + ShowNumber(out->weight_decay));
    }
  }
  p.Finish();
  o.Finish();
}

// ---- scheduler (runtime/lr_schedules.py)

namespace {

void ReadWarmupType(SectionReader& p, SchedulerConfig* out) {
  std::string type = p.String("warmup_type", "log");
  if (type != "log" && type != "linear") {
    p.diag()->Warn("scheduler.params.warmup_type '" + type +
                   "' is not log or linear: using log (as DeepSpeed does)");
    type = "log";
    p.resolved()["warmup_type"] = type;
  }
  out->warmup_type =
      type == "linear" ? SchedulerConfig::WarmupType::kLinear : SchedulerConfig::WarmupType::kLog;
}

void ReadTotalSteps(SectionReader& p, const TrainerConfig& trainer, std::string_view type,
                    SchedulerConfig* out) {
  if (trainer.max_steps > 0) p.FillAuto("total_num_steps", trainer.max_steps, "trainer.max_steps");
  p.Know("total_num_steps");
  if (p.IsAutoValue("total_num_steps") && trainer.max_steps == 0) {
    // The run's length in epochs: the trainer fills it when it has counted the data.
    p.resolved()["total_num_steps"] = "auto (the run's length)";
  } else if (p.IsAutoValue("total_num_steps")) {
    p.diag()->Error(
        "\"auto\" for scheduler.params.total_num_steps cannot be derived: give a number, or set "
        "trainer.max_steps (--max-steps N)");
  } else if (!p.Has("total_num_steps")) {
    p.diag()->Error("scheduler.params.total_num_steps is required by " + std::string(type) +
                    " (DeepSpeed has no default): give a number, or \"auto\" to use "
                    "trainer.max_steps");
  }
  out->total_num_steps = p.IsAutoValue("total_num_steps") ? 0 : p.Int("total_num_steps", 0, 1);
  if (p.diag()->ok() && out->total_num_steps > 0 &&
      out->total_num_steps < out->warmup_num_steps) {
    p.diag()->Warn("scheduler.params.total_num_steps " + Str(out->total_num_steps) +
                   " is less than warmup_num_steps " + Str(out->warmup_num_steps));
  }
}

}  // namespace

void ReadScheduler(SectionReader& top, const OptimizerConfig& optimizer,
                   const TrainerConfig& trainer, SchedulerConfig* out) {
  using Type = SchedulerConfig::Type;
  SectionReader s = top.Child("scheduler");
  if (!s.present()) {
    s.Finish();
    top.resolved()["scheduler"] = nullptr;  // DeepSpeed: no scheduler, constant lr
    out->type = Type::kNone;
    return;
  }
  Diagnostics* d = top.diag();
  std::string name = s.String("type", "");
  const Type kTypes[] = {Type::kWarmupLR, Type::kWarmupDecayLR, Type::kWarmupCosineLR,
                         Type::kOneCycle, Type::kLRRangeTest};
  out->type = Type::kNone;
  for (Type t : kTypes) {
    if (name == SchedulerTypeName(t)) out->type = t;  // case-sensitive, as DeepSpeed
  }
  if (out->type == Type::kNone) {
    d->Error("scheduler.type '" + name +
             "' is not supported (supported: WarmupLR, WarmupDecayLR, WarmupCosineLR, OneCycle, "
             "LRRangeTest)");
    s.Finish();
    return;
  }
  SectionReader p = s.Child("params");
  const std::string lr_why = "optimizer.params.lr";
  switch (out->type) {
    case Type::kWarmupLR:
    case Type::kWarmupDecayLR:
      out->warmup_min_lr = p.Number("warmup_min_lr", 0);
      p.FillAuto("warmup_max_lr", optimizer.lr, lr_why);
      // WarmupLR's default is the optimizer's lr; WarmupDecayLR's is 0.001.
      out->warmup_max_lr =
          p.Number("warmup_max_lr", out->type == Type::kWarmupLR ? optimizer.lr : 1e-3);
      out->warmup_num_steps = p.Int("warmup_num_steps", 1000, 1);
      ReadWarmupType(p, out);
      if (out->type == Type::kWarmupDecayLR) ReadTotalSteps(p, trainer, name, out);
      break;
    case Type::kWarmupCosineLR:
      out->warmup_min_ratio = p.Number("warmup_min_ratio", 0);
      out->warmup_num_steps = p.Int("warmup_num_steps", 1000, 1);
      out->cos_min_ratio = p.Number("cos_min_ratio", 1e-4);
      ReadWarmupType(p, out);
      ReadTotalSteps(p, trainer, name, out);
      break;
    case Type::kOneCycle: {
      p.FillAuto("cycle_max_lr", optimizer.lr, lr_why);
      Required(p, "cycle_min_lr", name);
      Required(p, "cycle_max_lr", name);
      out->cycle_min_lr = p.Number("cycle_min_lr", 0);
      out->cycle_max_lr = p.Number("cycle_max_lr", 0);
      out->decay_lr_rate = p.Number("decay_lr_rate", 0);
      out->cycle_first_step_size = p.Number("cycle_first_step_size", 2000);
      out->cycle_second_step_size = p.Number("cycle_second_step_size", out->cycle_first_step_size);
      out->cycle_first_stair_count = p.Int("cycle_first_stair_count", 0, 0);
      out->cycle_second_stair_count =
          p.Int("cycle_second_stair_count", out->cycle_first_stair_count, 0);
      out->decay_step_size = p.Number("decay_step_size", 0);
      out->cycle_momentum = p.Bool("cycle_momentum", true);
      out->cycle_min_mom = p.Number("cycle_min_mom", 0.8);
      out->cycle_max_mom = p.Number("cycle_max_mom", 0.9);
      out->decay_mom_rate = p.Number("decay_mom_rate", 0);
      if (d->ok() && !(out->cycle_first_step_size > 0)) {
        d->Error("scheduler.params.cycle_first_step_size must be > 0, got " +
                 ShowNumber(out->cycle_first_step_size));
      } else if (d->ok() && !(out->cycle_second_step_size >= 0)) {
        d->Error("scheduler.params.cycle_second_step_size must be >= 0, got " +
                 ShowNumber(out->cycle_second_step_size));
      }
      break;
    }
    case Type::kLRRangeTest:
      out->lr_range_test_min_lr = p.Number("lr_range_test_min_lr", 1e-3);
      out->lr_range_test_step_size = p.Int("lr_range_test_step_size", 2000, 1);
      out->lr_range_test_step_rate = p.Number("lr_range_test_step_rate", 1.0);
      out->lr_range_test_staircase = p.Bool("lr_range_test_staircase", false);
      break;
    case Type::kNone: break;
  }
  // Where a schedule starts; dstrain restores it from the checkpoint instead.
  p.Int("last_batch_iteration", -1, -1, Use::kIgnored);
  p.Finish();
  s.Finish();
}

}  // namespace internal
}  // namespace ds::engine
