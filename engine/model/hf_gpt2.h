// GPT2LMHeadModel from a Hugging Face folder (engine/config/hf_model.h): transformers' names
// ("transformer.h.0.attn.c_attn.weight") and its Conv1D layout (weights stored (in, out)), so a
// folder's file loads as it is and `dsckpt export --format hf` gives one that
// `from_pretrained` loads. Numerics: GPT-2's (LayerNorm, tanh GELU, attention scaled by
// 1/sqrt(head_dim), tied head by default). The built-in GPT (gpt.h) is the same architecture
// under our own names and layout. Deferred construction as for the Llama family (hf_weights.h).
// Thread safety: a module is used by one training thread.
#pragma once

#include <torch/nn/module.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/config/hf_model.h"
#include "engine/model/gpt.h"
#include "engine/model/hf_weights.h"
#include "engine/model/model.h"

namespace ds::engine {

using HfGpt2Options = HfModelOptions;

class HfGpt2BlockImpl : public torch::nn::Module {
 public:
  HfGpt2BlockImpl(const HfModelSpec& s, const std::string& prefix, const ParamMaker& make);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  const HfModelSpec* s_;
  Params ln_1_{nullptr}, c_attn_{nullptr}, attn_proj_{nullptr};
  Params ln_2_{nullptr}, c_fc_{nullptr}, mlp_proj_{nullptr};
};
TORCH_MODULE(HfGpt2Block);

class HfGpt2Impl : public HfModel, public SplitModel {
 public:
  explicit HfGpt2Impl(HfGpt2Options o);
  ~HfGpt2Impl() override;

  torch::Tensor forward(const torch::Tensor& idx);  // (B, T) -> logits (B, T, V); the whole model
  torch::Tensor loss(const torch::Tensor& idx, const torch::Tensor& targets) override;
  double flops_per_token() const override;
  std::vector<std::string> unit_prefixes() const override;  // "transformer.h.0.", ...
  torch::Tensor InitialValues(const std::string& name, int64_t begin, int64_t end) const override;

  // SplitModel (split.h): pipeline stages only.
  torch::Tensor stage_forward(const torch::Tensor& in, const torch::Tensor& targets) override;
  const ModelPlace& place() const override { return o_.place; }
  ckpt::TpSplit TpSplitOf(const std::string& /*name*/) const override { return {}; }
  std::map<std::string, ckpt::TpSplit> tp_splits() const override { return {}; }
  std::string tied_embedding() const override;
  int64_t parameter_count() const override { return o_.spec.parameter_count(); }

 private:
  torch::Tensor Embed(const torch::Tensor& idx);
  torch::Tensor Blocks(torch::Tensor x);
  torch::Tensor Logits(const torch::Tensor& x);  // the last stage: final norm and head

  Params wte_{nullptr}, wpe_{nullptr}, ln_f_{nullptr};
  std::vector<HfGpt2Block> blocks_;
  int64_t first_block_ = 0;
};
TORCH_MODULE(HfGpt2);

}  // namespace ds::engine
