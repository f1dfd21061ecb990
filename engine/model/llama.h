// Llama's architecture, from a Hugging Face folder (engine/config/hf_model.h): RMSNorm,
// rotary position embeddings (default, linear and llama3 scaling), grouped-query attention
// through scaled_dot_product_attention, SwiGLU MLPs, tied or untied output embeddings, optional
// q/k/v (Qwen2) or all attention biases. Parameters carry transformers' names
// ("model.layers.0.self_attn.q_proj.weight"), so a checkpoint's tensors are the folder's.
// Numerics follow transformers' LlamaForCausalLM (RMSNorm in fp32, rotary tables in fp32), except
// that in bf16/fp16 on a GPU the RMSNorm's weight, the rotary embedding and the SwiGLU gate are
// computed in fp32 and rounded once (fused kernels; transformers rounds between the steps).
//
// Built inside a DeferredInit scope, every parameter is a placeholder and InitialValues gives
// any element range: read from the folder's safetensors (converted to fp32), or, without
// weights there, drawn as transformers initialises (N(0, initializer_range), unit norms, zero
// biases) per parameter name (param_init.h). So ZeRO-3 ranks read only their partitions.
//
// Split across ranks (split.h): tensor parallelism gives each rank n_head / tp query heads and
// n_kv_head / tp key/value heads (q_proj, k_proj and v_proj column-parallel, so grouped-query
// attention stays within a rank), and intermediate / tp of the MLP (gate_proj and up_proj
// column-parallel, down_proj and o_proj row-parallel); pipeline stages hold runs of layers.
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

// x (B, T, heads, head_dim) * cos + rotate_half(x) * sin, with the fp32 rotary tables cos and sin
// (T, head_dim; LlamaImpl::RotaryTables): on a GPU through our kernel (llama_kernels.h), else as
// transformers writes it, the tables in x's type.
torch::Tensor ApplyRotary(const torch::Tensor& x, const torch::Tensor& cos,
                          const torch::Tensor& sin);
// silu(gate) * up (the SwiGLU MLP's gate): on a GPU through our kernel (llama_kernels.h).
torch::Tensor ApplySwiGlu(const torch::Tensor& gate, const torch::Tensor& up);

class LlamaLayerImpl : public torch::nn::Module {
 public:
  LlamaLayerImpl(const HfModelSpec& s, const ModelPlace* place, const std::string& prefix,
                 const ParamMaker& make);
  // x (B, T, H); cos and sin (T, head_dim) fp32 (RotaryTables).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

 private:
  const HfModelSpec* s_;
  const ModelPlace* place_;
  int64_t n_head_, n_kv_head_;  // on this rank
  Params input_layernorm_{nullptr}, post_attention_layernorm_{nullptr};
  Params q_proj_{nullptr}, k_proj_{nullptr}, v_proj_{nullptr}, o_proj_{nullptr};
  Params gate_proj_{nullptr}, up_proj_{nullptr}, down_proj_{nullptr};
};
TORCH_MODULE(LlamaLayer);

class LlamaImpl : public HfModel, public SplitModel {
 public:
  explicit LlamaImpl(LlamaOptions o);
  ~LlamaImpl() override;

  torch::Tensor forward(const torch::Tensor& idx);  // (B, T) -> logits (B, T, V); the whole model
  torch::Tensor loss(const torch::Tensor& idx, const torch::Tensor& targets) override;
  double flops_per_token() const override;
  std::vector<std::string> unit_prefixes() const override;  // "model.layers.0.", ...
  torch::Tensor InitialValues(const std::string& name, int64_t begin, int64_t end) const override;

  // SplitModel (split.h).
  torch::Tensor stage_forward(const torch::Tensor& in, const torch::Tensor& targets) override;
  const ModelPlace& place() const override { return o_.place; }
  ckpt::TpSplit TpSplitOf(const std::string& name) const override;
  std::map<std::string, ckpt::TpSplit> tp_splits() const override;
  std::string tied_embedding() const override;
  int64_t parameter_count() const override { return o_.spec.parameter_count(); }

  // The rotary tables for positions [0, T): cos and sin (T, head_dim), fp32, as transformers
  // computes them.
  static std::pair<torch::Tensor, torch::Tensor> RotaryTables(const HfModelSpec& s, int64_t T,
                                                              const torch::Device& device);

 private:
  // This stage's layers over x (B, T, H): the embeddings' output on the first stage.
  torch::Tensor Layers(torch::Tensor x);
  torch::Tensor Logits(const torch::Tensor& x);  // the last stage: final norm and head

  Params embed_tokens_{nullptr}, norm_{nullptr};
  std::vector<LlamaLayer> layers_;
  int64_t first_layer_ = 0;
};
TORCH_MODULE(Llama);

}  // namespace ds::engine
