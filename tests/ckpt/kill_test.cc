// kill -9 at random instants, two ways.
//
// A save loop (save_loop_main.cc: the checkpoint library alone, 1 or 2 ranks) is killed with
// SIGKILL over and over; after each kill, gc (CollectGarbage, as `dsckpt gc` runs it) removes the
// save that was cut short, and `latest` must resolve to a checkpoint that verifies and holds
// exactly the state of its step. DSTRAIN_KILL_ITERATIONS sets the count (20; `slow`: 200).
//
// dsrun itself (the real trainer, --device cpu) is killed a few steps into its saves, each time
// just after it says "checkpoint of step N ... writing in the background" (plus a random
// delay), then `dsckpt gc --older-than 0s` clears what it left, every committed checkpoint
// passes `dsckpt verify`, `latest` names a committed one, no .tmp-* is left, and
// `dsrun --resume latest` goes on from it. DSTRAIN_DSRUN_KILLS sets the count (2; `slow`: 8).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cinttypes>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>

#include "ckpt/catalog.h"
#include "ckpt/gc.h"
#include "ckpt/save_util.h"
#include "ckpt/verify.h"
#include "testing/matchers.h"
#include "testing/paths.h"
#include "testing/shell.h"

extern char** environ;

namespace ds::ckpt {
namespace {

int Iterations() {
  const char* v = std::getenv("DSTRAIN_KILL_ITERATIONS");
  return v != nullptr ? std::atoi(v) : 20;
}

pid_t Start(const std::string& dir, int64_t first_step, int world) {
  const std::string exe = testing::BuildDir() + "/tests/ckpt/save_loop";
  std::string s = std::to_string(first_step), w = std::to_string(world);
  char* argv[] = {const_cast<char*>(exe.c_str()), const_cast<char*>(dir.c_str()), s.data(),
                  w.data(), nullptr};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  return rc == 0 ? pid : -1;
}

TEST(KillTest, SigkillAtRandomInstantsNeverDamagesACommittedCheckpoint) {
  testing::TempDir tmp;
  const std::string dir = tmp.Join("ckpts");
  const uint64_t seed = std::random_device{}();
  std::printf("seed %" PRIu64 "\n", seed);
  std::mt19937_64 rng(seed);
  io::Env* env = io::Env::Default();
  Catalog cat(env, dir);
  int64_t next_step = 1;
  int killed_mid_save = 0, checked = 0;
  for (int i = 0; i < Iterations(); ++i) {
    const int world = 1 + static_cast<int>(rng() % 2);
    pid_t pid = Start(dir, next_step, world);
    ASSERT_GT(pid, 0) << "could not start save_loop";
    usleep(static_cast<useconds_t>(20000 + rng() % 400000));
    ASSERT_EQ(kill(pid, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status))
        << "save_loop exited by itself (status " << status << "): a save failed";
    // At most the save in progress is left as a temp dir (also when no save committed yet: a
    // run killed before its first commit leaves one too, which the next run must not find
    // beside its own). gc removes it, and every .trash-* and pointer temp file, with its clock
    // set past the grace in which a fresh lock file may still belong to a save that is starting.
    Result<std::vector<std::string>> listed = env->ListDir(dir);  // absent: killed before
    ASSERT_TRUE(listed.ok() || listed.status().IsNotFound()) << listed.status().ToString();
    const std::vector<std::string> names = listed.ok() ? *listed : std::vector<std::string>{};
    int temps = 0, leftovers = 0;
    for (const auto& n : names) {
      temps += n.rfind(".tmp-", 0) == 0;
      leftovers += n.rfind(".tmp-", 0) == 0 || n.rfind(".trash-", 0) == 0 ||
                   n.find(".tmp-") != std::string::npos;
    }
    ASSERT_LE(temps, 1);
    killed_mid_save += temps;
    if (listed.ok()) {
      GcOptions gc;
      gc.older_than_micros = 0;
      gc.now_micros = env->WallTimeMicros() + kStartingSaveGraceMicros + 1'000'000;
      DS_ASSERT_OK_AND_ASSIGN(GcReport report, CollectGarbage(env, dir, gc));
      EXPECT_TRUE(report.kept.empty()) << report.kept[0].path << ": " << report.kept[0].reason;
      EXPECT_EQ(static_cast<int>(report.removed.size()), leftovers);
      DS_ASSERT_OK_AND_ASSIGN(std::vector<std::string> after, env->ListDir(dir));
      for (const auto& n : after)
        ASSERT_EQ(n.find(".tmp-"), std::string::npos) << n << " survived gc";
    }
    Result<std::string> latest = cat.Resolve("latest");
    if (!latest.ok()) {
      ASSERT_TRUE(latest.status().IsNotFound()) << latest.status().ToString();
      ASSERT_EQ(next_step, 1) << "latest vanished after step " << next_step - 1;
      continue;  // killed before the first commit
    }
    DS_ASSERT_OK_AND_ASSIGN(VerifyReport v, VerifyCheckpoint(env, *latest));
    ASSERT_TRUE(v.healthy) << *latest << ": " << (v.problems.empty() ? "" : v.problems[0]);
    DS_ASSERT_OK_AND_ASSIGN(auto reader, CheckpointReader::Open(env, *latest));
    const int64_t step = reader->manifest().info.step;
    ASSERT_GE(step, next_step - 1);
    DS_ASSERT_OK(LoadAndCompare(env, *latest, LoopState(step), {1, 0, 1}));
    ++checked;
    next_step = step + 1;
  }
  std::printf("%d kills, %d checkpoints checked, %d killed mid-save, last step %" PRId64 "\n",
              Iterations(), checked, killed_mid_save, next_step - 1);
  EXPECT_GT(checked, 0);
}

// ---- dsrun, killed mid-save

int DsrunKills() {
  const char* v = std::getenv("DSTRAIN_DSRUN_KILLS");
  return v != nullptr ? std::atoi(v) : 2;
}

std::string Q(const std::string& s) { return bench::ShellQuote(s); }

// A process with its stdout and stderr on one pipe, in a process group of its own (so a kill
// reaches whatever it started).
struct Child {
  pid_t pid = -1;
  int out = -1;      // read end
  std::string seen;  // everything read so far
  bool eof = false;  // it closed its output (exited)
};

Child Spawn(const std::vector<std::string>& args) {
  Child c;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return c;
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attr, 0);
  const int rc = posix_spawn(&c.pid, argv[0], &fa, &attr, argv.data(), environ);
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    c.pid = -1;
    return c;
  }
  c.out = fds[0];
  return c;
}

// Reads `c`'s output until `count` lines containing `needle` have been seen (true), or it
// closed its output (c.eof), or `timeout_s` passed (false).
bool WaitForLines(Child& c, const std::string& needle, int count, int timeout_s) {
  const int64_t deadline = io::Env::Default()->NowMicros() + int64_t{timeout_s} * 1'000'000;
  size_t scanned = 0;
  int found = 0;
  for (;;) {
    for (size_t eol; (eol = c.seen.find('\n', scanned)) != std::string::npos; scanned = eol + 1) {
      if (c.seen.substr(scanned, eol - scanned).find(needle) != std::string::npos &&
          ++found == count) {
        return true;
      }
    }
    const int64_t left_ms = (deadline - io::Env::Default()->NowMicros()) / 1000;
    if (left_ms <= 0) return false;
    pollfd p{c.out, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left_ms)) <= 0) return false;
    char buf[4096];
    const ssize_t n = read(c.out, buf, sizeof buf);
    if (n <= 0) {
      c.eof = true;
      return false;
    }
    c.seen.append(buf, static_cast<size_t>(n));
  }
}

// SIGKILL to the child's process group; its exit status.
int KillAndReap(Child& c) {
  kill(-c.pid, SIGKILL);
  int status = 0;
  waitpid(c.pid, &status, 0);
  close(c.out);
  return status;
}

// Waits up to `timeout_s` for the child to exit, reading its output meanwhile; its exit code,
// or -1 (killed at the timeout, or ended by a signal).
int WaitForExit(Child& c, int timeout_s) {
  WaitForLines(c, "", std::numeric_limits<int>::max(), timeout_s);
  int status = 0;
  if (!c.eof) kill(-c.pid, SIGKILL);
  waitpid(c.pid, &status, 0);
  close(c.out);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int64_t StepOfTag(const std::string& tag) {
  return tag.rfind("step-", 0) == 0 ? std::atoll(tag.c_str() + 5) : -1;
}

class DsrunKillTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dsrun_ = testing::BuildDir() + "/dsrun";
    dsckpt_ = testing::BuildDir() + "/dsckpt";
    Result<bool> built = io::Env::Default()->Exists(dsrun_);
    if (!built.ok() || !*built) GTEST_SKIP() << dsrun_ << " is not built (DSTRAIN_ENGINE off)";
    config_ = tmp_.Join("kill.json");
    save_dir_ = tmp_.Join("out/checkpoints");
    // The demo model's 0.8M parameters (an 8 MiB checkpoint with Adam's state, durable some
    // 70-300 ms after its snapshot) on short windows (fast steps), a save every step, steps
    // that never run out before the kill.
    DS_ASSERT_OK(io::Env::Default()->WriteFileSynced(config_, R"({
      "train_micro_batch_size_per_gpu": 2,
      "steps_per_print": 10,
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
      "model": {"n_layer": 4, "n_head": 4, "d_model": 128, "seq_len": 32, "vocab": 256},
      "data": {"path": "builtin", "val_fraction": 0.05},
      "tensorboard": {"enabled": false},
      "checkpoint": {"save_interval_steps": 1, "keep_last": 3},
      "trainer": {"max_steps": 1000000, "eval_interval": 0, "seed": 7, "output_dir": ")" +
                                                                  tmp_.Join("out") + R"("}
    })"));
  }

  Child StartDsrun(const std::vector<std::string>& extra) {
    std::vector<std::string> args = {dsrun_, "--config", config_, "--device", "cpu"};
    args.insert(args.end(), extra.begin(), extra.end());
    return Spawn(args);
  }

  testing::ShellResult Dsckpt(const std::string& args) {
    return testing::Sh(Q(dsckpt_) + " " + args);
  }

  // After a kill: gc removes what the killed save left, and what stays is sound. Returns the
  // step --resume latest goes on from (0: none yet) and counts the temp dirs gc removed.
  void CheckAfterKill(int64_t* latest_step, int* temps_removed) {
    io::Env* env = io::Env::Default();
    DS_ASSERT_OK_AND_ASSIGN(std::vector<std::string> before, env->ListDir(save_dir_));
    int temps = 0;
    for (const std::string& n : before) temps += n.rfind(".tmp-", 0) == 0;
    ASSERT_LE(temps, 1) << "more than the one save in progress was cut short";
    // gc leaves a temp dir whose lock files are younger than kStartingSaveGraceMicros (a save
    // may be starting and not hold its lock yet): age what the kill left by two minutes, as if
    // gc ran from cron a while later. gc itself decides what to remove.
    testing::ShellResult aged =
        testing::Sh("find " + Q(save_dir_) + " -path " + Q(save_dir_ + "/*.tmp-*") +
                    " -exec touch -h -d '2 minutes ago' {} +");
    ASSERT_EQ(aged.status, 0) << aged.out;
    testing::ShellResult gc = Dsckpt("gc " + Q(save_dir_) + " --older-than 0s --json");
    ASSERT_EQ(gc.status, 0) << gc.out;
    const nlohmann::json report = nlohmann::json::parse(gc.out.substr(gc.out.find('{')));
    EXPECT_TRUE(report["kept"].empty()) << gc.out;
    EXPECT_TRUE(report["unreadable"].empty()) << gc.out;
    int removed_temps = 0;
    for (const auto& item : report["removed"]) removed_temps += item["kind"] == "temp";
    EXPECT_EQ(removed_temps, temps) << gc.out;
    *temps_removed += removed_temps;
    DS_ASSERT_OK_AND_ASSIGN(std::vector<std::string> after, env->ListDir(save_dir_));
    for (const std::string& n : after) {
      EXPECT_EQ(n.find(".tmp-"), std::string::npos) << n << " is left after gc";
      EXPECT_NE(n.rfind(".trash-", 0), 0u) << n << " is left after gc";
    }
    Catalog catalog(env, save_dir_);
    DS_ASSERT_OK_AND_ASSIGN(std::vector<CheckpointEntry> committed, catalog.List());
    for (const CheckpointEntry& e : committed) {
      EXPECT_TRUE(e.problem.empty()) << e.tag << ": " << e.problem;
      testing::ShellResult v = Dsckpt("verify " + Q(e.path));
      EXPECT_EQ(v.status, 0) << e.tag << ":\n" << v.out;
    }
    // `latest` names a committed checkpoint (a kill between a commit's rename and the pointer's
    // update leaves it one behind: resuming from "latest" then takes the newer one).
    DS_ASSERT_OK_AND_ASSIGN(std::optional<std::string> latest, catalog.ReadLatest());
    if (!latest) {
      EXPECT_TRUE(committed.empty()) << "no latest beside " << committed.back().tag;
      *latest_step = 0;
      return;
    }
    bool named_committed = false;
    for (const CheckpointEntry& e : committed) named_committed |= e.tag == *latest;
    EXPECT_TRUE(named_committed) << "latest names " << *latest << ", not a committed checkpoint";
    DS_ASSERT_OK_AND_ASSIGN(std::string resolved, catalog.Resolve("latest"));
    EXPECT_EQ(io::BaseName(resolved), committed.back().tag)
        << "--resume latest would not take the newest committed checkpoint";
    *latest_step = committed.back().step;
  }

  testing::TempDir tmp_;
  std::string dsrun_, dsckpt_, config_, save_dir_;
};

TEST_F(DsrunKillTest, SigkillMidSaveThenGcLeavesCommittedCheckpointsThatResume) {
  const uint64_t seed = std::random_device{}();
  std::printf("seed %" PRIu64 "\n", seed);
  std::mt19937_64 rng(seed);
  int64_t latest_step = 0;
  int temps_removed = 0;
  for (int i = 0; i < DsrunKills(); ++i) {
    std::vector<std::string> resume;
    if (latest_step > 0) resume = {"--resume", "latest"};
    Child c = StartDsrun(resume);
    ASSERT_GT(c.pid, 0) << "could not start " << dsrun_;
    // Killed just after the n-th save's snapshot, while it writes in the background. The first
    // run commits one save before its kill, whatever the machine's speed: with only a few kills
    // (the fast twin), kills that all land in a first save would leave nothing to resume from.
    const int nth = (i == 0 ? 2 : 1) + static_cast<int>(rng() % (i == 0 ? 2 : 3));
    const bool saving = (i > 0 || WaitForLines(c, "durable after", 1, 120)) &&
                        WaitForLines(c, "writing in the background", nth, 120);
    if (saving) usleep(static_cast<useconds_t>(rng() % 20000));
    const int status = KillAndReap(c);
    ASSERT_TRUE(saving) << "dsrun did not reach its save " << nth << ":\n" << c.seen;
    ASSERT_TRUE(WIFSIGNALED(status)) << "dsrun exited by itself:\n" << c.seen;
    if (latest_step > 0) {
      EXPECT_THAT(c.seen, ::testing::HasSubstr("at step " + std::to_string(latest_step)))
          << "dsrun --resume latest did not go on from step " << latest_step;
    }
    const int64_t previous = latest_step;
    ASSERT_NO_FATAL_FAILURE(CheckAfterKill(&latest_step, &temps_removed));
    std::printf("kill %d after save %d: latest step %" PRId64 ", %d temp dir(s) removed so far\n",
                i + 1, nth, latest_step, temps_removed);
    EXPECT_GE(latest_step, previous) << "latest went back";
  }
  ASSERT_GT(latest_step, 0) << "no checkpoint was committed before any kill";
  // At least one kill cut a save short (saves take tens of milliseconds; the kill comes within
  // 20 ms of a snapshot), so gc had a torn save to remove.
  EXPECT_GT(temps_removed, 0) << "no kill landed mid-save: the test proved less than it says";
  // And the run goes on from latest, to the end.
  Child c = StartDsrun({"--resume", "latest", "--max-steps", std::to_string(latest_step + 3)});
  ASSERT_GT(c.pid, 0);
  const int code = WaitForExit(c, 180);
  ASSERT_EQ(code, 0) << c.seen;
  EXPECT_THAT(c.seen, ::testing::HasSubstr("at step " + std::to_string(latest_step)));
  Catalog catalog(io::Env::Default(), save_dir_);
  DS_ASSERT_OK_AND_ASSIGN(std::optional<std::string> latest, catalog.ReadLatest());
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(StepOfTag(*latest), latest_step + 3);
  testing::ShellResult v = Dsckpt("verify " + Q(io::JoinPath(save_dir_, *latest)));
  EXPECT_EQ(v.status, 0) << v.out;
}

}  // namespace
}  // namespace ds::ckpt
