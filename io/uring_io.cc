// The io_uring backend. One ring; callers submit under a mutex, one thread reaps completions and
// resubmits what is unfinished (short transfers, EINTR, EAGAIN). Requests on files without a
// kernel descriptor, and unaligned requests on O_DIRECT files, go to a pread/pwrite helper.
#include <cerrno>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "io/async_io.h"

#if DS_HAVE_LIBURING
#include <liburing.h>
#endif

namespace ds::io {

#if !DS_HAVE_LIBURING

bool ProbeIoUring(std::string* why) {
  *why = "dstrain was built without liburing";
  return false;
}
std::unique_ptr<AsyncIo> NewUringIo(const AsyncIoOptions&, std::string, Status* error) {
  *error = Status::Unavailable("dstrain was built without liburing");
  return nullptr;
}

#else

bool ProbeIoUring(std::string* why) {
  struct io_uring ring;
  int rc = io_uring_queue_init(4, &ring, 0);
  if (rc < 0) {
    *why = ErrnoStatus("io_uring_setup", -rc).message();
    return false;
  }
  // Setup alone can pass where submission is filtered: run one no-op through the ring.
  struct io_uring_sqe* sqe = io_uring_get_sqe(&ring);
  io_uring_prep_nop(sqe);
  rc = io_uring_submit(&ring);
  struct io_uring_cqe* cqe = nullptr;
  if (rc >= 0) rc = io_uring_wait_cqe(&ring, &cqe);
  if (rc >= 0 && cqe->res < 0) rc = cqe->res;
  if (cqe != nullptr) io_uring_cqe_seen(&ring, cqe);
  io_uring_queue_exit(&ring);
  if (rc < 0) {
    *why = ErrnoStatus("io_uring_enter", -rc).message();
    return false;
  }
  return true;
}

namespace {

bool Aligned(uint64_t offset, const void* addr, size_t len) {
  return offset % kDirectAlignment == 0 && len % kDirectAlignment == 0 &&
         reinterpret_cast<uintptr_t>(addr) % kDirectAlignment == 0;
}

struct Request {
  File* file;
  int fd;
  bool write;
  uint64_t offset;  // of the whole request
  std::byte* buf;
  size_t len;
  size_t done = 0;  // bytes transferred so far
  int fixed_index = -1;
  IoCallback cb;
};

class UringIo final : public AsyncIo {
 public:
  UringIo(const AsyncIoOptions& options, std::string reason)
      : depth_(options.queue_depth == 0 ? 1 : options.queue_depth),
        reason_(std::move(reason)),
        meter_(depth_),
        helper_(NewThreadPoolIo(options, "helper for unaligned or non-kernel files")) {}

  Status Init() {
    int rc = io_uring_queue_init(depth_ + 1, &ring_, 0);  // +1: the shutdown no-op
    if (rc < 0) return ErrnoStatus("io_uring_setup", -rc);
    rc = io_uring_register_buffers_sparse(&ring_, kMaxFixed);
    fixed_supported_ = rc == 0;
    reaper_ = std::thread([this] { ReapLoop(); });
    initialized_ = true;
    return Status::OK();
  }

  ~UringIo() override {
    if (!initialized_) return;
    (void)Drain();
    {
      std::lock_guard<std::mutex> lock(sq_mu_);
      struct io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      io_uring_prep_nop(sqe);
      io_uring_sqe_set_data(sqe, nullptr);  // tells the reaper to stop
      io_uring_submit(&ring_);
    }
    reaper_.join();
    io_uring_queue_exit(&ring_);
  }

  const std::string& backend() const override { return name_; }
  const std::string& reason() const override { return reason_; }
  // The ring's requests; the helper's (rare: unaligned or non-kernel files) are added in, their
  // busy time counted as if it were the ring's.
  IoStats stats() const override {
    IoStats a = meter_.stats(MonotonicMicros());
    return a += helper_->stats();
  }

  void Write(File* file, uint64_t offset, std::span<const std::byte> data,
             IoCallback done) override {
    Start(file, true, offset, const_cast<std::byte*>(data.data()), data.size(), std::move(done));
  }
  void Read(File* file, uint64_t offset, std::span<std::byte> out, IoCallback done) override {
    Start(file, false, offset, out.data(), out.size(), std::move(done));
  }

  Status Drain() override {
    Status helper_status = helper_->Drain();
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return in_flight_ == 0; });
    Status s = std::move(first_error_);
    first_error_ = Status::OK();
    return s.ok() ? helper_status : s;
  }

  void RegisterBuffer(std::span<std::byte> region) override {
    if (!fixed_supported_) return;
    std::lock_guard<std::mutex> lock(sq_mu_);
    if (free_slots_.empty() && next_slot_ >= kMaxFixed) return;  // table full: plain I/O
    unsigned slot;
    if (!free_slots_.empty()) {
      slot = free_slots_.back();
      free_slots_.pop_back();
    } else {
      slot = next_slot_++;
    }
    struct iovec iov {
      region.data(), region.size()
    };
    __u64 tag = 0;
    if (io_uring_register_buffers_update_tag(&ring_, slot, &iov, &tag, 1) < 0) {
      free_slots_.push_back(slot);
      return;
    }
    fixed_[region.data()] = {region.size(), slot};
  }

  void UnregisterBuffer(std::span<std::byte> region) override {
    std::lock_guard<std::mutex> lock(sq_mu_);
    auto it = fixed_.find(region.data());
    if (it == fixed_.end()) return;
    struct iovec iov {
      nullptr, 0
    };
    __u64 tag = 0;
    io_uring_register_buffers_update_tag(&ring_, it->second.slot, &iov, &tag, 1);
    free_slots_.push_back(it->second.slot);
    fixed_.erase(it);
  }

 private:
  static constexpr unsigned kMaxFixed = 1024;
  struct Fixed {
    size_t size;
    unsigned slot;
  };

  void Start(File* file, bool write, uint64_t offset, std::byte* buf, size_t len, IoCallback done) {
    int fd = file->NativeFd();
    if (fd < 0 || (file->direct() && !Aligned(offset, buf, len)) || len == 0) {
      if (write) {
        helper_->Write(file, offset, {buf, len}, std::move(done));
      } else {
        helper_->Read(file, offset, {buf, len}, std::move(done));
      }
      return;
    }
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return in_flight_ < depth_; });
      ++in_flight_;
      meter_.Start(MonotonicMicros());
    }
    auto* req = new Request{file, fd, write, offset, buf, len, 0, -1, std::move(done)};
    std::lock_guard<std::mutex> lock(sq_mu_);
    auto it = fixed_.upper_bound(buf);
    if (it != fixed_.begin()) {
      --it;
      if (buf + len <= it->first + it->second.size)
        req->fixed_index = static_cast<int>(it->second.slot);
    }
    SubmitLocked(req);
  }

  // Caller holds sq_mu_.
  void SubmitLocked(Request* req) {
    struct io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    while (sqe == nullptr) {  // cannot happen with depth+1 entries, but never spin silently
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
    }
    std::byte* p = req->buf + req->done;
    unsigned n = static_cast<unsigned>(req->len - req->done);
    uint64_t off = req->offset + req->done;
    if (req->write) {
      if (req->fixed_index >= 0) {
        io_uring_prep_write_fixed(sqe, req->fd, p, n, off, req->fixed_index);
      } else {
        io_uring_prep_write(sqe, req->fd, p, n, off);
      }
    } else {
      if (req->fixed_index >= 0) {
        io_uring_prep_read_fixed(sqe, req->fd, p, n, off, req->fixed_index);
      } else {
        io_uring_prep_read(sqe, req->fd, p, n, off);
      }
    }
    io_uring_sqe_set_data(sqe, req);
    io_uring_submit(&ring_);
  }

  void ReapLoop() {
    while (true) {
      struct io_uring_cqe* cqe = nullptr;
      int rc = io_uring_wait_cqe(&ring_, &cqe);
      if (rc == -EINTR) continue;
      if (rc < 0) continue;  // transient: the ring itself is still valid
      auto* req = static_cast<Request*>(io_uring_cqe_get_data(cqe));
      int res = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      if (req == nullptr) return;  // shutdown
      HandleCompletion(req, res);
    }
  }

  void HandleCompletion(Request* req, int res) {
    if (res == -EINTR || res == -EAGAIN) {
      std::lock_guard<std::mutex> lock(sq_mu_);
      SubmitLocked(req);
      return;
    }
    Status status;
    if (res < 0) {
      status = ErrnoStatus(std::string(req->write ? "write " : "read ") + req->file->path() +
                               " at offset " + std::to_string(req->offset + req->done),
                           -res);
    } else if (res == 0 && !req->write) {
      status = ShortReadStatus(*req->file, req->offset, req->len, req->done);
    } else {
      req->done += static_cast<size_t>(res);
      if (req->done < req->len) {
        if (req->file->direct() &&
            !Aligned(req->offset + req->done, req->buf + req->done, req->len - req->done)) {
          status = FinishUnaligned(req);  // rare: a short transfer that broke alignment
        } else {
          std::lock_guard<std::mutex> lock(sq_mu_);
          SubmitLocked(req);
          return;
        }
      }
    }
    meter_.Finish(MonotonicMicros(), status.ok() ? req->len : 0);
    if (req->cb) req->cb(status);
    delete req;
    std::lock_guard<std::mutex> lock(mu_);
    if (!status.ok() && first_error_.ok()) first_error_ = status;
    --in_flight_;
    cv_.notify_all();
  }

  static Status FinishUnaligned(Request* req) {
    uint64_t off = req->offset + req->done;
    size_t rest = req->len - req->done;
    if (req->write) return req->file->WriteAt(off, {req->buf + req->done, rest});
    Result<size_t> n = req->file->ReadAt(off, {req->buf + req->done, rest});
    if (!n.ok()) return n.status();
    if (*n != rest) return ShortReadStatus(*req->file, req->offset, req->len, req->done + *n);
    return Status::OK();
  }

  const std::string name_ = "uring";
  unsigned depth_;
  std::string reason_;
  InFlightMeter meter_;
  std::unique_ptr<AsyncIo> helper_;
  struct io_uring ring_;
  std::mutex sq_mu_;  // guards the submission queue and the fixed-buffer table
  std::map<std::byte*, Fixed> fixed_;
  std::vector<unsigned> free_slots_;
  unsigned next_slot_ = 0;
  bool fixed_supported_ = false;
  bool initialized_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  unsigned in_flight_ = 0;
  Status first_error_;
  std::thread reaper_;
};

}  // namespace

std::unique_ptr<AsyncIo> NewUringIo(const AsyncIoOptions& options, std::string reason,
                                    Status* error) {
  auto io = std::make_unique<UringIo>(options, std::move(reason));
  *error = io->Init();
  if (!error->ok()) return nullptr;
  return io;
}

#endif

}  // namespace ds::io
