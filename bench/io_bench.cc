#include "bench/io_bench.h"

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>

#include "io/async_io.h"
#include "io/buffer_pool.h"

namespace ds::bench {
namespace {

// A fixed set of buffers handed out round-robin; a slot is free again when its I/O completes.
class Slots {
 public:
  explicit Slots(size_t n) : busy_(n, false) {}
  size_t Take() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      for (size_t i = 0; i < busy_.size(); ++i) {
        size_t k = (next_ + i) % busy_.size();
        if (!busy_[k]) {
          busy_[k] = true;
          next_ = k + 1;
          return k;
        }
      }
      cv_.wait(lock);
    }
  }
  void Give(size_t k) {
    std::lock_guard<std::mutex> lock(mu_);
    busy_[k] = false;
    cv_.notify_one();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<bool> busy_;
  size_t next_ = 0;
};

Result<IoBackendResult> RunOneBackend(io::Env* env, const IoBenchOptions& o,
                                      const std::string& backend) {
  io::AsyncIoOptions aopts;
  aopts.backend = backend;
  aopts.queue_depth = o.queue_depth;
  aopts.threads = o.queue_depth;  // the pwrite pool gets as many threads as requests in flight
  DS_ASSIGN_OR_RETURN(std::unique_ptr<io::AsyncIo> aio, io::OpenAsyncIo(aopts));

  io::BufferPool pool({.capacity_bytes = o.block_bytes * o.queue_depth});
  std::vector<io::Buffer> bufs;
  std::mt19937_64 rng(42);
  for (unsigned i = 0; i < o.queue_depth; ++i) {
    DS_ASSIGN_OR_RETURN(io::Buffer b, pool.Acquire(o.block_bytes));
    auto* words = reinterpret_cast<uint64_t*>(b.data());
    for (size_t w = 0; w < b.size() / 8; ++w) words[w] = rng();  // incompressible
    aio->RegisterBuffer({b.data(), b.capacity()});
    bufs.push_back(std::move(b));
  }

  const std::string path = io::JoinPath(o.dir, "dstrain-io-bench-" + backend + ".dat");
  IoBackendResult r{backend, aio->reason()};
  Slots slots(bufs.size());
  auto run = [&](bool write) -> Result<double> {
    io::OpenOptions open{write ? io::OpenMode::kTruncate : io::OpenMode::kRead, true};
    DS_ASSIGN_OR_RETURN(std::unique_ptr<io::File> f, env->OpenFile(path, open));
    r.direct = f->direct();
    if (write) DS_RETURN_IF_ERROR(f->Preallocate(o.size_bytes));  // as fio's fallocate=native
    uint64_t t0 = env->NowMicros();
    for (uint64_t off = 0; off < o.size_bytes; off += o.block_bytes) {
      size_t len = static_cast<size_t>(std::min<uint64_t>(o.block_bytes, o.size_bytes - off));
      size_t k = slots.Take();
      auto done = [&slots, k](const Status&) { slots.Give(k); };
      if (write) {
        aio->Write(f.get(), off, {bufs[k].data(), len}, done);
      } else {
        aio->Read(f.get(), off, {bufs[k].data(), len}, done);
      }
    }
    DS_RETURN_IF_ERROR(aio->Drain()) << "benchmark file " << path;
    if (write) DS_RETURN_IF_ERROR(f->Sync());
    double seconds = static_cast<double>(env->NowMicros() - t0) / 1e6;
    DS_RETURN_IF_ERROR(f->Close());
    return static_cast<double>(o.size_bytes) / seconds;
  };
  Result<double> w = run(true);
  Result<double> rd = w.ok() ? run(false) : w;
  for (io::Buffer& b : bufs) aio->UnregisterBuffer({b.data(), b.capacity()});
  (void)env->RemoveFile(path);  // best effort: the measurement is what matters
  if (!rd.ok()) return rd.status();
  r.write_bps = *w;
  r.read_bps = *rd;
  return r;
}

}  // namespace

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

Result<IoBenchReport> RunIoBench(io::Env* env, const IoBenchOptions& o) {
  if (o.block_bytes == 0 || o.block_bytes % io::kDirectAlignment != 0) {
    return Status::InvalidArgument("--block must be a multiple of 4 KiB");
  }
  DS_ASSIGN_OR_RETURN(io::FileInfo info, env->Stat(o.dir));
  if (!info.is_dir) return Status::InvalidArgument(o.dir + " is not a directory");
  DS_ASSIGN_OR_RETURN(io::SpaceInfo space, env->StatFs(o.dir));
  if (space.available_bytes < o.size_bytes + (64 << 20)) {
    return Status::NoSpace("the benchmark needs " + io::FormatBytes(o.size_bytes) + " in " +
                           o.dir + " but only " + io::FormatBytes(space.available_bytes) +
                           " is free; pass a smaller --size");
  }
  IoBenchReport report;
  std::string why;
  std::vector<std::string> order = {"pwrite"};
  if (io::ProbeIoUring(&why)) order.insert(order.begin(), "uring");
  const unsigned repeat = std::max(1u, o.repeat);
  std::vector<std::vector<IoBackendResult>> runs(order.size());
  std::vector<FioResult> fio_runs;
  for (unsigned rep = 0; rep < repeat; ++rep) {
    for (size_t b = 0; b < order.size(); ++b) {
      DS_ASSIGN_OR_RETURN(IoBackendResult r, RunOneBackend(env, o, order[b]));
      runs[b].push_back(std::move(r));
    }
    if (o.run_fio) fio_runs.push_back(RunFio(o.dir, o.size_bytes, o.block_bytes, o.queue_depth));
  }
  for (auto& backend_runs : runs) {
    IoBackendResult r = backend_runs.front();
    std::vector<double> w, rd;
    for (const IoBackendResult& x : backend_runs) {
      w.push_back(x.write_bps);
      rd.push_back(x.read_bps);
    }
    r.write_bps = Median(w);
    r.read_bps = Median(rd);
    report.backends.push_back(std::move(r));
  }
  report.backends.front().reason =
      order.size() == 1 ? "io_uring unavailable: " + why : "io_uring probed ok";
  if (!o.run_fio) {
    report.fio.why_not = "skipped (--no-fio)";
  } else if (!fio_runs.front().ran) {
    report.fio = fio_runs.front();
  } else {
    report.fio = fio_runs.front();
    std::vector<double> w, rd;
    for (const FioResult& f : fio_runs) {
      w.push_back(f.write_bps);
      rd.push_back(f.read_bps);
    }
    report.fio.write_bps = Median(w);
    report.fio.read_bps = Median(rd);
  }
  return report;
}

std::string IoBenchTable(const IoBenchOptions& o, const IoBenchReport& rep) {
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line,
                "io bench: %s in %s, %s blocks, queue depth %u, median of %u runs\n",
                io::FormatBytes(o.size_bytes).c_str(), o.dir.c_str(),
                io::FormatBytes(o.block_bytes).c_str(), o.queue_depth, std::max(1u, o.repeat));
  out += line;
  std::snprintf(line, sizeof line, "%-8s %-7s %12s %12s %10s %10s\n", "backend", "direct",
                "write", "read", "write/fio", "read/fio");
  out += line;
  auto ratio = [&](double ours, double fio) {
    if (!rep.fio.ran || fio <= 0) return std::string("-");
    char b[16];
    std::snprintf(b, sizeof b, "%.2fx", ours / fio);
    return std::string(b);
  };
  for (const IoBackendResult& r : rep.backends) {
    std::snprintf(line, sizeof line, "%-8s %-7s %12s %12s %10s %10s\n", r.backend.c_str(),
                  r.direct ? "yes" : "no", io::FormatRate(r.write_bps).c_str(),
                  io::FormatRate(r.read_bps).c_str(), ratio(r.write_bps, rep.fio.write_bps).c_str(),
                  ratio(r.read_bps, rep.fio.read_bps).c_str());
    out += line;
  }
  if (rep.fio.ran) {
    std::snprintf(line, sizeof line, "%-8s %-7s %12s %12s   (fio --ioengine=%s --direct=1)\n",
                  "fio", "yes", io::FormatRate(rep.fio.write_bps).c_str(),
                  io::FormatRate(rep.fio.read_bps).c_str(), rep.fio.engine.c_str());
  } else {
    std::snprintf(line, sizeof line, "fio: not run (%s)\n", rep.fio.why_not.c_str());
  }
  out += line;
  out += "default backend here: " + rep.backends.front().backend + " (" +
         rep.backends.front().reason + ")\n";
  return out;
}

std::string IoBenchJson(const IoBenchOptions& o, const IoBenchReport& rep) {
  nlohmann::json j;
  const IoBackendResult& main = rep.backends.front();
  j["bench"] = "io";
  j["dir"] = o.dir;
  j["size_bytes"] = o.size_bytes;
  j["block_bytes"] = o.block_bytes;
  j["queue_depth"] = o.queue_depth;
  j["repeat"] = std::max(1u, o.repeat);
  j["backend"] = main.backend;
  j["direct"] = main.direct;
  j["backend_reason"] = main.reason;
  j["write_bps"] = main.write_bps;
  j["read_bps"] = main.read_bps;
  j["fio_write_bps"] = rep.fio.ran ? nlohmann::json(rep.fio.write_bps) : nlohmann::json();
  j["fio_read_bps"] = rep.fio.ran ? nlohmann::json(rep.fio.read_bps) : nlohmann::json();
  j["fio_engine"] = rep.fio.ran ? nlohmann::json(rep.fio.engine) : nlohmann::json();
  if (!rep.fio.ran) j["fio_why_not"] = rep.fio.why_not;
  for (const IoBackendResult& r : rep.backends) {
    j["backends"][r.backend] = {{"write_bps", r.write_bps}, {"read_bps", r.read_bps},
                                {"direct", r.direct}};
  }
  return j.dump();
}

}  // namespace ds::bench
