// dsckpt bench save: a whole save and load of synthetic training state (fp32 master weights and
// Adam moments) from N in-process ranks, against a plain memcpy of the same bytes (for the
// stall) and fio's direct write and read on the same directory (for the disk; our own io
// benchmark where fio is not installed), in one run.
// Thread safety: one run at a time per directory.
#pragma once

#include <cstdint>
#include <string>

#include "bench/fio.h"
#include "ckpt/writer.h"
#include "formats/chunk_codec.h"
#include "io/env.h"

namespace ds::bench {

struct SaveBenchOptions {
  std::string dir;
  uint64_t size_bytes = uint64_t{4} << 30;  // logical bytes, all ranks together
  uint32_t ranks = 1;
  fmt::Codec codec = fmt::Codec::kByteGroupZstd;
  uint64_t chunk_bytes = 4 << 20;
  // Measured rounds (save, load, fio), after one unmeasured save that pays for staging's page
  // faults; medians are reported.
  unsigned repeat = 3;
  bool keep = false;  // leave the save directory behind
  bool run_fio = true;
  std::string io_backend;  // "", "uring", "pwrite"
};

struct SaveBenchReport {
  std::string backend;
  double stall_s = 0;   // the slowest rank's snapshot
  double memcpy_s = 0;  // the same bytes copied by as many threads into warm memory
  double save_s = 0;    // Begin until every rank's handle is done (retention included)
  // Begin until the checkpoint and `latest` are durable (rank 0's step 8); the stored bytes
  // over this are what is compared with the disk's direct-write bound.
  double durable_s = 0;
  ckpt::SaveStats breakdown;  // rank 0's stats of the round with the median durable time
  double load_s = 0;          // every rank reading its slices back, checksums verified
  uint64_t logical_bytes = 0;
  uint64_t stored_bytes = 0;
  std::string path;  // the checkpoint (gone unless keep)
  FioResult fio;
  // Without fio: our io benchmark's direct write and read of the same bytes (medians).
  std::string io_backend;
  double io_write_bps = 0;
  double io_read_bps = 0;
};

Result<SaveBenchReport> RunSaveBench(io::Env* env, const SaveBenchOptions& options);
std::string SaveBenchTable(const SaveBenchOptions& options, const SaveBenchReport& report);
std::string SaveBenchJson(const SaveBenchOptions& options, const SaveBenchReport& report);

}  // namespace ds::bench
