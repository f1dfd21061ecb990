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

using ::ds::engine::testing::LlmcBytes;
using ::ds::engine::testing::NanoGptBytes;
using ::ds::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::Eq;
using ::testing::HasSubstr;

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

// data.path as a directory of llm.c shards (tools/prepare_data.py's train_*.bin and
// val_*.bin) or a glob: the shards in name order are one stream, a window may cross from one
// into the next, and the directory's val shards are the eval split.
TEST_F(DatasetTest, ADirectoryOrGlobOfShardsIsOneStream) {
  DS_ASSERT_OK(env_.CreateDirs("/d/s"));
  auto shard = [&](const std::string& name, std::vector<uint32_t> tokens) {
    DS_ASSERT_OK(env_.WriteFileSynced(
        "/d/s/" + name, LlmcBytes(20240520, 1, static_cast<int64_t>(tokens.size()), tokens, 2)));
  };
  shard("train_000001.bin", {5, 6, 7});  // listed out of order: read in name order
  shard("train_000000.bin", {1, 2, 3, 4});
  shard("val_000000.bin", {9, 9});
  DataConfig config{.path = "/d/s", .val_fraction = 0.5};
  DS_ASSERT_OK_AND_ASSIGN(Dataset data, OpenDataset(&env_, config, {.vocab = 8}));
  ASSERT_EQ(data.train.size(), 7u);
  EXPECT_EQ(data.eval.size(), 2u);  // the val shard, not val_fraction of the train shards
  std::vector<int64_t> in(3), out(3);
  DS_ASSERT_OK(data.train.ReadWindow(2, in, out));  // across the two shards
  EXPECT_THAT(in, ElementsAre(3, 4, 5));
  EXPECT_THAT(out, ElementsAre(4, 5, 6));
  DS_ASSERT_OK(data.train.Slice(1, 7).ReadWindow(0, in, out));
  EXPECT_THAT(in, ElementsAre(2, 3, 4));
  // The eval shard's 9s are past model.vocab 8: its own file is named.
  std::vector<int64_t> one_in(1), one_out(1);
  EXPECT_THAT(data.eval.ReadWindow(0, one_in, one_out),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("/d/s/val_000000.bin")));
  EXPECT_THAT(data.train.Describe(), HasSubstr("2 files, 7 tokens"));

  // A glob: exactly the files it matches; the split comes from val_fraction.
  config.path = "/d/s/train_*.bin";
  DS_ASSERT_OK_AND_ASSIGN(Dataset globbed, OpenDataset(&env_, config, {.vocab = 8}));
  EXPECT_EQ(globbed.train.size() + globbed.eval.size(), 7u);
  config.path = "/d/s/none_*.bin";
  EXPECT_THAT(OpenDataset(&env_, config, {}),
              StatusIs(StatusCode::kNotFound, HasSubstr("matches no file")));
  DS_ASSERT_OK(env_.CreateDirs("/d/empty"));
  config.path = "/d/empty";
  EXPECT_THAT(OpenDataset(&env_, config, {}),
              StatusIs(StatusCode::kNotFound, HasSubstr("holds no .bin token files")));
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
