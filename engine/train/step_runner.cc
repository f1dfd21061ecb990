// The eager step, what every runner shares, and the choice of runner.
#include "engine/train/step_runner.h"

#include <torch/cuda.h>

#include "engine/train/checkpoint_agent.h"
#include "engine/train/internal/step_parts.h"
#include "io/log.h"

namespace ds::engine {
namespace {

// Token ids (B, T) of `b` as a tensor over `v`'s memory (no copy).
torch::Tensor HostIds(std::vector<int64_t>& v, const Batch& b) {
  return torch::from_blob(v.data(), {b.B, b.T}, torch::TensorOptions().dtype(torch::kLong));
}

// Waits for the device when timing phases (monitor.wall_clock_breakdown): a GPU's kernels
// finish after their launch returns.
void SyncForTimer(const StepContext& c) {
  if (c.device.is_cuda()) torch::cuda::synchronize();
}

class EagerRunner : public StepRunner {
 public:
  explicit EagerRunner(const StepContext& c) : c_(c) {}

  Status Run(const StepParams& p, StepOutcome* out) override {
    out->loss_sum = ZeroScalar(c_);
    for (int64_t micro = 0; micro < p.micro_batches; ++micro) {
      DS_RETURN_IF_ERROR(c_.sampler->Next(c_.data->train, &batch_));
      auto [x, y] = OnDevice(batch_, c_.device, /*copy_always=*/false);
      DS_RETURN_IF_ERROR(MicroStep(c_, p, x, y, micro == p.micro_batches - 1, out->loss_sum));
    }
    DS_ASSIGN_OR_RETURN(out->result, OptimizerStep(c_, p));
    return Status::OK();
  }

  Result<at::Tensor> EvalSum(const EvalBatches& eval, int64_t batches) override {
    torch::Tensor sum = ZeroScalar(c_, torch::kFloat64);
    Batch b;
    for (int64_t i = 0; i < batches; ++i) {
      DS_RETURN_IF_ERROR(eval.Read(c_.data->eval, i, &b));
      auto [x, y] = OnDevice(b, c_.device, /*copy_always=*/false);
      sum.add_(c_.model->loss(x, y).to(torch::kFloat64));
    }
    return sum;
  }

  const char* kind() const override { return "eager"; }

 private:
  StepContext c_;
  Batch batch_;
};

}  // namespace

// To a GPU the ids go through page-locked memory without the host waiting: a copy from pageable
// memory would wait for everything queued on the GPU, and the next step's launches would start
// only once the last step's kernels had finished.
std::pair<torch::Tensor, torch::Tensor> OnDevice(Batch& b, const torch::Device& device,
                                                 bool copy_always) {
  auto copy = [&](std::vector<int64_t>& v) {
    torch::Tensor host = HostIds(v, b);
    if (device.is_cpu()) return copy_always ? host.clone() : host;
    return host.pin_memory().to(device, torch::kLong, /*non_blocking=*/true);
  };
  return {copy(b.inputs), copy(b.targets)};
}

void CopyBatchTo(Batch& b, torch::Tensor& x, torch::Tensor& y) {
  x.copy_(HostIds(b.inputs, b).pin_memory(), /*non_blocking=*/true);
  y.copy_(HostIds(b.targets, b).pin_memory(), /*non_blocking=*/true);
}

torch::Tensor ZeroScalar(const StepContext& c, torch::Dtype dtype) {
  return torch::zeros({}, torch::TensorOptions().dtype(dtype).device(c.device));
}

Status MicroStep(const StepContext& c, const StepParams& p, const torch::Tensor& x,
                 const torch::Tensor& y, bool last_of_step, torch::Tensor& loss_sum) {
  const bool breakdown = c.config->monitor.wall_clock_breakdown;
  DS_RETURN_IF_ERROR(c.zero->BeginMicroStep(last_of_step));
  if (breakdown) c.timer->Start("forward");
  torch::Tensor loss = c.model->loss(x, y);
  if (breakdown) {
    SyncForTimer(c);
    c.timer->Stop("forward");
    c.timer->Start("backward");
  }
  // DeepSpeed scales the loss by 1/accumulation (and by the fp16 loss scale).
  (loss * (p.loss_scale / static_cast<double>(p.micro_batches))).backward();
  DS_RETURN_IF_ERROR(c.zero->EndMicroStep(last_of_step));
  if (breakdown) {
    SyncForTimer(c);
    c.timer->Stop("backward");
  }
  loss_sum.add_(loss.detach());
  return Status::OK();
}

Result<ZeroStepResult> OptimizerStep(const StepContext& c, const StepParams& p) {
  const bool breakdown = c.config->monitor.wall_clock_breakdown;
  if (breakdown) c.timer->Start("optimizer");
  c.checkpoints->WaitForSnapshotCopies();  // Adam rewrites what a snapshot may still be copying
  // fp16's dynamic loss scale needs the overflow before the next step; otherwise the norm and
  // the overflow are read with the losses, and the step never waits for the GPU.
  DS_ASSIGN_OR_RETURN(ZeroStepResult r, c.zero->Step(p.lr, p.beta1, p.loss_scale, p.clip,
                                                     p.check_overflow, p.read_now));
  if (breakdown) {
    SyncForTimer(c);
    c.timer->Stop("optimizer");
  }
  return r;
}

std::unique_ptr<StepRunner> MakeEagerRunner(const StepContext& c) {
  return std::make_unique<EagerRunner>(c);
}

Result<std::unique_ptr<StepRunner>> MakeStepRunner(const StepContext& c, bool momentum_cycles) {
  const std::string& mode = c.config->trainer.cuda_graphs;
  if (mode != "false") {
    const std::string why_not = GraphsUnsupported(c, momentum_cycles);
    if (why_not.empty()) {
      if (c.rank == 0) io::LogInfo("steps replay as CUDA graphs (trainer.cuda_graphs)");
      return MakeGraphRunner(c);
    }
    if (mode == "true") {
      return Status::InvalidArgument(
          "trainer.cuda_graphs is true, but this step cannot be captured: " + why_not +
          " (set it to \"auto\" or false)");
    }
    if (c.device.is_cuda() && c.rank == 0) io::LogInfo("steps run eagerly: " + why_not);
  }
  return c.par->pp > 1 ? MakePipelineRunner(c) : MakeEagerRunner(c);
}

}  // namespace ds::engine
