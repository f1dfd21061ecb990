// PosixEnv: the real filesystem. Every system call that can fail returns a Status naming the
// operation and the path (ErrnoStatus maps errno in one place).
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <random>
#include <thread>

#include "io/env.h"
#include "io/log.h"

namespace ds::io {
namespace {

bool IsAligned(uint64_t offset, const void* addr, size_t len) {
  return offset % kDirectAlignment == 0 && len % kDirectAlignment == 0 &&
         reinterpret_cast<uintptr_t>(addr) % kDirectAlignment == 0;
}

// "a FIFO", "a directory", ...: what a name is, for messages.
std::string ModeName(mode_t mode) {
  if (S_ISREG(mode)) return "a regular file";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISLNK(mode)) return "a symbolic link";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

FileType TypeOf(mode_t mode) {
  if (S_ISREG(mode)) return FileType::kRegular;
  if (S_ISDIR(mode)) return FileType::kDirectory;
  if (S_ISLNK(mode)) return FileType::kSymlink;
  return FileType::kOther;
}

// statx of `name` relative to `dirfd` (AT_FDCWD, or an open directory; with AT_EMPTY_PATH and ""
// the descriptor itself). `flags` adds AT_SYMLINK_NOFOLLOW for lstat. Automounts are not
// triggered. `path` names the entry in messages.
Result<FileInfo> StatAt(int dirfd, const char* name, int flags, const std::string& path) {
  struct statx stx;
  if (::statx(dirfd, name, flags | AT_NO_AUTOMOUNT,
              STATX_TYPE | STATX_MODE | STATX_SIZE | STATX_MTIME, &stx) != 0) {
    return ErrnoStatus("stat " + path, errno);
  }
  FileInfo info;
  info.size = stx.stx_size;
  info.type = TypeOf(stx.stx_mode);
  info.is_dir = info.type == FileType::kDirectory;
  info.mtime_micros =
      static_cast<int64_t>(stx.stx_mtime.tv_sec) * 1000000 + stx.stx_mtime.tv_nsec / 1000;
  info.device = makedev(stx.stx_dev_major, stx.stx_dev_minor);
  info.mount_root = (stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) != 0 &&
                    (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT) != 0;
  if (info.type == FileType::kSymlink) {
    std::string target(std::max<size_t>(stx.stx_size, 1) + 1, '\0');
    ssize_t n = ::readlinkat(dirfd, name, target.data(), target.size());
    if (n < 0) return ErrnoStatus("read the symbolic link " + path, errno);
    target.resize(static_cast<size_t>(n));
    info.link_target = std::move(target);
  }
  return info;
}

// Closes a descriptor at scope exit.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;

 private:
  int fd_;
};

// The names in the open directory stream `d` (not . and ..), sorted; closes it.
Result<std::vector<std::string>> ReadNames(DIR* d, const std::string& path) {
  std::vector<std::string> names;
  errno = 0;
  while (struct dirent* e = ::readdir(d)) {
    std::string_view name = e->d_name;
    if (name != "." && name != "..") names.emplace_back(name);
  }
  int e = errno;
  ::closedir(d);
  if (e != 0) return ErrnoStatus("list " + path, e);
  std::sort(names.begin(), names.end());
  return names;
}

// The names in the open directory `dirfd`, read before anything is removed.
Result<std::vector<std::string>> ListDirFd(int dirfd, const std::string& path) {
  int dup = ::fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return ErrnoStatus("list " + path, errno);
  DIR* d = ::fdopendir(dup);
  if (d == nullptr) {
    int e = errno;
    ::close(dup);
    return ErrnoStatus("list " + path, e);
  }
  ::rewinddir(d);  // the duplicate shares its offset with `dirfd`
  return ReadNames(d, path);
}

// rm -rf over descriptors: every name is looked up relative to its parent's open descriptor
// (statx without following, openat O_NOFOLLOW, unlinkat), so nothing reached through a link is
// removed, not even when a directory is swapped for a link during the walk; and a directory of
// another mount than `device` (or the root of a bind mount) is refused. Entries that vanish
// meanwhile are gone already.
class TreeRemover {
 public:
  TreeRemover(uint64_t device, const Env::FileRemovedFn& on_file_removed)
      : device_(device), on_file_removed_(on_file_removed) {}

  // Removes `name` in the directory `dirfd` (AT_FDCWD: a path), called `dir`/`name` in messages.
  Status RemoveEntry(int dirfd, const std::string& dir, const std::string& name) {
    const std::string path = JoinPath(dir, name);
    // Retried when the entry changes kind between the look and the removal.
    for (int attempt = 0; attempt < 3; ++attempt) {
      Result<FileInfo> info = StatAt(dirfd, name.c_str(), AT_SYMLINK_NOFOLLOW, path);
      if (!info.ok()) return info.status().IsNotFound() ? Status::OK() : info.status();
      if (info->type != FileType::kDirectory) {
        if (::unlinkat(dirfd, name.c_str(), 0) == 0) {
          if (on_file_removed_) on_file_removed_(info->size);
          return Status::OK();
        }
        if (errno == ENOENT) return Status::OK();
        if (errno == EISDIR) continue;  // became a directory
        return ErrnoStatus("remove " + path, errno);
      }
      if (info->device != device_ || info->mount_root) return MountPointError(path);
      int fd = ::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0) {
        if (errno == ENOENT) return Status::OK();
        if (errno == ELOOP || errno == ENOTDIR) continue;  // became a link or a file
        return ErrnoStatus("open directory " + path, errno);
      }
      FdCloser closer(fd);
      // What was opened, not what was looked at: a mount may have appeared in between.
      DS_ASSIGN_OR_RETURN(FileInfo opened, StatAt(fd, "", AT_EMPTY_PATH, path));
      if (opened.device != device_ || opened.mount_root) return MountPointError(path);
      DS_RETURN_IF_ERROR(RemoveContents(fd, path));
      if (::unlinkat(dirfd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) {
        return ErrnoStatus("remove directory " + path, errno);
      }
      return Status::OK();
    }
    return Status::IOError(path +
                           " keeps changing between a file and a directory while it is "
                           "being removed; stop what writes there and try again");
  }

 private:
  Status RemoveContents(int dirfd, const std::string& dir) {
    DS_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDirFd(dirfd, dir));
    for (const std::string& name : names) DS_RETURN_IF_ERROR(RemoveEntry(dirfd, dir, name));
    return Status::OK();
  }

  uint64_t device_;
  const Env::FileRemovedFn& on_file_removed_;
};

class PosixFile final : public File {
 public:
  PosixFile(std::string path, int fd, int flags, bool direct)
      : File(std::move(path)), fd_(fd), flags_(flags), direct_(direct) {}
  ~PosixFile() override {
    if (fd_ >= 0 || buffered_fd_ >= 0) {
      Status s = Close();
      if (!s.ok()) LogWarning("closing " + path() + " on destruction: " + s.ToString());
    }
  }

  Result<size_t> ReadAt(uint64_t offset, std::span<std::byte> out) const override {
    int fd = FdFor(offset, out.data(), out.size());
    if (fd < 0) return ErrnoStatus("open " + path() + " for unaligned I/O", errno);
    size_t done = 0;
    while (done < out.size()) {
      ssize_t n = ::pread(fd, out.data() + done, out.size() - done,
                          static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        return ErrnoStatus("read " + path() + " at offset " + std::to_string(offset + done),
                           errno);
      }
      if (n == 0) break;  // end of file
      done += static_cast<size_t>(n);
    }
    return done;
  }

  Status WriteAt(uint64_t offset, std::span<const std::byte> data) override {
    int fd = FdFor(offset, data.data(), data.size());
    if (fd < 0) return ErrnoStatus("open " + path() + " for unaligned I/O", errno);
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = ::pwrite(fd, data.data() + done, data.size() - done,
                           static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        return ErrnoStatus("write " + path() + " at offset " + std::to_string(offset + done),
                           errno);
      }
      done += static_cast<size_t>(n);  // a short write continues where it stopped
    }
    return Status::OK();
  }

  Status Sync() override {
    if (::fsync(fd_) != 0) return ErrnoStatus("fsync " + path(), errno);
    return Status::OK();
  }
  Status DataSync() override {
    if (::fdatasync(fd_) != 0) return ErrnoStatus("fdatasync " + path(), errno);
    return Status::OK();
  }
  Status Truncate(uint64_t size) override {
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) {
      return ErrnoStatus("truncate " + path(), errno);
    }
    return Status::OK();
  }
  Status Preallocate(uint64_t size) override {
    int rc = ::posix_fallocate(fd_, 0, static_cast<off_t>(size));
    if (rc == 0) return Status::OK();
    if (rc == EOPNOTSUPP || rc == EINVAL) return Status::OK();  // no fallocate: nothing reserved
    return ErrnoStatus("preallocate " + FormatBytes(size) + " for " + path(), rc);
  }
  Result<uint64_t> Size() const override {
    struct stat st;
    if (::fstat(fd_, &st) != 0) return ErrnoStatus("stat " + path(), errno);
    return static_cast<uint64_t>(st.st_size);
  }
  Status Close() override {
    Status result;
    if (buffered_fd_ >= 0 && ::close(buffered_fd_) != 0) {
      result = ErrnoStatus("close " + path(), errno);
    }
    buffered_fd_ = -1;
    if (fd_ >= 0 && ::close(fd_) != 0 && result.ok()) result = ErrnoStatus("close " + path(), errno);
    fd_ = -1;
    return result;
  }
  int NativeFd() const override { return fd_; }
  bool direct() const override { return direct_; }

 private:
  // O_DIRECT needs aligned offset, length and address; anything else goes through a second,
  // buffered descriptor on the same file (the kernel keeps the two coherent).
  int FdFor(uint64_t offset, const void* addr, size_t len) const {
    if (!direct_ || IsAligned(offset, addr, len)) return fd_;
    std::call_once(buffered_once_, [&] {
      buffered_fd_ = ::open(path().c_str(), (flags_ & ~(O_DIRECT | O_CREAT | O_EXCL | O_TRUNC)) |
                                                O_CLOEXEC);
    });
    return buffered_fd_;
  }

  int fd_;
  int flags_;
  bool direct_;
  mutable std::once_flag buffered_once_;
  mutable int buffered_fd_ = -1;
};

class PosixMappedFile final : public MappedFile {
 public:
  PosixMappedFile(void* base, size_t size) : base_(base), size_(size) {}
  ~PosixMappedFile() override {
    if (size_ > 0) ::munmap(base_, size_);
  }
  std::span<const std::byte> data() const override {
    return {static_cast<const std::byte*>(base_), size_};
  }

 private:
  void* base_;
  size_t size_;
};

class PosixFileLock final : public FileLock {
 public:
  PosixFileLock(std::string path, int fd) : FileLock(std::move(path)), fd_(fd) {}
  ~PosixFileLock() override {
    ::flock(fd_, LOCK_UN);
    ::close(fd_);
  }

 private:
  int fd_;
};

// NewNonce's draws: one generator for the process, its whole state seeded from the kernel's
// entropy (std::random_device), and seeded afresh in a forked child so that parent and child
// never draw the same names.
class NonceSource {
 public:
  std::string Next() {
    uint64_t bits;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (const pid_t pid = ::getpid(); pid != seeded_for_) {
        std::random_device entropy;
        std::seed_seq seed{entropy(), entropy(), entropy(), entropy(),
                           entropy(), entropy(), entropy(), entropy()};
        rng_.seed(seed);
        seeded_for_ = pid;
      }
      bits = rng_();
    }
    char text[17];
    std::snprintf(text, sizeof text, "%016" PRIx64, bits);
    return text;
  }

 private:
  std::mutex mu_;
  pid_t seeded_for_ = 0;  // the process the generator was seeded in; 0: not yet
  std::mt19937_64 rng_;
};

class PosixEnv final : public Env {
 public:
  Result<std::unique_ptr<File>> OpenFile(const std::string& path,
                                         const OpenOptions& options) override {
    int flags = O_CLOEXEC;
    switch (options.mode) {
      case OpenMode::kRead: flags |= O_RDONLY; break;
      case OpenMode::kTruncate: flags |= O_RDWR | O_CREAT | O_TRUNC; break;
      case OpenMode::kCreateNew: flags |= O_RDWR | O_CREAT | O_EXCL; break;
      case OpenMode::kUpdate: flags |= O_RDWR | O_CREAT; break;
    }
    bool direct = options.direct;
    // O_NONBLOCK: opening a FIFO with no writer would wait for one; the file is checked below.
    const int open_flags = flags | (options.regular_only ? O_NONBLOCK : 0);
    int fd = ::open(path.c_str(), open_flags | (direct ? O_DIRECT : 0), 0644);
    if (fd < 0 && direct && errno == EINVAL) {  // the filesystem has no O_DIRECT (tmpfs, ...)
      direct = false;
      fd = ::open(path.c_str(), open_flags, 0644);
    }
    if (fd < 0) {
      if (errno == EEXIST) return Status::FailedPrecondition(path + " already exists");
      return ErrnoStatus("open " + path, errno);
    }
    if (options.regular_only) {
      struct stat st;
      if (::fstat(fd, &st) != 0) {
        int e = errno;
        ::close(fd);
        return ErrnoStatus("stat " + path, e);
      }
      if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        return Status::FailedPrecondition(path + " is " + ModeName(st.st_mode) +
                                          ", not a regular file");
      }
      // A regular file ignores O_NONBLOCK; cleared all the same, for what reopens with `flags`.
      if (::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0) {
        int e = errno;
        ::close(fd);
        return ErrnoStatus("fcntl " + path, e);
      }
    }
    return std::unique_ptr<File>(std::make_unique<PosixFile>(path, fd, flags, direct));
  }

  Result<std::unique_ptr<MappedFile>> MapFile(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoStatus("open " + path, errno);
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      int e = errno;
      ::close(fd);
      return ErrnoStatus("stat " + path, e);
    }
    size_t size = static_cast<size_t>(st.st_size);
    void* base = nullptr;
    if (size > 0) {
      base = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
      if (base == MAP_FAILED) {
        int e = errno;
        ::close(fd);
        return ErrnoStatus("mmap " + path, e);
      }
    }
    ::close(fd);  // the mapping keeps the file alive
    return std::unique_ptr<MappedFile>(std::make_unique<PosixMappedFile>(base, size));
  }

  Status RemoveFile(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return ErrnoStatus("remove " + path, errno);
    return Status::OK();
  }
  Status Rename(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) {
      return ErrnoStatus("rename " + from + " to " + to, errno);
    }
    return Status::OK();
  }
  Status Link(const std::string& from, const std::string& to) override {
    if (::link(from.c_str(), to.c_str()) != 0) {
      if (errno == EEXIST) return Status::FailedPrecondition(to + " already exists");
      return ErrnoStatus("link " + from + " to " + to, errno);
    }
    return Status::OK();
  }
  Result<FileInfo> Stat(const std::string& path) override {
    return StatAt(AT_FDCWD, path.c_str(), 0, path);
  }
  Result<FileInfo> LinkStat(const std::string& path) override {
    return StatAt(AT_FDCWD, path.c_str(), AT_SYMLINK_NOFOLLOW, path);
  }
  using Env::RemoveAll;
  Status RemoveAll(const std::string& path, const FileRemovedFn& on_file_removed) override {
    // The filesystem of the directory holding `path`: `path` itself may not be a mount point.
    Result<FileInfo> parent = Stat(DirName(path));
    if (!parent.ok()) return parent.status().IsNotFound() ? Status::OK() : parent.status();
    return TreeRemover(parent->device, on_file_removed).RemoveEntry(AT_FDCWD, "", path);
  }
  Status CreateDir(const std::string& dir) override {
    if (::mkdir(dir.c_str(), 0755) != 0) {
      if (errno == EEXIST) return Status::FailedPrecondition(dir + " already exists");
      return ErrnoStatus("create directory " + dir, errno);
    }
    return Status::OK();
  }
  Status RemoveDir(const std::string& dir) override {
    if (::rmdir(dir.c_str()) != 0) return ErrnoStatus("remove directory " + dir, errno);
    return Status::OK();
  }
  Result<std::vector<std::string>> ListDir(const std::string& dir) override {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return ErrnoStatus("list " + dir, errno);
    return ReadNames(d, dir);
  }
  Status SyncDir(const std::string& dir) override {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return ErrnoStatus("open directory " + dir + " to sync it", errno);
    int rc = ::fsync(fd);
    int e = errno;
    ::close(fd);
    if (rc != 0) return ErrnoStatus("fsync directory " + dir, e);
    return Status::OK();
  }
  Result<SpaceInfo> StatFs(const std::string& path) override {
    struct statvfs st;
    if (::statvfs(path.c_str(), &st) != 0) return ErrnoStatus("statvfs " + path, errno);
    SpaceInfo info;
    info.total_bytes = static_cast<uint64_t>(st.f_blocks) * st.f_frsize;
    info.available_bytes = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
    return info;
  }
  Result<std::string> MakeTempDir(std::string_view prefix) override {
    const std::optional<std::string> base = GetEnvVar("TMPDIR");
    std::string tmpl = JoinPath(base.has_value() && !base->empty() ? *base : "/tmp",
                                std::string(prefix) + "XXXXXX");
    if (::mkdtemp(tmpl.data()) == nullptr) return ErrnoStatus("mkdtemp " + tmpl, errno);
    return tmpl;
  }
  Result<std::unique_ptr<FileLock>> TryLockFile(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoStatus("open lock file " + path, errno);
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      int e = errno;
      ::close(fd);
      if (e == EWOULDBLOCK) return Status::Unavailable("lock " + path + " is held by another");
      return ErrnoStatus("lock " + path, e);
    }
    return std::unique_ptr<FileLock>(std::make_unique<PosixFileLock>(path, fd));
  }

  uint64_t NowMicros() override {
    return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                     std::chrono::steady_clock::now().time_since_epoch())
                                     .count());
  }
  int64_t WallTimeMicros() override {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
  void SleepForMicros(uint64_t micros) override {
    std::this_thread::sleep_for(std::chrono::microseconds(micros));
  }

  std::string NewNonce() override { return nonces_.Next(); }
  std::string HostName() override {
    char name[256] = {};  // POSIX: HOST_NAME_MAX is 255 at most; truncated names stay terminated
    if (::gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "localhost";
    return name;
  }
  uint64_t PhysicalMemoryBytes() override {
    const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page)
                                 : 0;
  }
  std::optional<std::string> GetEnvVar(const std::string& name) override {
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  }

 private:
  NonceSource nonces_;
};

}  // namespace

Env* Env::Default() {
  static PosixEnv* env = new PosixEnv();  // never destroyed: other statics may use it on exit
  return env;
}

}  // namespace ds::io
