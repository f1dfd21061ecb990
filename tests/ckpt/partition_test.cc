// The ZeRO partition function: every element owned by exactly one rank, partitions equal in
// length (padding aside), and the layouts DeepSpeed's stage 1/2 and stage 3 would produce.
#include "ckpt/partition.h"

#include "testing/matchers.h"

namespace ds::ckpt {
namespace {

using ::ds::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(PartitionTest, FlatBufferSplitsAcrossTensorBoundaries) {
  // 10 + 7 + 3 = 20 elements, world 3, alignment 2: padded to 24, partitions of 8.
  const std::vector<uint64_t> numels = {10, 7, 3};
  PartitionSpec spec{3, 2, 2};
  EXPECT_EQ(PartitionLength(20, 3, 2), 8u);
  DS_ASSERT_OK_AND_ASSIGN(auto r0, PartitionForRank(numels, spec, 0));
  DS_ASSERT_OK_AND_ASSIGN(auto r1, PartitionForRank(numels, spec, 1));
  DS_ASSERT_OK_AND_ASSIGN(auto r2, PartitionForRank(numels, spec, 2));
  EXPECT_THAT(r0, ElementsAre(FlatRange{0, 0, 8}));
  EXPECT_THAT(r1, ElementsAre(FlatRange{0, 8, 10}, FlatRange{1, 0, 6}));
  EXPECT_THAT(r2, ElementsAre(FlatRange{1, 6, 7}, FlatRange{2, 0, 3}));  // 4 padding elements
}

TEST(PartitionTest, StageThreePartitionsEachTensor) {
  const std::vector<uint64_t> numels = {10, 1};
  DS_ASSERT_OK_AND_ASSIGN(auto r0, PartitionForRank(numels, {4, 3, 1}, 0));
  DS_ASSERT_OK_AND_ASSIGN(auto r3, PartitionForRank(numels, {4, 3, 1}, 3));
  EXPECT_THAT(r0, ElementsAre(FlatRange{0, 0, 3}, FlatRange{1, 0, 1}));
  EXPECT_THAT(r3, ElementsAre(FlatRange{0, 9, 10}));  // tensor 1 has nothing for rank 3
}

TEST(PartitionTest, EveryElementOwnedOnceForAllLayouts) {
  const std::vector<uint64_t> numels = {1, 1000, 0, 37, 4096, 5};
  for (uint32_t world = 1; world <= 8; ++world) {
    for (uint32_t stage = 0; stage <= 3; ++stage) {
      for (uint64_t align : {1, 2, 8}) {
        std::vector<std::vector<int>> owners(numels.size());
        for (size_t t = 0; t < numels.size(); ++t) owners[t].assign(numels[t], 0);
        for (uint32_t rank = 0; rank < world; ++rank) {
          DS_ASSERT_OK_AND_ASSIGN(auto ranges, PartitionForRank(numels, {world, stage, align}, rank));
          for (const FlatRange& r : ranges) {
            ASSERT_LT(r.begin, r.end);
            for (uint64_t e = r.begin; e < r.end; ++e) owners[r.tensor][e]++;
          }
        }
        for (size_t t = 0; t < numels.size(); ++t) {
          for (uint64_t e = 0; e < numels[t]; ++e) {
            ASSERT_EQ(owners[t][e], 1) << "world " << world << " stage " << stage << " align "
                                       << align << " tensor " << t << " element " << e;
          }
        }
      }
    }
  }
}

TEST(PartitionTest, BadSpecsAreRefused) {
  const std::vector<uint64_t> numels = {4};
  EXPECT_THAT(PartitionForRank(numels, {0, 1, 1}, 0),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("world size")));
  EXPECT_THAT(PartitionForRank(numels, {2, 4, 1}, 0),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("ZeRO stage 4 does not exist")));
  EXPECT_THAT(PartitionForRank(numels, {2, 1, 1}, 2),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("rank 2 is not below")));
}

}  // namespace
}  // namespace ds::ckpt
