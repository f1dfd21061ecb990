// Housekeeping of a save directory, for `dsckpt list / best / prune / gc` and cron: what it holds,
// the `best` pointer set by hand, retention (prune) and garbage collection (gc). Whatever deletes
// or moves a pointer takes the catalog lock with a bounded wait and never touches `latest`,
// `best` or a save in progress, so it is safe beside a live training job.
// Thread safety: free functions over an Env; concurrent callers are serialised by the lock.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/catalog.h"
#include "io/env.h"

namespace ds::ckpt {

inline constexpr uint64_t kDefaultLockWaitMicros = 60'000'000;
// A writer creates its temp directory, then each lock file, then locks it (open, then flock):
// in between, a lock file looks free and testing it could even take the lock from under the
// writer. So a lock file younger than this is never tested, and a temp directory with one (or
// with no lock file and written to that recently) counts as a save that is starting.
inline constexpr int64_t kStartingSaveGraceMicros = 60'000'000;

// OK when `dir` is a save directory: it holds a committed checkpoint, `latest`, `best`, a save in
// progress (.tmp-*) or leftovers of a removal (.trash-*). Otherwise NotFound (no such
// directory) or InvalidArgument saying what was expected (for a checkpoint: use its parent).
Status CheckSaveDir(io::Env* env, const std::string& dir);

// The catalog lock of `catalog.dir()`, waiting up to `wait_micros`; Unavailable saying the save
// directory is busy (a save, prune or gc holds it) otherwise.
Result<std::unique_ptr<io::FileLock>> LockSaveDir(Catalog& catalog, uint64_t wait_micros);

// A .tmp-* (save in progress or torn) or .trash-* (removal cut short) directory.
struct TempDirInfo {
  std::string name;
  std::string path;
  uint64_t bytes = 0;              // every file in it
  int64_t last_write_micros = 0;   // newest mtime of the directory and its entries
  int lock_files = 0;              // .writer-<rank>.lock files in it
  int64_t newest_lock_micros = 0;  // mtime (creation) of the newest of them
  std::string held_lock;           // one a live writer holds (of those past the grace); or empty
  std::string mount_point;         // a directory of another mount in it: gc leaves it alone
  bool live() const { return !held_lock.empty(); }
  // A writer may be taking its lock: see kStartingSaveGraceMicros.
  bool starting(int64_t now_micros, int64_t grace_micros = kStartingSaveGraceMicros) const {
    return now_micros - (lock_files > 0 ? newest_lock_micros : last_write_micros) < grace_micros;
  }
};

struct SaveDirListing {
  std::string dir;
  std::string latest;                        // the tag `latest` names, or empty
  std::string latest_problem;                // why `latest` cannot be read or used
  std::optional<BestPointer> best;           // absent when there is none, or it cannot be read
  std::string best_problem;                  // why `best` cannot be read
  std::vector<CheckpointEntry> checkpoints;  // by step, then tag
  std::vector<TempDirInfo> temp_dirs;
  std::vector<TempDirInfo> trash_dirs;
};

// Everything in a save directory (CheckSaveDir first). Takes no lock, removes nothing; tells a
// live save from a torn one by testing its writer locks past the starting grace (each released
// at once). `now_micros`: the wall clock (0: the Env's).
Result<SaveDirListing> ListSaveDir(io::Env* env, const std::string& dir, int64_t now_micros = 0);

// Points `best` at the committed checkpoint `tag`, with the value of `metric` read from its
// manifest's metrics; under the catalog lock. InvalidArgument when `tag` is not a committed
// checkpoint of `dir`, when the metric is missing, or when `mode` is not min or max.
Result<BestPointer> SetBestByHand(io::Env* env, const std::string& dir, const std::string& tag,
                                  const std::string& metric, const std::string& mode,
                                  uint64_t lock_wait_micros = kDefaultLockWaitMicros);

struct PruneOptions {
  bool dry_run = false;
  uint64_t lock_wait_micros = kDefaultLockWaitMicros;
  RemovalProgress progress;
};

// Catalog::ApplyRetention under the catalog lock. With keep_best and no best_metric, the metric
// and mode of the `best` pointer are used. InvalidArgument when the policy is empty (say what to
// keep), or keeps the best K with no metric and no `best` pointer to take one from.
Result<RetentionResult> Prune(io::Env* env, const std::string& dir, const RetentionPolicy& policy,
                              const PruneOptions& options);

struct GcOptions {
  int64_t older_than_micros = 3600'000'000;  // abandoned temp dirs and pointer temp files
  // How long a temp directory's writer may take to lock its lock file (see
  // kStartingSaveGraceMicros); shorter only where no save of the caller's can be starting.
  int64_t starting_grace_micros = kStartingSaveGraceMicros;
  bool temp_dirs_only = false;  // only .tmp-* directories (ReclaimAbandonedSaves)
  bool dry_run = false;
  int64_t now_micros = 0;  // wall clock, microseconds since the epoch; 0: the Env's clock
  uint64_t lock_wait_micros = kDefaultLockWaitMicros;
  RemovalProgress progress;
};

enum class GcKind : uint8_t {
  kTempDir,       // .tmp-*: a save in progress or torn
  kTrashDir,      // .trash-*: a checkpoint whose removal was cut short
  kUnreferenced,  // in a committed checkpoint, not named by its manifest
  kPointerTemp,   // latest.tmp-* / best.tmp-*: an interrupted atomic replace
  kCheckpoint,    // a checkpoint gc could not look into (its manifest cannot be read)
};
std::string_view GcKindName(GcKind kind);  // "temp", "trash", "unreferenced", ...

struct GcItem {
  GcKind kind = GcKind::kTempDir;
  std::string path;
  uint64_t bytes = 0;
  std::string reason;  // why it is removed, kept or skipped
};

struct GcReport {
  std::vector<GcItem> removed;     // or, on a dry run, would be removed
  std::vector<GcItem> kept;        // temp dirs and pointer temps that may still be in use, and
                                   // what gc does not remove (links it did not make, mounts)
  std::vector<GcItem> unreadable;  // checkpoints skipped because their manifest cannot be read
  uint64_t freed_bytes = 0;
};

// Removes, under the catalog lock: .tmp-* directories no live writer holds a lock of, that are
// not starting (kStartingSaveGraceMicros) and that nothing was written to for
// `older_than_micros`; every .trash-* directory; files of committed checkpoints that their
// manifest does not reference; and pointer temp files older than `older_than_micros`.
// Nothing outside `dir` is touched: a symbolic link is never followed, and is removed only as a
// link (an unreferenced one in a checkpoint, a .trash-* one); a .tmp-* or pointer-temp link is
// not dstrain's and is kept; a tree holding a mount point is kept, saying so.
Result<GcReport> CollectGarbage(io::Env* env, const std::string& dir, const GcOptions& options);

// What a run does at its start, before its first save (the engine's rank 0): removes the
// .tmp-* directories of saves that killed runs left, i.e. those whose writer locks no live
// process holds, with a grace of seconds instead of gc's minute (no save of this run can be
// starting yet; another job's live save holds its locks and is kept). Nothing else is touched.
// OK with an empty report when `dir` is not a save directory yet.
Result<GcReport> ReclaimAbandonedSaves(io::Env* env, const std::string& dir,
                                       uint64_t lock_wait_micros = 10'000'000);

}  // namespace ds::ckpt
