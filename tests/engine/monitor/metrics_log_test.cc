// metrics.jsonl across crashes, enumerated at every mutation the monitor makes:
//   - a process crash (written bytes stay in the page cache: CrashTail::kKeep) loses no line
//     whose RecordStep returned, and a write torn half-way is cut when the run resumes;
//   - a power cut (kDrop, kTear) keeps every line written before the last successful Sync();
//     the resumed run cuts the garbage after it and appends clean lines.
// Plus the resume rule itself (lines of later steps are dropped) and recovery from a failed
// write. The sync policy (no fsync per line) is docs/monitoring.md's.
#include "engine/monitor/internal/metrics_log.h"

#include <functional>

#include "io/fault_env.h"
#include "io/mem_env.h"
#include "tests/engine/monitor/monitor_test_util.h"

namespace ds::engine {
namespace {

using ::ds::testing::StatusIs;
using internal::KeptPrefixBytes;
using ::testing::HasSubstr;
using testing::LogCapture;
using testing::ManualClockEnv;
using testing::QuietOptions;
using testing::ReadJsonLines;
using testing::SomeStep;

constexpr char kPath[] = "/out/metrics.jsonl";

std::string Line(int64_t step) { return "{\"step\":" + std::to_string(step) + ",\"loss\":1.5}\n"; }

TEST(MonitorMetricsLogTest, KeptPrefixStopsAtTheFirstLineToDrop) {
  const std::string eval = "{\"step\":2,\"eval_loss\":3.0}\n";
  const std::string good = Line(1) + Line(2) + eval + Line(3);
  int64_t lines = 0;
  EXPECT_EQ(KeptPrefixBytes(good, 2, &lines), (Line(1) + Line(2) + eval).size());
  EXPECT_EQ(lines, 3);
  EXPECT_EQ(KeptPrefixBytes(good, 3, &lines), good.size());
  EXPECT_EQ(lines, 4);
  EXPECT_EQ(KeptPrefixBytes(good + "{\"step\":4,\"lo", 9, &lines), good.size());  // torn
  EXPECT_EQ(KeptPrefixBytes(good + Line(4).substr(0, Line(4).size() - 1), 9, &lines),
            good.size());  // complete JSON, but no newline: the write may not have finished
  EXPECT_EQ(KeptPrefixBytes(Line(1) + "\x7f\x13garbage\n" + Line(2), 9, &lines), Line(1).size());
  EXPECT_EQ(KeptPrefixBytes(Line(1) + "{\"loss\":1}\n" + Line(2), 9, &lines), Line(1).size());
  EXPECT_EQ(KeptPrefixBytes(Line(1) + "[1,2]\n", 9, &lines), Line(1).size());
  EXPECT_EQ(KeptPrefixBytes("", 9, &lines), 0u);
  EXPECT_EQ(lines, 0);
}

// The run every crash test replays: 6 steps, a Sync after step 3 (as before a checkpoint), an
// evaluation after step 4, Close. Returns how many lines were reported written, and how many
// of those a Sync covered.
struct Outcome {
  int64_t recorded = 0;  // RecordStep / RecordEval that returned OK
  int64_t synced = 0;    // lines covered by a Sync (or Close) that returned OK
};
// The steps of the scenario's lines, in order; the eval line is the fifth.
const int64_t kScenarioSteps[] = {1, 2, 3, 4, 4, 5, 6};

Outcome RunScenario(io::Env* env) {
  Outcome out;
  Result<std::unique_ptr<Monitor>> opened = Monitor::Open(env, QuietOptions("/out"));
  if (!opened.ok()) return out;
  Monitor& m = **opened;
  for (int64_t step = 1; step <= 6; ++step) {
    if (m.RecordStep(SomeStep(step)).ok()) ++out.recorded;
    if (step == 3 && m.Sync().ok()) out.synced = out.recorded;
    if (step == 4 && m.RecordEval({.step = 4, .eval_loss = 2.5}).ok()) ++out.recorded;
  }
  if (m.Close().ok()) out.synced = out.recorded;
  return out;
}

std::vector<int64_t> Steps(const std::vector<nlohmann::json>& lines) {
  std::vector<int64_t> steps;
  for (const nlohmann::json& j : lines) steps.push_back(j["step"].get<int64_t>());
  return steps;
}

std::vector<int64_t> ScenarioPrefix(size_t n) {
  return std::vector<int64_t>(kScenarioSteps, kScenarioSteps + n);
}

// After a crash: resume from step 6 (so every surviving line is kept), record step 7, and
// check the file holds a prefix of the scenario, then step 7, every line whole.
void ResumeAndCheck(io::MemEnv* mem, size_t at_least, const std::string& where) {
  LogCapture quiet;
  MonitorOptions o = QuietOptions("/out");
  o.resume_step = 6;
  {
    DS_ASSERT_OK_AND_ASSIGN(auto monitor, Monitor::Open(mem, o));
    DS_ASSERT_OK(monitor->RecordStep(SomeStep(7)));
  }
  std::vector<int64_t> steps = Steps(ReadJsonLines(mem, kPath));
  ASSERT_GE(steps.size(), at_least + 1) << where;
  std::vector<int64_t> want = ScenarioPrefix(steps.size() - 1);
  want.push_back(7);
  EXPECT_EQ(steps, want) << where;
}

uint64_t ScenarioMutations() {
  io::MemEnv mem;
  io::FaultEnv fault(&mem);
  ManualClockEnv env(&fault);
  Outcome o = RunScenario(&env);
  EXPECT_EQ(o.recorded, 7);
  EXPECT_EQ(o.synced, 7);
  return fault.mutation_count();
}

// Replays the scenario on `mem` through a FaultEnv that `arrange` sets up (a crash point, a
// fault), then crashes the machine with `tail`.
Outcome RunAndCrash(io::MemEnv* mem, const std::function<void(io::FaultEnv*)>& arrange,
                    io::CrashTail tail, uint64_t seed) {
  io::FaultEnv fault(mem);
  ManualClockEnv env(&fault);
  arrange(&fault);
  Outcome o;
  {
    LogCapture quiet;  // the failures after the crash point are expected
    o = RunScenario(&env);
  }
  EXPECT_THAT(fault.SimulateCrash(tail, seed), ::ds::testing::IsOk());
  return o;
}

auto StopAfter(uint64_t k) {
  return [k](io::FaultEnv* fault) { fault->StopAfter(k); };
}

TEST(MonitorMetricsLogTest, ProcessCrashAtEveryMutationLosesNoRecordedLine) {
  const uint64_t mutations = ScenarioMutations();
  ASSERT_GT(mutations, 7u);
  for (uint64_t k = 0; k <= mutations; ++k) {
    io::MemEnv mem;
    const Outcome o = RunAndCrash(&mem, StopAfter(k), io::CrashTail::kKeep, k);
    const std::string where = "crash after mutation " + std::to_string(k);
    if (!*mem.Exists(kPath)) {
      EXPECT_EQ(o.recorded, 0) << where;
      continue;
    }
    // Every line the monitor reported written is there, and nothing else.
    EXPECT_EQ(Steps(ReadJsonLines(&mem, kPath)), ScenarioPrefix(o.recorded)) << where;
    ResumeAndCheck(&mem, o.recorded, where);
  }
}

// A process killed inside a write leaves part of a line; the resumed run cuts it.
TEST(MonitorMetricsLogTest, ALineTornByAProcessCrashIsCutOnResume) {
  for (uint64_t torn = 0; torn < 7; ++torn) {
    io::MemEnv mem;
    auto short_writes = [torn](io::FaultEnv* fault) {
      fault->AddRule({.ops = io::kFaultWrite,
                      .path_glob = kPath,
                      .skip = torn,
                      .count = -1,
                      .kind = io::FaultKind::kShortWrite});
    };
    RunAndCrash(&mem, short_writes, io::CrashTail::kKeep, torn);
    const std::string text = *mem.ReadFileToString(kPath);
    ASSERT_NE(text.back(), '\n') << "write " << torn << " should have left half a line";
    ResumeAndCheck(&mem, torn, "torn write " + std::to_string(torn));
  }
}

TEST(MonitorMetricsLogTest, PowerCutAtEveryMutationKeepsTheSyncedLines) {
  const uint64_t mutations = ScenarioMutations();
  for (io::CrashTail tail : {io::CrashTail::kDrop, io::CrashTail::kTear}) {
    for (uint64_t k = 0; k <= mutations; ++k) {
      for (uint64_t seed = 0; seed < (tail == io::CrashTail::kTear ? 8u : 1u); ++seed) {
        io::MemEnv mem;
        const Outcome o = RunAndCrash(&mem, StopAfter(k), tail, seed);
        const std::string where = std::string(tail == io::CrashTail::kDrop ? "drop" : "tear") +
                                  " after mutation " + std::to_string(k) + ", seed " +
                                  std::to_string(seed);
        if (!*mem.Exists(kPath)) {
          EXPECT_EQ(o.synced, 0) << where;
          continue;
        }
        ResumeAndCheck(&mem, o.synced, where);
      }
    }
  }
}

TEST(MonitorMetricsLogTest, ResumeDropsTheStepsTheRunRepeats) {
  io::MemEnv mem;
  ManualClockEnv env(&mem);
  RunScenario(&env);
  LogCapture log;
  MonitorOptions o = QuietOptions("/out");
  o.resume_step = 4;
  {
    DS_ASSERT_OK_AND_ASSIGN(auto monitor, Monitor::Open(&env, o));
    DS_ASSERT_OK(monitor->RecordStep(SomeStep(5)));
  }
  EXPECT_EQ(Steps(ReadJsonLines(&mem, kPath)), (std::vector<int64_t>{1, 2, 3, 4, 4, 5}));
  EXPECT_THAT(log.lines(), ::testing::Contains(HasSubstr(
                               "/out/metrics.jsonl: resuming after step 4: kept 5 lines, cut")));
}

TEST(MonitorMetricsLogTest, AFreshRunStartsTheFileEmpty) {
  io::MemEnv mem;
  ManualClockEnv env(&mem);
  RunScenario(&env);
  LogCapture log;
  {
    DS_ASSERT_OK_AND_ASSIGN(auto monitor, Monitor::Open(&env, QuietOptions("/out")));
    DS_ASSERT_OK(monitor->RecordStep(SomeStep(1)));
  }
  EXPECT_EQ(Steps(ReadJsonLines(&mem, kPath)), (std::vector<int64_t>{1}));
  EXPECT_THAT(log.lines(),
              ::testing::Contains(HasSubstr("warning: /out/metrics.jsonl: a fresh run starts it "
                                            "empty: removed")));
}

// A write that fails half-way is reported; the next line replaces what it left.
TEST(MonitorMetricsLogTest, AFailedWriteIsReportedAndOverwritten) {
  io::MemEnv mem;
  io::FaultEnv fault(&mem);
  DS_ASSERT_OK_AND_ASSIGN(auto monitor, Monitor::Open(&fault, QuietOptions("/out")));
  DS_ASSERT_OK(monitor->RecordStep(SomeStep(1)));
  fault.AddRule(
      {.ops = io::kFaultWrite, .path_glob = kPath, .count = 1, .kind = io::FaultKind::kShortWrite});
  StepMetrics wide = SomeStep(2);  // half of its line is longer than the next whole line
  for (int i = 0; i < 20; ++i) wide.extras["extra_metric_" + std::to_string(i)] = 0.5;
  EXPECT_THAT(monitor->RecordStep(wide),
              StatusIs(StatusCode::kIOError, HasSubstr("appending to /out/metrics.jsonl")));
  DS_ASSERT_OK(monitor->RecordStep(SomeStep(3)));
  DS_ASSERT_OK(monitor->Close());
  EXPECT_EQ(Steps(ReadJsonLines(&mem, kPath)), (std::vector<int64_t>{1, 3}));
}

}  // namespace
}  // namespace ds::engine
