// Env: every operating-system service dstrain uses (files, directories, locks, free space, the
// clock, the host's name, memory and environment variables, fresh names) behind one interface,
// so tests can swap in MemEnv (a crash-modelling filesystem in memory) or FaultEnv (injected
// errors) without touching the code under test.
// Thread safety: every Env is safe for concurrent use; a File allows concurrent ReadAt/WriteAt
// on disjoint ranges, and needs external synchronisation for Sync, Truncate and Close.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/status.h"
#include "io/units.h"

namespace ds::io {

inline constexpr size_t kDirectAlignment = 4096;  // bytes: O_DIRECT offset/length/address unit

enum class OpenMode : uint8_t {
  kRead,       // existing file, read only
  kTruncate,   // create or truncate, read/write
  kCreateNew,  // create; fails with FailedPrecondition if it exists
  kUpdate,     // create if missing, keep contents, read/write
};

struct OpenOptions {
  OpenMode mode = OpenMode::kRead;
  // Ask for O_DIRECT. Filesystems that refuse it (tmpfs, some FUSE) get a buffered file; File::
  // direct() tells which one you got. Unaligned requests on a direct file go through the page
  // cache transparently.
  bool direct = false;
  // Only a regular file: a directory, FIFO, device or socket fails with FailedPrecondition
  // saying what it is ("x is a FIFO, not a regular file"). The open never blocks (a FIFO with
  // no writer would) and the check is made on the opened file, not on a name looked up
  // earlier. For readers of files that must be ours, such as shards.
  bool regular_only = false;
};

enum class FileType : uint8_t {
  kRegular,
  kDirectory,
  kSymlink,  // only from LinkStat: Stat follows links
  kOther,    // a FIFO, a device or a socket
};

struct FileInfo {
  uint64_t size = 0;         // bytes; a symbolic link: the length of the path it holds
  bool is_dir = false;       // type == FileType::kDirectory
  int64_t mtime_micros = 0;  // wall clock, microseconds since the Unix epoch
  FileType type = FileType::kRegular;
  uint64_t device = 0;      // the filesystem it is on (st_dev): differs across a mount point
  bool mount_root = false;  // the root of a mount, a bind mount of the same filesystem too
                            // (statx); false where the system cannot tell
  std::string link_target;  // kSymlink: the path the link holds, as written (not resolved)
};

struct SpaceInfo {
  uint64_t total_bytes = 0;
  uint64_t available_bytes = 0;  // what an unprivileged writer may still use
};

class File {
 public:
  explicit File(std::string path) : path_(std::move(path)) {}
  virtual ~File() = default;
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  const std::string& path() const { return path_; }

  // Reads up to out.size() bytes at `offset`; fewer only at end of file.
  virtual Result<size_t> ReadAt(uint64_t offset, std::span<std::byte> out) const = 0;
  // Writes all of `data` at `offset` (retrying short writes), or fails.
  virtual Status WriteAt(uint64_t offset, std::span<const std::byte> data) = 0;
  virtual Status Sync() = 0;  // data and metadata durable (fsync)
  virtual Status DataSync() { return Sync(); }
  virtual Status Truncate(uint64_t size) = 0;
  // Reserves blocks for [0, size) and may set the file size to `size` (POSIX: fallocate), so
  // that O_DIRECT writes inside it neither allocate nor extend the file (ext4 serialises
  // extending direct writes). A writer that preallocates truncates to its real size before its
  // final Sync. The default (and MemEnv) only checks the space is there and changes nothing.
  virtual Status Preallocate(uint64_t size);
  virtual Result<uint64_t> Size() const = 0;
  virtual Status Close() = 0;

  // The kernel descriptor for submitting I/O to io_uring, or -1 when this file is not a plain
  // kernel file or when its Env must observe every write (MemEnv, FaultEnv); async I/O then
  // goes through ReadAt/WriteAt.
  virtual int NativeFd() const { return -1; }
  virtual bool direct() const { return false; }

 private:
  std::string path_;
};

// An exclusive advisory lock (flock on POSIX); released when destroyed or when the process dies.
class FileLock {
 public:
  explicit FileLock(std::string path) : path_(std::move(path)) {}
  virtual ~FileLock() = default;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A read-only view of a whole file (mmap on POSIX).
class MappedFile {
 public:
  virtual ~MappedFile() = default;
  virtual std::span<const std::byte> data() const = 0;
};

class Env {
 public:
  virtual ~Env() = default;

  // The real filesystem and clock. Lives for the whole process.
  static Env* Default();

  // ---- files
  virtual Result<std::unique_ptr<File>> OpenFile(const std::string& path,
                                                 const OpenOptions& options) = 0;
  virtual Result<std::unique_ptr<MappedFile>> MapFile(const std::string& path) = 0;
  virtual Status RemoveFile(const std::string& path) = 0;
  // Atomically replaces `to` (file or empty directory) by `from`.
  virtual Status Rename(const std::string& from, const std::string& to) = 0;
  // Hard link; fails with FailedPrecondition when `to` exists.
  virtual Status Link(const std::string& from, const std::string& to) = 0;
  // Follows symbolic links (stat(2)).
  virtual Result<FileInfo> Stat(const std::string& path) = 0;
  // Does not follow a link at `path` itself (lstat(2)): a link is reported as kSymlink with its
  // target. An Env without links (MemEnv) returns what Stat does.
  virtual Result<FileInfo> LinkStat(const std::string& path) = 0;

  // ---- directories. Entries created, renamed or removed in `dir` are durable only after
  // SyncDir(dir): callers say so explicitly, nothing syncs a directory behind their back.
  virtual Status CreateDir(const std::string& dir) = 0;  // FailedPrecondition if it exists
  virtual Status RemoveDir(const std::string& dir) = 0;  // must be empty
  virtual Result<std::vector<std::string>> ListDir(const std::string& dir) = 0;  // sorted names
  virtual Status SyncDir(const std::string& dir) = 0;
  virtual Result<SpaceInfo> StatFs(const std::string& path) = 0;
  // A fresh directory under the system's temporary area, for tests and benchmarks.
  virtual Result<std::string> MakeTempDir(std::string_view prefix) = 0;

  // ---- locks: returns Unavailable when another holder has it (also within this process).
  virtual Result<std::unique_ptr<FileLock>> TryLockFile(const std::string& path) = 0;

  // ---- clock
  virtual uint64_t NowMicros() = 0;       // monotonic
  virtual int64_t WallTimeMicros() = 0;   // since the Unix epoch
  virtual void SleepForMicros(uint64_t micros) = 0;

  // ---- the host, and fresh names
  // 16 lower-case hex digits ("3f09a1c2d4e5b6a7"), 64 fresh random bits on every call, for the
  // names of temporary files and directories: two calls (any threads, any processes) give the
  // same one with probability 2^-64.
  virtual std::string NewNonce() = 0;
  // This host's name (gethostname); "localhost" where the system does not say.
  virtual std::string HostName() = 0;
  // This host's physical memory in bytes; 0 where the system does not say.
  virtual uint64_t PhysicalMemoryBytes() = 0;
  // The process's environment variable `name`; nullopt when unset ("" when set but empty).
  virtual std::optional<std::string> GetEnvVar(const std::string& name) = 0;

  // ---- conveniences built on the calls above (so wrappers see every step)
  Result<bool> Exists(const std::string& path);
  Status CreateDirs(const std::string& dir);  // mkdir -p; existing directories are fine
  // mkdir -p, then SyncDir of the parent of every directory it created, so the new directories
  // survive a crash (a checkpoint inside a directory whose own entry was lost is lost too).
  Status CreateDirsDurably(const std::string& dir);
  // rm -rf that never leaves `path`: a symbolic link is removed as a link (its target is not
  // touched), and a mount point (another filesystem, or a bind mount) is neither entered nor
  // removed from, `path` itself included: FailedPrecondition naming it, with what was removed
  // before it gone. A missing path is fine,
  // and so is anything that vanishes meanwhile. `on_file_removed` is told the size of each
  // file (or link) once it is removed. The default walks with LinkStat, ListDir, RemoveFile and
  // RemoveDir, so a wrapper sees every step; PosixEnv walks directory descriptors instead, so a
  // directory swapped for a link during the walk is not followed either.
  using FileRemovedFn = std::function<void(uint64_t bytes)>;
  virtual Status RemoveAll(const std::string& path, const FileRemovedFn& on_file_removed);
  Status RemoveAll(const std::string& path) { return RemoveAll(path, nullptr); }
  Result<std::string> ReadFileToString(const std::string& path);
  // Writes `data` to a fresh file at `path` and fsyncs it (not its directory).
  Status WriteFileSynced(const std::string& path, std::string_view data);
  // Replaces `path` atomically and durably: write `path.tmp-<NewNonce()>`, fsync, rename,
  // SyncDir(parent). A crash leaves either the old or the new contents, never a mix.
  Status ReplaceFileAtomically(const std::string& path, std::string_view data);
  // Waits up to `timeout_micros` for the lock, polling.
  Result<std::unique_ptr<FileLock>> LockFile(const std::string& path, uint64_t timeout_micros);
};

// Forwards every call (but RemoveAll) to a target Env; test Envs override what they need.
class EnvWrapper : public Env {
 public:
  explicit EnvWrapper(Env* target) : target_(target) {}
  Env* target() const { return target_; }

  Result<std::unique_ptr<File>> OpenFile(const std::string& p, const OpenOptions& o) override {
    return target_->OpenFile(p, o);
  }
  Result<std::unique_ptr<MappedFile>> MapFile(const std::string& p) override {
    return target_->MapFile(p);
  }
  Status RemoveFile(const std::string& p) override { return target_->RemoveFile(p); }
  Status Rename(const std::string& f, const std::string& t) override {
    return target_->Rename(f, t);
  }
  Status Link(const std::string& f, const std::string& t) override { return target_->Link(f, t); }
  Result<FileInfo> Stat(const std::string& p) override { return target_->Stat(p); }
  Result<FileInfo> LinkStat(const std::string& p) override { return target_->LinkStat(p); }
  // RemoveAll is deliberately not forwarded: Env's own walk goes through this wrapper's calls,
  // so a fault or counting Env sees (and can fail) every step of it.
  Status CreateDir(const std::string& d) override { return target_->CreateDir(d); }
  Status RemoveDir(const std::string& d) override { return target_->RemoveDir(d); }
  Result<std::vector<std::string>> ListDir(const std::string& d) override {
    return target_->ListDir(d);
  }
  Status SyncDir(const std::string& d) override { return target_->SyncDir(d); }
  Result<SpaceInfo> StatFs(const std::string& p) override { return target_->StatFs(p); }
  Result<std::string> MakeTempDir(std::string_view prefix) override {
    return target_->MakeTempDir(prefix);
  }
  Result<std::unique_ptr<FileLock>> TryLockFile(const std::string& p) override {
    return target_->TryLockFile(p);
  }
  uint64_t NowMicros() override { return target_->NowMicros(); }
  int64_t WallTimeMicros() override { return target_->WallTimeMicros(); }
  void SleepForMicros(uint64_t m) override { target_->SleepForMicros(m); }
  std::string NewNonce() override { return target_->NewNonce(); }
  std::string HostName() override { return target_->HostName(); }
  uint64_t PhysicalMemoryBytes() override { return target_->PhysicalMemoryBytes(); }
  std::optional<std::string> GetEnvVar(const std::string& name) override {
    return target_->GetEnvVar(name);
  }

 private:
  Env* target_;
};

// What RemoveAll returns when it reaches a directory of another mount ("<dir> is a mount point
// (another filesystem): ... unmount it first"), for every Env's walk to say it the same way.
Status MountPointError(const std::string& dir);

// ---- path helpers (pure string functions; no filesystem access)
std::string JoinPath(std::string_view a, std::string_view b);
std::string DirName(std::string_view path);   // "a/b/c" -> "a/b", "c" -> "."
std::string BaseName(std::string_view path);  // "a/b/c" -> "c"

}  // namespace ds::io
