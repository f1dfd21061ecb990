#include "engine/model/bert.h"

#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <torch/autograd.h>
#include <torch/nn/functional/activation.h>

#include <limits>

#include "engine/model/param_init.h"

namespace ds::engine {
namespace {

namespace F = torch::nn::functional;

// Activation checkpointing of one layer: run without keeping activations, again in backward.
struct CheckpointedLayer : public torch::autograd::Function<CheckpointedLayer> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x,
                               torch::Tensor key_bias, int64_t layer_ptr) {
    ctx->save_for_backward({x, key_bias});
    ctx->saved_data["layer"] = layer_ptr;
    torch::NoGradGuard no_grad;
    return reinterpret_cast<BertLayerImpl*>(layer_ptr)->forward(x, key_bias);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto* layer = reinterpret_cast<BertLayerImpl*>(ctx->saved_data["layer"].toInt());
    auto saved = ctx->get_saved_variables();
    torch::Tensor x = saved[0].detach().requires_grad_(true);
    torch::Tensor y;
    {
      torch::AutoGradMode enable(true);
      y = layer->forward(x, saved[1]);
    }
    torch::autograd::backward({y}, {grad_out[0]});
    return {x.grad(), torch::Tensor(), torch::Tensor()};
  }
};

torch::Tensor Linear(const Params& p, const torch::Tensor& x) {
  return at::linear(x, p->weight, p->bias);
}

torch::Tensor Norm(const Params& p, const torch::Tensor& x, double eps) {
  return at::layer_norm(x, {x.size(-1)}, p->weight, p->bias, eps);
}

// transformers' ACT2FN: "gelu" is the exact (erf) GELU, "gelu_new" the tanh one.
torch::Tensor Activation(const std::string& act, const torch::Tensor& x) {
  return act == "gelu_new" ? F::gelu(x, F::GELUFuncOptions().approximate("tanh")) : F::gelu(x);
}

// torch.finfo(dtype).min, which transformers puts where a key is padding.
double Lowest(torch::ScalarType t) {
  switch (t) {
    case torch::kHalf: return static_cast<double>(std::numeric_limits<c10::Half>::lowest());
    case torch::kBFloat16: return static_cast<double>(std::numeric_limits<c10::BFloat16>::lowest());
    case torch::kDouble: return std::numeric_limits<double>::lowest();
    default: return static_cast<double>(std::numeric_limits<float>::lowest());
  }
}

}  // namespace

BertLayerImpl::BertLayerImpl(const HfModelSpec& s, const std::string& prefix,
                             const ParamMaker& make)
    : s_(&s) {
  const int64_t h = s.hidden, inner = s.intermediate;
  auto params = [&](torch::nn::Module& parent, const std::string& path, const char* name,
                    std::vector<int64_t> weight) {
    const std::string base = prefix + path + name;
    const int64_t bias = weight.front();
    return parent.register_module(
        name, Params(make(base + ".weight", std::move(weight)), make(base + ".bias", {bias})));
  };
  auto attention = HolderModule(*this, "attention");
  auto self = HolderModule(*attention, "self");
  auto attention_output = HolderModule(*attention, "output");
  auto intermediate = HolderModule(*this, "intermediate");
  auto output = HolderModule(*this, "output");
  query_ = params(*self, "attention.self.", "query", {h, h});
  key_ = params(*self, "attention.self.", "key", {h, h});
  value_ = params(*self, "attention.self.", "value", {h, h});
  attention_out_ = params(*attention_output, "attention.output.", "dense", {h, h});
  attention_norm_ = params(*attention_output, "attention.output.", "LayerNorm", {h});
  intermediate_ = params(*intermediate, "intermediate.", "dense", {inner, h});
  out_ = params(*output, "output.", "dense", {h, inner});
  out_norm_ = params(*output, "output.", "LayerNorm", {h});
}

torch::Tensor BertLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& key_bias) {
  const HfModelSpec& s = *s_;
  const int64_t B = x.size(0), T = x.size(1), H = s.hidden;
  auto heads = [&](const torch::Tensor& t) {
    return t.view({B, T, s.n_head, s.head_dim}).transpose(1, 2);  // (B, heads, T, d)
  };
  const torch::Tensor y = at::scaled_dot_product_attention(
      heads(Linear(query_, x)), heads(Linear(key_, x)), heads(Linear(value_, x)), key_bias,
      /*dropout_p=*/0.0, /*is_causal=*/false);
  const torch::Tensor a =
      Norm(attention_norm_, x + Linear(attention_out_, y.transpose(1, 2).reshape({B, T, H})),
           s.layer_norm_eps);
  return Norm(out_norm_, a + Linear(out_, Activation(s.hidden_act, Linear(intermediate_, a))),
              s.layer_norm_eps);
}

// ---- the model

BertImpl::BertImpl(HfModelOptions o) : HfModel(std::move(o)) {
  const HfModelSpec& s = o_.spec;
  const int64_t h = s.hidden;
  const ParamMaker make = [this](const std::string& name, std::vector<int64_t> shape) {
    return MakeParam(name, std::move(shape));
  };
  auto bert = HolderModule(*this, "bert");
  auto embeddings = HolderModule(*bert, "embeddings");
  auto weight_only = [&](torch::nn::Module& parent, const char* name, const std::string& full,
                         std::vector<int64_t> shape) {
    return parent.register_module(name, Params(make(full, std::move(shape)), torch::Tensor()));
  };
  word_ = weight_only(*embeddings, "word_embeddings", "bert.embeddings.word_embeddings.weight",
                      {s.vocab, h});
  position_ = weight_only(*embeddings, "position_embeddings",
                          "bert.embeddings.position_embeddings.weight", {s.max_positions, h});
  token_type_ = weight_only(*embeddings, "token_type_embeddings",
                            "bert.embeddings.token_type_embeddings.weight", {s.type_vocab, h});
  embedding_norm_ =
      embeddings->register_module("LayerNorm", Params(make("bert.embeddings.LayerNorm.weight", {h}),
                                                      make("bert.embeddings.LayerNorm.bias", {h})));
  auto layers = HolderModule(*HolderModule(*bert, "encoder"), "layer");
  for (int64_t l = 0; l < s.n_layer; ++l) {
    const std::string name = std::to_string(l);
    layers_.push_back(
        layers->register_module(name, BertLayer(s, "bert.encoder.layer." + name + ".", make)));
  }
  auto predictions = HolderModule(*HolderModule(*this, "cls"), "predictions");
  auto transform = HolderModule(*predictions, "transform");
  transform_ = transform->register_module(
      "dense", Params(make("cls.predictions.transform.dense.weight", {h, h}),
                      make("cls.predictions.transform.dense.bias", {h})));
  transform_norm_ = transform->register_module(
      "LayerNorm", Params(make("cls.predictions.transform.LayerNorm.weight", {h}),
                          make("cls.predictions.transform.LayerNorm.bias", {h})));
  // The decoder: the word embeddings (tied, transformers' default) or its own weight, and a
  // bias of its own stored as cls.predictions.bias.
  if (!s.tie_embeddings) {
    decoder_ = predictions->register_module(
        "decoder", Params(make("cls.predictions.decoder.weight", {s.vocab, h}), torch::Tensor()));
  }
  decoder_bias_ = predictions->register_parameter("bias", make("cls.predictions.bias", {s.vocab}));
}

BertImpl::~BertImpl() = default;

torch::Tensor BertImpl::InitialValues(const std::string& name, int64_t begin, int64_t end) const {
  // transformers' BERT initialisation where the folder has no weights (its zeroed padding row
  // of the word embeddings aside).
  const InitSpec init = name.ends_with(".bias") ? InitSpec::Constant(0)
                        : name.ends_with("LayerNorm.weight")
                            ? InitSpec::Constant(1)
                            : InitSpec::Normal(0, o_.spec.initializer_range);
  return Values(name, begin, end, init);
}

torch::Tensor BertImpl::forward(const torch::Tensor& idx) {
  const HfModelSpec& s = o_.spec;
  const int64_t B = idx.size(0), T = idx.size(1);
  TORCH_CHECK_VALUE(T <= s.max_positions, "sequence of ", T,
                    " tokens is longer than the model's max_position_embeddings ", s.max_positions);
  const torch::Tensor positions =
      torch::arange(T, torch::TensorOptions().dtype(torch::kLong).device(idx.device()));
  // The padding row's embedding gets no gradient, as nn.Embedding(padding_idx=...) does.
  torch::Tensor x = at::embedding(word_->weight, idx, s.pad_token_id) +
                    at::embedding(position_->weight, positions) + token_type_->weight[0];
  x = Norm(embedding_norm_, x, s.layer_norm_eps);
  torch::Tensor key_bias;  // transformers' extended attention mask: 0, or the dtype's lowest
  if (s.pad_token_id >= 0) {
    key_bias = torch::zeros({B, 1, 1, T}, x.options())
                   .masked_fill(idx.eq(s.pad_token_id).view({B, 1, 1, T}), Lowest(x.scalar_type()));
  }
  for (size_t l = 0; l < layers_.size(); ++l) {
    BertLayerImpl* layer = layers_[l].get();
    // By value: stage 3 keeps the function to run the layer again in the backward pass.
    x = RunUnit(static_cast<int>(l), x, [this, layer, key_bias](const torch::Tensor& in) {
      return o_.activation_checkpointing && !units_recomputed() && is_training() &&
                     torch::GradMode::is_enabled()
                 ? CheckpointedLayer::apply(in, key_bias, reinterpret_cast<int64_t>(layer))
                 : layer->forward(in, key_bias);
    });
  }
  const torch::Tensor h =
      Norm(transform_norm_, Activation(s.hidden_act, Linear(transform_, x)), s.layer_norm_eps);
  const torch::Tensor& decoder = s.tie_embeddings ? word_->weight : decoder_->weight;
  return at::linear(h, decoder, decoder_bias_);
}

torch::Tensor BertImpl::loss(const torch::Tensor& idx, const torch::Tensor& targets) {
  const torch::Tensor logits = forward(idx);
  const torch::Tensor flat = targets.reshape({-1});
  const torch::Tensor sum =
      at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}).to(torch::kFloat), flat, {},
                             at::Reduction::Sum, MaskedLm::kIgnore);
  return sum / flat.ne(MaskedLm::kIgnore).sum().clamp_min(1).to(torch::kFloat);
}

double BertImpl::flops_per_token() const {
  const HfModelSpec& s = o_.spec;
  const double lookups = static_cast<double>((s.max_positions + s.type_vocab) * s.hidden);
  // 6N over the weights that multiply (the tied decoder counted once, through the embedding),
  // plus attention's scores and values over the whole sequence.
  return 6.0 * (static_cast<double>(s.parameter_count()) - lookups) +
         12.0 * static_cast<double>(s.n_layer * s.hidden * o_.seq_len);
}

std::vector<std::string> BertImpl::unit_prefixes() const {
  std::vector<std::string> out;
  for (size_t l = 0; l < layers_.size(); ++l)
    out.push_back("bert.encoder.layer." + std::to_string(l) + ".");
  return out;
}

std::optional<MaskedLm> BertImpl::masked_lm() const {
  const HfModelSpec& s = o_.spec;
  MaskedLm m;
  m.mask_token_id = s.mask_token_id;
  m.vocab = s.vocab;
  m.never_masked = s.special_token_ids;
  m.source = s.tokenizer_file.empty() ? s.dir + " (no tokenizer.json)" : s.tokenizer_file;
  return m;
}

}  // namespace ds::engine
