// The local launcher against real processes (fake_rank.cc): every rank sees torchrun's
// variables; output arrives as whole prefixed lines; one failing rank stops the others at once
// (SIGKILL after the grace period for one that ignores SIGTERM); signals are forwarded; a program
// that cannot be executed is reported like a shell does (127).
#include "launch/launcher.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <thread>

#include "testing/matchers.h"

namespace ds::launch {
namespace {

using ::ds::testing::StatusIs;
using ::testing::ContainsRegex;
using ::testing::ElementsAre;
using ::testing::Eq;
using ::testing::MatchesRegex;

const char* const kFakeRank = DSTRAIN_FAKE_RANK;

// What one Launch returned and wrote, and how long it took.
struct Outcome {
  Result<LaunchResult> result = Status::Unavailable("not run");
  std::string out;  // everything written to stdout_fd
  std::string err;  // everything written to stderr_fd
  double seconds = 0;
};

std::string ReadAll(std::FILE* f) {
  std::string data;
  char buf[4096];
  ssize_t n;
  for (off_t at = 0; (n = pread(fileno(f), buf, sizeof buf, at)) > 0; at += n) {
    data.append(buf, static_cast<size_t>(n));
  }
  return data;
}

Outcome LaunchFake(const std::vector<std::string>& args, LaunchOptions o) {
  std::FILE* out = std::tmpfile();
  std::FILE* err = std::tmpfile();
  EXPECT_NE(out, nullptr);
  EXPECT_NE(err, nullptr);
  o.argv = {kFakeRank};
  o.argv.insert(o.argv.end(), args.begin(), args.end());
  o.stdout_fd = fileno(out);
  o.stderr_fd = fileno(err);
  io::Env* env = io::Env::Default();
  Outcome r;
  const uint64_t start = env->NowMicros();
  r.result = Launch(env, o);
  r.seconds = static_cast<double>(env->NowMicros() - start) / 1e6;
  r.out = ReadAll(out);
  r.err = ReadAll(err);
  std::fclose(out);
  std::fclose(err);
  return r;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// The lines of `rank`, in order, without their prefix.
std::vector<std::string> LinesOf(const std::string& text, int rank) {
  const std::string prefix = "[rank " + std::to_string(rank) + "] ";
  std::vector<std::string> mine;
  for (const std::string& line : Lines(text)) {
    if (line.starts_with(prefix)) mine.push_back(line.substr(prefix.size()));
  }
  return mine;
}

MATCHER_P3(ExitIs, rank, code, signal, "") {
  return arg.rank == rank && arg.exit_code == code && arg.signal == signal;
}

TEST(LauncherTest, EveryRankGetsTorchrunsVariables) {
  setenv("DSTRAIN_TEST_INHERITED", "yes", 1);
  Outcome r = LaunchFake({"env"}, {.nproc_per_node = 3,
                                   .nnodes = 2,
                                   .node_rank = 1,
                                   .master_addr = "10.1.2.3",
                                   .master_port = 12345,
                                   .extra_env = {{"DSTRAIN_TEST_EXTRA", "x y"}}});
  unsetenv("DSTRAIN_TEST_INHERITED");
  DS_ASSERT_OK(r.result);
  EXPECT_EQ(r.result->exit_code, 0);
  EXPECT_EQ(r.result->first_failure, "");
  EXPECT_THAT(r.result->ranks, ElementsAre(ExitIs(3, 0, 0), ExitIs(4, 0, 0), ExitIs(5, 0, 0)));
  for (int local = 0; local < 3; ++local) {
    const int rank = 3 + local;
    EXPECT_THAT(
        LinesOf(r.out, rank),
        ElementsAre("RANK=" + std::to_string(rank) + " LOCAL_RANK=" + std::to_string(local) +
                    " WORLD_SIZE=6 LOCAL_WORLD_SIZE=3 GROUP_RANK=1 NODE_RANK=1 "
                    "MASTER_ADDR=10.1.2.3 MASTER_PORT=12345 DSTRAIN_LAUNCHED=1 "
                    "DSTRAIN_TEST_EXTRA=x y DSTRAIN_TEST_INHERITED=yes"));
    EXPECT_THAT(LinesOf(r.err, rank), ElementsAre("rank " + std::to_string(rank) + " on stderr"));
  }
  EXPECT_EQ(Lines(r.out).size(), 3u);
  EXPECT_EQ(Lines(r.err).size(), 3u);  // no launcher messages when all goes well
}

TEST(LauncherTest, PortZeroPicksOneFreePortForAllRanks) {
  Outcome r = LaunchFake({"env"}, {.nproc_per_node = 2});
  DS_ASSERT_OK(r.result);
  std::vector<std::string> ports;
  for (int rank = 0; rank < 2; ++rank) {
    ASSERT_EQ(LinesOf(r.out, rank).size(), 1u) << r.out;
    const std::string line = LinesOf(r.out, rank)[0];
    const size_t at = line.find("MASTER_PORT=") + 12;
    ports.push_back(line.substr(at, line.find(' ', at) - at));
  }
  EXPECT_EQ(ports[0], ports[1]);
  EXPECT_THAT(ports[0], MatchesRegex("[1-9][0-9]*"));
}

TEST(LauncherTest, OneFailedRankStopsTheOthersAtOnce) {
  Outcome r = LaunchFake({"exit", "1", "7"}, {.nproc_per_node = 4, .grace_s = 10});
  DS_ASSERT_OK(r.result);
  EXPECT_EQ(r.result->exit_code, 7);
  EXPECT_THAT(r.result->first_failure,
              MatchesRegex("rank 1 \\(local 1, pid [0-9]+\\) exited with code 7; stopping the "
                           "other 3 ranks"));
  EXPECT_EQ(r.err, "dsrun: " + r.result->first_failure + "\n");
  EXPECT_THAT(r.result->ranks, ElementsAre(ExitIs(0, -1, SIGTERM), ExitIs(1, 7, 0),
                                           ExitIs(2, -1, SIGTERM), ExitIs(3, -1, SIGTERM)));
  EXPECT_LT(r.seconds, 3.0) << "the sleeping ranks were not stopped by SIGTERM";
}

TEST(LauncherTest, RankKilledByASignalGives128PlusTheSignal) {
  Outcome r = LaunchFake({"kill-self", "0", "9"}, {.nproc_per_node = 2});
  DS_ASSERT_OK(r.result);
  EXPECT_EQ(r.result->exit_code, 128 + 9);
  EXPECT_THAT(r.result->first_failure,
              MatchesRegex("rank 0 \\(local 0, pid [0-9]+\\) was killed by signal 9 \\(SIGKILL\\); "
                           "stopping the other rank"));
  EXPECT_THAT(r.result->ranks, ElementsAre(ExitIs(0, -1, SIGKILL), ExitIs(1, -1, SIGTERM)));
  EXPECT_LT(r.seconds, 3.0);
}

TEST(LauncherTest, RankIgnoringSigtermIsKilledAfterTheGracePeriod) {
  ds::testing::TempDir dir;
  Outcome r = LaunchFake({"stubborn", dir.path()}, {.nproc_per_node = 3, .grace_s = 0.5});
  DS_ASSERT_OK(r.result);
  EXPECT_EQ(r.result->exit_code, 3);
  EXPECT_THAT(r.result->ranks,
              ElementsAre(ExitIs(0, 3, 0), ExitIs(1, -1, SIGKILL), ExitIs(2, -1, SIGKILL)));
  EXPECT_THAT(r.err, ContainsRegex("\ndsrun: rank 1 \\(pid [0-9]+\\), rank 2 \\(pid [0-9]+\\) "
                                   "still running 0.5 s after SIGTERM; sending SIGKILL\n$"));
  EXPECT_GE(r.seconds, 0.5);
  EXPECT_LT(r.seconds, 3.0);
}

TEST(LauncherTest, ProgramThatCannotBeExecutedExits127) {
  LaunchOptions o{.argv = {"/nonexistent/dstrain-no-such-program"}, .nproc_per_node = 2};
  std::FILE* err = std::tmpfile();
  o.stderr_fd = fileno(err);
  Result<LaunchResult> r = Launch(io::Env::Default(), o);
  const std::string logged = ReadAll(err);
  std::fclose(err);
  DS_ASSERT_OK(r);
  EXPECT_EQ(r->exit_code, 127);
  EXPECT_EQ(r->first_failure,
            "cannot execute /nonexistent/dstrain-no-such-program: No such file or directory");
  EXPECT_EQ(logged, "dsrun: " + r->first_failure + "\n");
  EXPECT_THAT(r->ranks, ElementsAre(ExitIs(0, 127, 0)));  // rank 1 was never started

  o.argv = {"/"};  // a directory
  DS_ASSERT_OK_AND_ASSIGN(LaunchResult dir, Launch(io::Env::Default(), o));
  EXPECT_EQ(dir.exit_code, 127);
  EXPECT_EQ(dir.first_failure, "cannot execute /: Permission denied");
}

TEST(LauncherTest, SigtermToTheLauncherIsForwarded) {
  Outcome r = LaunchFake({"kill-launcher"}, {.nproc_per_node = 2});
  DS_ASSERT_OK(r.result);
  EXPECT_EQ(r.result->exit_code, 128 + SIGTERM);
  EXPECT_THAT(r.result->first_failure,
              MatchesRegex("rank [01] \\(local [01], pid [0-9]+\\) was killed by signal 15 "
                           "\\(SIGTERM\\)"));
  EXPECT_THAT(Lines(r.err), ElementsAre("dsrun: got SIGTERM; forwarding it to the 2 running ranks",
                                        "dsrun: " + r.result->first_failure));
  EXPECT_THAT(r.result->ranks, ElementsAre(ExitIs(0, -1, SIGTERM), ExitIs(1, -1, SIGTERM)));
  EXPECT_LT(r.seconds, 3.0);
  struct sigaction now = {};
  sigaction(SIGTERM, nullptr, &now);
  EXPECT_EQ(now.sa_handler, SIG_DFL) << "Launch did not restore the SIGTERM handler";
}

TEST(LauncherTest, OneLaunchPerProcessAtATime) {
  std::FILE* out = std::tmpfile();
  ASSERT_NE(out, nullptr);
  Result<LaunchResult> first = Status::Unavailable("not run");
  std::thread launcher([&] {
    first = Launch(io::Env::Default(),
                   {.argv = {kFakeRank, "exit", "99", "0"}, .stdout_fd = fileno(out)});
  });
  for (int waited_ms = 0; waited_ms < 5000 && ReadAll(out).empty(); waited_ms += 10) {
    usleep(10 * 1000);
  }
  EXPECT_EQ(ReadAll(out), "[rank 0] rank 0 sleeping\n");
  EXPECT_THAT(Launch(io::Env::Default(), {.argv = {kFakeRank, "env"}}),
              StatusIs(StatusCode::kFailedPrecondition,
                       Eq("dsrun: another Launch is running in this process")));
  kill(getpid(), SIGTERM);  // the running Launch forwards it to its rank
  launcher.join();
  std::fclose(out);
  DS_ASSERT_OK(first);
  EXPECT_EQ(first->exit_code, 128 + SIGTERM);
}

TEST(LauncherTest, OutputComesAsWholePrefixedLines) {
  Outcome r = LaunchFake({"output"}, {.nproc_per_node = 2});
  DS_ASSERT_OK(r.result);
  for (int rank = 0; rank < 2; ++rank) {
    EXPECT_THAT(LinesOf(r.out, rank),
                ElementsAre("first line", "partial completed", "no newline at the end"));
    EXPECT_THAT(LinesOf(r.err, rank), ElementsAre("on stderr"));
  }
  EXPECT_EQ(Lines(r.out).size(), 6u) << r.out;
  EXPECT_TRUE(r.out.ends_with("\n"));
}

TEST(LauncherTest, UnprefixedOutputGoesStraightThrough) {
  Outcome r = LaunchFake({"output"}, {.nproc_per_node = 1, .prefix_output = false});
  DS_ASSERT_OK(r.result);
  EXPECT_EQ(r.out, "first line\npartial completed\nno newline at the end");
  EXPECT_EQ(r.err, "on stderr\n");
}

TEST(LauncherTest, BadOptionsAreRejected) {
  io::Env* env = io::Env::Default();
  const std::pair<LaunchOptions, std::string> cases[] = {
      {{}, "dsrun: no program to launch"},
      {{.argv = {kFakeRank}, .nproc_per_node = 0}, "dsrun: --nproc-per-node 0 is not at least 1"},
      {{.argv = {kFakeRank}, .nnodes = 2, .node_rank = 2}, "dsrun: --node-rank 2 is not in [0, 2)"},
      {{.argv = {kFakeRank}, .nnodes = 2, .node_rank = 1},
       "dsrun: --master-port is needed with --nnodes 2 (every node must use the same port)"},
      {{.argv = {kFakeRank}, .master_port = 65536}, "dsrun: --master-port 65536 is not a TCP port"},
      {{.argv = {kFakeRank}, .grace_s = -1}, "dsrun: the grace period -1 s is not a duration >= 0"},
      {{.argv = {kFakeRank}, .extra_env = {{"RANK", "0"}}},
       "dsrun: RANK is set by the launcher for each rank; it cannot be given"},
      {{.argv = {kFakeRank}, .extra_env = {{"A=B", "0"}}},
       "dsrun: \"A=B\" is not an environment variable name"},
  };
  for (const auto& [options, message] : cases) {
    EXPECT_THAT(Launch(env, options), StatusIs(StatusCode::kInvalidArgument, Eq(message)));
  }
}

TEST(PickFreePortTest, ReturnsAPortThatCanBeBound) {
  DS_ASSERT_OK_AND_ASSIGN(int port, PickFreePort());
  ASSERT_GT(port, 0);
  ASSERT_LE(port, 65535);
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0) << port;
  close(fd);
}

}  // namespace
}  // namespace ds::launch
