#include "ckpt/catalog.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <set>
#include <span>
#include <tuple>

#include "formats/manifest.h"
#include "io/log.h"

namespace ds::ckpt {

std::string TagForStep(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08" PRId64, step);
  return buf;
}

Status ValidateTag(std::string_view tag) {
  if (tag.empty() || tag.size() > 200 || tag.front() == '.' ||
      tag.find('/') != std::string_view::npos || tag.find('\0') != std::string_view::npos) {
    return Status::InvalidArgument(io::QuoteForMessage(tag) +
                                   " cannot be a checkpoint tag: use a plain name (no '/', not "
                                   "starting with '.', at most 200 bytes)");
  }
  return Status::OK();
}

std::optional<double> MetricValue(const std::string& metrics_json, const std::string& metric) {
  nlohmann::json j = nlohmann::json::parse(metrics_json, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains(metric) || !j[metric].is_number()) {
    return std::nullopt;
  }
  return j[metric].get<double>();
}

namespace {

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

int64_t StepFromTag(const std::string& tag) {
  int64_t step = -1;
  if (tag.rfind("step-", 0) == 0) std::sscanf(tag.c_str() + 5, "%" SCNd64, &step);
  return step;
}

using io::QuoteForMessage;

// A pointer holds a tag (`latest`) or a small JSON object (`best`): a larger file, or one that is
// not a regular file (a FIFO would block the read), is not a pointer, and is neither read whole
// nor echoed. Corruption saying so, with `fix`, the way out.
constexpr uint64_t kMaxPointerBytes = 4096;

Result<std::string> ReadPointerFile(io::Env* env, const std::string& path, const std::string& fix) {
  io::OpenOptions options;
  options.regular_only = true;
  Result<std::unique_ptr<io::File>> file = env->OpenFile(path, options);
  if (!file.ok()) {
    if (file.status().code() != StatusCode::kFailedPrecondition) return file.status();
    return Status::Corruption(file.status().message() + ": not a pointer; " + fix);
  }
  DS_ASSIGN_OR_RETURN(uint64_t size, (*file)->Size());
  if (size > kMaxPointerBytes) {
    return Status::Corruption(path + " is " + io::FormatBytes(size) +
                              ": not a pointer (one holds a checkpoint tag); " + fix);
  }
  std::string text(size, '\0');
  DS_ASSIGN_OR_RETURN(size_t n, (*file)->ReadAt(0, std::as_writable_bytes(std::span(text))));
  text.resize(n);
  return text;
}

}  // namespace

Result<std::vector<CheckpointEntry>> Catalog::List() {
  DS_ASSIGN_OR_RETURN(std::vector<std::string> names, env_->ListDir(dir_));
  std::vector<CheckpointEntry> out;
  for (const std::string& name : names) {
    if (name.empty() || name.front() == '.') continue;  // temp, trash, lock
    // A checkpoint may vanish while we look (retention, without our lock): NotFound skips it.
    const std::string path = io::JoinPath(dir_, name);
    Result<io::FileInfo> info = env_->Stat(path);
    if (!info.ok() && info.status().IsNotFound()) continue;
    if (!info.ok()) return info.status();
    if (!info->is_dir) continue;
    const std::string manifest = io::JoinPath(path, fmt::kManifestFileName);
    DS_ASSIGN_OR_RETURN(bool has_manifest, env_->Exists(manifest));
    if (!has_manifest) continue;  // not a checkpoint
    CheckpointEntry e;
    e.tag = name;
    e.path = path;
    e.step = StepFromTag(name);
    Result<fmt::Manifest> m = fmt::ReadManifest(env_, manifest);
    if (m.ok()) {
      e.step = m->info.step;
      e.created_micros = m->info.created_micros;
      e.metrics_json = m->info.metrics_json;
    } else if (m.status().IsNotFound()) {
      continue;
    } else {
      // Damaged, or unreadable for another reason (an I/O error): listed with its problem, so
      // that one bad checkpoint never stops list, prune or gc for the whole directory.
      e.problem = m.status().message();
    }
    // Bytes as removal would free them: a checkpoint linked in from elsewhere is one link, and
    // a link inside one is the link, never what it points to.
    Result<io::FileInfo> self = env_->LinkStat(path);
    if (self.ok() && self->type == io::FileType::kSymlink) {
      e.bytes = self->size;
      out.push_back(std::move(e));
      continue;
    }
    Result<std::vector<std::string>> files = env_->ListDir(path);
    if (!files.ok() && files.status().IsNotFound()) continue;
    if (!files.ok()) return files.status();
    for (const std::string& f : *files) {
      Result<io::FileInfo> fi = env_->LinkStat(io::JoinPath(path, f));
      if (fi.ok()) e.bytes += fi->size;
    }
    out.push_back(std::move(e));
  }
  std::sort(out.begin(), out.end(), [](const CheckpointEntry& a, const CheckpointEntry& b) {
    return a.step != b.step ? a.step < b.step : a.tag < b.tag;
  });
  return out;
}

Result<std::optional<std::string>> Catalog::ReadLatest() {
  Result<std::string> text =
      ReadPointerFile(env_, io::JoinPath(dir_, kLatestFile),
                      "'dsckpt list " + dir_ + "' shows the checkpoints: write one's tag into it");
  if (!text.ok()) {
    if (text.status().IsNotFound()) return std::optional<std::string>();
    return text.status();
  }
  std::string tag = Trim(*text);
  if (tag.empty()) return std::optional<std::string>();
  return std::optional<std::string>(tag);
}

Result<std::optional<BestPointer>> Catalog::ReadBest() {
  const std::string path = io::JoinPath(dir_, kBestFile);
  Result<std::string> text =
      ReadPointerFile(env_, path, "fix it with 'dsckpt best " + dir_ + " --set TAG'");
  if (!text.ok()) {
    if (text.status().IsNotFound()) return std::optional<BestPointer>();
    return text.status();
  }
  nlohmann::json j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("tag") || !j["tag"].is_string()) {
    return Status::Corruption(path +
                              " is not a best-checkpoint pointer (expected JSON with "
                              "\"tag\"); fix it with 'dsckpt best " +
                              dir_ + " --set TAG'");
  }
  BestPointer b;
  b.tag = j["tag"].get<std::string>();
  b.metric = j.value("metric", "");
  b.value = j.contains("value") && j["value"].is_number() ? j["value"].get<double>() : 0.0;
  b.mode = j.value("mode", "min");
  return std::optional<BestPointer>(b);
}

Result<std::string> Catalog::ResolveLatest(std::string* note) {
  Result<std::vector<CheckpointEntry>> listed = List();
  if (!listed.ok() && !listed.status().IsNotFound()) return listed.status();
  const std::vector<CheckpointEntry> all =
      listed.ok() ? std::move(*listed) : std::vector<CheckpointEntry>();
  // What the pointer names, and why it cannot be used as it is.
  std::string problem;
  const CheckpointEntry* named = nullptr;
  Result<std::optional<std::string>> pointer = ReadLatest();
  if (!pointer.ok()) {
    problem = "'latest' cannot be read (" + pointer.status().message() + ")";
  } else if (!pointer->has_value()) {
    problem = "there is no 'latest' pointer";
  } else {
    for (const CheckpointEntry& e : all) {
      if (e.tag == **pointer) named = &e;
    }
    if (named == nullptr) {
      problem =
          "'latest' names " + QuoteForMessage(**pointer) + ", which is not a committed checkpoint";
    }
  }
  // The most recently committed checkpoint that reads (by its manifest's creation time, then
  // step: a run resumed from an older state writes lower steps later).
  const CheckpointEntry* newest = nullptr;
  for (const CheckpointEntry& e : all) {
    if (!e.problem.empty()) continue;
    if (newest == nullptr ||
        std::tie(e.created_micros, e.step) >= std::tie(newest->created_micros, newest->step)) {
      newest = &e;
    }
  }
  if (named != nullptr) {
    // A damaged one is still what the pointer names: loading it reports the damage, and
    // --fallback goes back from there.
    if (!named->problem.empty() || newest == nullptr || newest == named ||
        newest->created_micros <= named->created_micros) {
      return named->path;
    }
    problem = "'latest' names " + named->tag + " but " + newest->tag +
              " was committed after it (the pointer's update failed: a full disk?)";
  }
  if (newest == nullptr && !all.empty()) newest = &all.back();  // all damaged: let Load say so
  if (newest == nullptr) {
    return Status::NotFound("no checkpoint to resume in " + dir_ +
                            ": it holds no committed checkpoint (" + problem + ")");
  }
  if (note != nullptr) {
    *note = problem + ": using " + newest->tag + ", the newest committed checkpoint of " + dir_;
  }
  return newest->path;
}

Result<std::string> Catalog::Resolve(const std::string& spec, std::string* note) {
  if (spec == "latest") return ResolveLatest(note);
  if (spec == "best") {
    std::string tag;
    {
      DS_ASSIGN_OR_RETURN(std::optional<BestPointer> best, ReadBest());
      if (!best) return Status::NotFound(dir_ + " has no 'best' pointer");
      tag = best->tag;
    }
    DS_RETURN_IF_ERROR(ValidateTag(tag)) << io::JoinPath(dir_, spec);
    const std::string path = io::JoinPath(dir_, tag);
    DS_ASSIGN_OR_RETURN(bool ok, env_->Exists(io::JoinPath(path, fmt::kManifestFileName)));
    if (!ok) {
      return Status::NotFound("'" + spec + "' in " + dir_ + " names " + QuoteForMessage(tag) +
                              ", which is not a committed checkpoint (removed by hand?); "
                              "'dsckpt list " +
                              dir_ + "' shows what there is");
    }
    return path;
  }
  // A path to a checkpoint directory, or a tag of this save directory.
  for (const std::string& path : {spec, io::JoinPath(dir_, spec)}) {
    DS_ASSIGN_OR_RETURN(bool ok, env_->Exists(io::JoinPath(path, fmt::kManifestFileName)));
    if (ok) return path;
  }
  return Status::NotFound("no checkpoint '" + spec + "': neither " + spec + " nor " +
                          io::JoinPath(dir_, spec) + " holds a manifest.h5");
}

Result<std::unique_ptr<io::FileLock>> Catalog::Lock(uint64_t timeout_micros) {
  DS_RETURN_IF_ERROR(env_->CreateDirs(dir_));
  return env_->LockFile(io::JoinPath(dir_, kCatalogLockFile), timeout_micros);
}

Status Catalog::SetLatest(const std::string& tag) {
  DS_RETURN_IF_ERROR(ValidateTag(tag));
  return env_->ReplaceFileAtomically(io::JoinPath(dir_, kLatestFile), tag + "\n");
}

Status Catalog::SetBest(const BestPointer& b) {
  DS_RETURN_IF_ERROR(ValidateTag(b.tag));
  nlohmann::json j = {{"tag", b.tag}, {"metric", b.metric}, {"value", b.value}, {"mode", b.mode}};
  return env_->ReplaceFileAtomically(io::JoinPath(dir_, kBestFile), j.dump() + "\n");
}

Result<bool> Catalog::OfferBest(const std::string& tag, const std::string& metric, double value,
                                const std::string& mode) {
  if (mode != "min" && mode != "max") {
    return Status::InvalidArgument("best mode '" + mode + "' must be min or max");
  }
  DS_ASSIGN_OR_RETURN(std::optional<BestPointer> cur, ReadBest());
  bool better = true;
  if (cur && cur->metric == metric && cur->mode == mode) {
    DS_ASSIGN_OR_RETURN(bool exists, env_->Exists(io::JoinPath(io::JoinPath(dir_, cur->tag),
                                                               fmt::kManifestFileName)));
    if (exists) better = mode == "min" ? value < cur->value : value > cur->value;
  }
  if (!better) return false;
  DS_RETURN_IF_ERROR(SetBest({tag, metric, value, mode}));
  return true;
}

Status RemoveTree(io::Env* env, const std::string& path, const RemovalProgress* progress) {
  // Env::RemoveAll removes a link as a link and stops at a mount point: nothing outside `path`
  // is touched, even when `path` itself is a link (a checkpoint linked in from elsewhere).
  return env->RemoveAll(path, [progress](uint64_t bytes) {
    if (progress != nullptr && progress->removed) progress->removed(bytes);
  });
}

Status Catalog::RemoveCheckpoint(const CheckpointEntry& e, const RemovalProgress* progress) {
  // Step 1: rename out of the namespace of checkpoints (atomic), and make that durable.
  const std::string trash = io::JoinPath(dir_, kTrashPrefix + e.tag + "-" + env_->NewNonce());
  DS_RETURN_IF_ERROR(env_->Rename(e.path, trash)) << "removing checkpoint " << e.tag;
  DS_RETURN_IF_ERROR(env_->SyncDir(dir_));
  // Step 2: delete. A crash here leaves a .trash-* directory for gc.
  DS_RETURN_IF_ERROR(RemoveTree(env_, trash, progress)) << "removing checkpoint " << e.tag;
  return env_->SyncDir(dir_);
}

Result<RetentionResult> Catalog::ApplyRetention(const RetentionPolicy& p, bool dry_run,
                                                const RemovalProgress* progress) {
  RetentionResult r;
  DS_ASSIGN_OR_RETURN(std::vector<CheckpointEntry> all, List());
  if (!p.any()) {
    r.kept = all;
    return r;
  }
  DS_ASSIGN_OR_RETURN(std::optional<std::string> latest, ReadLatest());
  DS_ASSIGN_OR_RETURN(std::optional<BestPointer> best, ReadBest());
  std::set<std::string> protect;  // never removed
  if (latest) protect.insert(*latest);
  if (best) protect.insert(best->tag);
  protect.insert(p.protect_tags.begin(), p.protect_tags.end());
  std::set<std::string> keep = protect;
  const size_t n = all.size();
  if (p.keep_last > 0) {
    for (size_t i = n > p.keep_last ? n - p.keep_last : 0; i < n; ++i) keep.insert(all[i].tag);
  }
  if (p.keep_every > 0) {
    for (const auto& e : all) {
      if (e.step >= 0 && e.step % p.keep_every == 0) keep.insert(e.tag);
    }
  }
  if (p.keep_best > 0 && !p.best_metric.empty()) {
    std::vector<std::pair<double, std::string>> scored;
    for (const auto& e : all) {
      if (auto v = MetricValue(e.metrics_json, p.best_metric)) scored.push_back({*v, e.tag});
    }
    std::sort(scored.begin(), scored.end());
    if (p.best_mode == "max") std::reverse(scored.begin(), scored.end());
    for (size_t i = 0; i < scored.size() && i < p.keep_best; ++i) keep.insert(scored[i].second);
  }
  if (p.keep_last == 0 && p.keep_every == 0 && p.keep_best == 0) {
    for (const auto& e : all) keep.insert(e.tag);  // only a size cap was given
  }
  // A size cap removes the oldest kept checkpoints that are not protected.
  uint64_t total = 0;
  for (const auto& e : all) {
    if (keep.count(e.tag)) total += e.bytes;
  }
  for (size_t i = 0; p.max_bytes > 0 && total > p.max_bytes && i < n; ++i) {
    if (keep.count(all[i].tag) && !protect.count(all[i].tag)) {
      keep.erase(all[i].tag);
      total -= all[i].bytes;
    }
  }
  for (const auto& e : all) {
    if (keep.count(e.tag)) {
      r.kept.push_back(e);
    } else {
      r.freed_bytes += e.bytes;
      r.removed.push_back(e);
    }
  }
  if (!dry_run) {
    if (progress != nullptr && progress->start) progress->start(r.freed_bytes);
    for (const auto& e : r.removed) DS_RETURN_IF_ERROR(RemoveCheckpoint(e, progress));
  }
  if (!dry_run && !r.removed.empty()) {
    io::LogInfo("retention in " + dir_ + ": removed " + std::to_string(r.removed.size()) +
                " checkpoint(s), freed " + io::FormatBytes(r.freed_bytes));
  }
  return r;
}

}  // namespace ds::ckpt
