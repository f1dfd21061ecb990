// Resharding: a checkpoint rewritten for another world size, ZeRO stage or tensor-parallel
// degree, exactly as a run with that layout would have saved it (so it resumes without a second
// reshard). Streams: each source chunk is read once, and memory is bounded by a limit that does
// not depend on the model's size.
// Thread safety: one Reshard at a time per output directory.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "ckpt/plan.h"
#include "formats/chunk_codec.h"
#include "formats/manifest.h"
#include "io/env.h"

namespace ds::ckpt {

struct TargetLayout {
  uint32_t world_size = 1;
  uint32_t zero_stage = 0;
  uint32_t tp_degree = 1;
  uint64_t alignment = 1;
};

// The slices each rank of `layout` owns (tensor, box, flat range), in the order that rank's
// writer adds them: for each partition group (PartitionGroup) in manifest order, the
// data-parallel partition (ckpt/partition.h) of the group's local tensors. With tensor
// parallelism, rank r is tensor-parallel rank r % tp of data-parallel rank r / tp; each tensor
// is cut as the checkpoint's splits say (ReadTpSplits: its `layout/tp_splits` blob, or inferred
// from its boxes), the rank's boxes from TpBoxes (ckpt/tp_layout.h), and each partition range
// of a local tensor maps to ranges of those boxes (TpLocalRange). Tensors that are not split
// are written by tensor-parallel rank 0.
Result<std::vector<std::vector<WantedSlice>>> LayoutSlices(const fmt::Manifest& m,
                                                           const TargetLayout& layout);

struct ReshardOptions {
  TargetLayout layout;
  std::string out;  // the new checkpoint's directory; empty: <save_dir>/<tag>-w<M>s<S>
  bool set_latest = false;
  uint64_t memory_bytes = uint64_t{1} << 30;  // source chunks and target chunks in flight
  std::optional<fmt::Codec> codec;            // default: the source's most common codec
  uint64_t chunk_bytes = 4 << 20;
  unsigned threads = 0;
  std::string io_backend;
  std::function<void(uint64_t bytes)> progress;  // called as raw bytes are written
};

struct ReshardResult {
  std::string tag;
  std::string path;
  uint64_t logical_bytes = 0;
  uint64_t stored_bytes = 0;
  uint64_t source_chunks_read = 0;
  uint64_t source_chunks = 0;
  double seconds = 0;
};

Result<ReshardResult> Reshard(io::Env* env, const std::string& src, const ReshardOptions& options);

}  // namespace ds::ckpt
