// A fixed set of worker threads running queued tasks in FIFO order.
// Thread safety: Submit and Wait may be called from any thread, including from tasks (Wait from
// a task would deadlock: don't).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace ds::io {

class ThreadPool {
 public:
  // `nice` > 0 lowers the workers' scheduling priority by that much (Linux niceness is per
  // thread): background work then yields the CPU to the threads that wait for nothing.
  explicit ThreadPool(size_t threads, int nice = 0);
  ~ThreadPool();  // runs what is queued, then joins
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void Submit(std::function<void()> task);
  // Blocks until the queue is empty and no task is running.
  void Wait();
  size_t size() const { return workers_.size(); }

  // Runs body(i) for i in [0, n) on the pool and the calling thread; returns when all are done.
  void ParallelFor(size_t n, const std::function<void(size_t)>& body);

 private:
  void WorkerLoop();

  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable idle_cv_;
  std::deque<std::function<void()>> queue_;
  size_t running_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

// The number of hardware threads, at least 1.
size_t HardwareThreads();

}  // namespace ds::io
