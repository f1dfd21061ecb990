// A rank that does not join a collective, for the comms.timeout_s tests of every backend: two
// ranks (threads) connect, all-reduce once together (so the communicator is set up), then rank 0
// all-reduces again while rank 1, alive (its heartbeat still posts), stays away for `stall_s`.
// Rank 0's collective must end within the timeout, with an error that names the operation, the
// timeout and rank 1. Used by comm_timeout_test.cc (Gloo, CPU) and gpu_test.cc (NCCL).
// Thread safety: RunStalledCollective starts and joins its threads.
#pragma once

#include <ATen/ATen.h>

#include <chrono>
#include <functional>
#include <latch>
#include <thread>

#include "engine/comm/comm.h"
#include "launch/launcher.h"

namespace ds::engine::testing {

struct StalledCollective {
  Status setup;        // connecting and the first all-reduce, on either rank
  Status status;       // rank 0's second all-reduce
  double seconds = 0;  // how long rank 0 waited in it
  Status late;         // rank 1's all-reduce, when it joined late
};

struct StallOptions {
  std::string backend = "gloo";
  bool cuda = false;
  double timeout_s = 2;
  double stall_s = 4;
  // Rank 1 joins the collective after the stall (NCCL: the kernel rank 0 left on its stream then
  // completes, and both communicators shut down cleanly); otherwise it never does.
  bool late_join = false;
  std::function<void(int rank)> on_thread_start;  // e.g. pick the rank's GPU
  std::function<at::Tensor(int rank)> make_tensor = [](int) { return at::ones({1024}); };
};

inline StalledCollective RunStalledCollective(const StallOptions& so) {
  StalledCollective out;
  Result<int> port = launch::PickFreePort();
  if (!port.ok()) {
    out.setup = port.status();
    return out;
  }
  std::latch first_done(2), finished(2);
  Status setup[2];
  auto rank_main = [&](int rank) {
    if (so.on_thread_start) so.on_thread_start(rank);
    CommOptions o;
    o.rank = rank;
    o.world_size = 2;
    o.master_port = *port;
    o.backend = so.backend;
    o.cuda = so.cuda;
    o.timeout_s = so.timeout_s;
    Result<std::unique_ptr<Comm>> comm = Comm::Connect(o);
    at::Tensor t = so.make_tensor(rank);
    if (!comm.ok()) {
      setup[rank] = comm.status();
    } else {
      setup[rank] = (*comm)->AllReduce(t, "the first payload");
    }
    first_done.arrive_and_wait();
    if (setup[0].ok() && setup[1].ok()) {
      if (rank == 0) {
        const auto t0 = std::chrono::steady_clock::now();
        out.status = (*comm)->AllReduce(t, "the stalled payload");
        out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      } else {
        std::this_thread::sleep_for(std::chrono::duration<double>(so.stall_s));
        if (so.late_join) out.late = (*comm)->AllReduce(t, "the stalled payload");
      }
    }
    finished.arrive_and_wait();  // neither communicator goes before both ranks are done
  };
  std::thread r1(rank_main, 1);
  rank_main(0);
  r1.join();
  out.setup = !setup[0].ok() ? setup[0] : setup[1];
  return out;
}

}  // namespace ds::engine::testing
