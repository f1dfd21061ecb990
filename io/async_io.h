// AsyncIo: many file reads and writes in flight at once. Two backends: io_uring (queue depth N,
// registered buffers, O_DIRECT files) and a thread pool of pread/pwrite for kernels, seccomp
// profiles or containers that forbid io_uring, and for files whose Env must see every byte
// (MemEnv, FaultEnv). OpenAsyncIo probes io_uring, honours DSTRAIN_IO_BACKEND=uring|pwrite, and
// logs which backend runs and why.
// Thread safety: Write/Read/Drain may be called from any thread. Callbacks run on internal
// threads; they must be short and must not call Drain.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>

#include "io/env.h"
#include "io/status.h"

namespace ds::io {

using IoCallback = std::function<void(const Status&)>;

struct AsyncIoOptions {
  unsigned queue_depth = 32;  // requests in flight; Write/Read block beyond it
  unsigned threads = 4;       // pwrite backend: worker threads
  std::string backend;        // "uring", "pwrite", or empty: DSTRAIN_IO_BACKEND, else probe
  Env* env = nullptr;         // where DSTRAIN_IO_BACKEND is read; null: Env::Default()
};

// What an AsyncIo's requests did, counted since it was opened; the difference of two readings
// describes the interval between them. Whether the disk was kept busy is busy_micros against
// the interval, and in_flight_micros / busy_micros is the mean queue depth while it was.
struct IoStats {
  uint64_t requests = 0;          // completed (reads and writes)
  uint64_t bytes = 0;             // moved by the completed requests
  uint64_t busy_micros = 0;       // time with at least one request in flight
  uint64_t in_flight_micros = 0;  // requests in flight integrated over time (request-microseconds)
  uint64_t full_micros = 0;       // time with queue_depth requests in flight (new ones wait)

  IoStats operator-(const IoStats& earlier) const;
  IoStats& operator+=(const IoStats& other);
  double mean_in_flight() const {
    return busy_micros == 0 ? 0.0 : static_cast<double>(in_flight_micros) / busy_micros;
  }
};

// Keeps IoStats for a queue: Start when a request enters it, Finish when it completes, each with
// the time (microseconds, monotonic). The backends call it with the clock; tests with made-up
// times. Thread safe.
class InFlightMeter {
 public:
  explicit InFlightMeter(unsigned depth) : depth_(depth) {}
  void Start(uint64_t now_micros);
  void Finish(uint64_t now_micros, uint64_t bytes);
  IoStats stats(uint64_t now_micros) const;  // including the interval up to now

 private:
  void AdvanceLocked(uint64_t now_micros) const;
  const unsigned depth_;
  mutable std::mutex mu_;
  mutable IoStats stats_;
  mutable uint64_t last_micros_ = 0;
  unsigned in_flight_ = 0;
};

// The clock the backends' meters use (steady, microseconds).
uint64_t MonotonicMicros();

class AsyncIo {
 public:
  virtual ~AsyncIo() = default;  // waits for requests in flight

  // "uring" or "pwrite", and why it was chosen (for logs and benchmark output).
  virtual const std::string& backend() const = 0;
  virtual const std::string& reason() const = 0;

  // Queues a write of all of `data` at `offset`. `data` and `file` must stay valid until
  // `done` has run. Short writes are continued, EINTR/EAGAIN retried.
  virtual void Write(File* file, uint64_t offset, std::span<const std::byte> data,
                     IoCallback done) = 0;
  // Queues a read of exactly out.size() bytes; a file that ends first is reported as
  // Corruption naming the file, the offset and both sizes.
  virtual void Read(File* file, uint64_t offset, std::span<std::byte> out, IoCallback done) = 0;
  // Waits for every request queued so far; returns the first error since the last Drain.
  virtual Status Drain() = 0;

  // Counters since this AsyncIo was opened (see IoStats).
  virtual IoStats stats() const = 0;

  // Registers a long-lived buffer (io_uring fixed buffer) so I/O into it skips page pinning.
  // A no-op for backends without the notion. Unregister before freeing the memory.
  virtual void RegisterBuffer(std::span<std::byte> region) { (void)region; }
  virtual void UnregisterBuffer(std::span<std::byte> region) { (void)region; }
};

Result<std::unique_ptr<AsyncIo>> OpenAsyncIo(const AsyncIoOptions& options);

// The pwrite/pread thread-pool backend, directly (tests, and the uring backend's helper).
std::unique_ptr<AsyncIo> NewThreadPoolIo(const AsyncIoOptions& options, std::string reason);

// Whether this process may use io_uring; on false, `why` says what refused it.
bool ProbeIoUring(std::string* why);

// The error for a read that hit end of file early.
Status ShortReadStatus(const File& file, uint64_t offset, size_t wanted, size_t got);

}  // namespace ds::io
