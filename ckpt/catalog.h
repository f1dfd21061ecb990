// Catalog: the committed checkpoints of a save directory and its pointers. Lists checkpoints
// (directories holding a manifest; never .tmp-* ones), resolves `latest`, `best`, a tag or a
// path, moves the pointers atomically, and applies retention. Everything that changes a
// pointer or deletes takes the catalog lock (<save_dir>/.catalog.lock), so prune and gc can
// run from cron beside a live training job.
// Thread safety: a Catalog is a value over an Env; concurrent use is serialised by the lock.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "io/env.h"

namespace ds::ckpt {

inline constexpr char kLatestFile[] = "latest";
inline constexpr char kBestFile[] = "best";
inline constexpr char kCatalogLockFile[] = ".catalog.lock";
inline constexpr char kTempPrefix[] = ".tmp-";
inline constexpr char kTrashPrefix[] = ".trash-";

// "step-00001000" (at least 8 digits).
std::string TagForStep(int64_t step);
// A tag is a plain directory name: non-empty, no '/', no NUL, not starting with '.', at most
// 200 bytes. InvalidArgument naming the tag otherwise.
Status ValidateTag(std::string_view tag);

struct CheckpointEntry {
  std::string tag;
  std::string path;
  int64_t step = 0;
  int64_t created_micros = 0;
  uint64_t bytes = 0;  // on disk: shard files + manifest
  std::string metrics_json = "{}";
  std::string problem;  // why its manifest cannot be read; empty when it can
};

struct BestPointer {
  std::string tag;
  std::string metric;
  double value = 0;
  std::string mode;  // "min" or "max"
};

struct RetentionPolicy {
  uint32_t keep_last = 0;   // newest N by step (0: no limit from this rule)
  uint32_t keep_best = 0;   // best K by `best_metric`
  int64_t keep_every = 0;   // every checkpoint whose step is a multiple of this
  uint64_t max_bytes = 0;   // total size cap (0: none); the oldest unprotected go first
  std::string best_metric;  // e.g. "eval_loss"
  std::string best_mode = "min";
  // Never removed, whatever the rules say: a run protects the checkpoints that are newer than
  // the one it resumed from (or, started fresh, every one there was), so that a run started
  // from an older state never deletes a newer one it did not write.
  std::vector<std::string> protect_tags;
  bool any() const { return keep_last || keep_best || keep_every || max_bytes; }
};

// Progress of a removal, for progress bars: `start` once with the bytes about to be removed,
// then `removed` after each file is deleted. Either may be empty.
struct RemovalProgress {
  std::function<void(uint64_t total_bytes)> start;
  std::function<void(uint64_t bytes)> removed;
};

struct RetentionResult {
  std::vector<CheckpointEntry> removed;  // or, on a dry run, would be removed
  std::vector<CheckpointEntry> kept;
  uint64_t freed_bytes = 0;
};

class Catalog {
 public:
  Catalog(io::Env* env, std::string save_dir) : env_(env), dir_(std::move(save_dir)) {}

  const std::string& dir() const { return dir_; }

  // Committed checkpoints, by step then tag. A manifest that cannot be read still lists the
  // directory (step from its tag when it has one) so tools can report it.
  Result<std::vector<CheckpointEntry>> List();
  Result<std::optional<std::string>> ReadLatest();
  Result<std::optional<BestPointer>> ReadBest();

  // "latest", "best", a tag of this directory, or a path to a checkpoint directory -> its path.
  // Errors say what was looked for and where. "latest" is the newest committed checkpoint:
  // what the `latest` pointer names, unless the pointer is missing, unreadable, names no
  // committed checkpoint, or a checkpoint was committed after the one it names (its update
  // failed: a full disk after the commit); then the most recently committed one that reads,
  // and `note` (when given) says why. NotFound only when there is no committed checkpoint.
  Result<std::string> Resolve(const std::string& spec, std::string* note = nullptr);

  // Takes the catalog lock (waiting up to `timeout_micros`).
  Result<std::unique_ptr<io::FileLock>> Lock(uint64_t timeout_micros);

  // Pointer updates; the caller holds the lock. Each replaces the file atomically and durably.
  Status SetLatest(const std::string& tag);
  // Sets `best` to `tag` if there is none, if the current one no longer exists, or if `value`
  // beats it in `mode`; returns whether it moved.
  Result<bool> OfferBest(const std::string& tag, const std::string& metric, double value,
                         const std::string& mode);
  Status SetBest(const BestPointer& best);

  // Decides which checkpoints the policy keeps; `latest` and `best` are always kept. Removes the
  // others unless `dry_run` (the caller holds the lock). Removal renames a checkpoint to
  // .trash-<tag>-<nonce> first (atomic: it stops being a checkpoint at once), then deletes it.
  Result<RetentionResult> ApplyRetention(const RetentionPolicy& policy, bool dry_run,
                                         const RemovalProgress* progress = nullptr);

  // Removes one checkpoint as retention does (the caller holds the lock).
  Status RemoveCheckpoint(const CheckpointEntry& entry, const RemovalProgress* progress = nullptr);

 private:
  Result<std::string> ResolveLatest(std::string* note);

  io::Env* env_;
  std::string dir_;
};

// rm -rf `path`, telling `progress->removed` the bytes of each file deleted; a missing path is
// fine. Never leaves `path`: a link is removed as a link, and a mount point below it is refused
// (Env::RemoveAll).
Status RemoveTree(io::Env* env, const std::string& path, const RemovalProgress* progress);

// The value of `metric` in a metrics JSON object, if present and numeric.
std::optional<double> MetricValue(const std::string& metrics_json, const std::string& metric);

}  // namespace ds::ckpt
