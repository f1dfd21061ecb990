// Initial values by name and range: any split of a parameter's range draws the same elements as
// the whole (what lets a ZeRO-3 rank or a tensor-parallel rank make only its part), names and
// seeds give different values, and a ShapeOnly placeholder takes real storage through set_data.
#include "engine/model/param_init.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace ds::engine {
namespace {

TEST(ParamInitTest, AnySplitOfTheRangeDrawsTheWholesElements) {
  const InitSpec spec = InitSpec::Normal(0.0, 0.02);
  const int64_t n = 2 * kInitBlockElements + kInitBlockElements / 2 + 17;
  const torch::Tensor whole = InitRange(spec, 9, "h0.mlp_c_fc.weight", n, 0, n);
  ASSERT_EQ(whole.numel(), n);
  // Cuts inside blocks, on block boundaries and one element wide.
  const std::vector<int64_t> cuts = {
      0, 5, kInitBlockElements, kInitBlockElements + 1, 2 * kInitBlockElements + 3, n - 1, n};
  std::vector<torch::Tensor> parts;
  for (size_t i = 0; i + 1 < cuts.size(); ++i)
    parts.push_back(InitRange(spec, 9, "h0.mlp_c_fc.weight", n, cuts[i], cuts[i + 1]));
  EXPECT_TRUE(torch::equal(torch::cat(parts), whole));
  // GPT-2's N(0, 0.02), as drawn.
  EXPECT_NEAR(whole.mean().item<double>(), 0.0, 1e-4);
  EXPECT_NEAR(whole.std().item<double>(), 0.02, 1e-4);
}

TEST(ParamInitTest, NamesAndSeedsDrawDifferentValuesAndConstantsFill) {
  const InitSpec spec = InitSpec::Normal(0.0, 1.0);
  const torch::Tensor a = InitRange(spec, 1, "a", 1000, 0, 1000);
  EXPECT_TRUE(torch::equal(a, InitRange(spec, 1, "a", 1000, 0, 1000)));
  EXPECT_FALSE(torch::equal(a, InitRange(spec, 1, "b", 1000, 0, 1000)));
  EXPECT_FALSE(torch::equal(a, InitRange(spec, 2, "a", 1000, 0, 1000)));
  // Blocks of one parameter are not copies of each other.
  const int64_t n = 2 * kInitBlockElements;
  const torch::Tensor two = InitRange(spec, 1, "a", n, 0, n);
  EXPECT_FALSE(torch::equal(two.narrow(0, 0, 100), two.narrow(0, kInitBlockElements, 100)));
  EXPECT_TRUE(torch::equal(InitRange(InitSpec::Constant(1.0), 1, "ln", 7, 2, 5), torch::ones({3})));
  EXPECT_THROW(InitRange(spec, 1, "a", 10, 5, 11), c10::Error);
}

TEST(ParamInitTest, AShapeOnlyParameterHoldsOneElementUntilItGetsStorage) {
  torch::nn::Module m;
  torch::Tensor p = m.register_parameter("weight", ShapeOnly({300, 200}));
  EXPECT_EQ(p.sizes(), (std::vector<int64_t>{300, 200}));
  EXPECT_EQ(p.numel(), 60000);
  EXPECT_EQ(p.storage().nbytes(), sizeof(float));
  EXPECT_TRUE(p.requires_grad());
  p.set_data(torch::full({300, 200}, 2.0));
  EXPECT_EQ(m.named_parameters()["weight"].sum().item<double>(), 120000.0);
  // And it trains as any parameter does.
  (m.named_parameters()["weight"] * 3).sum().backward();
  EXPECT_EQ(p.grad().mean().item<double>(), 3.0);
}

}  // namespace
}  // namespace ds::engine
