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

#include "engine/train/internal/trainer_state.h"
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

struct Trainer::Impl::StepGraphs {
  int64_t eager_steps = 0;  // run so far
  torch::Tensor x, y;       // (B, T) token ids: the micro batch the micro graphs read
  torch::Tensor loss_sum;   // float32 scalar the micro graphs add their losses into
  ZeroStepResult result;    // the optimizer graph's outputs (device scalars it rewrites)
#if DS_TORCH_HAS_CUDA
  // Micro graphs by kind: 2 * (first of the step) + (last of the step).
  std::map<int, std::unique_ptr<at::cuda::CUDAGraph>> micro;
  std::unique_ptr<at::cuda::CUDAGraph> optimizer;
  at::cuda::MempoolId_t pool{0, 0};  // shared by every graph once the first has one
#endif
};

std::string Trainer::Impl::GraphsUnsupported() const {
  const Config& c = config;
  if (!device.is_cuda()) return "training is not on a GPU";
#if !DS_TORCH_HAS_CUDA
  return "this LibTorch has no CUDA";
#endif
  if (options.world_size > 1) return "more than one rank (collectives are not captured)";
  if (c.zero.stage > 1) return "ZeRO stage " + std::to_string(c.zero.stage) + " (0 and 1 only)";
  if (c.zero.offload_optimizer.device != OffloadConfig::Device::kNone ||
      c.zero.offload_param.device != OffloadConfig::Device::kNone)
    return "offloading (the step runs on the host in part)";
  if (c.precision() == Precision::kFp16)
    return "fp16 (the loss scaler reads each step's overflow on the host)";
  if (schedule->Beta1At(0).has_value()) return "the scheduler cycles momentum";
  if (c.monitor.wall_clock_breakdown) return "wall_clock_breakdown (it times each phase)";
  return "";
}

Status Trainer::Impl::SetupGraphs() {
  const std::string& mode = config.trainer.cuda_graphs;
  if (mode == "false") return Status::OK();
  const std::string why_not = GraphsUnsupported();
  if (why_not.empty()) {
    graphs = std::make_shared<StepGraphs>();
    if (options.rank == 0) io::LogInfo("steps replay as CUDA graphs (trainer.cuda_graphs)");
    return Status::OK();
  }
  if (mode == "true") {
    return Status::InvalidArgument(
        "trainer.cuda_graphs is true, but this step cannot be captured: " + why_not +
        " (set it to \"auto\" or false)");
  }
  if (device.is_cuda() && options.rank == 0) io::LogInfo("steps run eagerly: " + why_not);
  return Status::OK();
}

bool Trainer::Impl::ReplaysGraphs() {
  if (graphs == nullptr) return false;
  if (graphs->eager_steps >= kEagerSteps) return true;
  ++graphs->eager_steps;
  return false;
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
      const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
      status =
          Status::FailedPrecondition(c10_error ? c10_error->what_without_backtrace() : e.what());
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

}  // namespace

Status Trainer::Impl::GraphFailed(const Status& why) {
  if (config.trainer.cuda_graphs == "true") {
    return Status::FailedPrecondition("trainer.cuda_graphs is true, but capturing step " +
                                      std::to_string(step + 1) + " failed: " + why.message() +
                                      " (set it to \"auto\" or false)");
  }
  if (options.rank == 0) {
    io::LogWarning("steps run eagerly from step " + std::to_string(step + 1) +
                   " on: capturing the step as a CUDA graph failed: " + why.message());
  }
  graphs.reset();
  return Status::OK();
}

Status Trainer::Impl::GraphStep(double scale, double lr, ZeroStepResult* result,
                                torch::Tensor* loss_sum) {
  StepGraphs& g = *graphs;
  std::shared_ptr<StepGraphs> keep = graphs;  // GraphFailed drops `graphs`
  const c10::DeviceIndex index = device.has_index() ? device.index() : c10::cuda::current_device();
  const Config& c = config;
  const int64_t gas = c.batch.gradient_accumulation_steps;
  if (!g.loss_sum.defined()) {
    // The eager pool's cached blocks go back, so the graphs' pool can use that memory.
    c10::cuda::CUDACachingAllocator::emptyCache();
    g.loss_sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
  }
  g.loss_sum.zero_();  // the last step's sum was read (divided) before this
  bool replay = true;  // false once a capture failed: the rest of the step runs eagerly
  for (int64_t micro = 0; micro < gas; ++micro) {
    DS_RETURN_IF_ERROR(sampler->Next(data.train, &batch));
    if (!g.x.defined()) {
      auto ids = torch::TensorOptions().dtype(torch::kLong).device(device);
      g.x = torch::empty({batch.B, batch.T}, ids);
      g.y = torch::empty({batch.B, batch.T}, ids);
    }
    CopyBatchTo(batch, g.x, g.y);
    const bool last = micro == gas - 1;
    auto run = [&] { return MicroStep(g.x, g.y, scale, last, g.loss_sum); };
    if (!replay) {
      DS_RETURN_IF_ERROR(run());
      continue;
    }
    std::unique_ptr<at::cuda::CUDAGraph>& graph = g.micro[(micro == 0 ? 2 : 0) + (last ? 1 : 0)];
    if (graph == nullptr) {
      graph = std::make_unique<at::cuda::CUDAGraph>();
      if (Status s = Capture(*graph, g.pool, index, run); !s.ok()) {
        // Nothing captured ran: this micro step starts again, eagerly.
        zero->RestartMicroStep(/*first_of_step=*/micro == 0);
        DS_RETURN_IF_ERROR(GraphFailed(s));
        replay = false;
        DS_RETURN_IF_ERROR(run());
        continue;
      }
      if (g.pool.first == 0 && g.pool.second == 0) g.pool = graph->pool();
    }
    graph->replay();
  }
  *loss_sum = g.loss_sum;  // read (divided by gas) before the next step zeroes it

  WaitForSnapshotCopies();  // Adam rewrites what a snapshot may still be copying
  zero->SetLearningRate(lr);
  auto optimize = [&]() -> Status {
    DS_ASSIGN_OR_RETURN(
        g.result, zero->DeviceStep(std::nullopt, scale, c.gradient_clipping, ChecksOverflow()));
    return Status::OK();
  };
  if (replay && g.optimizer == nullptr) {
    g.optimizer = std::make_unique<at::cuda::CUDAGraph>();
    if (Status s = Capture(*g.optimizer, g.pool, index, optimize); !s.ok()) {
      DS_RETURN_IF_ERROR(GraphFailed(s));
      replay = false;
    }
  }
  if (replay) {
    g.optimizer->replay();
  } else {
    DS_RETURN_IF_ERROR(optimize());
  }
  *result = g.result;
  return Status::OK();
}

#else

Status Trainer::Impl::GraphStep(double, double, ZeroStepResult*, torch::Tensor*) {
  return Status::FailedPrecondition("CUDA graphs need a LibTorch with CUDA");
}

#endif

}  // namespace ds::engine
