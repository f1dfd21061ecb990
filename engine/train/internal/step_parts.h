// What the step runners (engine/train/step_runner.h) share. Not part of the public API.
// Thread safety: the training thread only.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <utility>

#include "engine/train/step_runner.h"

namespace ds::engine {

// The micro batch `b` on the device: inputs and targets. `copy_always`: copy on the CPU too
// (where .to() would alias `b`), for pipelines, whose backward of a micro batch runs after later
// micro batches have refilled `b`.
std::pair<torch::Tensor, torch::Tensor> OnDevice(Batch& b, const torch::Device& device,
                                                 bool copy_always);
// The same into tensors of its shape on the GPU (the ones CUDA graphs read), without waiting.
void CopyBatchTo(Batch& b, torch::Tensor& x, torch::Tensor& y);

// One micro batch's forward and backward into ZeRO's gradient; its loss added to `loss_sum`.
Status MicroStep(const StepContext& c, const StepParams& p, const torch::Tensor& x,
                 const torch::Tensor& y, bool last_of_step, torch::Tensor& loss_sum);
// The optimizer after the micro batches, on the host's schedule: unscale, check for overflow
// (16-bit), clip, Adam, publish the weights.
Result<ZeroStepResult> OptimizerStep(const StepContext& c, const StepParams& p);
// A float32 zero on the device, to add losses into.
torch::Tensor ZeroScalar(const StepContext& c, torch::Dtype dtype = torch::kFloat32);

std::unique_ptr<StepRunner> MakeEagerRunner(const StepContext& c);
std::unique_ptr<StepRunner> MakePipelineRunner(const StepContext& c);
// Why this job's step cannot be captured as CUDA graphs, or "".
std::string GraphsUnsupported(const StepContext& c, bool momentum_cycles);
std::unique_ptr<StepRunner> MakeGraphRunner(const StepContext& c);

}  // namespace ds::engine
