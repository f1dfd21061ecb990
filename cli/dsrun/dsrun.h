// dsrun's command line as a library function, so a program that registers its own model
// (engine/model/model.h) gets the same command line, config handling and exit codes:
//   dsrun --config cfg.json [--set key.path=value ...] [--max-steps N] [--seed S] [--dry-run]
// Exit codes: 0 trained (or the dry run passed), 2 a usage or config error, 1 training failed.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "io/env.h"
#include "io/status.h"

namespace ds::engine {

// How fast the disk under a directory takes sequential direct writes and reads.
struct DiskSpeed {
  std::string backend;   // the async I/O backend measured ("uring", "pwrite")
  bool direct = false;   // the file really was opened with O_DIRECT
  double write_bps = 0;  // bytes per second, until fsynced
  double read_bps = 0;
  double fio_write_bps = 0;  // fio's direct io_uring writes beside ours; 0: fio did not run
};

// What the program around DsrunMain lends it. Disk measurement lives with the storage
// benchmarks (bench/, with fio as its peer): dsrun's main (cli/dsrun/main.cc) passes it, and a
// program built on DsrunMain links them only if it passes it too; without it `dsrun doctor` and
// `dsrun bench` say the disk was not measured.
struct DsrunTools {
  std::function<Result<DiskSpeed>(io::Env* env, const std::string& dir, uint64_t bytes,
                                  bool with_fio)>
      measure_disk;
};

int DsrunMain(int argc, char** argv, const DsrunTools& tools = {});

}  // namespace ds::engine
