// The probes: StepTimer on a clock the test moves, process memory from the real /proc (and the
// error where there is none), tokens/s and MFU.
#include "io/mem_env.h"
#include "tests/engine/monitor/monitor_test_util.h"

namespace ds::engine {
namespace {

using ::ds::testing::StatusIs;
using ::testing::HasSubstr;
using testing::ManualClockEnv;
using ::testing::Optional;

TEST(MonitorStepTimerTest, SectionsAccumulateUntilTaken) {
  io::MemEnv mem;
  ManualClockEnv clock(&mem);
  StepTimer timer(&clock);
  // Two micro batches: forward and backward twice each, then one optimizer step.
  for (int micro = 0; micro < 2; ++micro) {
    timer.Start("forward");
    clock.now_micros += 100'000;
    timer.Stop("forward");
    {
      auto t = timer.Time("backward");
      clock.now_micros += 250'000;
    }
  }
  timer.Start("optimizer");
  clock.now_micros += 40'000;
  timer.Stop("optimizer");
  timer.Start("comm");
  clock.now_micros += 10'000;
  timer.Stop("comm");
  timer.Stop("never_started");  // ignored
  EXPECT_DOUBLE_EQ(timer.Seconds("forward"), 0.2);
  EXPECT_DOUBLE_EQ(timer.Seconds("backward"), 0.5);
  EXPECT_DOUBLE_EQ(timer.Seconds("unknown"), 0);

  timer.Start("data");  // still running at the step boundary
  clock.now_micros += 5'000;
  StepMetrics m;
  timer.TakeInto(&m);
  EXPECT_THAT(m.forward_s, Optional(0.2));
  EXPECT_THAT(m.backward_s, Optional(0.5));
  EXPECT_THAT(m.optimizer_s, Optional(0.04));
  EXPECT_EQ(m.extras, (std::map<std::string, double>{{"comm_s", 0.01}, {"data_s", 0}}));

  // The next step starts from zero; the running section counts from the boundary on.
  clock.now_micros += 7'000;
  timer.Stop("data");
  EXPECT_DOUBLE_EQ(timer.Seconds("data"), 0.007);
  EXPECT_DOUBLE_EQ(timer.Seconds("forward"), 0);
  StepMetrics next;
  timer.TakeInto(&next);
  EXPECT_THAT(next.forward_s, Optional(0.0));
  EXPECT_DOUBLE_EQ(next.extras["data_s"], 0.007);
}

TEST(MonitorStepTimerTest, RestartingARunningSectionRestartsIt) {
  io::MemEnv mem;
  ManualClockEnv clock(&mem);
  StepTimer timer(&clock);
  timer.Start("forward");
  clock.now_micros += 1'000'000;
  timer.Start("forward");
  clock.now_micros += 3'000;
  timer.Stop("forward");
  EXPECT_DOUBLE_EQ(timer.Seconds("forward"), 0.003);
}

TEST(MonitorMemoryTest, RealProcIsPlausible) {
  DS_ASSERT_OK_AND_ASSIGN(ProcessMemory m, ReadProcessMemory(io::Env::Default()));
  EXPECT_GT(m.rss_bytes, uint64_t{1} << 20);  // a test binary with gtest uses more than 1 MiB
  EXPECT_LT(m.rss_bytes, uint64_t{1} << 40);
  EXPECT_GE(m.peak_rss_bytes, m.rss_bytes);
  DS_ASSERT_OK_AND_ASSIGN(uint64_t rss, ProcessRssBytes(io::Env::Default()));
  EXPECT_GT(rss, uint64_t{1} << 20);
  // Touching 64 MiB shows in the resident set.
  std::vector<char> big(64 << 20, 1);
  DS_ASSERT_OK_AND_ASSIGN(uint64_t after, ProcessRssBytes(io::Env::Default()));
  EXPECT_GE(after + (8 << 20), rss + big.size()) << "rss " << rss << " then " << after;
}

TEST(MonitorMemoryTest, NoProcIsAClearError) {
  io::MemEnv env;
  EXPECT_THAT(ProcessRssBytes(&env),
              StatusIs(StatusCode::kNotFound,
                       HasSubstr("reading process memory from /proc/self/status (no /proc "
                                 "here: not Linux, or an in-memory Env)")));
}

TEST(MonitorMemoryTest, ParsesProcStatus) {
  const char* status =
      "Name:\tdsrun\nVmPeak:\t 9000000 kB\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n"
      "Threads:\t4\n";
  DS_ASSERT_OK_AND_ASSIGN(ProcessMemory m, ParseProcStatus(status));
  EXPECT_EQ(m.rss_bytes, uint64_t{100} << 20);
  EXPECT_EQ(m.peak_rss_bytes, uint64_t{200} << 20);
  EXPECT_THAT(ParseProcStatus("Name:\tx\nVmRSS:\t 12 kB\n"),
              StatusIs(StatusCode::kCorruption, HasSubstr("no VmRSS/VmHWM lines in kB")));
  EXPECT_THAT(ParseProcStatus("VmRSS:\tlots\nVmHWM:\t1 kB\n"),
              StatusIs(StatusCode::kCorruption, HasSubstr("VmRSS")));
}

TEST(MonitorMfuTest, PeakFlopsByDeviceName) {
  EXPECT_THAT(PeakFlopsPerDevice("NVIDIA H100 80GB HBM3"), Optional(989e12));
  EXPECT_THAT(PeakFlopsPerDevice("NVIDIA H100 PCIe"), Optional(756e12));
  EXPECT_THAT(PeakFlopsPerDevice("NVIDIA H200"), Optional(989e12));
  EXPECT_THAT(PeakFlopsPerDevice("NVIDIA A100-SXM4-80GB"), Optional(312e12));
  EXPECT_THAT(PeakFlopsPerDevice("NVIDIA L40S"), Optional(362e12));
  EXPECT_THAT(PeakFlopsPerDevice("NVIDIA L40"), Optional(181e12));
  EXPECT_THAT(PeakFlopsPerDevice("NVIDIA L4"), Optional(121e12));
  EXPECT_EQ(PeakFlopsPerDevice("cpu"), std::nullopt);
  EXPECT_EQ(PeakFlopsPerDevice("NVIDIA GeForce GTX 1080"), std::nullopt);
}

TEST(MonitorMfuTest, ThroughputAndUtilisation) {
  EXPECT_DOUBLE_EQ(TokensPerSecond(8192, 0.5), 16384);
  EXPECT_EQ(TokensPerSecond(8192, 0), 0);
  // GPT-2 124M at T=1024 (nanoGPT's numbers): 6N + 12*L*d*T per token.
  const double fpt = TransformerFlopsPerToken(124'000'000, 12, 768, 1024);
  EXPECT_DOUBLE_EQ(fpt, 6 * 124e6 + 12.0 * 12 * 768 * 1024);
  // 8 H100s at 200k tokens/s each.
  std::optional<double> mfu = ModelFlopsUtilization(fpt, 8 * 200e3, "NVIDIA H100 80GB HBM3", 8);
  ASSERT_TRUE(mfu.has_value());
  EXPECT_NEAR(*mfu, fpt * 200e3 / 989e12, 1e-12);
  EXPECT_EQ(ModelFlopsUtilization(fpt, 1e5, "cpu", 1), std::nullopt);
  EXPECT_EQ(ModelFlopsUtilization(fpt, 1e5, "NVIDIA H200", 0), std::nullopt);
}

}  // namespace
}  // namespace ds::engine
