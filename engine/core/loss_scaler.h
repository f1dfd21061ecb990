// DeepSpeed's fp16 loss scaling (deepspeed/runtime/fp16/loss_scaler.py, 0.19.8): a static scale,
// or a dynamic one that halves on overflow (after `hysteresis` overflows), skips that step, and
// doubles after `scale_window` steps without overflow. Its state (scale, iteration, last
// overflow, hysteresis left) is checkpointed.
// Thread safety: single-threaded (the training loop).
#pragma once

#include <cstdint>
#include <string>

#include "io/status.h"

namespace ds::engine {

struct LossScalerOptions {
  bool dynamic = true;
  double static_scale = 1.0;        // when !dynamic (fp16 loss_scale > 0, or bf16/fp32: 1)
  int initial_scale_power = 16;     // initial dynamic scale 2^16
  int64_t scale_window = 1000;      // loss_scale_window
  int64_t hysteresis = 2;           // delayed_shift
  bool consecutive_hysteresis = false;
  double min_scale = 1.0;           // min_loss_scale
};

struct LossScalerState {
  double scale = 1.0;
  int64_t iteration = 0;
  int64_t last_overflow_iteration = -1;
  int64_t hysteresis_left = 2;
};

class LossScaler {
 public:
  explicit LossScaler(const LossScalerOptions& options);

  double scale() const { return state_.scale; }
  const LossScalerState& state() const { return state_; }
  void Restore(const LossScalerState& state) { state_ = state; }

  // Records the step's outcome. Returns whether the optimizer step must be skipped (an
  // overflow), and a message for the log when the scale changed. Fails when the gradients
  // overflow at the minimum scale: training has diverged.
  struct Update {
    bool skip_step = false;
    std::string message;  // empty when nothing worth logging happened
  };
  Result<Update> Record(bool overflow);

  // "scale,iteration,last_overflow,hysteresis_left" for checkpoints, and back.
  std::string Serialize() const;
  static Result<LossScalerState> Deserialize(const std::string& text);

 private:
  LossScalerOptions options_;
  LossScalerState state_;
};

}  // namespace ds::engine
