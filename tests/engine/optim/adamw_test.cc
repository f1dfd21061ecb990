// Adam and AdamW on flat buffers: one step against the formula written out on known numbers,
// many steps against LibTorch's own torch::optim::Adam / AdamW, and the fused CPU kernel (the
// ZeRO-Offload step) against the plain path. (The fused CUDA kernel is checked against the plain
// path in gpu_test.cc.)
#include "engine/optim/adamw.h"

#include <gtest/gtest.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/torch.h>

#include <cmath>

namespace ds::engine {
namespace {

TEST(AdamWTest, OneStepEqualsTheFormula) {
  // p = [1, -2], g = [0.5, 0.25], lr 0.1, betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
  auto f = torch::TensorOptions().dtype(torch::kFloat64);
  torch::Tensor p = torch::tensor({1.0, -2.0}, f), g = torch::tensor({0.5, 0.25}, f);
  torch::Tensor m = torch::zeros(2, f), v = torch::zeros(2, f);
  AdamWOptions o{0.9, 0.999, 1e-8, 0.01, true, true};
  AdamWStep(p, g, m, v, 1, 0.1, o, std::nan(""));
  // By hand: p *= 1 - lr*wd; m = 0.1 g; v = 0.001 g^2; mhat = g; vhat = g^2;
  // p -= lr * mhat / (sqrt(vhat) + eps) = lr * sign(g) (almost exactly).
  const double p0 = 1.0 * (1 - 0.1 * 0.01) - 0.1 * 0.5 / (0.5 + 1e-8);
  const double p1 = -2.0 * (1 - 0.1 * 0.01) - 0.1 * 0.25 / (0.25 + 1e-8);
  EXPECT_NEAR(p[0].item<double>(), p0, 1e-12);
  EXPECT_NEAR(p[1].item<double>(), p1, 1e-12);
  EXPECT_NEAR(m[0].item<double>(), 0.05, 1e-15);
  EXPECT_NEAR(v[1].item<double>(), 0.001 * 0.0625, 1e-15);
}

// Against LibTorch's optimizers over many steps with changing gradients.
void CompareWithTorch(bool adam_w_mode) {
  torch::manual_seed(3);
  const int64_t n = 257;
  torch::Tensor init = torch::randn({n});
  torch::Tensor ref = init.clone().set_requires_grad(true);
  std::unique_ptr<torch::optim::Optimizer> opt;
  if (adam_w_mode) {
    opt = std::make_unique<torch::optim::AdamW>(
        std::vector<torch::Tensor>{ref},
        torch::optim::AdamWOptions(3e-3).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1));
  } else {
    opt = std::make_unique<torch::optim::Adam>(
        std::vector<torch::Tensor>{ref},
        torch::optim::AdamOptions(3e-3).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1));
  }
  torch::Tensor p = init.clone(), m = torch::zeros({n}), v = torch::zeros({n});
  AdamWOptions o{0.9, 0.95, 1e-8, 0.1, adam_w_mode, true};
  for (int step = 1; step <= 20; ++step) {
    torch::Tensor g = torch::randn({n}) * (1.0 / step);
    ref.mutable_grad() = g.clone();
    opt->step();
    AdamWStep(p, g, m, v, step, 3e-3, o, std::nan(""), /*allow_fused=*/false);
  }
  EXPECT_LT((p - ref.detach()).abs().max().item<float>(), 2e-6) << (adam_w_mode ? "AdamW" : "Adam");
}

TEST(AdamWTest, MatchesLibTorchAdamW) { CompareWithTorch(true); }
TEST(AdamWTest, MatchesLibTorchAdamWithL2) { CompareWithTorch(false); }

// The fused CPU kernel against the plain path over many steps, in both weight-decay modes.
void CompareFusedCpuWithPlain(bool adam_w_mode) {
  torch::manual_seed(5);
  const int64_t n = 100'003;  // not a multiple of any vector width
  torch::Tensor init = torch::randn({n});
  torch::Tensor p1 = init.clone(), m1 = torch::zeros({n}), v1 = torch::zeros({n});
  torch::Tensor p2 = init.clone(), m2 = torch::zeros({n}), v2 = torch::zeros({n});
  AdamWOptions o{0.9, 0.95, 1e-8, 0.1, adam_w_mode, true};
  for (int step = 1; step <= 30; ++step) {
    torch::Tensor g = torch::randn({n}) * (1.0 / step);
    const double beta1 = step < 10 ? 0.85 : std::nan("");  // a cycled momentum, then the default
    AdamWStep(p1, g, m1, v1, step, 3e-3, o, beta1, /*allow_fused=*/false);
    AdamWStep(p2, g, m2, v2, step, 3e-3, o, beta1);
  }
  // float32 rounding of two op orders over 30 steps: ~1e-7 relative per step on |p| ~ 1..4.
  EXPECT_LT((p1 - p2).abs().max().item<float>(), 5e-6) << (adam_w_mode ? "AdamW" : "Adam");
  EXPECT_LT((m1 - m2).abs().max().item<float>(), 1e-6);
  EXPECT_LT(((v1 - v2).abs() / (v1.abs() + 1e-12)).max().item<float>(), 1e-5);
  EXPECT_GT((p1 - init).abs().max().item<float>(), 1e-2);  // the steps did move the weights
}

TEST(AdamWTest, FusedCpuKernelMatchesThePlainPath) {
  CompareFusedCpuWithPlain(true);
  CompareFusedCpuWithPlain(false);
}

// ZeRO gives each rank a piece of the flat buffer; where the cuts fall must not change any
// element's update, so that a run's result does not depend on the world size's partitioning.
TEST(AdamWTest, FusedCpuUpdateDoesNotDependOnWherePartitionsAreCut) {
  torch::manual_seed(6);
  const int64_t n = 65'537;
  torch::Tensor init = torch::randn({n}), g = torch::randn({n});
  AdamWOptions o{0.9, 0.999, 1e-8, 0.01, true, true};
  auto run = [&](const std::vector<int64_t>& cuts) {
    torch::Tensor p = init.clone(), m = torch::zeros({n}), v = torch::zeros({n});
    for (int step = 1; step <= 3; ++step) {
      int64_t begin = 0;
      for (int64_t end : cuts) {
        AdamWStep(p.narrow(0, begin, end - begin), g.narrow(0, begin, end - begin),
                  m.narrow(0, begin, end - begin), v.narrow(0, begin, end - begin), step, 1e-3, o,
                  std::nan(""));
        begin = end;
      }
    }
    return p;
  };
  torch::Tensor whole = run({n});
  EXPECT_TRUE(torch::equal(whole, run({7, 21'851, 43'690, n})));
  EXPECT_TRUE(torch::equal(whole, run({1, 2, 3, 32'768, n})));
}

}  // namespace
}  // namespace ds::engine
