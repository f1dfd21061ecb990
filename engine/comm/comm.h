// The collectives of data-parallel training over c10d: NCCL for CUDA tensors, Gloo for CPU
// tensors, rendezvous through a TCPStore that rank 0 hosts. Every call is bounded by the
// configured timeout and turns a timeout or a dead peer into a Status that names the
// operation, its size, the ranks and the seconds; none throws and none hangs past the timeout.
// Thread safety: one thread issues collectives, in the same order on every rank.
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "io/status.h"

namespace ds::ckpt {
class KeyValueStore;
}  // namespace ds::ckpt

namespace c10d {
class Backend;
class Store;
class Work;
}  // namespace c10d

namespace ds::engine {

struct CommOptions {
  int rank = 0;
  int world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string backend;            // "nccl", "gloo", or "" (nccl for a CUDA device, else gloo)
  bool cuda = false;              // the tensors live on the GPU
  double timeout_s = 600;         // each collective and the rendezvous
  bool time_collectives = false;  // wait for GPU collectives to finish so stats hold real times
};

// Bytes and time per kind of collective ("all_reduce", "reduce_scatter", ...), this rank.
struct CollectiveStats {
  int64_t calls = 0;
  uint64_t bytes = 0;  // payload this rank contributed (input tensor bytes)
  double seconds = 0;  // from issue to completion, as the host saw it
};

class Comm;

// An issued collective; Wait() completes it (once). Dropping an unwaited handle waits.
class CommHandle {
 public:
  CommHandle() = default;
  CommHandle(CommHandle&&) noexcept;
  CommHandle& operator=(CommHandle&&) noexcept;
  ~CommHandle();
  Status Wait();
  bool pending() const;

 private:
  friend class Comm;
  Comm* comm_ = nullptr;
  c10::intrusive_ptr<c10d::Work>* work_ = nullptr;  // owned
  std::string op_;                                  // "all_gather"
  std::string what_;                                // "parameters of unit 3"
  uint64_t bytes_ = 0;
  uint64_t start_us_ = 0;
};

class Comm {
 public:
  // Connects to the job's store (rank 0 creates it) and builds the process group. An error
  // names the address, port and what to check (another job on the port, a wrong MASTER_ADDR).
  static Result<std::unique_ptr<Comm>> Connect(const CommOptions& options);
  ~Comm();

  // A communicator over some of this one's ranks (`ranks`: ranks of this communicator,
  // ascending, this rank among them), as torch.distributed.new_group: the same backend, its own
  // connections, rendezvous under `name` ("tp-0") in the same store. Only the members call
  // it, each group in the same order. rank() and world_size() of the result count within it.
  Result<std::unique_ptr<Comm>> NewGroup(const std::string& name, const std::vector<int>& ranks);

  int rank() const { return options_.rank; }
  int world_size() const { return options_.world_size; }
  const std::string& backend_name() const { return backend_name_; }

  // All ops are sums over ranks. `what` names the payload in messages ("gradients bucket 3").
  Status AllReduce(at::Tensor& t, const std::string& what);
  // Sum of every rank's `in`, rank r keeping elements [r*n, (r+1)*n) in `out` (n = out.numel()).
  Result<CommHandle> ReduceScatterAsync(at::Tensor& out, at::Tensor& in, const std::string& what);
  // Sum of every rank's `t` into `root`'s `t` (others' `t` is left undefined).
  Result<CommHandle> ReduceAsync(at::Tensor& t, int root, const std::string& what);
  // `out` (world_size * in.numel()) = every rank's `in`, in rank order.
  Result<CommHandle> AllGatherAsync(at::Tensor& out, at::Tensor& in, const std::string& what);
  Status AllGather(at::Tensor& out, at::Tensor& in, const std::string& what);
  Status Broadcast(at::Tensor& t, int root, const std::string& what);
  Status Barrier(const std::string& what);
  // Point to point (pipeline stages): `t` to rank `dst`, matched in order by a Recv on `dst`
  // with the same tag (NCCL matches by order alone).
  Result<CommHandle> SendAsync(at::Tensor& t, int dst, int tag, const std::string& what);
  Status Recv(at::Tensor& t, int src, int tag, const std::string& what);

  // The rendezvous store, as the coordination store of checkpoint saves (ckpt/kv_store.h):
  // background saves then need no collectives. Valid while this Comm lives.
  std::unique_ptr<ckpt::KeyValueStore> NewCheckpointStore();

  const std::map<std::string, CollectiveStats>& stats() const { return stats_; }
  void ResetStats() { stats_.clear(); }

 private:
  friend class CommHandle;
  explicit Comm(const CommOptions& options);
  Result<CommHandle> Issue(const std::string& op, const std::string& what, uint64_t bytes,
                           const std::function<c10::intrusive_ptr<c10d::Work>()>& start);
  Status Complete(CommHandle& h);
  std::string Describe(const std::string& op, uint64_t bytes) const;
  int GlobalRank(int r) const { return members_.empty() ? r : members_[static_cast<size_t>(r)]; }
  // Every second each rank posts how many collectives it has issued; after a failed collective
  // the others' posts say who is behind (alive but elsewhere) or silent (dead, stopped, cut off).
  void Heartbeat();
  std::string DiagnoseFailure(bool timed_out);

  // The process group of `o` over `store` (Gloo or NCCL as backend_name_ says).
  Status CreateBackend(const CommOptions& o);

  CommOptions options_;
  std::string backend_name_;
  std::string group_;         // "" for the world; a group's name ("tp-0")
  std::vector<int> members_;  // a group's ranks in its parent (for messages)
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::Backend> pg_;
  std::map<std::string, CollectiveStats> stats_;
  std::atomic<int64_t> issued_{0};  // collectives issued by this rank
  std::mutex mu_;                   // guards last_op_ and stop_
  std::condition_variable wake_;
  std::string last_op_;
  bool stop_ = false;
  std::thread heartbeat_;
};

}  // namespace ds::engine
