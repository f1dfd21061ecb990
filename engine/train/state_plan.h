// Which slices of which tensors a rank's optimizer state is, named as a checkpoint names them:
// one plan that saving and loading both read, so what a rank writes and what it reads back
// cannot disagree. Pure and without LibTorch (tests/engine/train/state_plan_test.cc proves that
// every element of every tensor is saved by exactly one rank at every stage, world size and
// tensor-parallel degree).
//
// A checkpoint holds, per parameter <p> (fp32, the whole tensor's shape):
//   master/<p>, optim/exp_avg/<p>, optim/exp_avg_sq/<p>
// A rank's pieces (engine/zero/piece.h: ranges of its local tensors in its flat buffers) become
// slices of the whole tensors: with tensor parallelism, boxes of them (ckpt/tp_layout.h); else
// flat ranges of them.
// Thread safety: values and const methods.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ckpt/tp_layout.h"
#include "engine/zero/piece.h"
#include "formats/manifest.h"
#include "io/status.h"

namespace ds::engine {

// The buffers of the optimizer state, in the order of their index everywhere below.
inline constexpr int kStateBuffers = 3;
inline constexpr const char* kStateBufferPrefix[kStateBuffers] = {"master/", "optim/exp_avg/",
                                                                  "optim/exp_avg_sq/"};

// Where one of the model's parameters (ZeRO's order) sits in the whole model.
struct TensorPlace {
  std::string name;            // the parameter's name
  std::vector<int64_t> shape;  // the whole tensor's shape
  ckpt::TpSplit split;         // how tensor parallelism cuts it
  // This rank counts and saves its elements: false for the copies other ranks count (whole
  // tensors on tensor-parallel ranks > 0, the last pipeline stage's tied embedding).
  bool owned = true;
};

// Elements [buffer_offset, buffer_offset + numel()) of each of the rank's buffers are elements
// [flat_begin, flat_end) (row-major) of the box (box_offset, box_length) of parameter `tensor`:
// of the whole tensor when the box is empty.
struct StateSlice {
  int tensor = 0;
  std::vector<int64_t> box_offset, box_length;
  uint64_t flat_begin = 0, flat_end = 0;
  int64_t buffer_offset = 0;
  int64_t numel() const { return static_cast<int64_t>(flat_end - flat_begin); }
};

class StatePlan {
 public:
  StatePlan() = default;
  // `tp` ranks cut the split parameters; this is tensor-parallel rank `tp_rank`.
  StatePlan(std::vector<TensorPlace> places, int tp, int tp_rank);

  const std::vector<TensorPlace>& places() const { return places_; }

  // What this rank writes: the slices of `save_pieces` (ZeroOptimizer::SavePieces) of the
  // parameters it owns.
  std::vector<StateSlice> SaveSlices(const std::vector<ZeroPiece>& save_pieces) const;
  // What this rank reads back: the slices of everything it holds (ZeroOptimizer::HeldPieces).
  std::vector<StateSlice> LoadSlices(const std::vector<ZeroPiece>& held_pieces) const;

  // The checkpoint's name of `buffer`'s part of parameter `tensor`: "optim/exp_avg/h0.mlp.w".
  std::string TensorName(int buffer, int tensor) const;

  // OK when `manifest` holds each parameter's first `buffers` buffers with its whole shape;
  // else InvalidArgument naming `path`, the tensor, and what to do.
  Status CheckMatches(const fmt::Manifest& manifest, int buffers, const std::string& path) const;

  // The split of every buffer's tensor, from the split of each parameter of the whole model
  // (`splits`: parameter name -> split; every stage's, not only this rank's), for dsckpt reshard.
  static ckpt::TpSplits BufferSplits(const std::map<std::string, ckpt::TpSplit>& splits);

 private:
  std::vector<StateSlice> SlicesOf(const std::vector<ZeroPiece>& pieces, bool owned_only) const;

  std::vector<TensorPlace> places_;
  int tp_ = 1, tp_rank_ = 0;
};

}  // namespace ds::engine
