// Runs fio (when installed) for the disk's direct-I/O bound on a directory: sequential write
// (ended by fsync) and read, 4 MiB blocks, queue depth 16, io_uring engine. Every storage
// benchmark compares against these numbers in the same run.
// Thread safety: pure functions over a subprocess.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace ds::bench {

struct FioResult {
  bool ran = false;
  std::string why_not;  // when !ran: "fio is not installed", the error, ...
  double write_bps = 0;
  double read_bps = 0;
  std::string engine;  // the ioengine that ran
};

FioResult RunFio(const std::string& dir, uint64_t size_bytes, uint64_t block_bytes = 4 << 20,
                 unsigned queue_depth = 16);

// Shell-quotes one argument: abc -> 'abc', it's -> 'it'\''s'.
std::string ShellQuote(const std::string& arg);
// Runs a shell command; returns its stdout, or nullopt (and the exit status) on failure.
std::optional<std::string> RunCapture(const std::string& command, int* exit_status);

}  // namespace ds::bench
