// MemEnv: a filesystem in memory that models durability exactly, for crash tests.
// What survives SimulateCrash() is what a POSIX filesystem promises after fsync:
//   - a file keeps the bytes it had at its last Sync()/DataSync(); bytes written since are
//     dropped, kept, or torn (a random prefix kept, then garbage), per CrashTail;
//   - a directory keeps the entries it had at its last SyncDir(); names created, renamed or
//     removed since are undone (a rename is undone in the directory that was not synced).
// Handles opened before a crash fail afterwards (the process that held them is dead), and all
// locks are released. The clock and the host (its name, memory, environment variables, nonces)
// are the real ones.
// Thread safety: every call may come from any thread (one mutex inside).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "io/env.h"

namespace ds::io {

enum class CrashTail : uint8_t { kDrop, kKeep, kTear };

class MemEnv final : public Env {
 public:
  MemEnv();
  ~MemEnv() override;

  // Forgets everything not made durable, as a power cut would. `seed` drives kTear.
  void SimulateCrash(CrashTail tail, uint64_t seed);
  // Writes beyond this many bytes in all files fail with NoSpace (ENOSPC).
  void SetCapacity(uint64_t bytes);
  uint64_t UsedBytes();

  Result<std::unique_ptr<File>> OpenFile(const std::string& path,
                                         const OpenOptions& options) override;
  Result<std::unique_ptr<MappedFile>> MapFile(const std::string& path) override;
  Status RemoveFile(const std::string& path) override;
  Status Rename(const std::string& from, const std::string& to) override;
  Status Link(const std::string& from, const std::string& to) override;
  Result<FileInfo> Stat(const std::string& path) override;
  // MemEnv has no symbolic links: the same as Stat.
  Result<FileInfo> LinkStat(const std::string& path) override { return Stat(path); }
  Status CreateDir(const std::string& dir) override;
  Status RemoveDir(const std::string& dir) override;
  Result<std::vector<std::string>> ListDir(const std::string& dir) override;
  Status SyncDir(const std::string& dir) override;
  Result<SpaceInfo> StatFs(const std::string& path) override;
  Result<std::string> MakeTempDir(std::string_view prefix) override;
  Result<std::unique_ptr<FileLock>> TryLockFile(const std::string& path) override;
  uint64_t NowMicros() override { return Env::Default()->NowMicros(); }
  int64_t WallTimeMicros() override { return Env::Default()->WallTimeMicros(); }
  void SleepForMicros(uint64_t micros) override { Env::Default()->SleepForMicros(micros); }
  std::string NewNonce() override { return Env::Default()->NewNonce(); }
  std::string HostName() override { return Env::Default()->HostName(); }
  uint64_t PhysicalMemoryBytes() override { return Env::Default()->PhysicalMemoryBytes(); }
  std::optional<std::string> GetEnvVar(const std::string& name) override {
    return Env::Default()->GetEnvVar(name);
  }

  struct State;  // the tree, shared with open handles

 private:
  std::shared_ptr<State> state_;
};

}  // namespace ds::io
