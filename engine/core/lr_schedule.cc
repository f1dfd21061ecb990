#include "engine/core/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace ds::engine {
namespace {

class ConstantLr final : public LrSchedule {
 public:
  explicit ConstantLr(double lr) : lr_(lr) {}
  double LrAt(int64_t) const override { return lr_; }

 private:
  double lr_;
};

// The warm-up fraction at `it`: log(it + 1) / log(n) or it / n (n at least 2).
double WarmupGamma(int64_t it, int64_t n, bool log_type) {
  return log_type ? std::log(static_cast<double>(it + 1)) / std::log(static_cast<double>(n))
                  : static_cast<double>(it) / static_cast<double>(n);
}

class WarmupLr : public LrSchedule {
 public:
  WarmupLr(double min_lr, double max_lr, int64_t steps, bool log_type, int64_t total, bool decay)
      : min_(min_lr), delta_(max_lr - min_lr), n_(std::max<int64_t>(2, steps)), log_(log_type),
        total_(total), decay_(decay) {}
  double LrAt(int64_t it) const override {
    if (it < 0) return min_;
    return min_ + delta_ * Gamma(it);
  }

 private:
  double Gamma(int64_t it) const {
    if (it < n_) return WarmupGamma(it, n_, log_);
    if (!decay_) return 1.0;
    return std::max(0.0, static_cast<double>(total_ - it) /
                             std::max(1.0, static_cast<double>(total_ - n_)));
  }
  double min_, delta_;
  int64_t n_;
  bool log_;
  int64_t total_;
  bool decay_;
};

class WarmupCosineLr final : public LrSchedule {
 public:
  WarmupCosineLr(double base, const LrScheduleParams& p)
      : base_(base), n_(std::max<int64_t>(2, p.warmup_num_steps)), log_(p.warmup_type != "linear"),
        total_(p.total_num_steps), warmup_min_(p.warmup_min_ratio), cos_min_(p.cos_min_ratio) {}
  double LrAt(int64_t it) const override { return it < 0 ? 0.0 : base_ * Ratio(it); }

 private:
  double Ratio(int64_t it) const {
    if (it < n_) return warmup_min_ + WarmupGamma(it, n_, log_) * (1.0 - warmup_min_);
    const double real_last = static_cast<double>(it - n_ + 1);
    const double real_total = static_cast<double>(std::max<int64_t>(1, total_ - n_));
    const double progress = std::min(1.0, real_last / real_total);
    const double cosine = (1 + std::cos(std::numbers::pi * progress)) / 2;
    return std::max(0.0, cos_min_ + (1.0 - cos_min_) * cosine);
  }
  double base_;
  int64_t n_;
  bool log_;
  int64_t total_;
  double warmup_min_, cos_min_;
};

class OneCycle final : public LrSchedule {
 public:
  explicit OneCycle(const LrScheduleParams& p) : p_(p) {
    first_ = p.cycle_first_step_size;
    second_ = p.cycle_second_step_size.value_or(first_);
    total_ = first_ + second_;
    ratio_ = first_ / total_;
    first_stairs_ = p.cycle_first_stair_count;
    second_stairs_ = p.cycle_second_stair_count.value_or(first_stairs_);
    skip_decay_ = p.decay_step_size == 0;
  }
  double LrAt(int64_t it) const override {
    if (static_cast<double>(it) < total_) {
      return p_.cycle_min_lr + (p_.cycle_max_lr - p_.cycle_min_lr) * Scale(it);
    }
    if (skip_decay_ || p_.decay_lr_rate == 0) return p_.cycle_min_lr;
    const double interval = (static_cast<double>(it) - total_ + 1) / p_.decay_step_size;
    return p_.cycle_min_lr / (1 + p_.decay_lr_rate * interval);
  }
  std::optional<double> Beta1At(int64_t it) const override {
    if (!p_.cycle_momentum) return std::nullopt;
    if (it < 0) return p_.cycle_min_mom;  // DeepSpeed sets the minimum before the first step
    if (static_cast<double>(it) < total_) {
      return p_.cycle_max_mom - (p_.cycle_max_mom - p_.cycle_min_mom) * Scale(it);
    }
    if (skip_decay_ || p_.decay_mom_rate == 0) return p_.cycle_max_mom;
    const double interval = (static_cast<double>(it) - total_ + 1) / p_.decay_step_size;
    return p_.cycle_max_mom * (1 + p_.decay_mom_rate * interval);
  }

 private:
  // DeepSpeed's _get_scale_factor, with its integer stair positions.
  double Scale(int64_t it) const {
    const double batch = static_cast<double>(it + 1);
    const double cycle = std::floor(1 + batch / total_);
    const double x = 1. + batch / total_ - cycle;
    double scale;
    int64_t stairs;
    if (x <= ratio_) {
      scale = x / ratio_;
      stairs = first_stairs_;
    } else {
      scale = (x - 1) / (ratio_ - 1);
      stairs = second_stairs_;
    }
    if (stairs > 0) {
      const double cycle_it = std::fmod(batch, total_);
      const double pos = cycle_it <= first_ ? cycle_it * stairs / first_
                                            : (total_ - cycle_it) * stairs / second_;
      scale = std::floor(pos) / static_cast<double>(stairs);
    }
    return scale;
  }
  LrScheduleParams p_;
  double first_, second_, total_, ratio_;
  int64_t first_stairs_, second_stairs_;
  bool skip_decay_;
};

class LrRangeTest final : public LrSchedule {
 public:
  explicit LrRangeTest(const LrScheduleParams& p) : p_(p) {}
  double LrAt(int64_t it) const override {
    if (it < 0) return p_.lr_range_test_min_lr;
    double interval = static_cast<double>(it + 1) / static_cast<double>(p_.lr_range_test_step_size);
    if (p_.lr_range_test_staircase) interval = std::floor(interval);
    return p_.lr_range_test_min_lr * (1 + p_.lr_range_test_step_rate * interval);
  }

 private:
  LrScheduleParams p_;
};

Status Positive(const char* name, double v) {
  if (v > 0) return Status::OK();
  return Status::InvalidArgument(std::string("scheduler.params.") + name + " must be positive");
}

}  // namespace

Result<std::unique_ptr<LrSchedule>> MakeLrSchedule(const LrScheduleParams& p, double base_lr) {
  const bool log_type = p.warmup_type != "linear";
  if (p.warmup_type != "log" && p.warmup_type != "linear") {
    return Status::InvalidArgument("scheduler.params.warmup_type '" + p.warmup_type +
                                   "' must be log or linear");
  }
  if (p.type.empty()) return std::unique_ptr<LrSchedule>(new ConstantLr(base_lr));
  if (p.type == "WarmupLR" || p.type == "WarmupDecayLR") {
    DS_RETURN_IF_ERROR(Positive("warmup_num_steps", static_cast<double>(p.warmup_num_steps)));
    const bool decay = p.type == "WarmupDecayLR";
    if (decay) DS_RETURN_IF_ERROR(Positive("total_num_steps", static_cast<double>(p.total_num_steps)));
    return std::unique_ptr<LrSchedule>(new WarmupLr(p.warmup_min_lr, p.warmup_max_lr.value_or(base_lr),
                                                    p.warmup_num_steps, log_type,
                                                    p.total_num_steps, decay));
  }
  if (p.type == "WarmupCosineLR") {
    DS_RETURN_IF_ERROR(Positive("warmup_num_steps", static_cast<double>(p.warmup_num_steps)));
    DS_RETURN_IF_ERROR(Positive("total_num_steps", static_cast<double>(p.total_num_steps)));
    return std::unique_ptr<LrSchedule>(new WarmupCosineLr(base_lr, p));
  }
  if (p.type == "OneCycle") {
    DS_RETURN_IF_ERROR(Positive("cycle_first_step_size", p.cycle_first_step_size));
    if (p.cycle_second_step_size && *p.cycle_second_step_size < 0) {
      return Status::InvalidArgument("scheduler.params.cycle_second_step_size must not be negative");
    }
    return std::unique_ptr<LrSchedule>(new OneCycle(p));
  }
  if (p.type == "LRRangeTest") {
    DS_RETURN_IF_ERROR(Positive("lr_range_test_step_size",
                                static_cast<double>(p.lr_range_test_step_size)));
    return std::unique_ptr<LrSchedule>(new LrRangeTest(p));
  }
  return Status::InvalidArgument("scheduler.type '" + p.type +
                                 "' is not supported (supported: WarmupLR, WarmupDecayLR, "
                                 "WarmupCosineLR, OneCycle, LRRangeTest)");
}

}  // namespace ds::engine
