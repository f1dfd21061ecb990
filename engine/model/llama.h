// Llama's architecture, from a Hugging Face folder (engine/config/hf_model.h): RMSNorm,
// rotary position embeddings (default, linear and llama3 scaling), grouped-query attention
// through scaled_dot_product_attention, SwiGLU MLPs, tied or untied output embeddings, optional
// q/k/v (Qwen2) or all attention biases. Parameters carry transformers' names
// ("model.layers.0.self_attn.q_proj.weight"), so a checkpoint's tensors are the folder's.
// Numerics follow transformers' LlamaForCausalLM (RMSNorm in fp32, rotary tables in fp32 then
// the activations' dtype).
//
// Built inside a DeferredInit scope, every parameter is a placeholder and InitialValues gives
// any element range: read from the folder's safetensors (converted to fp32), or, without
// weights there, drawn as transformers initialises (N(0, initializer_range), unit norms, zero
// biases) per parameter name (param_init.h). So ZeRO-3 ranks read only their partitions.
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

using LlamaOptions = HfModelOptions;

class LlamaLayerImpl : public torch::nn::Module {
 public:
  LlamaLayerImpl(const HfModelSpec& s, const std::string& prefix, const ParamMaker& make);
  // x (B, T, H); cos and sin (T, head_dim) in x's dtype.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

 private:
  const HfModelSpec* s_;
  Params input_layernorm_{nullptr}, post_attention_layernorm_{nullptr};
  Params q_proj_{nullptr}, k_proj_{nullptr}, v_proj_{nullptr}, o_proj_{nullptr};
  Params gate_proj_{nullptr}, up_proj_{nullptr}, down_proj_{nullptr};
};
TORCH_MODULE(LlamaLayer);

class LlamaImpl : public HfModel {
 public:
  explicit LlamaImpl(LlamaOptions o);
  ~LlamaImpl() override;

  torch::Tensor forward(const torch::Tensor& idx);  // (B, T) -> logits (B, T, V)
  torch::Tensor loss(const torch::Tensor& idx, const torch::Tensor& targets) override;
  double flops_per_token() const override;
  std::vector<std::string> unit_prefixes() const override;  // "model.layers.0.", ...
  torch::Tensor InitialValues(const std::string& name, int64_t begin, int64_t end) const override;

  // The rotary tables for positions [0, T): cos and sin (T, head_dim), fp32, as transformers
  // computes them.
  static std::pair<torch::Tensor, torch::Tensor> RotaryTables(const HfModelSpec& s, int64_t T,
                                                              const torch::Device& device);

 private:
  torch::Tensor Hidden(const torch::Tensor& idx);  // the final norm's output (B, T, H)

  Params embed_tokens_{nullptr}, norm_{nullptr};
  std::vector<LlamaLayer> layers_;
};
TORCH_MODULE(Llama);

}  // namespace ds::engine
