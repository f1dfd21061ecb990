#include "engine/model/llama.h"

#include <ATen/ops/linear.h>
#include <ATen/ops/rms_norm.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <torch/autograd.h>

#include <cmath>
#include <numbers>
#include <span>
#include <string_view>

#include "engine/model/param_init.h"

#if DS_CUDA_KERNELS
#include <c10/cuda/CUDAStream.h>

#include "engine/model/llama_kernels.h"
#endif

namespace ds::engine {
namespace {

// Activation checkpointing of one layer: run without keeping activations, again in backward.
struct CheckpointedLayer : public torch::autograd::Function<CheckpointedLayer> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x,
                               torch::Tensor cos, torch::Tensor sin, int64_t layer_ptr) {
    ctx->save_for_backward({x, cos, sin});
    ctx->saved_data["layer"] = layer_ptr;
    torch::NoGradGuard no_grad;
    return reinterpret_cast<LlamaLayerImpl*>(layer_ptr)->forward(x, cos, sin);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto* layer = reinterpret_cast<LlamaLayerImpl*>(ctx->saved_data["layer"].toInt());
    auto saved = ctx->get_saved_variables();
    torch::Tensor x = saved[0].detach().requires_grad_(true);
    torch::Tensor y;
    {
      torch::AutoGradMode enable(true);
      y = layer->forward(x, saved[1], saved[2]);
    }
    torch::autograd::backward({y}, {grad_out[0]});
    return {x.grad(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// transformers' LlamaRMSNorm (x / rms(x), times the weight), as one fused kernel on CUDA: it
// computes a bf16/fp16 input in fp32, applies the weight there and rounds once to the input's
// type, where transformers rounds the normalised value to bf16 before multiplying by the weight
// (so bf16 results differ from transformers' in the last bit; fp32 ones do not). The
// written-out form was six kernels and two fp32 copies; with the weight outside, two more
// kernels forward and a reduction backward.
torch::Tensor RmsNorm(const Params& n, const torch::Tensor& x, double eps) {
  return at::rms_norm(x, {x.size(-1)}, n->weight, eps);
}

torch::Tensor Linear(const Params& p, const torch::Tensor& x) {
  return at::linear(x, p->weight, p->bias);
}

// A row-parallel projection (split.h).
torch::Tensor RowLinear(const ModelPlace* place, const Params& p, const torch::Tensor& x) {
  return TpRowLinear(place, x, p->weight, p->bias);
}

// The parameters tensor parallelism cuts, by the end of their names: column-parallel ones by
// output rows (their biases with them), row-parallel ones by input columns.
struct SplitRule {
  const char* suffix;
  ckpt::TpSplit split;
};
constexpr SplitRule kSplitRules[] = {
    {"self_attn.q_proj.weight", {0, 1}}, {"self_attn.q_proj.bias", {0, 1}},
    {"self_attn.k_proj.weight", {0, 1}}, {"self_attn.k_proj.bias", {0, 1}},
    {"self_attn.v_proj.weight", {0, 1}}, {"self_attn.v_proj.bias", {0, 1}},
    {"self_attn.o_proj.weight", {1, 1}}, {"mlp.gate_proj.weight", {0, 1}},
    {"mlp.gate_proj.bias", {0, 1}},      {"mlp.up_proj.weight", {0, 1}},
    {"mlp.up_proj.bias", {0, 1}},        {"mlp.down_proj.weight", {1, 1}}};

torch::Tensor RotateHalf(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

#if DS_CUDA_KERNELS
// Whether our kernels (llama_kernels.h) take `x`: on a GPU, contiguous, fp32, bf16 or fp16.
bool KernelTakes(const torch::Tensor& x) {
  const auto t = x.scalar_type();
  return x.is_cuda() && x.is_contiguous() &&
         (t == torch::kFloat32 || t == torch::kBFloat16 || t == torch::kFloat16);
}

cuda::LogitsType KernelType(const torch::Tensor& x) {
  const auto t = x.scalar_type();
  return t == torch::kBFloat16  ? cuda::LogitsType::kBFloat16
         : t == torch::kFloat16 ? cuda::LogitsType::kFloat16
                                : cuda::LogitsType::kFloat32;
}

void* Stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// The rotary embedding through our kernel: one pass forward, one backward.
struct FusedRotary : public torch::autograd::Function<FusedRotary> {
  static void Launch(const torch::Tensor& x, const torch::Tensor& out, const torch::Tensor& cos,
                     const torch::Tensor& sin, bool backward) {
    const std::string err = cuda::RotaryEmbedding(
        KernelType(x), x.data_ptr(), out.data_ptr(), x.size(0) * x.size(1), x.size(2), x.size(3),
        x.size(1), cos.data_ptr<float>(), sin.data_ptr<float>(), backward, Stream());
    TORCH_CHECK(err.empty(), err);
  }
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x,
                               torch::Tensor cos, torch::Tensor sin) {
    ctx->save_for_backward({cos, sin});
    torch::Tensor out = torch::empty_like(x, torch::MemoryFormat::Contiguous);
    Launch(x, out, cos, sin, /*backward=*/false);
    return out;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const torch::Tensor g = grad_out[0].contiguous();
    torch::Tensor out = torch::empty_like(g);
    Launch(g, out, saved[0], saved[1], /*backward=*/true);
    return {out, torch::Tensor(), torch::Tensor()};
  }
};

// silu(gate) * up through our kernel: one pass forward (saving gate and up, where the written-out
// form also keeps silu(gate)), one backward for both gradients.
struct FusedSwiGlu : public torch::autograd::Function<FusedSwiGlu> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor gate,
                               torch::Tensor up) {
    ctx->save_for_backward({gate, up});
    torch::Tensor out = torch::empty_like(gate);
    const std::string err = cuda::SwiGlu(KernelType(gate), gate.data_ptr(), up.data_ptr(),
                                         out.data_ptr(), gate.numel(), Stream());
    TORCH_CHECK(err.empty(), err);
    return out;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const torch::Tensor g = grad_out[0].contiguous();
    torch::Tensor grad_gate = torch::empty_like(saved[0]), grad_up = torch::empty_like(saved[1]);
    const std::string err =
        cuda::SwiGluBackward(KernelType(g), saved[0].data_ptr(), saved[1].data_ptr(), g.data_ptr(),
                             grad_gate.data_ptr(), grad_up.data_ptr(), g.numel(), Stream());
    TORCH_CHECK(err.empty(), err);
    return {grad_gate, grad_up};
  }
};
#endif

}  // namespace

torch::Tensor ApplyRotary(const torch::Tensor& x, const torch::Tensor& cos,
                          const torch::Tensor& sin) {
#if DS_CUDA_KERNELS
  if (KernelTakes(x) && cos.is_contiguous() && sin.is_contiguous()) {
    return FusedRotary::apply(x, cos, sin);
  }
#endif
  // As transformers computes it: the tables in the activations' type, broadcast over heads.
  const torch::Tensor c = cos.to(x.scalar_type()).unsqueeze(1);
  const torch::Tensor s = sin.to(x.scalar_type()).unsqueeze(1);
  return x * c + RotateHalf(x) * s;
}

torch::Tensor ApplySwiGlu(const torch::Tensor& gate, const torch::Tensor& up) {
#if DS_CUDA_KERNELS
  if (KernelTakes(gate) && KernelTakes(up) && gate.sizes() == up.sizes() &&
      gate.scalar_type() == up.scalar_type()) {
    return FusedSwiGlu::apply(gate, up);
  }
#endif
  return torch::silu(gate) * up;
}

// ---- a decoder layer

LlamaLayerImpl::LlamaLayerImpl(const HfModelSpec& s, const ModelPlace* place,
                               const std::string& prefix, const ParamMaker& make)
    : s_(&s), place_(place), n_head_(s.n_head / place->tp), n_kv_head_(s.n_kv_head / place->tp) {
  const int64_t h = s.hidden, q = n_head_ * s.head_dim, kv = n_kv_head_ * s.head_dim;
  const int64_t inner = s.intermediate / place->tp;
  auto attn = HolderModule(*this, "self_attn");
  auto mlp = HolderModule(*this, "mlp");
  auto linear = [&](torch::nn::Module& parent, const std::string& group, const char* name,
                    int64_t out, int64_t in, bool bias) {
    const std::string base = prefix + group + "." + name;
    return parent.register_module(name,
                                  Params(make(base + ".weight", {out, in}),
                                         bias ? make(base + ".bias", {out}) : torch::Tensor()));
  };
  const bool qkv_bias = s.attention_bias || s.qkv_bias;
  q_proj_ = linear(*attn, "self_attn", "q_proj", q, h, qkv_bias);
  k_proj_ = linear(*attn, "self_attn", "k_proj", kv, h, qkv_bias);
  v_proj_ = linear(*attn, "self_attn", "v_proj", kv, h, qkv_bias);
  o_proj_ = linear(*attn, "self_attn", "o_proj", h, q, s.attention_bias);
  gate_proj_ = linear(*mlp, "mlp", "gate_proj", inner, h, s.mlp_bias);
  up_proj_ = linear(*mlp, "mlp", "up_proj", inner, h, s.mlp_bias);
  down_proj_ = linear(*mlp, "mlp", "down_proj", h, inner, s.mlp_bias);
  input_layernorm_ = register_module(
      "input_layernorm", Params(make(prefix + "input_layernorm.weight", {h}), torch::Tensor()));
  post_attention_layernorm_ = register_module(
      "post_attention_layernorm",
      Params(make(prefix + "post_attention_layernorm.weight", {h}), torch::Tensor()));
}

torch::Tensor LlamaLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                      const torch::Tensor& sin) {
  const HfModelSpec& s = *s_;
  const int64_t B = x.size(0), T = x.size(1), d = s.head_dim;
  const torch::Tensor n = TpColumnInput(place_, RmsNorm(input_layernorm_, x, s.rms_eps));
  auto project = [&](const Params& p, int64_t count) {
    return Linear(p, n).view({B, T, count, d});  // (B, T, heads, d)
  };
  // (B, heads, T, d) views for attention, q and k rotated first.
  torch::Tensor q = ApplyRotary(project(q_proj_, n_head_), cos, sin).transpose(1, 2);
  torch::Tensor k = ApplyRotary(project(k_proj_, n_kv_head_), cos, sin).transpose(1, 2);
  torch::Tensor v = project(v_proj_, n_kv_head_).transpose(1, 2);
  if (n_kv_head_ != n_head_) {  // grouped-query attention: each k/v head serves a group
    const int64_t group = n_head_ / n_kv_head_;
    k = k.repeat_interleave(group, 1);
    v = v.repeat_interleave(group, 1);
  }
  torch::Tensor y = at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0,
                                                     /*is_causal=*/true);
  torch::Tensor h = x + RowLinear(place_, o_proj_, y.transpose(1, 2).reshape({B, T, n_head_ * d}));
  const torch::Tensor m = TpColumnInput(place_, RmsNorm(post_attention_layernorm_, h, s.rms_eps));
  return h + RowLinear(place_, down_proj_, ApplySwiGlu(Linear(gate_proj_, m), Linear(up_proj_, m)));
}

// ---- the model

LlamaImpl::LlamaImpl(LlamaOptions o) : HfModel(std::move(o)) {
  const HfModelSpec& s = o_.spec;
  const ModelPlace& p = o_.place;
  TORCH_CHECK_VALUE(
      p.tp >= 1 && s.n_head % p.tp == 0 && s.n_kv_head % p.tp == 0 && s.intermediate % p.tp == 0 &&
          p.pp >= 1 && p.pp <= s.n_layer && p.stage >= 0 && p.stage < p.pp,
      s.architecture, " of ", s.n_layer, " layers, ", s.n_head, " heads, ", s.n_kv_head,
      " key/value heads and intermediate size ", s.intermediate, " cannot be split ", p.tp,
      "-way tensor-parallel over ", p.pp, " pipeline stages");
  TORCH_CHECK(p.tp == 1 || p.tp_all_reduce, "tensor parallelism needs tp_all_reduce");
  const ParamMaker make = [this](const std::string& name, std::vector<int64_t> shape) {
    return MakeParam(name, std::move(shape));
  };
  auto body = HolderModule(*this, "model");
  if (p.first_stage() || (p.last_stage() && s.tie_embeddings)) {
    embed_tokens_ = body->register_module(
        "embed_tokens",
        Params(make("model.embed_tokens.weight", {s.vocab, s.hidden}), torch::Tensor()));
  }
  auto layers = HolderModule(*body, "layers");
  const auto [first, last] = StageLayers(s.n_layer, p.pp, p.stage);
  first_layer_ = first;
  for (int64_t l = first; l < last; ++l) {
    const std::string name = std::to_string(l);
    layers_.push_back(layers->register_module(
        name, LlamaLayer(s, &o_.place, "model.layers." + name + ".", make)));
  }
  if (p.last_stage()) {
    norm_ = body->register_module("norm",
                                  Params(make("model.norm.weight", {s.hidden}), torch::Tensor()));
  }
  MakeUntiedHead(make);
}

LlamaImpl::~LlamaImpl() = default;

torch::Tensor LlamaImpl::InitialValues(const std::string& name, int64_t begin, int64_t end) const {
  // transformers' _init_weights where the folder has no weights.
  const InitSpec init = name.ends_with(".bias") ? InitSpec::Constant(0)
                        : name.ends_with("norm.weight")
                            ? InitSpec::Constant(1)
                            : InitSpec::Normal(0, o_.spec.initializer_range);
  return Values(name, begin, end, init);
}

std::pair<torch::Tensor, torch::Tensor> LlamaImpl::RotaryTables(const HfModelSpec& s, int64_t T,
                                                                const torch::Device& device) {
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat).device(device);
  const int64_t d = s.head_dim;
  // inv_freq as transformers computes it: in fp32, base ** (2i / d).
  torch::Tensor exponent =
      torch::arange(0, d, 2, torch::TensorOptions().dtype(torch::kLong).device(device))
          .to(torch::kFloat) /
      static_cast<double>(d);
  torch::Tensor inv_freq = 1.0 / torch::pow(s.rope.theta, exponent);
  const HfRope& r = s.rope;
  if (r.type == "linear") {
    inv_freq = inv_freq / r.factor;
  } else if (r.type == "llama3") {
    const double old_len = static_cast<double>(r.original_max_positions);
    const double low_wavelen = old_len / r.low_freq_factor;
    const double high_wavelen = old_len / r.high_freq_factor;
    const torch::Tensor wavelen = 2 * std::numbers::pi / inv_freq;
    torch::Tensor scaled = torch::where(wavelen > low_wavelen, inv_freq / r.factor, inv_freq);
    const torch::Tensor smooth =
        (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
    const torch::Tensor smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled;
    const torch::Tensor medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    inv_freq = torch::where(medium, smoothed, scaled);
  }
  const torch::Tensor positions = torch::arange(T, f32);
  const torch::Tensor freqs = torch::outer(positions, inv_freq);  // (T, d / 2)
  const torch::Tensor emb = torch::cat({freqs, freqs}, -1);
  return {emb.cos(), emb.sin()};
}

torch::Tensor LlamaImpl::Layers(torch::Tensor x) {
  const HfModelSpec& s = o_.spec;
  const int64_t T = x.size(1);
  TORCH_CHECK_VALUE(T <= s.max_positions, "sequence of ", T,
                    " tokens is longer than the model's max_position_embeddings ", s.max_positions);
  const auto [cos, sin] =
      RotaryTables(s, T, x.device());  // fp32: ApplyRotary converts where it must
  for (size_t l = 0; l < layers_.size(); ++l) {
    LlamaLayerImpl* layer = layers_[l].get();
    // By value: stage 3 keeps the function to run the layer again in the backward pass.
    x = RunUnit(static_cast<int>(l), x, [this, layer, cos, sin](const torch::Tensor& in) {
      return o_.activation_checkpointing && !units_recomputed() && is_training() &&
                     torch::GradMode::is_enabled()
                 ? CheckpointedLayer::apply(in, cos, sin, reinterpret_cast<int64_t>(layer))
                 : layer->forward(in, cos, sin);
    });
  }
  return x;
}

torch::Tensor LlamaImpl::Logits(const torch::Tensor& x) {
  return at::linear(RmsNorm(norm_, x, o_.spec.rms_eps),
                    Head(embed_tokens_ ? embed_tokens_->weight : torch::Tensor()));
}

torch::Tensor LlamaImpl::forward(const torch::Tensor& idx) {
  TORCH_CHECK(o_.place.pp == 1, "forward() runs the whole model: use stage_forward with stages");
  return Logits(Layers(at::embedding(embed_tokens_->weight, idx)));
}

torch::Tensor LlamaImpl::loss(const torch::Tensor& idx, const torch::Tensor& targets) {
  return stage_forward(idx, targets);
}

torch::Tensor LlamaImpl::stage_forward(const torch::Tensor& in, const torch::Tensor& targets) {
  torch::Tensor x = Layers(o_.place.first_stage() ? at::embedding(embed_tokens_->weight, in) : in);
  if (!o_.place.last_stage()) return x;
  const torch::Tensor logits = Logits(x);
  return CrossEntropyInFp32(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
}

ckpt::TpSplit LlamaImpl::TpSplitOf(const std::string& name) const {
  for (const SplitRule& r : kSplitRules) {
    if (name.ends_with(r.suffix)) return r.split;
  }
  return {};
}

std::map<std::string, ckpt::TpSplit> LlamaImpl::tp_splits() const {
  const HfModelSpec& s = o_.spec;
  std::map<std::string, ckpt::TpSplit> out;
  for (int64_t l = 0; l < s.n_layer; ++l) {
    for (const SplitRule& r : kSplitRules) {
      const std::string_view suffix = r.suffix;
      if (suffix.ends_with(".bias")) {
        const bool attn = suffix.starts_with("self_attn.");
        if (attn ? !(s.attention_bias || s.qkv_bias) : !s.mlp_bias) continue;
      }
      out["model.layers." + std::to_string(l) + "." + r.suffix] = r.split;
    }
  }
  return out;
}

std::string LlamaImpl::tied_embedding() const {
  return o_.spec.tie_embeddings ? "model.embed_tokens.weight" : "";
}

double LlamaImpl::flops_per_token() const {
  const HfModelSpec& s = o_.spec;
  const double embeddings = static_cast<double>(s.vocab * s.hidden);
  const double n = static_cast<double>(s.parameter_count()) - embeddings;
  // 6N over the non-embedding weights and the head, plus attention's scores and values.
  return 6.0 * (n + (s.tie_embeddings ? embeddings : 0.0)) +
         12.0 * static_cast<double>(s.n_layer * s.n_head * s.head_dim * o_.seq_len);
}

std::vector<std::string> LlamaImpl::unit_prefixes() const {
  std::vector<std::string> out;
  for (size_t l = 0; l < layers_.size(); ++l)
    out.push_back("model.layers." + std::to_string(first_layer_ + static_cast<int64_t>(l)) + ".");
  return out;
}

}  // namespace ds::engine
