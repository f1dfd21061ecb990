// The progress line: its exact text for fp16 and bf16 runs, with and without GPU memory, the
// means over the steps since the previous line, and when the monitor prints it.
#include "engine/monitor/internal/progress.h"

#include "io/mem_env.h"
#include "tests/engine/monitor/monitor_test_util.h"

namespace ds::engine {
namespace {

using internal::FormatBytesPair;
using internal::FormatCount;
using internal::ProgressWindow;
using ::testing::ElementsAre;
using testing::LogCapture;
using testing::QuietOptions;
using testing::SomeStep;

constexpr double kGiB = 1024.0 * 1024 * 1024;

TEST(MonitorProgressTest, Fp16StepOnAGpu) {
  StepMetrics m;
  m.step = 120;
  m.loss = 2.31454;
  m.lr = 3e-4;
  m.loss_scale = 65536;
  m.tokens = 16384;
  m.step_time_s = 0.4;
  m.mfu = 0.381;
  m.memory = {.rss_bytes = static_cast<uint64_t>(1.2 * kGiB),
              .gpu_allocated_bytes = static_cast<uint64_t>(10.3 * kGiB),
              .gpu_reserved_bytes = static_cast<uint64_t>(12 * kGiB),
              .gpu_peak_bytes = static_cast<uint64_t>(11 * kGiB)};
  ProgressWindow w;
  w.Add(m);
  EXPECT_EQ(w.Line(1000),
            "step 120/1000 | loss 2.3145 | lr 3.00e-04 | scale 65536 | 41.0k tok/s | "
            "0.400 s/step | MFU 38.1% | mem 1.2 GiB RSS, 10.3/12.0 GiB GPU (peak 11.0 GiB)");
}

TEST(MonitorProgressTest, Bf16StepOnTheCpu) {
  StepMetrics m;
  m.step = 7;
  m.loss = 4;
  m.lr = 1e-3;
  m.tokens = 950;
  m.step_time_s = 1;
  m.memory.rss_bytes = 812 << 20;
  ProgressWindow w;
  w.Add(m);
  EXPECT_EQ(w.Line(0),
            "step 7 | loss 4.0000 | lr 1.00e-03 | 950 tok/s | 1.000 s/step | "
            "mem 812.0 MiB RSS");
  m.memory = {};
  m.step_time_s = 0;
  w.Clear();
  w.Add(m);
  EXPECT_EQ(w.Line(0), "step 7 | loss 4.0000 | lr 1.00e-03 | 0.000 s/step");
}

TEST(MonitorProgressTest, AveragesTheStepsSinceTheLastLine) {
  ProgressWindow w;
  StepMetrics a = SomeStep(9);
  a.loss = 2;
  a.tokens = 1000;
  a.step_time_s = 0.5;
  a.mfu = 0.2;
  a.forward_s = 0.1, a.backward_s = 0.2, a.optimizer_s = 0.05;
  a.grad_norm = 1.0;
  a.extras = {{"comm_s", 0.25}};
  a.memory.gpu_allocated_bytes = 1 << 30;  // the last step's memory is shown
  StepMetrics overflow = a;
  overflow.step = 10;
  overflow.loss = std::numeric_limits<double>::infinity();  // left out of the mean
  overflow.skipped = true;
  overflow.tokens = 0;
  overflow.step_time_s = 0;
  overflow.mfu.reset();
  overflow.extras = {{"ckpt_stall_s", 0.0125}};
  StepMetrics b = a;
  b.step = 11;
  b.loss = 4;
  b.lr = 1e-4;
  b.tokens = 3000;
  b.step_time_s = 1.5;
  b.mfu = 0.4;
  b.forward_s = 0.3, b.backward_s = 0.4, b.optimizer_s = 0.15;
  b.grad_norm = 3.0;
  b.memory.gpu_allocated_bytes = 3 << 20;
  for (const StepMetrics& m : {a, overflow, b}) w.Add(m);
  // tok/s and MFU are time-weighted (total tokens / total time); s/step is over all 3 steps.
  EXPECT_EQ(w.Line(100),
            "step 11/100 | loss 3.0000 | lr 1.00e-04 | grad norm 1.667 | 2.0k tok/s | "
            "0.667 s/step | fwd/bwd/opt 0.167/0.267/0.083 s | MFU 35.0% | mem 3.0 MiB GPU | "
            "ckpt_stall_s 0.0125 | comm_s 0.25 | 1 step skipped (fp16 overflow)");
  w.Clear();
  EXPECT_TRUE(w.empty());
}

TEST(MonitorProgressTest, EvalLine) {
  EXPECT_EQ(internal::EvalLine({.step = 250, .eval_loss = 2.0625, .eval_tokens = 40960}),
            "eval step 250 | loss 2.0625 | ppl 7.87 | 41.0k tokens");
  EvalMetrics e{.step = 3, .eval_loss = 80, .eval_tokens = 12};
  e.extras = {{"accuracy", 0.5}};
  EXPECT_EQ(internal::EvalLine(e), "eval step 3 | loss 80.0000 | 12 tokens | accuracy 0.5");
}

TEST(MonitorProgressTest, Formats) {
  EXPECT_EQ(FormatCount(0), "0");
  EXPECT_EQ(FormatCount(950), "950");
  EXPECT_EQ(FormatCount(41234), "41.2k");
  EXPECT_EQ(FormatCount(1234567), "1.23M");
  EXPECT_EQ(FormatBytesPair(512, 1000), "512/1000 B");
  EXPECT_EQ(FormatBytesPair(100 << 20, 2ull << 30), "0.1/2.0 GiB");
  EXPECT_EQ(FormatBytesPair(100 << 20, 900 << 20), "100.0/900.0 MiB");
}

// Every steps_per_print steps and at max_steps, as DeepSpeed's step % steps_per_print; a run
// that stops in between reports its last steps at Close.
TEST(MonitorProgressTest, PrintsEveryStepsPerPrintAndAtTheEnd) {
  io::MemEnv env;
  LogCapture log;
  MonitorOptions o = QuietOptions("/out");
  o.config.steps_per_print = 5;
  o.max_steps = 12;
  {
    DS_ASSERT_OK_AND_ASSIGN(auto monitor, Monitor::Open(&env, o));
    for (int64_t step = 1; step <= 12; ++step) {
      DS_ASSERT_OK(monitor->RecordStep(SomeStep(step)));
      if (step == 10) {
        DS_ASSERT_OK(monitor->RecordEval({.step = 10, .eval_loss = 2.0625, .eval_tokens = 40960}));
      }
    }
  }
  EXPECT_THAT(log.Lines("monitor: "), ElementsAre("monitor: metrics to /out/metrics.jsonl"));
  std::vector<std::string> lines = log.Lines("step ");
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0].substr(0, 22), "step 5/12 | loss 3.970");  // mean of steps 1..5
  EXPECT_EQ(lines[1].substr(0, 23), "step 10/12 | loss 3.920");
  EXPECT_EQ(lines[2].substr(0, 23), "step 12/12 | loss 3.885");
  EXPECT_THAT(log.Lines("eval "),
              ElementsAre("eval step 10 | loss 2.0625 | ppl 7.87 | 41.0k tokens"));

  LogCapture log2;
  o.max_steps = 0;
  o.config.steps_per_print = 10;
  {
    DS_ASSERT_OK_AND_ASSIGN(auto monitor, Monitor::Open(&env, o));
    for (int64_t step = 1; step <= 13; ++step) DS_ASSERT_OK(monitor->RecordStep(SomeStep(step)));
    EXPECT_EQ(log2.Lines("step ").size(), 1u);
    DS_ASSERT_OK(monitor->Close());
  }
  std::vector<std::string> lines2 = log2.Lines("step ");
  ASSERT_EQ(lines2.size(), 2u);
  EXPECT_EQ(lines2[0].substr(0, 18), "step 10 | loss 3.9");
  EXPECT_EQ(lines2[1].substr(0, 18), "step 13 | loss 3.8");
}

}  // namespace
}  // namespace ds::engine
