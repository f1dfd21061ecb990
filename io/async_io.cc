// The thread-pool backend and the backend choice. The io_uring backend is in uring_io.cc.
#include "io/async_io.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>

#include "io/log.h"
#include "io/thread_pool.h"

namespace ds::io {

std::unique_ptr<AsyncIo> NewUringIo(const AsyncIoOptions& options, std::string reason,
                                    Status* error);  // uring_io.cc

Status ShortReadStatus(const File& file, uint64_t offset, size_t wanted, size_t got) {
  return Status::Corruption(file.path() + ": expected " + std::to_string(wanted) +
                            " bytes at offset " + std::to_string(offset) +
                            " but the file ends after " + std::to_string(got) +
                            " (truncated file?)");
}

// ---- IoStats and InFlightMeter

IoStats IoStats::operator-(const IoStats& e) const {
  return {requests - e.requests, bytes - e.bytes, busy_micros - e.busy_micros,
          in_flight_micros - e.in_flight_micros, full_micros - e.full_micros};
}

IoStats& IoStats::operator+=(const IoStats& o) {
  requests += o.requests;
  bytes += o.bytes;
  busy_micros += o.busy_micros;
  in_flight_micros += o.in_flight_micros;
  full_micros += o.full_micros;
  return *this;
}

uint64_t MonotonicMicros() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

// Charges the time since the last change to the state the queue was in.
void InFlightMeter::AdvanceLocked(uint64_t now) const {
  const uint64_t dt = now > last_micros_ ? now - last_micros_ : 0;
  last_micros_ = std::max(last_micros_, now);
  if (in_flight_ == 0) return;
  stats_.busy_micros += dt;
  stats_.in_flight_micros += dt * in_flight_;
  if (in_flight_ >= depth_) stats_.full_micros += dt;
}

void InFlightMeter::Start(uint64_t now) {
  std::lock_guard<std::mutex> lock(mu_);
  AdvanceLocked(now);
  ++in_flight_;
}

void InFlightMeter::Finish(uint64_t now, uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  AdvanceLocked(now);
  if (in_flight_ > 0) --in_flight_;
  ++stats_.requests;
  stats_.bytes += bytes;
}

IoStats InFlightMeter::stats(uint64_t now) const {
  std::lock_guard<std::mutex> lock(mu_);
  AdvanceLocked(now);
  return stats_;
}

// ---- the thread-pool backend

namespace {

class ThreadPoolIo final : public AsyncIo {
 public:
  ThreadPoolIo(const AsyncIoOptions& options, std::string reason)
      : depth_(options.queue_depth == 0 ? 1 : options.queue_depth),
        reason_(std::move(reason)),
        meter_(depth_),
        pool_(options.threads == 0 ? 1 : options.threads) {}
  ~ThreadPoolIo() override { (void)Drain(); }

  const std::string& backend() const override { return name_; }
  const std::string& reason() const override { return reason_; }
  IoStats stats() const override { return meter_.stats(MonotonicMicros()); }

  void Write(File* file, uint64_t offset, std::span<const std::byte> data,
             IoCallback done) override {
    Enqueue([file, offset, data] { return file->WriteAt(offset, data); }, data.size(),
            std::move(done));
  }
  void Read(File* file, uint64_t offset, std::span<std::byte> out, IoCallback done) override {
    Enqueue(
        [file, offset, out]() -> Status {
          Result<size_t> n = file->ReadAt(offset, out);
          if (!n.ok()) return n.status();
          if (*n != out.size()) return ShortReadStatus(*file, offset, out.size(), *n);
          return Status::OK();
        },
        out.size(), std::move(done));
  }
  Status Drain() override {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return in_flight_ == 0; });
    Status s = std::move(first_error_);
    first_error_ = Status::OK();
    return s;
  }

 private:
  void Enqueue(std::function<Status()> op, size_t bytes, IoCallback done) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return in_flight_ < depth_; });
      ++in_flight_;
      meter_.Start(MonotonicMicros());
    }
    pool_.Submit([this, op = std::move(op), bytes, done = std::move(done)] {
      Status s = op();
      meter_.Finish(MonotonicMicros(), s.ok() ? bytes : 0);
      if (done) done(s);
      std::lock_guard<std::mutex> lock(mu_);
      if (!s.ok() && first_error_.ok()) first_error_ = s;
      --in_flight_;
      cv_.notify_all();
    });
  }

  const std::string name_ = "pwrite";
  unsigned depth_;
  std::string reason_;
  std::mutex mu_;
  std::condition_variable cv_;
  unsigned in_flight_ = 0;
  Status first_error_;
  InFlightMeter meter_;
  ThreadPool pool_;  // last: its threads stop before the members they use go away
};

}  // namespace

std::unique_ptr<AsyncIo> NewThreadPoolIo(const AsyncIoOptions& options, std::string reason) {
  return std::make_unique<ThreadPoolIo>(options, std::move(reason));
}

Result<std::unique_ptr<AsyncIo>> OpenAsyncIo(const AsyncIoOptions& options) {
  std::string choice = options.backend;
  std::string source = "asked for by the caller";
  if (choice.empty()) {
    Env* env = options.env != nullptr ? options.env : Env::Default();
    const std::optional<std::string> asked = env->GetEnvVar("DSTRAIN_IO_BACKEND");
    if (asked.has_value() && !asked->empty()) {
      choice = *asked;
      source = "DSTRAIN_IO_BACKEND=" + choice;
    }
  }
  if (!choice.empty() && choice != "uring" && choice != "pwrite") {
    return Status::InvalidArgument("unknown io backend '" + choice + "' (" + source +
                                   "); use uring or pwrite");
  }
  std::unique_ptr<AsyncIo> io;
  if (choice == "pwrite") {
    io = NewThreadPoolIo(options, source);
  } else {
    std::string why;
    if (ProbeIoUring(&why)) {
      Status error;
      io = NewUringIo(options, choice.empty() ? "io_uring probed ok" : source, &error);
      if (io == nullptr) why = error.ToString();
    }
    if (io == nullptr) {
      if (choice == "uring") {
        return Status::Unavailable("io_uring was requested (" + source +
                                   ") but is not usable here: " + why +
                                   "; set DSTRAIN_IO_BACKEND=pwrite");
      }
      io = NewThreadPoolIo(options, "io_uring unavailable: " + why);
    }
  }
  // Said once per process at info level (operators want to know), then only in debug logs.
  static std::atomic<bool> said{false};
  Log(said.exchange(true) ? LogLevel::kDebug : LogLevel::kInfo,
      "io backend: " + io->backend() + " (" + io->reason() + ")");
  return io;
}

}  // namespace ds::io
