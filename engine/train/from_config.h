// The options of the trainer's parts as the config says them: the LR schedule, the loss scaler,
// the training precision, the device and ZeRO. Pure mappings; the trainer (trainer.cc) makes
// the parts from them.
// Thread safety: pure functions.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <string>
#include <vector>

#include "engine/config/config.h"
#include "engine/core/loss_scaler.h"
#include "engine/core/lr_schedule.h"
#include "engine/train/parallel.h"
#include "engine/train/state_plan.h"
#include "engine/zero/zero.h"

namespace ds::engine {

LrScheduleParams ScheduleParamsOf(const SchedulerConfig& s);
// fp16's dynamic (or static) loss scale; bf16 and fp32 train unscaled.
LossScalerOptions ScalerOptionsOf(const Config& c);
c10::ScalarType TrainingDtype(Precision p);
// "cpu", "cuda", "cuda:N"; "": the first GPU when one is visible, else the CPU. Asking for a GPU
// where none is visible is an error, never a silent CPU run.
Result<c10::Device> PickDevice(const std::string& wanted);
// ZeRO over the data-parallel group `data_comm`; with a split model, which of `places` count in
// the norm and which are tied across pipeline stages.
ZeroOptions ZeroOptionsOf(const Config& c, const ParallelState& par, Comm* data_comm,
                          const std::vector<TensorPlace>& places, const c10::Device& device,
                          c10::ScalarType dtype);

}  // namespace ds::engine
