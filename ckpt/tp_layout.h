// Tensor-parallel layouts: which boxes of a global tensor each tensor-parallel rank holds, and
// where their elements sit in that rank's local tensor. The engine cuts its tensors with these
// functions and `dsckpt reshard --to-tp` writes target layouts with them, so the two agree.
// Thread safety: pure functions over values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "formats/manifest.h"
#include "io/status.h"

namespace ds::ckpt {

// How a tensor is cut over tensor-parallel ranks.
struct TpSplit {
  int dim = -1;        // -1: not split (every TP rank holds it whole; TP rank 0 saves it)
  uint32_t parts = 1;  // dim 0 only: the dimension is `parts` equal blocks (fused q,k,v: 3), each
                       // cut into tp pieces; TP rank r holds piece r of every part, in part order
  bool operator==(const TpSplit&) const = default;
};

// A box of the global tensor that a TP rank holds, and where its elements start in the rank's
// local tensor (flattened row-major).
struct TpBox {
  std::vector<int64_t> offset, length;  // per dimension
  uint64_t local_begin = 0;             // elements into the local tensor
  uint64_t numel = 0;
};

// Errors name the tensor and say what divides what ("dimension 0 of size 96 does not split
// into 3 parts x 4 tensor-parallel pieces").
Status ValidateTpSplit(std::string_view tensor, std::span<const int64_t> shape, TpSplit split,
                       uint32_t tp);

// The shape a TP rank holds: shape[dim] / tp (the parts' pieces concatenated along dim 0).
std::vector<int64_t> TpLocalShape(std::span<const int64_t> shape, TpSplit split, uint32_t tp);

// The boxes of TP rank `tp_rank`, in local order (they tile the local tensor, each a contiguous
// run of it). tp == 1 or dim == -1: one box, the whole tensor (offset all 0, length = shape).
// The split must have passed ValidateTpSplit.
std::vector<TpBox> TpBoxes(std::span<const int64_t> shape, TpSplit split, uint32_t tp,
                           uint32_t tp_rank);

// Elements [begin, end) of the local tensor as ranges of the boxes, in local order: elements
// [flat_begin, flat_end) of box `box` (row-major within the box) are the local tensor's elements
// from `local_offset` on. Empty ranges are omitted.
struct TpBoxRange {
  size_t box = 0;
  uint64_t flat_begin = 0, flat_end = 0;  // elements of the box
  uint64_t local_offset = 0;              // elements into the local tensor
  bool operator==(const TpBoxRange&) const = default;
};
std::vector<TpBoxRange> TpLocalRange(std::span<const TpBox> boxes, uint64_t begin, uint64_t end);

// ---- the splits of a checkpoint

// Full manifest tensor name -> its split; tensors absent are not split.
using TpSplits = std::map<std::string, TpSplit>;

// The blob that records every checkpoint's splits (written even at TP 1, so that a TP-1
// checkpoint can be resharded to TP > 1): a JSON object, name -> {"dim": d, "parts": p}.
inline constexpr char kTpSplitsBlob[] = "layout/tp_splits";

std::string EncodeTpSplits(const TpSplits& splits);
// Corruption when the blob is not such an object.
Result<TpSplits> DecodeTpSplits(std::string_view json);

// The splits of the checkpoint `m`: its kTpSplitsBlob, each entry checked against the tensor's
// shape (entries naming tensors it does not hold are ignored); or, without the blob, inferred
// from the slices' boxes: the one dimension they cut, and parts = boxes along it / the
// checkpoint's tp_degree. Errors name the tensor.
Result<TpSplits> ReadTpSplits(const fmt::Manifest& m);

}  // namespace ds::ckpt
