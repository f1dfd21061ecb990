// DeepSpeed's learning-rate schedules as pure functions of the step: WarmupLR, WarmupDecayLR,
// WarmupCosineLR, OneCycle (learning rate and momentum) and LRRangeTest, with DeepSpeed's
// parameter names, defaults and formulas (deepspeed/runtime/lr_schedules.py, 0.19.8).
//
// DeepSpeed's schedulers count `last_batch_iteration` from -1 and step after each optimizer
// step, so training step s (0-based) runs with the rate at iteration s - 1. LrForStep does that
// shift; LrAt takes DeepSpeed's iteration directly. No state: resuming needs only the step.
// Thread safety: immutable after construction.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "io/status.h"

namespace ds::engine {

struct LrScheduleParams {
  std::string type;  // WarmupLR, WarmupDecayLR, WarmupCosineLR, OneCycle, LRRangeTest, or ""
  // WarmupLR / WarmupDecayLR
  double warmup_min_lr = 0.0;
  std::optional<double> warmup_max_lr;  // default: the optimizer's lr
  int64_t warmup_num_steps = 1000;
  std::string warmup_type = "log";  // "log" or "linear"
  int64_t total_num_steps = 0;      // WarmupDecayLR, WarmupCosineLR (required)
  // WarmupCosineLR
  double warmup_min_ratio = 0.0;
  double cos_min_ratio = 0.0001;
  // OneCycle
  double cycle_min_lr = 0.01, cycle_max_lr = 0.1, decay_lr_rate = 0.0;
  double cycle_first_step_size = 2000;
  std::optional<double> cycle_second_step_size;  // default: the first
  int64_t cycle_first_stair_count = 0;
  std::optional<int64_t> cycle_second_stair_count;  // default: the first
  double decay_step_size = 0;
  bool cycle_momentum = true;
  double cycle_min_mom = 0.8, cycle_max_mom = 0.9, decay_mom_rate = 0.0;
  // LRRangeTest
  double lr_range_test_min_lr = 1e-3;
  int64_t lr_range_test_step_size = 2000;
  double lr_range_test_step_rate = 1.0;
  bool lr_range_test_staircase = false;
};

class LrSchedule {
 public:
  virtual ~LrSchedule() = default;
  // The rate at DeepSpeed's `last_batch_iteration` (-1 before the first step).
  virtual double LrAt(int64_t iteration) const = 0;
  // Adam's beta1 at that iteration when the schedule cycles momentum (OneCycle), else nullopt.
  virtual std::optional<double> Beta1At(int64_t iteration) const { (void)iteration; return {}; }
  double LrForStep(int64_t step) const { return LrAt(step - 1); }
};

// `base_lr` is the optimizer's lr (WarmupLR's default max, WarmupCosineLR's scale, the constant
// rate when `type` is empty). Errors name the parameter and what is allowed.
Result<std::unique_ptr<LrSchedule>> MakeLrSchedule(const LrScheduleParams& params, double base_lr);

}  // namespace ds::engine
