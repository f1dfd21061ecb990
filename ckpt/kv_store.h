// KeyValueStore: how the ranks of a save coordinate (the temp directory's name, each rank's
// "record written", rank 0's "committed") without the training communicator, so a background
// save never issues collectives. The engine plugs in its rendezvous store (c10d's TCPStore);
// InProcessStore serves threads of one process, FileStore serves processes sharing a
// filesystem. Every wait is bounded: a rank that never reports fails the wait, by key.
// Thread safety: all implementations are safe for concurrent use.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "io/env.h"
#include "io/status.h"

namespace ds::ckpt {

class KeyValueStore {
 public:
  virtual ~KeyValueStore() = default;
  virtual Status Set(const std::string& key, const std::string& value) = 0;
  // nullopt when the key does not exist (yet).
  virtual Result<std::optional<std::string>> Get(const std::string& key) = 0;
  virtual Status Delete(const std::string& key) = 0;
  // Waits until every key exists. After `timeout_micros`, Unavailable listing the missing keys.
  virtual Status Wait(std::span<const std::string> keys, uint64_t timeout_micros);

 protected:
  // Used by the polling Wait; tests and the engine may inject a clock through the Env.
  virtual io::Env* clock() { return io::Env::Default(); }
};

class InProcessStore final : public KeyValueStore {
 public:
  Status Set(const std::string& key, const std::string& value) override;
  Result<std::optional<std::string>> Get(const std::string& key) override;
  Status Delete(const std::string& key) override;
  Status Wait(std::span<const std::string> keys, uint64_t timeout_micros) override;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::string> values_;
};

// One file per key under `dir` (created if missing); a value is replaced atomically, so a
// reader sees the old or the new value, never a part.
class FileStore final : public KeyValueStore {
 public:
  FileStore(io::Env* env, std::string dir) : env_(env), dir_(std::move(dir)) {}
  Status Set(const std::string& key, const std::string& value) override;
  Result<std::optional<std::string>> Get(const std::string& key) override;
  Status Delete(const std::string& key) override;

 protected:
  io::Env* clock() override { return env_; }

 private:
  std::string PathOf(const std::string& key) const;
  io::Env* env_;
  std::string dir_;
};

}  // namespace ds::ckpt
