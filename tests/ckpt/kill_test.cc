// kill -9 at random instants: a process that saves in a loop is killed with SIGKILL, over and
// over; after each kill `latest` must resolve to a checkpoint that verifies and holds exactly the
// state of its step, and at most one temp dir may be left (which the next check removes, as
// `dsckpt gc` would). DSTRAIN_KILL_ITERATIONS sets the count (20 in CI; the `slow` label runs 200).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cinttypes>
#include <random>

#include "ckpt/catalog.h"
#include "ckpt/save_util.h"
#include "ckpt/verify.h"
#include "testing/matchers.h"
#include "testing/paths.h"

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
    // At most the save in progress is left as a temp dir; remove it, as `dsckpt gc` would (also
    // when no save committed yet: a run killed before its first commit leaves one too, which
    // the next run must not find beside its own).
    Result<std::vector<std::string>> listed = env->ListDir(dir);  // absent: killed before
    ASSERT_TRUE(listed.ok() || listed.status().IsNotFound()) << listed.status().ToString();
    const std::vector<std::string> names = listed.ok() ? *listed : std::vector<std::string>{};
    int temps = 0;
    for (const auto& n : names) {
      if (n.rfind(".tmp-", 0) == 0 || n.rfind(".trash-", 0) == 0) {
        temps += n.rfind(".tmp-", 0) == 0;
        DS_ASSERT_OK(env->RemoveAll(io::JoinPath(dir, n)));
      }
    }
    ASSERT_LE(temps, 1);
    killed_mid_save += temps;
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

}  // namespace
}  // namespace ds::ckpt
