#include "ckpt/inspect.h"

#include <algorithm>

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
  for (const fmt::FileMeta& f : m->files) {
    Result<io::FileInfo> info = env->Stat(io::JoinPath(dir, f.name));
    if (!info.ok()) {
      s.healthy = false;
      s.problems.push_back(f.name + " (rank " + std::to_string(f.rank) + ") is missing: " +
                           info.status().message());
      continue;
    }
    s.file_bytes += info->size;
    if (info->size != f.size) {
      s.healthy = false;
      s.problems.push_back(f.name + " has " + std::to_string(info->size) +
                           " bytes but the manifest says " + std::to_string(f.size) +
                           (info->size < f.size ? " (truncated)" : " (appended to)"));
    }
  }
  return s;
}

Result<SaveDirSummary> InspectSaveDir(io::Env* env, const std::string& dir) {
  SaveDirSummary s;
  s.path = dir;
  DS_ASSIGN_OR_RETURN(std::vector<std::string> names, env->ListDir(dir));
  for (const std::string& name : names) {
    const std::string path = io::JoinPath(dir, name);
    if (name == "latest" || name == "best") {
      DS_ASSIGN_OR_RETURN(std::string text, env->ReadFileToString(path));
      while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
      (name == "latest" ? s.latest : s.best_json) = text;
      continue;
    }
    DS_ASSIGN_OR_RETURN(io::FileInfo info, env->Stat(path));
    if (!info.is_dir) continue;
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
