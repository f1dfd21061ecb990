#include "engine/optim/adamw.h"

#include <ATen/ATen.h>

#include <cmath>
#include <optional>

namespace ds::engine {
namespace {

// torch.optim.Adam(W)'s update, written out: the reference.
void PlainStep(const at::Tensor& p, const at::Tensor& g, const at::Tensor& m, const at::Tensor& v,
               int64_t step, double lr, double b1, const AdamWOptions& o) {
  at::Tensor grad = g;
  if (o.weight_decay != 0) {
    if (o.adam_w_mode) {
      p.mul_(1.0 - lr * o.weight_decay);  // decoupled decay
    } else {
      grad = g.add(p, o.weight_decay);  // L2: decay enters the moments
    }
  }
  m.mul_(b1).add_(grad, 1.0 - b1);
  v.mul_(o.beta2).addcmul_(grad, grad, 1.0 - o.beta2);
  const double bc1 = o.bias_correction ? 1.0 - std::pow(b1, static_cast<double>(step)) : 1.0;
  const double bc2 = o.bias_correction ? 1.0 - std::pow(o.beta2, static_cast<double>(step)) : 1.0;
  at::Tensor denom = v.sqrt().div_(std::sqrt(bc2)).add_(o.eps);
  p.addcdiv_(m, denom, -lr / bc1);
}

bool Fusable(const at::Tensor& master, const at::Tensor& grad, const at::Tensor& exp_avg,
             const at::Tensor& exp_avg_sq, const AdamWOptions& o) {
  return o.bias_correction &&
         (master.is_cuda() ||
          (master.is_cpu() && master.scalar_type() == at::kFloat && master.is_contiguous() &&
           grad.is_contiguous() && exp_avg.is_contiguous() && exp_avg_sq.is_contiguous()));
}

// torch.optim's fused=True kernels; `lr` is a double or a scalar tensor on the device.
template <typename Lr>
void FusedStep(const at::Tensor& master, const at::Tensor& grad, const at::Tensor& exp_avg,
               const at::Tensor& exp_avg_sq, const at::Tensor& state_step, const Lr& lr, double b1,
               const AdamWOptions& o, const std::optional<at::Tensor>& grad_scale,
               const std::optional<at::Tensor>& found_inf) {
  if (o.adam_w_mode) {
    at::_fused_adamw_({master}, {grad}, {exp_avg}, {exp_avg_sq}, {}, {state_step}, lr, b1, o.beta2,
                      o.weight_decay, o.eps, /*amsgrad=*/false, /*maximize=*/false, grad_scale,
                      found_inf);
  } else {
    at::_fused_adam_({master}, {grad}, {exp_avg}, {exp_avg_sq}, {}, {state_step}, lr, b1, o.beta2,
                     o.weight_decay, o.eps, /*amsgrad=*/false, /*maximize=*/false, grad_scale,
                     found_inf);
  }
}

double Beta1(const AdamWOptions& o, double beta1_override) {
  return std::isnan(beta1_override) ? o.beta1 : beta1_override;
}

}  // namespace

void AdamWStep(const at::Tensor& master, const at::Tensor& grad, const at::Tensor& exp_avg,
               const at::Tensor& exp_avg_sq, const at::Tensor& step, const at::Tensor& skip,
               const at::Tensor& lr, const at::Tensor& grad_scale, const AdamWOptions& o,
               double beta1_override) {
  step.add_(1.0 - skip);  // torch.optim counts the step, then takes it back where found_inf
  std::optional<at::Tensor> scale;
  if (grad_scale.defined()) scale = grad_scale;
  if (Fusable(master, grad, exp_avg, exp_avg_sq, o)) {
    FusedStep(master, grad, exp_avg, exp_avg_sq, step, lr, Beta1(o, beta1_override), o, scale,
              skip);
    return;
  }
  if (skip.item<float>() != 0) return;
  if (scale) grad.div_(*scale);
  PlainStep(master, grad, exp_avg, exp_avg_sq, static_cast<int64_t>(step.item<float>()),
            lr.item<double>(), Beta1(o, beta1_override), o);
}

void AdamWStep(const at::Tensor& master, const at::Tensor& grad, const at::Tensor& exp_avg,
               const at::Tensor& exp_avg_sq, int64_t step, double lr, const AdamWOptions& o,
               double beta1_override, bool allow_fused) {
  const double b1 = Beta1(o, beta1_override);
  // The fused kernels of torch.optim's fused=True path: on CUDA the multi-tensor kernel, on the
  // CPU one vectorised (AVX2/AVX-512) pass over the buffer split across LibTorch's intra-op
  // threads, where the plain path makes six passes. Both always correct bias. An element's
  // update does not depend on where partition boundaries fall: adamw_test checks that a buffer
  // updated in pieces cut at odd places equals the buffer updated whole, bit for bit.
  if (allow_fused && Fusable(master, grad, exp_avg, exp_avg_sq, o)) {
    at::Tensor state_step = at::full({}, static_cast<double>(step),
                                     at::TensorOptions().dtype(at::kFloat).device(master.device()));
    FusedStep(master, grad, exp_avg, exp_avg_sq, state_step, lr, b1, o, std::nullopt, std::nullopt);
    return;
  }
  PlainStep(master, grad, exp_avg, exp_avg_sq, step, lr, b1, o);
}

}  // namespace ds::engine
