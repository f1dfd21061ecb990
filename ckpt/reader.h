// CheckpointReader: executes load plans. It reads each planned chunk once (AsyncIo, O_DIRECT
// where the filesystem allows), verifies its stored checksum, decodes it, verifies its raw
// checksum, and copies the planned byte ranges into the caller's buffers (or hands them to a
// sink, e.g. a host-to-device copy). Memory in flight is bounded.
// Thread safety: one Read at a time per reader; sinks are called from worker threads, each
// destination byte exactly once.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ckpt/plan.h"
#include "formats/manifest.h"
#include "io/env.h"

namespace ds::ckpt {

struct ReaderOptions {
  uint64_t memory_bytes = uint64_t{1} << 30;  // stored + decoded chunks in flight
  unsigned threads = 0;                       // decoders; 0: hardware threads
  unsigned io_queue_depth = 32;
  bool direct_io = true;
  std::string io_backend;  // "", "uring" or "pwrite"
};

struct ReadRequest {
  WantedSlice slice;
  // Where the bytes go: `dst` (exactly the slice's bytes), or `sink(offset, bytes)` called for
  // every piece (offset in bytes from the slice's start).
  std::span<std::byte> dst;
  std::function<Status(uint64_t offset, std::span<const std::byte> bytes)> sink;
};

struct ReadStats {
  uint64_t chunks_read = 0;
  uint64_t stored_bytes = 0;  // read from disk
  uint64_t raw_bytes = 0;     // decoded
  uint64_t copied_bytes = 0;  // delivered to requests
  double seconds = 0;
};

class CheckpointReader {
 public:
  // Reads and validates the manifest of the checkpoint directory `dir`.
  static Result<std::unique_ptr<CheckpointReader>> Open(io::Env* env, const std::string& dir,
                                                        ReaderOptions options = {});
  ~CheckpointReader();

  const fmt::Manifest& manifest() const;
  const std::string& dir() const;

  // Plans and executes. Damage is Corruption naming the chunk, the file and the tensors.
  Result<ReadStats> Read(std::span<const ReadRequest> requests);
  // Reads, verifies and decodes each of `chunks` (manifest indexes) once, and calls fn with its
  // raw bytes from a worker thread, in any order; a failing fn stops the rest. The building
  // block of Read, and of tools that consume whole chunks (reshard).
  Status ForEachChunk(std::span<const uint64_t> chunks,
                      const std::function<Status(uint64_t chunk, std::span<const std::byte> raw)>& fn,
                      ReadStats* stats = nullptr);
  // The bytes of a blob; NotFound names it.
  Result<std::string> ReadBlob(const std::string& name) const;

  struct Impl;

 private:
  explicit CheckpointReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ds::ckpt
