// The progress line: the steps since the previous line summarised in one line of text.
//   step 120/1000 | loss 2.3145 | lr 3.00e-04 | scale 65536 | 41.2k tok/s | 0.412 s/step |
//   MFU 38.1% | mem 1.2 GiB RSS, 10.3/12.0 GiB GPU
// (one line; wrapped here). Fields whose numbers are absent are left out.
// Thread safety: one thread.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "engine/monitor/monitor.h"

namespace ds::engine::internal {

class ProgressWindow {
 public:
  void Add(const StepMetrics& m);
  bool empty() const { return steps_ == 0; }
  // Means over the window (loss of the finite losses; tok/s, s/step, the breakdown and MFU
  // weighted by time, as total tokens / total time), the latest step's lr, scale and memory.
  std::string Line(int64_t max_steps) const;
  void Clear() { *this = ProgressWindow(); }

 private:
  struct Mean {
    double sum = 0;
    int64_t n = 0;
    void Add(double v) { sum += v, ++n; }
    double value() const { return n > 0 ? sum / static_cast<double>(n) : 0; }
  };
  StepMetrics last_;
  int64_t steps_ = 0;
  int64_t skipped_ = 0;
  Mean loss_;  // finite losses only
  int64_t tokens_ = 0;
  double seconds_ = 0;
  double mfu_seconds_ = 0;  // sum of mfu * step_time_s
  double seconds_with_mfu_ = 0;
  Mean forward_, backward_, optimizer_, grad_norm_;
  std::map<std::string, Mean> extras_;  // mean over the steps that reported each
};

std::string EvalLine(const EvalMetrics& m);  // "eval step 250 | loss 2.1034 | ppl 8.19 | ..."

// Helpers, exposed for tests: "950", "41.2k", "1.23M"; "10.3/12.0 GiB" (one unit for both).
std::string FormatCount(double v);
std::string FormatBytesPair(uint64_t a, uint64_t b);

}  // namespace ds::engine::internal
