// The step through pipeline stages: one optimizer step's micro batches through this rank's stage
// in 1F1B order (forward of micro batch i + warm-up, then backward of micro batch i), then the
// optimizer as in the eager step.
//
// Pipeline messages: stage s sends micro batch i's output to stage s + 1 (tag 2i) and the
// gradient of micro batch i's input back to stage s - 1 (tag 2i + 1). Sends are asynchronous
// and complete by the end of the step; receives wait. In 1F1B order each stage's receives
// match the sends of its neighbours in the same order, so no stage waits on one that waits on it.
#include <torch/torch.h>

#include <deque>

#include "engine/train/internal/step_parts.h"

namespace ds::engine {
namespace {

int TagOf(int64_t micro, bool backward) { return static_cast<int>(2 * micro + (backward ? 1 : 0)); }

class PipelineRunner : public StepRunner {
 public:
  explicit PipelineRunner(const StepContext& c) : c_(c), par_(*c.par) {}

  Status Run(const StepParams& p, StepOutcome* out) override {
    out->loss_sum = ZeroScalar(c_);
    DS_RETURN_IF_ERROR(MicroSteps(p, out->loss_sum));
    DS_ASSIGN_OR_RETURN(out->result, OptimizerStep(c_, p));
    return Status::OK();
  }

  Result<at::Tensor> EvalSum(const EvalBatches& eval, int64_t batches) override;
  const char* kind() const override { return "pipeline"; }

 private:
  // Activations between stages: (B, T, C) in the training precision.
  torch::Tensor Hidden() const {
    const ModelConfig& m = c_.config->model;
    return torch::empty({c_.config->batch.micro_batch_per_gpu, m.seq_len, m.d_model},
                        torch::TensorOptions().dtype(c_.dtype).device(c_.device));
  }
  Status MicroSteps(const StepParams& p, torch::Tensor& loss_sum);

  StepContext c_;
  const ParallelState& par_;
  Batch batch_;
};

Status PipelineRunner::MicroSteps(const StepParams& p, torch::Tensor& loss_sum) {
  const int64_t n = p.micro_batches;
  Comm* pipe = par_.pipe_comm.get();
  const int s = par_.stage;
  // What a backward pass needs of its forward: the input (its gradient goes back) and the
  // output (the loss on the last stage).
  struct InFlight {
    torch::Tensor input, output;
  };
  std::deque<InFlight> waiting;
  std::vector<CommHandle> sends;
  std::vector<torch::Tensor> sent;  // alive until their sends complete
  auto send = [&](torch::Tensor t, int to, int tag, const std::string& what) -> Status {
    DS_ASSIGN_OR_RETURN(CommHandle h, pipe->SendAsync(t, to, tag, what));
    sends.push_back(std::move(h));
    sent.push_back(std::move(t));
    return Status::OK();
  };
  auto forward = [&](int64_t i) -> Status {
    DS_RETURN_IF_ERROR(c_.sampler->Next(c_.data->train, &batch_));  // every stage: its place
    auto [x, y] = OnDevice(batch_, c_.device, /*copy_always=*/true);
    torch::Tensor in = x;
    const std::string what = "activations of micro batch " + std::to_string(i);
    if (!par_.first_stage()) {
      in = Hidden();
      DS_RETURN_IF_ERROR(pipe->Recv(in, s - 1, TagOf(i, false), what));
      in.requires_grad_(true);
    }
    torch::Tensor out = par_.parts->stage_forward(in, y);
    if (par_.last_stage()) {
      loss_sum.add_(out.detach());
    } else {
      DS_RETURN_IF_ERROR(send(out.detach().contiguous(), s + 1, TagOf(i, false), what));
    }
    waiting.push_back({in, out});
    return Status::OK();
  };
  auto backward = [&](int64_t i) -> Status {
    InFlight f = std::move(waiting.front());
    waiting.pop_front();
    const std::string what = "gradients of micro batch " + std::to_string(i);
    if (par_.last_stage()) {
      // DeepSpeed scales the loss by 1/accumulation (and by the fp16 loss scale).
      (f.output * (p.loss_scale / static_cast<double>(n))).backward();
    } else {
      torch::Tensor g = Hidden();
      DS_RETURN_IF_ERROR(pipe->Recv(g, s + 1, TagOf(i, true), what));
      torch::autograd::backward({f.output}, {g});
    }
    if (!par_.first_stage()) {
      DS_RETURN_IF_ERROR(send(f.input.grad().contiguous(), s - 1, TagOf(i, true), what));
    }
    return c_.zero->EndMicroStep(i == n - 1);
  };
  // 1F1B: stage s runs pp - s - 1 forwards ahead, then alternates, then drains.
  const int64_t warmup = std::min<int64_t>(par_.pp - s - 1, n);
  for (int64_t i = 0; i < warmup; ++i) DS_RETURN_IF_ERROR(forward(i));
  for (int64_t i = 0; i < n - warmup; ++i) {
    DS_RETURN_IF_ERROR(forward(warmup + i));
    DS_RETURN_IF_ERROR(backward(i));
  }
  for (int64_t i = n - warmup; i < n; ++i) DS_RETURN_IF_ERROR(backward(i));
  for (CommHandle& h : sends) DS_RETURN_IF_ERROR(h.Wait());
  return Status::OK();
}

Result<at::Tensor> PipelineRunner::EvalSum(const EvalBatches& eval, int64_t batches) {
  Comm* pipe = par_.pipe_comm.get();
  const int s = par_.stage;
  torch::Tensor sum = ZeroScalar(c_, torch::kFloat64);
  Batch b;
  for (int64_t i = 0; i < batches; ++i) {
    DS_RETURN_IF_ERROR(eval.Read(c_.data->eval, i, &b));
    auto [x, y] = OnDevice(b, c_.device, /*copy_always=*/true);
    torch::Tensor in = x;
    if (!par_.first_stage()) {
      in = Hidden();
      DS_RETURN_IF_ERROR(pipe->Recv(in, s - 1, TagOf(i, false), "evaluation activations"));
    }
    torch::Tensor out = par_.parts->stage_forward(in, y);
    if (par_.last_stage()) {
      sum.add_(out.to(torch::kFloat64));
    } else {
      torch::Tensor o = out.contiguous();
      DS_ASSIGN_OR_RETURN(CommHandle h,
                          pipe->SendAsync(o, s + 1, TagOf(i, false), "evaluation activations"));
      DS_RETURN_IF_ERROR(h.Wait());
    }
  }
  return sum;
}

}  // namespace

std::unique_ptr<StepRunner> MakePipelineRunner(const StepContext& c) {
  return std::make_unique<PipelineRunner>(c);
}

}  // namespace ds::engine
