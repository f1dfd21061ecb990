#include "bench/save_bench.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <thread>

#include "bench/io_bench.h"  // Median
#include "bench/synthetic.h"
#include "ckpt/reader.h"
#include "ckpt/writer.h"
#include "io/async_io.h"
#include "io/thread_pool.h"

namespace ds::bench {
namespace {

constexpr uint64_t kBlockBytes = 64 << 20;  // each kind of state is generated once, this big
constexpr int64_t kRowElements = 4096;

// A rank's state: tensors of one block each, cycling through master weights and both Adam
// moments (12 bytes per parameter, as a ZeRO optimizer partition holds).
struct RankState {
  std::vector<ckpt::SaveSlice> slices;
  uint64_t bytes = 0;
};

RankState StateOf(uint32_t rank, uint64_t bytes,
                  const std::vector<std::vector<std::byte>>& blocks) {
  static const char* const kPrefixes[] = {"master/", "optim/exp_avg/", "optim/exp_avg_sq/"};
  RankState s;
  for (uint64_t done = 0, i = 0; done < bytes; ++i) {
    const uint64_t n = std::min<uint64_t>(kBlockBytes, (bytes - done) / 4 * 4);
    if (n == 0) break;
    const auto& block = blocks[i % 3];
    const int64_t elems = static_cast<int64_t>(n / 4);
    ckpt::SaveSlice sl;
    sl.name =
        std::string(kPrefixes[i % 3]) + "r" + std::to_string(rank) + ".t" + std::to_string(i / 3);
    sl.dtype = fmt::DType::kF32;
    sl.shape = elems % kRowElements == 0 ? std::vector<int64_t>{elems / kRowElements, kRowElements}
                                         : std::vector<int64_t>{elems};
    sl.flat_begin = 0;
    sl.flat_end = static_cast<uint64_t>(elems);
    sl.source.host = std::span<const std::byte>(block.data(), n);
    s.slices.push_back(std::move(sl));
    done += n;
  }
  s.bytes = bytes;
  return s;
}

// The loaded bytes must be the saved ones.
Status CheckLoaded(const std::vector<RankState>& states,
                   const std::vector<std::vector<std::byte>>& loaded) {
  for (size_t r = 0; r < states.size(); ++r) {
    uint64_t at = 0;
    for (const ckpt::SaveSlice& sl : states[r].slices) {
      if (std::memcmp(loaded[r].data() + at, sl.source.host.data(), sl.source.host.size()) != 0) {
        return Status::Corruption("the benchmark loaded different bytes than it saved (" + sl.name +
                                  ")");
      }
      at += sl.source.host.size();
    }
  }
  return Status::OK();
}

double Seconds(io::Env* env, uint64_t since) {
  return static_cast<double>(env->NowMicros() - since) / 1e6;
}

// Runs fn(rank) on one thread per rank; returns the first error.
Status OnRanks(uint32_t ranks, const std::function<Status(uint32_t)>& fn) {
  std::vector<Status> st(ranks);
  std::vector<std::thread> threads;
  for (uint32_t r = 0; r < ranks; ++r) threads.emplace_back([&, r] { st[r] = fn(r); });
  for (auto& t : threads) t.join();
  for (uint32_t r = 0; r < ranks; ++r) DS_RETURN_IF_ERROR(st[r]) << "rank " << r;
  return Status::OK();
}

}  // namespace

Result<SaveBenchReport> RunSaveBench(io::Env* env, const SaveBenchOptions& o) {
  if (o.ranks == 0) return Status::InvalidArgument("--ranks must be at least 1");
  DS_ASSIGN_OR_RETURN(io::FileInfo info, env->Stat(o.dir));
  if (!info.is_dir) return Status::InvalidArgument(o.dir + " is not a directory");
  DS_ASSIGN_OR_RETURN(io::SpaceInfo space, env->StatFs(o.dir));
  if (space.available_bytes < 2 * o.size_bytes + (256 << 20)) {
    return Status::NoSpace("the benchmark needs about " + io::FormatBytes(2 * o.size_bytes) +
                           " in " + o.dir + " but only " + io::FormatBytes(space.available_bytes) +
                           " is free; pass a smaller --size");
  }
  std::vector<std::vector<std::byte>> blocks;
  for (const char* kind : {"fp32-trained", "adam-exp_avg", "adam-exp_avg_sq"}) {
    blocks.push_back(Generate(FindDataSet(kind), kBlockBytes, 42));
  }
  const uint64_t per_rank = o.size_bytes / o.ranks / 4 * 4;
  std::vector<RankState> states;
  for (uint32_t r = 0; r < o.ranks; ++r) states.push_back(StateOf(r, per_rank, blocks));

  SaveBenchReport rep;
  rep.logical_bytes = per_rank * o.ranks;
  const std::string save_dir = io::JoinPath(o.dir, "dstrain-save-bench");
  DS_RETURN_IF_ERROR(env->RemoveAll(save_dir));
  ckpt::InProcessStore store;
  std::vector<std::unique_ptr<ckpt::CheckpointWriter>> writers(o.ranks);
  for (uint32_t r = 0; r < o.ranks; ++r) {
    ckpt::WriterOptions w;
    w.save_dir = save_dir;
    w.rank = r;
    w.world_size = o.ranks;
    w.store = &store;
    w.codec = o.codec;
    w.chunk_bytes = o.chunk_bytes;
    w.staging_bytes = std::max<uint64_t>(per_rank + o.chunk_bytes, 2 * o.chunk_bytes);
    w.encode_threads = std::max<unsigned>(1, io::HardwareThreads() / o.ranks);
    w.io_backend = o.io_backend;
    w.retention.keep_last = 1;
    DS_ASSIGN_OR_RETURN(writers[r], ckpt::CheckpointWriter::Create(env, w));
  }

  // One unmeasured save first (staging's page faults), then `repeat` rounds of a measured save,
  // a load, and fio, interleaved so that a noisy disk affects both alike; medians are reported.
  ckpt::ReaderOptions ro;
  ro.io_backend = o.io_backend;
  std::vector<std::vector<std::byte>> loaded(o.ranks, std::vector<std::byte>(per_rank));
  std::vector<double> stalls, saves, loads, fio_w, fio_r, io_w, io_r;
  std::vector<ckpt::SaveStats> rank0;  // per measured round
  for (unsigned i = 0; i <= std::max(1u, o.repeat); ++i) {
    std::vector<double> stall(o.ranks);
    ckpt::SaveStats stats0;
    const uint64_t t0 = env->NowMicros();
    DS_RETURN_IF_ERROR(OnRanks(o.ranks, [&](uint32_t r) -> Status {
      ckpt::SaveRequest req;
      req.step = i + 1;
      req.zero_stage = 1;
      DS_RETURN_IF_ERROR(writers[r]->Begin(req));
      for (const ckpt::SaveSlice& sl : states[r].slices)
        DS_RETURN_IF_ERROR(writers[r]->AddSlice(sl));
      DS_ASSIGN_OR_RETURN(ckpt::SaveStats snap, writers[r]->Snapshot());
      stall[r] = snap.snapshot_seconds;
      auto handle = writers[r]->Commit();
      DS_RETURN_IF_ERROR(handle->Wait());
      if (r == 0) {
        stats0 = handle->stats();
        rep.path = stats0.path;
      }
      return Status::OK();
    }));
    if (i == 0) continue;  // the warm-up
    saves.push_back(Seconds(env, t0));
    rank0.push_back(stats0);
    stalls.push_back(*std::max_element(stall.begin(), stall.end()));
    const uint64_t t1 = env->NowMicros();
    DS_RETURN_IF_ERROR(OnRanks(o.ranks, [&](uint32_t r) -> Status {
      DS_ASSIGN_OR_RETURN(auto reader, ckpt::CheckpointReader::Open(env, rep.path, ro));
      std::vector<ckpt::ReadRequest> reqs;
      uint64_t at = 0;
      for (const ckpt::SaveSlice& sl : states[r].slices) {
        const uint64_t n = sl.source.host.size();
        reqs.push_back({{sl.name, {}, {}, 0, UINT64_MAX}, {loaded[r].data() + at, n}, nullptr});
        at += n;
      }
      DS_RETURN_IF_ERROR(reader->Read(reqs).status());
      if (r == 0) {
        rep.stored_bytes = 0;
        for (const auto& c : reader->manifest().chunks) rep.stored_bytes += c.stored_len;
      }
      return Status::OK();
    }));
    loads.push_back(Seconds(env, t1));
    DS_RETURN_IF_ERROR(CheckLoaded(states, loaded));
    if (o.run_fio) {
      FioResult f = RunFio(o.dir, rep.logical_bytes);
      rep.fio = f;
      if (f.ran) {
        fio_w.push_back(f.write_bps);
        fio_r.push_back(f.read_bps);
      }
    } else {
      rep.fio.why_not = "skipped (--no-fio)";
    }
    if (!rep.fio.ran) {
      // No fio here: the bound is our own io benchmark's direct write and read of the same
      // number of bytes, with fio's job shape (4 MiB requests, 16 in flight).
      bench::IoBenchOptions io;
      io.dir = o.dir;
      io.size_bytes = rep.logical_bytes;
      io.run_fio = false;
      io.repeat = 1;
      DS_ASSIGN_OR_RETURN(IoBenchReport ours, RunIoBench(env, io));
      rep.io_backend = ours.backends.at(0).backend;
      io_w.push_back(ours.backends[0].write_bps);
      io_r.push_back(ours.backends[0].read_bps);
    }
  }
  rep.io_write_bps = Median(io_w);
  rep.io_read_bps = Median(io_r);
  writers.clear();
  rep.stall_s = Median(stalls);
  rep.save_s = Median(saves);
  std::sort(rank0.begin(), rank0.end(), [](const ckpt::SaveStats& a, const ckpt::SaveStats& b) {
    return a.durable_seconds < b.durable_seconds;
  });
  rep.breakdown = rank0[(rank0.size() - 1) / 2];
  rep.durable_s = rep.breakdown.durable_seconds;
  rep.load_s = Median(loads);
  if (rep.fio.ran) {
    rep.fio.write_bps = Median(fio_w);
    rep.fio.read_bps = Median(fio_r);
  }

  // The same bytes through memcpy into warm memory, in chunk-sized pieces on as many threads as
  // the snapshots use (each rank's encoder threads and the rank's own thread).
  {
    struct Piece {
      std::byte* dst;
      const std::byte* src;
      size_t bytes;
    };
    std::vector<Piece> pieces;
    for (uint32_t r = 0; r < o.ranks; ++r) {
      uint64_t at = 0;
      for (const ckpt::SaveSlice& sl : states[r].slices) {
        for (uint64_t b = 0; b < sl.source.host.size(); b += o.chunk_bytes) {
          const size_t n = std::min<uint64_t>(o.chunk_bytes, sl.source.host.size() - b);
          pieces.push_back({loaded[r].data() + at + b, sl.source.host.data() + b, n});
        }
        at += sl.source.host.size();
      }
    }
    io::ThreadPool pool(o.ranks * (std::max<size_t>(1, io::HardwareThreads() / o.ranks) + 1) - 1);
    std::vector<double> copies;
    for (unsigned i = 0; i < std::max(1u, o.repeat); ++i) {
      const uint64_t t0 = env->NowMicros();
      pool.ParallelFor(pieces.size(), [&](size_t k) {
        std::memcpy(pieces[k].dst, pieces[k].src, pieces[k].bytes);
      });
      copies.push_back(Seconds(env, t0));
    }
    rep.memcpy_s = Median(copies);
  }
  {
    std::string why;
    rep.backend =
        o.io_backend.empty() ? (io::ProbeIoUring(&why) ? "uring" : "pwrite") : o.io_backend;
  }
  if (!o.keep) DS_RETURN_IF_ERROR(env->RemoveAll(save_dir));
  return rep;
}

namespace {

// The disk's direct-I/O rates the save and load are held against: fio's, else our io bench's.
struct Bound {
  const char* name;
  double write_bps;
  double read_bps;
};

Bound BoundOf(const SaveBenchReport& r) {
  if (r.fio.ran) return {"fio", r.fio.write_bps, r.fio.read_bps};
  return {"bound", r.io_write_bps, r.io_read_bps};
}

double StoredRate(const SaveBenchReport& r) {
  return r.durable_s > 0 ? static_cast<double>(r.stored_bytes) / r.durable_s : 0;
}

// Where rank 0's durable save spent its time, and whether its writes kept the disk busy.
std::string BreakdownLines(const SaveBenchOptions& o, const SaveBenchReport& r) {
  const ckpt::SaveStats& b = r.breakdown;
  char line[512];
  std::string out;
  std::snprintf(line, sizeof line,
                "    rank 0: snapshot %.3f s, writes %.3f s, shard fsync %.3f s, commit %.3f s; "
                "then retention %.3f s (not in the durable time)\n",
                b.snapshot_seconds, b.write_seconds, b.shard_sync_seconds, b.commit_seconds,
                b.retention_seconds);
  out += line;
  const double bound = BoundOf(r).write_bps;
  const double write_rate = b.write_seconds > 0 ? b.stored_bytes / b.write_seconds : 0;
  if (o.ranks == 1 && bound > 0 && b.write_seconds > 0) {
    // Comparable only for one rank: ranks share the disk while each times its own writes.
    std::snprintf(line, sizeof line,
                  "    writes alone: %s stored, %.2fx the bound; writes + fsync: %.2fx\n",
                  io::FormatRate(write_rate).c_str(), write_rate / bound,
                  b.stored_bytes / (b.write_seconds + b.shard_sync_seconds) / bound);
    out += line;
  }
  const double busy = b.write_seconds > 0 ? b.io_busy_seconds / b.write_seconds : 0;
  const double full = b.io_busy_seconds > 0 ? b.io_full_seconds / b.io_busy_seconds : 0;
  std::snprintf(line, sizeof line,
                "    writes: %llu in flight %.1f on average (queue full %.0f%% of the time), disk "
                "busy %.0f%% of the write phase; encoders (%u per rank): encode %.2f s, waiting "
                "for buffers %.2f s, for a write slot %.2f s (summed)\n",
                static_cast<unsigned long long>(b.io_writes), b.io_mean_in_flight, 100 * full,
                100 * busy, std::max<unsigned>(1, io::HardwareThreads() / o.ranks),
                b.encode_seconds, b.encoder_buffer_wait_seconds, b.encoder_queue_wait_seconds);
  out += line;
  return out;
}

}  // namespace

std::string SaveBenchTable(const SaveBenchOptions& o, const SaveBenchReport& r) {
  std::string out;
  char line[256];
  auto rate = [](uint64_t bytes, double s) { return io::FormatRate(s > 0 ? bytes / s : 0); };
  std::snprintf(line, sizeof line,
                "save bench: %s of fp32 state from %u rank(s), codec %s, %s chunks, %s backend, "
                "median of %u rounds\n",
                io::FormatBytes(r.logical_bytes).c_str(), o.ranks,
                std::string(fmt::CodecName(o.codec)).c_str(),
                io::FormatBytes(o.chunk_bytes).c_str(), r.backend.c_str(), std::max(1u, o.repeat));
  out += line;
  std::snprintf(line, sizeof line,
                "  stall (snapshot)   %8.3f s   %.2fx a memcpy of the same bytes (%.3f s)\n",
                r.stall_s, r.memcpy_s > 0 ? r.stall_s / r.memcpy_s : 0, r.memcpy_s);
  out += line;
  std::snprintf(line, sizeof line,
                "  save, durable      %8.3f s   %s logical, stored %s at %s (ratio %.2fx)\n",
                r.durable_s, rate(r.logical_bytes, r.durable_s).c_str(),
                io::FormatBytes(r.stored_bytes).c_str(), rate(r.stored_bytes, r.durable_s).c_str(),
                r.stored_bytes ? static_cast<double>(r.logical_bytes) / r.stored_bytes : 0.0);
  out += line;
  out += BreakdownLines(o, r);
  std::snprintf(line, sizeof line, "  load, verified     %8.3f s   %s logical\n", r.load_s,
                rate(r.logical_bytes, r.load_s).c_str());
  out += line;
  const Bound b = BoundOf(r);
  if (r.fio.ran) {
    std::snprintf(line, sizeof line,
                  "  fio (--direct=1 --ioengine=%s, 4 MiB, QD 16): write %s, read %s\n",
                  r.fio.engine.c_str(), io::FormatRate(r.fio.write_bps).c_str(),
                  io::FormatRate(r.fio.read_bps).c_str());
  } else {
    std::snprintf(line, sizeof line,
                  "  fio: not run (%s); the bound is our io bench (%s, O_DIRECT, 4 MiB, QD 16):\n"
                  "  write %s, read %s\n",
                  r.fio.why_not.c_str(), r.io_backend.c_str(),
                  io::FormatRate(r.io_write_bps).c_str(), io::FormatRate(r.io_read_bps).c_str());
  }
  out += line;
  std::snprintf(
      line, sizeof line,
      "  durable save/%s write %.2fx (stored bytes; the goal is 1/1.1 = 0.91x), "
      "logical %.2fx; load/%s read %.2fx (logical)\n",
      b.name, b.write_bps > 0 ? StoredRate(r) / b.write_bps : 0,
      r.durable_s > 0 && b.write_bps > 0 ? r.logical_bytes / r.durable_s / b.write_bps : 0, b.name,
      r.load_s > 0 && b.read_bps > 0 ? r.logical_bytes / r.load_s / b.read_bps : 0);
  out += line;
  return out;
}

std::string SaveBenchJson(const SaveBenchOptions& o, const SaveBenchReport& r) {
  nlohmann::json j;
  j["bench"] = "save";
  j["dir"] = o.dir;
  j["ranks"] = o.ranks;
  j["codec"] = std::string(fmt::CodecName(o.codec));
  j["chunk_bytes"] = o.chunk_bytes;
  j["repeat"] = std::max(1u, o.repeat);
  j["backend"] = r.backend;
  j["stall_s"] = r.stall_s;
  j["memcpy_s"] = r.memcpy_s;
  j["save_s"] = r.save_s;
  j["durable_s"] = r.durable_s;
  const Bound bound = BoundOf(r);
  j["stored_bps"] = StoredRate(r);
  j["stored_vs_bound"] = bound.write_bps > 0 ? StoredRate(r) / bound.write_bps : 0;
  const ckpt::SaveStats& b = r.breakdown;
  j["breakdown"] = {{"snapshot_s", b.snapshot_seconds},
                    {"write_s", b.write_seconds},
                    {"shard_sync_s", b.shard_sync_seconds},
                    {"commit_s", b.commit_seconds},
                    {"retention_s", b.retention_seconds},
                    {"encode_s", b.encode_seconds},
                    {"encoder_buffer_wait_s", b.encoder_buffer_wait_seconds},
                    {"encoder_queue_wait_s", b.encoder_queue_wait_seconds},
                    {"io_writes", b.io_writes},
                    {"io_busy_s", b.io_busy_seconds},
                    {"io_full_s", b.io_full_seconds},
                    {"io_mean_in_flight", b.io_mean_in_flight},
                    {"stored_bytes", b.stored_bytes}};
  j["load_s"] = r.load_s;
  j["logical_bytes"] = r.logical_bytes;
  j["stored_bytes"] = r.stored_bytes;
  j["save_bps"] = r.save_s > 0 ? r.logical_bytes / r.save_s : 0;
  j["load_bps"] = r.load_s > 0 ? r.logical_bytes / r.load_s : 0;
  j["fio_write_bps"] = r.fio.ran ? nlohmann::json(r.fio.write_bps) : nlohmann::json();
  j["fio_read_bps"] = r.fio.ran ? nlohmann::json(r.fio.read_bps) : nlohmann::json();
  if (!r.fio.ran) {
    j["io_backend"] = r.io_backend;
    j["io_write_bps"] = r.io_write_bps;
    j["io_read_bps"] = r.io_read_bps;
  }
  if (o.keep) j["path"] = r.path;
  return j.dump();
}

}  // namespace ds::bench
