// BertForMaskedLM from a Hugging Face folder (engine/config/hf_model.h): word, position and
// token-type embeddings and their LayerNorm; post-LayerNorm encoder layers (self-attention over
// the whole sequence, keys equal to the padding token masked out as transformers'
// attention_mask does); the masked-LM head (dense, activation, LayerNorm, the decoder tied to
// the word embeddings, its own bias). Parameters carry transformers' names
// ("bert.encoder.layer.0.attention.self.query.weight"), so a checkpoint's tensors are the
// folder's and `dsckpt export --format hf` gives a folder AutoModelForMaskedLM loads.
//
// The objective is the masked-LM one: masked_lm() makes the trainer mask each batch
// (engine/data/masked_lm.h) and loss() is the cross-entropy over the chosen positions only.
// Every token has token type 0 (one segment). Dropout is not applied (the config's rates are
// reported at start). Deferred construction as for the other families (hf_weights.h).
// Thread safety: a module is used by one training thread.
#pragma once

#include <torch/nn/module.h>

#include <optional>
#include <string>
#include <vector>

#include "engine/config/hf_model.h"
#include "engine/model/gpt.h"
#include "engine/model/hf_weights.h"
#include "engine/model/model.h"

namespace ds::engine {

class BertLayerImpl : public torch::nn::Module {
 public:
  BertLayerImpl(const HfModelSpec& s, const std::string& prefix, const ParamMaker& make);
  // x (B, T, H); key_bias (B, 1, 1, T) in x's dtype: 0 where a key is attended to, the dtype's
  // lowest value where it is padding (undefined: no padding).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& key_bias);

 private:
  const HfModelSpec* s_;
  Params query_{nullptr}, key_{nullptr}, value_{nullptr}, attention_out_{nullptr};
  Params attention_norm_{nullptr}, intermediate_{nullptr}, out_{nullptr}, out_norm_{nullptr};
};
TORCH_MODULE(BertLayer);

class BertImpl : public HfModel {
 public:
  explicit BertImpl(HfModelOptions o);
  ~BertImpl() override;

  torch::Tensor forward(const torch::Tensor& idx);  // (B, T) -> logits (B, T, V)
  // targets: (B, T) labels, MaskedLm::kIgnore where a position is not predicted. The mean over
  // the predicted positions (0 when a batch has none).
  torch::Tensor loss(const torch::Tensor& idx, const torch::Tensor& targets) override;
  double flops_per_token() const override;
  std::vector<std::string> unit_prefixes() const override;  // "bert.encoder.layer.0.", ...
  torch::Tensor InitialValues(const std::string& name, int64_t begin, int64_t end) const override;
  std::optional<MaskedLm> masked_lm() const override;

 private:
  Params word_{nullptr}, position_{nullptr}, token_type_{nullptr}, embedding_norm_{nullptr};
  std::vector<BertLayer> layers_;
  Params transform_{nullptr}, transform_norm_{nullptr}, decoder_{nullptr};  // decoder_: untied
  torch::Tensor decoder_bias_;                                              // cls.predictions.bias
};
TORCH_MODULE(Bert);

}  // namespace ds::engine
