// Shared by the monitor tests: a log capture, a clock the test moves, and readers for what the
// monitor wrote.
#pragma once

#include <atomic>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/monitor/monitor.h"
#include "io/env.h"
#include "io/log.h"
#include "testing/matchers.h"

namespace ds::engine::testing {

// Collects every log line (info and above) while alive.
class LogCapture {
 public:
  LogCapture() : restore_level_(io::LogEnabled(io::LogLevel::kInfo) ? -1 : 0) {
    io::SetLogLevel(io::LogLevel::kInfo);
    io::SetLogSink([this](io::LogLevel level, std::string_view m) {
      std::lock_guard<std::mutex> lock(mu_);
      lines_.push_back(std::string(level == io::LogLevel::kWarning ? "warning: " : "") +
                       std::string(m));
    });
  }
  ~LogCapture() {
    io::SetLogSink(nullptr);
    if (restore_level_ == 0) io::SetLogLevel(io::LogLevel::kWarning);
  }
  std::vector<std::string> lines() {
    std::lock_guard<std::mutex> lock(mu_);
    return lines_;
  }
  // The lines that start with `prefix`.
  std::vector<std::string> Lines(std::string_view prefix) {
    std::vector<std::string> out;
    for (const std::string& l : lines()) {
      if (l.rfind(prefix, 0) == 0) out.push_back(l);
    }
    return out;
  }

 private:
  int restore_level_;
  std::mutex mu_;
  std::vector<std::string> lines_;
};

// An Env whose clocks the test sets (files go to `base`).
class ManualClockEnv : public io::EnvWrapper {
 public:
  explicit ManualClockEnv(io::Env* base) : EnvWrapper(base) {}
  uint64_t NowMicros() override { return now_micros.load(); }
  int64_t WallTimeMicros() override { return wall_micros.load(); }
  std::atomic<uint64_t> now_micros{1'000'000};
  std::atomic<int64_t> wall_micros{1'767'225'600'000'000};  // 2026-01-01 00:00:00 UTC
};

// Every line of a metrics.jsonl, parsed; a line that does not parse fails the test.
inline std::vector<nlohmann::json> ReadJsonLines(io::Env* env, const std::string& path) {
  std::vector<nlohmann::json> out;
  Result<std::string> text = env->ReadFileToString(path);
  EXPECT_THAT(text, ::ds::testing::IsOk());
  if (!text.ok()) return out;
  size_t pos = 0;
  while (pos < text->size()) {
    size_t eol = text->find('\n', pos);
    EXPECT_NE(eol, std::string::npos) << path << " ends in a line without a newline";
    if (eol == std::string::npos) break;
    nlohmann::json j = nlohmann::json::parse(text->substr(pos, eol - pos), nullptr, false);
    EXPECT_TRUE(j.is_object()) << path << ": not a JSON object: " << text->substr(pos, eol - pos);
    out.push_back(j);
    pos = eol + 1;
  }
  return out;
}

// A plausible bf16 step on a GPU.
inline StepMetrics SomeStep(int64_t step) {
  StepMetrics m;
  m.step = step;
  m.loss = 4.0 - 0.01 * static_cast<double>(step);
  m.lr = 3e-4;
  m.tokens = 8 * 1024;
  m.step_time_s = 0.25;
  return m;
}

inline MonitorOptions QuietOptions(std::string output_dir) {
  MonitorOptions o;
  o.output_dir = std::move(output_dir);
  o.read_process_memory = false;
  return o;
}

}  // namespace ds::engine::testing
