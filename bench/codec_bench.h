// dsckpt bench codec: compression ratio and single-thread encode/decode speed of each chunk
// codec on synthetic data shaped like training state (bf16 weights, fp32 master weights, Adam
// moments), generated from a fixed seed so that every run sees the same bytes.
// Thread safety: runs on the calling thread; one run at a time.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/env.h"

namespace ds::bench {

struct CodecBenchOptions {
  uint64_t size_bytes = uint64_t{64} << 20;  // per data set
  uint64_t chunk_bytes = uint64_t{4} << 20;  // as the shard writer cuts tensors
  unsigned repeat = 3;                       // timed passes; the report gives medians
  uint64_t seed = 42;
};

struct CodecBenchRow {
  std::string data;   // "bf16-init", "fp32-trained", "adam-exp_avg_sq", ...
  std::string dtype;  // "bfloat16" or "float32"
  std::string codec;  // "raw", "zstd", "bytegroup+zstd"
  int zstd_level = 0;
  double ratio = 0;                // raw bytes / stored bytes
  double encode_bps_per_core = 0;  // raw bytes per second, one thread
  double decode_bps_per_core = 0;
  uint64_t chunks = 0;
  uint64_t chunks_stored_raw = 0;  // compression saved too little
};

struct CodecBenchReport {
  std::vector<CodecBenchRow> rows;  // data sets in order, each with every codec
};

// `env` gives the clock.
Result<CodecBenchReport> RunCodecBench(io::Env* env, const CodecBenchOptions& options);

// The table people read, and one JSON line per (data, codec) for programs.
std::string CodecBenchTable(const CodecBenchOptions& options, const CodecBenchReport& report);
std::string CodecBenchJson(const CodecBenchOptions& options, const CodecBenchReport& report);

}  // namespace ds::bench
