// The model API of the trainer: any torch::nn::Module that maps token ids to a next-token loss.
// The built-in GPT is registered as "gpt"; a program registers its own model under a name, sets
// `model.arch` to that name in its config, and calls DsrunMain (engine/launch/dsrun.h):
//
//   class Bigram : public ds::engine::LanguageModel { ... };
//   int main(int argc, char** argv) {
//     ds::engine::RegisterModel("bigram", [](const ds::engine::ModelConfig& c, uint64_t seed)
//         -> ds::Result<std::shared_ptr<ds::engine::LanguageModel>> {
//       return std::shared_ptr<ds::engine::LanguageModel>(std::make_shared<Bigram>(c, seed));
//     });
//     return ds::engine::DsrunMain(argc, argv);
//   }
//
// The trainer owns the parameters' precision and device (it calls module->to()), keeps the fp32
// master copy and the optimizer state, and names tensors in checkpoints by named_parameters().
// Thread safety: RegisterModel and MakeModel lock a registry; call RegisterModel before training.
#pragma once

#include <torch/nn/module.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/config/config.h"
#include "io/status.h"

namespace ds::engine {

class LanguageModel : public torch::nn::Module {
 public:
  // idx and targets: (B, T) int64 token ids on the parameters' device. Returns the mean
  // cross-entropy as a 0-dim tensor; compute it in fp32 when the parameters are 16-bit.
  virtual torch::Tensor loss(const torch::Tensor& idx, const torch::Tensor& targets) = 0;
  // Training FLOPs per token for MFU; 0 when unknown (MFU is then not reported).
  virtual double flops_per_token() const { return 0; }
};

// Builds a model of `config`'s sizes, initialised from `seed` (the same seed gives the same
// weights on every rank). An error is reported to the user as is: name the key that is wrong.
using ModelFactory =
    std::function<Result<std::shared_ptr<LanguageModel>>(const ModelConfig& config, uint64_t seed)>;

// Registers (or replaces) a model under `name`. "gpt" is built in.
void RegisterModel(const std::string& name, ModelFactory factory);
std::vector<std::string> RegisteredModels();  // sorted
// Builds `config.arch`; an unknown name lists the registered ones.
Result<std::shared_ptr<LanguageModel>> MakeModel(const ModelConfig& config, uint64_t seed);

}  // namespace ds::engine
