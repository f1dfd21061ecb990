// ZeroStage (engine/config/zero_stage.h): the one place a stage number is checked, and what each
// stage partitions, as DeepSpeed's stages do.
#include "engine/config/zero_stage.h"

#include <gtest/gtest.h>

namespace ds::engine {
namespace {

TEST(ZeroStageTest, EachStagePartitionsWhatTheOneBeforeDidAndOneThingMore) {
  struct Want {
    int stage;
    bool optimizer, gradients, parameters;
  };
  for (const Want& w : {Want{0, false, false, false}, Want{1, true, false, false},
                        Want{2, true, true, false}, Want{3, true, true, true}}) {
    Result<ZeroStage> s = ZeroStage::Of(w.stage);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    EXPECT_EQ(s->number(), w.stage);
    EXPECT_EQ(s->partitions_optimizer(), w.optimizer) << w.stage;
    EXPECT_EQ(s->partitions_gradients(), w.gradients) << w.stage;
    EXPECT_EQ(s->partitions_parameters(), w.parameters) << w.stage;
  }
  EXPECT_EQ(ZeroStage(), *ZeroStage::Of(0));
}

TEST(ZeroStageTest, AStageThatDoesNotExistIsRefusedNamingTheKey) {
  for (int64_t bad : {int64_t{-1}, int64_t{4}, int64_t{1} << 40}) {
    Result<ZeroStage> s = ZeroStage::Of(bad);
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(s.status().message(),
              "zero_optimization.stage must be 0, 1, 2 or 3, got " + std::to_string(bad));
  }
}

}  // namespace
}  // namespace ds::engine
