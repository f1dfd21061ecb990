// Shared by the engine's config tests: the smallest config ParseConfig accepts, and a parse with
// "cfg.json" as the source name.
#pragma once

#include <nlohmann/json.hpp>

#include "engine/config/config.h"
#include "testing/matchers.h"

namespace ds::engine {

using nlohmann::json;

inline json Base() {
  return {{"train_batch_size", 8},
          {"model", {{"preset", "demo"}}},
          {"trainer", {{"max_steps", 100}}},
          {"optimizer", {{"type", "AdamW"}, {"params", {{"lr", 3e-4}}}}}};
}

inline Result<Config> Parse(const json& cfg, const Overrides& overrides = {}) {
  return ParseConfig(cfg.dump(), overrides, "cfg.json");
}

}  // namespace ds::engine
