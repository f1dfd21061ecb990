// The sampler's order: a permutation of the windows per epoch fixed by (seed, epoch), the same
// on every platform (pinned by known answers); ranks read disjoint windows; a restored sampler
// continues exactly where the saved one was, also at another world size or micro batch; and
// evaluation reads the same sequential windows every time.
#include "engine/data/sampler.h"

#include <algorithm>
#include <set>
#include <vector>

#include "io/mem_env.h"
#include "testing/matchers.h"

namespace ds::engine {
namespace {

using ::ds::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::Eq;
using ::testing::HasSubstr;

std::vector<uint64_t> Permutation(uint64_t n, uint64_t seed, uint64_t epoch) {
  WindowPermutation p(n, seed, epoch);
  std::vector<uint64_t> out;
  for (uint64_t i = 0; i < n; ++i) out.push_back(p(i));
  return out;
}

Sampler MakeSampler(uint64_t tokens, int64_t b, int64_t t, uint64_t seed, int64_t rank = 0,
                    int64_t world = 1) {
  Result<Sampler> s = Sampler::Create(
      tokens, {.micro_batch = b, .seq_len = t, .rank = rank, .world_size = world}, seed);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return std::move(s).value();
}

std::vector<uint64_t> Step(Sampler& s, int64_t b) {
  std::vector<uint64_t> out(static_cast<size_t>(b));
  s.NextOffsets(out);
  return out;
}

// The global stream seen by `world` ranks of micro batch `b` for one step: rank r's k-th window
// is the step's window k * world + r.
std::vector<uint64_t> GlobalStep(std::vector<Sampler>& ranks, int64_t b) {
  const size_t world = ranks.size();
  std::vector<uint64_t> out(static_cast<size_t>(b) * world);
  for (size_t r = 0; r < world; ++r) {
    std::vector<uint64_t> mine = Step(ranks[r], b);
    for (size_t k = 0; k < mine.size(); ++k) out[k * world + r] = mine[k];
  }
  return out;
}

std::vector<Sampler> MakeRanks(uint64_t tokens, int64_t b, int64_t t, uint64_t seed,
                               int64_t world) {
  std::vector<Sampler> out;
  for (int64_t r = 0; r < world; ++r) out.push_back(MakeSampler(tokens, b, t, seed, r, world));
  return out;
}

TEST(DataWindowPermutationTest, IsABijectionForEverySize) {
  for (uint64_t n : {1u, 2u, 3u, 4u, 5u, 15u, 16u, 17u, 100u, 1000u, 4097u}) {
    for (uint64_t seed : {0u, 42u, 7777u}) {
      std::vector<uint64_t> p = Permutation(n, seed, 3);
      std::sort(p.begin(), p.end());
      for (uint64_t i = 0; i < n; ++i) ASSERT_EQ(p[i], i) << "n " << n << " seed " << seed;
    }
  }
}

// Checkpoints store positions in this order, so it must never change (on any platform).
TEST(DataWindowPermutationTest, KnownAnswers) {
  EXPECT_THAT(Permutation(10, 42, 0), ElementsAre(6, 7, 9, 8, 5, 2, 3, 4, 1, 0));
  EXPECT_THAT(Permutation(10, 42, 1), ElementsAre(8, 0, 3, 2, 9, 7, 4, 5, 1, 6));
  EXPECT_THAT(Permutation(10, 43, 0), ElementsAre(3, 5, 9, 4, 2, 8, 7, 0, 1, 6));
  WindowPermutation big(uint64_t{1} << 40, 42, 5);
  EXPECT_EQ(big(0), 214548658916u);
  EXPECT_EQ(big(123456789), 399997744476u);
}

TEST(DataWindowPermutationTest, DependsOnSeedAndEpoch) {
  EXPECT_NE(Permutation(1000, 1, 0), Permutation(1000, 2, 0));
  EXPECT_NE(Permutation(1000, 1, 0), Permutation(1000, 1, 1));
  EXPECT_EQ(Permutation(1000, 1, 4), Permutation(1000, 1, 4));
}

TEST(DataSamplerTest, SameSeedSameBatchesOtherSeedOtherBatches) {
  Sampler a = MakeSampler(10'000, 4, 16, 42);
  Sampler b = MakeSampler(10'000, 4, 16, 42);
  Sampler c = MakeSampler(10'000, 4, 16, 43);
  bool differs = false;
  for (int step = 0; step < 50; ++step) {
    std::vector<uint64_t> x = Step(a, 4);
    EXPECT_EQ(x, Step(b, 4)) << "step " << step;
    differs |= x != Step(c, 4);
  }
  EXPECT_TRUE(differs);
}

// The plain definition: global window g of the stream is window
// WindowPermutation(windows, seed, g / windows)(g % windows), at token offset window * T.
TEST(DataSamplerTest, StreamIsEachEpochsPermutationInTurn) {
  const uint64_t windows = 37;
  Sampler s = MakeSampler(windows * 6 + 1, 5, 6, 2024);
  for (uint64_t step = 0; step < 40; ++step) {
    std::vector<uint64_t> got = Step(s, 5);
    for (uint64_t k = 0; k < 5; ++k) {
      const uint64_t g = step * 5 + k;
      EXPECT_EQ(got[k], WindowPermutation(windows, 2024, g / windows)(g % windows) * 6) << g;
    }
  }
}

TEST(DataSamplerTest, AnEpochVisitsEveryWindowOnceAtMultiplesOfT) {
  // 1001 tokens, T = 10: windows at 0, 10, ..., 990 (the last reads tokens 990..1000).
  Sampler s = MakeSampler(1001, 5, 10, 9);
  ASSERT_EQ(s.num_windows(), 100u);
  std::vector<uint64_t> seen;
  for (int step = 0; step < 20; ++step) {
    for (uint64_t o : Step(s, 5)) seen.push_back(o);
  }
  EXPECT_EQ(s.state().epoch, 1u);
  EXPECT_EQ(s.state().position, 0u);
  std::sort(seen.begin(), seen.end());
  for (uint64_t i = 0; i < 100; ++i) ASSERT_EQ(seen[i], i * 10);
}

TEST(DataSamplerTest, RanksTakeDisjointInterleavedWindowsOfTheGlobalStream) {
  // 4 ranks of B = 3 read, together, what one rank of B = 12 reads; rank r takes the step's
  // windows r, r + 4, r + 8. 97 windows: steps cross epoch boundaries mid-batch.
  std::vector<Sampler> ranks = MakeRanks(97 * 8 + 1, 3, 8, 5, 4);
  Sampler single = MakeSampler(97 * 8 + 1, 12, 8, 5);
  for (int step = 0; step < 30; ++step) {
    std::vector<uint64_t> global = GlobalStep(ranks, 3);
    std::vector<uint64_t> expected = Step(single, 12);
    EXPECT_EQ(global, expected) << "step " << step;
    if (single.state().position >= 12) {  // the step stayed inside one epoch
      EXPECT_EQ(std::set<uint64_t>(global.begin(), global.end()).size(), 12u) << "step " << step;
    }
  }
  for (const Sampler& r : ranks) EXPECT_EQ(r.state(), single.state());
}

TEST(DataSamplerTest, RestoredSamplerContinuesTheSameBatches) {
  io::MemEnv env;
  std::string text;
  for (int i = 0; i < 5000; ++i) text.push_back(static_cast<char>('a' + (i * 7919) % 26));
  DS_ASSERT_OK(env.WriteFileSynced("/corpus.txt", text));
  DS_ASSERT_OK_AND_ASSIGN(TokenSource train, TokenSource::Open(&env, "/corpus.txt", {}));

  const BatchShape shape{.micro_batch = 4, .seq_len = 32, .rank = 1, .world_size = 3};
  DS_ASSERT_OK_AND_ASSIGN(Sampler uninterrupted, Sampler::Create(train.size(), shape, 1234));
  DS_ASSERT_OK_AND_ASSIGN(Sampler first, Sampler::Create(train.size(), shape, 1234));
  Batch batch, expected;
  for (int step = 0; step < 17; ++step) {  // 17 * 12 = 204 > 156 windows: into epoch 1
    DS_ASSERT_OK(uninterrupted.Next(train, &expected));
    DS_ASSERT_OK(first.Next(train, &batch));
  }
  const std::string blob = first.state().Serialize();
  EXPECT_EQ(blob, "sampler-v1 epoch=1 position=48 windows=156 seed=1234");

  DS_ASSERT_OK_AND_ASSIGN(SamplerState state, SamplerState::Deserialize(blob));
  DS_ASSERT_OK_AND_ASSIGN(Sampler resumed, Sampler::Create(train.size(), shape, 1234));
  DS_ASSERT_OK(resumed.Restore(state));
  for (int step = 0; step < 25; ++step) {
    DS_ASSERT_OK(uninterrupted.Next(train, &expected));
    DS_ASSERT_OK(resumed.Next(train, &batch));
    EXPECT_EQ(batch.offsets, expected.offsets) << "step " << step;
    EXPECT_EQ(batch.inputs, expected.inputs) << "step " << step;
    EXPECT_EQ(batch.targets, expected.targets) << "step " << step;
  }
  EXPECT_EQ(resumed.state(), uninterrupted.state());
}

TEST(DataSamplerTest, ResumingAtAnotherWorldSizeContinuesTheGlobalStream) {
  const uint64_t tokens = 61 * 16 + 1;  // 61 windows: epochs end mid-step
  Sampler reference = MakeSampler(tokens, 8, 16, 77);
  std::vector<std::vector<uint64_t>> stream(40);
  for (std::vector<uint64_t>& step : stream) step = Step(reference, 8);

  // 5 steps at world 2, B = 4 (8 windows a step), then world 4, B = 2, then world 1, B = 8.
  std::vector<Sampler> two = MakeRanks(tokens, 4, 16, 77, 2);
  for (int step = 0; step < 5; ++step) EXPECT_EQ(GlobalStep(two, 4), stream[step]);
  const std::string blob = two[0].state().Serialize();
  EXPECT_EQ(two[1].state().Serialize(), blob);  // every rank stores the same position

  std::vector<Sampler> four = MakeRanks(tokens, 2, 16, 77, 4);
  DS_ASSERT_OK_AND_ASSIGN(SamplerState state, SamplerState::Deserialize(blob));
  for (Sampler& r : four) DS_ASSERT_OK(r.Restore(state));
  for (int step = 5; step < 20; ++step) EXPECT_EQ(GlobalStep(four, 2), stream[step]) << step;

  Sampler one = MakeSampler(tokens, 8, 16, 77);
  DS_ASSERT_OK(one.Restore(four[3].state()));
  for (int step = 20; step < 40; ++step) EXPECT_EQ(Step(one, 8), stream[step]) << step;
}

TEST(DataSamplerTest, ChangingTheMicroBatchKeepsTheStream) {
  // The stream is a sequence of windows: two steps of B = 3 are one step of B = 6.
  Sampler small = MakeSampler(500, 3, 7, 3);
  Sampler large = MakeSampler(500, 6, 7, 3);
  for (int step = 0; step < 30; ++step) {
    std::vector<uint64_t> a = Step(small, 3);
    std::vector<uint64_t> b = Step(small, 3);
    a.insert(a.end(), b.begin(), b.end());
    EXPECT_EQ(a, Step(large, 6)) << "step " << step;
  }
}

TEST(DataSamplerTest, BatchHoldsInputsAndShiftedTargets) {
  io::MemEnv env;
  std::string text;
  for (int i = 0; i < 200; ++i) text.push_back(static_cast<char>(i));
  DS_ASSERT_OK(env.WriteFileSynced("/bytes.txt", text));
  DS_ASSERT_OK_AND_ASSIGN(TokenSource train, TokenSource::Open(&env, "/bytes.txt", {}));
  Sampler s = MakeSampler(train.size(), 3, 5, 11);
  Batch batch;
  DS_ASSERT_OK(s.Next(train, &batch));
  EXPECT_EQ(batch.B, 3);
  EXPECT_EQ(batch.T, 5);
  ASSERT_EQ(batch.inputs.size(), 15u);
  for (int64_t b = 0; b < 3; ++b) {
    const auto o = static_cast<int64_t>(batch.offsets[b]);
    EXPECT_EQ(o % 5, 0);
    for (int64_t t = 0; t < 5; ++t) {
      EXPECT_EQ(batch.inputs[b * 5 + t], o + t);
      EXPECT_EQ(batch.targets[b * 5 + t], o + t + 1);
    }
  }
}

TEST(DataSamplerTest, StateRoundTripAndDamage) {
  const SamplerState s{.epoch = 3, .position = 17, .windows = 100, .seed = 18446744073709551615u};
  DS_ASSERT_OK_AND_ASSIGN(SamplerState back, SamplerState::Deserialize(s.Serialize()));
  EXPECT_EQ(back, s);
  for (const char* bad : {"", "sampler-v2 epoch=3 position=17 windows=100 seed=1",
                          "sampler-v1 epoch=3 position=17 windows=100",
                          "sampler-v1 epoch=3 position=x windows=100 seed=1",
                          "sampler-v1 epoch=3 position=100 windows=100 seed=1",
                          "sampler-v1 epoch=3  position=17 windows=100 seed=1"}) {
    EXPECT_THAT(SamplerState::Deserialize(bad),
                StatusIs(StatusCode::kCorruption,
                         Eq("data sampler state '" + std::string(bad) +
                            "' is not 'sampler-v1 epoch=E position=P windows=W seed=S' with P < W "
                            "(checkpoint damaged, or written by another version?)")));
  }
}

TEST(DataSamplerTest, RestoreRefusesAnotherStream) {
  Sampler s = MakeSampler(1001, 2, 10, 42);
  EXPECT_THAT(s.Restore({.epoch = 0, .position = 5, .windows = 90, .seed = 42}),
              StatusIs(StatusCode::kFailedPrecondition,
                       Eq("data sampler: the checkpoint's position is in a stream of 90 windows "
                          "with seed 42, but this run has 100 windows with seed 42 (the data, "
                          "data.val_fraction, model.seq_len or the seed changed since the "
                          "checkpoint; restore them to continue the same stream)")));
  EXPECT_THAT(s.Restore({.epoch = 0, .position = 5, .windows = 100, .seed = 1}),
              StatusIs(StatusCode::kFailedPrecondition, HasSubstr("with seed 1, but")));
}

TEST(DataSamplerTest, CreateErrors) {
  EXPECT_THAT(Sampler::Create(64, {.micro_batch = 1, .seq_len = 64}, 1),
              StatusIs(StatusCode::kFailedPrecondition,
                       Eq("data: the training split has 64 tokens, fewer than one window of "
                          "model.seq_len + 1 = 65 (use more data, or a smaller model.seq_len)")));
  EXPECT_THAT(
      Sampler::Create(1000, {.micro_batch = 1, .seq_len = 8, .rank = 2, .world_size = 2}, 1),
      StatusIs(StatusCode::kInvalidArgument, Eq("data: rank 2 is outside a world of 2")));
  EXPECT_THAT(Sampler::Create(1000, {.micro_batch = 0, .seq_len = 8}, 1),
              StatusIs(StatusCode::kInvalidArgument,
                       Eq("data: the micro batch must be at least 1 window, got 0")));
}

TEST(DataEvalBatchesTest, SequentialDisjointAndTheSameEveryTime) {
  // 41 windows of T = 4; B = 2, world 2: 4 windows a batch, at most 10 batches.
  const uint64_t tokens = 41 * 4 + 1;
  DS_ASSERT_OK_AND_ASSIGN(
      EvalBatches r0,
      EvalBatches::Create(tokens, {.micro_batch = 2, .seq_len = 4, .rank = 0, .world_size = 2},
                          20));
  DS_ASSERT_OK_AND_ASSIGN(
      EvalBatches r1,
      EvalBatches::Create(tokens, {.micro_batch = 2, .seq_len = 4, .rank = 1, .world_size = 2},
                          20));
  EXPECT_EQ(r0.num_batches(), 10);
  std::vector<uint64_t> all;
  for (int64_t i = 0; i < r0.num_batches(); ++i) {
    std::vector<uint64_t> a(2), b(2), again(2);
    r0.Offsets(i, a);
    r1.Offsets(i, b);
    r0.Offsets(i, again);
    EXPECT_EQ(a, again);
    all.insert(all.end(), {a[0], b[0], a[1], b[1]});
  }
  std::vector<uint64_t> expected;
  for (uint64_t w = 0; w < 40; ++w) expected.push_back(w * 4);
  EXPECT_THAT(all, ElementsAreArray(expected));

  DS_ASSERT_OK_AND_ASSIGN(EvalBatches capped,
                          EvalBatches::Create(tokens, {.micro_batch = 2, .seq_len = 4}, 3));
  EXPECT_EQ(capped.num_batches(), 3);
}

TEST(DataEvalBatchesTest, ReadsTheEvalSplit) {
  io::MemEnv env;
  DS_ASSERT_OK(env.WriteFileSynced("/e.txt", "abcdefghijklmnopqrstuvwxyz"));
  DS_ASSERT_OK_AND_ASSIGN(TokenSource eval, TokenSource::Open(&env, "/e.txt", {}));
  DS_ASSERT_OK_AND_ASSIGN(EvalBatches e,
                          EvalBatches::Create(eval.size(), {.micro_batch = 2, .seq_len = 3}, 9));
  EXPECT_EQ(e.num_batches(), 4);  // 8 windows
  Batch batch;
  DS_ASSERT_OK(e.Read(eval, 1, &batch));
  EXPECT_THAT(batch.offsets, ElementsAre(6, 9));
  EXPECT_THAT(batch.inputs, ElementsAre('g', 'h', 'i', 'j', 'k', 'l'));
  EXPECT_THAT(batch.targets, ElementsAre('h', 'i', 'j', 'k', 'l', 'm'));
  EXPECT_THAT(e.Read(eval, 4, &batch),
              StatusIs(StatusCode::kInvalidArgument, Eq("data: eval batch 4 is outside [0, 4)")));
}

TEST(DataEvalBatchesTest, TooSmallASplitIsAnError) {
  EXPECT_THAT(
      EvalBatches::Create(100, {.micro_batch = 4, .seq_len = 16, .rank = 0, .world_size = 2}, 20),
      StatusIs(StatusCode::kFailedPrecondition,
               Eq("data: the eval split has 100 tokens, 6 windows of model.seq_len + 1 = 17, "
                  "fewer than one eval batch of 8 (micro batch x world size) (raise "
                  "data.val_fraction, or give data.val_path)")));
}

}  // namespace
}  // namespace ds::engine
