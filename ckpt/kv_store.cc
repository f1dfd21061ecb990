#include "ckpt/kv_store.h"

#include <chrono>
#include <cstdio>

namespace ds::ckpt {
namespace {

Status MissingKeys(const std::vector<std::string>& missing, uint64_t timeout_micros) {
  std::string list;
  for (size_t i = 0; i < missing.size() && i < 8; ++i) list += (i ? ", " : "") + missing[i];
  if (missing.size() > 8) list += ", ... (" + std::to_string(missing.size()) + " in all)";
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.1f", static_cast<double>(timeout_micros) / 1e6);
  return Status::Unavailable(std::string("waited ") + secs + " s for " + list);
}

}  // namespace

Status KeyValueStore::Wait(std::span<const std::string> keys, uint64_t timeout_micros) {
  io::Env* env = clock();
  const uint64_t deadline = env->NowMicros() + timeout_micros;
  uint64_t sleep = 1000;
  while (true) {
    std::vector<std::string> missing;
    for (const std::string& k : keys) {
      DS_ASSIGN_OR_RETURN(std::optional<std::string> v, Get(k));
      if (!v) missing.push_back(k);
    }
    if (missing.empty()) return Status::OK();
    if (env->NowMicros() >= deadline) return MissingKeys(missing, timeout_micros);
    env->SleepForMicros(sleep);
    sleep = std::min<uint64_t>(sleep * 2, 50000);
  }
}

Status InProcessStore::Set(const std::string& key, const std::string& value) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    values_[key] = value;
  }
  cv_.notify_all();
  return Status::OK();
}

Result<std::optional<std::string>> InProcessStore::Get(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = values_.find(key);
  if (it == values_.end()) return std::optional<std::string>();
  return std::optional<std::string>(it->second);
}

Status InProcessStore::Delete(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  values_.erase(key);
  return Status::OK();
}

Status InProcessStore::Wait(std::span<const std::string> keys, uint64_t timeout_micros) {
  std::unique_lock<std::mutex> lock(mu_);
  auto all_there = [&] {
    for (const std::string& k : keys) {
      if (values_.count(k) == 0) return false;
    }
    return true;
  };
  if (cv_.wait_for(lock, std::chrono::microseconds(timeout_micros), all_there)) {
    return Status::OK();
  }
  std::vector<std::string> missing;
  for (const std::string& k : keys) {
    if (values_.count(k) == 0) missing.push_back(k);
  }
  return MissingKeys(missing, timeout_micros);
}

std::string FileStore::PathOf(const std::string& key) const {
  // Keys become single file names: '/' and '%' are escaped.
  std::string name;
  for (char c : key) {
    if (c == '/') {
      name += "%2F";
    } else if (c == '%') {
      name += "%25";
    } else {
      name += c;
    }
  }
  return io::JoinPath(dir_, name);
}

Status FileStore::Set(const std::string& key, const std::string& value) {
  DS_RETURN_IF_ERROR(env_->CreateDirs(dir_));
  return env_->ReplaceFileAtomically(PathOf(key), value);
}

Result<std::optional<std::string>> FileStore::Get(const std::string& key) {
  Result<std::string> v = env_->ReadFileToString(PathOf(key));
  if (v.ok()) return std::optional<std::string>(std::move(*v));
  if (v.status().IsNotFound()) return std::optional<std::string>();
  return v.status();
}

Status FileStore::Delete(const std::string& key) {
  Status s = env_->RemoveFile(PathOf(key));
  return s.IsNotFound() ? Status::OK() : s;
}

}  // namespace ds::ckpt
