// The trainer's own state in a checkpoint (the blob "trainer/state", written by rank 0): the
// step, Adam's step count, skipped steps, the loss scaler, the sampler's position and the
// schedule's origin, as JSON. FromJson checks every field it reads, so a well-formed blob that
// is not the trainer's state (damaged, crafted, or another program's) is a Corruption naming
// the field, never an exception.
// Thread safety: values and pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "engine/core/loss_scaler.h"
#include "io/status.h"

namespace ds::engine {

inline constexpr char kTrainerStateBlob[] = "trainer/state";

struct TrainerState {
  int64_t step = 0;             // optimizer steps done
  int64_t adam_steps = 0;       // Adam's bias-correction count (skipped steps excluded)
  int64_t skipped = 0;          // steps skipped for an fp16/bf16 overflow
  int64_t schedule_origin = 0;  // the LR schedule runs at step - schedule_origin
  LossScalerState loss_scaler;
  std::string sampler;     // SamplerState::Serialize()
  int64_t world_size = 1;  // what wrote it (informational)
  int64_t zero_stage = 0;

  std::string ToJson() const;
  // `what` names the checkpoint in messages. Keys an older writer did not write take their
  // defaults (skipped, schedule_origin, world_size, zero_stage); the others must be there.
  static Result<TrainerState> FromJson(std::string_view json, std::string_view what);
};

}  // namespace ds::engine
