#include "io/env.h"

#include <algorithm>
#include <cerrno>

namespace ds::io {

Status File::Preallocate(uint64_t size) {
  (void)size;
  return Status::OK();
}

Result<bool> Env::Exists(const std::string& path) {
  Result<FileInfo> info = Stat(path);
  if (info.ok()) return true;
  // "a/b" where a is a file does not exist either (ENOTDIR).
  if (info.status().IsNotFound() || info.status().sys_errno() == ENOTDIR) return false;
  return info.status();
}

Status Env::CreateDirs(const std::string& dir) {
  if (dir.empty() || dir == "." || dir == "/") return Status::OK();
  DS_ASSIGN_OR_RETURN(bool exists, Exists(dir));
  if (exists) {
    DS_ASSIGN_OR_RETURN(FileInfo info, Stat(dir));
    if (!info.is_dir) {
      return Status::FailedPrecondition(dir + " exists and is not a directory");
    }
    return Status::OK();
  }
  DS_RETURN_IF_ERROR(CreateDirs(DirName(dir)));
  Status s = CreateDir(dir);
  if (s.code() == StatusCode::kFailedPrecondition) return Status::OK();  // lost a race: fine
  return s;
}

Status Env::CreateDirsDurably(const std::string& dir) {
  std::vector<std::string> missing;  // deepest first
  for (std::string d = dir; !d.empty() && d != "." && d != "/"; d = DirName(d)) {
    DS_ASSIGN_OR_RETURN(bool exists, Exists(d));
    if (exists) break;
    missing.push_back(d);
  }
  DS_RETURN_IF_ERROR(CreateDirs(dir));
  for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
    DS_RETURN_IF_ERROR(SyncDir(DirName(*it)));
  }
  return Status::OK();
}

Status MountPointError(const std::string& dir) {
  return Status::FailedPrecondition(dir +
                                    " is a mount point (another filesystem): not removing what "
                                    "is under it; unmount it first");
}

namespace {

// Removes `path`, which LinkStat described as `info`, never entering a directory of another
// filesystem than `device` (nor the root of a bind mount) nor following a link.
Status RemoveEntry(Env* env, const std::string& path, const FileInfo& info, uint64_t device,
                   const Env::FileRemovedFn& on_file_removed) {
  if (info.type != FileType::kDirectory) {
    Status s = env->RemoveFile(path);  // a link goes as a link
    if (s.IsNotFound()) return Status::OK();
    if (s.ok() && on_file_removed) on_file_removed(info.size);
    return s;
  }
  if (info.device != device || info.mount_root) return MountPointError(path);
  Result<std::vector<std::string>> names = env->ListDir(path);
  if (!names.ok()) return names.status().IsNotFound() ? Status::OK() : names.status();
  for (const std::string& name : *names) {
    const std::string child = JoinPath(path, name);
    Result<FileInfo> child_info = env->LinkStat(child);
    if (!child_info.ok() && child_info.status().IsNotFound()) continue;  // gone meanwhile
    if (!child_info.ok()) return child_info.status();
    DS_RETURN_IF_ERROR(RemoveEntry(env, child, *child_info, device, on_file_removed));
  }
  Status s = env->RemoveDir(path);
  return s.IsNotFound() ? Status::OK() : s;
}

}  // namespace

Status Env::RemoveAll(const std::string& path, const FileRemovedFn& on_file_removed) {
  Result<FileInfo> info = LinkStat(path);
  if (!info.ok()) return info.status().IsNotFound() ? Status::OK() : info.status();
  // The filesystem of the directory holding `path`: `path` itself may not be a mount point.
  Result<FileInfo> parent = Stat(DirName(path));
  if (!parent.ok()) return parent.status().IsNotFound() ? Status::OK() : parent.status();
  return RemoveEntry(this, path, *info, parent->device, on_file_removed);
}

Result<std::string> Env::ReadFileToString(const std::string& path) {
  DS_ASSIGN_OR_RETURN(std::unique_ptr<File> file, OpenFile(path, {OpenMode::kRead}));
  DS_ASSIGN_OR_RETURN(uint64_t size, file->Size());
  // Read until a short read: files such as /proc's report size 0 but have contents.
  std::string out;
  size_t capacity = std::max<uint64_t>(size + 1, 4096);
  while (true) {
    const size_t at = out.size();
    out.resize(at + capacity);
    DS_ASSIGN_OR_RETURN(size_t n, file->ReadAt(at, std::as_writable_bytes(std::span(out).subspan(at))));
    out.resize(at + n);
    if (n < capacity) break;
    capacity *= 2;
  }
  DS_RETURN_IF_ERROR(file->Close());
  return out;
}

Status Env::WriteFileSynced(const std::string& path, std::string_view data) {
  DS_ASSIGN_OR_RETURN(std::unique_ptr<File> file, OpenFile(path, {OpenMode::kTruncate}));
  DS_RETURN_IF_ERROR(file->WriteAt(0, std::as_bytes(std::span(data.data(), data.size()))));
  DS_RETURN_IF_ERROR(file->Sync());
  return file->Close();
}

Status Env::ReplaceFileAtomically(const std::string& path, std::string_view data) {
  // The temporary name is unique per call so two writers never share one temp file; the loser
  // of a race simply renames second.
  const std::string tmp = path + ".tmp-" + NewNonce();
  Status s = WriteFileSynced(tmp, data);
  if (s.ok()) s = Rename(tmp, path);
  if (!s.ok()) {
    (void)RemoveFile(tmp);  // best effort; the original error is what the caller needs
    return s;
  }
  return SyncDir(DirName(path));
}

Result<std::unique_ptr<FileLock>> Env::LockFile(const std::string& path,
                                                uint64_t timeout_micros) {
  const uint64_t deadline = NowMicros() + timeout_micros;
  while (true) {
    Result<std::unique_ptr<FileLock>> lock = TryLockFile(path);
    if (lock.ok() || lock.status().code() != StatusCode::kUnavailable) return lock;
    if (NowMicros() >= deadline) {
      return Status::Unavailable("lock " + path + " is held by another process for more than " +
                                 std::to_string(timeout_micros / 1000000) +
                                 " s (a running save, prune or gc); try again later");
    }
    SleepForMicros(10000);
  }
}

std::string JoinPath(std::string_view a, std::string_view b) {
  if (a.empty()) return std::string(b);
  if (b.empty()) return std::string(a);
  if (b.front() == '/') return std::string(b);
  std::string out(a);
  if (out.back() != '/') out += '/';
  out += b;
  return out;
}

std::string DirName(std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  size_t slash = path.rfind('/');
  if (slash == std::string_view::npos) return ".";
  if (slash == 0) return "/";
  return std::string(path.substr(0, slash));
}

std::string BaseName(std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  size_t slash = path.rfind('/');
  return std::string(slash == std::string_view::npos ? path : path.substr(slash + 1));
}

}  // namespace ds::io
