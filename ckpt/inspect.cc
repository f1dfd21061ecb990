#include "ckpt/inspect.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <optional>

#include "ckpt/catalog.h"
#include "formats/shard_file.h"

namespace ds::ckpt {

Result<bool> IsCheckpointDir(io::Env* env, const std::string& dir) {
  return env->Exists(io::JoinPath(dir, fmt::kManifestFileName));
}

Result<CheckpointSummary> InspectCheckpoint(io::Env* env, const std::string& dir) {
  CheckpointSummary s;
  s.path = dir;
  const std::string manifest_path = io::JoinPath(dir, fmt::kManifestFileName);
  DS_ASSIGN_OR_RETURN(bool has_manifest, env->Exists(manifest_path));
  if (!has_manifest) {
    return Status::NotFound(dir + " is not a checkpoint: it has no " +
                            std::string(fmt::kManifestFileName) +
                            " (a save in progress, a torn save, or the wrong directory)");
  }
  DS_ASSIGN_OR_RETURN(io::FileInfo minfo, env->Stat(manifest_path));
  s.file_bytes = minfo.size;
  Result<fmt::Manifest> m = fmt::ReadManifest(env, manifest_path);
  if (!m.ok()) {
    if (m.status().code() != StatusCode::kCorruption) return m.status();
    s.healthy = false;
    s.problems.push_back(m.status().message());
    return s;
  }
  s.info = m->info;
  s.tensors = m->tensors.size();
  s.slices = m->slices.size();
  s.chunks = m->chunks.size();
  s.blobs = m->blobs.size();
  for (const fmt::ChunkMeta& c : m->chunks) {
    s.raw_bytes += c.raw_len;
    s.stored_bytes += c.stored_len;
    s.chunks_by_codec[std::string(fmt::CodecName(c.codec))]++;
  }
  for (const fmt::TensorMeta& t : m->tensors) {
    uint64_t bytes = *fmt::NumElements(t.shape) * fmt::DTypeSize(t.dtype);
    if (bytes > s.largest_tensor_bytes || s.largest_tensor.empty()) {
      s.largest_tensor = t.name;
      s.largest_tensor_bytes = bytes;
    }
  }
  // Each shard: there, a regular file, its header valid and of the right rank, its size the
  // manifest's. Its chunks are not read (that is verify's work).
  for (const fmt::FileMeta& f : m->files) {
    const std::string rank = " (rank " + std::to_string(f.rank) + ")";
    Result<std::unique_ptr<fmt::ShardReader>> shard =
        fmt::ShardReader::Open(env, io::JoinPath(dir, f.name), f.rank);
    if (!shard.ok() && shard.status().IsNotFound()) {
      s.healthy = false;
      s.problems.push_back(f.name + rank + " is missing: " + shard.status().message());
      continue;
    }
    if (!shard.ok() && shard.status().IsCorruption()) {
      s.healthy = false;
      s.problems.push_back(f.name + rank + ": " + shard.status().message());
      continue;
    }
    if (!shard.ok()) return shard.status();
    const uint64_t size = (*shard)->file_size();
    s.file_bytes += size;
    if (size != f.size) {
      s.healthy = false;
      s.problems.push_back(f.name + " has " + std::to_string(size) +
                           " bytes but the manifest says " + std::to_string(f.size) +
                           (size < f.size ? " (truncated)" : " (appended to)"));
    }
  }
  return s;
}

Result<SaveDirSummary> InspectSaveDir(io::Env* env, const std::string& dir) {
  SaveDirSummary s;
  s.path = dir;
  // The pointers, read as the catalog reads them (bounded; what cannot be read is a problem).
  Catalog catalog(env, dir);
  Result<std::optional<std::string>> latest = catalog.ReadLatest();
  if (latest.ok() && latest->has_value()) {
    if (Status valid = ValidateTag(**latest); valid.ok()) {
      s.latest = **latest;
    } else {
      s.problems.push_back("latest: " + valid.message());
    }
  } else if (!latest.ok() && latest.status().IsCorruption()) {
    s.problems.push_back(latest.status().message());
  } else if (!latest.ok()) {
    return latest.status();
  }
  Result<std::optional<BestPointer>> best = catalog.ReadBest();
  if (best.ok() && best->has_value()) {
    const BestPointer& b = **best;
    s.best_json =
        nlohmann::json{{"tag", b.tag}, {"metric", b.metric}, {"value", b.value}, {"mode", b.mode}}
            .dump();
  } else if (!best.ok() && best.status().IsCorruption()) {
    s.problems.push_back(best.status().message());
  } else if (!best.ok()) {
    return best.status();
  }
  DS_ASSIGN_OR_RETURN(std::vector<std::string> names, env->ListDir(dir));
  for (const std::string& name : names) {
    const std::string path = io::JoinPath(dir, name);
    Result<io::FileInfo> info = env->Stat(path);
    if (!info.ok() && info.status().IsNotFound()) continue;  // gone meanwhile, or a broken link
    if (!info.ok()) return info.status();
    if (!info->is_dir) continue;
    if (name.rfind(".tmp-", 0) == 0) {
      s.in_progress.push_back(name);
      continue;
    }
    if (name.front() == '.') continue;
    Result<CheckpointSummary> c = InspectCheckpoint(env, path);
    if (c.ok()) {
      s.checkpoints.push_back(std::move(*c));
    } else if (c.status().IsNotFound()) {
      s.not_checkpoints.push_back(name);
    } else {
      return c.status();
    }
  }
  std::sort(s.checkpoints.begin(), s.checkpoints.end(), [](const auto& a, const auto& b) {
    return a.info.step != b.info.step ? a.info.step < b.info.step : a.path < b.path;
  });
  return s;
}

}  // namespace ds::ckpt
