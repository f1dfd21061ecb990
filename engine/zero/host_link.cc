// Staged, asynchronous transfers of offloaded ZeRO state (internal/host_link.h). Written against
// LibTorch's device-generic stream and event API (c10::Event, VirtualGuardImpl), so no CUDA
// header is needed here and a CPU build runs the plain-copy path.
#include "engine/zero/internal/host_link.h"

#include <ATen/ATen.h>
#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/torch_status.h"

namespace ds::engine {
namespace {

c10::Stream CurrentStream(at::Device d) {
  return c10::impl::VirtualGuardImpl(d.type()).getStream(d);
}

// A page-locked buffer of `n` elements of `dtype`, kept while the dtype stays the same.
void EnsureBuffer(at::Tensor& buf, int64_t n, at::ScalarType dtype) {
  if (buf.defined() && buf.scalar_type() == dtype) return;
  buf = at::empty({n}, at::TensorOptions().dtype(dtype).pinned_memory(true));
}

struct StagingSlot {
  at::Tensor buf;
  c10::Event done;  // recorded after the slot's last copy was queued
  explicit StagingSlot(at::Device d) : done(d.type()) {}
};

}  // namespace

// ---- device to host

struct GradSink::Impl {
  struct Job {
    int slot = -1;  // -1: zero `dst`
    int64_t n = 0;
    at::Tensor dst;
    bool add = false;
  };
  at::Device device;
  int64_t slot_elements = 0;
  std::vector<std::unique_ptr<StagingSlot>> slots;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Job> jobs;   // guarded by mu
  std::vector<int> free;  // guarded by mu
  bool busy = false;      // guarded by mu: the worker holds a job
  bool stop = false;      // guarded by mu
  Status error;           // guarded by mu
  at::Tensor scratch;     // the worker's fp32 copy of a slot it adds from
  std::thread worker;

  explicit Impl(at::Device d) : device(d) {}

  bool staged() const { return !device.is_cpu(); }

  int Acquire() {
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return !free.empty(); });
    const int k = free.back();
    free.pop_back();
    return k;
  }

  void Push(Job j) {
    {
      std::lock_guard<std::mutex> l(mu);
      jobs.push_back(std::move(j));
    }
    cv.notify_all();
  }

  void Do(const Job& j) {
    if (j.slot < 0) {
      j.dst.zero_();
      return;
    }
    StagingSlot& s = *slots[static_cast<size_t>(j.slot)];
    s.done.synchronize();  // this slot's copy only: backward goes on meanwhile
    const at::Tensor src = s.buf.narrow(0, 0, j.n);
    if (!j.add) {
      j.dst.copy_(src);  // converts to fp32 as it copies
    } else if (src.scalar_type() == at::kFloat) {
      j.dst.add_(src);
    } else {  // a mixed-dtype add would allocate a converted temporary every time
      if (!scratch.defined()) scratch = at::empty({slot_elements}, at::kFloat);
      at::Tensor f = scratch.narrow(0, 0, j.n);
      f.copy_(src);
      j.dst.add_(f);
    }
  }

  void Run() {
    for (;;) {
      Job j;
      {
        std::unique_lock<std::mutex> l(mu);
        cv.wait(l, [&] { return stop || !jobs.empty(); });
        if (jobs.empty()) return;  // stopping, nothing left
        j = std::move(jobs.front());
        jobs.pop_front();
        busy = true;
      }
      Status s = TorchCall("writing offloaded gradients into host memory", [&] { Do(j); });
      {
        std::lock_guard<std::mutex> l(mu);
        if (!s.ok() && error.ok()) error = s;
        if (j.slot >= 0) free.push_back(j.slot);
        busy = false;
      }
      cv.notify_all();
    }
  }
};

GradSink::GradSink(at::Device device, int64_t slot_elements, int slots)
    : impl_(std::make_unique<Impl>(device)) {
  Impl& z = *impl_;
  z.slot_elements = std::max<int64_t>(slot_elements, 1);
  if (!z.staged()) return;
  for (int k = 0; k < std::max(slots, 1); ++k) {
    z.slots.push_back(std::make_unique<StagingSlot>(device));
    z.free.push_back(k);
  }
  z.worker = std::thread([this] { impl_->Run(); });
}

GradSink::~GradSink() {
  if (!impl_->worker.joinable()) return;
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    impl_->stop = true;
  }
  impl_->cv.notify_all();
  impl_->worker.join();
}

void GradSink::Send(const at::Tensor& src, const at::Tensor& dst, bool add) {
  Impl& z = *impl_;
  if (!z.staged() || src.is_cpu()) {
    add ? dst.add_(src) : dst.copy_(src);
    return;
  }
  const int64_t n = src.numel();
  for (int64_t c = 0; c < n; c += z.slot_elements) {
    const int64_t m = std::min(z.slot_elements, n - c);
    const int k = z.Acquire();
    StagingSlot& s = *z.slots[static_cast<size_t>(k)];
    EnsureBuffer(s.buf, z.slot_elements, src.scalar_type());
    s.buf.narrow(0, 0, m).copy_(src.narrow(0, c, m), /*non_blocking=*/true);
    s.done.record(CurrentStream(z.device));
    z.Push({k, m, dst.narrow(0, c, m), add});
  }
}

void GradSink::Zero(const at::Tensor& dst) {
  if (!impl_->staged()) {
    dst.zero_();
    return;
  }
  impl_->Push({-1, dst.numel(), dst, false});
}

Status GradSink::Drain() {
  Impl& z = *impl_;
  std::unique_lock<std::mutex> l(z.mu);
  z.cv.wait(l, [&] { return z.jobs.empty() && !z.busy; });
  Status e = z.error;
  z.error = Status::OK();
  return e;
}

// ---- host to device

struct Uploader::Impl {
  at::Device device;
  int64_t slot_elements = 0;
  std::unique_ptr<StagingSlot> slots[2];
  int next = 0;
  explicit Impl(at::Device d) : device(d) {}
};

Uploader::Uploader(at::Device device, int64_t slot_elements)
    : impl_(std::make_unique<Impl>(device)) {
  impl_->slot_elements = std::max<int64_t>(slot_elements, 1);
  if (device.is_cpu()) return;
  for (auto& s : impl_->slots) s = std::make_unique<StagingSlot>(device);
}

Uploader::~Uploader() {
  for (auto& s : impl_->slots) {
    if (s) s->done.synchronize();
  }
}

void Uploader::Upload(const at::Tensor& src, const at::Tensor& dst) {
  Impl& z = *impl_;
  if (dst.is_cpu() || z.device.is_cpu()) {
    dst.copy_(src);
    return;
  }
  const at::Tensor from = src.reshape({-1}), to = dst.view({-1});
  const int64_t n = from.numel();
  for (int64_t c = 0; c < n; c += z.slot_elements) {
    const int64_t m = std::min(z.slot_elements, n - c);
    StagingSlot& s = *z.slots[z.next];
    z.next ^= 1;
    s.done.synchronize();  // the slot's previous chunk has left
    EnsureBuffer(s.buf, z.slot_elements, to.scalar_type());
    at::Tensor stage = s.buf.narrow(0, 0, m);
    stage.copy_(from.narrow(0, c, m));  // the dtype conversion, on the host's threads
    to.narrow(0, c, m).copy_(stage, /*non_blocking=*/true);
    s.done.record(CurrentStream(z.device));
  }
}

}  // namespace ds::engine
