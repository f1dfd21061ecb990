// The training step replayed as CUDA graphs (trainer.cuda_graphs). A step of a small model on a
// fast GPU is a few thousand short kernels, and launching them one by one from the host takes
// longer than running them: captured once, the step's kernels are launched by one call per
// micro step and one for the optimizer.
//
// What is captured: a micro step (forward, backward, the gradient into the fp32 accumulator, the
// loss into a device sum) per kind (first and/or last of the step), and the optimizer step on
// the device (norm, overflow, Adam with clipping folded in, new weights into the model). What
// stays outside, run by the host every step: reading the next batch (copied into the tensors
// the graphs read), the learning rate (written to the device scalar Adam reads), waiting for a
// snapshot's copies, and everything that reads results.
//
// Graphs are captured lazily, each at its first use after kEagerSteps eager steps (lazy
// initialisation: cuBLAS workspaces, autograd's streams), on a side stream, all into one
// memory pool (they replay in the order they were captured). A capture only records: the step
// is then done by replaying what was just captured. If a capture fails (an operation that
// cannot be captured, such as a host read in a user's model), "auto" finishes the step eagerly
// and trains on without graphs; "true" stops with the reason.
#include <torch/torch.h>

#include <map>

#include "engine/train/checkpoint_agent.h"
#include "engine/train/internal/step_parts.h"
#include "engine/torch_status.h"
#include "io/log.h"

#if DS_TORCH_HAS_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace ds::engine {
namespace {

constexpr int64_t kEagerSteps = 2;  // before the first capture

}  // namespace

std::string GraphsUnsupported(const StepContext& c, bool momentum_cycles) {
  const Config& cfg = *c.config;
  if (!c.device.is_cuda()) return "training is not on a GPU";
#if !DS_TORCH_HAS_CUDA
  return "this LibTorch has no CUDA";
#endif
  if (c.par->dp * c.par->tp * c.par->pp > 1)
    return "more than one rank (collectives are not captured)";
  if (cfg.zero.Stage().partitions_gradients())
    return "ZeRO stage " + std::to_string(cfg.zero.stage) + " (0 and 1 only)";
  if (cfg.zero.offload_optimizer.device != OffloadConfig::Device::kNone ||
      cfg.zero.offload_param.device != OffloadConfig::Device::kNone)
    return "offloading (the step runs on the host in part)";
  if (cfg.precision() == Precision::kFp16)
    return "fp16 (the loss scaler reads each step's overflow on the host)";
  if (momentum_cycles) return "the scheduler cycles momentum";
  if (cfg.monitor.wall_clock_breakdown) return "wall_clock_breakdown (it times each phase)";
  return "";
}

#if DS_TORCH_HAS_CUDA

namespace {

// Records `body` into `graph` on a side stream (captures may not use the default stream), after
// the work already queued on the current stream. Returns the body's error, or the capture's.
Status Capture(at::cuda::CUDAGraph& graph, at::cuda::MempoolId_t pool, c10::DeviceIndex device,
               const std::function<Status()>& body) {
  c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream(device);
  c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device);
  at::cuda::CUDAEvent queued;
  queued.record(current);
  queued.block(side);
  Status status;
  {
    c10::cuda::CUDAStreamGuard guard(side);
    bool capturing = false;
    try {
      // Thread-local: the checkpoint writer's thread may use CUDA while this thread captures.
      graph.capture_begin(pool, cudaStreamCaptureModeThreadLocal);
      capturing = true;
      status = body();
      capturing = false;
      graph.capture_end();
    } catch (const std::exception& e) {
      status = Status::FailedPrecondition(TorchMessage(e));
      if (capturing) {
        try {
          graph.capture_end();  // ends the stream's capture; fails for a capture gone bad
        } catch (const std::exception&) {
        }
      }
    }
  }
  at::cuda::CUDAEvent captured;
  captured.record(side);
  captured.block(current);
  return status;
}

class GraphRunner : public StepRunner {
 public:
  explicit GraphRunner(const StepContext& c) : c_(c), eager_(MakeEagerRunner(c)) {}

  Status Run(const StepParams& p, StepOutcome* out) override {
    if (eager_steps_ < kEagerSteps || given_up_) {
      ++eager_steps_;
      return eager_->Run(p, out);
    }
    return Replay(p, out);
  }
  Result<at::Tensor> EvalSum(const EvalBatches& eval, int64_t batches) override {
    return eager_->EvalSum(eval, batches);
  }
  const char* kind() const override { return given_up_ ? "eager" : "graphs"; }

 private:
  Status Replay(const StepParams& p, StepOutcome* out);
  // After a failed capture: "auto" trains on eagerly, "true" returns the error.
  Status Failed(const Status& why, int64_t step);

  StepContext c_;
  std::unique_ptr<StepRunner> eager_;  // the first kEagerSteps steps, and all after a failure
  int64_t eager_steps_ = 0;
  bool given_up_ = false;
  torch::Tensor x_, y_;    // (B, T) token ids: the micro batch the micro graphs read
  torch::Tensor loss_sum_; // float32 scalar the micro graphs add their losses into
  ZeroStepResult result_;  // the optimizer graph's outputs (device scalars it rewrites)
  // Micro graphs by kind: 2 * (first of the step) + (last of the step).
  std::map<int, std::unique_ptr<at::cuda::CUDAGraph>> micro_;
  std::unique_ptr<at::cuda::CUDAGraph> optimizer_;
  at::cuda::MempoolId_t pool_{0, 0};  // shared by every graph once the first has one
  Batch batch_;
};

Status GraphRunner::Failed(const Status& why, int64_t at) {
  if (c_.config->trainer.cuda_graphs == "true") {
    return Status::FailedPrecondition("trainer.cuda_graphs is true, but capturing step " +
                                      std::to_string(at) + " failed: " + why.message() +
                                      " (set it to \"auto\" or false)");
  }
  if (c_.rank == 0) {
    io::LogWarning("steps run eagerly from step " + std::to_string(at) +
                   " on: capturing the step as a CUDA graph failed: " + why.message());
  }
  given_up_ = true;
  return Status::OK();
}

Status GraphRunner::Replay(const StepParams& p, StepOutcome* out) {
  const c10::DeviceIndex index =
      c_.device.has_index() ? c_.device.index() : c10::cuda::current_device();
  if (!loss_sum_.defined()) {
    // The eager pool's cached blocks go back, so the graphs' pool can use that memory.
    c10::cuda::CUDACachingAllocator::emptyCache();
    loss_sum_ = ZeroScalar(c_);
  }
  loss_sum_.zero_();  // the last step's sum was read (divided) before this
  bool replay = true;  // false once a capture failed: the rest of the step runs eagerly
  for (int64_t micro = 0; micro < p.micro_batches; ++micro) {
    DS_RETURN_IF_ERROR(c_.sampler->Next(c_.data->train, &batch_));
    if (!x_.defined()) {
      auto ids = torch::TensorOptions().dtype(torch::kLong).device(c_.device);
      x_ = torch::empty({batch_.B, batch_.T}, ids);
      y_ = torch::empty({batch_.B, batch_.T}, ids);
    }
    CopyBatchTo(batch_, x_, y_);
    const bool last = micro == p.micro_batches - 1;
    auto run = [&] { return MicroStep(c_, p, x_, y_, last, loss_sum_); };
    if (!replay) {
      DS_RETURN_IF_ERROR(run());
      continue;
    }
    std::unique_ptr<at::cuda::CUDAGraph>& graph = micro_[(micro == 0 ? 2 : 0) + (last ? 1 : 0)];
    if (graph == nullptr) {
      graph = std::make_unique<at::cuda::CUDAGraph>();
      if (Status s = Capture(*graph, pool_, index, run); !s.ok()) {
        // Nothing captured ran: this micro step starts again, eagerly.
        c_.zero->RestartMicroStep(/*first_of_step=*/micro == 0);
        DS_RETURN_IF_ERROR(Failed(s, p.step));
        replay = false;
        DS_RETURN_IF_ERROR(run());
        continue;
      }
      if (pool_.first == 0 && pool_.second == 0) pool_ = graph->pool();
    }
    graph->replay();
  }
  out->loss_sum = loss_sum_;  // read (divided) before the next step zeroes it

  c_.checkpoints->WaitForSnapshotCopies();  // Adam rewrites what a snapshot may still be copying
  c_.zero->SetLearningRate(p.lr);
  auto optimize = [&]() -> Status {
    DS_ASSIGN_OR_RETURN(result_,
                        c_.zero->DeviceStep(std::nullopt, p.loss_scale, p.clip, p.check_overflow));
    return Status::OK();
  };
  if (replay && optimizer_ == nullptr) {
    optimizer_ = std::make_unique<at::cuda::CUDAGraph>();
    if (Status s = Capture(*optimizer_, pool_, index, optimize); !s.ok()) {
      DS_RETURN_IF_ERROR(Failed(s, p.step));
      replay = false;
    }
  }
  if (replay) {
    optimizer_->replay();
  } else {
    DS_RETURN_IF_ERROR(optimize());
  }
  out->result = result_;
  return Status::OK();
}

}  // namespace

std::unique_ptr<StepRunner> MakeGraphRunner(const StepContext& c) {
  return std::make_unique<GraphRunner>(c);
}

#else

std::unique_ptr<StepRunner> MakeGraphRunner(const StepContext& c) { return MakeEagerRunner(c); }

#endif

}  // namespace ds::engine
