// ZeRO stages 0-2 and the optimizer step. The layout is ckpt::PartitionForRank's: stages 0-2
// lay every parameter end to end in one flat vector padded to world_size * alignment, and
// rank r owns the r-th contiguous partition (stage 0: every rank keeps everything).
//
// Where the gradient goes, per stage:
//   0: each micro step's gradients are added into a flat fp32 accumulator; on the last micro
//      step it is all-reduced in buckets of reduce_bucket_size elements.
//   1: the same accumulator, reduce-scattered on the last micro step: rank r keeps row r.
//   2: post-accumulate-grad hooks copy each gradient into buckets that never cross a partition;
//      a full bucket is reduced to its owner, who adds it into its fp32 partition gradient. So
//      only the partition (plus buckets in flight) is ever held.
// After Adam updates the partition, stages 1-2 all-gather the new weights in the training
// dtype into the model.
#include "engine/zero/zero.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "ckpt/partition.h"
#include "engine/torch_status.h"
#include "engine/zero/internal/zero_state.h"

namespace ds::engine {
namespace {

constexpr size_t kReductionsInFlight = 2;  // buckets being reduced while backward goes on

uint64_t Nbytes(const at::Tensor& t) {
  return t.defined() ? static_cast<uint64_t>(t.numel()) * t.element_size() : 0;
}

// The stage 2 hook: tells the optimizer that a parameter's gradient for this micro step is in.
struct GradReadyHook : public torch::autograd::PostAccumulateGradHook {
  GradReadyHook(ZeroOptimizer::Impl* z, size_t index) : z_(z), index_(index) {}
  void operator()(const torch::autograd::Variable& /*param*/) override { z_->OnGradReady(index_); }
  ZeroOptimizer::Impl* z_;
  size_t index_;
};

}  // namespace

// ---- scaling and the reduction queue

void ZeroOptimizer::Impl::PreScale(at::Tensor& t) const {
  if (o.prescale_gradients) {
    t.mul_(1.0 / o.world_size);
  } else if (o.gradient_predivide_factor != 1.0) {
    t.mul_(1.0 / o.gradient_predivide_factor);
  }
}

void ZeroOptimizer::Impl::PostScale(at::Tensor& t) const {
  if (!o.prescale_gradients && o.gradient_predivide_factor != o.world_size) {
    t.mul_(o.gradient_predivide_factor / o.world_size);
  }
}

Status ZeroOptimizer::Impl::LaunchReduction(PendingReduction r) {
  reductions.push_back(std::move(r));
  const size_t window = o.overlap_comm ? kReductionsInFlight : 0;
  while (reductions.size() > window) DS_RETURN_IF_ERROR(CompleteOldestReduction());
  return Status::OK();
}

Status ZeroOptimizer::Impl::CompleteOldestReduction() {
  PendingReduction r = std::move(reductions.front());
  reductions.pop_front();
  DS_RETURN_IF_ERROR(r.handle.Wait());
  if (r.apply) {
    at::Tensor& sum = r.out.defined() ? r.out : r.buffer;
    PostScale(sum);
    r.apply(sum);
  }
  return Status::OK();
}

Status ZeroOptimizer::Impl::DrainReductions() {
  while (!reductions.empty()) DS_RETURN_IF_ERROR(CompleteOldestReduction());
  return Status::OK();
}

// ---- set-up

ZeroOptimizer::ZeroOptimizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ZeroOptimizer::~ZeroOptimizer() {
  if (impl_->model) impl_->model->set_unit_runner(nullptr);
  for (ZeroTensor& t : impl_->tensors) {
    if (t.param.defined()) torch::autograd::impl::set_post_acc_grad_hooks(t.param, nullptr);
  }
}

int64_t ZeroOptimizer::numel() const { return impl_->total; }
Status ZeroOptimizer::error() const { return impl_->sticky; }

Result<std::unique_ptr<ZeroOptimizer>> ZeroOptimizer::Create(std::shared_ptr<LanguageModel> model,
                                                             const ZeroOptions& options) {
  auto z = std::make_unique<Impl>();
  z->o = options;
  z->model = std::move(model);
  const ZeroOptions& o = z->o;
  if (o.world_size > 1 && o.comm == nullptr) {
    return Status::InvalidArgument("ZeRO over " + std::to_string(o.world_size) +
                                   " ranks needs a communicator");
  }
  DS_ASSIGN_OR_RETURN(z->stage, ZeroStage::Of(o.stage));
  const ZeroStage stage = z->stage;
  const bool host_state = o.offload_optimizer && stage.partitions_optimizer();
  // Stages 2-3 move offloaded state through page-locked staging (GradSink, Uploader): the
  // state itself needs no pinning (LibTorch's pinned allocator would round each buffer up to a
  // power of two). Stage 1 copies its reduced gradient straight into a pinned `grad`.
  const bool staged = host_state && stage.partitions_gradients();
  const bool pin = host_state && !staged && o.pin_memory && o.device.is_cuda();
  z->state_opts = at::TensorOptions()
                      .dtype(at::kFloat)
                      .device(host_state ? at::kCPU : o.device)
                      .pinned_memory(pin);
  try {
    if (staged) {
      constexpr int64_t kSlot = int64_t{1} << 24;  // elements: 32 MiB a slot in bf16
      z->grad_sink = std::make_unique<GradSink>(o.device, kSlot, /*slots=*/4);
      z->uploader = std::make_unique<Uploader>(o.device, kSlot);
    }
    DS_RETURN_IF_ERROR(z->deferred() ? z->TakeDeferredModel() : z->TakeBuiltModel());
  } catch (const std::exception& e) {
    return TorchError(e,
                      "setting up ZeRO stage " + std::to_string(o.stage) + " on " + o.device.str());
  }
  if (!z->o.tied.empty() && (stage.partitions_gradients() || z->o.tied_comm == nullptr)) {
    return Status::InvalidArgument("ZeRO: tied gradients need stage 0 or 1 and a communicator");
  }
  if (!o.in_norm.empty() && o.in_norm.size() != z->tensors.size()) {
    return Status::InvalidArgument("ZeRO: in_norm names " + std::to_string(o.in_norm.size()) +
                                   " parameters, the model has " +
                                   std::to_string(z->tensors.size()));
  }
  Impl* raw = z.get();
  std::unique_ptr<ZeroOptimizer> out(new ZeroOptimizer(std::move(z)));
  raw->FindNormRuns(out->HeldPieces());
  if (raw->values_pending && !o.defer_values) DS_RETURN_IF_ERROR(out->Initialize());
  return out;
}

// A model built whole on every rank (fp32 on the CPU): every rank starts from rank 0's weights,
// as DeepSpeed's engine broadcasts them, and then keeps what its stage keeps.
Status ZeroOptimizer::Impl::ListTensors() {
  int64_t offset = 0;
  for (const auto& p : model->named_parameters()) {
    ZeroTensor t;
    t.name = p.key();
    t.param = p.value();
    t.shape = p.value().sizes().vec();
    t.numel = p.value().numel();
    t.flat_offset = offset;
    offset += t.numel;
    tensors.push_back(std::move(t));
  }
  total = offset;
  if (tensors.empty()) return Status::InvalidArgument("the model has no parameters to train");
  return Status::OK();
}

Status ZeroOptimizer::Impl::TakeBuiltModel() {
  DS_RETURN_IF_ERROR(ListTensors());
  std::vector<at::Tensor> fp32;
  for (const ZeroTensor& t : tensors) {
    at::Tensor v = t.param.detach().to(o.device, at::kFloat).reshape(-1).contiguous();
    if (distributed()) DS_RETURN_IF_ERROR(comm()->Broadcast(v, 0, "initial weights of " + t.name));
    fp32.push_back(v);
  }
  model->to(o.device, o.dtype);
  size_t i = 0;
  for (const auto& p : model->named_parameters()) tensors[i++].param = p.value();
  DS_RETURN_IF_ERROR(stage.partitions_parameters() ? SetupStage3(fp32) : SetupFlat(fp32));
  AllocateMoments();
  return swapping() ? OpenSwap() : Status::OK();
}

// A model built with placeholders (LanguageModel::deferred): no rank ever holds more than its
// stage keeps. The values come later, each rank's own (Initialize) or from a checkpoint.
Status ZeroOptimizer::Impl::TakeDeferredModel() {
  if (!model->buffers().empty()) {
    return Status::InvalidArgument(
        "a model with deferred initial values cannot have buffers (it has " +
        std::to_string(model->buffers().size()) + ")");
  }
  DS_RETURN_IF_ERROR(ListTensors());
  DS_RETURN_IF_ERROR(stage.partitions_parameters() ? SetupStage3({}) : SetupFlat({}));
  AllocateMoments();
  values_pending = true;
  return swapping() ? OpenSwap() : Status::OK();
}

void ZeroOptimizer::Impl::AllocateMoments() {
  if (!swapping()) {  // swapped: fresh swap files read as zeros
    exp_avg = at::zeros({part_len}, state_opts);
    exp_avg_sq = at::zeros({part_len}, state_opts);
  }
  adam_step = at::zeros({}, state_opts.pinned_memory(false));
  lr = at::zeros({}, state_opts.pinned_memory(false));
}

bool ZeroOptimizer::values_pending() const { return impl_->values_pending; }

Status ZeroOptimizer::Initialize() {
  Impl& z = *impl_;
  if (!z.values_pending) return Status::OK();
  try {
    torch::NoGradGuard no_grad;
    for (const ZeroPiece& p : HeldPieces()) {
      const ZeroTensor& t = z.tensors[static_cast<size_t>(p.tensor)];
      const at::Tensor values = z.model->InitialValues(t.name, p.begin, p.end).contiguous();
      DS_RETURN_IF_ERROR(WriteState(
          0, p.offset,
          std::span<const float>(values.data_ptr<float>(), static_cast<size_t>(values.numel()))));
    }
  } catch (const std::exception& e) {
    return TorchError(e, "making the initial weights");
  }
  return Publish();
}

void ZeroOptimizer::Impl::FindNormRuns(const std::vector<ZeroPiece>& held) {
  if (std::all_of(o.in_norm.begin(), o.in_norm.end(), [](bool b) { return b; })) return;
  for (const ZeroPiece& p : held) {
    if (!o.in_norm[static_cast<size_t>(p.tensor)]) continue;
    if (!norm_runs.empty() && norm_runs.back().first + norm_runs.back().second == p.offset) {
      norm_runs.back().second += p.end - p.begin;  // adjacent: one run
    } else {
      norm_runs.push_back({p.offset, p.end - p.begin});
    }
  }
  if (norm_runs.empty()) norm_runs.push_back({0, 0});  // counts nothing (not: everything)
}

at::Tensor ZeroOptimizer::Impl::SquaredGradNorm() const {
  // One reduction pass each (pow(2).sum() wrote a squared copy of the gradient first).
  auto squares = [](const at::Tensor& g) { return at::linalg_vector_norm(g, 2).square(); };
  if (norm_runs.empty()) return squares(grad).to(o.device).reshape({1});
  at::Tensor sq = at::zeros({1}, grad.options());
  for (const auto& [offset, length] : norm_runs) sq += squares(grad.narrow(0, offset, length));
  return sq.to(o.device);
}

Status ZeroOptimizer::Impl::SetupFlat(const std::vector<at::Tensor>& fp32) {
  const int64_t W = o.world_size;
  part_len = !stage.partitions_optimizer()
                 ? total
                 : static_cast<int64_t>(ckpt::PartitionLength(
                       static_cast<uint64_t>(total), static_cast<uint32_t>(W), o.alignment));
  part_begin = stage.partitions_optimizer() ? part_len * o.rank : 0;
  const int64_t padded = stage.partitions_optimizer() ? part_len * W : total;
  // The model's parameters become views of one flat buffer in the training dtype, laid out as
  // the master vector: publishing new weights is one copy (or one all-gather) into it.
  if (fp32.empty()) {  // deferred: Initialize or a checkpoint fills the master, then publishes
    if (!swapping()) master = at::zeros({part_len}, state_opts);
    flat_param = at::zeros({padded}, at::TensorOptions().dtype(o.dtype).device(o.device));
  } else {
    at::Tensor full = at::zeros({padded}, fp32[0].options());
    full.narrow(0, 0, total).copy_(at::cat(fp32));
    master =
        full.narrow(0, part_begin, part_len).to(state_opts, /*non_blocking=*/false, /*copy=*/true);
    flat_param = full.to(o.device, o.dtype);
  }
  for (ZeroTensor& t : tensors) {
    t.param.set_data(flat_param.narrow(0, t.flat_offset, t.numel).view(t.shape));
  }
  auto device_f32 = at::TensorOptions().dtype(at::kFloat).device(o.device);
  if (!stage.partitions_gradients()) {
    flat_acc = at::zeros({padded}, device_f32);
    grad_in_acc = state_opts.device() == o.device;
    grad = grad_in_acc
               ? (stage.partitions_optimizer() ? flat_acc.view({W, part_len})[o.rank] : flat_acc)
               : at::zeros({part_len}, state_opts);  // offloaded: the sum is copied over
    stage1_buckets = stage.partitions_optimizer() && distributed() && o.overlap_comm &&
                     !o.pipelined && o.tied.empty();
    if (!stage1_buckets) return Status::OK();
    delivered.assign(tensors.size(), false);
  } else {
    grad = at::zeros({part_len}, state_opts);  // stage 2: the partition's gradient
    hooks_live = true;                         // every micro step fills buckets
  }
  // Buckets cut at partition boundaries.
  const int64_t bucket = std::max<int64_t>(1, o.reduce_bucket_size);
  for (int64_t r = W - 1; r >= 0; --r) {
    const int64_t lo = std::min(total, r * part_len), hi = std::min(total, (r + 1) * part_len);
    for (int64_t end = hi; end > lo; end -= bucket) {
      buckets.push_back({std::max(lo, end - bucket), end, static_cast<int>(r), 0, at::Tensor()});
    }
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    torch::autograd::impl::set_post_acc_grad_hooks(tensors[i].param,
                                                   std::make_unique<GradReadyHook>(this, i));
  }
  return Status::OK();
}

// ---- micro steps

Status ZeroOptimizer::BeginMicroStep(bool last_of_step) {
  Impl& z = *impl_;
  z.hooks_live = (z.stage.partitions_gradients() && !z.stage.partitions_parameters()) ||
                 (z.stage1_buckets && last_of_step);
  if (!z.stage.partitions_parameters()) return Status::OK();
  try {
    DS_RETURN_IF_ERROR(z.EnsureGathered(0));
    z.Prefetch(1, +1);
  } catch (const std::exception& e) {
    return TorchError(e, "gathering parameters");
  }
  return Status::OK();
}

Status ZeroOptimizer::EndMicroStep(bool last_of_step) {
  Impl& z = *impl_;
  if (!z.sticky.ok()) return z.sticky;
  try {
    torch::NoGradGuard no_grad;
    if (z.stage1_buckets && z.hooks_live) {  // backward filled (and launched) the buckets
      z.hooks_live = false;
      return z.FlushBuckets();
    }
    if (!z.stage.partitions_gradients()) {
      // The step's first micro step writes the accumulator, later ones add to it: no pass that
      // zeroes it between steps. The writes are one multi-tensor copy (it converts bf16 to fp32
      // on its fast path), not one copy kernel per parameter (about 150 at GPT-2 124M).
      std::vector<at::Tensor> accs, grads;
      for (ZeroTensor& t : z.tensors) {
        at::Tensor& g = t.param.mutable_grad();
        at::Tensor acc = z.flat_acc.narrow(0, t.flat_offset, t.numel);
        if (!g.defined()) {  // unused in this micro step
          if (z.acc_fresh) acc.zero_();
          continue;
        }
        accs.push_back(acc);
        grads.push_back(g.reshape(-1));
        g.reset();  // the flat fp32 buffer holds it now (`grads` keeps it until then)
      }
      if (!accs.empty())
        z.acc_fresh ? at::_foreach_copy_(accs, grads) : at::_foreach_add_(accs, grads);
      z.acc_fresh = false;
      if (last_of_step) DS_RETURN_IF_ERROR(z.ReduceFlatAccumulator());
      return Status::OK();
    }
    if (!z.stage.partitions_parameters()) {  // stage 2: the buckets cover the partition
      DS_RETURN_IF_ERROR(z.FlushBuckets());
      z.grad_fresh = false;
      return Status::OK();
    }
    DS_RETURN_IF_ERROR(z.ReduceUnitGrads(0));
    z.Release(0);
    DS_RETURN_IF_ERROR(z.DrainReductions());
    if (z.grad_sink) {
      // A unit whose backward did not run sent nothing: in a step's first micro step its
      // gradient is zero, not the last step's.
      for (size_t u = 0; u < z.units.size(); ++u) {
        if (!z.unit_reduced[u] && z.grad_fresh) {
          for (int i : z.units[u]) {
            const ZeroTensor& t = z.tensors[static_cast<size_t>(i)];
            z.grad_sink->Zero(z.grad.narrow(0, t.part_offset, t.piece));
          }
        }
        z.unit_reduced[u] = false;
      }
      z.grad_fresh = false;
    }
  } catch (const std::exception& e) {
    return TorchError(e, "reducing gradients");
  }
  return Status::OK();
}

void ZeroOptimizer::RestartMicroStep(bool first_of_step) {
  Impl& z = *impl_;
  for (ZeroTensor& t : z.tensors) t.param.mutable_grad().reset();
  z.acc_fresh = first_of_step;
}

Status ZeroOptimizer::BeginEval() {
  if (!impl_->stage.partitions_parameters()) return Status::OK();
  try {
    return impl_->EnsureGathered(0);
  } catch (const std::exception& e) {
    return TorchError(e, "gathering parameters");
  }
}

Status ZeroOptimizer::EndEval() {
  if (impl_->stage.partitions_parameters()) impl_->Release(0);
  return impl_->sticky;
}

// ---- stage 2: buckets filled by the backward pass

void ZeroOptimizer::Impl::OnGradReady(size_t index) {
  if (!hooks_live) return;  // stage 1 before the last micro step: EndMicroStep accumulates
  ZeroTensor& t = tensors[index];
  at::Tensor& g = t.param.mutable_grad();
  if (!g.defined()) return;
  torch::NoGradGuard no_grad;
  at::Tensor flat = g.reshape(-1);
  if (stage1_buckets) {  // the step's sum: the earlier micro steps' and this one's
    if (!acc_fresh) flat = flat_acc.narrow(0, t.flat_offset, t.numel).add_(flat);
    delivered[index] = true;
  }
  FillBuckets(t, flat);
  g.reset();
  Status s = LaunchReadyBuckets();
  if (!s.ok()) Throw(s);
}

void ZeroOptimizer::Impl::FillBuckets(const ZeroTensor& t, const at::Tensor& flat) {
  const int64_t lo = t.flat_offset, hi = t.flat_offset + t.numel;
  for (GradBucket& b : buckets) {
    const int64_t s = std::max(lo, b.begin), e = std::min(hi, b.end);
    if (s >= e) continue;
    if (!b.buffer.defined()) {
      b.buffer =
          at::zeros({b.end - b.begin}, at::TensorOptions().dtype(o.comm_dtype).device(o.device));
    }
    b.buffer.narrow(0, s - b.begin, e - s).copy_(flat.narrow(0, s - lo, e - s));
    b.arrived += e - s;
  }
}

Status ZeroOptimizer::Impl::FlushBuckets() {
  // Stage 1: tensors the last micro batch did not reach still owe the earlier micro steps' sum.
  for (size_t i = 0; i < delivered.size(); ++i) {
    if (!delivered[i] && !acc_fresh) {
      const ZeroTensor& t = tensors[i];
      FillBuckets(t, flat_acc.narrow(0, t.flat_offset, t.numel));
    }
    delivered[i] = false;
  }
  // What did not arrive is zeros (buffers start zeroed).
  for (size_t k = next_bucket; k < buckets.size(); ++k) {  // those not yet launched
    GradBucket& b = buckets[k];
    if (!b.buffer.defined()) {
      b.buffer =
          at::zeros({b.end - b.begin}, at::TensorOptions().dtype(o.comm_dtype).device(o.device));
    }
    b.arrived = b.end - b.begin;
  }
  DS_RETURN_IF_ERROR(LaunchReadyBuckets());
  DS_RETURN_IF_ERROR(DrainReductions());
  next_bucket = 0;
  acc_fresh = false;
  return Status::OK();
}

Status ZeroOptimizer::Impl::LaunchReadyBuckets() {
  while (next_bucket < buckets.size()) {
    GradBucket& b = buckets[next_bucket];
    if (b.arrived < b.end - b.begin) break;
    PendingReduction r;
    r.buffer = std::move(b.buffer);
    b.buffer = at::Tensor();
    b.arrived = 0;
    PreScale(r.buffer);
    if (distributed()) {
      DS_ASSIGN_OR_RETURN(
          r.handle,
          comm()->ReduceAsync(r.buffer, b.owner, "gradient bucket " + std::to_string(next_bucket)));
    }
    if (b.owner == o.rank) {
      // Stage 2 adds each micro step's sum into the partition's gradient; stage 1's is the
      // step's whole sum.
      const int64_t at_part = b.begin - part_begin;
      r.apply = [this, at_part](const at::Tensor& sum) {
        if (grad_sink) return SendGrad(sum, at_part);  // offloaded (stage 2)
        at::Tensor to = grad.narrow(0, at_part, sum.numel());
        stage.partitions_gradients() ? to.add_(sum.to(grad.options())) : to.copy_(sum);
      };
    }
    ++next_bucket;
    DS_RETURN_IF_ERROR(LaunchReduction(std::move(r)));
  }
  return Status::OK();
}

// ---- stages 0 and 1: the accumulator, reduced once per step

Status ZeroOptimizer::Impl::ReduceFlatAccumulator() {
  for (int i : o.tied) {  // one sum per copy of the tied tensor first
    const ZeroTensor& t = tensors[static_cast<size_t>(i)];
    at::Tensor g = flat_acc.narrow(0, t.flat_offset, t.numel);
    DS_RETURN_IF_ERROR(o.tied_comm->AllReduce(g, "tied gradient of " + t.name));
  }
  if (!distributed()) {
    if (stage.partitions_optimizer() && !grad_in_acc) grad.copy_(flat_acc.narrow(0, 0, part_len));
    return Status::OK();
  }
  const int64_t W = o.world_size;
  const bool partitioned = stage.partitions_optimizer();
  const int64_t bucket = std::max<int64_t>(1, o.reduce_bucket_size / (partitioned ? W : 1));
  const int64_t columns = partitioned ? part_len : total;
  at::Tensor rows = partitioned ? flat_acc.view({W, part_len}) : flat_acc.view({1, total});
  for (int64_t c = 0, k = 0; c < columns; c += bucket, ++k) {
    const int64_t n = std::min(bucket, columns - c);
    const std::string what = "gradient bucket " + std::to_string(k);
    at::Tensor send = rows.narrow(1, c, n).to(o.comm_dtype).contiguous();  // (rows, n)
    PreScale(send);
    PendingReduction r;
    if (!partitioned) {
      DS_RETURN_IF_ERROR(comm()->AllReduce(send, what));
      PostScale(send);
      flat_acc.narrow(0, c, n).copy_(send.view({n}));
      continue;
    }
    r.buffer = send.view({W * n});
    r.out = at::empty({n}, send.options());
    DS_ASSIGN_OR_RETURN(r.handle, comm()->ReduceScatterAsync(r.out, r.buffer, what));
    r.apply = [this, c](const at::Tensor& sum) { grad.narrow(0, c, sum.numel()).copy_(sum); };
    DS_RETURN_IF_ERROR(LaunchReduction(std::move(r)));
  }
  return DrainReductions();
}

// ---- the optimizer step

void ZeroOptimizer::Impl::SendGrad(const at::Tensor& src, int64_t offset) {
  grad_sink->Send(src, grad.narrow(0, offset, src.numel()), /*add=*/!grad_fresh);
}

void ZeroOptimizer::Impl::CopyToModel(const at::Tensor& src, const at::Tensor& dst) const {
  if (uploader) {
    uploader->Upload(src, dst);
  } else {
    dst.copy_(src);
  }
}

at::Tensor ZeroOptimizer::Impl::PublishTarget() {
  if (stage.partitions_parameters()) return param_part;
  if (!stage.partitions_optimizer() || !distributed()) {
    return flat_param.narrow(0, part_begin, part_len);
  }
  return at::empty({part_len}, at::TensorOptions().dtype(o.dtype).device(o.device));
}

Status ZeroOptimizer::Impl::PublishFrom(const at::Tensor& target) {
  if (stage.partitions_parameters()) {
    for (ZeroTensor& t : tensors) {
      // Persistent parameters keep their (now old) weights until their unit is gathered again.
      if (t.fresh) live_elements -= t.numel;
      t.fresh = false;
    }
    return Status::OK();
  }
  if (!stage.partitions_optimizer() || !distributed()) return Status::OK();  // in place already
  at::Tensor mine = target;  // a handle: the collective takes non-const ones
  return comm()->AllGather(flat_param, mine, "updated weights");
}

Status ZeroOptimizer::Impl::PublishMaster() {
  if (stage.partitions_parameters()) DS_RETURN_IF_ERROR(DropPendingGathers());
  const at::Tensor target = PublishTarget();
  if (swapping()) {
    DS_RETURN_IF_ERROR(CopyMasterInto(target));
  } else if (params_swapped()) {
    DS_RETURN_IF_ERROR(PublishChunks(master, target));
  } else {
    CopyToModel(master, target);
  }
  return PublishFrom(target);
}

void ZeroOptimizer::SetLearningRate(double lr) { impl_->lr.fill_(lr); }

Result<ZeroStepResult> ZeroOptimizer::Step(double lr, std::optional<double> beta1,
                                           double loss_scale, double clip, bool check_overflow,
                                           bool read_now) {
  SetLearningRate(lr);
  return impl_->StepWithLr(beta1, loss_scale, clip, check_overflow, read_now);
}

Result<ZeroStepResult> ZeroOptimizer::DeviceStep(std::optional<double> beta1, double loss_scale,
                                                 double clip, bool check_overflow) {
  return impl_->StepWithLr(beta1, loss_scale, clip, check_overflow, /*read_now=*/false);
}

Result<ZeroStepResult> ZeroOptimizer::Impl::StepWithLr(std::optional<double> beta1,
                                                       double loss_scale, double clip,
                                                       bool check_overflow, bool read_now) {
  ZeroStepResult out;
  try {
    torch::NoGradGuard no_grad;
    if (grad_sink) DS_RETURN_IF_ERROR(grad_sink->Drain());  // every gradient is in `grad`
    // The global norm (of the gradient as it is, loss scale and all; the norm is unscaled
    // after): stage 0's gradient is whole on every rank; partitions add squares, and so do the
    // parts of the model on other ranks (tensor and pipeline parallelism).
    at::Tensor sq = SquaredGradNorm();
    if (stage.partitions_optimizer() && distributed())
      DS_RETURN_IF_ERROR(comm()->AllReduce(sq, "gradient norm"));
    if (o.model_comm != nullptr)
      DS_RETURN_IF_ERROR(o.model_comm->AllReduce(sq, "gradient norm over the model's parts"));
    at::Tensor norm = sq.sqrt();
    if (loss_scale != 1.0) norm.div_(loss_scale);
    // Overflow as a device scalar: Adam skips on it (found_inf), and the weights are published
    // either way (unchanged after a skip).
    at::Tensor overflow = check_overflow ? at::isfinite(norm).logical_not().to(at::kFloat)
                                         : at::zeros({1}, norm.options());
    // What Adam divides the gradient by as it reads it: the loss scale, and 1 / clipping's
    // coefficient min(1, clip / (norm + 1e-6)). No pass over the gradient of its own.
    at::Tensor divisor;
    if (clip > 0) {
      divisor = at::clamp_min((norm + 1e-6) / clip, 1.0);
      if (loss_scale != 1.0) divisor.mul_(loss_scale);
    } else if (loss_scale != 1.0) {
      divisor = at::full({1}, loss_scale, norm.options());
    }
    out.grad_norm_t = norm.reshape({});
    out.overflow_t = overflow.reshape({});
    if (read_now) {
      out.read = true;
      out.grad_norm = out.grad_norm_t.item<double>();  // the one host synchronisation of a step
      out.overflow = out.overflow_t.item<float>() > 0;
    }
    const at::Device state = adam_step.device();
    const bool publish = !out.read || !out.overflow;  // a skipped step changed no weight
    if (stage.partitions_parameters()) DS_RETURN_IF_ERROR(DropPendingGathers());
    if (swapping()) {
      // The new weights go into the model chunk by chunk as Adam makes them, not read back.
      const at::Tensor target = PublishTarget();
      DS_RETURN_IF_ERROR(SwappedAdamStep(out.overflow_t.to(state),
                                         divisor.defined() ? divisor.to(state) : divisor, beta1,
                                         target));
      if (publish) DS_RETURN_IF_ERROR(PublishFrom(target));
    } else {
      AdamWStep(master, grad, exp_avg, exp_avg_sq, adam_step, out.overflow_t.to(state), lr,
                divisor.defined() ? divisor.to(state) : divisor, o.adam,
                beta1.value_or(std::numeric_limits<double>::quiet_NaN()));
      if (publish) DS_RETURN_IF_ERROR(PublishMaster());
    }
    // Stages 0-1 overwrite the gradient at the next step's first micro step; stages 2-3 add
    // the reduced buckets into it.
    acc_fresh = true;
    if (grad_sink) {
      grad_fresh = true;  // the next micro step writes `grad` afresh: no pass zeroing it
    } else if (stage.partitions_gradients()) {
      grad.zero_();
    }
  } catch (const std::exception& e) {
    return TorchError(e, "optimizer step");
  }
  return out;
}

// ---- checkpoints

std::vector<std::string> ZeroOptimizer::names() const {
  std::vector<std::string> out;
  for (const ZeroTensor& t : impl_->tensors) out.push_back(t.name);
  return out;
}

std::vector<std::vector<int64_t>> ZeroOptimizer::shapes() const {
  std::vector<std::vector<int64_t>> out;
  for (const ZeroTensor& t : impl_->tensors) out.push_back(t.shape);
  return out;
}

std::vector<ZeroPiece> ZeroOptimizer::SavePieces() const {
  const Impl& z = *impl_;
  std::vector<uint64_t> numels;
  for (const ZeroTensor& t : z.tensors) numels.push_back(static_cast<uint64_t>(t.numel));
  Result<std::vector<ckpt::FlatRange>> ranges = ckpt::PartitionForRank(
      numels,
      {static_cast<uint32_t>(z.o.world_size), static_cast<uint32_t>(z.o.stage), z.o.alignment},
      static_cast<uint32_t>(z.o.rank));
  std::vector<ZeroPiece> out;
  for (const ckpt::FlatRange& r : ranges.value()) {  // the options were validated at Create
    const ZeroTensor& t = z.tensors[r.tensor];
    ZeroPiece p{static_cast<int>(r.tensor), static_cast<int64_t>(r.begin),
                static_cast<int64_t>(r.end), 0};
    p.offset = z.stage.partitions_parameters() ? t.part_offset + p.begin - t.piece * z.o.rank
                                               : t.flat_offset + p.begin - z.part_begin;
    out.push_back(p);
  }
  return out;
}

std::vector<ZeroPiece> ZeroOptimizer::HeldPieces() const {
  if (impl_->stage.partitions_optimizer()) return SavePieces();
  std::vector<ZeroPiece> out;
  for (size_t i = 0; i < impl_->tensors.size(); ++i) {
    const ZeroTensor& t = impl_->tensors[i];
    out.push_back({static_cast<int>(i), 0, t.numel, t.flat_offset});
  }
  return out;
}

at::Tensor ZeroOptimizer::master() const { return impl_->master; }
at::Tensor ZeroOptimizer::exp_avg() const { return impl_->exp_avg; }
at::Tensor ZeroOptimizer::exp_avg_sq() const { return impl_->exp_avg_sq; }
int64_t ZeroOptimizer::adam_steps() const {
  return static_cast<int64_t>(impl_->adam_step.item<float>());
}
void ZeroOptimizer::set_adam_steps(int64_t steps) {
  impl_->adam_step.fill_(static_cast<double>(steps));
}
uint64_t ZeroOptimizer::alignment() const { return impl_->o.alignment; }

Status ZeroOptimizer::Publish() {
  Impl& z = *impl_;
  z.values_pending = false;  // the master holds the weights now (a checkpoint's or Initialize's)
  try {
    torch::NoGradGuard no_grad;
    return z.PublishMaster();
  } catch (const std::exception& e) {
    return TorchError(e, "publishing loaded weights");
  }
}

Result<at::Tensor> ZeroOptimizer::GatherMaster() {
  Impl& z = *impl_;
  try {
    if (z.stage.partitions_parameters()) return z.GatherStage3Master();
    DS_ASSIGN_OR_RETURN(const at::Tensor master, z.MasterNow());
    if (!z.stage.partitions_optimizer() || !z.distributed())
      // A blocking copy: a non-blocking one from a GPU lands in pinned memory *later*, and the
      // caller reads the result at once.
      return master.narrow(0, 0, z.total).to(at::kCPU, /*non_blocking=*/false, /*copy=*/true);
    at::Tensor mine = master.to(z.o.device);
    at::Tensor all = at::empty({z.part_len * z.o.world_size}, mine.options());
    DS_RETURN_IF_ERROR(z.comm()->AllGather(all, mine, "master weights"));
    return all.narrow(0, 0, z.total).to(at::kCPU);
  } catch (const std::exception& e) {
    return TorchError(e, "gathering the master weights");
  }
}

ModelStateBytes ZeroOptimizer::Memory() const {
  const Impl& z = *impl_;
  ModelStateBytes m;
  auto add = [&](uint64_t* field, const at::Tensor& t) {
    const uint64_t n = Nbytes(t);
    *field += n;
    if (t.defined() && t.is_cpu() && z.o.device.is_cuda()) m.on_host += n;
  };
  if (z.stage.partitions_parameters()) {
    add(&m.params, z.param_part);
    for (const ZeroTensor& t : z.tensors) {
      if (t.fresh) m.params += static_cast<uint64_t>(t.numel) * t.param.element_size();
    }
  } else {
    for (const ZeroTensor& t : z.tensors) add(&m.params, t.param);
  }
  add(&m.grads, z.flat_acc.defined() ? z.flat_acc : z.grad);
  if (z.flat_acc.defined() && z.grad.defined() && z.grad.is_cpu() && z.o.device.is_cuda())
    add(&m.grads, z.grad);
  add(&m.optimizer, z.master);
  add(&m.optimizer, z.exp_avg);
  add(&m.optimizer, z.exp_avg_sq);
  if (z.swap != nullptr) m.on_nvme = z.swap->bytes();
  if (z.param_swap != nullptr) m.on_nvme += z.param_swap->bytes();
  return m;
}

}  // namespace ds::engine
