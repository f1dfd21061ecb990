#include "io/buffer_pool.h"

#include <chrono>
#include <cstdlib>
#include <string>

namespace ds::io {

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    Release();
    pool_ = other.pool_;
    data_ = other.data_;
    size_ = other.size_;
    capacity_ = other.capacity_;
    other.pool_ = nullptr;
    other.data_ = nullptr;
    other.size_ = other.capacity_ = 0;
  }
  return *this;
}

void Buffer::Release() {
  if (pool_ != nullptr && data_ != nullptr) pool_->Return(data_, capacity_);
  pool_ = nullptr;
  data_ = nullptr;
  size_ = capacity_ = 0;
}

BufferPool::BufferPool(BufferPoolOptions options) : options_(std::move(options)) {
  if (options_.alignment == 0) options_.alignment = 1;
}

BufferPool::~BufferPool() {
  std::multimap<size_t, std::byte*> cached;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cached.swap(cached_);
  }
  for (auto& [cap, data] : cached) FreeBlock(data, cap);
}

Result<Buffer> BufferPool::Acquire(size_t bytes, uint64_t timeout_micros) {
  const size_t align = options_.alignment;
  const size_t cap = bytes == 0 ? align : (bytes + align - 1) / align * align;
  if (cap > options_.capacity_bytes) {
    return Status::InvalidArgument("a staging buffer of " + FormatBytes(bytes) +
                                   " does not fit the pool's capacity of " +
                                   FormatBytes(options_.capacity_bytes) +
                                   "; raise the staging memory limit");
  }
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::microseconds(timeout_micros == UINT64_MAX ? 0 : timeout_micros);
  std::vector<std::pair<std::byte*, size_t>> evicted;  // freed outside the lock
  std::byte* block = nullptr;
  {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      auto it = cached_.find(cap);
      if (it != cached_.end()) {
        block = it->second;
        cached_.erase(it);
        break;
      }
      // Make room by dropping cached blocks of other sizes.
      while (allocated_ + cap > options_.capacity_bytes && !cached_.empty()) {
        auto victim = cached_.begin();
        evicted.emplace_back(victim->second, victim->first);
        allocated_ -= victim->first;
        cached_.erase(victim);
      }
      if (allocated_ + cap <= options_.capacity_bytes) {
        allocated_ += cap;  // reserve; allocate below, outside the lock
        break;
      }
      if (timeout_micros == UINT64_MAX) {
        cv_.wait(lock);
      } else if (cv_.wait_until(lock, deadline) == std::cv_status::timeout &&
                 std::chrono::steady_clock::now() >= deadline) {
        return Status::Unavailable("staging memory is full (" +
                                   FormatBytes(options_.capacity_bytes) +
                                   " in use) and no buffer came back in time");
      }
    }
    in_use_ += cap;
    if (in_use_ > peak_) peak_ = in_use_;
  }
  for (auto& [data, c] : evicted) FreeBlock(data, c);
  if (block == nullptr) {
    block = static_cast<std::byte*>(std::aligned_alloc(align, cap));
    if (block == nullptr) {
      std::lock_guard<std::mutex> lock(mu_);
      allocated_ -= cap;
      in_use_ -= cap;
      cv_.notify_all();
      return Status::IOError("out of memory allocating a " + FormatBytes(cap) +
                             " staging buffer");
    }
    if (options_.on_allocate) options_.on_allocate(block, cap);
  }
  Buffer buf;
  buf.pool_ = this;
  buf.data_ = block;
  buf.size_ = bytes;
  buf.capacity_ = cap;
  return buf;
}

void BufferPool::Return(std::byte* data, size_t capacity) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    in_use_ -= capacity;
    cached_.emplace(capacity, data);
  }
  cv_.notify_all();
}

void BufferPool::FreeBlock(std::byte* data, size_t capacity) {
  if (options_.on_release) options_.on_release(data, capacity);
  std::free(data);
}

uint64_t BufferPool::in_use_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return in_use_;
}
uint64_t BufferPool::peak_in_use_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return peak_;
}
uint64_t BufferPool::allocated_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return allocated_;
}

}  // namespace ds::io
