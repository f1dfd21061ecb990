#include "bench/reshard_bench.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <thread>

#include "bench/synthetic.h"
#include "ckpt/partition.h"
#include "ckpt/writer.h"
#include "formats/manifest.h"

extern char** environ;

namespace ds::bench {
namespace {

constexpr uint64_t kBlockBytes = 64 << 20;
constexpr int64_t kColumns = 4096;

// Runs argv to completion; returns its wall time and peak RSS, or why it failed.
Result<std::pair<double, uint64_t>> RunChild(io::Env* env, std::vector<std::string> args) {
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const uint64_t t0 = env->NowMicros();
  pid_t pid = -1;
  posix_spawn_file_actions_t fa;  // the child's report goes nowhere: the bench prints its own
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return Status::IOError("could not start " + args[0]);
  int status = 0;
  struct rusage ru {};
  if (wait4(pid, &status, 0, &ru) != pid) return Status::IOError("waiting for " + args[0]);
  const double secs = static_cast<double>(env->NowMicros() - t0) / 1e6;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return Status::IOError(args[0] + " " + args[1] + " failed (status " + std::to_string(status) +
                           ")");
  }
  return std::pair<double, uint64_t>{secs, static_cast<uint64_t>(ru.ru_maxrss) * 1024};
}

}  // namespace

Result<std::string> WriteSyntheticModel(io::Env* env, const std::string& save_dir, uint64_t bytes,
                                        uint32_t ranks, uint32_t stage, fmt::Codec codec) {
  std::vector<std::vector<std::byte>> blocks;
  for (const char* kind : {"fp32-trained", "adam-exp_avg", "adam-exp_avg_sq"}) {
    blocks.push_back(Generate(FindDataSet(kind), kBlockBytes, 7));
  }
  // Parameters: tensors of 256 rows x 4096 columns (4 MiB fp32) until a third of `bytes`.
  const uint64_t params = bytes / 12;
  std::vector<uint64_t> numels;
  for (uint64_t done = 0; done < params;) {
    const uint64_t n = std::min<uint64_t>(256 * kColumns, (params - done) / kColumns * kColumns);
    if (n == 0) break;
    numels.push_back(n);
    done += n;
  }
  static const char* const kGroups[] = {"master/", "optim/exp_avg/", "optim/exp_avg_sq/"};
  ckpt::InProcessStore store;
  std::vector<Status> st(ranks);
  std::vector<std::string> path(ranks);
  std::vector<std::thread> threads;
  for (uint32_t r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      ckpt::WriterOptions o;
      o.save_dir = save_dir;
      o.rank = r;
      o.world_size = ranks;
      o.store = &store;
      o.codec = codec;
      o.staging_bytes = 256 << 20;
      o.encode_threads = std::max<unsigned>(1, std::thread::hardware_concurrency() / ranks);
      auto w = ckpt::CheckpointWriter::Create(env, o);
      if (!w.ok()) {
        st[r] = w.status();
        return;
      }
      auto ranges = ckpt::PartitionForRank(numels, {ranks, stage, 1}, r);
      ckpt::SaveRequest req;
      req.step = 1000;
      req.zero_stage = stage;
      Status s = ranges.ok() ? (*w)->Begin(req) : ranges.status();
      for (int g = 0; g < 3 && s.ok(); ++g) {
        for (const ckpt::FlatRange& fr : *ranges) {
          ckpt::SaveSlice sl;
          sl.name = std::string(kGroups[g]) + "t" + std::to_string(fr.tensor);
          sl.dtype = fmt::DType::kF32;
          sl.shape = {static_cast<int64_t>(numels[fr.tensor]) / kColumns, kColumns};
          sl.flat_begin = fr.begin;
          sl.flat_end = fr.end;
          const auto& block = blocks[g];
          // Element e of tensor t is element (e + t * 977) of the block, wrapping around.
          const uint64_t shift = fr.tensor * 977 * 4;
          sl.source.fill = [&block, shift, fr](uint64_t off, std::span<std::byte> dst) {
            uint64_t pos = (fr.begin * 4 + off + shift) % kBlockBytes, done = 0;
            while (done < dst.size()) {
              const uint64_t n = std::min<uint64_t>(dst.size() - done, kBlockBytes - pos);
              std::memcpy(dst.data() + done, block.data() + pos, n);
              done += n;
              pos = 0;
            }
            return Status::OK();
          };
          s = (*w)->AddSlice(std::move(sl));
          if (!s.ok()) break;
        }
      }
      if (s.ok()) s = (*w)->Snapshot().status();
      if (s.ok()) {
        auto h = (*w)->Commit();
        s = h->Wait();
        path[r] = h->stats().path;
      }
      st[r] = s;
    });
  }
  for (auto& t : threads) t.join();
  for (uint32_t r = 0; r < ranks; ++r) DS_RETURN_IF_ERROR(st[r]) << "rank " << r;
  return path[0];
}

Result<ReshardBenchReport> RunReshardBench(io::Env* env, const ReshardBenchOptions& o) {
  DS_ASSIGN_OR_RETURN(io::SpaceInfo space, env->StatFs(o.dir));
  if (space.available_bytes < 3 * o.size_bytes + (256 << 20)) {
    return Status::NoSpace("the benchmark needs about " + io::FormatBytes(3 * o.size_bytes) +
                           " in " + o.dir + " but only " + io::FormatBytes(space.available_bytes) +
                           " is free; pass a smaller --size");
  }
  const std::string save_dir = io::JoinPath(o.dir, "dstrain-reshard-bench");
  DS_RETURN_IF_ERROR(env->RemoveAll(save_dir));
  DS_ASSIGN_OR_RETURN(std::string src, WriteSyntheticModel(env, save_dir, o.size_bytes,
                                                           o.from_world, o.from_stage, o.codec));
  ReshardBenchReport rep;
  uint64_t bytes_read = 0;
  if (o.operation == "export") {
    const std::string out = io::JoinPath(save_dir, "model.safetensors");
    DS_ASSIGN_OR_RETURN(auto child, RunChild(env, {o.dsckpt, "export", src, "--format",
                                                   "safetensors", "--out", out, "--memory",
                                                   std::to_string(o.memory_bytes)}));
    rep.reshard_s = child.first;
    rep.peak_rss_bytes = child.second;
    DS_ASSIGN_OR_RETURN(io::FileInfo info, env->Stat(out));
    rep.bytes = rep.stored_bytes = info.size;
    bytes_read = info.size;  // fp32 master weights, read once
  } else {
    DS_ASSIGN_OR_RETURN(auto child,
                        RunChild(env, {o.dsckpt, "reshard", src, "--to-world",
                                       std::to_string(o.to_world), "--to-stage",
                                       std::to_string(o.to_stage), "--memory",
                                       std::to_string(o.memory_bytes), "--out",
                                       io::JoinPath(save_dir, "resharded")}));
    rep.reshard_s = child.first;
    rep.peak_rss_bytes = child.second;
    DS_ASSIGN_OR_RETURN(fmt::Manifest m,
                        fmt::ReadManifest(env, io::JoinPath(save_dir, "resharded/manifest.h5")));
    for (const fmt::ChunkMeta& c : m.chunks) {
      rep.bytes += c.raw_len;
      rep.stored_bytes += c.stored_len;
    }
    bytes_read = rep.stored_bytes;
  }
  if (!o.keep) DS_RETURN_IF_ERROR(env->RemoveAll(save_dir));
  if (o.run_fio) {
    rep.fio = RunFio(o.dir, std::max(bytes_read, rep.stored_bytes));
    if (rep.fio.ran) {
      rep.bound_s = static_cast<double>(bytes_read) / rep.fio.read_bps +
                    static_cast<double>(rep.stored_bytes) / rep.fio.write_bps;
    }
  } else {
    rep.fio.why_not = "skipped (--no-fio)";
  }
  return rep;
}

std::string ReshardBenchTable(const ReshardBenchOptions& o, const ReshardBenchReport& r) {
  char b[512];
  const std::string rate = io::FormatRate(r.reshard_s > 0 ? r.bytes / r.reshard_s : 0);
  if (o.operation == "export") {
    std::snprintf(b, sizeof b,
                  "export bench: %s of fp32 master weights to safetensors, from %u ranks at stage "
                  "%u (codec %s), --memory %s\n"
                  "  export            %8.2f s  %s\n",
                  io::FormatBytes(r.bytes).c_str(), o.from_world, o.from_stage,
                  std::string(fmt::CodecName(o.codec)).c_str(),
                  io::FormatBytes(o.memory_bytes).c_str(), r.reshard_s, rate.c_str());
  } else {
    std::snprintf(b, sizeof b,
                  "reshard bench: %s (stored %s, codec %s) from %u ranks stage %u to %u ranks "
                  "stage %u, --memory %s\n"
                  "  reshard           %8.2f s  %s\n",
                  io::FormatBytes(r.bytes).c_str(), io::FormatBytes(r.stored_bytes).c_str(),
                  std::string(fmt::CodecName(o.codec)).c_str(), o.from_world, o.from_stage,
                  o.to_world, o.to_stage, io::FormatBytes(o.memory_bytes).c_str(), r.reshard_s,
                  rate.c_str());
  }
  std::string out = b;
  std::snprintf(b, sizeof b, "  peak RSS          %s (%.2fx the memory limit)\n",
                io::FormatBytes(r.peak_rss_bytes).c_str(),
                static_cast<double>(r.peak_rss_bytes) / o.memory_bytes);
  out += b;
  if (r.fio.ran) {
    std::snprintf(b, sizeof b,
                  "  disk bound        %8.2f s  (fio read %s + write %s of the same bytes)\n"
                  "  time / bound      %8.2fx\n",
                  r.bound_s, io::FormatRate(r.fio.read_bps).c_str(),
                  io::FormatRate(r.fio.write_bps).c_str(), r.reshard_s / r.bound_s);
  } else {
    std::snprintf(b, sizeof b, "  fio: not run (%s)\n", r.fio.why_not.c_str());
  }
  return out + b;
}

std::string ReshardBenchJson(const ReshardBenchOptions& o, const ReshardBenchReport& r) {
  nlohmann::json j = {{"bench", o.operation},
                      {"seconds", r.reshard_s},
                      {"from_world", o.from_world},
                      {"to_world", o.to_world},
                      {"from_stage", o.from_stage},
                      {"to_stage", o.to_stage},
                      {"codec", std::string(fmt::CodecName(o.codec))},
                      {"reshard_s", r.reshard_s},
                      {"bound_s", r.fio.ran ? nlohmann::json(r.bound_s) : nlohmann::json()},
                      {"bytes", r.bytes},
                      {"stored_bytes", r.stored_bytes},
                      {"peak_rss_bytes", r.peak_rss_bytes},
                      {"memory_limit_bytes", o.memory_bytes}};
  return j.dump();
}

}  // namespace ds::bench
