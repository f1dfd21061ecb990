// OpenDataset: the held-out split is the last val_fraction of the tokens (or data.val_path) and
// no training batch ever reads it; an empty data.path means the default corpus.
#include "engine/data/dataset.h"

#include <vector>

#include "engine/data/sampler.h"
#include "io/mem_env.h"
#include "testing/matchers.h"
#include "tests/engine/data/data_test_util.h"

namespace ds::engine {
namespace {

using ::ds::engine::testing::NanoGptBytes;
using ::ds::testing::StatusIs;
using ::testing::Eq;

class DatasetTest : public ::testing::Test {
 protected:
  void SetUp() override { DS_ASSERT_OK(env_.CreateDirs("/d")); }
  io::MemEnv env_;
};

TEST_F(DatasetTest, LastFractionIsHeldOut) {
  DS_ASSERT_OK(env_.WriteFileSynced("/d/a.txt", std::string(1001, 'x')));
  DataConfig config{.path = "/d/a.txt", .val_fraction = 0.1};
  DS_ASSERT_OK_AND_ASSIGN(Dataset data, OpenDataset(&env_, config, {.vocab = 256}));
  EXPECT_EQ(data.train.size(), 901u);  // floor(1001 * 0.1) = 100 held out
  EXPECT_EQ(data.eval.size(), 100u);
  EXPECT_EQ(data.eval.first_token(), 901u);
  EXPECT_EQ(data.Describe(),
            "data: /d/a.txt (text, 1001 tokens): train 901, eval 100 held out from its end");

  config.val_fraction = 0;
  DS_ASSERT_OK_AND_ASSIGN(Dataset all, OpenDataset(&env_, config, {}));
  EXPECT_EQ(all.train.size(), 1001u);
  EXPECT_EQ(all.eval.size(), 0u);
  EXPECT_EQ(all.Describe(), "data: /d/a.txt (text, 1001 tokens): train 1001, no eval split");
}

TEST_F(DatasetTest, TrainingNeverReadsTheHeldOutTokens) {
  // 900 training tokens 'a', then 100 held out 'b': a whole epoch of training sees no 'b'.
  DS_ASSERT_OK(env_.WriteFileSynced("/d/a.txt", std::string(900, 'a') + std::string(100, 'b')));
  DS_ASSERT_OK_AND_ASSIGN(Dataset data,
                          OpenDataset(&env_, {.path = "/d/a.txt", .val_fraction = 0.1}, {}));
  const BatchShape shape{.micro_batch = 4, .seq_len = 7};
  DS_ASSERT_OK_AND_ASSIGN(Sampler sampler, Sampler::Create(data.train.size(), shape, 42));
  Batch batch;
  for (uint64_t seen = 0; seen < 2 * sampler.num_windows(); seen += 4) {
    DS_ASSERT_OK(sampler.Next(data.train, &batch));
    for (int64_t t : batch.inputs) ASSERT_EQ(t, 'a');
    for (int64_t t : batch.targets) ASSERT_EQ(t, 'a');
  }
  DS_ASSERT_OK_AND_ASSIGN(EvalBatches eval, EvalBatches::Create(data.eval.size(), shape, 20));
  for (int64_t i = 0; i < eval.num_batches(); ++i) {
    DS_ASSERT_OK(eval.Read(data.eval, i, &batch));
    for (int64_t t : batch.inputs) ASSERT_EQ(t, 'b');
  }
}

TEST_F(DatasetTest, ValPathIsTheWholeEvalSplit) {
  DS_ASSERT_OK(env_.WriteFileSynced("/d/train.bin", NanoGptBytes({1, 2, 3, 4, 5, 6})));
  DS_ASSERT_OK(env_.WriteFileSynced("/d/val.bin", NanoGptBytes({7, 8, 9})));
  DS_ASSERT_OK_AND_ASSIGN(
      Dataset data,
      OpenDataset(&env_, {.path = "/d/train.bin", .val_path = "/d/val.bin", .val_fraction = 0.5},
                  {.vocab = 50257}));
  EXPECT_EQ(data.train.size(), 6u);
  EXPECT_EQ(data.eval.size(), 3u);
  EXPECT_EQ(data.eval.Token(0), 7u);
  EXPECT_EQ(data.Describe(),
            "data: train /d/train.bin (nanogpt, 6 tokens), eval /d/val.bin (nanogpt, 3 tokens)");
}

TEST_F(DatasetTest, EmptyPathBuildsTheDefaultCorpus) {
  DS_ASSERT_OK(env_.CreateDirs("/licenses"));
  DS_ASSERT_OK(env_.WriteFileSynced("/licenses/GPL-3", std::string(900, 'g')));
  DS_ASSERT_OK(env_.WriteFileSynced("/licenses/BSD", std::string(99, 'b')));
  const DatasetOptions options{.vocab = 256,
                               .default_corpus_path = "/cache/default-corpus.txt",
                               .licenses_dir = "/licenses"};
  for (const char* path : {"", "builtin"}) {
    DS_ASSERT_OK_AND_ASSIGN(Dataset data, OpenDataset(&env_, {.path = path}, options));
    EXPECT_EQ(data.train.path(), "/cache/default-corpus.txt");
    EXPECT_EQ(data.train.format(), DataConfig::Format::kText);
    EXPECT_EQ(data.train.size() + data.eval.size(), 1001u);  // BSD \n GPL-3 \n
    EXPECT_EQ(data.eval.size(), 100u);
  }
  EXPECT_THAT(OpenDataset(&env_, {}, {}),
              StatusIs(StatusCode::kInvalidArgument,
                       Eq("data.path is empty (the default corpus), but no place to build it was "
                          "given")));
}

}  // namespace
}  // namespace ds::engine
