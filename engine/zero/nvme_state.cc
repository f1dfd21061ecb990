// The optimizer state on NVMe (offload_optimizer.device nvme, ZeRO-Infinity): this rank's fp32
// master and both Adam moments live in swap files (swap.h) instead of tensors, and each optimizer
// step streams them through host buffers of `swap_chunk` elements: read the three chunks, run
// Adam on them with the chunk of the (host) gradient partition, write them back. Publishing the
// new weights reads the master again chunk by chunk into the parameters. What it costs per step:
// 16 bytes read and 12 written per parameter of the partition. Checkpoints read the files
// (ReadState) and a resume writes them (WriteState).
#include <ATen/ATen.h>

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

Result<at::Tensor> ZeroOptimizer::Impl::MasterNow() const {
  if (!swapping()) return master;
  at::Tensor out = at::empty({part_len}, at::kFloat);
  DS_RETURN_IF_ERROR(swap->Read(0, 0, Floats(out)));
  return out;
}

Status ZeroOptimizer::Impl::CopyMasterInto(const at::Tensor& dst) const {
  const int64_t chunk =
      std::min(std::max<int64_t>(o.swap_chunk, 1), std::max<int64_t>(part_len, 1));
  const bool pin = o.pin_memory && o.device.is_cuda();
  at::Tensor buf = at::empty({chunk}, at::TensorOptions().dtype(at::kFloat).pinned_memory(pin));
  for (int64_t c = 0; c < part_len; c += chunk) {
    const int64_t n = std::min(chunk, part_len - c);
    at::Tensor part = buf.narrow(0, 0, n);
    DS_RETURN_IF_ERROR(swap->Read(0, c, Floats(part)));
    dst.narrow(0, c, n).copy_(part);  // blocking: the buffer is read again next
  }
  return Status::OK();
}

Status ZeroOptimizer::Impl::SwappedAdamStep(const at::Tensor& skip, const at::Tensor& divisor,
                                            std::optional<double> beta1) {
  const int64_t chunk =
      std::min(std::max<int64_t>(o.swap_chunk, 1), std::max<int64_t>(part_len, 1));
  at::Tensor bufs[3];
  for (at::Tensor& b : bufs) b = at::empty({chunk}, at::kFloat);
  // Adam advances its step count on every call: each chunk starts from the count before the
  // step, and the count after one chunk is the step's.
  const at::Tensor before = adam_step.clone();
  at::Tensor after = before;
  for (int64_t c = 0; c < part_len; c += chunk) {
    const int64_t n = std::min(chunk, part_len - c);
    at::Tensor part[3];
    for (int b = 0; b < 3; ++b) {
      part[b] = bufs[b].narrow(0, 0, n);
      DS_RETURN_IF_ERROR(swap->Read(b, c, Floats(part[b])));
    }
    after = before.clone();
    AdamWStep(part[0], grad.narrow(0, c, n), part[1], part[2], after, skip, lr, divisor, o.adam,
              beta1.value_or(std::numeric_limits<double>::quiet_NaN()));
    for (int b = 0; b < 3; ++b) DS_RETURN_IF_ERROR(swap->Write(b, c, Floats(part[b])));
  }
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
