// dsckpt bench io: sequential write (until fsynced) and read of one file with each async I/O
// backend, beside fio's own direct io_uring numbers on the same directory in the same run.
// Thread safety: one run at a time per directory.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bench/fio.h"
#include "io/env.h"

namespace ds::bench {

struct IoBenchOptions {
  std::string dir;
  uint64_t size_bytes = uint64_t{1} << 30;
  uint64_t block_bytes = 4 << 20;  // as fio --bs=4M
  unsigned queue_depth = 16;       // as fio --iodepth=16
  bool run_fio = true;
  // Runs of each measurement, interleaved (ours, fio, ours, fio, ...) so that a noisy disk
  // affects both alike; the report gives medians.
  unsigned repeat = 3;
};

struct IoBackendResult {
  std::string backend;  // "uring" or "pwrite"
  std::string reason;
  bool direct = false;  // the file really was opened with O_DIRECT
  double write_bps = 0;
  double read_bps = 0;
};

struct IoBenchReport {
  std::vector<IoBackendResult> backends;  // the default (probed) backend first
  FioResult fio;
};

// The median of a list of measurements (0 for none).
double Median(std::vector<double> values);

Result<IoBenchReport> RunIoBench(io::Env* env, const IoBenchOptions& options);

// The table people read, and the one JSON line programs read.
std::string IoBenchTable(const IoBenchOptions& options, const IoBenchReport& report);
std::string IoBenchJson(const IoBenchOptions& options, const IoBenchReport& report);

}  // namespace ds::bench
