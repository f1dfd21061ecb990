// One suite, every Env: PosixEnv on a temp directory, MemEnv, and FaultEnv over each (with no
// rules it must behave exactly like its base).
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "io/env.h"
#include "io/fault_env.h"
#include "io/mem_env.h"
#include "testing/matchers.h"

namespace ds::io {
namespace {

using ::ds::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class EnvConformance : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string& kind = GetParam();
    if (kind == "posix" || kind == "fault-posix") {
      env_ = Env::Default();
    } else {
      mem_ = std::make_unique<MemEnv>();
      env_ = mem_.get();
    }
    if (kind.rfind("fault", 0) == 0) {
      fault_ = std::make_unique<FaultEnv>(env_);
      env_ = fault_.get();
    }
    Result<std::string> dir = env_->MakeTempDir("dstrain-env-");
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    dir_ = *dir;
  }
  void TearDown() override {
    if (!dir_.empty()) (void)env_->RemoveAll(dir_);
  }
  std::string P(std::string_view name) const { return JoinPath(dir_, name); }

  Status Write(const std::string& path, std::string_view data) {
    return env_->WriteFileSynced(path, data);
  }

  std::unique_ptr<MemEnv> mem_;
  std::unique_ptr<FaultEnv> fault_;
  Env* env_ = nullptr;
  std::string dir_;
};

std::span<const std::byte> Bytes(std::string_view s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

TEST_P(EnvConformance, WriteReadRoundTrip) {
  DS_ASSERT_OK(Write(P("a"), "hello world"));
  DS_ASSERT_OK_AND_ASSIGN(std::string got, env_->ReadFileToString(P("a")));
  EXPECT_EQ(got, "hello world");
  DS_ASSERT_OK_AND_ASSIGN(FileInfo info, env_->Stat(P("a")));
  EXPECT_EQ(info.size, 11u);
  EXPECT_FALSE(info.is_dir);
}

TEST_P(EnvConformance, PositionalWritesLeaveHolesAsZeros) {
  DS_ASSERT_OK_AND_ASSIGN(auto f, env_->OpenFile(P("f"), {OpenMode::kTruncate}));
  DS_ASSERT_OK(f->WriteAt(8, Bytes("xy")));
  DS_ASSERT_OK(f->WriteAt(0, Bytes("ab")));
  DS_ASSERT_OK_AND_ASSIGN(uint64_t size, f->Size());
  EXPECT_EQ(size, 10u);
  std::string buf(16, '?');
  DS_ASSERT_OK_AND_ASSIGN(size_t n, f->ReadAt(0, std::as_writable_bytes(std::span(buf))));
  EXPECT_EQ(n, 10u);
  EXPECT_EQ(buf.substr(0, 10), std::string("ab\0\0\0\0\0\0xy", 10));
  DS_ASSERT_OK_AND_ASSIGN(n, f->ReadAt(100, std::as_writable_bytes(std::span(buf))));
  EXPECT_EQ(n, 0u);
  DS_ASSERT_OK(f->Truncate(3));
  DS_ASSERT_OK_AND_ASSIGN(size, f->Size());
  EXPECT_EQ(size, 3u);
  DS_ASSERT_OK(f->Close());
}

TEST_P(EnvConformance, OpenModes) {
  EXPECT_THAT(env_->OpenFile(P("missing"), {OpenMode::kRead}),
              StatusIs(StatusCode::kNotFound, HasSubstr("missing")));
  DS_ASSERT_OK(Write(P("x"), "123"));
  EXPECT_THAT(env_->OpenFile(P("x"), {OpenMode::kCreateNew}),
              StatusIs(StatusCode::kFailedPrecondition, HasSubstr("already exists")));
  {
    DS_ASSERT_OK_AND_ASSIGN(auto f, env_->OpenFile(P("x"), {OpenMode::kUpdate}));
    DS_ASSERT_OK_AND_ASSIGN(uint64_t size, f->Size());
    EXPECT_EQ(size, 3u);  // kept
  }
  {
    DS_ASSERT_OK_AND_ASSIGN(auto f, env_->OpenFile(P("x"), {OpenMode::kTruncate}));
    DS_ASSERT_OK_AND_ASSIGN(uint64_t size, f->Size());
    EXPECT_EQ(size, 0u);
  }
  EXPECT_THAT(env_->OpenFile(P("nodir/x"), {OpenMode::kTruncate}),
              StatusIs(StatusCode::kNotFound, HasSubstr("nodir")));
}

TEST_P(EnvConformance, RenameReplacesAtomically) {
  DS_ASSERT_OK(Write(P("old"), "old"));
  DS_ASSERT_OK(Write(P("new"), "new"));
  DS_ASSERT_OK(env_->Rename(P("new"), P("old")));
  DS_ASSERT_OK_AND_ASSIGN(std::string got, env_->ReadFileToString(P("old")));
  EXPECT_EQ(got, "new");
  DS_ASSERT_OK_AND_ASSIGN(bool exists, env_->Exists(P("new")));
  EXPECT_FALSE(exists);
  EXPECT_THAT(env_->Rename(P("nope"), P("x")), StatusIs(StatusCode::kNotFound, HasSubstr("nope")));
}

TEST_P(EnvConformance, RenameDirectoryOntoEmptyDirectory) {
  DS_ASSERT_OK(env_->CreateDir(P("d1")));
  DS_ASSERT_OK(Write(P("d1/f"), "x"));
  DS_ASSERT_OK(env_->CreateDir(P("d2")));
  DS_ASSERT_OK(env_->Rename(P("d1"), P("d2")));
  DS_ASSERT_OK_AND_ASSIGN(std::string got, env_->ReadFileToString(P("d2/f")));
  EXPECT_EQ(got, "x");
}

TEST_P(EnvConformance, LinkSharesContentsAndRefusesExistingTarget) {
  DS_ASSERT_OK(Write(P("a"), "data"));
  DS_ASSERT_OK(env_->Link(P("a"), P("b")));
  DS_ASSERT_OK_AND_ASSIGN(std::string got, env_->ReadFileToString(P("b")));
  EXPECT_EQ(got, "data");
  EXPECT_THAT(env_->Link(P("a"), P("b")), StatusIs(StatusCode::kFailedPrecondition, HasSubstr("b")));
  DS_ASSERT_OK(env_->RemoveFile(P("a")));
  DS_ASSERT_OK_AND_ASSIGN(got, env_->ReadFileToString(P("b")));
  EXPECT_EQ(got, "data");
}

TEST_P(EnvConformance, DirectoriesListSortedAndRemove) {
  DS_ASSERT_OK(env_->CreateDirs(P("x/y/z")));
  DS_ASSERT_OK(env_->CreateDirs(P("x/y/z")));  // idempotent
  EXPECT_THAT(env_->CreateDir(P("x")), StatusIs(StatusCode::kFailedPrecondition, HasSubstr("x")));
  DS_ASSERT_OK(Write(P("x/b"), "1"));
  DS_ASSERT_OK(Write(P("x/a"), "2"));
  DS_ASSERT_OK_AND_ASSIGN(std::vector<std::string> names, env_->ListDir(P("x")));
  EXPECT_THAT(names, ElementsAre("a", "b", "y"));
  EXPECT_THAT(env_->RemoveDir(P("x")), StatusIs(StatusCode::kIOError, HasSubstr("x")));
  DS_ASSERT_OK(env_->RemoveAll(P("x")));
  DS_ASSERT_OK_AND_ASSIGN(bool exists, env_->Exists(P("x")));
  EXPECT_FALSE(exists);
  DS_ASSERT_OK(env_->RemoveAll(P("x")));  // missing is fine
  EXPECT_THAT(env_->ListDir(P("x")), StatusIs(StatusCode::kNotFound, HasSubstr("x")));
  EXPECT_THAT(env_->RemoveFile(P("x")), StatusIs(StatusCode::kNotFound, HasSubstr("x")));
}

TEST_P(EnvConformance, RemoveAllTellsTheBytesOfEachFileRemoved) {
  DS_ASSERT_OK(env_->CreateDirs(P("t/a/b")));
  DS_ASSERT_OK(Write(P("t/one"), "1"));
  DS_ASSERT_OK(Write(P("t/a/three"), "333"));
  DS_ASSERT_OK(Write(P("t/a/b/five"), "55555"));
  std::vector<uint64_t> sizes;
  DS_ASSERT_OK(env_->RemoveAll(P("t"), [&](uint64_t bytes) { sizes.push_back(bytes); }));
  std::sort(sizes.begin(), sizes.end());
  EXPECT_THAT(sizes, ElementsAre(1, 3, 5));
  DS_ASSERT_OK_AND_ASSIGN(bool exists, env_->Exists(P("t")));
  EXPECT_FALSE(exists);
}

TEST_P(EnvConformance, StatAndLinkStatTellTheType) {
  DS_ASSERT_OK(env_->CreateDir(P("d")));
  DS_ASSERT_OK(Write(P("f"), "abc"));
  for (auto stat : {&Env::Stat, &Env::LinkStat}) {
    DS_ASSERT_OK_AND_ASSIGN(FileInfo d, (env_->*stat)(P("d")));
    EXPECT_EQ(d.type, FileType::kDirectory);
    EXPECT_TRUE(d.is_dir);
    DS_ASSERT_OK_AND_ASSIGN(FileInfo f, (env_->*stat)(P("f")));
    EXPECT_EQ(f.type, FileType::kRegular);
    EXPECT_EQ(f.size, 3u);
    EXPECT_EQ(f.device, d.device);
    EXPECT_FALSE(f.mount_root);
    EXPECT_THAT((env_->*stat)(P("none")), StatusIs(StatusCode::kNotFound, HasSubstr("none")));
  }
  // "f/x" where f is a file does not exist.
  DS_ASSERT_OK_AND_ASSIGN(bool exists, env_->Exists(P("f/x")));
  EXPECT_FALSE(exists);
}

TEST_P(EnvConformance, RegularOnlyRefusesADirectory) {
  DS_ASSERT_OK(env_->CreateDir(P("d")));
  OpenOptions o;
  o.regular_only = true;
  EXPECT_THAT(env_->OpenFile(P("d"), o),
              StatusIs(StatusCode::kFailedPrecondition,
                       HasSubstr(P("d") + " is a directory, not a regular file")));
  DS_ASSERT_OK(Write(P("f"), "abc"));
  DS_ASSERT_OK_AND_ASSIGN(auto f, env_->OpenFile(P("f"), o));
  DS_ASSERT_OK_AND_ASSIGN(uint64_t size, f->Size());
  EXPECT_EQ(size, 3u);
}

TEST_P(EnvConformance, SyncDirAndStatFs) {
  DS_ASSERT_OK(env_->SyncDir(dir_));
  EXPECT_THAT(env_->SyncDir(P("missing")), StatusIs(StatusCode::kNotFound, HasSubstr("missing")));
  DS_ASSERT_OK_AND_ASSIGN(SpaceInfo space, env_->StatFs(dir_));
  EXPECT_GT(space.total_bytes, 0u);
  EXPECT_LE(space.available_bytes, space.total_bytes);
}

TEST_P(EnvConformance, ReplaceFileAtomicallyLeavesNoTemporaries) {
  DS_ASSERT_OK(env_->ReplaceFileAtomically(P("latest"), "step-1"));
  DS_ASSERT_OK(env_->ReplaceFileAtomically(P("latest"), "step-2"));
  DS_ASSERT_OK_AND_ASSIGN(std::string got, env_->ReadFileToString(P("latest")));
  EXPECT_EQ(got, "step-2");
  DS_ASSERT_OK_AND_ASSIGN(std::vector<std::string> names, env_->ListDir(dir_));
  EXPECT_THAT(names, ElementsAre("latest"));
}

TEST_P(EnvConformance, LocksExcludeEachOtherAndReleaseOnDestruction) {
  DS_ASSERT_OK_AND_ASSIGN(auto lock, env_->TryLockFile(P("lock")));
  EXPECT_THAT(env_->TryLockFile(P("lock")), StatusIs(StatusCode::kUnavailable, HasSubstr("lock")));
  EXPECT_THAT(env_->LockFile(P("lock"), 30000),
              StatusIs(StatusCode::kUnavailable, HasSubstr("held by another process")));
  lock.reset();
  DS_ASSERT_OK_AND_ASSIGN(auto again, env_->LockFile(P("lock"), 1000000));
  EXPECT_EQ(again->path(), P("lock"));
}

TEST_P(EnvConformance, MapFileSeesContents) {
  DS_ASSERT_OK(Write(P("m"), "mapped bytes"));
  DS_ASSERT_OK_AND_ASSIGN(auto map, env_->MapFile(P("m")));
  std::string got(reinterpret_cast<const char*>(map->data().data()), map->data().size());
  EXPECT_EQ(got, "mapped bytes");
  DS_ASSERT_OK(Write(P("empty"), ""));
  DS_ASSERT_OK_AND_ASSIGN(auto empty, env_->MapFile(P("empty")));
  EXPECT_EQ(empty->data().size(), 0u);
}

TEST_P(EnvConformance, ClockMovesForward) {
  uint64_t t0 = env_->NowMicros();
  env_->SleepForMicros(2000);
  EXPECT_GE(env_->NowMicros() - t0, 2000u);
  EXPECT_GT(env_->WallTimeMicros(), int64_t{1600000000} * 1000000);  // after 2020
}

TEST_P(EnvConformance, NoncesAreFreshHexOnEveryCallAndThread) {
  constexpr int kThreads = 4, kPerThread = 500;
  std::vector<std::vector<std::string>> drawn(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([this, &drawn, t] {
      for (int i = 0; i < kPerThread; ++i) drawn[t].push_back(env_->NewNonce());
    });
  }
  for (std::thread& t : threads) t.join();
  std::set<std::string> distinct;
  for (const std::vector<std::string>& some : drawn) {
    for (const std::string& n : some) {
      EXPECT_EQ(n.size(), 16u) << n;
      EXPECT_EQ(n.find_first_not_of("0123456789abcdef"), std::string::npos) << n;
      distinct.insert(n);
    }
  }
  EXPECT_EQ(distinct.size(), size_t{kThreads * kPerThread});
}

// Every Env here answers for the real host, as the real one does.
TEST_P(EnvConformance, TheHostsNameAndMemory) {
  EXPECT_FALSE(env_->HostName().empty());
  EXPECT_EQ(env_->HostName(), Env::Default()->HostName());
  EXPECT_GT(env_->PhysicalMemoryBytes(), 0u);
  EXPECT_EQ(env_->PhysicalMemoryBytes(), Env::Default()->PhysicalMemoryBytes());
}

TEST_P(EnvConformance, EnvironmentVariablesSetEmptyAndUnset) {
  ASSERT_EQ(::setenv("DSTRAIN_ENV_TEST_SET", "a value", 1), 0);
  ASSERT_EQ(::setenv("DSTRAIN_ENV_TEST_EMPTY", "", 1), 0);
  ASSERT_EQ(::unsetenv("DSTRAIN_ENV_TEST_UNSET"), 0);
  EXPECT_EQ(env_->GetEnvVar("DSTRAIN_ENV_TEST_SET"), "a value");
  EXPECT_EQ(env_->GetEnvVar("DSTRAIN_ENV_TEST_EMPTY"), "");
  EXPECT_EQ(env_->GetEnvVar("DSTRAIN_ENV_TEST_UNSET"), std::nullopt);
  ::unsetenv("DSTRAIN_ENV_TEST_SET");
  ::unsetenv("DSTRAIN_ENV_TEST_EMPTY");
  EXPECT_EQ(env_->GetEnvVar("DSTRAIN_ENV_TEST_SET"), std::nullopt);
}

INSTANTIATE_TEST_SUITE_P(AllEnvs, EnvConformance,
                         ::testing::Values("posix", "mem", "fault-posix", "fault-mem"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

// ---- removal never leaves its root (the real filesystem)

class PosixRemovalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DS_ASSERT_OK(env_->CreateDirs(tmp_.Join("target/sub")));
    DS_ASSERT_OK(env_->WriteFileSynced(tmp_.Join("target/keep"), "keep me"));
    DS_ASSERT_OK(env_->WriteFileSynced(tmp_.Join("target/sub/keep"), "me too"));
    DS_ASSERT_OK(env_->CreateDirs(tmp_.Join("tree/inner")));
    DS_ASSERT_OK(env_->WriteFileSynced(tmp_.Join("tree/inner/file"), "x"));
  }
  void Symlink(const std::string& target, const std::string& link) {
    ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0) << std::strerror(errno);
  }
  void ExpectTargetUntouched() {
    for (auto [name, contents] :
         {std::pair{"target/keep", "keep me"}, {"target/sub/keep", "me too"}}) {
      Result<std::string> got = env_->ReadFileToString(tmp_.Join(name));
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      EXPECT_EQ(*got, contents);
    }
  }
  Env* env_ = Env::Default();
  testing::TempDir tmp_;
};

TEST_F(PosixRemovalTest, LinkStatSeesTheLinkStatItsTarget) {
  Symlink("../target", tmp_.Join("tree/link"));
  DS_ASSERT_OK_AND_ASSIGN(FileInfo link, env_->LinkStat(tmp_.Join("tree/link")));
  EXPECT_EQ(link.type, FileType::kSymlink);
  EXPECT_FALSE(link.is_dir);
  EXPECT_EQ(link.link_target, "../target");
  EXPECT_EQ(link.size, 9u);
  DS_ASSERT_OK_AND_ASSIGN(FileInfo target, env_->Stat(tmp_.Join("tree/link")));
  EXPECT_EQ(target.type, FileType::kDirectory);
}

TEST_F(PosixRemovalTest, RemoveAllRemovesLinksNotTheirTargets) {
  Symlink("../../target", tmp_.Join("tree/inner/dir-link"));
  Symlink(tmp_.Join("target/keep"), tmp_.Join("tree/file-link"));
  Symlink("nowhere", tmp_.Join("tree/dangling"));
  std::vector<uint64_t> sizes;
  DS_ASSERT_OK(env_->RemoveAll(tmp_.Join("tree"), [&](uint64_t b) { sizes.push_back(b); }));
  DS_ASSERT_OK_AND_ASSIGN(bool exists, env_->Exists(tmp_.Join("tree")));
  EXPECT_FALSE(exists);
  std::sort(sizes.begin(), sizes.end());  // the links' own sizes, and the one file
  EXPECT_THAT(sizes, ElementsAre(1, 7, 12, tmp_.Join("target/keep").size()));
  ExpectTargetUntouched();
}

TEST_F(PosixRemovalTest, RemoveAllOfALinkToADirectoryRemovesTheLink) {
  Symlink("target", tmp_.Join("link"));
  DS_ASSERT_OK(env_->RemoveAll(tmp_.Join("link")));
  EXPECT_THAT(env_->LinkStat(tmp_.Join("link")),
              StatusIs(StatusCode::kNotFound, HasSubstr("link")));
  ExpectTargetUntouched();
}

// Env's own walk (what FaultEnv and other wrappers run) keeps the same rules.
TEST_F(PosixRemovalTest, TheWalkThroughAWrapperRemovesLinksNotTheirTargets) {
  FaultEnv fault(env_);
  Symlink("../../target", tmp_.Join("tree/inner/dir-link"));
  DS_ASSERT_OK(fault.RemoveAll(tmp_.Join("tree")));
  DS_ASSERT_OK_AND_ASSIGN(bool exists, env_->Exists(tmp_.Join("tree")));
  EXPECT_FALSE(exists);
  ExpectTargetUntouched();
  // ... and the wrapper sees each step: a fault injected on one removal stops it there.
  DS_ASSERT_OK(env_->CreateDirs(tmp_.Join("tree2/inner")));
  DS_ASSERT_OK(env_->WriteFileSynced(tmp_.Join("tree2/inner/file"), "x"));
  fault.AddRule({kFaultRemove, "*/inner/file", 0, 1, FaultKind::kIOError});
  EXPECT_THAT(fault.RemoveAll(tmp_.Join("tree2")),
              StatusIs(StatusCode::kIOError, HasSubstr("inner/file")));
}

// A filesystem mounted inside the tree, seen through a fake: Env's walk stops there.
class MountedDirEnv : public EnvWrapper {
 public:
  MountedDirEnv(Env* target, std::string mount, bool bind)
      : EnvWrapper(target), mount_(std::move(mount)), bind_(bind) {}
  Result<FileInfo> LinkStat(const std::string& p) override {
    DS_ASSIGN_OR_RETURN(FileInfo info, target()->LinkStat(p));
    if (p == mount_ && bind_) info.mount_root = true;  // a bind mount: same device
    if (p == mount_ && !bind_) info.device += 1;       // another filesystem
    return info;
  }

 private:
  std::string mount_;
  bool bind_;
};

TEST(MountPointTest, RemovalStopsAtAnotherFilesystemOrABindMount) {
  for (bool bind : {false, true}) {
    MemEnv mem;
    DS_ASSERT_OK(mem.CreateDirs("/t/a/mnt/deep"));
    DS_ASSERT_OK(mem.WriteFileSynced("/t/a/mnt/deep/data", "theirs"));
    MountedDirEnv env(&mem, "/t/a/mnt", bind);
    EXPECT_THAT(env.RemoveAll("/t"),
                StatusIs(StatusCode::kFailedPrecondition,
                         HasSubstr("/t/a/mnt is a mount point (another filesystem): not removing "
                                   "what is under it; unmount it first")));
    EXPECT_THAT(env.RemoveAll("/t/a/mnt"),
                StatusIs(StatusCode::kFailedPrecondition, HasSubstr("/t/a/mnt is a mount point")));
    DS_ASSERT_OK_AND_ASSIGN(std::string data, mem.ReadFileToString("/t/a/mnt/deep/data"));
    EXPECT_EQ(data, "theirs");
  }
}

TEST(PathTest, JoinDirBase) {
  EXPECT_EQ(JoinPath("a", "b"), "a/b");
  EXPECT_EQ(JoinPath("a/", "b"), "a/b");
  EXPECT_EQ(JoinPath("a", "/b"), "/b");
  EXPECT_EQ(DirName("a/b/c"), "a/b");
  EXPECT_EQ(DirName("/c"), "/");
  EXPECT_EQ(DirName("c"), ".");
  EXPECT_EQ(DirName("a/b/"), "a");
  EXPECT_EQ(BaseName("a/b/c"), "c");
  EXPECT_EQ(BaseName("a/b/"), "b");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(12), "12 B");
}

}  // namespace
}  // namespace ds::io
