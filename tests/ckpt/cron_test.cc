// The cron test: a job saves in a loop while `dsckpt prune --keep-last 2 --keep-every 5` and
// `dsckpt gc --older-than 0s` run over and over beside it, through the binary, as cron would run
// them. No save may fail, nothing the policy keeps may be lost, and `latest` and `best` must
// always name checkpoints that verify. gc with a zero threshold would take any temp dir no
// writer holds: that it never takes the saver's shows that the writer locks protect a live save.
// DSTRAIN_CRON_SECONDS sets how long the job saves (20 in CI; the `slow` label runs 60).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <atomic>
#include <cinttypes>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "bench/fio.h"
#include "ckpt/catalog.h"
#include "ckpt/save_util.h"
#include "ckpt/verify.h"
#include "testing/matchers.h"
#include "testing/paths.h"
#include "testing/shell.h"

extern char** environ;

namespace ds::ckpt {
namespace {

constexpr int64_t kKeepEvery = 5;

int Seconds() {
  const char* v = std::getenv("DSTRAIN_CRON_SECONDS");
  return v != nullptr ? std::atoi(v) : 20;
}

// The job: save_loop for `seconds`, one save every 100 ms at most, no retention of its own,
// `best` following eval_loss. Its stdout and stderr go to files.
pid_t StartSaver(const std::string& dir, int seconds, const std::string& out,
                 const std::string& err) {
  const std::string exe = testing::BuildDir() + "/tests/ckpt/save_loop";
  std::vector<std::string> args = {
      exe,   dir,           "1", "1",     "--seconds", std::to_string(seconds), "--interval-ms",
      "100", "--keep-last", "0", "--best"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  return rc == 0 ? pid : -1;
}

// The steps the job has reported committed so far.
std::vector<int64_t> Committed(const std::string& out) {
  std::vector<int64_t> steps;
  Result<std::string> text = io::Env::Default()->ReadFileToString(out);
  std::istringstream in(text.ok() ? *text : "");
  std::string word;
  int64_t step;
  while (in >> word >> step) {
    if (word == "committed") steps.push_back(step);
  }
  return steps;
}

struct CronCounts {
  std::atomic<int> prune_runs{0}, gc_runs{0}, pruned{0}, gc_removed{0}, gc_removed_temp{0},
      gc_kept_live{0}, gc_kept_starting{0};
  std::mutex mu;
  std::vector<std::string> failures;
  void Fail(std::string what) {
    std::lock_guard<std::mutex> lock(mu);
    failures.push_back(std::move(what));
  }
};

// "dsckpt <command> <dir> <flags>", quoted for the shell.
std::string Dsckpt(const std::string& command, const std::string& dir, const std::string& flags) {
  return bench::ShellQuote(testing::BuildDir() + "/dsckpt") + " " + command + " " +
         bench::ShellQuote(dir) + " " + flags;
}

const std::string kPruneFlags =
    "--keep-last 2 --keep-every " + std::to_string(kKeepEvery) + " --json";
const char kGcFlags[] = "--older-than 0s --json";

// Runs one command as cron would; returns its JSON output, or records why not.
std::optional<nlohmann::json> RunCron(const std::string& cmd, CronCounts* counts) {
  testing::ShellResult r = testing::Sh(cmd);
  if (r.status != 0) {
    counts->Fail(cmd + " exited with " + std::to_string(r.status) + ": " + r.out);
    return std::nullopt;
  }
  // The JSON object is one line; log lines (stderr) may come before it.
  const size_t line = r.out.rfind("\n{");
  nlohmann::json j = nlohmann::json::parse(
      r.out.substr(!r.out.empty() && r.out[0] == '{' ? 0 : line + 1), nullptr, false);
  if (j.is_discarded()) {
    counts->Fail(cmd + " printed no JSON: " + r.out);
    return std::nullopt;
  }
  return j;
}

void PruneLoop(const std::string& dir, const std::atomic<bool>& stop, CronCounts* c) {
  const std::string cmd = Dsckpt("prune", dir, kPruneFlags);
  while (!stop) {
    if (auto j = RunCron(cmd, c)) c->pruned += static_cast<int>((*j)["removed"].size());
    ++c->prune_runs;
  }
}

void GcLoop(const std::string& dir, const std::atomic<bool>& stop, CronCounts* c) {
  const std::string cmd = Dsckpt("gc", dir, kGcFlags);
  while (!stop) {
    if (auto j = RunCron(cmd, c)) {
      for (const auto& item : (*j)["removed"]) {
        ++c->gc_removed;
        if (item["kind"] == "temp") {
          ++c->gc_removed_temp;
          c->Fail("gc removed the temp dir " + item["path"].get<std::string>() + " (" +
                  item["reason"].get<std::string>() + ")");
        }
      }
      for (const auto& item : (*j)["kept"]) {
        const std::string reason = item["reason"];
        if (reason.find("live writer") != std::string::npos) ++c->gc_kept_live;
        if (reason.find("may be starting") != std::string::npos) ++c->gc_kept_starting;
        if (reason.find("no live writer") != std::string::npos) {
          c->Fail("gc saw no live writer in " + item["path"].get<std::string>() + ": " + reason);
        }
      }
    }
    ++c->gc_runs;
  }
}

// `latest` and `best` verify; `latest` is at least the newest step the job reported; every
// reported step that is a multiple of kKeepEvery is there (verified once, when first seen).
void CheckKept(io::Env* env, const std::string& dir, const std::vector<int64_t>& committed,
               std::set<int64_t>* verified) {
  Catalog cat(env, dir);
  DS_ASSERT_OK_AND_ASSIGN(auto lock, cat.Lock(60'000'000));  // a consistent view
  if (committed.empty()) return;
  DS_ASSERT_OK_AND_ASSIGN(std::string latest, cat.Resolve("latest"));
  DS_ASSERT_OK_AND_ASSIGN(VerifyReport v, VerifyCheckpoint(env, latest, {2}));
  ASSERT_TRUE(v.healthy) << latest << ": " << (v.problems.empty() ? "" : v.problems[0]);
  DS_ASSERT_OK_AND_ASSIGN(auto reader, CheckpointReader::Open(env, latest));
  ASSERT_GE(reader->manifest().info.step, committed.back()) << "latest went backwards";
  DS_ASSERT_OK_AND_ASSIGN(std::optional<BestPointer> best, cat.ReadBest());
  ASSERT_TRUE(best.has_value()) << "the job records eval_loss: there must be a best pointer";
  DS_ASSERT_OK_AND_ASSIGN(std::string best_path, cat.Resolve("best"));
  DS_ASSERT_OK_AND_ASSIGN(VerifyReport bv, VerifyCheckpoint(env, best_path, {2}));
  ASSERT_TRUE(bv.healthy) << best_path;
  for (int64_t step : committed) {
    if (step % kKeepEvery != 0) continue;
    const std::string path = io::JoinPath(dir, TagForStep(step));
    DS_ASSERT_OK_AND_ASSIGN(bool there, env->Exists(io::JoinPath(path, "manifest.h5")));
    ASSERT_TRUE(there) << "checkpoint " << TagForStep(step) << " was committed and is kept by "
                       << "the policy, but is gone";
    if (verified->count(step)) continue;
    DS_ASSERT_OK_AND_ASSIGN(VerifyReport s, VerifyCheckpoint(env, path, {2}));
    ASSERT_TRUE(s.healthy) << path;
    verified->insert(step);
  }
}

TEST(CronTest, PruneAndGcBesideALiveJobLoseNothingTheyMustKeep) {
  testing::TempDir tmp;
  io::Env* env = io::Env::Default();
  const std::string dir = tmp.Join("ckpts"), out = tmp.Join("saver.out"),
                    err = tmp.Join("saver.err");
  const int seconds = Seconds();
  // cron refuses a directory that is not a save directory yet: wait for the first commit.
  pid_t saver = StartSaver(dir, seconds, out, err);
  ASSERT_GT(saver, 0) << "could not start save_loop";
  for (int i = 0; i < 3000 && Committed(out).empty(); ++i) env->SleepForMicros(10'000);
  ASSERT_FALSE(Committed(out).empty()) << "the job committed nothing in 30 s";

  CronCounts counts;
  std::atomic<bool> stop{false};
  std::thread prune(PruneLoop, dir, std::cref(stop), &counts);
  std::thread gc(GcLoop, dir, std::cref(stop), &counts);
  std::set<int64_t> verified;
  int checks = 0, status = 0;
  while (waitpid(saver, &status, WNOHANG) == 0) {
    CheckKept(env, dir, Committed(out), &verified);
    if (::testing::Test::HasFatalFailure()) break;
    ++checks;
    env->SleepForMicros(300'000);
  }
  if (::testing::Test::HasFatalFailure()) {
    kill(saver, SIGKILL);
    waitpid(saver, &status, 0);
  }
  stop = true;
  prune.join();
  gc.join();
  for (const std::string& f : counts.failures) ADD_FAILURE() << f;
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  Result<std::string> err_text = env->ReadFileToString(err);
  const std::string saver_err = err_text.ok() ? *err_text : "";
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "the job failed (status " << status << "): " << saver_err;
  EXPECT_EQ(saver_err.find("failed"), std::string::npos) << saver_err;

  // Once more after the job, as the next cron run would; then exactly the policy is left.
  RunCron(Dsckpt("prune", dir, kPruneFlags), &counts);
  RunCron(Dsckpt("gc", dir, kGcFlags), &counts);
  const std::vector<int64_t> committed = Committed(out);
  CheckKept(env, dir, committed, &verified);
  Catalog cat(env, dir);
  DS_ASSERT_OK_AND_ASSIGN(std::string latest, cat.Resolve("latest"));
  EXPECT_EQ(io::BaseName(latest), TagForStep(committed.back()));
  DS_ASSERT_OK(LoadAndCompare(env, latest, LoopState(committed.back()), {1, 0, 1}));
  DS_ASSERT_OK_AND_ASSIGN(std::optional<BestPointer> best, cat.ReadBest());
  std::set<std::string> want = {TagForStep(committed.back()),
                                TagForStep(committed[committed.size() - 2]), best->tag};
  for (int64_t s : committed) {
    if (s % kKeepEvery == 0) want.insert(TagForStep(s));
  }
  DS_ASSERT_OK_AND_ASSIGN(std::vector<CheckpointEntry> left, cat.List());
  std::set<std::string> have;
  for (const auto& e : left) have.insert(e.tag);
  EXPECT_EQ(have, want);
  DS_ASSERT_OK_AND_ASSIGN(std::vector<std::string> names, env->ListDir(dir));
  for (const auto& n : names) {
    EXPECT_TRUE(n == ".catalog.lock" || n == "latest" || n == "best" || n.rfind("step-", 0) == 0)
        << "left over: " << n;
  }

  std::printf(
      "cron test: %d s, %zu saves committed, %d checks; prune ran %d times and removed "
      "%d checkpoints; gc ran %d times, removed %d items (%d temp dirs), kept a live save "
      "%d times and a starting one %d times; %zu kept checkpoints verified\n",
      seconds, committed.size(), checks, counts.prune_runs.load(), counts.pruned.load(),
      counts.gc_runs.load(), counts.gc_removed.load(), counts.gc_removed_temp.load(),
      counts.gc_kept_live.load(), counts.gc_kept_starting.load(), verified.size());
  EXPECT_GT(counts.gc_kept_live.load() + counts.gc_kept_starting.load(), 0)
      << "gc never ran while a save was in progress";
  EXPECT_GT(counts.pruned.load(), 0) << "prune never removed anything";
}

}  // namespace
}  // namespace ds::ckpt
