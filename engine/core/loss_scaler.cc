#include "engine/core/loss_scaler.h"

#include <cinttypes>
#include <cmath>
#include <cstdio>

namespace ds::engine {

LossScaler::LossScaler(const LossScalerOptions& o) : options_(o) {
  state_.scale = o.dynamic ? std::ldexp(1.0, o.initial_scale_power) : o.static_scale;
  state_.hysteresis_left = o.hysteresis;
}

Result<LossScaler::Update> LossScaler::Record(bool overflow) {
  Update u;
  if (!options_.dynamic) {
    // A static scale never changes; an overflow still skips the step, as in DeepSpeed.
    u.skip_step = overflow;
    if (overflow) u.message = "overflow with a static loss scale: step skipped";
    return u;
  }
  char msg[200];
  if (overflow) {
    u.skip_step = true;
    if (options_.hysteresis == 1 || state_.hysteresis_left == 1) {
      if (state_.scale == options_.min_scale) {
        return Status::FailedPrecondition(
            "fp16 gradients overflow at the minimum loss scale (" +
            std::to_string(options_.min_scale) +
            "): training diverged; lower the learning rate, raise fp16.min_loss_scale, or use "
            "bf16");
      }
      const double next = std::max(state_.scale / 2.0, options_.min_scale);
      std::snprintf(msg, sizeof msg, "OVERFLOW: step skipped, loss scale %.0f -> %.0f",
                    state_.scale, next);
      state_.scale = next;
    } else {
      std::snprintf(msg, sizeof msg,
                    "OVERFLOW: step skipped, loss scale stays %.0f (hysteresis %" PRId64
                    " -> %" PRId64 ")",
                    state_.scale, state_.hysteresis_left, state_.hysteresis_left - 1);
      state_.hysteresis_left -= 1;
    }
    u.message = msg;
    state_.last_overflow_iteration = state_.iteration;
  } else {
    if (options_.consecutive_hysteresis) state_.hysteresis_left = options_.hysteresis;
    const int64_t stable = state_.iteration - state_.last_overflow_iteration - 1;
    if (stable > 0 && stable % options_.scale_window == 0) {
      if (!options_.consecutive_hysteresis) state_.hysteresis_left = options_.hysteresis;
      std::snprintf(msg, sizeof msg, "loss scale %.0f -> %.0f after %" PRId64 " stable steps",
                    state_.scale, state_.scale * 2, stable);
      state_.scale *= 2.0;
      u.message = msg;
    }
  }
  state_.iteration += 1;
  return u;
}

std::string LossScaler::Serialize() const {
  char buf[128];
  std::snprintf(buf, sizeof buf, "%.17g,%" PRId64 ",%" PRId64 ",%" PRId64, state_.scale,
                state_.iteration, state_.last_overflow_iteration, state_.hysteresis_left);
  return buf;
}

Result<LossScalerState> LossScaler::Deserialize(const std::string& text) {
  LossScalerState s;
  if (std::sscanf(text.c_str(), "%lf,%" SCNd64 ",%" SCNd64 ",%" SCNd64, &s.scale, &s.iteration,
                  &s.last_overflow_iteration, &s.hysteresis_left) != 4 ||
      !(s.scale > 0)) {
    return Status::Corruption("the checkpoint's loss scaler state '" + text + "' is not readable");
  }
  return s;
}

}  // namespace ds::engine
