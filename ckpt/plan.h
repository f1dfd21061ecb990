// The load planner: pure geometry. Given a manifest and the slices a rank wants (any world
// size, ZeRO stage, tensor-parallel box, or whole tensors), it computes the minimal set of
// chunks to read and the byte copies to make from them. It never sees a path or a byte:
// the reader executes the plan. Resharding, resuming at another world size and export are all
// this one function.
// Thread safety: pure functions over values.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "formats/manifest.h"

namespace ds::ckpt {

struct WantedSlice {
  std::string tensor;
  std::vector<int64_t> box_offset;  // empty: the whole tensor
  std::vector<int64_t> box_length;
  uint64_t flat_begin = 0;  // elements of the box
  uint64_t flat_end = 0;    // UINT64_MAX: to the end of the box
};

struct PlannedCopy {
  uint64_t chunk = 0;         // manifest chunk index
  uint64_t chunk_offset = 0;  // bytes into the chunk's raw bytes
  uint32_t request = 0;       // index into the wanted slices
  uint64_t dst_offset = 0;    // bytes into that request's destination
  uint64_t bytes = 0;
};

struct LoadPlan {
  std::vector<uint64_t> chunks;      // to read, ascending, each once
  std::vector<PlannedCopy> copies;   // by chunk, then chunk offset
  std::vector<uint64_t> request_bytes;  // destination size of each request
  uint64_t raw_bytes_read = 0;       // raw bytes of the chunks read
};

// Validates each request against the manifest (tensor exists, box inside the shape, flat range
// inside the box: errors name the tensor and both boxes) and plans it. Every destination byte
// is covered by exactly one copy.
Result<LoadPlan> MakeLoadPlan(const fmt::Manifest& manifest, std::span<const WantedSlice> wanted);

// One contiguous run shared by a source and a destination slice of the same tensor: `count`
// elements starting at element `src` of the source slice and element `dst` of the destination
// slice (both counted from their flat_begin).
struct ElementRun {
  uint64_t src;
  uint64_t dst;
  uint64_t count;
};

// The runs two slices (box + flat range) of one tensor share, in destination order; adjacent
// runs are merged. Exposed for tests.
std::vector<ElementRun> SharedRuns(std::span<const int64_t> src_offset,
                                   std::span<const int64_t> src_length, uint64_t src_begin,
                                   uint64_t src_end, std::span<const int64_t> dst_offset,
                                   std::span<const int64_t> dst_length, uint64_t dst_begin,
                                   uint64_t dst_end);

}  // namespace ds::ckpt
