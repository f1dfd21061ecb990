// dsckpt list / best / prune / gc: the save directory's checkpoints and pointers, retention and
// garbage collection. prune and gc take the catalog lock and never touch `latest`, `best` or a
// save in progress, so cron may run them beside a live training job (docs/operations.md).
#include <algorithm>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "ckpt/gc.h"
#include "cli/dsckpt/commands.h"
#include "io/progress.h"
#include "io/units.h"

namespace ds::cli {
namespace {

using nlohmann::json;

io::Env* Env() { return io::Env::Default(); }

// Errors exit 2; a busy save directory also says how to wait longer.
int Fail(const Status& s) {
  if (s.code() == StatusCode::kUnavailable) {
    return ReportError(Status::Unavailable(s.message() + " (or wait longer: --lock-wait 10m)"));
  }
  return ReportError(s);
}

Result<uint64_t> LockWaitMicros(const std::string& text) {
  DS_ASSIGN_OR_RETURN(uint64_t seconds, io::ParseDurationSeconds(text));
  return seconds * 1000000;
}

json Metrics(const std::string& metrics_json) {
  json m = json::parse(metrics_json, nullptr, false);
  return m.is_discarded() ? json(metrics_json) : m;
}

json BestJson(const ckpt::BestPointer& b) {
  return {{"tag", b.tag}, {"metric", b.metric}, {"value", b.value}, {"mode", b.mode}};
}

std::string BestText(const ckpt::BestPointer& b) {
  char v[32];
  std::snprintf(v, sizeof v, "%g", b.value);
  return b.tag + " (" + b.metric + " = " + v + ", " + b.mode + ")";
}

// Removals report their bytes to a progress bar, shown once they take more than a second.
struct RemovalBar {
  std::string label;
  std::unique_ptr<io::Progress> bar;
  ckpt::RemovalProgress Hooks() {
    return {[this](uint64_t total) { bar = std::make_unique<io::Progress>(label, total); },
            [this](uint64_t bytes) {
              if (bar) bar->Add(bytes);
            }};
  }
};

// ---- list

json EntryJson(const ckpt::CheckpointEntry& e, const ckpt::SaveDirListing& l) {
  return {{"tag", e.tag},
          {"step", e.step},
          {"path", e.path},
          {"created_micros", e.created_micros},
          {"created", e.created_micros ? io::FormatTimeUtc(e.created_micros) : ""},
          {"bytes", e.bytes},
          {"metrics", Metrics(e.metrics_json)},
          {"latest", e.tag == l.latest},
          {"best", l.best && e.tag == l.best->tag},
          {"problem", e.problem}};
}

json TempJson(const ckpt::TempDirInfo& t, int64_t now) {
  return {{"name", t.name},           {"path", t.path},
          {"bytes", t.bytes},         {"last_write_micros", t.last_write_micros},
          {"live", t.live()},         {"starting", !t.live() && t.starting(now)},
          {"held_lock", t.held_lock}, {"lock_files", t.lock_files}};
}

void PrintListing(const ckpt::SaveDirListing& l, int64_t now) {
  uint64_t total = 0;
  for (const auto& e : l.checkpoints) total += e.bytes;
  std::printf("save directory %s: %zu checkpoint(s), %s; latest %s, best %s\n", l.dir.c_str(),
              l.checkpoints.size(), io::FormatBytes(total).c_str(),
              l.latest.empty() ? "(none)" : l.latest.c_str(),
              l.best ? BestText(*l.best).c_str() : "(none)");
  if (!l.latest_problem.empty()) {
    std::printf("  latest: UNREADABLE: %s\n", l.latest_problem.c_str());
  }
  if (!l.best_problem.empty()) std::printf("  best: UNREADABLE: %s\n", l.best_problem.c_str());
  if (!l.checkpoints.empty()) {
    std::printf("  %-22s %10s  %-23s %10s  %-11s %s\n", "TAG", "STEP", "CREATED", "SIZE", "POINTER",
                "METRICS");
  }
  for (const auto& e : l.checkpoints) {
    std::string mark = e.tag == l.latest ? "latest" : "";
    if (l.best && e.tag == l.best->tag) mark += mark.empty() ? "best" : ",best";
    std::string created = e.created_micros ? io::FormatTimeUtc(e.created_micros) : "?";
    std::string metrics = e.problem.empty() ? e.metrics_json : "DAMAGED: " + e.problem;
    std::printf("  %-22s %10lld  %-23s %10s  %-11s %s\n", e.tag.c_str(),
                static_cast<long long>(e.step), created.c_str(), io::FormatBytes(e.bytes).c_str(),
                mark.c_str(), metrics.c_str());
  }
  if (!l.latest.empty() && std::none_of(l.checkpoints.begin(), l.checkpoints.end(),
                                        [&](const auto& e) { return e.tag == l.latest; })) {
    std::printf("  WARNING: 'latest' names %s, which is not a committed checkpoint\n",
                l.latest.c_str());
  }
  for (const auto& t : l.temp_dirs) {
    const double ago = static_cast<double>(now - t.last_write_micros) / 1e6;
    std::string state = t.live()          ? "save in progress"
                        : t.starting(now) ? "save starting (lock files too fresh to test)"
                                          : "torn (no live writer; 'dsckpt gc' removes it)";
    std::printf("  %s: %s, %s, last written %.0f s ago%s\n", state.c_str(), t.name.c_str(),
                io::FormatBytes(t.bytes).c_str(), ago,
                t.live() ? (", a writer holds " + t.held_lock).c_str() : "");
  }
  for (const auto& t : l.trash_dirs) {
    std::printf("  leftover of a removal: %s, %s ('dsckpt gc' removes it)\n", t.name.c_str(),
                io::FormatBytes(t.bytes).c_str());
  }
}

int RunList(const std::string& dir, bool as_json) {
  const int64_t now = Env()->WallTimeMicros();
  Result<ckpt::SaveDirListing> l = ckpt::ListSaveDir(Env(), dir, now);
  if (!l.ok()) return Fail(l.status());
  if (!as_json) {
    PrintListing(*l, now);
    return kExitOk;
  }
  uint64_t total = 0;
  json j = {{"dir", l->dir},
            {"latest", l->latest.empty() ? json() : json(l->latest)},
            {"latest_problem", l->latest_problem},
            {"best", l->best ? BestJson(*l->best) : json()},
            {"best_problem", l->best_problem},
            {"checkpoints", json::array()},
            {"temp_dirs", json::array()},
            {"trash_dirs", json::array()}};
  for (const auto& e : l->checkpoints) {
    j["checkpoints"].push_back(EntryJson(e, *l));
    total += e.bytes;
  }
  for (const auto& t : l->temp_dirs) j["temp_dirs"].push_back(TempJson(t, now));
  for (const auto& t : l->trash_dirs) j["trash_dirs"].push_back(TempJson(t, now));
  j["total_bytes"] = total;
  std::printf("%s\n", j.dump().c_str());
  return kExitOk;
}

// ---- best

struct BestFlags {
  std::string dir, set, metric, mode, lock_wait = "60s";
  bool json = false;
};

int RunBest(const BestFlags& f) {
  ckpt::Catalog catalog(Env(), f.dir);
  if (f.set.empty()) {
    if (!f.metric.empty() || !f.mode.empty()) {
      return ReportError(Status::InvalidArgument("--metric and --mode go with --set TAG"));
    }
    Status s = ckpt::CheckSaveDir(Env(), f.dir);
    if (!s.ok()) return Fail(s);
    Result<std::optional<ckpt::BestPointer>> best = catalog.ReadBest();
    if (!best.ok()) return Fail(best.status());
    bool exists = false;
    if (*best) exists = catalog.Resolve("best").ok();
    if (f.json) {
      json j = {{"dir", f.dir}, {"best", *best ? BestJson(**best) : json()}, {"exists", exists}};
      std::printf("%s\n", j.dump().c_str());
    } else if (!*best) {
      std::printf(
          "%s has no 'best' pointer (set one with 'dsckpt best %s --set TAG --metric "
          "eval_loss --mode min')\n",
          f.dir.c_str(), f.dir.c_str());
    } else {
      std::printf("best of %s: %s%s\n", f.dir.c_str(), BestText(**best).c_str(),
                  exists ? "" : " -- WARNING: not a committed checkpoint (removed by hand?)");
    }
    return kExitOk;
  }
  std::string metric = f.metric, mode = f.mode;
  if (metric.empty() || mode.empty()) {  // defaults from the current pointer
    Result<std::optional<ckpt::BestPointer>> cur = catalog.ReadBest();
    if (cur.ok() && *cur && (metric.empty() || metric == (*cur)->metric)) {
      if (metric.empty()) metric = (*cur)->metric;
      if (mode.empty()) mode = (*cur)->mode;
    }
  }
  if (metric.empty()) {
    return ReportError(Status::InvalidArgument(
        "--set needs --metric (the metric to record, e.g. --metric eval_loss --mode min): " +
        f.dir + " has no 'best' pointer to take it from"));
  }
  if (mode.empty()) mode = "min";
  Result<uint64_t> wait = LockWaitMicros(f.lock_wait);
  if (!wait.ok()) return ReportError(wait.status().WithContext("--lock-wait"));
  Result<ckpt::BestPointer> b = ckpt::SetBestByHand(Env(), f.dir, f.set, metric, mode, *wait);
  if (!b.ok()) return Fail(b.status());
  if (f.json) {
    std::printf("%s\n",
                json({{"dir", f.dir}, {"best", BestJson(*b)}, {"set", true}}).dump().c_str());
  } else {
    std::printf("best of %s is now %s\n", f.dir.c_str(), BestText(*b).c_str());
  }
  return kExitOk;
}

// ---- prune

struct PruneFlags {
  std::string dir, max_size, metric, mode, lock_wait = "60s";
  uint32_t keep_last = 0, keep_best = 0;
  int64_t keep_every = 0;
  bool dry_run = false, json = false;
};

json PrunedJson(const ckpt::CheckpointEntry& e) {
  return {{"tag", e.tag}, {"step", e.step}, {"path", e.path}, {"bytes", e.bytes}};
}

int RunPrune(const PruneFlags& f) {
  ckpt::RetentionPolicy p;
  p.keep_last = f.keep_last;
  p.keep_best = f.keep_best;
  p.keep_every = f.keep_every;
  p.best_metric = f.metric;
  p.best_mode = f.mode.empty() ? "min" : f.mode;
  if (!f.max_size.empty()) {
    Result<uint64_t> size = io::ParseByteSize(f.max_size);
    if (!size.ok()) return ReportError(size.status().WithContext("--max-size"));
    p.max_bytes = *size;
  }
  if (!p.any()) {
    return ReportError(Status::InvalidArgument(
        "prune needs a policy: say what to keep with --keep-last N, --keep-best K (with --metric), "
        "--keep-every STEPS and/or --max-size SIZE, e.g. 'dsckpt prune " +
        f.dir + " --keep-last 3 --keep-every 10000 --dry-run'"));
  }
  if (f.keep_every < 0) return ReportError(Status::InvalidArgument("--keep-every must be > 0"));
  Result<uint64_t> wait = LockWaitMicros(f.lock_wait);
  if (!wait.ok()) return ReportError(wait.status().WithContext("--lock-wait"));
  RemovalBar bar{"prune: removing", nullptr};
  ckpt::PruneOptions o{f.dry_run, *wait, bar.Hooks()};
  Result<ckpt::RetentionResult> r = ckpt::Prune(Env(), f.dir, p, o);
  bar.bar.reset();
  if (!r.ok()) return Fail(r.status());
  if (f.json) {
    json j = {{"dir", f.dir},
              {"dry_run", f.dry_run},
              {"policy",
               {{"keep_last", p.keep_last},
                {"keep_best", p.keep_best},
                {"keep_every", p.keep_every},
                {"max_bytes", p.max_bytes},
                {"metric", p.best_metric},
                {"mode", p.best_mode}}},
              {"removed", json::array()},
              {"kept", json::array()},
              {"freed_bytes", r->freed_bytes}};
    for (const auto& e : r->removed) j["removed"].push_back(PrunedJson(e));
    for (const auto& e : r->kept) j["kept"].push_back(PrunedJson(e));
    std::printf("%s\n", j.dump().c_str());
    return kExitOk;
  }
  std::printf("prune %s: %s %zu checkpoint(s), %s %s; kept %zu\n", f.dir.c_str(),
              f.dry_run ? "would remove" : "removed", r->removed.size(),
              f.dry_run ? "would free" : "freed", io::FormatBytes(r->freed_bytes).c_str(),
              r->kept.size());
  for (const auto& e : r->removed) {
    std::printf("  %s %-22s step %lld, %s\n", f.dry_run ? "would remove" : "removed", e.tag.c_str(),
                static_cast<long long>(e.step), io::FormatBytes(e.bytes).c_str());
  }
  return kExitOk;
}

// ---- gc

struct GcFlags {
  std::string dir, older_than = "1h", lock_wait = "60s";
  bool dry_run = false, json = false;
};

json GcItemJson(const ckpt::GcItem& i) {
  return {{"kind", ckpt::GcKindName(i.kind)},
          {"path", i.path},
          {"bytes", i.bytes},
          {"reason", i.reason}};
}

int RunGc(const GcFlags& f) {
  Result<uint64_t> older = io::ParseDurationSeconds(f.older_than);
  if (!older.ok()) return ReportError(older.status().WithContext("--older-than"));
  Result<uint64_t> wait = LockWaitMicros(f.lock_wait);
  if (!wait.ok()) return ReportError(wait.status().WithContext("--lock-wait"));
  RemovalBar bar{"gc: removing", nullptr};
  ckpt::GcOptions o;
  o.older_than_micros = static_cast<int64_t>(*older) * 1000000;
  o.dry_run = f.dry_run;
  o.lock_wait_micros = *wait;
  o.progress = bar.Hooks();
  Result<ckpt::GcReport> r = ckpt::CollectGarbage(Env(), f.dir, o);
  bar.bar.reset();
  if (!r.ok()) return Fail(r.status());
  for (const auto& u : r->unreadable) {
    std::fprintf(stderr, "dsckpt gc: warning: skipped %s: %s\n", u.path.c_str(), u.reason.c_str());
  }
  if (f.json) {
    json j = {{"dir", f.dir},
              {"dry_run", f.dry_run},
              {"older_than_seconds", *older},
              {"removed", json::array()},
              {"kept", json::array()},
              {"unreadable", json::array()},
              {"freed_bytes", r->freed_bytes}};
    for (const auto& i : r->removed) j["removed"].push_back(GcItemJson(i));
    for (const auto& i : r->kept) j["kept"].push_back(GcItemJson(i));
    for (const auto& i : r->unreadable) j["unreadable"].push_back(GcItemJson(i));
    std::printf("%s\n", j.dump().c_str());
    return kExitOk;
  }
  std::printf("gc %s: %s %zu item(s), %s %s\n", f.dir.c_str(),
              f.dry_run ? "would remove" : "removed", r->removed.size(),
              f.dry_run ? "would free" : "freed", io::FormatBytes(r->freed_bytes).c_str());
  for (const auto& i : r->removed) {
    std::printf("  %s %s %s, %s: %s\n", f.dry_run ? "would remove" : "removed",
                std::string(ckpt::GcKindName(i.kind)).c_str(), i.path.c_str(),
                io::FormatBytes(i.bytes).c_str(), i.reason.c_str());
  }
  for (const auto& i : r->kept) {
    std::printf("  kept %s %s: %s\n", std::string(ckpt::GcKindName(i.kind)).c_str(), i.path.c_str(),
                i.reason.c_str());
  }
  return kExitOk;
}

}  // namespace

void AddCatalogCommands(CLI::App& app, DsckptContext& ctx) {
  const std::string lock_help = "How long to wait for the catalog lock (default 60s)";

  auto lf = std::make_shared<std::pair<std::string, bool>>();
  CLI::App* list = app.add_subcommand(
      "list",
      "The checkpoints of a save directory (latest, best, sizes, metrics), saves in "
      "progress or torn, and leftovers");
  list->add_option("dir", lf->first, "A save directory")->required();
  list->add_flag("--json", lf->second, "Print one JSON object");
  list->footer("Examples:\n  dsckpt list ckpts/\n  dsckpt list ckpts/ --json");
  list->callback([lf, &ctx] { ctx.exit_code = RunList(lf->first, lf->second); });

  auto bf = std::make_shared<BestFlags>();
  CLI::App* best = app.add_subcommand(
      "best", "Print the 'best' pointer, or point it at a checkpoint with --set");
  best->add_option("dir", bf->dir, "A save directory")->required();
  best->add_option("--set", bf->set, "Point 'best' at this committed checkpoint (a tag)");
  best->add_option("--metric", bf->metric,
                   "With --set: the metric to record, read from the checkpoint's metrics "
                   "(default: the current pointer's)");
  best->add_option("--mode", bf->mode,
                   "With --set: min or max (default: the current pointer's, "
                   "else min)")
      ->check(CLI::IsMember({"min", "max"}));
  best->add_option("--lock-wait", bf->lock_wait, lock_help);
  best->add_flag("--json", bf->json, "Print one JSON object");
  best->footer(
      "Examples:\n  dsckpt best ckpts/\n"
      "  dsckpt best ckpts/ --set step-00020000 --metric eval_loss --mode min");
  best->callback([bf, &ctx] { ctx.exit_code = RunBest(*bf); });

  auto pf = std::make_shared<PruneFlags>();
  CLI::App* prune = app.add_subcommand(
      "prune", "Remove the checkpoints a retention policy does not keep (never latest or best)");
  prune->add_option("dir", pf->dir, "A save directory")->required();
  prune->add_option("--keep-last", pf->keep_last, "Keep the newest N checkpoints");
  prune->add_option("--keep-best", pf->keep_best,
                    "Keep the best K by --metric (default: the 'best' pointer's metric)");
  prune->add_option("--keep-every", pf->keep_every,
                    "Keep every checkpoint whose step is a multiple of STEPS");
  prune->add_option("--max-size", pf->max_size,
                    "Then remove the oldest kept ones until the total fits (500G, 2TiB)");
  prune->add_option("--metric", pf->metric, "The metric for --keep-best, e.g. eval_loss");
  prune->add_option("--mode", pf->mode, "min (default) or max: which values are best")
      ->check(CLI::IsMember({"min", "max"}));
  prune->add_flag("--dry-run", pf->dry_run, "Print what would be removed; remove nothing");
  prune->add_option("--lock-wait", pf->lock_wait, lock_help);
  prune->add_flag("--json", pf->json, "Print one JSON object");
  prune->footer(
      "Examples:\n"
      "  dsckpt prune ckpts/ --keep-last 3 --keep-best 2 --keep-every 10000 --dry-run\n"
      "  dsckpt prune ckpts/ --keep-last 2 --max-size 500G --json\n"
      "  dsckpt prune ckpts/ --keep-best 3 --metric accuracy --mode max\n"
      "Safe beside a live job: takes the catalog lock; never removes latest, best or a save in "
      "progress.");
  prune->callback([pf, &ctx] { ctx.exit_code = RunPrune(*pf); });

  auto gf = std::make_shared<GcFlags>();
  CLI::App* gc = app.add_subcommand(
      "gc",
      "Remove abandoned saves (.tmp-*), leftovers (.trash-*), and files no manifest "
      "references");
  gc->add_option("dir", gf->dir, "A save directory")->required();
  gc->add_option("--older-than", gf->older_than,
                 "Remove a temp dir no live writer holds only once nothing was written to it "
                 "for this long (default 1h)");
  gc->add_flag("--dry-run", gf->dry_run, "Print what would be removed; remove nothing");
  gc->add_option("--lock-wait", gf->lock_wait, lock_help);
  gc->add_flag("--json", gf->json, "Print one JSON object");
  gc->footer(
      "Examples:\n  dsckpt gc ckpts/ --dry-run\n  dsckpt gc ckpts/ --older-than 1h --json\n"
      "Safe beside a live job: a save in progress holds its .writer-<rank>.lock files, and gc "
      "leaves a temp dir alone while any is held.");
  gc->callback([gf, &ctx] { ctx.exit_code = RunGc(*gf); });
}

}  // namespace ds::cli
