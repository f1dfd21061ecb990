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

}  // namespace
}  // namespace ds::engine
