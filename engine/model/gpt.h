// The built-in GPT: GPT-2's architecture (pre-LayerNorm blocks, GELU MLP, learned positions,
// tied input/output embeddings), attention through scaled_dot_product_attention (flash
// attention on the GPU), weights initialised as GPT-2 does, and optional activation
// checkpointing per block. Every op runs on any device.
//
// Split across ranks (GptPlace), Megatron-style: with tensor parallelism each rank holds
// n_head / tp attention heads (the rows of q, k and v for them: a column-parallel c_attn), a
// column-parallel c_fc and row-parallel output projections whose partial sums are all-reduced
// over the tensor-parallel group; embeddings and layer norms are whole on every rank. With
// pipeline parallelism a rank holds a contiguous run of blocks; the first stage also the
// embeddings, the last the final layer norm and a copy of the (tied) token embedding. A split
// model starts from exactly the weights of the whole one with the same seed: every parameter's
// initial values are a function of the seed and its name (param_init.h), so no rank builds more
// than its part, and inside a DeferredInit scope none builds any (ZeRO gives them storage).
// Thread safety: a module is used by one training thread.
#pragma once

#include <torch/nn/module.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "ckpt/tp_layout.h"
#include "engine/model/model.h"
#include "engine/model/split.h"

namespace ds::engine {

struct GptOptions {
  int64_t n_layer = 4;
  int64_t n_head = 4;
  int64_t d_model = 128;
  int64_t seq_len = 128;  // the longest sequence (position embeddings)
  int64_t vocab = 256;
  bool activation_checkpointing = false;
  uint64_t seed = 1234;  // initialisation
  // Parameters as ShapeOnly placeholders whose values InitialValues gives (DeferredInit sets it).
  bool deferred = false;
};

// This rank's part of the model (split.h).
using GptPlace = ModelPlace;

// The token embedding, which the output head shares (a copy on the last pipeline stage).
inline constexpr char kGptTiedEmbedding[] = "wte.weight";

// The mean cross-entropy of `logits` (N, V) against `targets` (N) token ids, computed in fp32
// whatever the logits' dtype: on a GPU by our fused kernels (cross_entropy_kernels.h) where
// they were built, which never copy the logits to fp32; logits of -inf count for nothing.
torch::Tensor CrossEntropyInFp32(const torch::Tensor& logits, const torch::Tensor& targets);

// How the GPT cuts a parameter across tensor-parallel ranks, by its name.
ckpt::TpSplit GptTpSplit(const std::string& parameter_name);

// One layer's parameters and nothing else (weight, and bias unless undefined): the GPT's layers
// are plain ATen calls on them, so that the tensors can be placeholders until ZeRO fills them.
class ParamsImpl : public torch::nn::Module {
 public:
  ParamsImpl(torch::Tensor weight, torch::Tensor bias);
  torch::Tensor weight, bias;
};
TORCH_MODULE(Params);

// Makes a parameter: its name in the whole model and its shape on this rank.
using ParamMaker = std::function<torch::Tensor(const std::string&, std::vector<int64_t>)>;

class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const GptOptions& o, int64_t layer, const GptPlace* place, const ParamMaker& make);
  torch::Tensor forward(const torch::Tensor& x);  // (B, T, C) -> (B, T, C)

 private:
  const GptPlace* place_;
  int64_t n_head_;  // heads on this rank
  Params ln_1_{nullptr}, ln_2_{nullptr};
  Params c_attn_{nullptr}, attn_proj_{nullptr}, c_fc_{nullptr}, mlp_proj_{nullptr};
};
TORCH_MODULE(Block);

class GptImpl : public LanguageModel, public SplitModel {
 public:
  explicit GptImpl(const GptOptions& o, GptPlace place = {});

  // idx (B, T) int64 token ids -> logits (B, T, V) in the parameters' dtype (one stage).
  torch::Tensor forward(const torch::Tensor& idx);
  // The mean cross-entropy of the next-token prediction, computed in fp32 (one stage).
  torch::Tensor loss(const torch::Tensor& idx, const torch::Tensor& targets) override;
  // SplitModel (split.h): the output (B, T, C) for the next stage, or the loss on the last.
  torch::Tensor stage_forward(const torch::Tensor& in, const torch::Tensor& targets) override;
  bool first_stage() const { return place_.first_stage(); }
  bool last_stage() const { return place_.last_stage(); }
  const GptPlace& place() const override { return place_; }
  ckpt::TpSplit TpSplitOf(const std::string& name) const override { return GptTpSplit(name); }
  std::map<std::string, ckpt::TpSplit> tp_splits() const override;
  std::string tied_embedding() const override { return kGptTiedEmbedding; }

  const GptOptions& options() const { return o_; }
  // Parameters in the whole model (all ranks' parts): matches ModelParameterCount().
  int64_t parameter_count() const override;
  // Training FLOPs per token (6N plus attention's 12 * L * C * T), for MFU.
  double flops_per_token() const override;
  std::vector<std::string> unit_prefixes() const override;  // the blocks: "h0.", "h1.", ...
  bool deferred() const override { return o_.deferred; }
  // GPT-2's initialisation (N(0, 0.02) weights, residual projections scaled by 1/sqrt(2L),
  // wpe N(0, 0.01), zero biases, unit layer norms), drawn per name (param_init.h), of this
  // rank's part of the parameter.
  torch::Tensor InitialValues(const std::string& name, int64_t begin, int64_t end) const override;

 private:
  torch::Tensor Embed(const torch::Tensor& idx);
  torch::Tensor Blocks(torch::Tensor x);
  // A parameter of this rank's shape: a placeholder when deferred, else its initial values.
  torch::Tensor MakeParam(const std::string& name, std::vector<int64_t> shape);
  torch::Tensor PartOfWhole(const std::string& name, const std::vector<int64_t>& shape,
                            int64_t begin, int64_t end) const;

  GptOptions o_;
  GptPlace place_;
  int64_t first_block_ = 0;
  int64_t whole_parameters_ = 0;
  Params wte_{nullptr}, wpe_{nullptr};
  std::vector<Block> blocks_;
  Params ln_f_{nullptr};
  // This rank's shape of each parameter, by name: ZeRO-3 empties the tensors themselves.
  std::map<std::string, std::vector<int64_t>> shapes_;
};
TORCH_MODULE(Gpt);

GptOptions GptOptionsOf(const ModelConfig& config, uint64_t seed);

}  // namespace ds::engine
