// Moving offloaded ZeRO state between the host and the GPU without stalling either: through a
// few page-locked staging slots in the device's dtype, asynchronously, with the conversions to
// and from fp32 done by the host's threads (DeepSpeed's pinned swap buffers, in small).
//
// Before, each step allocated whole-partition pageable temporaries for every transfer
// (`grad.add_(sum.to(cpu float))`, `device_bf16.copy_(host_fp32)`): page faults, a host-side
// dtype conversion and a synchronous pageable copy, ~0.4 s a step at GPT-2 124M.
//
// GradSink (device -> host, the gradients): Send() queues a slot's device-to-host copy on the
// current stream and hands the slot to a worker thread, which waits for that copy alone and
// writes (or adds) it into the host fp32 buffer, while backward goes on. Jobs run in the order
// they were sent. Drain() waits for every job.
// Uploader (host -> device, the new weights): Upload() converts host fp32 into a slot and queues
// the slot's host-to-device copy on the current stream; the next chunk is converted while that
// one travels. Later work on the stream sees the data; a slot is reused once its copy is done.
//
// On a CPU device both are plain copies (no slots, no thread): the same calls, so the CPU tests
// drive the same accumulation logic.
// Thread safety: one caller thread (the training thread) per object.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <memory>

#include "io/status.h"

namespace ds::engine {

class GradSink {
 public:
  // `slots` staging slots of `slot_elements` each (allocated at the first Send, in its dtype).
  GradSink(at::Device device, int64_t slot_elements, int slots);
  ~GradSink();  // waits for the jobs
  GradSink(const GradSink&) = delete;
  GradSink& operator=(const GradSink&) = delete;

  // dst = src, or dst += src with `add` (src: a contiguous 1-D tensor on the device, any float
  // dtype; dst: the same number of fp32 elements on the host). src may be freed or reused by
  // work queued after this call on the current stream; dst must not be touched until Drain().
  void Send(const at::Tensor& src, const at::Tensor& dst, bool add);
  // dst = 0, in order with the sends.
  void Zero(const at::Tensor& dst);
  // Every job done; the first error of any since the last Drain (named after `what` by the
  // caller), then the sink is clean again.
  Status Drain();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

class Uploader {
 public:
  Uploader(at::Device device, int64_t slot_elements);
  ~Uploader();  // waits for the copies in flight
  Uploader(const Uploader&) = delete;
  Uploader& operator=(const Uploader&) = delete;

  // dst (on the device, any dtype, contiguous) = src (fp32 on the host, same numel). src may be
  // changed as soon as this returns.
  void Upload(const at::Tensor& src, const at::Tensor& dst);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ds::engine
