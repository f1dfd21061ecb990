// BertForMaskedLM (engine/model/bert.h) against transformers itself: a tiny random folder made
// by tests/engine/model/hf_oracle.py (with a WordPiece tokenizer.json), logits on a batch with a
// padded row, masked-LM training under ZeRO 0 and 3 (partitioned construction), and the
// exported folder loaded by AutoModelForMaskedLM with the same logits.
#include "engine/model/bert.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "engine/config/config.h"
#include "engine/config/hf_model.h"
#include "engine/train/trainer.h"
#include "testing/matchers.h"
#include "tests/engine/model/hf_test_util.h"

namespace ds::engine {
namespace {

using testing::Build;
using ::testing::HasSubstr;
using testing::Logits;
using testing::MakeFolder;
using testing::ReadOracle;

// Trains `folder` for `steps` at ZeRO `stage` on the built-in corpus into `out`; the summary.
Result<TrainSummary> Train(const std::string& folder, const std::string& out, int stage, int steps,
                           std::vector<std::string> more = {}) {
  std::vector<std::string> set = {"model.hf_path=" + folder,
                                  "model.seq_len=16",
                                  "trainer.output_dir=" + out,
                                  "tensorboard.enabled=false",
                                  "trainer.eval_interval=0",
                                  "steps_per_print=1",
                                  "zero_optimization.stage=" + std::to_string(stage),
                                  "zero_optimization.stage3_param_persistence_threshold=0"};
  set.insert(set.end(), more.begin(), more.end());
  return testing::TrainOnCpu(out, testing::kTinyConfig, std::move(set), steps);
}

// One oracle folder for the suite (making one costs a Python start with transformers, ~10 s).
class BertTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ds::testing::TempDir;
    MakeFolder(dir_->path(), "bert");
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static const std::string& folder() { return dir_->path(); }

 private:
  static ds::testing::TempDir* dir_;
};
ds::testing::TempDir* BertTest::dir_ = nullptr;

// fp32 logits against transformers', keys of the padded row's [PAD]s masked out as
// attention_mask does; the folder's special tokens and [MASK] are read from tokenizer.json.
TEST_F(BertTest, LogitsEqualTransformersWithPadding) {
  DS_SKIP_OR_FAIL_WITHOUT_PYTHON("transformers, safetensors, tokenizers");
  DS_ASSERT_OK_AND_ASSIGN(HfModelSpec spec, ReadHfModel(io::Env::Default(), folder()));
  EXPECT_EQ(spec.family, "bert");
  EXPECT_EQ(spec.mask_token_id, 4);
  EXPECT_EQ(spec.pad_token_id, 0);
  EXPECT_THAT(spec.special_token_ids, ::testing::IsSupersetOf({0, 1, 2, 3, 4}));
  EXPECT_FALSE(spec.warnings.empty());  // the config's dropout rates
  std::shared_ptr<LanguageModel> m = Build(folder(), /*deferred=*/false);
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(static_cast<int64_t>(spec.parameter_count()), [&] {
    int64_t n = 0;
    for (const auto& p : m->parameters()) n += p.numel();
    return n;
  }());
  m->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor want = ReadOracle(folder(), "logits");
  const torch::Tensor got = Logits(*m, ReadOracle(folder(), "ids"));
  ASSERT_EQ(got.sizes(), want.sizes());
  EXPECT_LE((got - want).abs().max().item<double>(), 1e-4);
}

// The masked-LM loss: the mean cross-entropy over the labelled positions only.
TEST_F(BertTest, LossCountsOnlyTheLabelledPositions) {
  DS_SKIP_OR_FAIL_WITHOUT_PYTHON("transformers, safetensors, tokenizers");
  std::shared_ptr<LanguageModel> m = Build(folder(), false);
  ASSERT_NE(m, nullptr);
  torch::NoGradGuard no_grad;
  const torch::Tensor ids = ReadOracle(folder(), "ids");
  torch::Tensor labels = torch::full_like(ids, MaskedLm::kIgnore);
  labels.index_put_({0, 3}, 17);
  labels.index_put_({1, 5}, 250);
  const torch::Tensor logits = Logits(*m, ids);
  const torch::Tensor want =
      (torch::log_softmax(logits[0][3], -1)[17] + torch::log_softmax(logits[1][5], -1)[250]) / -2;
  EXPECT_NEAR(m->loss(ids, labels).item<double>(), want.item<double>(), 1e-5);
  // No labelled position: 0, not NaN.
  EXPECT_EQ(m->loss(ids, torch::full_like(ids, MaskedLm::kIgnore)).item<double>(), 0.0);
}

// Masked-LM training from the folder: ZeRO-3 (each rank reads its partition) gives the losses of
// stage 0, and they fall.
TEST_F(BertTest, TrainsMaskedLmAtStages0And3) {
  DS_SKIP_OR_FAIL_WITHOUT_PYTHON("transformers, safetensors, tokenizers");
  ds::testing::TempDir out0, out3;
  DS_ASSERT_OK_AND_ASSIGN(TrainSummary zero0,
                          Train(folder(), out0.path(), 0, 6, {"checkpoint.enabled=false"}));
  DS_ASSERT_OK_AND_ASSIGN(TrainSummary zero3,
                          Train(folder(), out3.path(), 3, 6, {"checkpoint.enabled=false"}));
  EXPECT_NEAR(zero0.first_loss, zero3.first_loss, 1e-4);
  EXPECT_NEAR(zero0.last_loss, zero3.last_loss, 1e-4);
  EXPECT_LT(zero0.last_loss, zero0.first_loss);
  // The first loss is a masked-LM loss of a random head over 311 tokens: about ln(311) = 5.74,
  // where a next-token loss on the same model would be the same order; what tells them apart
  // is that the labels are the inputs' own tokens, checked by LossCountsOnlyTheLabelledPositions
  // and the data tests (tests/engine/data/masked_lm_test.cc).
  EXPECT_GT(zero0.first_loss, 4.0);
}

// data.mlm_probability reaches the masking: a higher rate masks other positions, so the first
// step's loss (same weights, same samples) changes; the default equals BERT's 0.15 given.
TEST_F(BertTest, MlmProbabilityChangesWhatIsMasked) {
  DS_SKIP_OR_FAIL_WITHOUT_PYTHON("transformers, safetensors, tokenizers");
  ds::testing::TempDir a, b, c;
  const std::vector<std::string> one = {"checkpoint.enabled=false"};
  DS_ASSERT_OK_AND_ASSIGN(TrainSummary plain, Train(folder(), a.path(), 0, 1, one));
  std::vector<std::string> given = one, more = one;
  given.push_back("data.mlm_probability=0.15");
  more.push_back("data.mlm_probability=0.6");
  DS_ASSERT_OK_AND_ASSIGN(TrainSummary same, Train(folder(), b.path(), 0, 1, given));
  DS_ASSERT_OK_AND_ASSIGN(TrainSummary masked_more, Train(folder(), c.path(), 0, 1, more));
  EXPECT_EQ(plain.first_loss, same.first_loss);
  EXPECT_NE(plain.first_loss, masked_more.first_loss);
}

// A folder without tokenizer.json has no [MASK]: training is refused naming what to add.
TEST_F(BertTest, NoTokenizerNoMaskToken) {
  DS_SKIP_OR_FAIL_WITHOUT_PYTHON("transformers, safetensors, tokenizers");
  ds::testing::TempDir dir, out;  // the suite's folder less its tokenizer.json
  for (const char* file : {"config.json", "model.safetensors"}) {
    DS_ASSERT_OK_AND_ASSIGN(std::string bytes,
                            io::Env::Default()->ReadFileToString(folder() + "/" + file));
    DS_ASSERT_OK(io::Env::Default()->WriteFileSynced(dir.path() + "/" + file, bytes));
  }
  EXPECT_THAT(Train(dir.path(), out.path(), 0, 1).status(),
              ds::testing::StatusIs(StatusCode::kInvalidArgument, HasSubstr("tokenizer.json")));
}

// Trained, saved, exported (`dsckpt export --format hf`): AutoModelForMaskedLM loads the folder
// and its logits equal ours.
TEST_F(BertTest, ExportedFolderLoadsInTransformersWithEqualLogits) {
  DS_SKIP_OR_FAIL_WITHOUT_PYTHON("transformers, safetensors, tokenizers");
  ds::testing::TempDir out;
  DS_ASSERT_OK_AND_ASSIGN(TrainSummary s, Train(folder(), out.path(), 3, 3));
  ASSERT_EQ(s.saves, 1);
  const std::string exported = out.path() + "/hf";
  int status = 0;
  const std::string said =
      testing::Dsckpt("export " + bench::ShellQuote(out.path() + "/checkpoints/latest") +
                          " --format hf --out " + bench::ShellQuote(exported),
                      &status);
  ASSERT_EQ(status, 0) << said;
  MakeFolder(exported, "reload");
  std::shared_ptr<LanguageModel> m = Build(exported, /*deferred=*/false);
  ASSERT_NE(m, nullptr);
  m->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor want = ReadOracle(exported, "logits");
  EXPECT_LE((Logits(*m, ReadOracle(exported, "ids")) - want).abs().max().item<double>(), 1e-4);
  std::shared_ptr<LanguageModel> first = Build(folder(), false);
  const std::string any = "bert.encoder.layer.0.attention.self.query.weight";
  EXPECT_FALSE(torch::allclose(first->named_parameters()[any], m->named_parameters()[any]));
}

}  // namespace
}  // namespace ds::engine
