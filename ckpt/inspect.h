// What a checkpoint or a save directory holds, from the manifest, the shard headers and the file
// sizes alone (no chunk is read): tags, steps, layout, sizes and compression, the largest tensor,
// and the problems those show. `dsckpt inspect` prints it; `verify` reads every byte instead.
// Thread safety: pure functions over an Env.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "formats/manifest.h"
#include "io/env.h"

namespace ds::ckpt {

struct CheckpointSummary {
  std::string path;
  fmt::ManifestInfo info;
  size_t tensors = 0;
  size_t slices = 0;
  size_t chunks = 0;
  size_t blobs = 0;
  uint64_t raw_bytes = 0;     // sum of chunks' raw lengths
  uint64_t stored_bytes = 0;  // sum of chunks' stored lengths
  uint64_t file_bytes = 0;    // shard files and manifest on disk
  std::string largest_tensor;
  uint64_t largest_tensor_bytes = 0;
  std::map<std::string, uint64_t> chunks_by_codec;
  // No problem in what inspect checks: the manifest, and each shard file there, a regular file
  // with a valid header of the right rank and the manifest's size. Chunks are not read, so a
  // damaged chunk goes unseen: only VerifyCheckpoint can say a checkpoint is intact.
  bool healthy = true;
  std::vector<std::string> problems;  // when !healthy: what is wrong, one line each
};

// A checkpoint directory (it holds manifest.h5). NotFound when there is no manifest; a damaged
// manifest, missing or short files and damaged shard headers are reported in the summary, not
// as an error.
Result<CheckpointSummary> InspectCheckpoint(io::Env* env, const std::string& dir);

struct SaveDirSummary {
  std::string path;
  std::string latest;      // the tag `latest` names, or empty
  std::string best_json;   // `best` as JSON, or empty
  std::vector<std::string> problems;           // pointers that cannot be read, one line each
  std::vector<CheckpointSummary> checkpoints;  // by step, then tag
  std::vector<std::string> in_progress;        // .tmp-* directories: saves running or torn
  std::vector<std::string> not_checkpoints;    // directories without a manifest
};

Result<SaveDirSummary> InspectSaveDir(io::Env* env, const std::string& dir);

// True when `dir` holds a manifest.h5.
Result<bool> IsCheckpointDir(io::Env* env, const std::string& dir);

}  // namespace ds::ckpt
