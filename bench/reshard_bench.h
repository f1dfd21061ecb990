// dsckpt bench reshard / export: reshard a synthetic checkpoint (fp32 master weights and Adam moments of
// a model, ZeRO-partitioned over N ranks) to M ranks, against the disk's bound for the same
// bytes (fio's direct read time plus write time, same directory, same run); the reshard runs as
// a child process so its peak RSS can be compared with its --memory limit. `export` does the
// same for `dsckpt export` of the master weights to safetensors.
// Thread safety: one run at a time per directory.
#pragma once

#include <cstdint>
#include <string>

#include "bench/fio.h"
#include "formats/chunk_codec.h"
#include "io/env.h"

namespace ds::bench {

struct ReshardBenchOptions {
  // "reshard" (N -> M ranks), or "export" (the master weights to safetensors, fp32).
  std::string operation = "reshard";
  std::string dir;
  uint64_t size_bytes = uint64_t{4} << 30;
  uint32_t from_world = 2, to_world = 3;
  uint32_t from_stage = 1, to_stage = 1;
  uint64_t memory_bytes = uint64_t{1} << 30;
  fmt::Codec codec = fmt::Codec::kRaw;
  std::string dsckpt;  // the program to run (this one)
  bool run_fio = true;
  bool keep = false;
};

struct ReshardBenchReport {
  double reshard_s = 0;  // the operation's wall time
  double bound_s = 0;    // bytes read / fio read + bytes written / fio write
  uint64_t bytes = 0;    // logical bytes written
  uint64_t stored_bytes = 0;
  uint64_t peak_rss_bytes = 0;
  FioResult fio;
};

Result<ReshardBenchReport> RunReshardBench(io::Env* env, const ReshardBenchOptions& options);
std::string ReshardBenchTable(const ReshardBenchOptions& o, const ReshardBenchReport& r);
std::string ReshardBenchJson(const ReshardBenchOptions& o, const ReshardBenchReport& r);

// Writes a synthetic model's training state (tensors master/tK, optim/exp_avg/tK,
// optim/exp_avg_sq/tK of 4096 columns) as a checkpoint of `ranks` ranks at `stage` into
// `save_dir`; returns its path.
Result<std::string> WriteSyntheticModel(io::Env* env, const std::string& save_dir, uint64_t bytes,
                                        uint32_t ranks, uint32_t stage, fmt::Codec codec);

}  // namespace ds::bench
