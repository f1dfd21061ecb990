// The model API of the trainer: any torch::nn::Module that maps token ids to a next-token loss.
// The built-in GPT is registered as "gpt"; a program registers its own model under a name, sets
// `model.arch` to that name in its config, and calls DsrunMain (cli/dsrun/dsrun.h):
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
// Thread safety: RegisterModel and MakeModel lock a registry, and MakeModel builds one model at
// a time (factories seed LibTorch's global generator); call RegisterModel before training.
#pragma once

#include <torch/nn/module.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/config/config.h"
#include "engine/data/masked_lm.h"
#include "io/status.h"

namespace ds::engine {

// Runs one unit of a model (a transformer block, say) for ZeRO stage 3, which gathers the
// unit's parameters around its forward and backward. `fn` must be a pure function of `x` and the
// unit's parameters (no randomness): stage 3 runs it again in the backward pass.
class UnitRunner {
 public:
  virtual ~UnitRunner() = default;
  virtual torch::Tensor Run(int unit, const torch::Tensor& x,
                            std::function<torch::Tensor(const torch::Tensor&)> fn) = 0;
};

class LanguageModel : public torch::nn::Module {
 public:
  // idx and targets: (B, T) int64 token ids on the parameters' device. Returns the mean
  // cross-entropy as a 0-dim tensor; compute it in fp32 when the parameters are 16-bit.
  // With masked_lm(), idx is the masked input and targets the labels (MaskedLm::kIgnore where
  // a position is not predicted).
  virtual torch::Tensor loss(const torch::Tensor& idx, const torch::Tensor& targets) = 0;
  // The masked-LM objective (BERT's): the trainer masks every batch as this says
  // (engine/data/masked_lm.h). nullopt, the default: next-token prediction.
  virtual std::optional<MaskedLm> masked_lm() const { return std::nullopt; }
  // Training FLOPs per token for MFU; 0 when unknown (MFU is then not reported).
  virtual double flops_per_token() const { return 0; }

  // Stage 3 gathers parameters unit by unit when a model names its units, by the prefix of
  // their parameter names ({"h0.", "h1.", ...}) and runs unit i through RunUnit(i, ...).
  // Parameters in no unit are gathered for the whole forward and backward pass; a model that
  // names no units is gathered whole.
  virtual std::vector<std::string> unit_prefixes() const { return {}; }
  void set_unit_runner(UnitRunner* runner) { unit_runner_ = runner; }

  // Partitioned construction (DeepSpeed's zero.Init). Built inside a DeferredInit scope, a model
  // that supports it registers its parameters as ShapeOnly placeholders (param_init.h) and
  // returns true here; the trainer gives them storage and asks InitialValues for the ranges
  // each rank keeps (ZeRO-3: its partition), or for none (a resumed run). A model that does
  // not is built whole on every rank and then partitioned, as before.
  virtual bool deferred() const { return false; }
  // Elements [begin, end) of parameter `name` (as named_parameters() names it) at
  // initialisation: an (end - begin) fp32 tensor on the CPU, the same whichever ranges are
  // asked for. By default, the parameter's current values (a deferred model must override it).
  virtual torch::Tensor InitialValues(const std::string& name, int64_t begin, int64_t end) const;

 protected:
  torch::Tensor RunUnit(int unit, const torch::Tensor& x,
                        std::function<torch::Tensor(const torch::Tensor&)> fn) {
    return unit_runner_ != nullptr ? unit_runner_->Run(unit, x, std::move(fn)) : fn(x);
  }
  // Stage 3 recomputes every unit in the backward pass: activation checkpointing inside a
  // unit would only recompute it twice.
  bool units_recomputed() const { return unit_runner_ != nullptr; }

 private:
  UnitRunner* unit_runner_ = nullptr;
};

// While one lives, models built on this thread defer their initial values where they can
// (LanguageModel::deferred). Scopes nest.
class DeferredInit {
 public:
  DeferredInit();
  ~DeferredInit();
  DeferredInit(const DeferredInit&) = delete;
  DeferredInit& operator=(const DeferredInit&) = delete;
  static bool Active();

 private:
  bool outer_;
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
