// Housekeeping of a save directory: gc tells a live save from an abandoned one by its writer
// locks and age, removes leftovers and unreferenced files, and removes nothing on a dry run;
// prune, best and list go through the catalog lock and never touch what they must keep.
#include "ckpt/gc.h"

#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "ckpt/save_util.h"
#include "formats/manifest.h"
#include "io/mem_env.h"
#include "testing/matchers.h"

namespace ds::ckpt {
namespace {

using ::ds::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAreArray;

constexpr int64_t kSecond = 1'000'000;  // microseconds
constexpr int64_t kHour = 3600 * kSecond;

// A committed checkpoint with one shard file the manifest references.
void Commit(io::Env* env, const std::string& dir, int64_t step, const std::string& metrics,
            uint64_t shard_bytes = 1000) {
  const std::string path = io::JoinPath(dir, TagForStep(step));
  ASSERT_TRUE(env->CreateDirs(path).ok());
  fmt::Manifest m;
  m.info.tag = TagForStep(step);
  m.info.step = step;
  m.info.metrics_json = metrics;
  m.files.push_back({"rank-00000.dss", shard_bytes, 0});
  DS_ASSERT_OK(
      env->WriteFileSynced(io::JoinPath(path, "rank-00000.dss"), std::string(shard_bytes, 's')));
  DS_ASSERT_OK(fmt::WriteManifest(env, io::JoinPath(path, fmt::kManifestFileName), m));
}

// A temp dir as a save leaves it: a shard file and, unless `lock_files` is 0, that many writer
// lock files, none held (the writers are gone).
std::string MakeTempDir(io::Env* env, const std::string& dir, const std::string& name,
                        int lock_files = 1) {
  const std::string path = io::JoinPath(dir, name);
  EXPECT_TRUE(env->CreateDirs(path).ok());
  EXPECT_TRUE(env->WriteFileSynced(io::JoinPath(path, "rank-00000.dss"), "partial").ok());
  for (int r = 0; r < lock_files; ++r) {
    auto lock = env->TryLockFile(io::JoinPath(path, ".writer-" + std::to_string(r) + ".lock"));
    EXPECT_TRUE(lock.ok()) << lock.status().ToString();
  }
  return path;
}

// Every path under `dir`, for before/after comparisons.
std::vector<std::string> Tree(io::Env* env, const std::string& dir) {
  std::vector<std::string> out;
  std::function<void(const std::string&)> walk = [&](const std::string& d) {
    auto names = env->ListDir(d);
    for (const auto& n : names.ok() ? *names : std::vector<std::string>()) {
      const std::string p = io::JoinPath(d, n);
      out.push_back(p);
      if (env->Stat(p)->is_dir) walk(p);
    }
  };
  walk(dir);
  return out;
}

std::vector<std::string> Paths(const std::vector<GcItem>& items) {
  std::vector<std::string> out;
  for (const auto& i : items) out.push_back(i.path);
  return out;
}

class GcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Commit(&env_, "/s", 100, R"({"eval_loss": 2.0})");
    DS_ASSERT_OK(Catalog(&env_, "/s").SetLatest("step-00000100"));
  }
  // gc as if `later` microseconds had passed since the files were written.
  Result<GcReport> Gc(int64_t older_than, int64_t later, bool dry_run = false) {
    GcOptions o;
    o.older_than_micros = older_than;
    o.now_micros = env_.WallTimeMicros() + later;
    o.dry_run = dry_run;
    return CollectGarbage(&env_, "/s", o);
  }
  io::MemEnv env_;
};

// The env as seen `later` microseconds after the files were written.
class LaterEnv : public io::EnvWrapper {
 public:
  LaterEnv(io::Env* target, int64_t later) : io::EnvWrapper(target), later_(later) {}
  int64_t WallTimeMicros() override { return target()->WallTimeMicros() + later_; }

 private:
  int64_t later_;
};

// What a run does at its start: the saves killed runs left (no live lock, lock files past a
// few seconds) go; a live save, a save that is starting, trash and pointer temps stay.
TEST_F(GcTest, ARunReclaimsOnlyTheTempDirsOfDeadSavesAtItsStart) {
  const std::string dead = MakeTempDir(&env_, "/s", ".tmp-step-00000200-dead", 2);
  const std::string live = MakeTempDir(&env_, "/s", ".tmp-step-00000200-live", 0);
  DS_ASSERT_OK_AND_ASSIGN(auto held, env_.TryLockFile(io::JoinPath(live, ".writer-0.lock")));
  const std::string trash = MakeTempDir(&env_, "/s", ".trash-step-00000050-x", 0);
  DS_ASSERT_OK(env_.WriteFileSynced("/s/latest.tmp-0123", "step-00000100\n"));
  {
    // Seconds after the kill: a writer may still be between creating its lock file and
    // locking it, as far as anyone can tell: nothing goes yet.
    DS_ASSERT_OK_AND_ASSIGN(GcReport r, ReclaimAbandonedSaves(&env_, "/s"));
    EXPECT_TRUE(r.removed.empty());
  }
  LaterEnv later(&env_, 6 * kSecond);
  DS_ASSERT_OK_AND_ASSIGN(GcReport r, ReclaimAbandonedSaves(&later, "/s"));
  EXPECT_THAT(Paths(r.removed), ElementsAre(dead));
  EXPECT_FALSE(*env_.Exists(dead));
  EXPECT_TRUE(*env_.Exists(io::JoinPath(live, "rank-00000.dss")));
  EXPECT_TRUE(*env_.Exists(io::JoinPath(trash, "rank-00000.dss")));
  EXPECT_TRUE(*env_.Exists("/s/latest.tmp-0123"));
  EXPECT_TRUE(*env_.Exists("/s/step-00000100/rank-00000.dss"));
  // Not a save directory (yet): nothing to do, no error.
  DS_ASSERT_OK_AND_ASSIGN(GcReport none, ReclaimAbandonedSaves(&env_, "/nothing-here"));
  EXPECT_TRUE(none.removed.empty());
}

TEST_F(GcTest, ALiveSaveIsKeptHoweverOld) {
  const std::string tmp = MakeTempDir(&env_, "/s", ".tmp-step-00000200-live", 0);
  DS_ASSERT_OK_AND_ASSIGN(auto held, env_.TryLockFile(io::JoinPath(tmp, ".writer-0.lock")));
  DS_ASSERT_OK_AND_ASSIGN(GcReport r, Gc(0, 240 * kHour));
  EXPECT_TRUE(r.removed.empty());
  ASSERT_EQ(r.kept.size(), 1u);
  EXPECT_EQ(r.kept[0].path, tmp);
  EXPECT_THAT(r.kept[0].reason, HasSubstr("a live writer holds .writer-0.lock"));
  EXPECT_TRUE(*env_.Exists(io::JoinPath(tmp, "rank-00000.dss")));
}

TEST_F(GcTest, OneLiveRankKeepsTheWholeSave) {
  const std::string tmp = MakeTempDir(&env_, "/s", ".tmp-step-00000200-two", 1);
  DS_ASSERT_OK_AND_ASSIGN(auto held, env_.TryLockFile(io::JoinPath(tmp, ".writer-1.lock")));
  DS_ASSERT_OK_AND_ASSIGN(GcReport r, Gc(0, 2 * kHour));
  EXPECT_TRUE(r.removed.empty());
  EXPECT_THAT(r.kept[0].reason, HasSubstr(".writer-1.lock"));
}

TEST_F(GcTest, AnAbandonedSaveOlderThanTheThresholdIsRemoved) {
  const std::string tmp = MakeTempDir(&env_, "/s", ".tmp-step-00000200-dead");
  DS_ASSERT_OK_AND_ASSIGN(GcReport r, Gc(kHour, 2 * kHour));
  ASSERT_EQ(r.removed.size(), 1u);
  EXPECT_EQ(r.removed[0].kind, GcKind::kTempDir);
  EXPECT_THAT(r.removed[0].reason, HasSubstr("no live writer holds its lock files"));
  EXPECT_FALSE(*env_.Exists(tmp));
  EXPECT_TRUE(*env_.Exists("/s/step-00000100/manifest.h5"));
}

TEST_F(GcTest, ARecentAbandonedSaveIsKept) {
  const std::string tmp = MakeTempDir(&env_, "/s", ".tmp-step-00000200-dead");
  DS_ASSERT_OK_AND_ASSIGN(GcReport r, Gc(kHour, 10 * 60 * kSecond));
  EXPECT_TRUE(r.removed.empty());
  ASSERT_EQ(r.kept.size(), 1u);
  EXPECT_THAT(r.kept[0].reason, HasSubstr("younger than 60 min"));
  EXPECT_TRUE(*env_.Exists(tmp));
}

// A writer creates its temp dir, then its lock file, then locks it: even --older-than 0s keeps
// a temp dir whose lock files are fresh, or that has none yet, for a grace period.
TEST_F(GcTest, AFreshLockFileMayNotBeTakenYet) {
  const std::string tmp = MakeTempDir(&env_, "/s", ".tmp-step-00000200-new");
  DS_ASSERT_OK_AND_ASSIGN(GcReport soon, Gc(0, 5 * kSecond));
  EXPECT_TRUE(soon.removed.empty());
  ASSERT_EQ(soon.kept.size(), 1u);
  EXPECT_THAT(soon.kept[0].reason, HasSubstr("a save may be starting: its newest lock file is"));
  DS_ASSERT_OK_AND_ASSIGN(GcReport later, Gc(0, kStartingSaveGraceMicros));
  EXPECT_THAT(Paths(later.removed), ElementsAre(tmp));
}

TEST_F(GcTest, ATempDirWithoutLockFilesMayBeStarting) {
  const std::string tmp = MakeTempDir(&env_, "/s", ".tmp-step-00000200-new", 0);
  DS_ASSERT_OK_AND_ASSIGN(GcReport soon, Gc(0, 5 * kSecond));
  EXPECT_TRUE(soon.removed.empty());
  ASSERT_EQ(soon.kept.size(), 1u);
  EXPECT_THAT(soon.kept[0].reason, HasSubstr("a save may be starting"));
  DS_ASSERT_OK_AND_ASSIGN(GcReport later, Gc(0, kStartingSaveGraceMicros + kSecond));
  EXPECT_THAT(Paths(later.removed), ElementsAre(tmp));
  EXPECT_THAT(later.removed[0].reason, HasSubstr("no writer lock files"));
}

TEST_F(GcTest, TrashIsAlwaysRemoved) {
  const std::string trash = MakeTempDir(&env_, "/s", ".trash-step-00000050-abc", 0);
  DS_ASSERT_OK_AND_ASSIGN(GcReport r, Gc(kHour, 0));
  EXPECT_THAT(Paths(r.removed), ElementsAre(trash));
  EXPECT_EQ(r.removed[0].kind, GcKind::kTrashDir);
  EXPECT_FALSE(*env_.Exists(trash));
}

TEST_F(GcTest, UnreferencedFilesOfACheckpointGoReferencedOnesStay) {
  const std::string ck = "/s/step-00000100";
  DS_ASSERT_OK(env_.WriteFileSynced(ck + "/rank-00001.dss", "stray shard"));
  DS_ASSERT_OK(env_.WriteFileSynced(ck + "/.writer-0.lock", ""));
  DS_ASSERT_OK(env_.CreateDirs(ck + "/junk"));
  DS_ASSERT_OK(env_.WriteFileSynced(ck + "/junk/x", "xx"));
  // A checkpoint whose manifest cannot be read is reported and left alone.
  DS_ASSERT_OK(env_.CreateDirs("/s/step-00000200"));
  DS_ASSERT_OK(env_.WriteFileSynced("/s/step-00000200/manifest.h5", "not hdf5"));
  DS_ASSERT_OK(env_.WriteFileSynced("/s/step-00000200/rank-00001.dss", "kept"));
  DS_ASSERT_OK_AND_ASSIGN(GcReport r, Gc(kHour, 0));
  EXPECT_THAT(Paths(r.removed), UnorderedElementsAreArray(std::vector<std::string>{
                                    ck + "/.writer-0.lock", ck + "/junk", ck + "/rank-00001.dss"}));
  for (const auto& i : r.removed) EXPECT_EQ(i.kind, GcKind::kUnreferenced);
  EXPECT_EQ(r.freed_bytes, 11u + 2u);
  EXPECT_THAT(Tree(&env_, ck), ElementsAre(ck + "/manifest.h5", ck + "/rank-00000.dss"));
  ASSERT_EQ(r.unreadable.size(), 1u);
  EXPECT_EQ(r.unreadable[0].path, "/s/step-00000200");
  EXPECT_THAT(r.unreadable[0].reason, HasSubstr("gc leaves it alone"));
  EXPECT_TRUE(*env_.Exists("/s/step-00000200/rank-00001.dss"));
}

TEST_F(GcTest, StalePointerTempFilesGoPointersStay) {
  DS_ASSERT_OK(env_.WriteFileSynced("/s/latest.tmp-00000000000000aa", "step-00000100\n"));
  DS_ASSERT_OK(env_.WriteFileSynced("/s/best.tmp-00000000000000bb", "{}"));
  DS_ASSERT_OK(Catalog(&env_, "/s").SetBest({"step-00000100", "eval_loss", 2.0, "min"}));
  DS_ASSERT_OK_AND_ASSIGN(GcReport recent, Gc(kHour, 60 * kSecond, /*dry_run=*/true));
  EXPECT_TRUE(recent.removed.empty());
  EXPECT_EQ(recent.kept.size(), 2u);
  DS_ASSERT_OK_AND_ASSIGN(GcReport r, Gc(kHour, 2 * kHour));
  EXPECT_THAT(Paths(r.removed),
              ElementsAre("/s/best.tmp-00000000000000bb", "/s/latest.tmp-00000000000000aa"));
  EXPECT_EQ(r.removed[0].kind, GcKind::kPointerTemp);
  EXPECT_EQ(**Catalog(&env_, "/s").ReadLatest(), "step-00000100");
  EXPECT_EQ((*Catalog(&env_, "/s").ReadBest())->tag, "step-00000100");
}

TEST_F(GcTest, ADryRunRemovesNothingAndSaysWhatARealRunRemoves) {
  MakeTempDir(&env_, "/s", ".tmp-step-00000200-dead");
  MakeTempDir(&env_, "/s", ".trash-step-00000050-abc", 0);
  DS_ASSERT_OK(env_.WriteFileSynced("/s/step-00000100/extra", "e"));
  DS_ASSERT_OK(env_.WriteFileSynced("/s/latest.tmp-00000000000000aa", "x"));
  DS_ASSERT_OK(Catalog(&env_, "/s").Lock(0).status());  // the lock file is gc's to create
  const std::vector<std::string> before = Tree(&env_, "/s");
  DS_ASSERT_OK_AND_ASSIGN(GcReport dry, Gc(kHour, 2 * kHour, /*dry_run=*/true));
  EXPECT_EQ(dry.removed.size(), 4u);
  EXPECT_EQ(Tree(&env_, "/s"), before);
  DS_ASSERT_OK_AND_ASSIGN(GcReport real, Gc(kHour, 2 * kHour));
  EXPECT_EQ(Paths(real.removed), Paths(dry.removed));
  EXPECT_EQ(real.freed_bytes, dry.freed_bytes);
  EXPECT_NE(Tree(&env_, "/s"), before);
}

TEST_F(GcTest, RemovalsReportTheirBytes) {
  MakeTempDir(&env_, "/s", ".tmp-step-00000200-dead");
  MakeTempDir(&env_, "/s", ".trash-step-00000050-abc", 0);
  GcOptions o;
  o.older_than_micros = 0;
  o.now_micros = env_.WallTimeMicros() + 2 * kHour;
  uint64_t total = 0, removed = 0;
  o.progress = {[&](uint64_t t) { total = t; }, [&](uint64_t b) { removed += b; }};
  DS_ASSERT_OK_AND_ASSIGN(GcReport r, CollectGarbage(&env_, "/s", o));
  EXPECT_EQ(r.freed_bytes, 2 * std::string("partial").size());
  EXPECT_EQ(total, r.freed_bytes);
  EXPECT_EQ(removed, r.freed_bytes);
}

TEST_F(GcTest, ABusySaveDirectoryIsUnavailableWithinTheWait) {
  Catalog cat(&env_, "/s");
  DS_ASSERT_OK_AND_ASSIGN(auto held, cat.Lock(0));
  const uint64_t start = env_.NowMicros();
  GcOptions g;
  g.lock_wait_micros = 200'000;
  EXPECT_THAT(CollectGarbage(&env_, "/s", g),
              StatusIs(StatusCode::kUnavailable,
                       HasSubstr("/s is busy: another save, prune or gc has held its catalog "
                                 "lock (/s/.catalog.lock)")));
  RetentionPolicy p;
  p.keep_last = 1;
  EXPECT_THAT(Prune(&env_, "/s", p, {false, 200'000, {}}),
              StatusIs(StatusCode::kUnavailable, HasSubstr("try again later")));
  EXPECT_THAT(SetBestByHand(&env_, "/s", "step-00000100", "eval_loss", "min", 200'000),
              StatusIs(StatusCode::kUnavailable, HasSubstr("is busy")));
  EXPECT_LT(env_.NowMicros() - start, 5u * kSecond);
}

TEST_F(GcTest, OnlySaveDirectoriesAreAccepted) {
  DS_ASSERT_OK(env_.CreateDirs("/empty"));
  EXPECT_THAT(CollectGarbage(&env_, "/empty", {}),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("/empty is not a save directory")));
  EXPECT_THAT(CollectGarbage(&env_, "/nope", {}),
              StatusIs(StatusCode::kNotFound, HasSubstr("/nope does not exist")));
  EXPECT_THAT(ListSaveDir(&env_, "/s/step-00000100"),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("is a checkpoint, not a save "
                                                               "directory: use its parent, /s")));
  DS_ASSERT_OK(env_.CreateDirs("/torn"));
  MakeTempDir(&env_, "/torn", ".tmp-step-00000001-x");
  DS_EXPECT_OK(CheckSaveDir(&env_, "/torn"));  // only a torn save: still a save directory
  EXPECT_FALSE(*env_.Exists("/empty/.catalog.lock"));
}

// Makes `victim` vanish just before gc, list or prune first looks at it (after the listing that
// found it), as a live writer renaming its latest.tmp-* over `latest`, or a failed save removing
// its temp dir, would. With `looks_before` > 0 it survives that many looks first: planned for
// removal, then gone before the removal.
class VanishingEnv : public io::EnvWrapper {
 public:
  VanishingEnv(io::Env* target, std::string victim, int looks_before = 0)
      : EnvWrapper(target), victim_(std::move(victim)), looks_before_(looks_before) {}
  Result<io::FileInfo> Stat(const std::string& p) override {
    Look(p);
    return target()->Stat(p);
  }
  Result<io::FileInfo> LinkStat(const std::string& p) override {
    Look(p);
    return target()->LinkStat(p);
  }
  Result<std::vector<std::string>> ListDir(const std::string& d) override {
    Look(d);
    return target()->ListDir(d);
  }
  bool vanished() const { return vanished_; }

 private:
  void Look(const std::string& p) {
    if (vanished_ || (p != victim_ && p.rfind(victim_ + "/", 0) != 0)) return;
    if (looks_before_-- > 0) return;
    vanished_ = target()->RemoveAll(victim_).ok();
  }
  std::string victim_;
  int looks_before_;
  bool vanished_ = false;
};

// A save directory with one of everything gc, list and prune look at.
void Populate(io::Env* env) {
  Commit(env, "/s", 50, "{}");
  Commit(env, "/s", 100, "{}");
  DS_ASSERT_OK(Catalog(env, "/s").SetLatest("step-00000100"));
  MakeTempDir(env, "/s", ".tmp-step-00000200-dead");
  MakeTempDir(env, "/s", ".trash-step-00000010-abc", 0);
  DS_ASSERT_OK(env->CreateDirs("/s/step-00000100/junk"));
  DS_ASSERT_OK(env->WriteFileSynced("/s/step-00000100/junk/x", "xx"));
  DS_ASSERT_OK(env->WriteFileSynced("/s/latest.tmp-00000000000000aa", "step-00000100\n"));
}

class VanishingEntryTest : public ::testing::TestWithParam<int> {};

// The race seen once in 742 cron runs beside a live writer: an entry gc listed is gone when it
// looks at it, or when it removes it. Gone is what gc wanted; it carries on.
TEST_P(VanishingEntryTest, GcListAndPruneTakeAVanishedEntryAsGone) {
  const int looks = GetParam();
  for (const std::string victim :
       {"/s/latest.tmp-00000000000000aa", "/s/.tmp-step-00000200-dead",
        "/s/.tmp-step-00000200-dead/rank-00000.dss", "/s/.trash-step-00000010-abc",
        "/s/step-00000100/junk", "/s/step-00000100/junk/x"}) {
    SCOPED_TRACE(victim + ", vanishing after " + std::to_string(looks) + " looks");
    const int64_t later = io::Env::Default()->WallTimeMicros() + 2 * kHour;
    {
      io::MemEnv mem;
      Populate(&mem);
      VanishingEnv env(&mem, victim, looks);
      DS_ASSERT_OK(ListSaveDir(&env, "/s", later).status());
    }
    {
      io::MemEnv mem;
      Populate(&mem);
      VanishingEnv env(&mem, victim, looks);
      GcOptions o;
      o.older_than_micros = kHour;
      o.now_micros = later;
      DS_ASSERT_OK(CollectGarbage(&env, "/s", o).status());
      EXPECT_TRUE(env.vanished());
      // What it removed and what vanished are both gone; the checkpoints stay.
      EXPECT_THAT(Tree(&mem, "/s"),
                  ElementsAre("/s/.catalog.lock", "/s/latest", "/s/step-00000050",
                              "/s/step-00000050/manifest.h5", "/s/step-00000050/rank-00000.dss",
                              "/s/step-00000100", "/s/step-00000100/manifest.h5",
                              "/s/step-00000100/rank-00000.dss"));
    }
  }
  // Prune: a checkpoint gone while retention looks at it (removed by another prune).
  {
    SCOPED_TRACE("/s/step-00000050, vanishing after " + std::to_string(looks) + " looks");
    io::MemEnv mem;
    Populate(&mem);
    VanishingEnv env(&mem, "/s/step-00000050", looks);
    RetentionPolicy p;
    p.keep_last = 1;
    DS_ASSERT_OK(Prune(&env, "/s", p, {}).status());
    EXPECT_TRUE(env.vanished());
    EXPECT_FALSE(*mem.Exists("/s/step-00000050"));
    EXPECT_TRUE(*mem.Exists("/s/step-00000100/manifest.h5"));
  }
}

// 0: gone when first looked at after the listing; 1: looked at (planned), then gone before the
// removal.
INSTANTIATE_TEST_SUITE_P(Looks, VanishingEntryTest, ::testing::Values(0, 1));

// The real filesystem: --older-than 0s removes what no writer holds once its lock files are
// past the starting grace.
TEST(GcRealEnvTest, ZeroThresholdKeepsWhatAWriterHolds) {
  io::Env* env = io::Env::Default();
  testing::TempDir tmp;
  const std::string dir = tmp.Join("ckpts");
  Commit(env, dir, 5, "{}");
  const std::string live = MakeTempDir(env, dir, ".tmp-step-00000006-live", 0);
  DS_ASSERT_OK_AND_ASSIGN(auto held, env->TryLockFile(io::JoinPath(live, ".writer-0.lock")));
  const std::string dead = MakeTempDir(env, dir, ".tmp-step-00000006-dead", 2);
  GcOptions o;
  o.older_than_micros = 0;
  DS_ASSERT_OK_AND_ASSIGN(GcReport young, CollectGarbage(env, dir, o));
  EXPECT_TRUE(young.removed.empty());  // writers may still be taking their fresh lock files
  EXPECT_THAT(young.kept[0].reason, HasSubstr("a save may be starting"));
  o.now_micros = env->WallTimeMicros() + kStartingSaveGraceMicros;
  DS_ASSERT_OK_AND_ASSIGN(GcReport r, CollectGarbage(env, dir, o));
  EXPECT_THAT(Paths(r.removed), ElementsAre(dead));
  EXPECT_THAT(Paths(r.kept), ElementsAre(live));
  EXPECT_FALSE(*env->Exists(dead));
  EXPECT_TRUE(*env->Exists(io::JoinPath(live, "rank-00000.dss")));
  held.reset();
  DS_ASSERT_OK_AND_ASSIGN(GcReport after, CollectGarbage(env, dir, o));
  EXPECT_THAT(Paths(after.removed), ElementsAre(live));
}

// A real writer holds its lock from Begin on: a save whose data is still being written is live
// however old it looks.
TEST(GcBesideAWriterTest, ASaveBeingWrittenIsLive) {
  io::MemEnv mem;
  DS_ASSERT_OK_AND_ASSIGN(auto writer, CheckpointWriter::Create(&mem, TestWriterOptions("/s")));
  SaveRequest req;
  req.step = 300;
  DS_ASSERT_OK(writer->Begin(req));
  testing::TestTensor t = testing::MakeTensor("master/w", fmt::DType::kF32, {64, 48}, 1);
  SaveSlice slice{t.name, t.dtype, t.shape, {}, {}, 0, 64 * 48, {}};
  slice.source.host = t.data;
  DS_ASSERT_OK(writer->AddSlice(std::move(slice)));
  DS_ASSERT_OK(writer->Snapshot().status());
  GcOptions o;
  o.older_than_micros = 0;
  o.now_micros = mem.WallTimeMicros() + 2 * kStartingSaveGraceMicros;
  DS_ASSERT_OK_AND_ASSIGN(GcReport r, CollectGarbage(&mem, "/s", o));
  EXPECT_TRUE(r.removed.empty());
  ASSERT_EQ(r.kept.size(), 1u);
  EXPECT_THAT(r.kept[0].reason, HasSubstr("a live writer holds .writer-0.lock"));
  DS_ASSERT_OK(writer->Commit()->Wait());
  DS_ASSERT_OK_AND_ASSIGN(GcReport after, CollectGarbage(&mem, "/s", o));
  EXPECT_TRUE(after.removed.empty() && after.kept.empty());
  EXPECT_EQ(*Catalog(&mem, "/s").Resolve("latest"), "/s/step-00000300");
}

// Holds every attempt to take the catalog lock until Open(): freezes a save at step 4 of the
// commit protocol, its record published, waiting to commit.
class CommitGateEnv : public io::EnvWrapper {
 public:
  using EnvWrapper::EnvWrapper;
  Result<std::unique_ptr<io::FileLock>> TryLockFile(const std::string& path) override {
    if (io::BaseName(path) == kCatalogLockFile) {
      std::unique_lock<std::mutex> lock(mu_);
      waiting_ = true;
      cv_.notify_all();
      cv_.wait(lock, [this] { return open_; });
    }
    return target()->TryLockFile(path);
  }
  void AwaitASaveAtTheGate() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return waiting_; });
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool waiting_ = false, open_ = false;
};

// Between publishing its record (step 2) and taking the catalog lock (step 4), a save has written
// all it will write to its shard files and may wait a long time (for the other ranks, or for a
// prune that holds the lock): it is live all along, however old, and gc must see that.
// DISABLED until ckpt/commit.cc keeps rank 0's writer lock until the temp directory is renamed
// or removed (today PublishRecord drops it at step 2, and gc removes the save here).
TEST(GcBesideAWriterTest, ASaveWaitingToCommitIsLive) {
  io::MemEnv mem;
  CommitGateEnv gate(&mem);
  InProcessStore store;
  SaveOutcome out;
  std::thread saver([&] {
    out = SaveAll(&gate, LoopState(200), {1, 0, 1}, 200, TestWriterOptions("/s"), &store);
  });
  gate.AwaitASaveAtTheGate();
  GcOptions o;
  o.older_than_micros = 0;
  o.now_micros = mem.WallTimeMicros() + 2 * kStartingSaveGraceMicros;
  Result<GcReport> r = CollectGarbage(&mem, "/s", o);
  gate.Open();
  saver.join();
  DS_ASSERT_OK(r);
  EXPECT_TRUE(r->removed.empty()) << r->removed[0].path << ": " << r->removed[0].reason;
  ASSERT_EQ(r->kept.size(), 1u);
  EXPECT_THAT(r->kept[0].reason, HasSubstr("a live writer holds .writer-0.lock"));
  DS_EXPECT_OK(out.status[0]);
}

// ---- prune, best, list

class HousekeepingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const double losses[] = {3.0, 1.0, 2.5, 1.5, 2.0, 2.2};  // steps 100..600
    for (int i = 0; i < 6; ++i) {
      Commit(&env_, "/s", 100 * (i + 1), "{\"eval_loss\": " + std::to_string(losses[i]) + "}");
    }
    DS_ASSERT_OK(cat_.SetLatest("step-00000600"));
  }
  std::vector<std::string> Tags() {
    Result<std::vector<CheckpointEntry>> all = cat_.List();
    EXPECT_TRUE(all.ok()) << all.status().ToString();
    std::vector<std::string> out;
    for (const auto& e : all.ok() ? *all : std::vector<CheckpointEntry>()) out.push_back(e.tag);
    return out;
  }
  io::MemEnv env_;
  Catalog cat_{&env_, "/s"};
};

TEST_F(HousekeepingTest, PruneKeepsLatestBestAndThePolicy) {
  DS_ASSERT_OK(cat_.SetBest({"step-00000100", "eval_loss", 3.0, "min"}));
  RetentionPolicy p;
  p.keep_last = 1;
  p.keep_every = 300;
  uint64_t total = 0, removed = 0;
  PruneOptions o{false,
                 kDefaultLockWaitMicros,
                 {[&](uint64_t t) { total = t; }, [&](uint64_t b) { removed += b; }}};
  DS_ASSERT_OK_AND_ASSIGN(RetentionResult r, Prune(&env_, "/s", p, o));
  EXPECT_EQ(r.removed.size(), 3u);
  EXPECT_THAT(Tags(), ElementsAre("step-00000100", "step-00000300", "step-00000600"));
  EXPECT_GT(r.freed_bytes, 3u * 1000);  // shard files and manifests
  EXPECT_EQ(total, r.freed_bytes);
  EXPECT_EQ(removed, r.freed_bytes);
}

TEST_F(HousekeepingTest, PruneBestKTakesTheMetricFromTheBestPointer) {
  RetentionPolicy p;
  p.keep_best = 2;
  EXPECT_THAT(Prune(&env_, "/s", p, {}),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("no 'best' pointer")));
  DS_ASSERT_OK(cat_.SetBest({"step-00000200", "eval_loss", 1.0, "min"}));
  DS_ASSERT_OK_AND_ASSIGN(RetentionResult r, Prune(&env_, "/s", p, {true, 0, {}}));
  EXPECT_EQ(r.kept.size(), 3u);  // 200 and 400 by eval_loss, 600 as latest
  EXPECT_EQ(Tags().size(), 6u);  // a dry run
  EXPECT_THAT(Prune(&env_, "/s", RetentionPolicy(), {}),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("no retention policy")));
}

TEST_F(HousekeepingTest, BestIsSetFromTheCheckpointsOwnMetric) {
  DS_ASSERT_OK_AND_ASSIGN(BestPointer b,
                          SetBestByHand(&env_, "/s", "step-00000400", "eval_loss", "min"));
  EXPECT_EQ(b.value, 1.5);
  EXPECT_EQ((*cat_.ReadBest())->tag, "step-00000400");
  EXPECT_THAT(SetBestByHand(&env_, "/s", "step-00000400", "accuracy", "max"),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("checkpoint step-00000400 has no numeric metric 'accuracy'")));
  MakeTempDir(&env_, "/s", ".tmp-step-00000700-x");
  EXPECT_THAT(SetBestByHand(&env_, "/s", ".tmp-step-00000700-x", "eval_loss", "min"),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("cannot be a checkpoint tag")));
  EXPECT_THAT(SetBestByHand(&env_, "/s", "step-00000700", "eval_loss", "min"),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("'step-00000700' is not a committed checkpoint of /s")));
  EXPECT_THAT(SetBestByHand(&env_, "/s", "step-00000400", "eval_loss", "up"),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("min or max")));
  EXPECT_EQ((*cat_.ReadBest())->tag, "step-00000400");
}

// A pointer holds a tag: one of 50 MiB is not echoed (nor read whole), one holding a NUL byte is
// quoted escaped, and list still shows the rest.
TEST_F(HousekeepingTest, PointersThatAreNotPointersAreQuotedNotEchoed) {
  DS_ASSERT_OK(env_.WriteFileSynced("/s/latest", std::string(50 << 20, 'a')));
  EXPECT_THAT(cat_.ReadLatest(),
              StatusIs(StatusCode::kCorruption,
                       AllOf(HasSubstr("/s/latest is 50.0 MiB: not a pointer"),
                             HasSubstr("'dsckpt list /s' shows the checkpoints"))));
  DS_ASSERT_OK_AND_ASSIGN(SaveDirListing l, ListSaveDir(&env_, "/s"));
  EXPECT_EQ(l.latest, "");
  EXPECT_THAT(l.latest_problem, HasSubstr("is 50.0 MiB: not a pointer"));
  EXPECT_EQ(l.checkpoints.size(), 6u);
  DS_ASSERT_OK(env_.WriteFileSynced("/s/latest", std::string("step-\0\x01\n", 8)));
  DS_ASSERT_OK_AND_ASSIGN(l, ListSaveDir(&env_, "/s"));
  EXPECT_EQ(l.latest_problem,
            "latest: 'step-\\x00\\x01' cannot be a checkpoint tag: use a plain name (no '/', "
            "not starting with '.', at most 200 bytes)");
  std::string escaped;
  for (int i = 0; i < 64; ++i) escaped += "\\xff";
  EXPECT_THAT(ValidateTag(std::string(300, '\xff')),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("'" + escaped + "'... (300 bytes) cannot be a checkpoint tag")));
  DS_ASSERT_OK(env_.WriteFileSynced("/s/best", std::string(5000, '{')));
  EXPECT_THAT(cat_.ReadBest(), StatusIs(StatusCode::kCorruption,
                                        AllOf(HasSubstr("/s/best is 4.9 KiB: not a pointer"),
                                              HasSubstr("dsckpt best /s --set TAG"))));
}

TEST_F(HousekeepingTest, ListShowsCheckpointsSavesInProgressAndLeftovers) {
  const std::string live = MakeTempDir(&env_, "/s", ".tmp-step-00000700-live", 0);
  DS_ASSERT_OK_AND_ASSIGN(auto held, env_.TryLockFile(io::JoinPath(live, ".writer-0.lock")));
  MakeTempDir(&env_, "/s", ".tmp-step-00000700-torn");
  MakeTempDir(&env_, "/s", ".trash-step-00000050-x", 0);
  DS_ASSERT_OK(env_.WriteFileSynced("/s/best", "garbage"));
  DS_ASSERT_OK_AND_ASSIGN(SaveDirListing fresh, ListSaveDir(&env_, "/s"));
  ASSERT_EQ(fresh.temp_dirs.size(), 2u);
  EXPECT_FALSE(fresh.temp_dirs[0].live());  // lock files this fresh are not tested
  EXPECT_TRUE(fresh.temp_dirs[0].starting(env_.WallTimeMicros()));
  const int64_t later = env_.WallTimeMicros() + kStartingSaveGraceMicros;
  DS_ASSERT_OK_AND_ASSIGN(SaveDirListing l, ListSaveDir(&env_, "/s", later));
  EXPECT_EQ(l.checkpoints.size(), 6u);
  EXPECT_EQ(l.latest, "step-00000600");
  EXPECT_FALSE(l.best.has_value());
  EXPECT_THAT(l.best_problem, HasSubstr("not a best-checkpoint pointer"));
  ASSERT_EQ(l.temp_dirs.size(), 2u);
  EXPECT_TRUE(l.temp_dirs[0].live());
  EXPECT_EQ(l.temp_dirs[0].held_lock, ".writer-0.lock");
  EXPECT_FALSE(l.temp_dirs[1].live());
  EXPECT_FALSE(l.temp_dirs[1].starting(later));
  EXPECT_EQ(l.temp_dirs[1].lock_files, 1);
  ASSERT_EQ(l.trash_dirs.size(), 1u);
  EXPECT_EQ(l.trash_dirs[0].bytes, 7u);
}

}  // namespace
}  // namespace ds::ckpt
