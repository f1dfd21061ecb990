#include "ckpt/gc.h"

#include <algorithm>
#include <cstdio>
#include <set>

#include "formats/manifest.h"
#include "io/log.h"

namespace ds::ckpt {
namespace {

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

// ".writer-<rank>.lock": held by a rank while it writes into a temp directory.
bool IsWriterLockName(std::string_view name) {
  return StartsWith(name, ".writer-") && name.size() > 13 &&
         name.substr(name.size() - 5) == ".lock";
}

// "latest.tmp-<nonce>" / "best.tmp-<nonce>": left by an Env::ReplaceFileAtomically cut short.
bool IsPointerTempName(std::string_view name) {
  return StartsWith(name, std::string(kLatestFile) + ".tmp-") ||
         StartsWith(name, std::string(kBestFile) + ".tmp-");
}

// "42 s", "7 min", "3.5 h", "2.0 d".
std::string FormatAge(int64_t micros) {
  const double s = static_cast<double>(std::max<int64_t>(micros, 0)) / 1e6;
  char b[32];
  if (s < 120) {
    std::snprintf(b, sizeof b, "%.0f s", s);
  } else if (s < 7200) {
    std::snprintf(b, sizeof b, "%.0f min", s / 60);
  } else if (s < 172800) {
    std::snprintf(b, sizeof b, "%.1f h", s / 3600);
  } else {
    std::snprintf(b, sizeof b, "%.1f d", s / 86400);
  }
  return b;
}

// What removing a tree would free, as Env::RemoveAll removes it.
struct TreeSize {
  uint64_t bytes = 0;       // every file under it; a link counts as itself, never its target
  std::string mount_point;  // the first directory of another mount met (not entered), or empty
};

// Adds `path` (which LinkStat described as `info`) and what is under it to `size`, never
// following a link nor entering a directory of another mount than `device` (the save
// directory's). What vanishes meanwhile counts as nothing.
void MeasureTree(io::Env* env, const std::string& path, const io::FileInfo& info, uint64_t device,
                 TreeSize* size) {
  if (info.type != io::FileType::kDirectory) {
    size->bytes += info.size;
    return;
  }
  if (info.device != device || info.mount_root) {
    if (size->mount_point.empty()) size->mount_point = path;
    return;
  }
  Result<std::vector<std::string>> names = env->ListDir(path);
  for (const std::string& n : names.ok() ? *names : std::vector<std::string>()) {
    const std::string child = io::JoinPath(path, n);
    Result<io::FileInfo> child_info = env->LinkStat(child);
    if (child_info.ok()) MeasureTree(env, child, *child_info, device, size);
  }
}

TreeSize MeasureTree(io::Env* env, const std::string& path, uint64_t device) {
  TreeSize size;
  Result<io::FileInfo> info = env->LinkStat(path);
  if (info.ok()) MeasureTree(env, path, *info, device, &size);
  return size;
}

// Why gc leaves alone a tree that holds a mount point.
std::string MountPointReason(const std::string& mount_point) {
  return mount_point +
         " is a mount point (another filesystem): gc does not remove what is under it; "
         "unmount it first";
}

// Why gc leaves alone a link with a name dstrain gives its own files and directories.
std::string ForeignLinkReason(const io::FileInfo& info) {
  return "a symbolic link to " + io::QuoteForMessage(info.link_target, 200) +
         ": dstrain never makes one, so gc leaves it (and its target) alone; remove the link by "
         "hand if it is not wanted";
}

// True when another holder has the lock at `path`; our test lock is released at once.
Result<bool> LockIsHeld(io::Env* env, const std::string& path) {
  Result<std::unique_ptr<io::FileLock>> lock = env->TryLockFile(path);
  if (lock.ok()) return false;
  if (lock.status().code() == StatusCode::kUnavailable) return true;
  return lock.status();
}

// Size, last write and (when `now` is not 0) writer locks of a .tmp-* or .trash-* directory
// `name` of `dir`, whose LinkStat is `info` (a directory) and which lives on `device`; only lock
// files past the starting grace at `now` are tested. NotFound when it vanished meanwhile
// (committed, or removed by a failed save).
Result<TempDirInfo> ProbeTempDir(io::Env* env, const std::string& dir, const std::string& name,
                                 const io::FileInfo& info, uint64_t device, int64_t now,
                                 int64_t grace = kStartingSaveGraceMicros) {
  TempDirInfo t;
  t.name = name;
  t.path = io::JoinPath(dir, name);
  t.last_write_micros = info.mtime_micros;
  TreeSize size;
  if (info.device != device || info.mount_root) size.mount_point = t.path;
  DS_ASSIGN_OR_RETURN(std::vector<std::string> names, env->ListDir(t.path));
  std::vector<std::string> settled;  // lock files old enough to test
  for (const std::string& n : names) {
    const std::string p = io::JoinPath(t.path, n);
    Result<io::FileInfo> fi = env->LinkStat(p);
    if (!fi.ok()) continue;  // removed meanwhile
    t.last_write_micros = std::max(t.last_write_micros, fi->mtime_micros);
    MeasureTree(env, p, *fi, device, &size);
    if (now == 0 || !IsWriterLockName(n) || fi->type != io::FileType::kRegular) continue;
    ++t.lock_files;
    t.newest_lock_micros = std::max(t.newest_lock_micros, fi->mtime_micros);
    if (now - fi->mtime_micros >= grace) settled.push_back(p);
  }
  for (const std::string& p : settled) {
    Result<bool> held = LockIsHeld(env, p);
    if (!held.ok() && !held.status().IsNotFound()) return held.status();
    if (held.ok() && *held) {
      t.held_lock = io::BaseName(p);
      break;
    }
  }
  t.bytes = size.bytes;
  t.mount_point = size.mount_point;
  return t;
}

// Whether gc removes the temp directory `t`, and why.
GcItem DecideTempDir(const TempDirInfo& t, int64_t now, int64_t older_than, int64_t grace,
                     bool* remove) {
  GcItem item{GcKind::kTempDir, t.path, t.bytes, ""};
  const std::string written = "last written " + FormatAge(now - t.last_write_micros) + " ago";
  *remove = false;
  if (!t.mount_point.empty()) {
    item.reason = MountPointReason(t.mount_point);
  } else if (t.live()) {
    item.reason = "a save in progress: a live writer holds " + t.held_lock;
  } else if (t.starting(now, grace)) {
    item.reason = t.lock_files > 0 ? "a save may be starting: its newest lock file is " +
                                         FormatAge(now - t.newest_lock_micros) + " old"
                                   : "a save may be starting: no writer lock file yet, " + written;
    item.reason += " (lock files are tested once " + FormatAge(grace) + " old)";
  } else if (now - t.last_write_micros < older_than) {
    item.reason =
        "no live writer, but " + written + " (younger than " + FormatAge(older_than) + ")";
  } else {
    *remove = true;
    item.reason = std::string(t.lock_files > 0 ? "no live writer holds its lock files"
                                               : "no writer lock files") +
                  ", " + written + ": abandoned";
  }
  return item;
}

// Entries of committed checkpoint `name` that its manifest does not reference (in `removed`,
// or in `kept` when one holds a mount point), or (in `unreadable`) the checkpoint itself when
// its manifest cannot be read. `device`: the save directory's filesystem.
Status FindUnreferenced(io::Env* env, const std::string& dir, const std::string& name,
                        uint64_t device, GcReport* report) {
  const std::string path = io::JoinPath(dir, name);
  Result<fmt::Manifest> m = fmt::ReadManifest(env, io::JoinPath(path, fmt::kManifestFileName));
  if (!m.ok()) {
    if (m.status().IsNotFound()) return Status::OK();  // not a checkpoint (any more)
    report->unreadable.push_back(
        {GcKind::kCheckpoint, path, MeasureTree(env, path, device).bytes,
         m.status().message() + " (gc leaves it alone; 'dsckpt verify' tells more)"});
    return Status::OK();
  }
  std::set<std::string> referenced = {fmt::kManifestFileName};
  for (const fmt::FileMeta& f : m->files) referenced.insert(f.name);
  Result<std::vector<std::string>> entries = env->ListDir(path);
  if (!entries.ok()) return entries.status().IsNotFound() ? Status::OK() : entries.status();
  const std::string why = "not referenced by the manifest of checkpoint " + name;
  for (const std::string& e : *entries) {
    if (referenced.count(e)) continue;
    const std::string p = io::JoinPath(path, e);
    Result<io::FileInfo> info = env->LinkStat(p);
    if (!info.ok() && info.status().IsNotFound()) continue;  // gone meanwhile
    if (!info.ok()) return info.status();
    if (info->type == io::FileType::kSymlink) {
      report->removed.push_back({GcKind::kUnreferenced, p, info->size,
                                 "a symbolic link to " +
                                     io::QuoteForMessage(info->link_target, 200) + ", " + why +
                                     ": removes the link only, not its target"});
      continue;
    }
    TreeSize size;
    MeasureTree(env, p, *info, device, &size);
    if (!size.mount_point.empty()) {
      report->kept.push_back({GcKind::kUnreferenced, p, size.bytes,
                              why + ", but " + MountPointReason(size.mount_point)});
      continue;
    }
    report->removed.push_back({GcKind::kUnreferenced, p, size.bytes, why});
  }
  return Status::OK();
}

// A .tmp-* or .trash-* directory: removed, or kept saying why.
Status PlanTempDir(io::Env* env, const std::string& dir, const std::string& name,
                   const io::FileInfo& info, uint64_t device, int64_t now, const GcOptions& o,
                   GcReport* r) {
  const bool temp = StartsWith(name, kTempPrefix);
  Result<TempDirInfo> t =
      ProbeTempDir(env, dir, name, info, device, temp ? now : 0, o.starting_grace_micros);
  if (!t.ok()) return t.status().IsNotFound() ? Status::OK() : t.status();
  if (temp) {
    bool remove = false;
    GcItem item = DecideTempDir(*t, now, o.older_than_micros, o.starting_grace_micros, &remove);
    (remove ? r->removed : r->kept).push_back(std::move(item));
  } else if (!t->mount_point.empty()) {
    r->kept.push_back({GcKind::kTrashDir, t->path, t->bytes, MountPointReason(t->mount_point)});
  } else {
    r->removed.push_back(
        {GcKind::kTrashDir, t->path, t->bytes, "a checkpoint whose removal was cut short"});
  }
  return Status::OK();
}

// Sorts everything in `dir` into removed / kept / unreadable. Nothing is followed through a
// symbolic link: a link is at most removed as a link.
Status PlanGc(io::Env* env, const std::string& dir, int64_t now, const GcOptions& o, GcReport* r) {
  const int64_t older_than = o.older_than_micros;
  DS_ASSIGN_OR_RETURN(io::FileInfo dir_info, env->Stat(dir));
  DS_ASSIGN_OR_RETURN(std::vector<std::string> names, env->ListDir(dir));
  for (const std::string& name : names) {
    const std::string path = io::JoinPath(dir, name);
    Result<io::FileInfo> info = env->LinkStat(path);
    if (!info.ok() && info.status().IsNotFound()) continue;  // gone meanwhile
    if (!info.ok()) return info.status();
    const bool temp = StartsWith(name, kTempPrefix), trash = StartsWith(name, kTrashPrefix);
    const bool link = info->type == io::FileType::kSymlink;
    if (o.temp_dirs_only && !(temp && info->is_dir)) continue;
    if (trash && link) {
      // Prune renames a checkpoint that is a link (to a directory elsewhere) as it is.
      r->removed.push_back({GcKind::kTrashDir, path, info->size,
                            "a symbolic link to " + io::QuoteForMessage(info->link_target, 200) +
                                " (a linked checkpoint whose removal was cut short): removes the "
                                "link only, not its target"});
    } else if (temp && link) {
      r->kept.push_back({GcKind::kTempDir, path, info->size, ForeignLinkReason(*info)});
    } else if ((temp || trash) && info->is_dir) {
      DS_RETURN_IF_ERROR(PlanTempDir(env, dir, name, *info, dir_info.device, now, o, r));
    } else if (IsPointerTempName(name) && link) {
      r->kept.push_back({GcKind::kPointerTemp, path, info->size, ForeignLinkReason(*info)});
    } else if (IsPointerTempName(name) && info->type == io::FileType::kRegular) {
      const int64_t age = now - info->mtime_micros;
      const bool remove = age >= older_than;
      GcItem item{GcKind::kPointerTemp, path, info->size,
                  "an interrupted pointer update, last written " + FormatAge(age) + " ago" +
                      (remove ? "" : " (younger than " + FormatAge(older_than) + ")")};
      (remove ? r->removed : r->kept).push_back(std::move(item));
    } else if (info->is_dir && name.front() != '.') {
      // A checkpoint linked in from elsewhere is a link here: gc does not look into it.
      DS_RETURN_IF_ERROR(FindUnreferenced(env, dir, name, dir_info.device, r));
    }
  }
  for (const GcItem& item : r->removed) r->freed_bytes += item.bytes;
  return Status::OK();
}

}  // namespace

std::string_view GcKindName(GcKind kind) {
  switch (kind) {
    case GcKind::kTempDir: return "temp";
    case GcKind::kTrashDir: return "trash";
    case GcKind::kUnreferenced: return "unreferenced";
    case GcKind::kPointerTemp: return "pointer-temp";
    case GcKind::kCheckpoint: return "checkpoint";
  }
  return "?";
}

Status CheckSaveDir(io::Env* env, const std::string& dir) {
  const std::string expected =
      "expected a save directory (a run's checkpoint.save_dir, holding step-* checkpoints and "
      "'latest')";
  Result<io::FileInfo> info = env->Stat(dir);
  if (!info.ok() && info.status().IsNotFound()) {
    return Status::NotFound(dir + " does not exist; " + expected);
  }
  if (!info.ok()) return info.status();
  if (!info->is_dir) return Status::InvalidArgument(dir + " is a file; " + expected);
  DS_ASSIGN_OR_RETURN(bool is_checkpoint, env->Exists(io::JoinPath(dir, fmt::kManifestFileName)));
  if (is_checkpoint) {
    return Status::InvalidArgument(dir +
                                   " is a checkpoint, not a save directory: use its "
                                   "parent, " +
                                   io::DirName(dir));
  }
  DS_ASSIGN_OR_RETURN(std::vector<std::string> names, env->ListDir(dir));
  for (const std::string& name : names) {
    if (name == kLatestFile || name == kBestFile || StartsWith(name, kTempPrefix) ||
        StartsWith(name, kTrashPrefix)) {
      return Status::OK();
    }
    if (name.front() == '.') continue;
    // Exists is false for a file's "child" and for what vanished meanwhile.
    const std::string manifest = io::JoinPath(io::JoinPath(dir, name), fmt::kManifestFileName);
    DS_ASSIGN_OR_RETURN(bool has_manifest, env->Exists(manifest));
    if (has_manifest) return Status::OK();
  }
  return Status::InvalidArgument(dir +
                                 " is not a save directory: it holds no checkpoint "
                                 "(<tag>/manifest.h5), no 'latest' pointer and no save in "
                                 "progress (.tmp-*); point at a run's checkpoint.save_dir");
}

Result<std::unique_ptr<io::FileLock>> LockSaveDir(Catalog& catalog, uint64_t wait_micros) {
  Result<std::unique_ptr<io::FileLock>> lock = catalog.Lock(wait_micros);
  if (!lock.ok() && lock.status().code() == StatusCode::kUnavailable) {
    return Status::Unavailable(catalog.dir() +
                               " is busy: another save, prune or gc has held its catalog lock (" +
                               io::JoinPath(catalog.dir(), kCatalogLockFile) + ") for more than " +
                               FormatAge(static_cast<int64_t>(wait_micros)) + "; try again later");
  }
  return lock;
}

Result<SaveDirListing> ListSaveDir(io::Env* env, const std::string& dir, int64_t now_micros) {
  DS_RETURN_IF_ERROR(CheckSaveDir(env, dir));
  SaveDirListing l;
  l.dir = dir;
  Catalog catalog(env, dir);
  DS_ASSIGN_OR_RETURN(l.checkpoints, catalog.List());
  Result<std::optional<std::string>> latest = catalog.ReadLatest();
  if (latest.ok() && latest->has_value()) {
    Status valid = ValidateTag(**latest);
    if (valid.ok()) l.latest = **latest;
    if (!valid.ok()) l.latest_problem = "latest: " + valid.message();
  } else if (!latest.ok() && latest.status().IsCorruption()) {
    l.latest_problem = latest.status().message();
  } else if (!latest.ok()) {
    return latest.status();
  }
  Result<std::optional<BestPointer>> best = catalog.ReadBest();
  if (best.ok()) {
    l.best = *best;
  } else if (best.status().IsCorruption()) {
    l.best_problem = best.status().message();
  } else {
    return best.status();
  }
  DS_ASSIGN_OR_RETURN(io::FileInfo dir_info, env->Stat(dir));
  DS_ASSIGN_OR_RETURN(std::vector<std::string> names, env->ListDir(dir));
  const int64_t now = now_micros != 0 ? now_micros : env->WallTimeMicros();
  for (const std::string& name : names) {
    const bool temp = StartsWith(name, kTempPrefix), trash = StartsWith(name, kTrashPrefix);
    if (!temp && !trash) continue;
    Result<io::FileInfo> info = env->LinkStat(io::JoinPath(dir, name));
    if (!info.ok() && info.status().IsNotFound()) continue;  // gone meanwhile
    if (!info.ok()) return info.status();
    if (!info->is_dir) continue;  // not ours: dstrain makes directories of these names
    Result<TempDirInfo> t = ProbeTempDir(env, dir, name, *info, dir_info.device, temp ? now : 0);
    if (!t.ok() && t.status().IsNotFound()) continue;  // committed or removed meanwhile
    if (!t.ok()) return t.status();
    (temp ? l.temp_dirs : l.trash_dirs).push_back(std::move(*t));
  }
  return l;
}

Result<BestPointer> SetBestByHand(io::Env* env, const std::string& dir, const std::string& tag,
                                  const std::string& metric, const std::string& mode,
                                  uint64_t lock_wait_micros) {
  DS_RETURN_IF_ERROR(CheckSaveDir(env, dir));
  if (mode != "min" && mode != "max") {
    return Status::InvalidArgument("best mode '" + mode + "' must be min or max");
  }
  DS_RETURN_IF_ERROR(ValidateTag(tag));
  Catalog catalog(env, dir);
  DS_ASSIGN_OR_RETURN(std::unique_ptr<io::FileLock> lock, LockSaveDir(catalog, lock_wait_micros));
  const std::string manifest = io::JoinPath(io::JoinPath(dir, tag), fmt::kManifestFileName);
  DS_ASSIGN_OR_RETURN(bool committed, env->Exists(manifest));
  if (!committed) {
    return Status::InvalidArgument("'" + tag + "' is not a committed checkpoint of " + dir +
                                   " (no " + manifest + "); 'dsckpt list " + dir +
                                   "' shows the tags");
  }
  DS_ASSIGN_OR_RETURN(fmt::Manifest m, fmt::ReadManifest(env, manifest));
  std::optional<double> value = MetricValue(m.info.metrics_json, metric);
  if (!value) {
    return Status::InvalidArgument("checkpoint " + tag + " has no numeric metric '" + metric +
                                   "' in its metrics " + m.info.metrics_json +
                                   ": name one of those");
  }
  BestPointer best{tag, metric, *value, mode};
  DS_RETURN_IF_ERROR(catalog.SetBest(best));
  return best;
}

Result<RetentionResult> Prune(io::Env* env, const std::string& dir, const RetentionPolicy& policy,
                              const PruneOptions& options) {
  DS_RETURN_IF_ERROR(CheckSaveDir(env, dir));
  if (!policy.any()) {
    return Status::InvalidArgument(
        "no retention policy: say what to keep (the last N, the best "
        "K, every S steps, or a size cap)");
  }
  Catalog catalog(env, dir);
  DS_ASSIGN_OR_RETURN(std::unique_ptr<io::FileLock> lock,
                      LockSaveDir(catalog, options.lock_wait_micros));
  RetentionPolicy p = policy;
  if (p.keep_best > 0 && p.best_metric.empty()) {
    DS_ASSIGN_OR_RETURN(std::optional<BestPointer> best, catalog.ReadBest());
    if (!best || best->metric.empty()) {
      return Status::InvalidArgument("keeping the best " + std::to_string(p.keep_best) +
                                     " needs a metric, and " + dir +
                                     " has no 'best' pointer to take one from");
    }
    p.best_metric = best->metric;
    p.best_mode = best->mode;
  }
  if (p.best_mode != "min" && p.best_mode != "max") {
    return Status::InvalidArgument("best mode '" + p.best_mode + "' must be min or max");
  }
  return catalog.ApplyRetention(p, options.dry_run, &options.progress);
}

Result<GcReport> CollectGarbage(io::Env* env, const std::string& dir, const GcOptions& options) {
  DS_RETURN_IF_ERROR(CheckSaveDir(env, dir));
  Catalog catalog(env, dir);
  DS_ASSIGN_OR_RETURN(std::unique_ptr<io::FileLock> lock,
                      LockSaveDir(catalog, options.lock_wait_micros));
  const int64_t now = options.now_micros != 0 ? options.now_micros : env->WallTimeMicros();
  GcReport r;
  DS_RETURN_IF_ERROR(PlanGc(env, dir, now, options, &r));
  if (options.dry_run || r.removed.empty()) return r;
  if (options.progress.start) options.progress.start(r.freed_bytes);
  std::set<std::string> parents;  // directories whose entries changed
  for (const GcItem& item : r.removed) {
    DS_RETURN_IF_ERROR(RemoveTree(env, item.path, &options.progress))
        << "gc removing " << item.path;
    parents.insert(io::DirName(item.path));
  }
  for (const std::string& p : parents) DS_RETURN_IF_ERROR(env->SyncDir(p));
  return r;
}

Result<GcReport> ReclaimAbandonedSaves(io::Env* env, const std::string& dir,
                                       uint64_t lock_wait_micros) {
  if (!CheckSaveDir(env, dir).ok()) return GcReport{};  // nothing saved there yet
  GcOptions o;
  o.older_than_micros = 0;
  // The instant between a writer creating its lock file and locking it: lock files older than
  // this are tested, and a lock no process holds belongs to a save that died.
  o.starting_grace_micros = 5'000'000;
  o.temp_dirs_only = true;
  o.lock_wait_micros = lock_wait_micros;
  return CollectGarbage(env, dir, o);
}

}  // namespace ds::ckpt
