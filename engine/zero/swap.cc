#include "engine/zero/swap.h"

#include <cstdio>
#include <span>

#include "formats/chunk_codec.h"
#include "io/log.h"
#include "io/units.h"

namespace ds::engine {
namespace {

constexpr char kSwapSuffix[] = ".swap";

// The checksum's xxh64 of `s`, as 16 hex digits: the same in every build.
std::string Hex64(std::string_view s) {
  char out[17];
  std::snprintf(out, sizeof out, "%016llx",
                static_cast<unsigned long long>(fmt::Xxh64(std::as_bytes(std::span(s)))));
  return out;
}

}  // namespace

std::string SwapJobName(const std::string& key) { return "job-" + Hex64(key); }

Result<std::unique_ptr<SwapSpace>> SwapSpace::Open(const SwapOptions& o) {
  if (o.env == nullptr || o.nvme_path.empty() || o.job.empty() || o.buffers.empty()) {
    return Status::InvalidArgument("swap space: env, nvme_path, job and buffers are required");
  }
  const std::string rank = "rank " + std::to_string(o.rank);
  Result<io::FileInfo> root = o.env->Stat(o.nvme_path);
  if (!root.ok() || !root->is_dir) {
    return Status::InvalidArgument(rank + ": nvme_path " + o.nvme_path + " is not a directory (" +
                                   o.key +
                                   ": name a "
                                   "directory on the NVMe disk to swap to)");
  }
  std::unique_ptr<SwapSpace> s(new SwapSpace);
  s->o_ = o;
  const std::string job_dir = io::JoinPath(o.nvme_path, o.job);
  s->dir_ = io::JoinPath(job_dir, "rank-" + std::to_string(o.rank));
  DS_RETURN_IF_ERROR(o.env->CreateDirs(job_dir)) << rank << ": creating the swap directory";
  Result<std::unique_ptr<io::FileLock>> lock = o.env->TryLockFile(s->dir_ + ".lock");
  if (!lock.ok()) {
    if (lock.status().code() == StatusCode::kUnavailable) {
      return Status::FailedPrecondition(
          rank + ": swap directory " + s->dir_ +
          " is in use by another process (another job with the same checkpoint directory, or "
          "a rank of this one still running): stop it, or set " +
          o.key + " to another directory");
    }
    return lock.status().WithContext(rank + ": locking the swap directory");
  }
  s->lock_ = std::move(*lock);
  // Nobody holds the lock: whatever is there is a killed run's, and is never read.
  Result<bool> stale = o.env->Exists(s->dir_);
  if (!stale.ok()) return stale.status();
  if (*stale) {
    s->reclaimed_stale_ = true;
    DS_RETURN_IF_ERROR(o.env->RemoveAll(s->dir_))
        << rank << ": removing the stale swap files of a killed run";
  }
  DS_RETURN_IF_ERROR(o.env->CreateDirs(s->dir_)) << rank << ": creating the swap directory";
  for (size_t b = 0; b < o.buffers.size(); ++b) {
    const std::string path = s->FilePath(static_cast<int>(b));
    const uint64_t bytes = static_cast<uint64_t>(o.buffers[b].elements) *
                           static_cast<uint64_t>(o.buffers[b].element_bytes);
    io::OpenOptions oo;
    oo.mode = io::OpenMode::kCreateNew;
    oo.direct = o.direct;
    Result<std::unique_ptr<io::File>> f = o.env->OpenFile(path, oo);
    if (!f.ok()) return f.status().WithContext(rank + ": creating swap file " + path);
    Status st = (*f)->Preallocate(bytes);
    if (st.ok()) st = (*f)->Truncate(bytes);
    if (!st.ok()) {
      Result<io::SpaceInfo> space = o.env->StatFs(o.nvme_path);
      return Status(st.code(), rank + ": swap file " + path + " needs " + io::FormatBytes(bytes) +
                                   (space.ok() ? " (" + io::FormatBytes(space->available_bytes) +
                                                     " free under " + o.nvme_path + ")"
                                               : std::string()) +
                                   ": " + st.message() + "; free space there or set " + o.key +
                                   " to a larger disk");
    }
    s->files_.push_back(std::move(*f));
  }
  return s;
}

SwapSpace::~SwapSpace() {
  for (auto& f : files_) {
    if (f != nullptr) (void)f->Close();
  }
  files_.clear();
  if (!dir_.empty() && lock_ != nullptr) {
    Status s = o_.env->RemoveAll(dir_);
    if (!s.ok()) io::LogWarning("rank " + std::to_string(o_.rank) + ": " + s.message());
  }
  lock_.reset();
  if (dir_.empty()) return;
  (void)o_.env->RemoveFile(dir_ + ".lock");
  (void)o_.env->RemoveDir(io::JoinPath(o_.nvme_path, o_.job));  // the job's last rank out
}

std::string SwapSpace::FilePath(int buffer) const {
  return io::JoinPath(dir_, o_.buffers[static_cast<size_t>(buffer)].name + kSwapSuffix);
}

uint64_t SwapSpace::bytes() const {
  uint64_t n = 0;
  for (const SwapBuffer& b : o_.buffers)
    n += static_cast<uint64_t>(b.elements) * static_cast<uint64_t>(b.element_bytes);
  return n;
}

Status SwapSpace::Check(int buffer, int64_t begin, size_t bytes, const char* what) const {
  const bool known = buffer >= 0 && static_cast<size_t>(buffer) < files_.size();
  const int64_t width = known ? o_.buffers[static_cast<size_t>(buffer)].element_bytes : 1;
  const int64_t count = static_cast<int64_t>(bytes) / width;
  if (!known || begin < 0 || static_cast<int64_t>(bytes) % width != 0 ||
      begin + count > o_.buffers[static_cast<size_t>(buffer)].elements) {
    return Status::InvalidArgument("rank " + std::to_string(o_.rank) + ": swap " + what +
                                   " of buffer " + std::to_string(buffer) + " elements [" +
                                   std::to_string(begin) + ", +" + std::to_string(count) +
                                   ") is outside it");
  }
  return Status::OK();
}

Status SwapSpace::Failed(const Status& s, const char* verb, int buffer, int64_t begin,
                         size_t bytes) const {
  const SwapBuffer& b = o_.buffers[static_cast<size_t>(buffer)];
  const int64_t end = begin + static_cast<int64_t>(bytes) / b.element_bytes;
  return Status(s.code(), "rank " + std::to_string(o_.rank) + ": " + verb + " " + b.name +
                              " elements [" + std::to_string(begin) + ", " + std::to_string(end) +
                              ") " + (verb[0] == 'r' ? "from " : "to ") + FilePath(buffer) + ": " +
                              s.message() +
                              " (training stops; the committed checkpoints are untouched)");
}

Status SwapSpace::ReadBytes(int buffer, int64_t begin, std::span<std::byte> out) const {
  DS_RETURN_IF_ERROR(Check(buffer, begin, out.size(), "read"));
  const uint64_t offset =
      static_cast<uint64_t>(begin) *
      static_cast<uint64_t>(o_.buffers[static_cast<size_t>(buffer)].element_bytes);
  Result<size_t> n = files_[static_cast<size_t>(buffer)]->ReadAt(offset, out);
  if (!n.ok()) return Failed(n.status(), "reading", buffer, begin, out.size());
  if (*n != out.size()) {
    return Failed(Status::IOError("read " + std::to_string(*n) + " of " +
                                  std::to_string(out.size()) + " bytes (file cut short?)"),
                  "reading", buffer, begin, out.size());
  }
  return Status::OK();
}

Status SwapSpace::WriteBytes(int buffer, int64_t begin, std::span<const std::byte> data) {
  DS_RETURN_IF_ERROR(Check(buffer, begin, data.size(), "write"));
  const uint64_t offset =
      static_cast<uint64_t>(begin) *
      static_cast<uint64_t>(o_.buffers[static_cast<size_t>(buffer)].element_bytes);
  Status s = files_[static_cast<size_t>(buffer)]->WriteAt(offset, data);
  if (!s.ok()) return Failed(s, "writing", buffer, begin, data.size());
  return Status::OK();
}

Status SwapSpace::Read(int buffer, int64_t begin, std::span<float> out) const {
  return ReadBytes(buffer, begin, std::as_writable_bytes(out));
}

Status SwapSpace::Write(int buffer, int64_t begin, std::span<const float> data) {
  return WriteBytes(buffer, begin, std::as_bytes(data));
}

}  // namespace ds::engine
