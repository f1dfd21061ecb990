// Training your own model with dstrain: register a torch::nn::Module under a name, point
// `model.arch` at it, and hand the command line to DsrunMain. Everything else (the DeepSpeed
// config, data, precision, schedules, monitoring, checkpoints) is dsrun's.
//
//   ./build/examples/bigram_lm --config examples/custom_model/bigram.json
//
// The model here predicts the next byte from the current one through an MLP: small enough to
// read in a minute, and its loss falls towards the corpus's bigram entropy.
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include "cli/dsrun/dsrun.h"
#include "engine/model/model.h"

namespace {

class BigramMlp : public ds::engine::LanguageModel {
 public:
  BigramMlp(const ds::engine::ModelConfig& c, uint64_t seed) : vocab_(c.vocab) {
    torch::manual_seed(seed);  // the same weights on every rank
    wte_ = register_module("wte", torch::nn::Embedding(c.vocab, c.d_model));
    fc_ = register_module("fc", torch::nn::Linear(c.d_model, 4 * c.d_model));
    proj_ = register_module("proj", torch::nn::Linear(4 * c.d_model, c.vocab));
  }

  torch::Tensor loss(const torch::Tensor& idx, const torch::Tensor& targets) override {
    namespace F = torch::nn::functional;
    torch::Tensor logits = proj_(F::gelu(fc_(wte_(idx))));  // (B, T, V)
    return F::cross_entropy(logits.view({-1, vocab_}).to(torch::kFloat32), targets.reshape({-1}));
  }

  double flops_per_token() const override {
    int64_t n = 0;
    for (const auto& p : parameters()) n += p.numel();
    return 6.0 * static_cast<double>(n);
  }

 private:
  int64_t vocab_;
  torch::nn::Embedding wte_{nullptr};
  torch::nn::Linear fc_{nullptr}, proj_{nullptr};
};

}  // namespace

int main(int argc, char** argv) {
  ds::engine::RegisterModel(
      "bigram-mlp", [](const ds::engine::ModelConfig& c,
                       uint64_t seed) -> ds::Result<std::shared_ptr<ds::engine::LanguageModel>> {
        if (c.vocab > 65536) return ds::Status::InvalidArgument("model.vocab: bigram-mlp is for byte-level data");
        return std::shared_ptr<ds::engine::LanguageModel>(std::make_shared<BigramMlp>(c, seed));
      });
  return ds::engine::DsrunMain(argc, argv);
}
