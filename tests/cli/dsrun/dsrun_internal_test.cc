// dsrun's own pieces, without running it: the device each rank takes, and the GPU's busy time
// that `dsrun bench --profile` reports.
#include <gtest/gtest.h>

#include "cli/dsrun/internal.h"

namespace ds::engine {
namespace {

// dsrun bench --profile: the GPU's busy time counts overlapping activities once.
TEST(ProfileTest, BusyTimeCountsOverlapsOnce) {
  EXPECT_EQ(BusyNanos({}), 0u);
  EXPECT_EQ(BusyNanos({{10, 20}}), 10u);
  EXPECT_EQ(BusyNanos({{30, 40}, {10, 20}}), 20u);            // apart, out of order
  EXPECT_EQ(BusyNanos({{10, 30}, {20, 40}}), 30u);            // overlapping: 10-40
  EXPECT_EQ(BusyNanos({{10, 50}, {20, 30}, {45, 60}}), 50u);  // one inside, one past the end
  EXPECT_EQ(BusyNanos({{10, 20}, {20, 25}}), 15u);            // touching
}

// dsrun's device per rank: each rank of a node on its own GPU unless --device names one.
TEST(RankDeviceTest, EachRankTakesItsOwnGpuUnlessOneIsNamed) {
  EXPECT_EQ(RankDevice("", 1, 2), "cuda:1");
  EXPECT_EQ(RankDevice("cuda", 1, 2), "cuda:1");  // was "cuda" for every rank: all on GPU 0
  EXPECT_EQ(RankDevice("cuda", 3, 2), "cuda:1");
  EXPECT_EQ(RankDevice("cuda:0", 1, 2), "cuda:0");
  EXPECT_EQ(RankDevice("cpu", 1, 2), "cpu");
  EXPECT_EQ(RankDevice("", 0, 0), "");          // no GPU: the trainer picks the CPU
  EXPECT_EQ(RankDevice("cuda", 0, 0), "cuda");  // and says no GPU is visible
}

}  // namespace
}  // namespace ds::engine
