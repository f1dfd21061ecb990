// The optimizer state on NVMe (offload_optimizer.device nvme, ZeRO-Infinity): this rank's fp32
// master and both Adam moments live in swap files (swap.h) instead of tensors, and each optimizer
// step streams them through host buffers of `swap_chunk` elements: read the three chunks, run
// Adam on them with the chunk of the (host) gradient partition, copy the new master chunk into
// the parameters and write the three back, the reads of the next chunk and the writes of the
// last overlapping Adam's work on this one. What it costs per step: 12 bytes read and 12 written
// per parameter of the partition.
//
// Stage 3's parameters on NVMe (offload_param.device nvme): the partition in the training dtype
// lives in a swap file of its own (job "<job>-params"), each unit's range read into host memory
// on a thread when the unit's gather is issued (stage3.cc: prefetching reads ahead) and each
// updated chunk written back as the step makes it.
//
// After a load or Initialize, publishing reads the master chunk by chunk. Checkpoints read the
// files (ReadState) and a resume writes them (WriteState).
#include <ATen/ATen.h>

#include <functional>
#include <future>
#include <limits>

#include "engine/optim/adamw.h"
#include "engine/torch_status.h"
#include "engine/zero/internal/zero_state.h"
#include "io/log.h"

namespace ds::engine {
namespace {

constexpr const char* kBufferNames[] = {"master", "exp_avg", "exp_avg_sq"};

std::span<float> Floats(const at::Tensor& t) {
  return std::span<float>(t.data_ptr<float>(), static_cast<size_t>(t.numel()));
}

}  // namespace

Status ZeroOptimizer::Impl::OpenSwap() {
  if (!stage.partitions_optimizer() || !o.offload_optimizer || o.env == nullptr) {
    return Status::InvalidArgument(
        "NVMe offload needs ZeRO stage 1-3 with the optimizer offloaded and an Env");
  }
  SwapOptions so;
  so.env = o.env;
  so.nvme_path = o.nvme_path;
  so.job = o.nvme_job;
  so.rank = o.rank;
  for (const char* name : kBufferNames) so.buffers.push_back({name, part_len});
  DS_ASSIGN_OR_RETURN(swap, SwapSpace::Open(so));
  if (swap->reclaimed_stale()) {
    io::LogWarning("rank " + std::to_string(o.rank) +
                   ": removed the swap files a killed run left in " + swap->dir());
  }
  if (master.defined()) {  // a model built whole: its master moves to the files
    const at::Tensor host = master.to(at::kCPU).contiguous();
    DS_RETURN_IF_ERROR(swap->Write(0, 0, Floats(host)));
  }
  master = exp_avg = exp_avg_sq = at::Tensor();
  return Status::OK();
}

Status ZeroOptimizer::Impl::OpenParamSwap() {
  if (!stage.partitions_parameters() || o.env == nullptr) {
    return Status::InvalidArgument("parameters on NVMe need ZeRO stage 3 and an Env");
  }
  SwapOptions so;
  so.env = o.env;
  so.nvme_path = o.param_nvme_path;
  so.job = o.param_nvme_job;
  so.rank = o.rank;
  so.key = "offload_param.nvme_path";
  so.buffers.push_back({"params", part_len, static_cast<int>(c10::elementSize(o.dtype))});
  DS_ASSIGN_OR_RETURN(param_swap, SwapSpace::Open(so));
  if (param_swap->reclaimed_stale()) {
    io::LogWarning("rank " + std::to_string(o.rank) +
                   ": removed the parameter swap files a killed run left in " + param_swap->dir());
  }
  return Status::OK();
}

Status ZeroOptimizer::Impl::PublishChunk(int64_t begin, const at::Tensor& src,
                                         const at::Tensor& target) const {
  if (!params_swapped()) {
    CopyToModel(src, target.narrow(0, begin, src.numel()));
    return Status::OK();
  }
  const at::Tensor values = src.to(at::kCPU, o.dtype).contiguous();
  return param_swap->WriteBytes(
      0, begin,
      std::span<const std::byte>(static_cast<const std::byte*>(values.data_ptr()),
                                 static_cast<size_t>(values.nbytes())));
}

Status ZeroOptimizer::Impl::PublishChunks(const at::Tensor& src, const at::Tensor& target) const {
  const int64_t chunk = SwapChunk();
  for (int64_t c = 0; c < part_len; c += chunk) {
    DS_RETURN_IF_ERROR(PublishChunk(c, src.narrow(0, c, std::min(chunk, part_len - c)), target));
  }
  return Status::OK();
}

Result<at::Tensor> ZeroOptimizer::Impl::MasterNow() const {
  if (!swapping()) return master;
  at::Tensor out = at::empty({part_len}, at::kFloat);
  DS_RETURN_IF_ERROR(swap->Read(0, 0, Floats(out)));
  return out;
}

int64_t ZeroOptimizer::Impl::SwapChunk() const {
  return std::min(std::max<int64_t>(o.swap_chunk, 1), std::max<int64_t>(part_len, 1));
}

Status ZeroOptimizer::Impl::CopyMasterInto(const at::Tensor& dst) const {
  const int64_t chunk = SwapChunk();
  // The uploader stages through its own page-locked slots; without it the copy goes to the
  // device from this buffer.
  const bool pin = !uploader && o.pin_memory && o.device.is_cuda();
  at::Tensor buf = at::empty({chunk}, at::TensorOptions().dtype(at::kFloat).pinned_memory(pin));
  for (int64_t c = 0; c < part_len; c += chunk) {
    const int64_t n = std::min(chunk, part_len - c);
    at::Tensor part = buf.narrow(0, 0, n);
    DS_RETURN_IF_ERROR(swap->Read(0, c, Floats(part)));
    DS_RETURN_IF_ERROR(PublishChunk(c, part, dst));  // done with `part` when it returns
  }
  return Status::OK();
}

Status ZeroOptimizer::Impl::SwappedAdamStep(const at::Tensor& skip, const at::Tensor& divisor,
                                            std::optional<double> beta1,
                                            const at::Tensor& publish) {
  const int64_t chunk = SwapChunk();
  // Two slots of three buffers: while Adam updates chunk k in one, the other is written back
  // (chunk k - 1) and then refilled (chunk k + 1) on a thread of its own. A slot's future is its
  // I/O in flight; it is waited for before the slot is touched (and, by its destructor, before
  // the buffers go away on an early return).
  struct Slot {
    at::Tensor buf[3];
    std::future<Status> io;
  };
  auto span_of = [&](Slot& s, int b, int64_t n) { return Floats(s.buf[b].narrow(0, 0, n)); };
  auto read = [&](Slot& s, int64_t c, int64_t n) -> Status {
    for (int b = 0; b < 3; ++b) DS_RETURN_IF_ERROR(swap->Read(b, c, span_of(s, b, n)));
    return Status::OK();
  };
  auto write = [&](Slot& s, int64_t c, int64_t n) -> Status {
    for (int b = 0; b < 3; ++b) DS_RETURN_IF_ERROR(swap->Write(b, c, span_of(s, b, n)));
    return Status::OK();
  };
  // Declared after the lambdas its I/O runs: destroyed (its I/O waited for) before them.
  Slot slots[2];
  for (Slot& s : slots) {
    for (at::Tensor& b : s.buf) b = at::empty({chunk}, at::kFloat);
  }
  auto length = [&](int64_t c) { return std::min(chunk, part_len - c); };
  // Adam advances its step count on every call: each chunk starts from the count before the
  // step, and the count after one chunk is the step's.
  const at::Tensor before = adam_step.clone();
  at::Tensor after = before;
  Status failed;
  if (part_len > 0)
    slots[0].io = std::async(std::launch::async, read, std::ref(slots[0]), 0, length(0));
  for (int64_t c = 0, k = 0; c < part_len; c += chunk, ++k) {
    Slot& cur = slots[k % 2];
    Slot& next = slots[(k + 1) % 2];
    const int64_t n = length(c);
    if (Status s = cur.io.get(); !s.ok()) return s;  // chunk k is in
    if (c + chunk < part_len) {
      if (next.io.valid()) DS_RETURN_IF_ERROR(next.io.get());  // chunk k - 1 is written
      next.io = std::async(std::launch::async, read, std::ref(next), c + chunk, length(c + chunk));
    }
    after = before.clone();
    AdamWStep(cur.buf[0].narrow(0, 0, n), grad.narrow(0, c, n), cur.buf[1].narrow(0, 0, n),
              cur.buf[2].narrow(0, 0, n), after, skip, lr, divisor, o.adam,
              beta1.value_or(std::numeric_limits<double>::quiet_NaN()));
    cur.io = std::async(std::launch::async, write, std::ref(cur), c, n);
    DS_RETURN_IF_ERROR(PublishChunk(c, cur.buf[0].narrow(0, 0, n), publish));  // both only read it
  }
  for (Slot& s : slots) {
    if (s.io.valid()) {
      Status st = s.io.get();
      if (failed.ok()) failed = st;
    }
  }
  DS_RETURN_IF_ERROR(failed);
  adam_step.copy_(after);
  return Status::OK();
}

// ---- the public face

bool ZeroOptimizer::swapped() const { return impl_->swapping(); }
int64_t ZeroOptimizer::state_numel() const { return impl_->part_len; }

Status ZeroOptimizer::ReadState(int buffer, int64_t begin, std::span<float> out) const {
  const Impl& z = *impl_;
  if (z.swapping()) return z.swap->Read(buffer, begin, out);
  const at::Tensor src[] = {z.master, z.exp_avg, z.exp_avg_sq};
  return TorchCall("reading the optimizer state", [&] {
    at::from_blob(out.data(), {static_cast<int64_t>(out.size())}, at::kFloat)
        .copy_(src[buffer].narrow(0, begin, static_cast<int64_t>(out.size())));
  });
}

Status ZeroOptimizer::WriteState(int buffer, int64_t begin, std::span<const float> data) {
  Impl& z = *impl_;
  if (z.swapping()) return z.swap->Write(buffer, begin, data);
  const at::Tensor dst[] = {z.master, z.exp_avg, z.exp_avg_sq};
  return TorchCall("writing the optimizer state", [&] {
    dst[buffer]
        .narrow(0, begin, static_cast<int64_t>(data.size()))
        .copy_(at::from_blob(const_cast<float*>(data.data()), {static_cast<int64_t>(data.size())},
                             at::kFloat));
  });
}

}  // namespace ds::engine
