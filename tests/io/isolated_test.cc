// RunIsolated: a child that answers, fails, crashes, hangs, or eats memory costs the parent a
// Status and nothing else, within the time limit.
#include "io/isolated.h"

#include <csignal>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "testing/matchers.h"

namespace ds::io {
namespace {

using ::ds::testing::StatusIs;
using ::testing::HasSubstr;

IsolationLimits Limits(int timeout_ms = 5000) {
  IsolationLimits l;
  l.timeout = std::chrono::milliseconds(timeout_ms);
  l.memory_bytes = 256 << 20;
  l.on_failure = [](const std::string& how) { return Status::Corruption("the child " + how); };
  return l;
}

double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

TEST(IsolatedTest, ReturnsTheChildsBytes) {
  std::string big(3 << 20, '\0');  // more than a pipe holds: the parent reads while it writes
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7);
  DS_ASSERT_OK_AND_ASSIGN(std::string out,
                          RunIsolated([&] { return Result<std::string>(big); }, Limits()));
  EXPECT_EQ(out, big);
  DS_ASSERT_OK_AND_ASSIGN(out, RunIsolated([] { return Result<std::string>(""); }, Limits()));
  EXPECT_EQ(out, "");
}

TEST(IsolatedTest, TheChildsStatusComesBackUnchanged) {
  EXPECT_THAT(
      RunIsolated([] { return Result<std::string>(Status::NotFound("no such tensor")); }, Limits()),
      StatusIs(StatusCode::kNotFound, "no such tensor"));
}

TEST(IsolatedTest, TheChildDoesNotChangeTheParent) {
  int x = 1;
  DS_ASSERT_OK(RunIsolated(
                   [&] {
                     x = 2;
                     return Result<std::string>("done");
                   },
                   Limits())
                   .status());
  EXPECT_EQ(x, 1);
}

TEST(IsolatedTest, ACrashIsAStatus) {
  EXPECT_THAT(RunIsolated(
                  []() -> Result<std::string> {
                    std::raise(SIGSEGV);
                    return std::string("unreachable");
                  },
                  Limits()),
              StatusIs(StatusCode::kCorruption, "the child crashed (SIGSEGV)"));
  EXPECT_THAT(RunIsolated([]() -> Result<std::string> { std::abort(); }, Limits()),
              StatusIs(StatusCode::kCorruption, "the child crashed (SIGABRT)"));
  EXPECT_THAT(
      RunIsolated([]() -> Result<std::string> { _exit(3); }, Limits()),
      StatusIs(StatusCode::kCorruption, "the child exited with status 3 without an answer"));
  EXPECT_THAT(RunIsolated([]() -> Result<std::string> { throw std::runtime_error("x"); }, Limits()),
              StatusIs(StatusCode::kCorruption, HasSubstr("the child threw an exception")));
}

// What the child prints goes to the parent, which quotes the last line when the child fails and
// drains it meanwhile, so a chatty child never blocks on a full pipe.
TEST(IsolatedTest, TheChildsLastWordsAreQuoted) {
  EXPECT_THAT(RunIsolated(
                  []() -> Result<std::string> {
                    std::fputs("reading the superblock\nfree(): invalid pointer\n", stderr);
                    std::abort();
                  },
                  Limits()),
              StatusIs(StatusCode::kCorruption,
                       "the child crashed (SIGABRT; it printed 'free(): invalid pointer')"));
  EXPECT_THAT(RunIsolated(
                  []() -> Result<std::string> {
                    std::fputs("bad\x01 input\n", stderr);
                    _exit(2);
                  },
                  Limits()),
              StatusIs(StatusCode::kCorruption,
                       "the child exited with status 2 without an answer (it printed 'bad? "
                       "input')"));
  DS_ASSERT_OK_AND_ASSIGN(std::string out, RunIsolated(
                                               [] {
                                                 const std::string line(1023, 'x');
                                                 for (int i = 0; i < 1024; ++i) {
                                                   std::fprintf(stderr, "%s\n", line.c_str());
                                                 }
                                                 return Result<std::string>("answer");
                                               },
                                               Limits()));
  EXPECT_EQ(out, "answer");
}

TEST(IsolatedTest, AHangIsKilledAtTheTimeout) {
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THAT(RunIsolated(
                  []() -> Result<std::string> {
                    while (true) pause();
                  },
                  Limits(300)),
              StatusIs(StatusCode::kCorruption, "the child did not finish within 0.3 s (killed)"));
  const double took = SecondsSince(start);
  EXPECT_GE(took, 0.3);
  EXPECT_LT(took, 3.0);
}

TEST(IsolatedTest, ABusyLoopIsKilledToo) {
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THAT(RunIsolated(
                  []() -> Result<std::string> {
                    volatile uint64_t n = 0;
                    while (true) n = n + 1;
                  },
                  Limits(200)),
              StatusIs(StatusCode::kCorruption, "the child did not finish within 0.2 s (killed)"));
  EXPECT_LT(SecondsSince(start), 3.0);
}

TEST(IsolatedTest, TooMuchMemoryIsAStatus) {
  if (!kIsolationLimitsMemory) GTEST_SKIP() << "no address-space limit under AddressSanitizer";
  EXPECT_THAT(RunIsolated(
                  []() -> Result<std::string> {
                    std::vector<char> v(size_t{2} << 30, 1);  // 2 GiB against a 256 MiB limit
                    return std::string(1, v[v.size() / 2]);
                  },
                  Limits()),
              StatusIs(StatusCode::kCorruption, "the child ran out of memory (limit 256.0 MiB)"));
  // A C library that sees malloc fail and returns an error gives that error back.
  EXPECT_THAT(RunIsolated(
                  []() -> Result<std::string> {
                    void* p = std::malloc(size_t{2} << 30);
                    if (p == nullptr) return Status::IOError("malloc failed");
                    std::free(p);
                    return std::string("allocated");
                  },
                  Limits()),
              StatusIs(StatusCode::kIOError, "malloc failed"));
}

TEST(IsolatedTest, AnAnswerLongerThanTheLimitIsRefused) {
  IsolationLimits l = Limits();
  l.max_answer_bytes = 1000;
  EXPECT_THAT(
      RunIsolated([] { return Result<std::string>(std::string(5000, 'x')); }, l),
      StatusIs(StatusCode::kCorruption, "the child sent an answer longer than 1000 B (killed)"));
}

TEST(IsolatedTest, WithoutOnFailureItIsAnIOError) {
  IsolationLimits l;
  EXPECT_THAT(RunIsolated(
                  []() -> Result<std::string> {
                    std::raise(SIGBUS);
                    return std::string();
                  },
                  l),
              StatusIs(StatusCode::kIOError, "a child process crashed (SIGBUS)"));
}

// Threads running isolated work at once, forking under one lock: every answer arrives whole,
// though each child holds copies of its siblings' pipes (each frame carries its length).
TEST(IsolatedTest, ManyThreadsAtOnce) {
  std::mutex library;
  std::vector<std::thread> threads;
  std::vector<std::string> out(8);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      IsolationLimits l = Limits();
      l.hold_across_fork = &library;
      for (int i = 0; i < 5; ++i) {
        // (The child must not lock `library`: its copy is held by the forking thread.)
        Result<std::string> r = RunIsolated(
            [&] { return Result<std::string>(std::string(1000 + t, static_cast<char>('a' + t))); },
            l);
        if (!r.ok()) {
          out[t] = r.status().ToString();
          return;
        }
        out[t] = *r;
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (int t = 0; t < 8; ++t) {
    EXPECT_EQ(out[t], std::string(1000 + t, static_cast<char>('a' + t))) << "thread " << t;
  }
}

}  // namespace
}  // namespace ds::io
