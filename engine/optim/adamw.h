// Adam and AdamW over flat fp32 buffers (master weights, gradients, both moments), as DeepSpeed's
// FusedAdam / CPUAdam compute them (the formulas of torch.optim.Adam/AdamW): one step updates
// the whole buffer. LibTorch's fused kernels (at::_fused_adam(w)_, what torch.optim.AdamW(
// fused=True) runs) do the work: the multi-tensor kernel on CUDA, a vectorised multi-threaded
// one on the CPU (the ZeRO-Offload step; `dsrun bench adam` measures it against torch's default
// CPU AdamW). The plain path, tensor ops written out, is the reference both are tested against.
// Thread safety: one training thread.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace ds::engine {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool adam_w_mode = true;  // decoupled weight decay (AdamW); false: L2 added to the gradient
  bool bias_correction = true;
};

// One step (`step` counts from 1) at learning rate `lr` (and `beta1` when a schedule cycles
// momentum; NaN: use options.beta1). All four buffers have the same shape, dtype float32, device.
// `grad` is read only.
void AdamWStep(const at::Tensor& master, const at::Tensor& grad, const at::Tensor& exp_avg,
               const at::Tensor& exp_avg_sq, int64_t step, double lr, const AdamWOptions& options,
               double beta1_override, bool allow_fused = true);

// The same step with every per-step value on the device, so the host never waits for the
// gradients and a step captured in a CUDA graph reads each replay's values (all float32
// scalars on the buffers' device): `step` is advanced by 1 - `skip`, and where `skip` (0 or 1)
// is 1 nothing changes (torch.optim's found_inf); `lr` is the learning rate; `grad` is divided
// by `grad_scale` in place as it is read (undefined: 1), which unscales and clips it without a
// pass of its own. Fused kernels read all of them on the device; the plain path (no bias
// correction) reads them on the host.
void AdamWStep(const at::Tensor& master, const at::Tensor& grad, const at::Tensor& exp_avg,
               const at::Tensor& exp_avg_sq, const at::Tensor& step, const at::Tensor& skip,
               const at::Tensor& lr, const at::Tensor& grad_scale, const AdamWOptions& options,
               double beta1_override);

}  // namespace ds::engine
