// The built-in GPT: its parameter count is the config's, a fresh model predicts uniformly
// (loss ~ ln V), activation checkpointing changes no gradient, and bf16 runs.
#include "engine/model/gpt.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "engine/config/config.h"
#include "engine/config/memory.h"

namespace ds::engine {
namespace {

GptOptions Small(bool checkpointing = false) {
  GptOptions o;
  o.n_layer = 2;
  o.n_head = 2;
  o.d_model = 32;
  o.seq_len = 16;
  o.vocab = 64;
  o.activation_checkpointing = checkpointing;
  o.seed = 7;
  return o;
}

TEST(GptTest, ParameterCountMatchesTheConfigsFormula) {
  auto demo = ModelPreset("demo");
  ASSERT_TRUE(demo.ok());
  GptOptions o;
  o.n_layer = demo->n_layer;
  o.n_head = demo->n_head;
  o.d_model = demo->d_model;
  o.seq_len = demo->seq_len;
  o.vocab = demo->vocab;
  Gpt gpt(o);
  EXPECT_EQ(gpt->parameter_count(), static_cast<int64_t>(ModelParameterCount(*demo)));
}

TEST(GptTest, FreshModelPredictsUniformly) {
  Gpt gpt(Small());
  torch::Tensor idx = torch::randint(0, 64, {4, 16}, torch::kLong);
  torch::Tensor logits = gpt->forward(idx);
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{4, 16, 64}));
  // Targets independent of the inputs (with tied embeddings a token predicts itself a little).
  torch::Tensor tgt = torch::randint(0, 64, {4, 16}, torch::kLong);
  const double loss = gpt->loss(idx, tgt).item<double>();
  EXPECT_NEAR(loss, std::log(64.0), 0.15);
}

TEST(GptTest, ActivationCheckpointingChangesNoGradient) {
  torch::Tensor idx = torch::randint(0, 64, {2, 16}, torch::kLong);
  torch::Tensor tgt = torch::randint(0, 64, {2, 16}, torch::kLong);
  Gpt plain(Small(false)), ckpt(Small(true));
  plain->loss(idx, tgt).backward();
  ckpt->loss(idx, tgt).backward();
  auto a = plain->named_parameters(), b = ckpt->named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_TRUE(b[i].value().grad().defined()) << b[i].key();
    EXPECT_TRUE(torch::allclose(a[i].value().grad(), b[i].value().grad(), 1e-5, 1e-6))
        << a[i].key();
  }
}

TEST(GptTest, Bf16ForwardAndBackward) {
  Gpt gpt(Small());
  gpt->to(torch::kBFloat16);
  torch::Tensor idx = torch::randint(0, 64, {2, 16}, torch::kLong);
  torch::Tensor loss = gpt->loss(idx, idx);
  EXPECT_EQ(loss.dtype(), torch::kFloat32);
  loss.backward();
  for (const auto& p : gpt->parameters()) EXPECT_EQ(p.grad().dtype(), torch::kBFloat16);
  EXPECT_TRUE(std::isfinite(loss.item<float>()));
}

// Partitioned construction: a deferred GPT holds placeholders and gives, for any range of any
// parameter, exactly the built model's values; a tensor-parallel part, built without the whole
// model, holds exactly the whole's slices.
TEST(GptTest, DeferredValuesAndTensorParallelPartsEqualTheBuiltWholeModel) {
  Gpt built(Small());
  GptOptions o = Small();
  o.deferred = true;
  Gpt deferred(o);
  auto whole = built->named_parameters();
  auto placeholders = deferred->named_parameters();
  ASSERT_EQ(whole.size(), placeholders.size());
  for (const auto& p : whole) {
    const torch::Tensor flat = p.value().detach().reshape({-1});
    const int64_t n = flat.numel();
    EXPECT_EQ(placeholders[p.key()].sizes(), p.value().sizes()) << p.key();
    EXPECT_EQ(placeholders[p.key()].storage().nbytes(), sizeof(float)) << p.key();
    EXPECT_TRUE(torch::equal(deferred->InitialValues(p.key(), 0, n), flat)) << p.key();
    EXPECT_TRUE(torch::equal(deferred->InitialValues(p.key(), n / 3, n - 1),
                             flat.narrow(0, n / 3, n - 1 - n / 3)))
        << p.key();
  }
  GptPlace place;
  place.tp = 2;
  place.tp_rank = 1;
  place.tp_all_reduce = [](torch::Tensor&) {};
  Gpt part(Small(), place);
  for (const auto& p : part->named_parameters()) {
    const torch::Tensor& w = whole[p.key()];
    const ckpt::TpSplit split = GptTpSplit(p.key());
    std::vector<torch::Tensor> boxes;
    for (const ckpt::TpBox& box : ckpt::TpBoxes(w.sizes().vec(), split, 2, 1)) {
      torch::Tensor t = w;
      for (size_t d = 0; d < box.offset.size(); ++d)
        t = t.narrow(static_cast<int64_t>(d), box.offset[d], box.length[d]);
      boxes.push_back(t);
    }
    EXPECT_TRUE(torch::equal(p.value(), torch::cat(boxes, std::max(split.dim, 0)))) << p.key();
  }
}

}  // namespace
}  // namespace ds::engine
