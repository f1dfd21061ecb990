// PosixEnv: the real filesystem. Every system call that can fail returns a Status naming the
// operation and the path (ErrnoStatus maps errno in one place).
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "io/env.h"
#include "io/log.h"

namespace ds::io {
namespace {

bool IsAligned(uint64_t offset, const void* addr, size_t len) {
  return offset % kDirectAlignment == 0 && len % kDirectAlignment == 0 &&
         reinterpret_cast<uintptr_t>(addr) % kDirectAlignment == 0;
}

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
    int fd = ::open(path.c_str(), flags | (direct ? O_DIRECT : 0), 0644);
    if (fd < 0 && direct && errno == EINVAL) {  // the filesystem has no O_DIRECT (tmpfs, ...)
      direct = false;
      fd = ::open(path.c_str(), flags, 0644);
    }
    if (fd < 0) {
      if (errno == EEXIST) return Status::FailedPrecondition(path + " already exists");
      return ErrnoStatus("open " + path, errno);
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
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return ErrnoStatus("stat " + path, errno);
    FileInfo info;
    info.size = static_cast<uint64_t>(st.st_size);
    info.is_dir = S_ISDIR(st.st_mode);
    info.mtime_micros = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000 +
                        st.st_mtim.tv_nsec / 1000;
    return info;
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
    std::vector<std::string> names;
    errno = 0;
    while (struct dirent* e = ::readdir(d)) {
      std::string_view name = e->d_name;
      if (name != "." && name != "..") names.emplace_back(name);
    }
    int e = errno;
    ::closedir(d);
    if (e != 0) return ErrnoStatus("list " + dir, e);
    std::sort(names.begin(), names.end());
    return names;
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
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = JoinPath(base != nullptr && *base != '\0' ? base : "/tmp",
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
};

}  // namespace

Env* Env::Default() {
  static PosixEnv* env = new PosixEnv();  // never destroyed: other statics may use it on exit
  return env;
}

}  // namespace ds::io
