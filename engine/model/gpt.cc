#include "engine/model/gpt.h"

#include <ATen/ops/scaled_dot_product_attention.h>
#include <torch/autograd.h>
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/init.h>

#include <cmath>

namespace ds::engine {
namespace {

namespace F = torch::nn::functional;

// Activation checkpointing: runs a block without keeping its activations and runs it again in
// the backward pass. The block has no randomness (no dropout), so the recomputation is exact.
struct CheckpointedBlock : public torch::autograd::Function<CheckpointedBlock> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x,
                               int64_t block_ptr) {
    ctx->save_for_backward({x});
    ctx->saved_data["block"] = block_ptr;
    torch::NoGradGuard no_grad;
    return reinterpret_cast<BlockImpl*>(block_ptr)->forward(x);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto* block = reinterpret_cast<BlockImpl*>(ctx->saved_data["block"].toInt());
    torch::Tensor x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    torch::Tensor y;
    {
      torch::AutoGradMode enable(true);
      y = block->forward(x);
    }
    torch::autograd::backward({y}, {grad_out[0]});
    return {x.grad(), torch::Tensor()};
  }
};

}  // namespace

BlockImpl::BlockImpl(const GptOptions& o, int64_t layer) : n_head_(o.n_head) {
  const int64_t c = o.d_model;
  ln_1_ = register_module("ln_1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c})));
  c_attn_ = register_module("attn_c_attn", torch::nn::Linear(c, 3 * c));
  attn_proj_ = register_module("attn_c_proj", torch::nn::Linear(c, c));
  ln_2_ = register_module("ln_2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c})));
  c_fc_ = register_module("mlp_c_fc", torch::nn::Linear(c, 4 * c));
  mlp_proj_ = register_module("mlp_c_proj", torch::nn::Linear(4 * c, c));
  // GPT-2: N(0, 0.02) weights, zero biases, and residual projections scaled by 1/sqrt(2L).
  torch::NoGradGuard no_grad;
  const double residual_std = 0.02 / std::sqrt(2.0 * static_cast<double>(o.n_layer));
  for (auto* lin : {&c_attn_, &c_fc_}) {
    torch::nn::init::normal_((*lin)->weight, 0.0, 0.02);
    torch::nn::init::zeros_((*lin)->bias);
  }
  for (auto* lin : {&attn_proj_, &mlp_proj_}) {
    torch::nn::init::normal_((*lin)->weight, 0.0, residual_std);
    torch::nn::init::zeros_((*lin)->bias);
  }
  (void)layer;
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x) {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), hs = C / n_head_;
  // Attention: q, k, v each (B, nh, T, hs).
  auto qkv = c_attn_(ln_1_(x)).split(C, 2);
  auto heads = [&](const torch::Tensor& t) { return t.view({B, T, n_head_, hs}).transpose(1, 2); };
  torch::Tensor y = at::scaled_dot_product_attention(heads(qkv[0]), heads(qkv[1]), heads(qkv[2]),
                                                     /*attn_mask=*/{}, /*dropout_p=*/0.0,
                                                     /*is_causal=*/true);
  torch::Tensor h = x + attn_proj_(y.transpose(1, 2).contiguous().view({B, T, C}));
  // MLP with GPT-2's tanh-approximated GELU.
  return h + mlp_proj_(F::gelu(c_fc_(ln_2_(h)), F::GELUFuncOptions().approximate("tanh")));
}

GptImpl::GptImpl(const GptOptions& o) : o_(o) {
  torch::manual_seed(o.seed);
  wte_ = register_module("wte", torch::nn::Embedding(o.vocab, o.d_model));
  wpe_ = register_module("wpe", torch::nn::Embedding(o.seq_len, o.d_model));
  {
    torch::NoGradGuard no_grad;
    torch::nn::init::normal_(wte_->weight, 0.0, 0.02);
    torch::nn::init::normal_(wpe_->weight, 0.0, 0.01);
  }
  for (int64_t l = 0; l < o.n_layer; ++l) {
    blocks_.push_back(register_module("h" + std::to_string(l), Block(o, l)));
  }
  ln_f_ = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.d_model})));
}

torch::Tensor GptImpl::forward(const torch::Tensor& idx) {
  const int64_t T = idx.size(1);
  TORCH_CHECK(T <= o_.seq_len, "sequence of ", T, " tokens is longer than the model's ",
              o_.seq_len);
  torch::Tensor pos =
      torch::arange(T, torch::TensorOptions().dtype(torch::kLong).device(idx.device()));
  torch::Tensor x = wte_(idx) + wpe_(pos);  // (B, T, C)
  for (size_t l = 0; l < blocks_.size(); ++l) {
    BlockImpl* b = blocks_[l].get();
    x = RunUnit(static_cast<int>(l), x, [this, b](const torch::Tensor& in) {
      return o_.activation_checkpointing && !units_recomputed() && is_training() &&
                     torch::GradMode::is_enabled()
                 ? CheckpointedBlock::apply(in, reinterpret_cast<int64_t>(b))
                 : b->forward(in);
    });
  }
  x = ln_f_(x);
  return torch::matmul(x, wte_->weight.t());  // tied output embedding: (B, T, V)
}

torch::Tensor GptImpl::loss(const torch::Tensor& idx, const torch::Tensor& targets) {
  torch::Tensor logits = forward(idx);
  return F::cross_entropy(logits.view({-1, logits.size(-1)}).to(torch::kFloat32),
                          targets.reshape({-1}));
}

std::vector<std::string> GptImpl::unit_prefixes() const {
  std::vector<std::string> out;
  for (int64_t l = 0; l < o_.n_layer; ++l) out.push_back("h" + std::to_string(l) + ".");
  return out;
}

int64_t GptImpl::parameter_count() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

double GptImpl::flops_per_token() const {
  const double n = static_cast<double>(parameter_count() - wpe_->weight.numel());
  return 6.0 * n + 12.0 * static_cast<double>(o_.n_layer * o_.d_model * o_.seq_len);
}

}  // namespace ds::engine
