#include "ckpt/verify.h"

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <set>

#include "formats/manifest.h"
#include "formats/shard_file.h"
#include "io/thread_pool.h"

namespace ds::ckpt {
namespace {

// For each chunk, the tensors whose slices run through it (to name damage by tensor).
std::vector<std::set<std::string>> TensorsByChunk(const fmt::Manifest& m) {
  std::vector<std::set<std::string>> out(m.chunks.size());
  for (const fmt::SliceMeta& s : m.slices) {
    const fmt::TensorMeta& t = m.tensors[s.tensor];
    uint64_t left = (s.flat_end - s.flat_begin) * fmt::DTypeSize(t.dtype);
    uint64_t offset = s.offset_in_chunk;
    for (uint64_t c = s.first_chunk; left > 0 && c < m.chunks.size(); ++c) {
      out[c].insert(t.name);
      left -= std::min(left, m.chunks[c].raw_len - offset);
      offset = 0;
    }
  }
  return out;
}

}  // namespace

Result<VerifyReport> VerifyCheckpoint(io::Env* env, const std::string& dir,
                                      const VerifyOptions& options) {
  VerifyReport report;
  report.path = dir;
  const uint64_t t0 = env->NowMicros();
  const std::string manifest_path = io::JoinPath(dir, fmt::kManifestFileName);
  DS_ASSIGN_OR_RETURN(bool has_manifest, env->Exists(manifest_path));
  if (!has_manifest) {
    DS_ASSIGN_OR_RETURN(bool dir_exists, env->Exists(dir));
    return Status::NotFound(dir + (dir_exists ? " is not a checkpoint: it has no manifest.h5 "
                                                "(a save in progress or torn, or a save "
                                                "directory: name one of its checkpoints)"
                                              : " does not exist"));
  }
  Result<fmt::Manifest> mr = fmt::ReadManifest(env, manifest_path);
  if (!mr.ok()) {
    if (mr.status().code() != StatusCode::kCorruption) return mr.status();
    report.healthy = false;
    report.problems.push_back(mr.status().message());
    return report;
  }
  const fmt::Manifest& m = *mr;

  // Open every shard file: header, rank, size.
  std::vector<std::unique_ptr<fmt::ShardReader>> readers(m.files.size());
  std::vector<bool> file_ok(m.files.size(), false);
  for (size_t i = 0; i < m.files.size(); ++i) {
    const fmt::FileMeta& f = m.files[i];
    Result<std::unique_ptr<fmt::ShardReader>> r =
        fmt::ShardReader::Open(env, io::JoinPath(dir, f.name), f.rank);
    if (!r.ok()) {
      if (r.status().code() != StatusCode::kCorruption && !r.status().IsNotFound()) {
        return r.status();
      }
      report.problems.push_back(f.name + " (rank " + std::to_string(f.rank) +
                                "): " + r.status().message());
      continue;
    }
    if ((*r)->file_size() != f.size) {
      report.problems.push_back(f.name + " has " + std::to_string((*r)->file_size()) +
                                " bytes but the manifest says " + std::to_string(f.size) +
                                ((*r)->file_size() < f.size ? " (truncated)" : " (appended to)"));
    }
    readers[i] = std::move(*r);
    file_ok[i] = true;
  }

  // Every chunk, in parallel: read, check the stored checksum, decode, check the raw one.
  std::mutex mu;
  std::vector<std::string> chunk_problems(m.chunks.size());
  io::ThreadPool pool(options.threads == 0 ? io::HardwareThreads() : options.threads);
  pool.ParallelFor(m.chunks.size(), [&](size_t i) {
    thread_local fmt::ChunkDecoder decoder;
    const fmt::ChunkMeta& c = m.chunks[i];
    const std::string what = fmt::DescribeChunk(i, m.files[c.file].name);
    if (!file_ok[c.file]) {
      chunk_problems[i] = what + ": its file cannot be read";
      return;
    }
    fmt::ChunkRecord rec{c.offset, c.stored_len, c.raw_len, c.codec,
                         c.elem_size, c.raw_xxh64, c.stored_xxh64};
    std::vector<std::byte> out(c.raw_len);
    Status s = readers[c.file]->ReadChunk(rec, out, decoder, what);
    std::lock_guard<std::mutex> lock(mu);
    if (s.ok()) {
      report.raw_bytes += c.raw_len;
      report.stored_bytes += c.stored_len;
    } else {
      chunk_problems[i] = s.message();
    }
  });
  report.chunks_checked = m.chunks.size();
  std::vector<std::set<std::string>> tensors_of = TensorsByChunk(m);
  std::set<std::string> damaged;
  for (size_t i = 0; i < m.chunks.size(); ++i) {
    if (chunk_problems[i].empty()) continue;
    report.chunks_damaged++;
    std::string line = chunk_problems[i];
    if (!tensors_of[i].empty()) {
      line += " [tensors:";
      for (const std::string& t : tensors_of[i]) line += " " + t;
      line += "]";
    }
    report.problems.push_back(line);
    damaged.insert(tensors_of[i].begin(), tensors_of[i].end());
  }
  report.damaged_tensors.assign(damaged.begin(), damaged.end());
  report.healthy = report.problems.empty();
  report.seconds = static_cast<double>(env->NowMicros() - t0) / 1e6;
  return report;
}

}  // namespace ds::ckpt
