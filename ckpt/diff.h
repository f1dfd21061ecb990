// Compares two checkpoints tensor by tensor, whatever layout (world size, ZeRO stage, TP boxes,
// chunking, codec) each was saved in: both are read through the load planner in windows of the
// flattened tensor, so memory stays bounded however large the model. Floating tensors are
// compared as doubles (max absolute and relative difference, numpy's isclose tolerance);
// integers and bools exactly. `dsckpt diff` prints the report.
// Thread safety: DiffCheckpoints may run concurrently on any checkpoints.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "formats/manifest.h"
#include "io/env.h"

namespace ds::ckpt {

struct DiffOptions {
  // Two floating elements a (first checkpoint) and b (second) match when their bytes are equal,
  // or when neither is NaN and |a - b| <= atol + rtol * |b|. Both 0 (the default): bit-exact.
  double atol = 0;
  double rtol = 0;
  bool compare_blobs = true;
  uint64_t memory_bytes = uint64_t{1} << 30;  // windows and chunks in flight, both sides together
  unsigned threads = 0;                       // decoders per side; 0: hardware threads
  std::string io_backend;                     // "", "uring" or "pwrite"
};

enum class TensorDiffKind : uint8_t {
  kEqual,    // every element matches (within the tolerance)
  kDiffers,  // some elements do not
  kOnlyInA,
  kOnlyInB,
  kDTypeMismatch,  // not compared
  kShapeMismatch,  // not compared
};

std::string_view TensorDiffKindName(TensorDiffKind kind);  // "equal", "differs", "only_in_a", ...

struct TensorDiff {
  std::string name;
  TensorDiffKind kind = TensorDiffKind::kEqual;
  fmt::DType dtype_a = fmt::DType::kF32, dtype_b = fmt::DType::kF32;
  std::vector<int64_t> shape_a, shape_b;
  uint64_t elements = 0;        // compared
  uint64_t mismatched = 0;      // elements that do not match
  uint64_t not_bit_exact = 0;   // elements whose bytes differ (mismatched or within tolerance)
  uint64_t nan_mismatches = 0;  // of `mismatched`: NaN on one side only, or NaNs of other bits
  double max_abs = 0;           // max |a - b| over elements that are not NaN on either side
  double max_rel = 0;           // max |a - b| / |b| likewise (inf where b is 0 and a is not)
  uint64_t max_abs_index = 0;   // flat index of the element with max_abs
  double a_at_max = 0, b_at_max = 0;
  uint64_t first_mismatch = 0;  // flat index of the first mismatched element
};

enum class BlobDiffKind : uint8_t { kDiffers, kOnlyInA, kOnlyInB };

struct BlobDiff {
  std::string name;
  BlobDiffKind kind = BlobDiffKind::kDiffers;
  uint64_t bytes_a = 0, bytes_b = 0;
};

struct DiffReport {
  std::string a, b;  // the checkpoint directories
  fmt::ManifestInfo info_a, info_b;
  std::vector<TensorDiff> tensors;  // every tensor: A's in A's order, then those only in B
  std::vector<BlobDiff> blobs;      // only those that differ
  uint64_t bytes_compared = 0;      // of each side
  double seconds = 0;
  bool equal() const;  // no tensor other than kEqual, no blob difference
};

// Reads both checkpoints (verifying every chunk it reads) and compares them. Errors only when one
// cannot be read (damage is Corruption naming the chunk); differences are in the report.
Result<DiffReport> DiffCheckpoints(io::Env* env, const std::string& a, const std::string& b,
                                   const DiffOptions& options = {});

}  // namespace ds::ckpt
