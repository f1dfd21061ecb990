// The host behind Env: nonces are fresh in every thread and process, the host's name and memory
// are what the kernel reports, environment variables read as set, and every wrapper forwards
// all four calls to the Env it wraps.
#include <sys/sysinfo.h>
#include <sys/wait.h>
#include <unistd.h>

#include <optional>
#include <string>
#include <vector>

#include "io/env.h"
#include "io/fault_env.h"
#include "io/mem_env.h"
#include "testing/matchers.h"

namespace ds::io {
namespace {

using ::testing::ElementsAre;

// A host whose every answer is scripted, and which records the renames made through it.
class ScriptedHostEnv : public EnvWrapper {
 public:
  explicit ScriptedHostEnv(Env* target) : EnvWrapper(target) {}
  std::string NewNonce() override { return "00000000c0ffee00"; }
  std::string HostName() override { return "node-17"; }
  uint64_t PhysicalMemoryBytes() override { return uint64_t{3} << 40; }
  std::optional<std::string> GetEnvVar(const std::string& name) override {
    if (name == "DSTRAIN_LOG") return "debug";
    return std::nullopt;
  }
  Status Rename(const std::string& from, const std::string& to) override {
    renames.push_back(from + " -> " + to);
    return EnvWrapper::Rename(from, to);
  }
  std::vector<std::string> renames;
};

TEST(EnvHostTest, EveryWrapperForwardsTheHostCalls) {
  MemEnv mem;
  ScriptedHostEnv scripted(&mem);
  EnvWrapper plain(&scripted);
  FaultEnv fault(&scripted);
  for (Env* env : std::vector<Env*>{&plain, &fault}) {
    EXPECT_EQ(env->NewNonce(), "00000000c0ffee00");
    EXPECT_EQ(env->HostName(), "node-17");
    EXPECT_EQ(env->PhysicalMemoryBytes(), uint64_t{3} << 40);
    EXPECT_EQ(env->GetEnvVar("DSTRAIN_LOG"), "debug");
    EXPECT_EQ(env->GetEnvVar("HOME"), std::nullopt);
  }
}

TEST(EnvHostTest, ReplaceFileAtomicallyNamesItsTemporaryWithTheEnvsNonce) {
  MemEnv mem;
  ScriptedHostEnv env(&mem);
  DS_ASSERT_OK(env.CreateDir("/d"));
  DS_ASSERT_OK(env.ReplaceFileAtomically("/d/latest", "step-1\n"));
  EXPECT_THAT(env.renames, ElementsAre("/d/latest.tmp-00000000c0ffee00 -> /d/latest"));
}

TEST(EnvHostTest, TheHostNameIsTheKernels) {
  // The kernel's own record of it (this UTS namespace's), not gethostname again.
  DS_ASSERT_OK_AND_ASSIGN(std::string kernel,
                          Env::Default()->ReadFileToString("/proc/sys/kernel/hostname"));
  while (!kernel.empty() && kernel.back() == '\n') kernel.pop_back();
  ASSERT_FALSE(kernel.empty());
  EXPECT_EQ(Env::Default()->HostName(), kernel);
}

TEST(EnvHostTest, PhysicalMemoryIsWhatTheKernelSays) {
  // sysinfo(2), not /proc/meminfo: a container may show a virtualised MemTotal (LXCFS).
  struct sysinfo info {};
  ASSERT_EQ(::sysinfo(&info), 0);
  const uint64_t total = static_cast<uint64_t>(info.totalram) * info.mem_unit;
  ASSERT_GT(total, 0u);
  EXPECT_EQ(Env::Default()->PhysicalMemoryBytes(), total);
}

TEST(EnvHostTest, AForkedChildDrawsOtherNoncesThanItsParent) {
  Env* env = Env::Default();
  (void)env->NewNonce();  // the generator is seeded before the fork: the child inherits it
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const std::string mine = env->NewNonce();
    const bool sent = ::write(fds[1], mine.data(), mine.size()) == ssize_t(mine.size());
    ::_exit(sent ? 0 : 1);
  }
  ::close(fds[1]);
  char buf[16];
  size_t got = 0;
  while (got < sizeof buf) {
    const ssize_t n = ::read(fds[0], buf + got, sizeof buf - got);
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fds[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ASSERT_EQ(got, sizeof buf);
  EXPECT_NE(std::string(buf, sizeof buf), env->NewNonce());
}

}  // namespace
}  // namespace ds::io
