// Nothing outside the save directory is ever deleted: gc, its dry run, prune and the retention a
// training run applies (Catalog::ApplyRetention) meet symbolic links (in a checkpoint, as a
// checkpoint, as a .trash-* / .tmp-* / pointer temp) and mount points, on the real filesystem,
// and a sentinel tree outside the save directory must come out byte for byte as it went in.
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <functional>
#include <map>

#include "ckpt/gc.h"
#include "formats/manifest.h"
#include "testing/checkpoint_builder.h"
#include "testing/matchers.h"

namespace ds::ckpt {
namespace {

using ::ds::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr int64_t kHour = 3600'000'000;  // microseconds

// Everything under `root`: each directory, each file's bytes, each link's target. Two snapshots
// are equal only when nothing under `root` changed.
std::map<std::string, std::string> Snapshot(io::Env* env, const std::string& root) {
  std::map<std::string, std::string> out;
  std::function<void(const std::string&)> walk = [&](const std::string& dir) {
    Result<std::vector<std::string>> names = env->ListDir(dir);
    EXPECT_TRUE(names.ok()) << names.status().ToString();
    for (const std::string& n : names.ok() ? *names : std::vector<std::string>()) {
      const std::string p = io::JoinPath(dir, n);
      Result<io::FileInfo> info = env->LinkStat(p);
      ASSERT_TRUE(info.ok()) << info.status().ToString();
      if (info->type == io::FileType::kDirectory) {
        out[p] = "directory";
        walk(p);
      } else if (info->type == io::FileType::kSymlink) {
        out[p] = "link to " + info->link_target;
      } else {
        out[p] = "file: " + env->ReadFileToString(p).value();
      }
    }
  };
  walk(root);
  return out;
}

bool Exists(const std::string& path) {  // the entry itself, not what a link names
  return io::Env::Default()->LinkStat(path).ok();
}

void Symlink(const std::string& target, const std::string& link) {
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0) << link << ": " << std::strerror(errno);
}

std::vector<std::string> Paths(const std::vector<GcItem>& items) {
  std::vector<std::string> out;
  for (const GcItem& i : items) out.push_back(i.path);
  return out;
}

// <tmp>/outside holds data a careless link points at; <tmp>/save is a run's save directory with
// two committed checkpoints, step-00000100 and step-00000200 (latest).
class RemovalSafetyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    outside_ = tmp_.Join("outside");
    save_ = tmp_.Join("save");
    DS_ASSERT_OK(env_->CreateDirs(outside_ + "/data/sub"));
    DS_ASSERT_OK(env_->WriteFileSynced(outside_ + "/data/a.bin", "training data, do not lose"));
    DS_ASSERT_OK(env_->WriteFileSynced(outside_ + "/data/sub/b.bin", std::string(5000, 'b')));
    // A whole checkpoint kept elsewhere, linked into the save directory by some test cases.
    Commit(outside_ + "/step-00000050");
    Commit(save_ + "/step-00000100");
    Commit(save_ + "/step-00000200");
    DS_ASSERT_OK(Catalog(env_, save_).SetLatest("step-00000200"));
    before_ = Snapshot(env_, outside_);
    ASSERT_GT(before_.size(), 5u);
  }
  void TearDown() override {
    EXPECT_EQ(Snapshot(env_, outside_), before_) << "something outside the save dir changed";
  }

  void Commit(const std::string& dir) {
    ASSERT_TRUE(testing::WriteTestCheckpoint(
                    env_, dir, {testing::MakeTensor("w", fmt::DType::kF32, {32, 8}, 1)}, 1,
                    fmt::Codec::kRaw)
                    .ok());
  }
  Result<GcReport> Gc(bool dry_run) {
    GcOptions o;
    o.dry_run = dry_run;
    o.older_than_micros = kHour;
    o.now_micros = env_->WallTimeMicros() + 2 * kHour;
    return CollectGarbage(env_, save_, o);
  }
  Result<RetentionResult> PruneToLatest() {
    RetentionPolicy p;
    p.keep_last = 1;
    return Prune(env_, save_, p, {});
  }

  io::Env* env_ = io::Env::Default();
  testing::TempDir tmp_;
  std::string outside_, save_;
  std::map<std::string, std::string> before_;
};

// ---- a link inside a committed checkpoint (say, a tokenizer linked to the data directory)

TEST_F(RemovalSafetyTest, GcDryRunSaysItRemovesOnlyTheLinkInACheckpoint) {
  const std::string link = save_ + "/step-00000100/tokenizer";
  Symlink("../../outside/data", link);
  DS_ASSERT_OK_AND_ASSIGN(GcReport r, Gc(/*dry_run=*/true));
  ASSERT_THAT(Paths(r.removed), ElementsAre(link));
  EXPECT_EQ(r.removed[0].kind, GcKind::kUnreferenced);
  EXPECT_THAT(r.removed[0].reason, AllOf(HasSubstr("a symbolic link to '../../outside/data'"),
                                         HasSubstr("removes the link only, not its target")));
  EXPECT_EQ(r.removed[0].bytes, std::string("../../outside/data").size());  // the link's own
  EXPECT_TRUE(Exists(link));
}

TEST_F(RemovalSafetyTest, GcRemovesALinkInACheckpointNotItsTarget) {
  const std::string dir_link = save_ + "/step-00000100/tokenizer";
  const std::string file_link = save_ + "/step-00000100/vocab.json";
  Symlink("../../outside/data", dir_link);
  Symlink(outside_ + "/data/a.bin", file_link);  // absolute, to a file
  DS_ASSERT_OK_AND_ASSIGN(GcReport r, Gc(/*dry_run=*/false));
  EXPECT_THAT(Paths(r.removed), ElementsAre(dir_link, file_link));
  EXPECT_FALSE(Exists(dir_link));
  EXPECT_FALSE(Exists(file_link));
  EXPECT_TRUE(Exists(save_ + "/step-00000100/manifest.h5"));
}

TEST_F(RemovalSafetyTest, PruneRemovesACheckpointHoldingALinkNotTheLinksTarget) {
  Symlink("../../outside/data", save_ + "/step-00000100/tokenizer");
  Symlink(outside_ + "/data/a.bin", save_ + "/step-00000100/vocab.json");
  DS_ASSERT_OK_AND_ASSIGN(RetentionResult r, PruneToLatest());
  ASSERT_EQ(r.removed.size(), 1u);
  EXPECT_EQ(r.removed[0].tag, "step-00000100");
  EXPECT_FALSE(Exists(save_ + "/step-00000100"));
  EXPECT_THAT(env_->ListDir(save_).value(),
              ElementsAre(".catalog.lock", "latest", "step-00000200"));
}

// ---- a checkpoint directory that is itself a link (kept on another disk, say)

TEST_F(RemovalSafetyTest, RetentionRemovesALinkedCheckpointAsALink) {
  const std::string link = save_ + "/step-00000050";
  Symlink("../outside/step-00000050", link);
  Catalog catalog(env_, save_);
  DS_ASSERT_OK_AND_ASSIGN(auto lock, catalog.Lock(0));
  RetentionPolicy p;
  p.keep_last = 1;
  DS_ASSERT_OK_AND_ASSIGN(RetentionResult r, catalog.ApplyRetention(p, /*dry_run=*/false));
  std::vector<std::string> tags;
  for (const CheckpointEntry& e : r.removed) tags.push_back(e.tag);
  EXPECT_THAT(tags, ElementsAre("step-00000050", "step-00000100"));
  EXPECT_FALSE(Exists(link));  // renamed to .trash-*, then removed as a link
  EXPECT_THAT(env_->ListDir(save_).value(),
              ElementsAre(".catalog.lock", "latest", "step-00000200"));
  EXPECT_TRUE(Exists(outside_ + "/step-00000050/manifest.h5"));
}

TEST_F(RemovalSafetyTest, GcDoesNotLookIntoALinkedCheckpoint) {
  Symlink("../outside/step-00000050", save_ + "/step-00000050");
  DS_ASSERT_OK(env_->WriteFileSynced(outside_ + "/step-00000050/notes.txt", "unreferenced"));
  before_ = Snapshot(env_, outside_);
  DS_ASSERT_OK_AND_ASSIGN(GcReport dry, Gc(/*dry_run=*/true));
  EXPECT_THAT(dry.removed, IsEmpty());
  DS_ASSERT_OK_AND_ASSIGN(GcReport r, Gc(/*dry_run=*/false));
  EXPECT_THAT(r.removed, IsEmpty());
  EXPECT_TRUE(Exists(save_ + "/step-00000050"));
}

// ---- links with the names of dstrain's own temporaries

TEST_F(RemovalSafetyTest, ATrashLinkIsRemovedAsALink) {
  const std::string link = save_ + "/.trash-step-00000010-0123456789abcdef";
  Symlink("../outside/data", link);
  DS_ASSERT_OK_AND_ASSIGN(GcReport dry, Gc(/*dry_run=*/true));
  ASSERT_THAT(Paths(dry.removed), ElementsAre(link));
  EXPECT_THAT(dry.removed[0].reason, AllOf(HasSubstr("a symbolic link to '../outside/data'"),
                                           HasSubstr("removes the link only, not its target")));
  EXPECT_TRUE(Exists(link));
  DS_ASSERT_OK_AND_ASSIGN(GcReport r, Gc(/*dry_run=*/false));
  EXPECT_THAT(Paths(r.removed), ElementsAre(link));
  EXPECT_FALSE(Exists(link));
}

TEST_F(RemovalSafetyTest, ATempOrPointerTempLinkIsNotDstrainsAndIsKept) {
  const std::string tmp_link = save_ + "/.tmp-step-00000300-0123456789abcdef";
  const std::string pointer_link = save_ + "/latest.tmp-0123456789abcdef";
  Symlink("../outside/data", tmp_link);
  Symlink("../outside/data/a.bin", pointer_link);
  for (bool dry_run : {true, false}) {
    DS_ASSERT_OK_AND_ASSIGN(GcReport r, Gc(dry_run));
    EXPECT_THAT(r.removed, IsEmpty());
    EXPECT_THAT(Paths(r.kept), ElementsAre(tmp_link, pointer_link));
    for (const GcItem& i : r.kept) {
      EXPECT_THAT(i.reason, HasSubstr("dstrain never makes one, so gc leaves it (and its "
                                      "target) alone"));
    }
  }
  EXPECT_TRUE(Exists(tmp_link));
  EXPECT_TRUE(Exists(pointer_link));
}

// ---- the same walk as Env::RemoveAll, from its own root

TEST_F(RemovalSafetyTest, RemoveAllOfALinkRemovesTheLink) {
  const std::string link = tmp_.Join("link");
  Symlink("outside/data", link);
  DS_ASSERT_OK(env_->RemoveAll(link));
  EXPECT_FALSE(Exists(link));
  DS_ASSERT_OK(env_->CreateDirs(tmp_.Join("tree/deep")));
  Symlink("../../outside/data", tmp_.Join("tree/deep/data"));
  Symlink("../outside/data/a.bin", tmp_.Join("tree/a.bin"));
  DS_ASSERT_OK(env_->RemoveAll(tmp_.Join("tree")));
  EXPECT_FALSE(Exists(tmp_.Join("tree")));
}

// A plain file at the top of a save directory with no `latest` yet (a first pointer update in
// flight, a metrics log) is not a checkpoint to look into: "latest.tmp-*/manifest.h5" is not
// there (ENOTDIR), which must not fail gc or list.
TEST_F(RemovalSafetyTest, AFileBesideTheCheckpointsIsNoObstacle) {
  DS_ASSERT_OK(env_->RemoveFile(save_ + "/latest"));
  DS_ASSERT_OK(env_->WriteFileSynced(save_ + "/latest.tmp-0123456789abcdef", "step-00000200\n"));
  DS_ASSERT_OK(env_->WriteFileSynced(save_ + "/metrics.jsonl", "{}\n"));
  DS_ASSERT_OK_AND_ASSIGN(GcReport r, Gc(/*dry_run=*/false));
  EXPECT_THAT(Paths(r.removed), ElementsAre(save_ + "/latest.tmp-0123456789abcdef"));
  DS_ASSERT_OK(ListSaveDir(env_, save_).status());
}

// ---- mount points: a tmpfs and a bind mount of the outside data, inside the save directory.
// Mounting needs a private mount namespace (unshare); where that is refused the test skips.

// Runs `body` in a child in a new mount namespace (and user namespace, when not root); the
// child's exit code comes back: 77 when the namespace or the mount could not be had.
int RunInMountNamespace(const std::function<int()>& body) {
  const uid_t uid = ::getuid();
  const gid_t gid = ::getgid();
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid == 0) {
    if (::unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0 && ::unshare(CLONE_NEWNS) != 0) _exit(77);
    auto write = [](const char* path, const std::string& text) {
      int fd = ::open(path, O_WRONLY | O_CLOEXEC);
      if (fd < 0) return;
      (void)!::write(fd, text.data(), text.size());
      ::close(fd);
    };
    write("/proc/self/setgroups", "deny");
    write("/proc/self/uid_map", "0 " + std::to_string(uid) + " 1");
    write("/proc/self/gid_map", "0 " + std::to_string(gid) + " 1");
    // Nothing mounted here may reach the parent's namespace.
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) _exit(77);
    _exit(body());
  }
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

TEST_F(RemovalSafetyTest, NothingIsRemovedAcrossAMountPoint) {
  const std::string scratch = save_ + "/step-00000100/scratch";  // unreferenced
  const std::string trash = save_ + "/.trash-step-00000010-0123456789abcdef";
  DS_ASSERT_OK(env_->CreateDirs(scratch));
  DS_ASSERT_OK(env_->CreateDirs(trash + "/data"));
  const int code = RunInMountNamespace([&]() -> int {
    if (::mount("none", scratch.c_str(), "tmpfs", 0, nullptr) != 0) return 77;
    if (::mount((outside_ + "/data").c_str(), (trash + "/data").c_str(), nullptr, MS_BIND,
                nullptr) != 0) {
      return 77;
    }
    if (!env_->WriteFileSynced(scratch + "/on-tmpfs", "x").ok()) return 10;
    // The dry run and the real run keep both, saying why.
    for (bool dry_run : {true, false}) {
      Result<GcReport> r = Gc(dry_run);
      if (!r.ok()) return 11;
      if (!r->removed.empty() || r->kept.size() != 2) return 12;
      for (const GcItem& i : r->kept) {
        if (i.reason.find("is a mount point (another filesystem): gc does not remove what is "
                          "under it; unmount it first") == std::string::npos) {
          return 13;
        }
      }
    }
    // Env::RemoveAll neither starts at a mount point nor enters one.
    for (const std::string& root : {scratch, trash}) {
      Status s = env_->RemoveAll(root);
      if (s.code() != StatusCode::kFailedPrecondition ||
          s.message().find("is a mount point (another filesystem): not removing what is under "
                           "it; unmount it first") == std::string::npos) {
        return 14;
      }
    }
    if (!Exists(scratch + "/on-tmpfs") || !Exists(trash + "/data/a.bin")) return 15;
    // Prune renames the checkpoint to .trash-*, then stops at the mount point under it.
    Status pruned = PruneToLatest().status();
    if (pruned.code() != StatusCode::kFailedPrecondition ||
        pruned.message().find("/scratch is a mount point") == std::string::npos) {
      return 16;
    }
    return 0;
  });
  if (code == 77) GTEST_SKIP() << "cannot mount in a private namespace here (unshare refused)";
  EXPECT_EQ(code, 0) << "check " << code << " failed in the mount namespace";
}

}  // namespace
}  // namespace ds::ckpt
