// The masked-LM objective's batches (engine/data/masked_lm.h): transformers'
// DataCollatorForLanguageModeling's proportions (15% chosen; of those 80% [MASK], 10% random,
// 10% kept), special tokens never chosen, labels only where chosen, and masks that are a
// function of (seed, epoch, window): a resumed sampler and another world size mask a window as
// an uninterrupted run does, and the next epoch masks it afresh.
#include "engine/data/masked_lm.h"

#include <map>
#include <vector>

#include "engine/data/sampler.h"
#include "io/mem_env.h"
#include "testing/matchers.h"

namespace ds::engine {
namespace {

using ::ds::testing::StatusIs;
using ::testing::HasSubstr;

constexpr int64_t kVocab = 1000, kMask = 3, kPad = 0, kCls = 1, kSep = 2;

MaskedLm Bert() {
  MaskedLm m;
  m.mask_token_id = kMask;
  m.vocab = kVocab;
  m.never_masked = {kPad, kCls, kSep, kMask};
  m.source = "/models/bert/tokenizer.json";
  return m;
}

// B rows of T tokens in [10, kVocab), with a [CLS] first, a [SEP] last and [PAD] in between.
Batch Rows(int64_t B, int64_t T) {
  Batch b;
  b.B = B;
  b.T = T;
  for (int64_t r = 0; r < B; ++r) {
    b.offsets.push_back(static_cast<uint64_t>(r * T));
    for (int64_t i = 0; i < T; ++i) {
      const int64_t token = i == 0        ? kCls
                            : i == T - 1  ? kSep
                            : i % 50 == 7 ? kPad
                                          : 10 + (r * 31 + i * 17) % 990;
      b.inputs.push_back(token);
      b.targets.push_back(token + 1);  // next-token targets, to be replaced
    }
  }
  return b;
}

TEST(MaskedLmTest, ProportionsAreTransformersCollators) {
  const Batch original = Rows(64, 512);
  Batch b = original;
  ApplyMaskedLm(Bert(), 1234, std::vector<uint64_t>(64, 0), &b);
  int64_t ordinary = 0, chosen = 0, masked = 0, replaced = 0, kept = 0;
  for (size_t i = 0; i < b.inputs.size(); ++i) {
    const int64_t was = original.inputs[i];
    const bool special = was == kPad || was == kCls || was == kSep;
    if (special) {
      EXPECT_EQ(b.inputs[i], was) << i;
      EXPECT_EQ(b.targets[i], MaskedLm::kIgnore) << i;
      continue;
    }
    ++ordinary;
    if (b.targets[i] == MaskedLm::kIgnore) {
      EXPECT_EQ(b.inputs[i], was) << i;  // not chosen: untouched
      continue;
    }
    EXPECT_EQ(b.targets[i], was) << i;  // chosen: the label is the original token
    ++chosen;
    if (b.inputs[i] == kMask) {
      ++masked;
    } else if (b.inputs[i] == was) {
      ++kept;
    } else {
      ++replaced;
      EXPECT_GE(b.inputs[i], 0);
      EXPECT_LT(b.inputs[i], kVocab);
    }
  }
  // 31,426 ordinary tokens: 15% is 4,714 +- 63 (one sigma); the bounds are over 5 sigma.
  const double rate = static_cast<double>(chosen) / static_cast<double>(ordinary);
  EXPECT_NEAR(rate, 0.15, 0.011);
  EXPECT_NEAR(static_cast<double>(masked) / chosen, 0.8, 0.03);
  // A random replacement equal to the token itself counts as kept (1 in 1000).
  EXPECT_NEAR(static_cast<double>(replaced) / chosen, 0.1, 0.025);
  EXPECT_NEAR(static_cast<double>(kept) / chosen, 0.1, 0.025);
}

TEST(MaskedLmTest, MasksDependOnSeedEpochAndWindowOnly) {
  Batch a = Rows(4, 128), again = Rows(4, 128), other_epoch = Rows(4, 128),
        other_seed = Rows(4, 128);
  ApplyMaskedLm(Bert(), 7, {{0, 0, 0, 0}}, &a);
  ApplyMaskedLm(Bert(), 7, {{0, 0, 0, 0}}, &again);
  ApplyMaskedLm(Bert(), 7, {{1, 1, 1, 1}}, &other_epoch);
  ApplyMaskedLm(Bert(), 8, {{0, 0, 0, 0}}, &other_seed);
  EXPECT_EQ(a.inputs, again.inputs);
  EXPECT_EQ(a.targets, again.targets);
  EXPECT_NE(a.targets, other_epoch.targets);
  EXPECT_NE(a.targets, other_seed.targets);
  // A row's mask does not depend on the rows beside it: row 2 alone masks the same.
  Batch row2 = Rows(4, 128);
  Batch alone;
  alone.B = 1;
  alone.T = 128;
  alone.offsets = {row2.offsets[2]};
  alone.inputs.assign(row2.inputs.begin() + 256, row2.inputs.begin() + 384);
  alone.targets.assign(128, 0);
  ApplyMaskedLm(Bert(), 7, {{0}}, &alone);
  EXPECT_EQ(alone.inputs, std::vector<int64_t>(a.inputs.begin() + 256, a.inputs.begin() + 384));
  EXPECT_EQ(alone.targets, std::vector<int64_t>(a.targets.begin() + 256, a.targets.begin() + 384));
}

TEST(MaskedLmTest, SamplerMasksTheSameWindowsAtAnyWorldSizeAndAfterRestore) {
  io::MemEnv env;
  std::string text;
  for (int i = 0; i < 6000; ++i) text.push_back(static_cast<char>('a' + (i * 7919) % 26));
  DS_ASSERT_OK(env.WriteFileSynced("/corpus.txt", text));
  DS_ASSERT_OK_AND_ASSIGN(TokenSource train, TokenSource::Open(&env, "/corpus.txt", {}));
  MaskedLm m = Bert();
  m.vocab = 256;
  m.mask_token_id = 4;
  m.never_masked = {};
  // Every window's masked inputs and labels, by offset and epoch, from one rank of batch 4...
  auto by_window = [&](Sampler& s, int steps, int64_t B,
                       std::map<std::pair<uint64_t, uint64_t>, std::vector<int64_t>>* out) {
    Batch b;
    for (int i = 0; i < steps; ++i) {
      const uint64_t epoch = s.state().epoch;
      ASSERT_TRUE(s.Next(train, &b).ok());
      for (int64_t r = 0; r < B; ++r) {
        std::vector<int64_t> row(b.inputs.begin() + r * 32, b.inputs.begin() + (r + 1) * 32);
        row.insert(row.end(), b.targets.begin() + r * 32, b.targets.begin() + (r + 1) * 32);
        // Batches here never straddle an epoch: 187 windows, 11 per step (17 steps an epoch),
        // or 33 for 5 steps.
        (*out)[{epoch, b.offsets[static_cast<size_t>(r)]}] = row;
      }
    }
  };
  std::map<std::pair<uint64_t, uint64_t>, std::vector<int64_t>> one, three;
  DS_ASSERT_OK_AND_ASSIGN(Sampler single,
                          Sampler::Create(train.size(), {.micro_batch = 11, .seq_len = 32}, 99));
  single.set_masked_lm(m);
  by_window(single, 20, 11, &one);
  for (int64_t rank = 0; rank < 3; ++rank) {  // ... equal those of 3 ranks...
    DS_ASSERT_OK_AND_ASSIGN(
        Sampler s,
        Sampler::Create(train.size(),
                        {.micro_batch = 11, .seq_len = 32, .rank = rank, .world_size = 3}, 99));
    s.set_masked_lm(m);
    by_window(s, 5, 11, &three);
  }
  ASSERT_EQ(three.size(), 165u);
  for (const auto& [key, row] : three) {
    ASSERT_TRUE(one.contains(key)) << "epoch " << key.first << " offset " << key.second;
    EXPECT_EQ(one[key], row) << "epoch " << key.first << " offset " << key.second;
  }
  // ... and of a sampler restored mid-run.
  DS_ASSERT_OK_AND_ASSIGN(Sampler later,
                          Sampler::Create(train.size(), {.micro_batch = 11, .seq_len = 32}, 99));
  DS_ASSERT_OK_AND_ASSIGN(Sampler head,
                          Sampler::Create(train.size(), {.micro_batch = 11, .seq_len = 32}, 99));
  std::vector<uint64_t> skipped(11);
  for (int i = 0; i < 13; ++i) head.NextOffsets(skipped);
  DS_ASSERT_OK(later.Restore(head.state()));
  later.set_masked_lm(m);
  std::map<std::pair<uint64_t, uint64_t>, std::vector<int64_t>> resumed;
  by_window(later, 7, 11, &resumed);
  for (const auto& [key, row] : resumed) EXPECT_EQ(one.at(key), row);
  // Epoch 1 masks its windows afresh.
  int same = 0, compared = 0;
  for (const auto& [key, row] : one) {
    if (key.first != 1) continue;
    for (const auto& [key0, row0] : one) {
      if (key0.first == 0 && key0.second == key.second) {
        ++compared;
        same += row0 == row;
      }
    }
  }
  EXPECT_GT(compared, 0);
  EXPECT_EQ(same, 0);
}

TEST(MaskedLmTest, CheckNamesWhatIsMissing) {
  MaskedLm m = Bert();
  m.mask_token_id = -1;
  EXPECT_THAT(m.Check(), StatusIs(StatusCode::kInvalidArgument,
                                  HasSubstr("/models/bert/tokenizer.json: no mask token")));
  m = Bert();
  m.probability = 1.5;
  EXPECT_THAT(m.Check(), StatusIs(StatusCode::kInvalidArgument, HasSubstr("probability")));
  m = Bert();
  m.mask_token_id = kVocab;
  EXPECT_THAT(m.Check(), StatusIs(StatusCode::kInvalidArgument, HasSubstr("outside")));
  DS_EXPECT_OK(Bert().Check());
}

}  // namespace
}  // namespace ds::engine
