// Tensor and pipeline parallelism in the trainer: the process groups, this rank's part of the
// GPT, where each parameter sits in the whole model (for the gradient norm and checkpoints), and
// the pipeline's 1F1B schedule.
//
// Pipeline messages: stage s sends micro batch i's output to stage s + 1 (tag 2i) and the
// gradient of micro batch i's input back to stage s - 1 (tag 2i + 1). Sends are asynchronous
// and complete by the end of the step; receives wait. In 1F1B order each stage's receives
// match the sends of its neighbours in the same order, so no stage waits on one that waits on it.
#include <torch/torch.h>

#include <deque>

#include "engine/train/internal/trainer_state.h"

namespace ds::engine {
namespace {

int TagOf(int64_t micro, bool backward) { return static_cast<int>(2 * micro + (backward ? 1 : 0)); }

// Token ids (B, T) of `b` as a tensor over `v`'s memory (no copy).
torch::Tensor HostIds(std::vector<int64_t>& v, const Batch& b) {
  return torch::from_blob(v.data(), {b.B, b.T}, torch::TensorOptions().dtype(torch::kLong));
}

}  // namespace

Comm* Trainer::Impl::DataComm() const { return par.split() ? par.dp_comm.get() : comm.get(); }

// A pipeline copies also on the CPU (where .to() would alias `b`): the backward of a micro
// batch runs after later micro batches have refilled `b`, and the embedding's backward reads the
// token ids it saved. Otherwise a micro batch's backward ends before the next one is read.
// To a GPU the ids go through page-locked memory without the host waiting: a copy from pageable
// memory would wait for everything queued on the GPU, and the next step's launches would start
// only once the last step's kernels had finished.
std::pair<torch::Tensor, torch::Tensor> Trainer::Impl::OnDevice(Batch& b) const {
  const bool copy_always = par.pp > 1;
  auto copy = [&](std::vector<int64_t>& v) {
    torch::Tensor host = HostIds(v, b);
    if (device.is_cpu()) return copy_always ? host.clone() : host;
    return host.pin_memory().to(device, torch::kLong, /*non_blocking=*/true);
  };
  return {copy(b.inputs), copy(b.targets)};
}

void Trainer::Impl::CopyBatchTo(Batch& b, torch::Tensor& x, torch::Tensor& y) const {
  x.copy_(HostIds(b.inputs, b).pin_memory(), /*non_blocking=*/true);
  y.copy_(HostIds(b.targets, b).pin_memory(), /*non_blocking=*/true);
}

Status Trainer::Impl::SetupParallel() {
  ParallelState& p = par;
  p.tp = static_cast<int>(config.parallel.tp);
  p.pp = static_cast<int>(config.parallel.pp);
  p.dp = options.world_size / (p.tp * p.pp);
  const int r = options.rank;
  p.tp_rank = r % p.tp;
  p.dp_rank = r / p.tp % p.dp;
  p.stage = r / (p.tp * p.dp);
  if (!p.split()) {
    p.dp_rank = r;
    return Status::OK();
  }
  if (p.tp * p.pp * p.dp != options.world_size) {
    return Status::InvalidArgument("tensor-parallel degree " + std::to_string(p.tp) + " x " +
                                   std::to_string(p.pp) + " pipeline stages does not divide " +
                                   std::to_string(options.world_size) + " ranks");
  }
  auto rank_of = [&p](int stage, int dp_rank, int tp_rank) {
    return (stage * p.dp + dp_rank) * p.tp + tp_rank;
  };
  // Every rank makes the groups it is in, in this order (a group's rendezvous waits for all of
  // its members).
  auto group = [&](const std::string& name, std::vector<int> ranks,
                   std::unique_ptr<Comm>* out) -> Status {
    std::sort(ranks.begin(), ranks.end());
    DS_ASSIGN_OR_RETURN(*out, comm->NewGroup(name, ranks));
    return Status::OK();
  };
  const std::string at = std::to_string(p.stage) + "-" + std::to_string(p.dp_rank);
  std::vector<int> tp_ranks, dp_ranks, model_ranks, pipe_ranks;
  for (int t = 0; t < p.tp; ++t) tp_ranks.push_back(rank_of(p.stage, p.dp_rank, t));
  for (int d = 0; d < p.dp; ++d) dp_ranks.push_back(rank_of(p.stage, d, p.tp_rank));
  for (int s = 0; s < p.pp; ++s) {
    for (int t = 0; t < p.tp; ++t) model_ranks.push_back(rank_of(s, p.dp_rank, t));
    pipe_ranks.push_back(rank_of(s, p.dp_rank, p.tp_rank));
  }
  const std::string replica = std::to_string(p.dp_rank) + "-" + std::to_string(p.tp_rank);
  DS_RETURN_IF_ERROR(group("tp-" + at, tp_ranks, &p.tp_comm));
  DS_RETURN_IF_ERROR(group("dp-" + std::to_string(p.stage) + "-" + std::to_string(p.tp_rank),
                           dp_ranks, &p.dp_comm));
  DS_RETURN_IF_ERROR(group("model-" + std::to_string(p.dp_rank), model_ranks, &p.model_comm));
  DS_RETURN_IF_ERROR(group("pipe-" + replica, pipe_ranks, &p.pipe_comm));
  if (p.pp > 1 && (p.first_stage() || p.last_stage())) {
    DS_RETURN_IF_ERROR(
        group("tied-" + replica, {pipe_ranks.front(), pipe_ranks.back()}, &p.tied_comm));
  }

  GptPlace place;
  place.tp = p.tp;
  place.tp_rank = p.tp_rank;
  place.pp = p.pp;
  place.stage = p.stage;
  place.tp_all_reduce = [c = p.tp_comm.get()](torch::Tensor& t) {
    Status s = c->AllReduce(t, "tensor-parallel partial sums");
    TORCH_CHECK(s.ok(), s.message());
  };
  DS_ASSIGN_OR_RETURN(p.gpt, MakeGptPart(config.model, config.trainer.seed, std::move(place)));
  model = p.gpt;
  return Status::OK();
}

void Trainer::Impl::FindPlaces() {
  places.clear();
  for (const auto& p : model->named_parameters()) {  // ZeRO's order
    TensorPlace t;
    t.name = p.key();
    t.shape = p.value().sizes().vec();
    if (par.gpt != nullptr) {
      t.split = GptTpSplit(t.name);
      if (t.split.dim >= 0) t.shape[static_cast<size_t>(t.split.dim)] *= par.tp;
      t.owned = (t.split.dim >= 0 || par.tp_rank == 0) &&
                !(t.name == kGptTiedEmbedding && par.pp > 1 && !par.first_stage());
    }
    places.push_back(std::move(t));
  }
}

// ---- the pipeline

Status Trainer::Impl::PipelineMicroSteps(double scale, torch::Tensor& loss_sum) {
  const int64_t gas = config.batch.gradient_accumulation_steps;
  const int64_t B = config.batch.micro_batch_per_gpu, T = config.model.seq_len;
  const int64_t C = config.model.d_model;
  Comm* pipe = par.pipe_comm.get();
  const int s = par.stage;
  // What a backward pass needs of its forward: the input (its gradient goes back) and the
  // output (the loss on the last stage).
  struct InFlight {
    torch::Tensor input, output;
  };
  std::deque<InFlight> waiting;
  std::vector<CommHandle> sends;
  std::vector<torch::Tensor> sent;  // alive until their sends complete
  auto hidden = [&] {
    return torch::empty({B, T, C}, torch::TensorOptions().dtype(dtype).device(device));
  };
  auto forward = [&](int64_t i) -> Status {
    DS_RETURN_IF_ERROR(sampler->Next(data.train, &batch));  // every stage: the sampler's place
    auto [x, y] = OnDevice(batch);
    torch::Tensor in = x;
    if (!par.first_stage()) {
      in = hidden();
      DS_RETURN_IF_ERROR(pipe->Recv(in, s - 1, TagOf(i, false),
                                    "activations of micro batch " + std::to_string(i)));
      in.requires_grad_(true);
    }
    torch::Tensor out = par.gpt->stage_forward(in, y);
    if (par.last_stage()) {
      loss_sum.add_(out.detach());
    } else {
      torch::Tensor o = out.detach().contiguous();
      DS_ASSIGN_OR_RETURN(CommHandle h,
                          pipe->SendAsync(o, s + 1, TagOf(i, false),
                                          "activations of micro batch " + std::to_string(i)));
      sends.push_back(std::move(h));
      sent.push_back(o);
    }
    waiting.push_back({in, out});
    return Status::OK();
  };
  auto backward = [&](int64_t i) -> Status {
    InFlight f = std::move(waiting.front());
    waiting.pop_front();
    if (par.last_stage()) {
      // DeepSpeed scales the loss by 1/accumulation (and by the fp16 loss scale).
      (f.output * (scale / static_cast<double>(gas))).backward();
    } else {
      torch::Tensor g = hidden();
      DS_RETURN_IF_ERROR(
          pipe->Recv(g, s + 1, TagOf(i, true), "gradients of micro batch " + std::to_string(i)));
      torch::autograd::backward({f.output}, {g});
    }
    if (!par.first_stage()) {
      torch::Tensor g = f.input.grad().contiguous();
      DS_ASSIGN_OR_RETURN(CommHandle h,
                          pipe->SendAsync(g, s - 1, TagOf(i, true),
                                          "gradients of micro batch " + std::to_string(i)));
      sends.push_back(std::move(h));
      sent.push_back(g);
    }
    return zero->EndMicroStep(i == gas - 1);
  };
  // 1F1B: stage s runs pp - s - 1 forwards ahead, then alternates, then drains.
  const int64_t warmup = std::min<int64_t>(par.pp - s - 1, gas);
  for (int64_t i = 0; i < warmup; ++i) DS_RETURN_IF_ERROR(forward(i));
  for (int64_t i = 0; i < gas - warmup; ++i) {
    DS_RETURN_IF_ERROR(forward(warmup + i));
    DS_RETURN_IF_ERROR(backward(i));
  }
  for (int64_t i = gas - warmup; i < gas; ++i) DS_RETURN_IF_ERROR(backward(i));
  for (CommHandle& h : sends) DS_RETURN_IF_ERROR(h.Wait());
  return Status::OK();
}

Result<torch::Tensor> Trainer::Impl::PipelineEval(int64_t batches) {
  const int64_t B = config.batch.micro_batch_per_gpu, T = config.model.seq_len;
  Comm* pipe = par.pipe_comm.get();
  const int s = par.stage;
  torch::Tensor sum =
      torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(device));
  Batch b;
  for (int64_t i = 0; i < batches; ++i) {
    DS_RETURN_IF_ERROR(eval->Read(data.eval, i, &b));
    auto [x, y] = OnDevice(b);
    torch::Tensor in = x;
    if (!par.first_stage()) {
      in = torch::empty({B, T, config.model.d_model},
                        torch::TensorOptions().dtype(dtype).device(device));
      DS_RETURN_IF_ERROR(pipe->Recv(in, s - 1, TagOf(i, false), "evaluation activations"));
    }
    torch::Tensor out = par.gpt->stage_forward(in, y);
    if (par.last_stage()) {
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

}  // namespace ds::engine
