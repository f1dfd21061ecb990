// Verifies a checkpoint byte by byte: the manifest's invariants, every shard header, every
// file's size, and both checksums of every chunk (decoding each one). Damage is reported by
// tensor, rank, file and chunk. `dsckpt verify` prints the report.
// Thread safety: VerifyCheckpoint may run concurrently on different checkpoints.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/env.h"

namespace ds::ckpt {

struct VerifyOptions {
  unsigned threads = 0;  // 0: one per hardware thread
};

struct VerifyReport {
  std::string path;
  bool healthy = true;
  uint64_t chunks_checked = 0;
  uint64_t chunks_damaged = 0;
  uint64_t raw_bytes = 0;     // decoded and checked
  uint64_t stored_bytes = 0;  // read and checked
  double seconds = 0;
  std::vector<std::string> problems;          // one line each, most specific first
  std::vector<std::string> damaged_tensors;   // names, sorted
};

// Errors only when the checkpoint cannot be examined at all (no such directory, no manifest:
// NotFound; I/O errors). Damage, including a manifest that fails its checks, is in the report.
Result<VerifyReport> VerifyCheckpoint(io::Env* env, const std::string& dir,
                                      const VerifyOptions& options = {});

}  // namespace ds::ckpt
