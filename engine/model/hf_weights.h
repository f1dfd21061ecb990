// The weights of a Hugging Face folder (engine/config/hf_model.h), read by element range: what a
// deferred model's InitialValues gives ZeRO, one rank's part at a time, converted to fp32.
// Without weights in the folder, values drawn per name as transformers initialises them.
// Thread safety: Read may be called from several threads (the readers are opened under a lock).
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/config/hf_model.h"
#include "engine/model/gpt.h"
#include "engine/model/model.h"
#include "engine/model/param_init.h"

namespace ds::fmt {
class SafetensorsReader;
}

namespace ds::engine {

// How a model of a Hugging Face folder is built (the families: llama.h, hf_gpt2.h).
struct HfModelOptions {
  HfModelSpec spec;
  int64_t seq_len = 1024;  // the training sequence (for flops_per_token)
  bool activation_checkpointing = false;
  uint64_t seed = 1234;   // initialisation without weights in the folder
  bool deferred = false;  // placeholders whose values InitialValues gives
  ModelPlace place;       // this rank's part (split.h); the default: the whole model
};

class HfWeights {
 public:
  explicit HfWeights(const HfModelSpec& spec, uint64_t seed);
  ~HfWeights();

  // Elements [begin, end) of parameter `name` of `shape`, an fp32 CPU tensor: from the folder's
  // files (the shape checked against the file's), or `init` drawn per name when the folder
  // has no weights. Throws a c10::ValueError naming the folder and the tensor.
  at::Tensor Read(const std::string& name, const std::vector<int64_t>& shape, int64_t begin,
                  int64_t end, const InitSpec& init) const;

 private:
  const fmt::SafetensorsReader* ReaderFor(const std::string& name) const;

  const HfModelSpec& spec_;
  uint64_t seed_;
  mutable std::mutex mu_;
  mutable std::map<std::string, std::unique_ptr<fmt::SafetensorsReader>> readers_;  // by file
};

// A module with no parameters of its own registered under `name` in `parent`, so that the
// parameters under it carry transformers' dotted names ("model.layers.0.mlp.up_proj.weight").
std::shared_ptr<torch::nn::Module> HolderModule(torch::nn::Module& parent, const std::string& name);

// What the Hugging Face families (llama.h, hf_gpt2.h) share: the options, the folder's weights,
// each parameter's shape (ZeRO-3 empties the tensors themselves) and the untied output head.
class HfModel : public LanguageModel {
 public:
  ~HfModel() override;
  bool deferred() const override { return o_.deferred; }
  const HfModelSpec& spec() const { return o_.spec; }
  // How tensor parallelism cuts parameter `name` (split.h); by default, not at all.
  virtual ckpt::TpSplit TpSplitOf(const std::string& name) const;

 protected:
  explicit HfModel(HfModelOptions o);
  // A parameter of this shape, recorded: a ShapeOnly placeholder when deferred, else a tensor of
  // its own holding InitialValues (the whole range).
  at::Tensor MakeParam(const std::string& name, std::vector<int64_t> shape);
  // Elements [begin, end) of this rank's part of parameter `name` (the whole parameter's, cut as
  // TpSplitOf says): the folder's, or drawn by `init` when the folder has no weights. Throws a
  // c10::ValueError for a name the model does not have.
  at::Tensor Values(const std::string& name, int64_t begin, int64_t end,
                    const InitSpec& init) const;
  // lm_head.weight (vocab, hidden), registered as "lm_head", unless the folder ties the head.
  // Only on the last pipeline stage.
  void MakeUntiedHead(const ParamMaker& make);
  // The output embedding: lm_head's, or `tied` (the token embedding) when tied.
  const at::Tensor& Head(const at::Tensor& tied) const;

  HfModelOptions o_;

 private:
  std::unique_ptr<HfWeights> weights_;
  std::map<std::string, std::vector<int64_t>> shapes_;
  Params lm_head_{nullptr};
};

}  // namespace ds::engine
