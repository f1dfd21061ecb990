#include "engine/comm/comm.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "ckpt/kv_store.h"
#include "engine/torch_status.h"
#include "io/env.h"
#include "io/units.h"

#if DS_TORCH_HAS_CUDA
#include <c10/cuda/CUDAStream.h>

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace ds::engine {
namespace {

std::chrono::milliseconds Millis(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

uint64_t Bytes(const at::Tensor& t) { return static_cast<uint64_t>(t.numel()) * t.element_size(); }

uint64_t NowMicros() { return io::Env::Default()->NowMicros(); }

std::string Seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g s", s);
  return buf;
}

std::string RankList(int world) {
  return world == 1 ? "rank 0" : world == 2 ? "ranks 0, 1" : "ranks 0-" + std::to_string(world - 1);
}

}  // namespace

// ---- handles

CommHandle::CommHandle(CommHandle&& o) noexcept { *this = std::move(o); }
CommHandle& CommHandle::operator=(CommHandle&& o) noexcept {
  if (this != &o) {
    if (pending()) (void)Wait();
    comm_ = o.comm_;
    work_ = o.work_;
    op_ = std::move(o.op_);
    what_ = std::move(o.what_);
    bytes_ = o.bytes_;
    start_us_ = o.start_us_;
    o.comm_ = nullptr;
    o.work_ = nullptr;
  }
  return *this;
}
CommHandle::~CommHandle() {
  if (pending()) (void)Wait();
}
bool CommHandle::pending() const { return work_ != nullptr; }
Status CommHandle::Wait() {
  if (!pending()) return Status::OK();
  return comm_->Complete(*this);
}

// ---- connection

namespace {

// The local IPv4 address the kernel would use to reach `host` (a UDP "connect" sends nothing).
// Gloo's default binds to whatever this machine's hostname resolves to, often 127.0.0.1, which
// peers on other hosts cannot reach.
std::string LocalAddressTowards(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 || res == nullptr)
    return "";
  std::string out;
  const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  if (fd >= 0 && ::connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
    sockaddr_in local{};
    socklen_t len = sizeof local;
    char text[INET_ADDRSTRLEN] = {};
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0 &&
        inet_ntop(AF_INET, &local.sin_addr, text, sizeof text) != nullptr) {
      out = text;
    }
  }
  if (fd >= 0) ::close(fd);
  freeaddrinfo(res);
  return out;
}

// GLOO_SOCKET_IFNAME names the interface, as for torch.distributed; else the one that routes
// to the master.
std::shared_ptr<::gloo::transport::Device> GlooDevice(const CommOptions& o) {
  // CommOptions carries no Env: the variable comes from the process's own environment.
  if (const std::optional<std::string> ifname = io::Env::Default()->GetEnvVar("GLOO_SOCKET_IFNAME");
      ifname.has_value() && !ifname->empty()) {
    return c10d::ProcessGroupGloo::createDeviceForInterface(*ifname);
  }
  const std::string local = LocalAddressTowards(o.master_addr, o.master_port);
  return local.empty() ? c10d::ProcessGroupGloo::createDefaultDevice()
                       : c10d::ProcessGroupGloo::createDeviceForHostname(local);
}

}  // namespace

Comm::Comm(const CommOptions& options) : options_(options) {}
Comm::~Comm() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (heartbeat_.joinable()) heartbeat_.join();
  if (pg_) {
    try {
      pg_->shutdown();
    } catch (const std::exception&) {
      // the job is ending either way; a peer that is already gone makes shutdown complain
    }
  }
}

Result<std::unique_ptr<Comm>> Comm::Connect(const CommOptions& o) {
  if (o.world_size < 1 || o.rank < 0 || o.rank >= o.world_size) {
    return Status::InvalidArgument("rank " + std::to_string(o.rank) + " of world size " +
                                   std::to_string(o.world_size) + " is not a place in the job");
  }
  // c10d's flight recorder (one per process) records every collective with a captured
  // traceback, and in torch 2.11 registers each process group in a map outside its lock: several
  // groups issuing their first collectives at once (ranks as threads, tensor- and
  // pipeline-parallel groups) can corrupt it and spin forever (pytorch/pytorch#179313). We do not
  // dump its traces (the heartbeats name a stuck rank): off unless the user sets the size.
  setenv("TORCH_FR_BUFFER_SIZE", "0", /*overwrite=*/0);
  std::unique_ptr<Comm> c(new Comm(o));
  c->backend_name_ = o.backend.empty() ? (o.cuda ? "nccl" : "gloo") : o.backend;
  const std::string where = o.master_addr + ":" + std::to_string(o.master_port);
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(o.master_port);
    so.isServer = o.rank == 0;
    so.numWorkers = o.world_size;
    so.waitWorkers = false;
    so.timeout = Millis(o.timeout_s);
    c->store_ = c10::make_intrusive<c10d::TCPStore>(o.master_addr, so);
  } catch (const std::exception& e) {
    return Status::Unavailable(
        "rank " + std::to_string(o.rank) + ": cannot " + (o.rank == 0 ? "host" : "reach") +
        " the rendezvous store at " + where + " (" + TorchMessage(e) +
        "); check MASTER_ADDR/MASTER_PORT, that no other job uses the port, and that rank 0 runs");
  }
  DS_RETURN_IF_ERROR(c->CreateBackend(o));
  if (o.world_size > 1) c->heartbeat_ = std::thread([p = c.get()] { p->Heartbeat(); });
  return c;
}

Status Comm::CreateBackend(const CommOptions& o) {
  const std::string where = o.master_addr + ":" + std::to_string(o.master_port);
  try {
    if (backend_name_ == "gloo") {
      auto opts = c10d::ProcessGroupGloo::Options::create(Millis(o.timeout_s));
      opts->devices.push_back(GlooDevice(o));
      pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store_, o.rank, o.world_size, opts);
    } else if (backend_name_ == "nccl") {
#if DS_TORCH_HAS_CUDA
      // Without blocking wait, NCCL's watchdog aborts the process on a timeout and our message
      // never prints; with it, wait() throws and the job ends with a Status.
      setenv("TORCH_NCCL_BLOCKING_WAIT", "1", 0);
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = Millis(o.timeout_s);
      pg_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(store_, o.rank, o.world_size, opts);
#else
      return Status::FailedPrecondition("backend nccl: this LibTorch was built without CUDA");
#endif
    } else {
      return Status::InvalidArgument("communication backend '" + backend_name_ +
                                     "' is not supported (nccl, gloo)");
    }
  } catch (const std::exception& e) {
    return Status::Unavailable("rank " + std::to_string(o.rank) + ": setting up " + backend_name_ +
                               (group_.empty() ? "" : " group " + group_) + " with " +
                               RankList(o.world_size) + " through " + where + " failed within " +
                               Seconds(o.timeout_s) + ": " + TorchMessage(e));
  }
  return Status::OK();
}

Result<std::unique_ptr<Comm>> Comm::NewGroup(const std::string& name,
                                             const std::vector<int>& ranks) {
  const auto me = std::find(ranks.begin(), ranks.end(), rank());
  if (me == ranks.end() || !std::is_sorted(ranks.begin(), ranks.end())) {
    return Status::InvalidArgument("group " + name + ": rank " + std::to_string(rank()) +
                                   " is not among its ranks, or they are not ascending");
  }
  CommOptions o = options_;
  o.rank = static_cast<int>(me - ranks.begin());
  o.world_size = static_cast<int>(ranks.size());
  std::unique_ptr<Comm> c(new Comm(o));
  c->backend_name_ = backend_name_;
  c->group_ = name;
  for (int r : ranks) c->members_.push_back(members_.empty() ? r : members_[r]);
  c->store_ = c10::make_intrusive<c10d::PrefixStore>("dstrain/group/" + name, store_);
  DS_RETURN_IF_ERROR(c->CreateBackend(o));
  if (o.world_size > 1) c->heartbeat_ = std::thread([p = c.get()] { p->Heartbeat(); });
  return c;
}

// ---- heartbeats

namespace {
std::string HeartbeatKey(int rank) { return "dstrain/heartbeat/" + std::to_string(rank); }
}  // namespace

void Comm::Heartbeat() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    const std::string value = std::to_string(issued_.load()) + " " +
                              std::to_string(io::Env::Default()->WallTimeMicros()) + " " + last_op_;
    lock.unlock();
    try {
      store_->set(HeartbeatKey(rank()), std::vector<uint8_t>(value.begin(), value.end()));
    } catch (const std::exception&) {
      return;  // the store (rank 0) is gone: the collectives will say so
    }
    lock.lock();
    wake_.wait_for(lock, std::chrono::seconds(1), [this] { return stop_; });
  }
}

std::string Comm::DiagnoseFailure(bool timed_out) {
  struct Post {
    int64_t issued = -1, at = 0;  // at: wall-clock microseconds of the post
    std::string op;
  };
  auto read = [this](int r, Post* p) {
    if (!store_->check({HeartbeatKey(r)})) return;
    std::vector<uint8_t> v = store_->get(HeartbeatKey(r));
    std::istringstream in(std::string(v.begin(), v.end()));
    in >> p->issued >> p->at >> p->op;
  };
  std::string out;
  const int64_t mine = issued_.load();
  try {
    std::vector<Post> first(static_cast<size_t>(world_size())), now = first;
    for (int r = 0; r < world_size(); ++r) {
      if (r != rank()) read(r, &first[static_cast<size_t>(r)]);
    }
    // A closed connection is reported at once, before a dead peer's last post has aged:
    // watch whether the posts still come.
    if (!timed_out) std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    for (int r = 0; r < world_size(); ++r) {
      if (r != rank()) read(r, &now[static_cast<size_t>(r)]);
    }
    const int64_t wall = io::Env::Default()->WallTimeMicros();
    for (int r = 0; r < world_size(); ++r) {
      const Post& p = now[static_cast<size_t>(r)];
      const std::string who = "; rank " + std::to_string(GlobalRank(r));
      if (r == rank()) continue;
      if (p.issued < 0) {
        out += who + " never posted a heartbeat";
      } else if (timed_out ? wall - p.at > 3'000'000 : p.at == first[static_cast<size_t>(r)].at) {
        out += who + " has been silent for " +
               Seconds(std::round(static_cast<double>(wall - p.at) / 1e6)) +
               " (dead, stopped or unreachable)";
      } else if (p.issued < mine) {
        out += who + " is alive but " + std::to_string(mine - p.issued) +
               " collective(s) behind (last: " + (p.op.empty() ? "none" : p.op) + ")";
      }
    }
  } catch (const std::exception&) {
    return "; the rendezvous store on rank 0 is unreachable (rank 0 died?)";
  }
  return out;
}

// ---- issuing and completing

std::string Comm::Describe(const std::string& op, uint64_t bytes) const {
  std::string ranks = RankList(world_size());
  if (!group_.empty()) {
    ranks = "group " + group_ + " (global ranks";
    for (size_t i = 0; i < members_.size(); ++i)
      ranks += (i ? ", " : " ") + std::to_string(members_[i]);
    ranks += ")";
  }
  return op + " of " + io::FormatBytes(bytes) + " across " + ranks + " (" + backend_name_ + ")";
}

Result<CommHandle> Comm::Issue(const std::string& op, const std::string& what, uint64_t bytes,
                               const std::function<c10::intrusive_ptr<c10d::Work>()>& start) {
  CommHandle h;
  h.comm_ = this;
  h.op_ = op;
  h.what_ = what;
  h.bytes_ = bytes;
  h.start_us_ = NowMicros();
  issued_.fetch_add(1);
  {
    std::lock_guard<std::mutex> lock(mu_);
    last_op_ = op;
  }
  try {
    h.work_ = new c10::intrusive_ptr<c10d::Work>(start());
  } catch (const std::exception& e) {
    h.comm_ = nullptr;
    return Status::Unavailable("rank " + std::to_string(GlobalRank(rank())) + ": " +
                               Describe(op, bytes) + " of " + what +
                               " failed to start: " + TorchMessage(e));
  }
  return h;
}

Status Comm::Complete(CommHandle& h) {
  std::unique_ptr<c10::intrusive_ptr<c10d::Work>> work(h.work_);
  h.work_ = nullptr;
  Status s;
  try {
    (*work)->wait(Millis(options_.timeout_s));
#if DS_TORCH_HAS_CUDA
    if (options_.time_collectives && options_.cuda) c10::cuda::getCurrentCUDAStream().synchronize();
#endif
  } catch (const std::exception& e) {
    std::string m = TorchMessage(e);
    const bool timed_out =
        m.find("imeout") != std::string::npos || m.find("imed out") != std::string::npos;
    std::string who = DiagnoseFailure(timed_out);
    s = Status::Unavailable(
        "rank " + std::to_string(GlobalRank(rank())) + ": " + Describe(h.op_, h.bytes_) + " of " +
        h.what_ + (timed_out ? " timed out after " + Seconds(options_.timeout_s) : " failed") +
        (who.empty() ? ": a rank died or stopped answering" : who) +
        " (comms.timeout_s sets the limit; see the other ranks' output). " +
        m.substr(0, m.find('\n')));
  }
  CollectiveStats& st = stats_[h.op_];
  st.calls += 1;
  st.bytes += h.bytes_;
  st.seconds += static_cast<double>(NowMicros() - h.start_us_) / 1e6;
  return s;
}

// ---- the collectives

Status Comm::AllReduce(at::Tensor& t, const std::string& what) {
  std::vector<at::Tensor> v{t};
  DS_ASSIGN_OR_RETURN(CommHandle h,
                      Issue("all_reduce", what, Bytes(t), [&] { return pg_->allreduce(v); }));
  return h.Wait();
}

Result<CommHandle> Comm::ReduceScatterAsync(at::Tensor& out, at::Tensor& in,
                                            const std::string& what) {
  if (in.numel() != out.numel() * world_size()) {
    return Status::InvalidArgument(
        "reduce_scatter of " + what + ": input has " + std::to_string(in.numel()) +
        " elements, not " + std::to_string(world_size()) + " x " + std::to_string(out.numel()));
  }
  return Issue("reduce_scatter", what, Bytes(in),
               [&] { return pg_->_reduce_scatter_base(out, in); });
}

Result<CommHandle> Comm::ReduceAsync(at::Tensor& t, int root, const std::string& what) {
  std::vector<at::Tensor> v{t};
  c10d::ReduceOptions ro;
  ro.rootRank = root;
  return Issue("reduce", what, Bytes(t), [&] { return pg_->reduce(v, ro); });
}

Result<CommHandle> Comm::AllGatherAsync(at::Tensor& out, at::Tensor& in, const std::string& what) {
  if (out.numel() != in.numel() * world_size()) {
    return Status::InvalidArgument(
        "all_gather of " + what + ": output has " + std::to_string(out.numel()) +
        " elements, not " + std::to_string(world_size()) + " x " + std::to_string(in.numel()));
  }
  return Issue("all_gather", what, Bytes(in), [&] { return pg_->_allgather_base(out, in); });
}

Status Comm::AllGather(at::Tensor& out, at::Tensor& in, const std::string& what) {
  DS_ASSIGN_OR_RETURN(CommHandle h, AllGatherAsync(out, in, what));
  return h.Wait();
}

Status Comm::Broadcast(at::Tensor& t, int root, const std::string& what) {
  std::vector<at::Tensor> v{t};
  c10d::BroadcastOptions bo;
  bo.rootRank = root;
  DS_ASSIGN_OR_RETURN(CommHandle h,
                      Issue("broadcast", what, Bytes(t), [&] { return pg_->broadcast(v, bo); }));
  return h.Wait();
}

Status Comm::Barrier(const std::string& what) {
  DS_ASSIGN_OR_RETURN(CommHandle h, Issue("barrier", what, 0, [&] { return pg_->barrier(); }));
  return h.Wait();
}

Result<CommHandle> Comm::SendAsync(at::Tensor& t, int dst, int tag, const std::string& what) {
  std::vector<at::Tensor> v{t};
  return Issue("send", what, Bytes(t), [&] { return pg_->send(v, dst, tag); });
}

Status Comm::Recv(at::Tensor& t, int src, int tag, const std::string& what) {
  std::vector<at::Tensor> v{t};
  DS_ASSIGN_OR_RETURN(CommHandle h,
                      Issue("recv", what, Bytes(t), [&] { return pg_->recv(v, src, tag); }));
  return h.Wait();
}

// ---- the checkpoint writer's store

namespace {

class C10dKeyValueStore final : public ckpt::KeyValueStore {
 public:
  explicit C10dKeyValueStore(c10::intrusive_ptr<c10d::Store> store) : store_(std::move(store)) {}

  Status Set(const std::string& key, const std::string& value) override {
    return Guard("set " + key,
                 [&] { store_->set(Key(key), std::vector<uint8_t>(value.begin(), value.end())); });
  }
  Result<std::optional<std::string>> Get(const std::string& key) override {
    std::optional<std::string> out;
    DS_RETURN_IF_ERROR(Guard("get " + key, [&] {
      if (!store_->check({Key(key)})) return;
      std::vector<uint8_t> v = store_->get(Key(key));
      out = std::string(v.begin(), v.end());
    }));
    return out;
  }
  Status Delete(const std::string& key) override {
    return Guard("delete " + key, [&] { store_->deleteKey(Key(key)); });
  }

 private:
  static std::string Key(const std::string& key) { return "dstrain/ckpt/" + key; }
  static Status Guard(const std::string& what, const std::function<void()>& fn) {
    try {
      fn();
      return Status::OK();
    } catch (const std::exception& e) {
      return Status::Unavailable("the rendezvous store (rank 0) failed to " + what + ": " +
                                 TorchMessage(e));
    }
  }
  c10::intrusive_ptr<c10d::Store> store_;
};

}  // namespace

std::unique_ptr<ckpt::KeyValueStore> Comm::NewCheckpointStore() {
  return std::make_unique<C10dKeyValueStore>(store_);
}

}  // namespace ds::engine
