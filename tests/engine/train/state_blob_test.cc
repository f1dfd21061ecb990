// The trainer's state blob: what ToJson writes FromJson reads back exactly, and a blob that is
// well-formed JSON but not the trainer's state (damaged, crafted, another program's) is a
// Corruption naming the field, never an exception (which would end dsrun with an abort).
#include "engine/train/state_blob.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "testing/matchers.h"

namespace ds::engine {
namespace {

using ::ds::testing::StatusIs;
using ::testing::HasSubstr;

TrainerState Sample() {
  TrainerState s;
  s.step = 812;
  s.adam_steps = 800;
  s.skipped = 12;
  s.schedule_origin = -5;
  s.loss_scaler = {131072.0, 812, 795, 1};
  s.sampler = "v1 3 1024 77";
  s.world_size = 4;
  s.zero_stage = 3;
  return s;
}

TEST(TrainerStateTest, RoundTripsEveryField) {
  const TrainerState s = Sample();
  DS_ASSERT_OK_AND_ASSIGN(TrainerState back, TrainerState::FromJson(s.ToJson(), "ckpt"));
  EXPECT_EQ(back.step, 812);
  EXPECT_EQ(back.adam_steps, 800);
  EXPECT_EQ(back.skipped, 12);
  EXPECT_EQ(back.schedule_origin, -5);
  EXPECT_EQ(back.loss_scaler.scale, 131072.0);
  EXPECT_EQ(back.loss_scaler.iteration, 812);
  EXPECT_EQ(back.loss_scaler.last_overflow_iteration, 795);
  EXPECT_EQ(back.loss_scaler.hysteresis_left, 1);
  EXPECT_EQ(back.sampler, "v1 3 1024 77");
  EXPECT_EQ(back.world_size, 4);
  EXPECT_EQ(back.zero_stage, 3);
  EXPECT_EQ(back.ToJson(), s.ToJson());
}

TEST(TrainerStateTest, OlderBlobsWithoutTheOptionalKeysTakeTheirDefaults) {
  nlohmann::json j = nlohmann::json::parse(Sample().ToJson());
  for (const char* key : {"skipped", "schedule_origin", "world_size", "zero_stage"}) j.erase(key);
  DS_ASSERT_OK_AND_ASSIGN(TrainerState back, TrainerState::FromJson(j.dump(), "ckpt"));
  EXPECT_EQ(back.skipped, 0);
  EXPECT_EQ(back.schedule_origin, 0);
  EXPECT_EQ(back.world_size, 1);
}

TEST(TrainerStateTest, AWellFormedBlobThatIsNotTheStateIsACorruptionNamingTheField) {
  const std::string what = "ckpts/step-00000812";
  EXPECT_THAT(TrainerState::FromJson("[1, 2]", what),
              StatusIs(StatusCode::kCorruption, HasSubstr("ckpts/step-00000812: blob "
                                                          "trainer/state is not the trainer's "
                                                          "state (not a JSON object)")));
  EXPECT_THAT(TrainerState::FromJson("{\"step\": 3", what),
              StatusIs(StatusCode::kCorruption, HasSubstr("not a JSON object")));
  struct Case {
    const char* key;
    nlohmann::json value;  // null: removed
    const char* expected;
  };
  const Case cases[] = {
      {"step", nullptr, "'step' is missing or not an integer"},
      {"step", "812", "'step' is missing or not an integer"},
      {"step", -1, "'step' is missing or not an integer >= 0"},
      {"adam_steps", 1.5, "'adam_steps' is missing or not an integer"},
      {"sampler", 7, "'sampler' is missing or not a string"},
      {"loss_scaler", "big", "'loss_scaler' is missing or not an object"},
      {"world_size", 0, "'world_size' is missing or not an integer >= 1"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.key);
    nlohmann::json j = nlohmann::json::parse(Sample().ToJson());
    if (c.value.is_null()) {
      j.erase(c.key);
    } else {
      j[c.key] = c.value;
    }
    EXPECT_THAT(TrainerState::FromJson(j.dump(), what),
                StatusIs(StatusCode::kCorruption, HasSubstr(c.expected)));
  }
  nlohmann::json j = nlohmann::json::parse(Sample().ToJson());
  j["loss_scaler"]["scale"] = 0;
  EXPECT_THAT(TrainerState::FromJson(j.dump(), what),
              StatusIs(StatusCode::kCorruption, HasSubstr("'scale' is missing or not a positive")));
  j["loss_scaler"].erase("hysteresis_left");
  EXPECT_THAT(TrainerState::FromJson(j.dump(), what),
              StatusIs(StatusCode::kCorruption, HasSubstr("'hysteresis_left'")));
}

}  // namespace
}  // namespace ds::engine
