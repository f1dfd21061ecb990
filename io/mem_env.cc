#include "io/mem_env.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <vector>

namespace ds::io {

// ---- the tree

struct MemNode {
  bool is_dir = false;
  std::vector<std::byte> data;    // file: current bytes
  std::vector<std::byte> synced;  // file: bytes as of the last Sync
  std::map<std::string, std::shared_ptr<MemNode>> entries;  // dir: current names
  std::map<std::string, std::shared_ptr<MemNode>> durable;  // dir: names as of the last SyncDir
  int64_t mtime_micros = 0;
};
using NodePtr = std::shared_ptr<MemNode>;

struct MemEnv::State {
  std::mutex mu;
  NodePtr root = std::make_shared<MemNode>();
  uint64_t epoch = 0;                  // bumped by a crash: older handles are dead
  std::map<std::string, uint64_t> locks;  // normalised path -> lock id
  uint64_t next_lock_id = 1;
  uint64_t capacity = uint64_t{1} << 62;
  uint64_t temp_counter = 0;

  State() { root->is_dir = true; }
};

namespace {

using State = MemEnv::State;

// Splits "/a//b/./c" into {"a","b","c"}; ".." is refused so a path cannot escape.
Result<std::vector<std::string>> SplitPath(const std::string& path) {
  std::vector<std::string> parts;
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    std::string part = path.substr(i, j - i);
    if (part == "..") return Status::InvalidArgument("MemEnv: '..' in path " + path);
    if (!part.empty() && part != ".") parts.push_back(std::move(part));
    i = j + 1;
  }
  return parts;
}

std::string Normalise(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += "/" + p;
  return out.empty() ? "/" : out;
}

// Finds the node at `path`, or nullptr. Caller holds the mutex.
NodePtr Find(State& s, const std::vector<std::string>& parts) {
  NodePtr node = s.root;
  for (const auto& part : parts) {
    if (!node->is_dir) return nullptr;
    auto it = node->entries.find(part);
    if (it == node->entries.end()) return nullptr;
    node = it->second;
  }
  return node;
}

struct Parent {
  NodePtr dir;
  std::string name;
};

// The directory holding `path` and the last name, or NotFound naming the path.
Result<Parent> FindParent(State& s, const std::string& path) {
  DS_ASSIGN_OR_RETURN(std::vector<std::string> parts, SplitPath(path));
  if (parts.empty()) return Status::InvalidArgument("MemEnv: no name in path " + path);
  std::string name = parts.back();
  parts.pop_back();
  NodePtr dir = Find(s, parts);
  if (dir == nullptr || !dir->is_dir) {
    return ErrnoStatus("MemEnv: parent directory of " + path, ENOENT);
  }
  return Parent{dir, name};
}

uint64_t UsedLocked(State& s) {
  uint64_t used = 0;
  std::set<const MemNode*> seen;
  std::vector<NodePtr> stack{s.root};
  while (!stack.empty()) {
    NodePtr n = stack.back();
    stack.pop_back();
    if (!seen.insert(n.get()).second) continue;
    used += n->data.size();
    for (auto& [_, child] : n->entries) stack.push_back(child);
  }
  return used;
}

Status DeadHandle(const std::string& path) {
  return Status::IOError("MemEnv: " + path +
                         " was opened before a simulated crash; the handle is dead");
}

class MemFile final : public File {
 public:
  MemFile(std::string path, std::shared_ptr<State> state, NodePtr node, bool writable)
      : File(std::move(path)),
        state_(std::move(state)),
        node_(std::move(node)),
        writable_(writable),
        epoch_(state_->epoch) {}

  Result<size_t> ReadAt(uint64_t offset, std::span<std::byte> out) const override {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (epoch_ != state_->epoch) return DeadHandle(path());
    const auto& d = node_->data;
    if (offset >= d.size()) return size_t{0};
    size_t n = std::min<size_t>(out.size(), d.size() - offset);
    std::memcpy(out.data(), d.data() + offset, n);
    return n;
  }
  Status WriteAt(uint64_t offset, std::span<const std::byte> data) override {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (epoch_ != state_->epoch) return DeadHandle(path());
    if (!writable_) return ErrnoStatus("MemEnv: write " + path(), EBADF);
    auto& d = node_->data;
    uint64_t end = offset + data.size();
    if (end > d.size() && UsedLocked(*state_) + (end - d.size()) > state_->capacity) {
      return ErrnoStatus("MemEnv: write " + path(), ENOSPC);
    }
    if (end > d.size()) d.resize(end);
    std::memcpy(d.data() + offset, data.data(), data.size());
    return Status::OK();
  }
  Status Sync() override {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (epoch_ != state_->epoch) return DeadHandle(path());
    node_->synced = node_->data;
    return Status::OK();
  }
  Status Truncate(uint64_t size) override {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (epoch_ != state_->epoch) return DeadHandle(path());
    auto& d = node_->data;
    if (size > d.size() && UsedLocked(*state_) + (size - d.size()) > state_->capacity) {
      return ErrnoStatus("MemEnv: extend " + path(), ENOSPC);
    }
    d.resize(size);
    return Status::OK();
  }
  Result<uint64_t> Size() const override {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (epoch_ != state_->epoch) return DeadHandle(path());
    return static_cast<uint64_t>(node_->data.size());
  }
  Status Preallocate(uint64_t size) override {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (epoch_ != state_->epoch) return DeadHandle(path());
    const auto& d = node_->data;
    if (size > d.size() && UsedLocked(*state_) + (size - d.size()) > state_->capacity) {
      return ErrnoStatus("MemEnv: preallocate " + path(), ENOSPC);
    }
    return Status::OK();  // reserves nothing: the file grows as it is written
  }
  Status Close() override { return Status::OK(); }

 private:
  std::shared_ptr<State> state_;
  NodePtr node_;
  bool writable_;
  uint64_t epoch_;
};

class MemMappedFile final : public MappedFile {
 public:
  explicit MemMappedFile(std::vector<std::byte> bytes) : bytes_(std::move(bytes)) {}
  std::span<const std::byte> data() const override { return bytes_; }

 private:
  std::vector<std::byte> bytes_;
};

class MemFileLock final : public FileLock {
 public:
  MemFileLock(std::string path, std::shared_ptr<State> state, std::string key, uint64_t id)
      : FileLock(std::move(path)), state_(std::move(state)), key_(std::move(key)), id_(id) {}
  ~MemFileLock() override {
    std::lock_guard<std::mutex> lock(state_->mu);
    auto it = state_->locks.find(key_);
    if (it != state_->locks.end() && it->second == id_) state_->locks.erase(it);
  }

 private:
  std::shared_ptr<State> state_;
  std::string key_;
  uint64_t id_;
};

// After a crash a file holds its synced bytes, plus (kKeep) everything written since, or
// (kTear) what was written since up to a random point followed by random garbage.
void RestoreFile(MemNode& f, CrashTail tail, std::mt19937_64& rng) {
  if (tail == CrashTail::kKeep) {
    f.synced = f.data;
    return;
  }
  if (tail == CrashTail::kTear && f.data != f.synced) {
    size_t common = 0;
    size_t limit = std::min(f.data.size(), f.synced.size());
    while (common < limit && f.data[common] == f.synced[common]) ++common;
    std::vector<std::byte> torn = f.synced;
    size_t cut = common + rng() % (f.data.size() - common + 1);
    size_t garbage = rng() % (f.data.size() - cut + 1);
    torn.resize(std::max(torn.size(), cut + garbage));
    std::memcpy(torn.data() + common, f.data.data() + common, cut - common);
    for (size_t i = cut; i < cut + garbage; ++i) torn[i] = static_cast<std::byte>(rng());
    f.data = std::move(torn);
    f.synced = f.data;
    return;
  }
  f.data = f.synced;
}

void RestoreTree(const NodePtr& node, CrashTail tail, std::mt19937_64& rng,
                 std::set<const MemNode*>& seen) {
  if (!seen.insert(node.get()).second) return;
  if (!node->is_dir) {
    RestoreFile(*node, tail, rng);
    return;
  }
  node->entries = node->durable;
  for (auto& [_, child] : node->entries) RestoreTree(child, tail, rng, seen);
}

}  // namespace

// ---- MemEnv

MemEnv::MemEnv() : state_(std::make_shared<State>()) {}
MemEnv::~MemEnv() = default;

void MemEnv::SimulateCrash(CrashTail tail, uint64_t seed) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->epoch++;
  state_->locks.clear();
  std::mt19937_64 rng(seed);
  std::set<const MemNode*> seen;
  RestoreTree(state_->root, tail, rng, seen);
}

void MemEnv::SetCapacity(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->capacity = bytes;
}

uint64_t MemEnv::UsedBytes() {
  std::lock_guard<std::mutex> lock(state_->mu);
  return UsedLocked(*state_);
}

Result<std::unique_ptr<File>> MemEnv::OpenFile(const std::string& path,
                                               const OpenOptions& options) {
  std::lock_guard<std::mutex> lock(state_->mu);
  DS_ASSIGN_OR_RETURN(Parent p, FindParent(*state_, path));
  auto it = p.dir->entries.find(p.name);
  NodePtr node = it == p.dir->entries.end() ? nullptr : it->second;
  if (node != nullptr && node->is_dir) {
    if (options.regular_only) {
      return Status::FailedPrecondition(path + " is a directory, not a regular file");
    }
    return ErrnoStatus("MemEnv: open " + path, EISDIR);
  }
  switch (options.mode) {
    case OpenMode::kRead:
      if (node == nullptr) return ErrnoStatus("MemEnv: open " + path, ENOENT);
      break;
    case OpenMode::kCreateNew:
      if (node != nullptr) return Status::FailedPrecondition(path + " already exists");
      [[fallthrough]];
    case OpenMode::kTruncate:
    case OpenMode::kUpdate:
      if (node == nullptr) {
        node = std::make_shared<MemNode>();
        p.dir->entries[p.name] = node;
      } else if (options.mode == OpenMode::kTruncate) {
        node->data.clear();
      }
      node->mtime_micros = WallTimeMicros();
      break;
  }
  return std::unique_ptr<File>(std::make_unique<MemFile>(path, state_, node,
                                                         options.mode != OpenMode::kRead));
}

Result<std::unique_ptr<MappedFile>> MemEnv::MapFile(const std::string& path) {
  std::lock_guard<std::mutex> lock(state_->mu);
  DS_ASSIGN_OR_RETURN(std::vector<std::string> parts, SplitPath(path));
  NodePtr node = Find(*state_, parts);
  if (node == nullptr) return ErrnoStatus("MemEnv: map " + path, ENOENT);
  if (node->is_dir) return ErrnoStatus("MemEnv: map " + path, EISDIR);
  return std::unique_ptr<MappedFile>(std::make_unique<MemMappedFile>(node->data));
}

Status MemEnv::RemoveFile(const std::string& path) {
  std::lock_guard<std::mutex> lock(state_->mu);
  DS_ASSIGN_OR_RETURN(Parent p, FindParent(*state_, path));
  auto it = p.dir->entries.find(p.name);
  if (it == p.dir->entries.end()) return ErrnoStatus("MemEnv: remove " + path, ENOENT);
  if (it->second->is_dir) return ErrnoStatus("MemEnv: remove " + path, EISDIR);
  p.dir->entries.erase(it);
  return Status::OK();
}

Status MemEnv::Rename(const std::string& from, const std::string& to) {
  std::lock_guard<std::mutex> lock(state_->mu);
  DS_ASSIGN_OR_RETURN(Parent src, FindParent(*state_, from));
  DS_ASSIGN_OR_RETURN(Parent dst, FindParent(*state_, to));
  auto it = src.dir->entries.find(src.name);
  if (it == src.dir->entries.end()) return ErrnoStatus("MemEnv: rename " + from, ENOENT);
  NodePtr node = it->second;
  auto existing = dst.dir->entries.find(dst.name);
  if (existing != dst.dir->entries.end() && existing->second != node) {
    if (existing->second->is_dir != node->is_dir) {
      return ErrnoStatus("MemEnv: rename " + from + " to " + to, node->is_dir ? ENOTDIR : EISDIR);
    }
    if (existing->second->is_dir && !existing->second->entries.empty()) {
      return ErrnoStatus("MemEnv: rename " + from + " to " + to, ENOTEMPTY);
    }
  }
  src.dir->entries.erase(it);
  dst.dir->entries[dst.name] = node;
  return Status::OK();
}

Status MemEnv::Link(const std::string& from, const std::string& to) {
  std::lock_guard<std::mutex> lock(state_->mu);
  DS_ASSIGN_OR_RETURN(std::vector<std::string> parts, SplitPath(from));
  NodePtr node = Find(*state_, parts);
  if (node == nullptr) return ErrnoStatus("MemEnv: link " + from, ENOENT);
  if (node->is_dir) return ErrnoStatus("MemEnv: link " + from, EPERM);
  DS_ASSIGN_OR_RETURN(Parent dst, FindParent(*state_, to));
  if (dst.dir->entries.count(dst.name) != 0) {
    return Status::FailedPrecondition(to + " already exists");
  }
  dst.dir->entries[dst.name] = node;
  return Status::OK();
}

Result<FileInfo> MemEnv::Stat(const std::string& path) {
  std::lock_guard<std::mutex> lock(state_->mu);
  DS_ASSIGN_OR_RETURN(std::vector<std::string> parts, SplitPath(path));
  NodePtr node = Find(*state_, parts);
  if (node == nullptr) return ErrnoStatus("MemEnv: stat " + path, ENOENT);
  FileInfo info;
  info.size = node->data.size();
  info.is_dir = node->is_dir;
  info.type = node->is_dir ? FileType::kDirectory : FileType::kRegular;
  info.mtime_micros = node->mtime_micros;
  return info;
}

Status MemEnv::CreateDir(const std::string& dir) {
  std::lock_guard<std::mutex> lock(state_->mu);
  DS_ASSIGN_OR_RETURN(Parent p, FindParent(*state_, dir));
  if (p.dir->entries.count(p.name) != 0) return Status::FailedPrecondition(dir + " already exists");
  auto node = std::make_shared<MemNode>();
  node->is_dir = true;
  node->mtime_micros = WallTimeMicros();
  p.dir->entries[p.name] = node;
  return Status::OK();
}

Status MemEnv::RemoveDir(const std::string& dir) {
  std::lock_guard<std::mutex> lock(state_->mu);
  DS_ASSIGN_OR_RETURN(Parent p, FindParent(*state_, dir));
  auto it = p.dir->entries.find(p.name);
  if (it == p.dir->entries.end()) return ErrnoStatus("MemEnv: remove directory " + dir, ENOENT);
  if (!it->second->is_dir) return ErrnoStatus("MemEnv: remove directory " + dir, ENOTDIR);
  if (!it->second->entries.empty()) {
    return ErrnoStatus("MemEnv: remove directory " + dir, ENOTEMPTY);
  }
  p.dir->entries.erase(it);
  return Status::OK();
}

Result<std::vector<std::string>> MemEnv::ListDir(const std::string& dir) {
  std::lock_guard<std::mutex> lock(state_->mu);
  DS_ASSIGN_OR_RETURN(std::vector<std::string> parts, SplitPath(dir));
  NodePtr node = Find(*state_, parts);
  if (node == nullptr) return ErrnoStatus("MemEnv: list " + dir, ENOENT);
  if (!node->is_dir) return ErrnoStatus("MemEnv: list " + dir, ENOTDIR);
  std::vector<std::string> names;
  for (const auto& [name, _] : node->entries) names.push_back(name);
  return names;  // std::map keeps them sorted
}

Status MemEnv::SyncDir(const std::string& dir) {
  std::lock_guard<std::mutex> lock(state_->mu);
  DS_ASSIGN_OR_RETURN(std::vector<std::string> parts, SplitPath(dir));
  NodePtr node = Find(*state_, parts);
  if (node == nullptr) return ErrnoStatus("MemEnv: open directory " + dir + " to sync it", ENOENT);
  if (!node->is_dir) return ErrnoStatus("MemEnv: fsync directory " + dir, ENOTDIR);
  node->durable = node->entries;
  return Status::OK();
}

Result<SpaceInfo> MemEnv::StatFs(const std::string& path) {
  DS_ASSIGN_OR_RETURN(FileInfo info, Stat(path));
  (void)info;
  std::lock_guard<std::mutex> lock(state_->mu);
  uint64_t used = UsedLocked(*state_);
  return SpaceInfo{state_->capacity, state_->capacity > used ? state_->capacity - used : 0};
}

Result<std::string> MemEnv::MakeTempDir(std::string_view prefix) {
  uint64_t n;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    n = ++state_->temp_counter;
  }
  // The temporary area is durable from the start, as /tmp on a real machine would be.
  DS_RETURN_IF_ERROR(CreateDirs("/tmp"));
  std::string dir = "/tmp/" + std::string(prefix) + std::to_string(n);
  DS_RETURN_IF_ERROR(CreateDir(dir));
  DS_RETURN_IF_ERROR(SyncDir("/"));
  DS_RETURN_IF_ERROR(SyncDir("/tmp"));
  return dir;
}

Result<std::unique_ptr<FileLock>> MemEnv::TryLockFile(const std::string& path) {
  {
    // flock creates the lock file if missing
    Result<std::unique_ptr<File>> f = OpenFile(path, {OpenMode::kUpdate});
    if (!f.ok()) return f.status();
  }
  std::lock_guard<std::mutex> lock(state_->mu);
  DS_ASSIGN_OR_RETURN(std::vector<std::string> parts, SplitPath(path));
  std::string key = Normalise(parts);
  if (state_->locks.count(key) != 0) {
    return Status::Unavailable("lock " + path + " is held by another");
  }
  uint64_t id = state_->next_lock_id++;
  state_->locks[key] = id;
  return std::unique_ptr<FileLock>(std::make_unique<MemFileLock>(path, state_, key, id));
}

}  // namespace ds::io
