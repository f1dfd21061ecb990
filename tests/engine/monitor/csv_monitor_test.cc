// csv_monitor: the files DeepSpeed 0.19.8's own csvMonitor writes for the same events, byte for
// byte (deepspeed_csv_oracle.py), Python's float repr, and what a resumed run appends.
#include "engine/monitor/internal/csv_monitor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "bench/fio.h"
#include "io/mem_env.h"
#include "testing/paths.h"
#include "testing/python.h"
#include "tests/engine/monitor/monitor_test_util.h"

namespace ds::engine {
namespace {

using internal::CsvFileName;
using internal::PythonFloatRepr;
using testing::QuietOptions;

struct Step {
  int64_t samples;
  double loss, lr, loss_scale, forward_s, backward_s, optimizer_s;
};
// deepspeed_csv_oracle.py's STEPS.
const Step kSteps[] = {
    {8, 2.5, 3e-4, 65536.0, 0.012, 0.025, 0.003},
    {16, 2.25, 1e-05, 32768.0, 0.0125, 0.0251, 0.0031},
    {24, 1.0 / 3.0, 0.1, 32768.0, 1.5, 2.0, 1e-6},
};

// What DeepSpeed 0.19.8 wrote (deepspeed_csv_oracle.py's output).
const std::pair<const char*, const char*> kDeepSpeedFiles[] = {
    {"Train_Samples_elapsed_time_ms_backward.csv",
     "step,elapsed_time_ms_backward\r\n8,25.0\r\n16,25.1\r\n24,2000.0\r\n"},
    {"Train_Samples_elapsed_time_ms_forward.csv",
     "step,elapsed_time_ms_forward\r\n8,12.0\r\n16,12.5\r\n24,1500.0\r\n"},
    {"Train_Samples_elapsed_time_ms_step.csv",
     "step,elapsed_time_ms_step\r\n8,3.0\r\n16,3.1\r\n24,0.001\r\n"},
    {"Train_Samples_eval_loss.csv", "step,eval_loss\r\n24,2.0625\r\n"},
    {"Train_Samples_loss_scale.csv",
     "step,loss_scale\r\n8,65536.0\r\n16,32768.0\r\n24,32768.0\r\n"},
    {"Train_Samples_lr.csv", "step,lr\r\n8,0.0003\r\n16,1e-05\r\n24,0.1\r\n"},
    {"Train_Samples_train_loss.csv",
     "step,train_loss\r\n8,2.5\r\n16,2.25\r\n24,0.3333333333333333\r\n"},
};

void RecordScenario(io::Env* env, const MonitorOptions& o) {
  DS_ASSERT_OK_AND_ASSIGN(auto monitor, Monitor::Open(env, o));
  int64_t step = 0;
  for (const Step& s : kSteps) {
    StepMetrics m = testing::SomeStep(++step);
    m.samples = s.samples;
    m.loss = s.loss;
    m.lr = s.lr;
    m.loss_scale = s.loss_scale;
    m.forward_s = s.forward_s;
    m.backward_s = s.backward_s;
    m.optimizer_s = s.optimizer_s;
    DS_ASSERT_OK(monitor->RecordStep(m));
  }
  DS_ASSERT_OK(monitor->RecordEval({.step = 3, .samples = 24, .eval_loss = 2.0625}));
  DS_ASSERT_OK(monitor->Close());
}

TEST(MonitorCsvTest, DeepSpeedWritesTheSameFiles) {
  io::MemEnv env;
  MonitorOptions o = QuietOptions("/out");
  o.config.csv_monitor = {.enabled = true, .output_path = "/csv", .job_name = "ds_job"};
  RecordScenario(&env, o);
  for (const auto& [name, contents] : kDeepSpeedFiles) {
    EXPECT_EQ(*env.ReadFileToString(std::string("/csv/ds_job/") + name), contents) << name;
  }
  // dstrain's own metrics follow the same layout: Train_Samples_<key>.csv, "step,<key>".
  DS_ASSERT_OK_AND_ASSIGN(std::vector<std::string> names, env.ListDir("/csv/ds_job"));
  EXPECT_EQ(names.size(), std::size(kDeepSpeedFiles) + 4);
  EXPECT_EQ(*env.ReadFileToString("/csv/ds_job/Train_Samples_tokens_per_s.csv"),
            "step,tokens_per_s\r\n8,32768.0\r\n16,32768.0\r\n24,32768.0\r\n");
  for (const char* ours : {"Train_Samples_tokens.csv", "Train_Samples_step_time_s.csv",
                           "Train_Samples_eval_tokens.csv"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), ours), names.end()) << ours;
  }
}

TEST(MonitorCsvTest, EmptyOutputPathMeansTheOutputDir) {
  io::MemEnv env;
  MonitorOptions o = QuietOptions("/run/out");
  o.config.csv_monitor.enabled = true;
  RecordScenario(&env, o);
  EXPECT_TRUE(*env.Exists("/run/out/DeepSpeedJobName/Train_Samples_lr.csv"));
}

// DeepSpeed opens its files for append and writes the header once per process, so a resumed
// DeepSpeed run repeats the header mid-file; dstrain appends rows only.
TEST(MonitorCsvTest, ASecondRunAppendsRowsWithoutAHeader) {
  io::MemEnv env;
  MonitorOptions o = QuietOptions("/out");
  o.config.csv_monitor = {.enabled = true, .output_path = "/csv", .job_name = "j"};
  RecordScenario(&env, o);
  o.resume_step = 3;
  RecordScenario(&env, o);
  EXPECT_EQ(*env.ReadFileToString("/csv/j/Train_Samples_eval_loss.csv"),
            "step,eval_loss\r\n24,2.0625\r\n24,2.0625\r\n");
}

TEST(MonitorCsvTest, FileNames) {
  EXPECT_EQ(CsvFileName("Train/Samples/lr"), "Train_Samples_lr.csv");
  EXPECT_EQ(CsvFileName("my metric/x"), "my_metric_x.csv");
  EXPECT_EQ(CsvFileName("plain"), "plain.csv");
}

TEST(MonitorCsvTest, PythonFloatRepr) {
  const std::pair<double, const char*> kCases[] = {
      {0.0, "0.0"},
      {-0.0, "-0.0"},
      {1.0, "1.0"},
      {2.5, "2.5"},
      {0.1, "0.1"},
      {1.0 / 3.0, "0.3333333333333333"},
      {3e-4, "0.0003"},
      {1e-4, "0.0001"},
      {1e-5, "1e-05"},
      {1.5e-5, "1.5e-05"},
      {65536.0, "65536.0"},
      {123456789.0, "123456789.0"},
      {1e15, "1000000000000000.0"},
      {1e16, "1e+16"},
      {1.25e17, "1.25e+17"},
      {1e100, "1e+100"},
      {-2.75, "-2.75"},
      {5e-324, "5e-324"},
      {1.7976931348623157e308, "1.7976931348623157e+308"},
      {std::numeric_limits<double>::infinity(), "inf"},
      {-std::numeric_limits<double>::infinity(), "-inf"},
      {std::numeric_limits<double>::quiet_NaN(), "nan"},
  };
  for (const auto& [v, want] : kCases) EXPECT_EQ(PythonFloatRepr(v), want) << want;
}

// The same against the Python at hand, over many doubles of every magnitude.
TEST(MonitorCsvTest, PythonFloatReprMatchesPython) {
  const std::string python = ds::testing::Python();
  int status = 0;
  DS_SKIP_OR_FAIL_WITHOUT_PYTHON("");
  std::mt19937_64 rng(20240520);
  std::vector<double> values;
  for (int i = 0; i < 2000; ++i) {
    const double mantissa = std::uniform_real_distribution<double>(-10, 10)(rng);
    const int exponent = std::uniform_int_distribution<int>(-30, 30)(rng);
    values.push_back(i % 3 == 0 ? std::round(mantissa * 1000) : mantissa * std::pow(10, exponent));
  }
  // Python reads each value from its exact bit pattern and prints repr() of it.
  std::string hexes;
  for (double v : values) {
    uint64_t bits;
    std::memcpy(&bits, &v, 8);
    hexes += std::to_string(bits) + "\n";
  }
  ds::testing::TempDir dir;
  DS_ASSERT_OK(io::Env::Default()->WriteFileSynced(dir.Join("bits"), hexes));
  const char* script =
      "import struct, sys\n"
      "for line in open(sys.argv[1]):\n"
      "    print(repr(struct.unpack('<d', struct.pack('<Q', int(line)))[0]))\n";
  std::optional<std::string> out = bench::RunCapture(
      python + " -c " + bench::ShellQuote(script) + " " + dir.Join("bits"), &status);
  ASSERT_TRUE(out.has_value()) << "python failed with status " << status;
  std::string expected;
  for (double v : values) expected += PythonFloatRepr(v) + "\n";
  EXPECT_EQ(*out, expected);
}

}  // namespace
}  // namespace ds::engine
