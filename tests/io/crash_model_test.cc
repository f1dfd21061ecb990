// The crash model: after SimulateCrash only what fsync and SyncDir made durable is left.
#include <string>

#include "io/fault_env.h"
#include "io/mem_env.h"
#include "testing/matchers.h"

namespace ds::io {
namespace {

using ::ds::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

std::span<const std::byte> Bytes(std::string_view s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

class CrashModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Result<std::string> d = env_.MakeTempDir("crash-");
    ASSERT_TRUE(d.ok());
    dir_ = *d;
  }
  std::string P(std::string_view n) { return JoinPath(dir_, n); }
  std::string Read(const std::string& path) {
    Result<std::string> r = env_.ReadFileToString(path);
    return r.ok() ? *r : "<" + r.status().ToString() + ">";
  }

  MemEnv env_;
  std::string dir_;
};

TEST_F(CrashModelTest, UnsyncedWriteIsGoneSyncedWriteStays) {
  DS_ASSERT_OK_AND_ASSIGN(auto f, env_.OpenFile(P("f"), {OpenMode::kTruncate}));
  DS_ASSERT_OK(f->WriteAt(0, Bytes("durable")));
  DS_ASSERT_OK(f->Sync());
  DS_ASSERT_OK(f->WriteAt(7, Bytes(" and lost")));
  DS_ASSERT_OK(env_.SyncDir(dir_));
  env_.SimulateCrash(CrashTail::kDrop, 1);
  EXPECT_EQ(Read(P("f")), "durable");
}

TEST_F(CrashModelTest, FileNeverInASyncedDirectoryVanishes) {
  DS_ASSERT_OK(env_.WriteFileSynced(P("f"), "synced data, unsynced name"));
  env_.SimulateCrash(CrashTail::kDrop, 1);
  EXPECT_THAT(env_.Stat(P("f")), StatusIs(StatusCode::kNotFound, HasSubstr("f")));
}

TEST_F(CrashModelTest, SyncedNameWithUnsyncedDataIsEmpty) {
  DS_ASSERT_OK_AND_ASSIGN(auto f, env_.OpenFile(P("f"), {OpenMode::kTruncate}));
  DS_ASSERT_OK(f->WriteAt(0, Bytes("never synced")));
  DS_ASSERT_OK(env_.SyncDir(dir_));
  env_.SimulateCrash(CrashTail::kDrop, 1);
  EXPECT_EQ(Read(P("f")), "");
}

TEST_F(CrashModelTest, RenameWithoutSyncDirIsUndone) {
  DS_ASSERT_OK(env_.WriteFileSynced(P("latest"), "old"));
  DS_ASSERT_OK(env_.SyncDir(dir_));
  DS_ASSERT_OK(env_.WriteFileSynced(P("latest.tmp"), "new"));
  DS_ASSERT_OK(env_.Rename(P("latest.tmp"), P("latest")));
  env_.SimulateCrash(CrashTail::kDrop, 1);
  EXPECT_EQ(Read(P("latest")), "old");
  DS_ASSERT_OK_AND_ASSIGN(auto names, env_.ListDir(dir_));
  EXPECT_THAT(names, ElementsAre("latest"));
}

TEST_F(CrashModelTest, RenameWithSyncDirIsKept) {
  DS_ASSERT_OK(env_.WriteFileSynced(P("latest"), "old"));
  DS_ASSERT_OK(env_.SyncDir(dir_));
  DS_ASSERT_OK(env_.ReplaceFileAtomically(P("latest"), "new"));
  env_.SimulateCrash(CrashTail::kDrop, 1);
  EXPECT_EQ(Read(P("latest")), "new");
}

TEST_F(CrashModelTest, DirectoryRenameIsDurableOnlyWithParentSync) {
  DS_ASSERT_OK(env_.CreateDir(P(".tmp-a")));
  DS_ASSERT_OK(env_.WriteFileSynced(P(".tmp-a/data"), "x"));
  DS_ASSERT_OK(env_.SyncDir(P(".tmp-a")));
  DS_ASSERT_OK(env_.SyncDir(dir_));
  DS_ASSERT_OK(env_.Rename(P(".tmp-a"), P("step-1")));
  env_.SimulateCrash(CrashTail::kDrop, 1);
  // The rename is undone but the synced temp dir and its file are intact.
  EXPECT_EQ(Read(P(".tmp-a/data")), "x");
  DS_ASSERT_OK(env_.Rename(P(".tmp-a"), P("step-1")));
  DS_ASSERT_OK(env_.SyncDir(dir_));
  env_.SimulateCrash(CrashTail::kDrop, 1);
  EXPECT_EQ(Read(P("step-1/data")), "x");
}

TEST_F(CrashModelTest, RemovalWithoutSyncDirIsUndone) {
  DS_ASSERT_OK(env_.WriteFileSynced(P("keep"), "k"));
  DS_ASSERT_OK(env_.SyncDir(dir_));
  DS_ASSERT_OK(env_.RemoveFile(P("keep")));
  env_.SimulateCrash(CrashTail::kDrop, 1);
  EXPECT_EQ(Read(P("keep")), "k");
}

TEST_F(CrashModelTest, KeepAndTearPolicies) {
  DS_ASSERT_OK_AND_ASSIGN(auto f, env_.OpenFile(P("f"), {OpenMode::kTruncate}));
  DS_ASSERT_OK(f->WriteAt(0, Bytes("0123")));
  DS_ASSERT_OK(f->Sync());
  DS_ASSERT_OK(env_.SyncDir(dir_));
  DS_ASSERT_OK(f->WriteAt(4, Bytes("456789")));
  env_.SimulateCrash(CrashTail::kKeep, 1);
  EXPECT_EQ(Read(P("f")), "0123456789");

  // Torn: the synced prefix always survives; what follows is a prefix of the unsynced bytes,
  // then garbage; over many seeds both a clean cut and garbage show up.
  bool saw_garbage = false, saw_short = false;
  for (uint64_t seed = 0; seed < 64; ++seed) {
    DS_ASSERT_OK_AND_ASSIGN(auto g, env_.OpenFile(P("g"), {OpenMode::kTruncate}));
    DS_ASSERT_OK(g->WriteAt(0, Bytes("0123")));
    DS_ASSERT_OK(g->Sync());
    DS_ASSERT_OK(env_.SyncDir(dir_));
    DS_ASSERT_OK(g->WriteAt(4, Bytes("456789")));
    env_.SimulateCrash(CrashTail::kTear, seed);
    std::string got = Read(P("g"));
    ASSERT_GE(got.size(), 4u);
    EXPECT_EQ(got.substr(0, 4), "0123") << "seed " << seed;
    size_t i = 4;
    while (i < got.size() && i < 10 && got[i] == "0123456789"[i]) ++i;
    if (i < got.size()) saw_garbage = true;
    if (got.size() < 10) saw_short = true;
  }
  EXPECT_TRUE(saw_garbage);
  EXPECT_TRUE(saw_short);
}

TEST_F(CrashModelTest, HandlesFromBeforeTheCrashAreDeadAndLocksReleased) {
  DS_ASSERT_OK_AND_ASSIGN(auto f, env_.OpenFile(P("f"), {OpenMode::kTruncate}));
  DS_ASSERT_OK_AND_ASSIGN(auto lock, env_.TryLockFile(P("lock")));
  DS_ASSERT_OK(env_.SyncDir(dir_));
  env_.SimulateCrash(CrashTail::kDrop, 1);
  EXPECT_THAT(f->WriteAt(0, Bytes("x")),
              StatusIs(StatusCode::kIOError, HasSubstr("before a simulated crash")));
  DS_ASSERT_OK_AND_ASSIGN(auto relock, env_.TryLockFile(P("lock")));
  lock.reset();  // the dead holder's release must not free the new holder's lock
  EXPECT_THAT(env_.TryLockFile(P("lock")), StatusIs(StatusCode::kUnavailable, HasSubstr("lock")));
}

TEST_F(CrashModelTest, CapacityGivesNoSpace) {
  env_.SetCapacity(env_.UsedBytes() + 10);
  DS_ASSERT_OK_AND_ASSIGN(auto f, env_.OpenFile(P("f"), {OpenMode::kTruncate}));
  DS_ASSERT_OK(f->WriteAt(0, Bytes("0123456789")));
  EXPECT_THAT(f->WriteAt(10, Bytes("x")), StatusIs(StatusCode::kNoSpace, HasSubstr("/f")));
}

// The crash points of a small protocol, enumerated: stop after each mutation in turn, crash,
// and check the invariant "latest is old or new, never missing or mixed".
TEST(CrashPointTest, EveryCrashPointOfAnAtomicReplaceKeepsOldOrNew) {
  uint64_t total = 0;
  {
    MemEnv mem;
    FaultEnv env(&mem);
    Result<std::string> dir = env.MakeTempDir("cp-");
    ASSERT_TRUE(dir.ok());
    DS_ASSERT_OK(env.ReplaceFileAtomically(JoinPath(*dir, "latest"), "old"));
    uint64_t before = env.mutation_count();
    DS_ASSERT_OK(env.ReplaceFileAtomically(JoinPath(*dir, "latest"), "new"));
    total = env.mutation_count() - before;
  }
  ASSERT_GE(total, 4u);  // open(create), write, fsync, rename, syncdir
  int saw_old = 0, saw_new = 0;
  for (uint64_t crash_at = 0; crash_at <= total; ++crash_at) {
    MemEnv mem;
    FaultEnv env(&mem);
    Result<std::string> dir = env.MakeTempDir("cp-");
    ASSERT_TRUE(dir.ok());
    std::string latest = JoinPath(*dir, "latest");
    DS_ASSERT_OK(env.ReplaceFileAtomically(latest, "old"));
    env.StopAfter(crash_at);
    Status s = env.ReplaceFileAtomically(latest, "new");
    EXPECT_EQ(s.ok(), crash_at == total) << "crash point " << crash_at << ": " << s.ToString();
    DS_ASSERT_OK(env.SimulateCrash(CrashTail::kTear, crash_at));
    Result<std::string> got = env.ReadFileToString(latest);
    ASSERT_TRUE(got.ok()) << "crash point " << crash_at << ": " << got.status().ToString();
    EXPECT_TRUE(*got == "old" || *got == "new") << "crash point " << crash_at << ": " << *got;
    (*got == "old" ? saw_old : saw_new)++;
  }
  EXPECT_GT(saw_old, 0);
  EXPECT_GT(saw_new, 0);
}

}  // namespace
}  // namespace ds::io
