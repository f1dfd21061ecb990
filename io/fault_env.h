// FaultEnv: wraps any Env and injects failures: the Nth operation, or operations on a path
// pattern, fail with EIO, ENOSPC, a short write, or EINTR. It also stops the filesystem at a
// chosen mutation (a crash point) and, over a MemEnv, simulates the crash itself.
// Files it opens report NativeFd() == -1, so async I/O goes through the Env and every write is
// seen. Thread safety: all calls may come from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "io/env.h"
#include "io/mem_env.h"

namespace ds::io {

// Operation kinds a rule can select (bit flags).
enum FaultOp : uint32_t {
  kFaultOpen = 1u << 0,
  kFaultRead = 1u << 1,
  kFaultWrite = 1u << 2,
  kFaultSync = 1u << 3,  // fsync / fdatasync of a file
  kFaultSyncDir = 1u << 4,
  kFaultRename = 1u << 5,
  kFaultRemove = 1u << 6,  // files and directories
  kFaultCreateDir = 1u << 7,
  kFaultLink = 1u << 8,
  kFaultTruncate = 1u << 9,
  kFaultLock = 1u << 10,
  kFaultList = 1u << 11,
  kFaultStat = 1u << 12,  // stat, lstat, statfs
  kFaultAll = 0xffffffffu,
};

enum class FaultKind : uint8_t {
  kIOError,     // EIO
  kNoSpace,     // ENOSPC
  kShortWrite,  // writes: the first half of the bytes land, then EIO; other ops: EIO
  kInterrupted, // EINTR reported to the caller
};

struct FaultRule {
  uint32_t ops = kFaultAll;
  std::string path_glob = "*";  // fnmatch(3) pattern on the full path; '*' also matches '/'
  uint64_t skip = 0;            // matching operations that pass before the first failure
  int64_t count = 1;            // failures to inject after that (-1: every one)
  FaultKind kind = FaultKind::kIOError;
};

class FaultEnv final : public EnvWrapper {
 public:
  explicit FaultEnv(Env* base) : EnvWrapper(base) {}

  void AddRule(FaultRule rule);
  void ClearRules();
  uint64_t injected_count() const { return injected_.load(); }

  // Mutations are the operations a crash can cut between: writes, syncs, renames, links,
  // removals, directory creation, truncation. Counted from construction.
  uint64_t mutation_count() const;
  std::vector<std::string> mutation_log() const;  // "rename /a -> /b", in order
  // After `n` more mutations the filesystem stops: every later call fails with an IOError
  // saying so, and has no effect (the machine lost power at that instant).
  void StopAfter(uint64_t n);
  void SetActive(bool active);
  bool active() const;
  // Stops the filesystem, makes the MemEnv underneath forget what was not durable, then
  // resumes with no rules: the state a restarted machine would find. Fails unless the base is
  // a MemEnv.
  Status SimulateCrash(CrashTail tail, uint64_t seed);

  Result<std::unique_ptr<File>> OpenFile(const std::string& path,
                                         const OpenOptions& options) override;
  Result<std::unique_ptr<MappedFile>> MapFile(const std::string& path) override;
  Status RemoveFile(const std::string& path) override;
  Status Rename(const std::string& from, const std::string& to) override;
  Status Link(const std::string& from, const std::string& to) override;
  Result<FileInfo> Stat(const std::string& path) override;
  Result<FileInfo> LinkStat(const std::string& path) override;
  Status CreateDir(const std::string& dir) override;
  Status RemoveDir(const std::string& dir) override;
  Result<std::vector<std::string>> ListDir(const std::string& dir) override;
  Status SyncDir(const std::string& dir) override;
  Result<SpaceInfo> StatFs(const std::string& path) override;
  Result<std::unique_ptr<FileLock>> TryLockFile(const std::string& path) override;

  // Used by FaultEnv's files: may this operation go ahead? `is_mutation` counts it as a crash
  // point. Returns the injected failure, if any. Public for the file wrapper only.
  struct Verdict {
    Status status;
    bool short_write = false;
  };
  Verdict Check(FaultOp op, const std::string& path, bool is_mutation, std::string_view what);

 private:
  struct ActiveRule {
    FaultRule rule;
    uint64_t seen = 0;
    int64_t injected = 0;
  };

  mutable std::mutex mu_;
  std::vector<ActiveRule> rules_;
  bool active_ = true;
  uint64_t mutations_ = 0;
  uint64_t stop_at_ = UINT64_MAX;  // mutation count at which the filesystem stops
  std::vector<std::string> log_;
  std::atomic<uint64_t> injected_{0};
};

}  // namespace ds::io
