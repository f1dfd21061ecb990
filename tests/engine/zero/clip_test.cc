// Gradient clipping (`gradient_clipping`) against LibTorch's own torch::nn::utils::clip_grad_norm_
// (the C++ twin of torch.nn.utils.clip_grad_norm_) and torch::optim::AdamW: one training step at
// every ZeRO stage on 1 and 2 ranks (threads over Gloo) must move the weights exactly as torch
// moves them from the same full gradient, clipped.
//
// The model's loss is sum(p * G_p) over its parameters, with G fixed (no data, no rank): every
// rank's gradient is G, so the averaged full gradient is G too, whatever the stage cuts it into.
// Its norm is ~59, the limit 1: clipping scales it by ~1/59. Adam's first step is
// lr * g / (|g| + eps), the sign of g for the usual eps 1e-8, whatever the clipping; so eps is 1
// here (larger than every clipped element), which makes the step about lr * g: proportional to
// the clipped gradient, and a wrong clipping coefficient shows.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/model/model.h"
#include "engine/train/trainer.h"
#include "tests/engine/testing/rank_threads.h"
#include "tests/testing/matchers.h"

namespace ds::engine {
namespace {

constexpr double kMaxNorm = 1.0;
constexpr double kLr = 0.1;
constexpr double kEps = 1.0;

// G for parameter `index`: smooth, of both signs, a different amplitude per parameter.
torch::Tensor FixedGradient(int index, const torch::Tensor& like) {
  return (torch::arange(like.numel(), torch::TensorOptions().dtype(torch::kFloat32)) * 0.37 +
          1.3 * index)
      .sin()
      .mul(3.0 + index)
      .reshape(like.sizes())
      .to(like.device());
}

class FixedGradientModel : public LanguageModel {
 public:
  FixedGradientModel() {
    register_parameter("w1", torch::randn({24, 20}) * 0.1);
    register_parameter("b1", torch::randn({20}) * 0.1);
    register_parameter("w2", torch::randn({13, 7}) * 0.1);  // odd sizes: partitions cut inside
  }
  torch::Tensor loss(const torch::Tensor& idx, const torch::Tensor&) override {
    torch::Tensor total = torch::zeros({}, torch::TensorOptions().device(idx.device()));
    int i = 0;
    for (const torch::Tensor& p : parameters()) {
      total = total + (p.to(torch::kFloat32) * FixedGradient(i++, p)).sum();
    }
    return total;
  }
};

struct RankStep {
  Status status;
  torch::Tensor before, after;      // every parameter's fp32 master, flattened in parameter order
  std::optional<double> grad_norm;  // what rank 0's metrics.jsonl reports for the step
};

class ClipTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    torch::set_num_threads(1);
    RegisterModel("test-fixed-gradient",
                  [](const ModelConfig&, uint64_t seed) -> Result<std::shared_ptr<LanguageModel>> {
                    torch::manual_seed(seed);
                    return std::shared_ptr<LanguageModel>(std::make_shared<FixedGradientModel>());
                  });
  }

  // One optimizer step of `world` ranks at ZeRO `stage` with clipping at `clip` (0: off).
  std::vector<RankStep> OneStep(int world, int stage, double clip) {
    nlohmann::json j = nlohmann::json::parse(R"({
      "train_micro_batch_size_per_gpu": 2,
      "gradient_accumulation_steps": 2,
      "steps_per_print": 1,
      "model": {"arch": "test-fixed-gradient", "n_layer": 1, "n_head": 1, "d_model": 8,
                "seq_len": 8, "vocab": 256},
      "data": {"path": "builtin", "val_fraction": 0.05},
      "comms": {"timeout_s": 60},
      "tensorboard": {"enabled": false},
      "checkpoint": {"save_interval_steps": 0},
      "trainer": {"max_steps": 1, "eval_interval": 0, "seed": 3}
    })");
    j["gradient_clipping"] = clip;
    j["optimizer"] = {{"type", "AdamW"},
                      {"params", {{"lr", kLr}, {"eps", kEps}, {"weight_decay", 0.0}}}};
    j["zero_optimization"] = {
        {"stage", stage}, {"reduce_bucket_size", 100}, {"stage3_param_persistence_threshold", 0}};
    std::vector<RankStep> out(static_cast<size_t>(world));
    std::vector<ds::testing::TempDir> dirs(static_cast<size_t>(world));
    testing::RunRanks(world, [&](int r, int port) {
      RankStep& res = out[static_cast<size_t>(r)];
      nlohmann::json mine = j;
      mine["trainer"]["output_dir"] = dirs[static_cast<size_t>(r)].path();
      Result<std::unique_ptr<Trainer>> t =
          testing::MakeRankTrainer(mine, {}, world, r, port, corpus_.path());
      if (!t.ok()) {
        res.status = t.status();
        return;
      }
      Result<torch::Tensor> before = (*t)->GatherMaster();
      if (!before.ok()) {
        res.status = before.status();
        return;
      }
      res.before = *before;
      res.status = (*t)->Step();
      if (!res.status.ok()) return;
      Result<torch::Tensor> after = (*t)->GatherMaster();
      res.status = after.status();
      if (after.ok()) res.after = *after;
    });
    // Rank 0's record of the step: the global norm before clipping.
    Result<std::string> metrics =
        io::Env::Default()->ReadFileToString(dirs[0].Join("metrics.jsonl"));
    std::istringstream lines(metrics.ok() ? *metrics : "");
    for (std::string line; std::getline(lines, line);) {
      nlohmann::json m = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (m.is_object() && m.contains("grad_norm")) out[0].grad_norm = m["grad_norm"].get<double>();
    }
    return out;
  }

  // torch's step from `before` with gradient G: clip_grad_norm_ (when clip > 0), then AdamW.
  // Returns the weights after it, and the total norm clip_grad_norm_ found.
  static torch::Tensor TorchStep(const torch::Tensor& before, double clip, double* total_norm) {
    FixedGradientModel shapes;
    std::vector<torch::Tensor> params;
    int64_t at = 0, i = 0;
    for (const torch::Tensor& p : shapes.parameters()) {
      torch::Tensor mine = before.narrow(0, at, p.numel()).reshape(p.sizes()).clone();
      mine.set_requires_grad(true);
      mine.mutable_grad() = FixedGradient(static_cast<int>(i++), p);
      params.push_back(mine);
      at += p.numel();
    }
    *total_norm = clip > 0 ? torch::nn::utils::clip_grad_norm_(params, clip) : 0;
    torch::optim::AdamW adam(
        params, torch::optim::AdamWOptions(kLr).betas({0.9, 0.999}).eps(kEps).weight_decay(0));
    adam.step();
    std::vector<torch::Tensor> flat;
    for (const torch::Tensor& p : params) flat.push_back(p.detach().reshape({-1}));
    return torch::cat(flat);
  }

  static ds::testing::TempDir corpus_;
};
ds::testing::TempDir ClipTest::corpus_;

TEST_F(ClipTest, ClippedStepsEqualTorchsClipGradNormThenAdamWAtEveryStage) {
  for (int world : {1, 2}) {
    for (int stage : {0, 1, 2, 3}) {
      SCOPED_TRACE("world " + std::to_string(world) + ", stage " + std::to_string(stage));
      std::vector<RankStep> got = OneStep(world, stage, kMaxNorm);
      for (int r = 0; r < world; ++r) {
        ASSERT_TRUE(got[static_cast<size_t>(r)].status.ok())
            << "rank " << r << ": " << got[static_cast<size_t>(r)].status.ToString();
      }
      const RankStep& g = got[0];
      double total = 0, unused = 0;
      const torch::Tensor want = TorchStep(g.before, kMaxNorm, &total);
      // Clipping happened: the gradient was ~59 times the limit.
      ASSERT_GT(total, 50 * kMaxNorm);
      ASSERT_TRUE(g.grad_norm.has_value()) << "metrics.jsonl has no grad_norm";
      EXPECT_NEAR(*g.grad_norm, total, 1e-5 * total);
      // The step is torch's, to fp32 rounding (sums in another order): the steps are ~1e-3.
      const torch::Tensor moved = want - g.before;
      const double diff = (g.after - want).abs().max().item<double>();
      std::printf("world %d stage %d: norm %.6g (limit %g), max |weights - torch's| %.3g\n", world,
                  stage, total, kMaxNorm, diff);
      EXPECT_LE(diff, 1e-7) << "largest step " << moved.abs().max().item<double>();
      EXPECT_GT(moved.abs().max().item<double>(), 1e-3);
      // ... and far from torch's unclipped step, which the weights would show had clipping not
      // scaled the gradient (or scaled it by a norm of one rank's partition only).
      const torch::Tensor unclipped = TorchStep(g.before, 0, &unused);
      EXPECT_GT((unclipped - want).abs().max().item<double>(), 100 * 1e-7);
      for (int r = 1; r < world; ++r) {
        EXPECT_TRUE(torch::equal(got[static_cast<size_t>(r)].after, g.after)) << "rank " << r;
      }
    }
  }
}

TEST_F(ClipTest, AGradientBelowTheLimitIsNotScaled) {
  std::vector<RankStep> got = OneStep(2, 2, 1000.0);
  ASSERT_TRUE(got[0].status.ok()) << got[0].status.ToString();
  double total = 0;
  const torch::Tensor want = TorchStep(got[0].before, 1000.0, &total);
  ASSERT_LT(total, 1000.0);
  double unused = 0;
  EXPECT_TRUE(torch::allclose(want, TorchStep(got[0].before, 0, &unused)));
  EXPECT_LE((got[0].after - want).abs().max().item<double>(), 1e-7);
}

}  // namespace
}  // namespace ds::engine
