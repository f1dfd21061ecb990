// Crash consistency, enumerated: count the mutations (writes, syncs, renames, ...) of a save,
// then for every k stop the filesystem after k of them, simulate a power cut (unsynced bytes
// torn, unsynced directory entries undone), and check what a restarted job finds: `latest`
// resolves to a checkpoint that verifies and loads bit-exactly (the new one or the one
// before), every committed checkpoint verifies, and at most one temp dir is left.
#include "ckpt/catalog.h"
#include "ckpt/save_util.h"
#include "ckpt/verify.h"
#include "io/fault_env.h"
#include "io/mem_env.h"
#include "testing/matchers.h"

namespace ds::ckpt {
namespace {

const std::string kDir = "/data/ckpts";

std::vector<testing::TestTensor> Version(uint64_t seed) {
  return {testing::MakeTensor("master/w", fmt::DType::kF32, {40, 30}, seed),
          testing::MakeTensor("model/w", fmt::DType::kBF16, {40, 30}, seed + 1),
          testing::MakeTensor("count", fmt::DType::kI64, {3}, seed + 2)};
}

WriterOptions CrashOptions() {
  WriterOptions o = TestWriterOptions(kDir);
  o.retention.keep_last = 1;  // retention's deletions are crash points too
  return o;
}

// Mutations of the second save (the first one commits normally).
uint64_t CountMutations(const Layout& l) {
  io::MemEnv mem;
  io::FaultEnv env(&mem);
  InProcessStore store;
  SaveAll(&env, Version(1), l, 1, CrashOptions(), &store);
  const uint64_t before = env.mutation_count();
  SaveAll(&env, Version(100), l, 2, CrashOptions(), &store);
  return env.mutation_count() - before;
}

struct Tally {
  int old_latest = 0, new_latest = 0;
};

void CrashAt(const Layout& l, uint64_t k, io::CrashTail tail, Tally* tally) {
  SCOPED_TRACE("world " + std::to_string(l.world) + ", crash after mutation " +
               std::to_string(k) + ", tail policy " + std::to_string(static_cast<int>(tail)));
  io::MemEnv mem;
  io::FaultEnv env(&mem);
  InProcessStore store;
  const auto v1 = Version(1), v2 = Version(100);
  SaveOutcome first = SaveAll(&env, v1, l, 1, CrashOptions(), &store);
  ASSERT_TRUE(first.status[0].ok()) << first.status[0].ToString();
  env.StopAfter(k);
  SaveAll(&env, v2, l, 2, CrashOptions(), &store);  // fails unless k covers it all
  DS_ASSERT_OK(env.SimulateCrash(tail, k * 7919 + 1));

  Catalog cat(&env, kDir);
  DS_ASSERT_OK_AND_ASSIGN(std::string latest, cat.Resolve("latest"));
  DS_ASSERT_OK_AND_ASSIGN(VerifyReport v, VerifyCheckpoint(&env, latest));
  ASSERT_TRUE(v.healthy) << latest << ": " << (v.problems.empty() ? "" : v.problems[0]);
  const bool is_new = io::BaseName(latest) == "step-00000002";
  DS_ASSERT_OK(LoadAndCompare(&env, latest, is_new ? v2 : v1, {1, 0, 1}));
  (is_new ? tally->new_latest : tally->old_latest)++;
  DS_ASSERT_OK_AND_ASSIGN(auto committed, cat.List());
  for (const CheckpointEntry& e : committed) {
    DS_ASSERT_OK_AND_ASSIGN(VerifyReport ve, VerifyCheckpoint(&env, e.path));
    EXPECT_TRUE(ve.healthy) << e.tag << " is committed but damaged";
  }
  DS_ASSERT_OK_AND_ASSIGN(auto names, env.ListDir(kDir));
  int temps = 0;
  for (const auto& n : names) temps += n.rfind(".tmp-", 0) == 0;
  EXPECT_LE(temps, 1);
}

TEST(CrashTest, EveryCrashPointOfASingleRankSave) {
  const Layout l{1, 0, 1};
  const uint64_t total = CountMutations(l);
  ASSERT_GT(total, 10u);
  Tally tally;
  for (uint64_t k = 0; k <= total; ++k) {
    for (io::CrashTail tail : {io::CrashTail::kDrop, io::CrashTail::kTear}) {
      CrashAt(l, k, tail, &tally);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
  std::printf("single rank: %llu crash points x 2 tail policies: latest old %d, new %d\n",
              static_cast<unsigned long long>(total + 1), tally.old_latest, tally.new_latest);
  EXPECT_GT(tally.old_latest, 0);
  EXPECT_GT(tally.new_latest, 0);
}

TEST(CrashTest, CrashPointsOfATwoRankSave) {
  // Two ranks interleave, so "after k mutations" is a different instant from run to run; every
  // one is still a real crash point. All of them, with torn tails.
  const Layout l{2, 1, 1};
  const uint64_t total = CountMutations(l);
  Tally tally;
  for (uint64_t k = 0; k <= total + 2; ++k) {
    CrashAt(l, k, io::CrashTail::kTear, &tally);
    if (::testing::Test::HasFatalFailure()) return;
  }
  std::printf("two ranks: about %llu crash points: latest old %d, new %d\n",
              static_cast<unsigned long long>(total + 1), tally.old_latest, tally.new_latest);
  EXPECT_GT(tally.old_latest, 0);
  EXPECT_GT(tally.new_latest, 0);
}

}  // namespace
}  // namespace ds::ckpt
