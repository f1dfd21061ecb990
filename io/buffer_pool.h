// BufferPool: aligned staging buffers with a bounded total size. Acquire blocks while the pool
// is full, which is how a save applies backpressure instead of growing without limit. Freed
// buffers are kept for reuse (pinning or registering them is costly); hooks let the engine pin
// each block for CUDA (cudaHostRegister) and the io layer register it with io_uring.
// Thread safety: all calls may come from any thread; a Buffer belongs to one owner.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <span>
#include <vector>

#include "io/env.h"
#include "io/status.h"

namespace ds::io {

struct BufferPoolOptions {
  uint64_t capacity_bytes = uint64_t{1} << 30;  // all blocks together, in use or cached
  size_t alignment = kDirectAlignment;          // bytes; block sizes are rounded up to it
  // Called once per block after it is allocated / before it is freed (e.g. pin and unpin).
  std::function<void(std::byte*, size_t)> on_allocate;
  std::function<void(std::byte*, size_t)> on_release;
};

class BufferPool;

// A block from the pool; returns itself when destroyed. Move-only.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Buffer&& other) noexcept { *this = std::move(other); }
  Buffer& operator=(Buffer&& other) noexcept;
  ~Buffer() { Release(); }

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }          // bytes asked for
  size_t capacity() const { return capacity_; }  // bytes of the block (aligned)
  std::span<std::byte> span() const { return {data_, size_}; }
  bool empty() const { return data_ == nullptr; }
  void Release();

 private:
  friend class BufferPool;
  BufferPool* pool_ = nullptr;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
  size_t capacity_ = 0;
};

class BufferPool {
 public:
  explicit BufferPool(BufferPoolOptions options);
  ~BufferPool();  // all Buffers must have been returned
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // A block of at least `bytes`, waiting up to `timeout_micros` for space. Unavailable after
  // the timeout; InvalidArgument when `bytes` exceeds the whole capacity.
  Result<Buffer> Acquire(size_t bytes, uint64_t timeout_micros = UINT64_MAX);

  uint64_t capacity_bytes() const { return options_.capacity_bytes; }
  uint64_t in_use_bytes() const;
  uint64_t peak_in_use_bytes() const;
  uint64_t allocated_bytes() const;  // in use + cached

 private:
  friend class Buffer;
  void Return(std::byte* data, size_t capacity);
  void FreeBlock(std::byte* data, size_t capacity);  // mu_ not held

  BufferPoolOptions options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::multimap<size_t, std::byte*> cached_;  // capacity -> free block
  uint64_t allocated_ = 0;
  uint64_t in_use_ = 0;
  uint64_t peak_ = 0;
};

}  // namespace ds::io
