// `dsrun bench adam`: the CPU Adam step of ZeRO-Offload (AdamWStep on host buffers) against
// torch's own CPU AdamW on the same data, in elements per second, at one thread and at all.
// Thread safety: one run at a time (it sets LibTorch's intra-op thread count).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/status.h"

namespace ds::bench {

struct AdamBenchOptions {
  int64_t elements = 100'000'000;  // fp32 parameters in the buffer (400 MB per buffer, 4 buffers)
  int threads = 0;                 // 0: LibTorch's default (at::get_num_threads())
  int repeat = 5;                  // timed steps per row, after one untimed step; median reported
};

struct AdamBenchRow {
  std::string name;    // "torch AdamW (default)", "dstrain plain", "dstrain fused"
  int threads = 0;
  double seconds = 0;  // one step, median
  double elements_per_s = 0;
  double vs_torch = 0;  // elements_per_s over torch's default at the same thread count
};

struct AdamBenchReport {
  int64_t elements = 0;
  std::vector<AdamBenchRow> rows;
  double max_abs_diff = 0;  // fused against torch's default after the same three steps
  std::string cpu;          // the CPU's model name, from /proc/cpuinfo
  std::string capability;   // LibTorch's CPU kernel level (at::get_cpu_capability())
};

Result<AdamBenchReport> RunAdamBench(const AdamBenchOptions& options);
std::string AdamBenchTable(const AdamBenchReport& report);
std::string AdamBenchJson(const AdamBenchReport& report);

}  // namespace ds::bench
