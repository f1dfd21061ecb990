#include "io/fault_env.h"

#include <fnmatch.h>

#include <cerrno>

namespace ds::io {
namespace {

Status Injected(FaultKind kind, std::string_view what, const std::string& path) {
  std::string context = "injected fault: " + std::string(what) + " " + path;
  switch (kind) {
    case FaultKind::kNoSpace: return ErrnoStatus(context, ENOSPC);
    case FaultKind::kInterrupted: return ErrnoStatus(context, EINTR);
    case FaultKind::kIOError:
    case FaultKind::kShortWrite: return ErrnoStatus(context, EIO);
  }
  return ErrnoStatus(context, EIO);
}

class FaultFile final : public File {
 public:
  FaultFile(FaultEnv* env, std::unique_ptr<File> base)
      : File(base->path()), env_(env), base_(std::move(base)) {}

  Result<size_t> ReadAt(uint64_t offset, std::span<std::byte> out) const override {
    FaultEnv::Verdict v = env_->Check(kFaultRead, path(), false, "read");
    if (!v.status.ok()) return v.status;
    return base_->ReadAt(offset, out);
  }
  Status WriteAt(uint64_t offset, std::span<const std::byte> data) override {
    FaultEnv::Verdict v = env_->Check(kFaultWrite, path(), true, "write");
    if (v.short_write) {
      Status s = base_->WriteAt(offset, data.first(data.size() / 2));
      if (!s.ok()) return s;
      return Status::IOError("injected fault: short write to " + path() + ": wrote " +
                                 std::to_string(data.size() / 2) + " of " +
                                 std::to_string(data.size()) + " bytes at offset " +
                                 std::to_string(offset),
                             EIO);
    }
    if (!v.status.ok()) return v.status;
    return base_->WriteAt(offset, data);
  }
  Status Sync() override {
    FaultEnv::Verdict v = env_->Check(kFaultSync, path(), true, "fsync");
    if (!v.status.ok()) return v.status;
    return base_->Sync();
  }
  Status DataSync() override {
    FaultEnv::Verdict v = env_->Check(kFaultSync, path(), true, "fdatasync");
    if (!v.status.ok()) return v.status;
    return base_->DataSync();
  }
  Status Truncate(uint64_t size) override {
    FaultEnv::Verdict v = env_->Check(kFaultTruncate, path(), true, "truncate");
    if (!v.status.ok()) return v.status;
    return base_->Truncate(size);
  }
  Status Preallocate(uint64_t size) override {
    FaultEnv::Verdict v = env_->Check(kFaultTruncate, path(), true, "preallocate");
    if (!v.status.ok()) return v.status;
    return base_->Preallocate(size);
  }
  Result<uint64_t> Size() const override {
    FaultEnv::Verdict v = env_->Check(kFaultStat, path(), false, "stat");
    if (!v.status.ok()) return v.status;
    return base_->Size();
  }
  Status Close() override { return base_->Close(); }
  bool direct() const override { return base_->direct(); }
  // NativeFd stays -1: io_uring would bypass this wrapper.

 private:
  FaultEnv* env_;
  std::unique_ptr<File> base_;
};

}  // namespace

void FaultEnv::AddRule(FaultRule rule) {
  std::lock_guard<std::mutex> lock(mu_);
  rules_.push_back({std::move(rule)});
}

void FaultEnv::ClearRules() {
  std::lock_guard<std::mutex> lock(mu_);
  rules_.clear();
}

uint64_t FaultEnv::mutation_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return mutations_;
}

std::vector<std::string> FaultEnv::mutation_log() const {
  std::lock_guard<std::mutex> lock(mu_);
  return log_;
}

void FaultEnv::StopAfter(uint64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  stop_at_ = mutations_ + n;
}

void FaultEnv::SetActive(bool active) {
  std::lock_guard<std::mutex> lock(mu_);
  active_ = active;
  if (active) stop_at_ = UINT64_MAX;
}

bool FaultEnv::active() const {
  std::lock_guard<std::mutex> lock(mu_);
  return active_;
}

Status FaultEnv::SimulateCrash(CrashTail tail, uint64_t seed) {
  auto* mem = dynamic_cast<MemEnv*>(target());
  if (mem == nullptr) {
    return Status::FailedPrecondition("FaultEnv::SimulateCrash needs a MemEnv underneath");
  }
  SetActive(false);
  mem->SimulateCrash(tail, seed);
  ClearRules();
  SetActive(true);
  return Status::OK();
}

FaultEnv::Verdict FaultEnv::Check(FaultOp op, const std::string& path, bool is_mutation,
                                  std::string_view what) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!active_) {
    return {Status::IOError("simulated crash: the filesystem stopped before " +
                            std::string(what) + " " + path)};
  }
  if (is_mutation) {
    if (mutations_ >= stop_at_) {
      active_ = false;
      return {Status::IOError("simulated crash: the filesystem stopped before " +
                              std::string(what) + " " + path)};
    }
    ++mutations_;
    log_.push_back(std::string(what) + " " + path);
  }
  for (ActiveRule& r : rules_) {
    if ((r.rule.ops & op) == 0) continue;
    if (fnmatch(r.rule.path_glob.c_str(), path.c_str(), 0) != 0) continue;
    if (r.seen++ < r.rule.skip) continue;
    if (r.rule.count >= 0 && r.injected >= r.rule.count) continue;
    r.injected++;
    injected_++;
    Verdict v{Injected(r.rule.kind, what, path)};
    v.short_write = r.rule.kind == FaultKind::kShortWrite && op == kFaultWrite;
    return v;
  }
  return {};
}

#define DS_FAULT_CHECK(op, path, mutation, what)                      \
  do {                                                                \
    FaultEnv::Verdict v_ = Check(op, path, mutation, what);           \
    if (!v_.status.ok()) return v_.status;                            \
  } while (0)

Result<std::unique_ptr<File>> FaultEnv::OpenFile(const std::string& path,
                                                 const OpenOptions& options) {
  bool creates = options.mode != OpenMode::kRead;
  DS_FAULT_CHECK(kFaultOpen, path, creates, "open");
  DS_ASSIGN_OR_RETURN(std::unique_ptr<File> base, target()->OpenFile(path, options));
  return std::unique_ptr<File>(std::make_unique<FaultFile>(this, std::move(base)));
}
Result<std::unique_ptr<MappedFile>> FaultEnv::MapFile(const std::string& path) {
  DS_FAULT_CHECK(kFaultRead, path, false, "map");
  return target()->MapFile(path);
}
Status FaultEnv::RemoveFile(const std::string& path) {
  DS_FAULT_CHECK(kFaultRemove, path, true, "remove");
  return target()->RemoveFile(path);
}
Status FaultEnv::Rename(const std::string& from, const std::string& to) {
  DS_FAULT_CHECK(kFaultRename, from, true, "rename " + to + " <-");
  return target()->Rename(from, to);
}
Status FaultEnv::Link(const std::string& from, const std::string& to) {
  DS_FAULT_CHECK(kFaultLink, to, true, "link");
  return target()->Link(from, to);
}
Result<FileInfo> FaultEnv::Stat(const std::string& path) {
  DS_FAULT_CHECK(kFaultStat, path, false, "stat");
  return target()->Stat(path);
}
Result<FileInfo> FaultEnv::LinkStat(const std::string& path) {
  DS_FAULT_CHECK(kFaultStat, path, false, "lstat");
  return target()->LinkStat(path);
}
Status FaultEnv::CreateDir(const std::string& dir) {
  DS_FAULT_CHECK(kFaultCreateDir, dir, true, "mkdir");
  return target()->CreateDir(dir);
}
Status FaultEnv::RemoveDir(const std::string& dir) {
  DS_FAULT_CHECK(kFaultRemove, dir, true, "rmdir");
  return target()->RemoveDir(dir);
}
Result<std::vector<std::string>> FaultEnv::ListDir(const std::string& dir) {
  DS_FAULT_CHECK(kFaultList, dir, false, "list");
  return target()->ListDir(dir);
}
Status FaultEnv::SyncDir(const std::string& dir) {
  DS_FAULT_CHECK(kFaultSyncDir, dir, true, "syncdir");
  return target()->SyncDir(dir);
}
Result<SpaceInfo> FaultEnv::StatFs(const std::string& path) {
  DS_FAULT_CHECK(kFaultStat, path, false, "statfs");
  return target()->StatFs(path);
}
Result<std::unique_ptr<FileLock>> FaultEnv::TryLockFile(const std::string& path) {
  DS_FAULT_CHECK(kFaultLock, path, false, "lock");
  return target()->TryLockFile(path);
}

}  // namespace ds::io
