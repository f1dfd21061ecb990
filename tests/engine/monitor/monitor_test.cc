// The Monitor's files: metrics.jsonl lines with the promised fields, TensorBoard scalars under
// DeepSpeed's tags (read back by our reader and by TensorBoard's own EventAccumulator), which
// ranks write, and the names extra metrics may take.
#include "engine/monitor/monitor.h"

#include "bench/fio.h"
#include "engine/core/tensorboard.h"
#include "io/mem_env.h"
#include "testing/paths.h"
#include "testing/python.h"
#include "tests/engine/monitor/monitor_test_util.h"

namespace ds::engine {
namespace {

using ::ds::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::LogCapture;
using testing::ManualClockEnv;
using testing::QuietOptions;
using testing::ReadJsonLines;
using testing::SomeStep;
using ::testing::UnorderedElementsAreArray;

TEST(MonitorTest, JsonlHasOneObjectPerStepAndEval) {
  io::MemEnv env;
  {
    DS_ASSERT_OK_AND_ASSIGN(auto monitor, Monitor::Open(&env, QuietOptions("/run/out")));
    EXPECT_EQ(monitor->metrics_path(), "/run/out/metrics.jsonl");
    for (int64_t step = 1; step <= 3; ++step) DS_ASSERT_OK(monitor->RecordStep(SomeStep(step)));
    DS_ASSERT_OK(monitor->RecordEval({.step = 3, .eval_loss = 2.0625, .eval_tokens = 40960}));
    DS_ASSERT_OK(monitor->Close());
  }
  std::vector<nlohmann::json> lines = ReadJsonLines(&env, "/run/out/metrics.jsonl");
  ASSERT_EQ(lines.size(), 4u);
  for (int i = 0; i < 3; ++i) {
    const nlohmann::json& j = lines[i];
    EXPECT_EQ(j["step"], i + 1);
    EXPECT_DOUBLE_EQ(j["loss"].get<double>(), 4.0 - 0.01 * (i + 1));
    EXPECT_DOUBLE_EQ(j["lr"].get<double>(), 3e-4);
    EXPECT_EQ(j["tokens"], 8192);
    EXPECT_DOUBLE_EQ(j["tokens_per_s"].get<double>(), 8192 / 0.25);
    EXPECT_DOUBLE_EQ(j["step_time_s"].get<double>(), 0.25);
    EXPECT_EQ(j["skipped"], false);
    EXPECT_TRUE(j["time"].is_number());
    // Absent numbers are left out, not written as null or 0.
    for (const char* key : {"samples", "loss_scale", "forward_s", "mfu", "grad_norm", "rss_bytes",
                            "gpu_allocated_bytes", "eval_loss"}) {
      EXPECT_FALSE(j.contains(key)) << key;
    }
  }
  EXPECT_EQ(lines[3]["step"], 3);
  EXPECT_DOUBLE_EQ(lines[3]["eval_loss"].get<double>(), 2.0625);
  EXPECT_EQ(lines[3]["eval_tokens"], 40960);
  EXPECT_FALSE(lines[3].contains("loss"));
}

TEST(MonitorTest, JsonlCarriesEveryOptionalFieldAndExtras) {
  io::MemEnv env;
  DS_ASSERT_OK_AND_ASSIGN(auto monitor, Monitor::Open(&env, QuietOptions("/out")));
  StepMetrics m = SomeStep(7);
  m.samples = 56;
  m.loss_scale = 32768;
  m.forward_s = 0.05;
  m.backward_s = 0.1;
  m.optimizer_s = 0.02;
  m.mfu = 0.381;
  m.grad_norm = 0.75;
  m.skipped = true;
  constexpr uint64_t kGiB = uint64_t{1} << 30;
  m.memory = {.rss_bytes = 3 * kGiB,
              .peak_rss_bytes = 4 * kGiB,
              .gpu_allocated_bytes = 10 * kGiB,
              .gpu_reserved_bytes = 12 * kGiB,
              .gpu_peak_bytes = 11 * kGiB};
  m.extras = {{"ckpt_stall_s", 0.125}, {"comm_s", 0.03}};
  DS_ASSERT_OK(monitor->RecordStep(m));
  DS_ASSERT_OK(monitor->Close());
  std::vector<nlohmann::json> lines = ReadJsonLines(&env, "/out/metrics.jsonl");
  ASSERT_EQ(lines.size(), 1u);
  const nlohmann::json& j = lines[0];
  EXPECT_EQ(j["samples"], 56);
  EXPECT_EQ(j["loss_scale"], 32768.0);
  EXPECT_EQ(j["forward_s"], 0.05);
  EXPECT_EQ(j["backward_s"], 0.1);
  EXPECT_EQ(j["optimizer_s"], 0.02);
  EXPECT_EQ(j["mfu"], 0.381);
  EXPECT_EQ(j["grad_norm"], 0.75);
  EXPECT_EQ(j["skipped"], true);
  EXPECT_EQ(j["rss_bytes"], uint64_t{3} << 30);
  EXPECT_EQ(j["peak_rss_bytes"], uint64_t{4} << 30);
  EXPECT_EQ(j["gpu_allocated_bytes"], uint64_t{10} << 30);
  EXPECT_EQ(j["gpu_reserved_bytes"], uint64_t{12} << 30);
  EXPECT_EQ(j["gpu_peak_bytes"], uint64_t{11} << 30);
  EXPECT_EQ(j["ckpt_stall_s"], 0.125);
  EXPECT_EQ(j["comm_s"], 0.03);
  // In the file "step" leads, so a line reads well in `tail -f`.
  const std::string raw = *env.ReadFileToString("/out/metrics.jsonl");
  EXPECT_EQ(raw.rfind("{\"step\":7,\"samples\":56,\"loss\":", 0), 0u) << raw;
}

TEST(MonitorTest, NonFiniteLossIsNull) {
  io::MemEnv env;
  DS_ASSERT_OK_AND_ASSIGN(auto monitor, Monitor::Open(&env, QuietOptions("/out")));
  StepMetrics m = SomeStep(1);
  m.loss = std::numeric_limits<double>::infinity();
  m.skipped = true;
  DS_ASSERT_OK(monitor->RecordStep(m));
  DS_ASSERT_OK(monitor->Close());
  std::vector<nlohmann::json> lines = ReadJsonLines(&env, "/out/metrics.jsonl");
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_TRUE(lines[0]["loss"].is_null());
}

TEST(MonitorTest, ExtraNamesAreChecked) {
  io::MemEnv env;
  DS_ASSERT_OK_AND_ASSIGN(auto monitor, Monitor::Open(&env, QuietOptions("/out")));
  StepMetrics m = SomeStep(4);
  m.extras = {{"loss", 1.0}};
  EXPECT_THAT(monitor->RecordStep(m),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("step 4: monitor: extra metric 'loss' clashes with the "
                                 "built-in field of that name (rename the extra)")));
  m.extras = {{"all-reduce_s", 1.0}};
  EXPECT_THAT(monitor->RecordStep(m),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("extra metric 'all-reduce_s' is not a name of letters, digits "
                                 "and '_'")));
  EvalMetrics e{.step = 4, .eval_loss = 1.0};
  e.extras = {{"time", 1.0}};
  EXPECT_THAT(monitor->RecordEval(e), StatusIs(StatusCode::kInvalidArgument,
                                               HasSubstr("evaluation at step 4: monitor: extra "
                                                         "metric 'time' clashes")));
  DS_ASSERT_OK(monitor->Close());
  EXPECT_EQ(ReadJsonLines(&env, "/out/metrics.jsonl").size(), 0u);  // nothing half-written
}

// The tags DeepSpeed's engine writes, with its units (times in ms) at x = global samples.
TEST(MonitorTest, TensorBoardScalarsUseDeepSpeedTags) {
  io::MemEnv mem;
  ManualClockEnv env(&mem);
  MonitorOptions o = QuietOptions("/out");
  o.config.tensorboard.enabled = true;
  o.config.tensorboard.job_name = "gpt_run";
  {
    DS_ASSERT_OK_AND_ASSIGN(auto monitor, Monitor::Open(&env, o));
    for (int64_t step = 1; step <= 2; ++step) {
      StepMetrics m = SomeStep(step);
      m.samples = 32 * step;
      m.loss_scale = 65536;
      m.forward_s = 0.125;
      m.backward_s = 0.25;
      m.optimizer_s = 0.0625;
      m.mfu = 0.5;
      m.extras = {{"comm_s", 0.5}};
      DS_ASSERT_OK(monitor->RecordStep(m));
    }
    DS_ASSERT_OK(
        monitor->RecordEval({.step = 2, .samples = 64, .eval_loss = 3.5, .eval_tokens = 8}));
  }
  DS_ASSERT_OK_AND_ASSIGN(std::vector<std::string> names, mem.ListDir("/out/gpt_run"));
  ASSERT_EQ(names.size(), 1u);
  EXPECT_EQ(names[0].rfind("events.out.tfevents.1767225600.", 0), 0u) << names[0];
  DS_ASSERT_OK_AND_ASSIGN(std::vector<ScalarEvent> ev,
                          ReadTensorBoardScalars(&mem, "/out/gpt_run/" + names[0]));
  std::map<std::string, std::vector<std::pair<int64_t, double>>> by_tag;
  for (const ScalarEvent& e : ev) by_tag[e.tag].push_back({e.step, e.value});
  std::vector<std::string> tags;
  for (const auto& [tag, points] : by_tag) tags.push_back(tag);
  EXPECT_THAT(
      tags, UnorderedElementsAreArray<std::string>(
                {"Train/Samples/train_loss", "Train/Samples/lr", "Train/Samples/loss_scale",
                 "Train/Samples/tokens", "Train/Samples/tokens_per_s", "Train/Samples/step_time_s",
                 "Train/Samples/elapsed_time_ms_forward", "Train/Samples/elapsed_time_ms_backward",
                 "Train/Samples/elapsed_time_ms_step", "Train/Samples/mfu", "Train/Samples/comm_s",
                 "Train/Samples/eval_loss", "Train/Samples/eval_tokens"}));
  using P = std::pair<int64_t, double>;
  EXPECT_THAT(by_tag["Train/Samples/train_loss"],
              ElementsAre(P{32, static_cast<float>(3.99)}, P{64, static_cast<float>(3.98)}));
  EXPECT_THAT(by_tag["Train/Samples/lr"], ElementsAre(P{32, 3e-4f}, P{64, 3e-4f}));
  EXPECT_THAT(by_tag["Train/Samples/loss_scale"], ElementsAre(P{32, 65536}, P{64, 65536}));
  EXPECT_THAT(by_tag["Train/Samples/elapsed_time_ms_forward"], ElementsAre(P{32, 125}, P{64, 125}));
  EXPECT_THAT(by_tag["Train/Samples/elapsed_time_ms_backward"],
              ElementsAre(P{32, 250}, P{64, 250}));
  EXPECT_THAT(by_tag["Train/Samples/elapsed_time_ms_step"], ElementsAre(P{32, 62.5}, P{64, 62.5}));
  EXPECT_THAT(by_tag["Train/Samples/eval_loss"], ElementsAre(P{64, 3.5}));
}

TEST(MonitorTest, TensorBoardXAxisIsTheStepWithoutSamples) {
  io::MemEnv env;
  MonitorOptions o = QuietOptions("/out");
  o.config.tensorboard.enabled = true;
  o.config.tensorboard.output_path = "/tb";
  {
    DS_ASSERT_OK_AND_ASSIGN(auto monitor, Monitor::Open(&env, o));
    DS_ASSERT_OK(monitor->RecordStep(SomeStep(5)));
  }
  DS_ASSERT_OK_AND_ASSIGN(std::vector<std::string> names, env.ListDir("/tb/DeepSpeedJobName"));
  ASSERT_EQ(names.size(), 1u);
  DS_ASSERT_OK_AND_ASSIGN(std::vector<ScalarEvent> ev,
                          ReadTensorBoardScalars(&env, "/tb/DeepSpeedJobName/" + names[0]));
  ASSERT_FALSE(ev.empty());
  for (const ScalarEvent& e : ev) EXPECT_EQ(e.step, 5) << e.tag;
}

TEST(MonitorTest, OnlyRankZeroWritesUnlessAllRanks) {
  io::MemEnv env;
  LogCapture log;
  MonitorOptions o = QuietOptions("/out");
  o.config.tensorboard.enabled = true;
  o.config.csv_monitor.enabled = true;
  o.config.steps_per_print = 1;
  o.rank = 3;
  {
    DS_ASSERT_OK_AND_ASSIGN(auto monitor, Monitor::Open(&env, o));
    EXPECT_FALSE(monitor->writes());
    DS_ASSERT_OK(monitor->RecordStep(SomeStep(1)));
    DS_ASSERT_OK(monitor->RecordEval({.step = 1, .eval_loss = 1}));
  }
  EXPECT_FALSE(*env.Exists("/out"));
  EXPECT_TRUE(log.lines().empty());

  o.all_ranks = true;
  {
    DS_ASSERT_OK_AND_ASSIGN(auto monitor, Monitor::Open(&env, o));
    EXPECT_TRUE(monitor->writes());
    DS_ASSERT_OK(monitor->RecordStep(SomeStep(1)));
  }
  // Its own JSONL and its progress line; TensorBoard and CSV stay with rank 0.
  DS_ASSERT_OK_AND_ASSIGN(std::vector<std::string> names, env.ListDir("/out"));
  EXPECT_THAT(names, ElementsAre("metrics-rank-00003.jsonl"));
  EXPECT_EQ(log.Lines("step 1 |").size(), 1u);
}

TEST(MonitorTest, ReadsProcessMemoryWhenTheCallerGivesNone) {
  ds::testing::TempDir dir;
  MonitorOptions o = QuietOptions(dir.Join("out"));
  o.read_process_memory = true;
  {
    DS_ASSERT_OK_AND_ASSIGN(auto monitor, Monitor::Open(io::Env::Default(), o));
    DS_ASSERT_OK(monitor->RecordStep(SomeStep(1)));
    StepMetrics given = SomeStep(2);
    given.memory.rss_bytes = 12345;
    DS_ASSERT_OK(monitor->RecordStep(given));
  }
  std::vector<nlohmann::json> lines =
      ReadJsonLines(io::Env::Default(), dir.Join("out/metrics.jsonl"));
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_GT(lines[0]["rss_bytes"].get<uint64_t>(), uint64_t{1} << 20);
  EXPECT_GE(lines[0]["peak_rss_bytes"].get<uint64_t>(), lines[0]["rss_bytes"].get<uint64_t>());
  EXPECT_EQ(lines[1]["rss_bytes"], 12345);
  EXPECT_FALSE(lines[1].contains("peak_rss_bytes"));
}

// Runs `script` (which prints one JSON object) with TensorBoard's EventAccumulator on `dir`;
// nullopt where there is no Python with tensorboard (the caller skips, or fails in CI).
std::optional<nlohmann::json> EventAccumulatorSays(const std::string& dir, const char* script) {
  const std::string python = ds::testing::Python();
  int status = 0;
  if (python.empty() ||
      !bench::RunCapture(python + " -c 'import tensorboard' 2>/dev/null", &status)) {
    return std::nullopt;
  }
  const std::string prelude =
      "import json, sys\n"
      "from tensorboard.backend.event_processing.event_accumulator import EventAccumulator\n"
      "acc = EventAccumulator(sys.argv[1])\n"
      "acc.Reload()\n";
  std::optional<std::string> out =
      bench::RunCapture(python + " -c " + bench::ShellQuote(prelude + script) + " " +
                            bench::ShellQuote(dir) + " 2>/dev/null",
                        &status);
  EXPECT_TRUE(out.has_value()) << "EventAccumulator failed with status " << status;
  if (!out.has_value()) return nlohmann::json();
  return nlohmann::json::parse(out->substr(out->rfind('{')));
}

TEST(MonitorTest, TensorBoardsOwnReaderReadsTheMonitorsEvents) {
  ds::testing::TempDir dir;
  MonitorOptions o = QuietOptions(dir.Join("out"));
  o.config.tensorboard.enabled = true;
  {
    DS_ASSERT_OK_AND_ASSIGN(auto monitor, Monitor::Open(io::Env::Default(), o));
    for (int64_t step = 1; step <= 20; ++step) {
      StepMetrics m = SomeStep(step);
      m.samples = 16 * step;
      m.loss_scale = 1024;
      DS_ASSERT_OK(monitor->RecordStep(m));
    }
    DS_ASSERT_OK(monitor->RecordEval({.step = 20, .samples = 320, .eval_loss = 3.25}));
    DS_ASSERT_OK(monitor->Close());
  }
  std::optional<nlohmann::json> j = EventAccumulatorSays(dir.Join("out/DeepSpeedJobName"), R"PY(
loss = acc.Scalars("Train/Samples/train_loss")
ev = acc.Scalars("Train/Samples/eval_loss")
print(json.dumps({"tags": sorted(acc.Tags()["scalars"]), "n": len(loss),
                  "first": [loss[0].step, loss[0].value], "last": [loss[-1].step, loss[-1].value],
                  "eval": [ev[0].step, ev[0].value]}))
)PY");
  if (!j) {  // EventAccumulatorSays found no tensorboard: a skip, or in CI a failure
    DS_SKIP_OR_FAIL_WITHOUT_PYTHON("tensorboard");
    FAIL() << "EventAccumulatorSays found no tensorboard, but it imports now";
  }
  EXPECT_EQ((*j)["tags"],
            nlohmann::json({"Train/Samples/eval_loss", "Train/Samples/eval_tokens",
                            "Train/Samples/loss_scale", "Train/Samples/lr",
                            "Train/Samples/step_time_s", "Train/Samples/tokens",
                            "Train/Samples/tokens_per_s", "Train/Samples/train_loss"}));
  EXPECT_EQ((*j)["n"], 20);
  EXPECT_EQ((*j)["first"][0], 16);
  EXPECT_NEAR((*j)["first"][1].get<double>(), 3.99, 1e-6);
  EXPECT_EQ((*j)["last"][0], 320);
  EXPECT_NEAR((*j)["last"][1].get<double>(), 3.80, 1e-6);
  EXPECT_EQ((*j)["eval"][0], 320);
  EXPECT_EQ((*j)["eval"][1], 3.25);
}

// A resumed run writes a second event file in the same directory; TensorBoard drops the first
// run's points past the resume point ("orphaned data") when it reads the second.
TEST(MonitorTest, TensorBoardShowsTheResumedRunsPoints) {
  ds::testing::TempDir dir;
  ManualClockEnv env(io::Env::Default());  // the event file's name holds the start second
  MonitorOptions o = QuietOptions(dir.Join("out"));
  o.config.tensorboard.enabled = true;
  auto run = [&](int64_t first, int64_t last, double loss_base) {
    DS_ASSERT_OK_AND_ASSIGN(auto monitor, Monitor::Open(&env, o));
    for (int64_t step = first; step <= last; ++step) {
      StepMetrics m = SomeStep(step);
      m.samples = 16 * step;
      m.loss = loss_base + static_cast<double>(step);
      DS_ASSERT_OK(monitor->RecordStep(m));
    }
  };
  run(1, 20, 0);
  env.wall_micros += 60'000'000;
  o.resume_step = 15;
  run(16, 18, 100);
  std::optional<nlohmann::json> j = EventAccumulatorSays(dir.Join("out/DeepSpeedJobName"), R"PY(
loss = acc.Scalars("Train/Samples/train_loss")
print(json.dumps({"points": [[e.step, e.value] for e in loss]}))
)PY");
  if (!j) {  // EventAccumulatorSays found no tensorboard: a skip, or in CI a failure
    DS_SKIP_OR_FAIL_WITHOUT_PYTHON("tensorboard");
    FAIL() << "EventAccumulatorSays found no tensorboard, but it imports now";
  }
  nlohmann::json want = nlohmann::json::array();
  for (int64_t step = 1; step <= 18; ++step) {
    want.push_back({16 * step, (step <= 15 ? 0.0 : 100.0) + static_cast<double>(step)});
  }
  EXPECT_EQ((*j)["points"], want);
  // metrics.jsonl agrees.
  std::vector<nlohmann::json> lines = ReadJsonLines(&env, dir.Join("out/metrics.jsonl"));
  ASSERT_EQ(lines.size(), 18u);
  EXPECT_EQ(lines[15]["loss"], 116.0);
}

}  // namespace
}  // namespace ds::engine
