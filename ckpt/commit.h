// Steps 4 to 9 of the commit protocol (ckpt/commit.cc): turning a finished temp directory into
// a committed checkpoint and moving the pointers. Used by the save pipeline on rank 0 and by
// tools that write whole checkpoints (reshard, import).
// Thread safety: serialised by the catalog lock it takes.
#pragma once

#include <string>

#include "ckpt/catalog.h"
#include "formats/manifest.h"
#include "io/env.h"

namespace ds::ckpt {

struct CommitOptions {
  bool update_latest = true;
  std::string best_metric;  // empty: `best` is left alone
  std::string best_mode = "min";
  RetentionPolicy retention;
  uint64_t lock_timeout_micros = 600'000'000;
  uint32_t writer_locks = 0;  // .writer-R.lock files (R < this) to remove before the rename
};

struct CommitResult {
  std::string tag;  // `wanted_tag`, or `wanted_tag.N` when that was taken
  std::string path;
  bool committed = false;  // the rename happened: the checkpoint exists (even if `after` failed)
  Status after;            // pointers or retention failed after the commit
  uint64_t durable_micros = 0;    // Env clock: step 8 done (the checkpoint and pointers durable)
  uint64_t retention_micros = 0;  // step 9's duration
};

// `m` is complete but for info.tag. Takes the catalog lock; on an error with !committed the
// caller removes `temp_dir`.
CommitResult CommitCheckpointDir(io::Env* env, const std::string& save_dir,
                                 const std::string& temp_dir, const std::string& wanted_tag,
                                 fmt::Manifest m, const CommitOptions& options, Status* error);

}  // namespace ds::ckpt
