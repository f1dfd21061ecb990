// The built-in GPT: GPT-2's architecture (pre-LayerNorm blocks, GELU MLP, learned positions,
// tied input/output embeddings), attention through scaled_dot_product_attention (flash
// attention on the GPU), weights initialised as GPT-2 does, and optional activation
// checkpointing per block. Every op runs on any device.
// Thread safety: a module is used by one training thread.
#pragma once

#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <cstdint>
#include <string>

#include "engine/model/model.h"

namespace ds::engine {

struct GptOptions {
  int64_t n_layer = 4;
  int64_t n_head = 4;
  int64_t d_model = 128;
  int64_t seq_len = 128;  // the longest sequence (position embeddings)
  int64_t vocab = 256;
  bool activation_checkpointing = false;
  uint64_t seed = 1234;  // initialisation
};

class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const GptOptions& o, int64_t layer);
  torch::Tensor forward(const torch::Tensor& x);  // (B, T, C) -> (B, T, C)

 private:
  int64_t n_head_;
  torch::nn::LayerNorm ln_1_{nullptr}, ln_2_{nullptr};
  torch::nn::Linear c_attn_{nullptr}, attn_proj_{nullptr}, c_fc_{nullptr}, mlp_proj_{nullptr};
};
TORCH_MODULE(Block);

class GptImpl : public LanguageModel {
 public:
  explicit GptImpl(const GptOptions& o);

  // idx (B, T) int64 token ids -> logits (B, T, V) in the parameters' dtype.
  torch::Tensor forward(const torch::Tensor& idx);
  // The mean cross-entropy of the next-token prediction, computed in fp32.
  torch::Tensor loss(const torch::Tensor& idx, const torch::Tensor& targets) override;

  const GptOptions& options() const { return o_; }
  // Parameters in the model: for the built-in GPT this matches ModelParameterCount().
  int64_t parameter_count() const;
  // Training FLOPs per token (6N plus attention's 12 * L * C * T), for MFU.
  double flops_per_token() const override;
  std::vector<std::string> unit_prefixes() const override;  // the blocks: "h0.", "h1.", ...

 private:
  GptOptions o_;
  torch::nn::Embedding wte_{nullptr}, wpe_{nullptr};
  std::vector<Block> blocks_;
  torch::nn::LayerNorm ln_f_{nullptr};
};
TORCH_MODULE(Gpt);

}  // namespace ds::engine
