#include "engine/model/hf_gpt2.h"

#include <ATen/ops/addmm.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <torch/autograd.h>
#include <torch/nn/functional/activation.h>

#include <cmath>

#include "engine/model/internal/checkpointed.h"
#include "engine/model/param_init.h"

namespace ds::engine {
namespace {

namespace F = torch::nn::functional;

// transformers' Conv1D: x (.., in) @ W (in, out) + b.
torch::Tensor Conv1D(const Params& p, const torch::Tensor& x) {
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = p->weight.size(1);
  return at::addmm(p->bias, x.reshape({-1, x.size(-1)}), p->weight).view(shape);
}

}  // namespace

HfGpt2BlockImpl::HfGpt2BlockImpl(const HfModelSpec& s, const std::string& prefix,
                                 const ParamMaker& make)
    : s_(&s) {
  const int64_t h = s.hidden, inner = s.intermediate;
  auto params = [&](torch::nn::Module& parent, const std::string& path, const char* name,
                    std::vector<int64_t> weight, int64_t bias) {
    const std::string base = prefix + path + name;
    return parent.register_module(
        name, Params(make(base + ".weight", std::move(weight)), make(base + ".bias", {bias})));
  };
  auto attn = HolderModule(*this, "attn");
  auto mlp = HolderModule(*this, "mlp");
  ln_1_ = params(*this, "", "ln_1", {h}, h);
  c_attn_ = params(*attn, "attn.", "c_attn", {h, 3 * h}, 3 * h);
  attn_proj_ = params(*attn, "attn.", "c_proj", {h, h}, h);
  ln_2_ = params(*this, "", "ln_2", {h}, h);
  c_fc_ = params(*mlp, "mlp.", "c_fc", {h, inner}, inner);
  mlp_proj_ = params(*mlp, "mlp.", "c_proj", {inner, h}, h);
}

torch::Tensor HfGpt2BlockImpl::forward(const torch::Tensor& x) {
  const HfModelSpec& s = *s_;
  const int64_t B = x.size(0), T = x.size(1), H = s.hidden, d = s.head_dim;
  auto norm = [&](const Params& ln, const torch::Tensor& t) {
    return at::layer_norm(t, {H}, ln->weight, ln->bias, s.layer_norm_eps);
  };
  auto qkv = Conv1D(c_attn_, norm(ln_1_, x)).split(H, 2);
  auto heads = [&](const torch::Tensor& t) { return t.view({B, T, s.n_head, d}).transpose(1, 2); };
  torch::Tensor y = at::scaled_dot_product_attention(heads(qkv[0]), heads(qkv[1]), heads(qkv[2]),
                                                     /*attn_mask=*/{}, /*dropout_p=*/0.0,
                                                     /*is_causal=*/true);
  torch::Tensor h = x + Conv1D(attn_proj_, y.transpose(1, 2).reshape({B, T, H}));
  return h + Conv1D(mlp_proj_, F::gelu(Conv1D(c_fc_, norm(ln_2_, h)),
                                       F::GELUFuncOptions().approximate("tanh")));
}

HfGpt2Impl::HfGpt2Impl(HfGpt2Options o) : HfModel(std::move(o)) {
  const HfModelSpec& s = o_.spec;
  const ModelPlace& p = o_.place;
  TORCH_CHECK_VALUE(p.tp == 1 && p.pp >= 1 && p.pp <= s.n_layer && p.stage >= 0 && p.stage < p.pp,
                    s.architecture, " of ", s.n_layer, " layers cannot be split ", p.tp,
                    "-way tensor-parallel over ", p.pp,
                    " pipeline stages (it is split into pipeline stages only)");
  const ParamMaker make = [this](const std::string& name, std::vector<int64_t> shape) {
    return MakeParam(name, std::move(shape));
  };
  auto body = HolderModule(*this, "transformer");
  if (p.first_stage() || (p.last_stage() && s.tie_embeddings)) {
    wte_ = body->register_module(
        "wte", Params(make("transformer.wte.weight", {s.vocab, s.hidden}), torch::Tensor()));
  }
  if (p.first_stage()) {
    wpe_ = body->register_module(
        "wpe",
        Params(make("transformer.wpe.weight", {s.max_positions, s.hidden}), torch::Tensor()));
  }
  auto h = HolderModule(*body, "h");
  const auto [first, last] = StageLayers(s.n_layer, p.pp, p.stage);
  first_block_ = first;
  for (int64_t l = first; l < last; ++l) {
    const std::string name = std::to_string(l);
    blocks_.push_back(
        h->register_module(name, HfGpt2Block(s, "transformer.h." + name + ".", make)));
  }
  if (p.last_stage()) {
    ln_f_ = body->register_module("ln_f", Params(make("transformer.ln_f.weight", {s.hidden}),
                                                 make("transformer.ln_f.bias", {s.hidden})));
  }
  MakeUntiedHead(make);
}

HfGpt2Impl::~HfGpt2Impl() = default;

torch::Tensor HfGpt2Impl::InitialValues(const std::string& name, int64_t begin, int64_t end) const {
  // transformers' GPT-2 initialisation where the folder has no weights.
  const double std = o_.spec.initializer_range;
  const bool norm =
      name.find(".ln_") != std::string::npos || name.rfind("transformer.ln_f.", 0) == 0;
  const InitSpec init =
      name.ends_with(".bias") ? InitSpec::Constant(0)
      : norm                  ? InitSpec::Constant(1)
      : name.ends_with("c_proj.weight")
          ? InitSpec::Normal(0, std / std::sqrt(2.0 * static_cast<double>(o_.spec.n_layer)))
          : InitSpec::Normal(0, std);
  return Values(name, begin, end, init);
}

torch::Tensor HfGpt2Impl::Embed(const torch::Tensor& idx) {
  const HfModelSpec& s = o_.spec;
  const int64_t T = idx.size(1);
  TORCH_CHECK_VALUE(T <= s.max_positions, "sequence of ", T,
                    " tokens is longer than the model's n_positions ", s.max_positions);
  torch::Tensor pos =
      torch::arange(T, torch::TensorOptions().dtype(torch::kLong).device(idx.device()));
  return at::embedding(wte_->weight, idx) + at::embedding(wpe_->weight, pos);
}

torch::Tensor HfGpt2Impl::Blocks(torch::Tensor x) {
  for (size_t l = 0; l < blocks_.size(); ++l) {
    HfGpt2BlockImpl* b = blocks_[l].get();
    x = RunUnit(static_cast<int>(l), x, [this, b](const torch::Tensor& in) {
      return o_.activation_checkpointing && !units_recomputed() && is_training() &&
                     torch::GradMode::is_enabled()
                 ? internal::CheckpointedBlock<HfGpt2BlockImpl>::apply(in,
                                                                       reinterpret_cast<int64_t>(b))
                 : b->forward(in);
    });
  }
  return x;
}

torch::Tensor HfGpt2Impl::Logits(const torch::Tensor& x) {
  const HfModelSpec& s = o_.spec;
  const torch::Tensor n =
      at::layer_norm(x, {s.hidden}, ln_f_->weight, ln_f_->bias, s.layer_norm_eps);
  return torch::matmul(n, Head(wte_ ? wte_->weight : torch::Tensor()).t());
}

torch::Tensor HfGpt2Impl::forward(const torch::Tensor& idx) {
  TORCH_CHECK(o_.place.pp == 1, "forward() runs the whole model: use stage_forward with stages");
  return Logits(Blocks(Embed(idx)));
}

torch::Tensor HfGpt2Impl::loss(const torch::Tensor& idx, const torch::Tensor& targets) {
  return stage_forward(idx, targets);
}

torch::Tensor HfGpt2Impl::stage_forward(const torch::Tensor& in, const torch::Tensor& targets) {
  torch::Tensor x = Blocks(o_.place.first_stage() ? Embed(in) : in);
  if (!o_.place.last_stage()) return x;
  const torch::Tensor logits = Logits(x);
  return CrossEntropyInFp32(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
}

std::string HfGpt2Impl::tied_embedding() const {
  return o_.spec.tie_embeddings ? "transformer.wte.weight" : "";
}

double HfGpt2Impl::flops_per_token() const {
  const HfModelSpec& s = o_.spec;
  const double n = static_cast<double>(s.parameter_count() - s.max_positions * s.hidden);
  return 6.0 * n + 12.0 * static_cast<double>(s.n_layer * s.hidden * o_.seq_len);
}

std::vector<std::string> HfGpt2Impl::unit_prefixes() const {
  std::vector<std::string> out;
  for (size_t l = 0; l < blocks_.size(); ++l)
    out.push_back("transformer.h." + std::to_string(first_block_ + static_cast<int64_t>(l)) + ".");
  return out;
}

}  // namespace ds::engine
