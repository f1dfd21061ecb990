// Cutting a list of tensors into windows of bounded size, for tools that stream whole tensors
// through CheckpointReader (export, diff): each window becomes one Read. Internal to ds_ckpt.
// Thread safety: pure functions.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

namespace ds::ckpt::internal {

// Elements [begin, end) of tensor `tensor` (an index into the caller's list).
struct WindowPiece {
  size_t tensor;
  uint64_t begin;
  uint64_t end;
};

// The tensors' elements in order, cut into windows of at most `window_bytes` each (a tensor
// larger than that becomes several pieces; small ones share a window, so that a chunk holding
// many small tensors is read once). `numels[i]` elements of `elem_sizes[i]` bytes; tensors with
// no elements have no piece. A window holds at least one element whatever `window_bytes` says.
inline std::vector<std::vector<WindowPiece>> CutIntoWindows(std::span<const uint64_t> numels,
                                                            std::span<const size_t> elem_sizes,
                                                            uint64_t window_bytes) {
  std::vector<std::vector<WindowPiece>> windows(1);
  uint64_t room = window_bytes;  // bytes left in the current window
  for (size_t i = 0; i < numels.size(); ++i) {
    const uint64_t es = elem_sizes[i];
    for (uint64_t at = 0; at < numels[i];) {
      if (room < es && !windows.back().empty()) {
        windows.emplace_back();
        room = window_bytes;
      }
      const uint64_t n = std::min(numels[i] - at, std::max<uint64_t>(1, room / es));
      windows.back().push_back({i, at, at + n});
      room -= std::min(room, n * es);
      at += n;
    }
  }
  if (windows.back().empty()) windows.pop_back();
  return windows;
}

}  // namespace ds::ckpt::internal
