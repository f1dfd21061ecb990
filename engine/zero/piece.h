// A range of one parameter's elements in a rank's optimizer buffers: what ZeRO holds and saves,
// without LibTorch, so that plans over it (engine/train/state_plan.h) are tested without it.
// Thread safety: a value.
#pragma once

#include <cstdint>

namespace ds::engine {

// Elements [begin, end) of parameter `tensor` (flattened, in ZeRO's order) sit at
// [offset, offset + end - begin) of the rank's master, exp_avg and exp_avg_sq buffers.
struct ZeroPiece {
  int tensor = 0;
  int64_t begin = 0, end = 0;
  int64_t offset = 0;
  bool operator==(const ZeroPiece&) const = default;
};

}  // namespace ds::engine
