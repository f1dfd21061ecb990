// A save directory whose middle checkpoint holds a crafted format-1 manifest.h5 that crashes
// (or hangs) libhdf5: every tool reports that checkpoint as unreadable and carries on with the
// others. All in this process, so a crash of libhdf5 that reached us would fail the binary.
#include <chrono>
#include <cstdlib>

#include "ckpt/catalog.h"
#include "ckpt/gc.h"
#include "ckpt/reader.h"
#include "ckpt/verify.h"
#include "formats/sample_manifest.h"
#include "io/mem_env.h"
#include "testing/checkpoint_builder.h"
#include "testing/matchers.h"

namespace ds::ckpt {
namespace {

using ::ds::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr char kDir[] = "/ckpts";
constexpr char kCrashMessage[] =
    "/ckpts/step-00000002/manifest.h5: the HDF5 library crashed (SIGSEGV) parsing it: the "
    "manifest is damaged; an older checkpoint may still be good";

class CraftedManifestTest : public ::testing::Test {
 protected:
  // step-00000001..3, the middle one's manifest replaced by `manifest`; `latest` names step 3.
  void Build(const std::string& manifest) {
    const std::vector<testing::TestTensor> tensors = {
        testing::MakeTensor("master/w", fmt::DType::kF32, {64, 16}, 1)};
    for (int step = 1; step <= 3; ++step) {
      const std::string dir = io::JoinPath(kDir, TagForStep(step));
      Result<fmt::Manifest> m =
          testing::WriteTestCheckpoint(&env_, dir, tensors, 2, fmt::Codec::kRaw);
      ASSERT_TRUE(m.ok()) << m.status().ToString();
      m->info.step = step;  // the builder writes step 7
      m->info.created_micros = step;
      DS_ASSERT_OK(fmt::WriteManifest(&env_, dir + "/manifest.h5", *m));
    }
    ASSERT_FALSE(manifest.empty()) << "tests/formats/data/v1_sample.h5 is missing";
    DS_ASSERT_OK(env_.WriteFileSynced(Middle() + "/manifest.h5", manifest));
    Catalog catalog(&env_, kDir);
    DS_ASSERT_OK(catalog.SetLatest(TagForStep(3)));
  }
  static std::string Middle() { return io::JoinPath(kDir, TagForStep(2)); }

  io::MemEnv env_;
};

TEST_F(CraftedManifestTest, ListReportsItAndListsTheOthers) {
  Build(testing::V1ThatCrashesLibhdf5());
  Catalog catalog(&env_, kDir);
  DS_ASSERT_OK_AND_ASSIGN(std::vector<CheckpointEntry> all, catalog.List());
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].tag, "step-00000001");
  EXPECT_EQ(all[0].problem, "");
  EXPECT_EQ(all[1].tag, "step-00000002");
  EXPECT_EQ(all[1].step, 2);  // from its tag
  EXPECT_EQ(all[1].problem, kCrashMessage);
  EXPECT_EQ(all[2].tag, "step-00000003");
  EXPECT_EQ(all[2].problem, "");
  DS_ASSERT_OK_AND_ASSIGN(SaveDirListing listing, ListSaveDir(&env_, kDir));
  ASSERT_EQ(listing.checkpoints.size(), 3u);
  EXPECT_EQ(listing.checkpoints[1].problem, kCrashMessage);
}

// What --resume and --fallback rely on: `latest` naming the damaged checkpoint resolves to it,
// opening it is a Corruption (so --fallback goes back), and the older ones it goes back to are
// listed without a problem and open.
TEST_F(CraftedManifestTest, ResumeFallsBackPastIt) {
  Build(testing::V1ThatCrashesLibhdf5());
  Catalog catalog(&env_, kDir);
  DS_ASSERT_OK(catalog.SetLatest(TagForStep(2)));
  DS_ASSERT_OK_AND_ASSIGN(std::string path, catalog.Resolve("latest"));
  EXPECT_EQ(path, Middle());
  EXPECT_THAT(CheckpointReader::Open(&env_, path),
              StatusIs(StatusCode::kCorruption, kCrashMessage));
  DS_ASSERT_OK_AND_ASSIGN(std::vector<CheckpointEntry> all, catalog.List());
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].problem, "");
  DS_ASSERT_OK(CheckpointReader::Open(&env_, all[0].path).status());
}

TEST_F(CraftedManifestTest, GcCompletesAndLeavesItAlone) {
  Build(testing::V1ThatCrashesLibhdf5());
  GcOptions o;
  o.lock_wait_micros = 1'000'000;
  DS_ASSERT_OK_AND_ASSIGN(GcReport r, CollectGarbage(&env_, kDir, o));
  EXPECT_THAT(r.removed, IsEmpty());
  ASSERT_EQ(r.unreadable.size(), 1u);
  EXPECT_EQ(r.unreadable[0].kind, GcKind::kCheckpoint);
  EXPECT_EQ(r.unreadable[0].path, Middle());
  EXPECT_THAT(r.unreadable[0].reason, HasSubstr(kCrashMessage));
  DS_ASSERT_OK_AND_ASSIGN(bool still_there, env_.Exists(Middle() + "/rank-00000.dss"));
  EXPECT_TRUE(still_there);
}

TEST_F(CraftedManifestTest, PruneCompletesAndRemovesOnlyWhatThePolicySays) {
  Build(testing::V1ThatCrashesLibhdf5());
  PruneOptions o;
  o.lock_wait_micros = 1'000'000;
  RetentionPolicy keep_three;
  keep_three.keep_last = 3;
  DS_ASSERT_OK_AND_ASSIGN(RetentionResult r, Prune(&env_, kDir, keep_three, o));
  EXPECT_THAT(r.removed, IsEmpty());
  ASSERT_EQ(r.kept.size(), 3u);
  // keep_last 2 keeps the newest two by step, the unreadable one among them (its step is its
  // tag's), and removes only step 1.
  RetentionPolicy keep_two;
  keep_two.keep_last = 2;
  DS_ASSERT_OK_AND_ASSIGN(r, Prune(&env_, kDir, keep_two, o));
  ASSERT_EQ(r.removed.size(), 1u);
  EXPECT_EQ(r.removed[0].tag, "step-00000001");
  DS_ASSERT_OK_AND_ASSIGN(std::vector<CheckpointEntry> left, Catalog(&env_, kDir).List());
  ASSERT_EQ(left.size(), 2u);
  EXPECT_EQ(left[0].tag, "step-00000002");
  EXPECT_EQ(left[0].problem, kCrashMessage);
}

TEST_F(CraftedManifestTest, VerifyReportsTheDamage) {
  Build(testing::V1ThatCrashesLibhdf5());
  DS_ASSERT_OK_AND_ASSIGN(VerifyReport r, VerifyCheckpoint(&env_, Middle()));
  EXPECT_FALSE(r.healthy);
  ASSERT_FALSE(r.problems.empty());
  EXPECT_THAT(r.problems[0], HasSubstr(kCrashMessage));
  DS_ASSERT_OK_AND_ASSIGN(VerifyReport good,
                          VerifyCheckpoint(&env_, io::JoinPath(kDir, "step-00000003")));
  EXPECT_TRUE(good.healthy);
}

// A manifest that sends libhdf5 into a loop costs each tool the parse timeout, then is reported.
TEST_F(CraftedManifestTest, AHangIsReportedAfterTheTimeout) {
  Build(testing::V1ThatHangsLibhdf5());
  ::setenv("DSTRAIN_MANIFEST_PARSE_TIMEOUT_S", "0.3", 1);
  const auto start = std::chrono::steady_clock::now();
  Result<std::vector<CheckpointEntry>> all = Catalog(&env_, kDir).List();
  GcOptions o;
  o.lock_wait_micros = 1'000'000;
  Result<GcReport> gc = CollectGarbage(&env_, kDir, o);
  ::unsetenv("DSTRAIN_MANIFEST_PARSE_TIMEOUT_S");
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 5.0);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  ASSERT_EQ(all->size(), 3u);
  EXPECT_THAT((*all)[1].problem,
              HasSubstr("step-00000002/manifest.h5: the HDF5 library did not finish within 0.3 s "
                        "(killed) parsing it"));
  ASSERT_TRUE(gc.ok()) << gc.status().ToString();
  ASSERT_EQ(gc->unreadable.size(), 1u);
  EXPECT_THAT(gc->unreadable[0].reason, HasSubstr("did not finish within 0.3 s"));
}

}  // namespace
}  // namespace ds::ckpt
