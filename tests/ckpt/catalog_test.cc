// The catalog: resolving what a user names, and retention decided table by table, including
// the cases where `latest` and `best` must survive a policy that would drop them.
#include "ckpt/catalog.h"

#include "formats/manifest.h"
#include "io/mem_env.h"
#include "testing/matchers.h"

namespace ds::ckpt {
namespace {

using ::ds::testing::StatusIs;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

// A committed checkpoint as far as the catalog is concerned: a directory with a manifest.
void Commit(io::Env* env, const std::string& dir, int64_t step, double eval_loss,
            uint64_t extra_bytes = 0) {
  const std::string path = io::JoinPath(dir, TagForStep(step));
  ASSERT_TRUE(env->CreateDirs(path).ok());
  fmt::Manifest m;
  m.info.tag = TagForStep(step);
  m.info.step = step;
  m.info.metrics_json = "{\"eval_loss\": " + std::to_string(eval_loss) + "}";
  ASSERT_TRUE(fmt::WriteManifest(env, io::JoinPath(path, fmt::kManifestFileName), m).ok());
  if (extra_bytes) {
    ASSERT_TRUE(
        env->WriteFileSynced(io::JoinPath(path, "rank-00000.dss"), std::string(extra_bytes, 'x'))
            .ok());
  }
}

std::vector<std::string> Tags(const std::vector<CheckpointEntry>& v) {
  std::vector<std::string> out;
  for (const auto& e : v) out.push_back(e.tag);
  return out;
}

TEST(CatalogTest, ResolveWhatUsersName) {
  io::MemEnv env;
  Catalog cat(&env, "/s");
  EXPECT_THAT(cat.Resolve("latest"), StatusIs(StatusCode::kNotFound, HasSubstr("no 'latest'")));
  Commit(&env, "/s", 100, 2.0);
  Commit(&env, "/s", 200, 1.0);
  DS_ASSERT_OK(cat.SetLatest("step-00000200"));
  DS_ASSERT_OK(cat.SetBest({"step-00000100", "eval_loss", 2.0, "min"}));
  EXPECT_EQ(*cat.Resolve("latest"), "/s/step-00000200");
  EXPECT_EQ(*cat.Resolve("best"), "/s/step-00000100");
  EXPECT_EQ(*cat.Resolve("step-00000100"), "/s/step-00000100");
  EXPECT_EQ(*cat.Resolve("/s/step-00000200"), "/s/step-00000200");
  EXPECT_THAT(cat.Resolve("step-3"),
              StatusIs(StatusCode::kNotFound, HasSubstr("neither step-3 nor /s/step-3")));
  // A pointer naming what is not committed: the newest committed checkpoint, and why.
  DS_ASSERT_OK(env.WriteFileSynced("/s/latest", "step-00000999\n"));
  std::string note;
  EXPECT_EQ(*cat.Resolve("latest", &note), "/s/step-00000200");
  EXPECT_THAT(note, HasSubstr("names 'step-00000999', which is not a committed checkpoint: "
                              "using step-00000200"));
  DS_ASSERT_OK(env.WriteFileSynced("/s/best", "not json"));
  EXPECT_THAT(cat.ReadBest(), StatusIs(StatusCode::kCorruption, HasSubstr("dsckpt best")));
}

// `latest` missing, stale (a checkpoint committed after the one it names: its update failed
// on a full disk) or unreadable: "latest" is still the newest committed checkpoint.
TEST(CatalogTest, LatestFindsTheNewestCommittedCheckpointWhenThePointerFails) {
  io::MemEnv env;
  Catalog cat(&env, "/s");
  auto commit_at = [&](int64_t step, int64_t created) {
    const std::string path = io::JoinPath("/s", TagForStep(step));
    ASSERT_TRUE(env.CreateDirs(path).ok());
    fmt::Manifest m;
    m.info.tag = TagForStep(step);
    m.info.step = step;
    m.info.created_micros = created;
    ASSERT_TRUE(fmt::WriteManifest(&env, io::JoinPath(path, fmt::kManifestFileName), m).ok());
  };
  commit_at(300, 1000);  // an older run's, beyond the step a later run resumed from
  commit_at(100, 2000);
  commit_at(200, 3000);  // committed last, but `latest` was not updated
  DS_ASSERT_OK(cat.SetLatest("step-00000100"));
  std::string note;
  EXPECT_EQ(*cat.Resolve("latest", &note), "/s/step-00000200");
  EXPECT_THAT(note, HasSubstr("'latest' names step-00000100 but step-00000200 was committed "
                              "after it"));
  DS_ASSERT_OK(cat.SetLatest("step-00000200"));  // up to date: no note
  note.clear();
  EXPECT_EQ(*cat.Resolve("latest", &note), "/s/step-00000200");
  EXPECT_EQ(note, "");
  DS_ASSERT_OK(env.RemoveFile("/s/latest"));
  EXPECT_EQ(*cat.Resolve("latest", &note), "/s/step-00000200");
  EXPECT_THAT(note, HasSubstr("there is no 'latest' pointer: using step-00000200"));
  DS_ASSERT_OK(env.WriteFileSynced("/s/latest", std::string("step-\0\x01", 7)));
  EXPECT_EQ(*cat.Resolve("latest", &note), "/s/step-00000200");
  EXPECT_THAT(note, HasSubstr("'step-\\x00\\x01'"));
  // A damaged newest one is skipped for the newest that reads.
  DS_ASSERT_OK(env.WriteFileSynced("/s/step-00000200/manifest.h5", "garbage"));
  EXPECT_EQ(*cat.Resolve("latest", &note), "/s/step-00000100");
}

TEST(CatalogTest, RetentionNeverRemovesProtectedTags) {
  io::MemEnv env;
  Catalog cat(&env, "/s");
  for (int64_t step : {100, 200, 300, 400}) Commit(&env, "/s", step, 1.0);
  DS_ASSERT_OK(cat.SetLatest("step-00000400"));
  RetentionPolicy p;
  p.keep_last = 1;
  p.protect_tags = {"step-00000200"};
  DS_ASSERT_OK_AND_ASSIGN(RetentionResult r, cat.ApplyRetention(p, /*dry_run=*/false));
  EXPECT_THAT(Tags(r.removed), ::testing::ElementsAre("step-00000100", "step-00000300"));
  DS_ASSERT_OK_AND_ASSIGN(std::vector<CheckpointEntry> left, cat.List());
  EXPECT_THAT(Tags(left), ::testing::ElementsAre("step-00000200", "step-00000400"));
}

TEST(CatalogTest, BestMovesOnlyWhenTheMetricImproves) {
  io::MemEnv env;
  Catalog cat(&env, "/s");
  Commit(&env, "/s", 1, 3.0);
  Commit(&env, "/s", 2, 2.0);
  Commit(&env, "/s", 3, 2.5);
  EXPECT_TRUE(*cat.OfferBest("step-00000001", "eval_loss", 3.0, "min"));
  EXPECT_TRUE(*cat.OfferBest("step-00000002", "eval_loss", 2.0, "min"));
  EXPECT_FALSE(*cat.OfferBest("step-00000003", "eval_loss", 2.5, "min"));
  EXPECT_EQ(cat.ReadBest()->value().tag, "step-00000002");
  EXPECT_TRUE(*cat.OfferBest("step-00000003", "accuracy", 0.5, "max"));  // another metric
  EXPECT_THAT(cat.OfferBest("step-00000003", "x", 1, "up"),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("min or max")));
}

struct RetentionCase {
  const char* name;
  RetentionPolicy policy;
  const char* latest;
  const char* best;
  std::vector<std::string> kept;
};

TEST(CatalogTest, RetentionTable) {
  auto tag = [](int s) { return TagForStep(s); };
  RetentionPolicy last2;
  last2.keep_last = 2;
  RetentionPolicy every300;
  every300.keep_every = 300;
  RetentionPolicy best2;
  best2.keep_best = 2;
  best2.best_metric = "eval_loss";
  RetentionPolicy mixed = last2;
  mixed.keep_every = 300;
  RetentionPolicy size;
  size.max_bytes = 3;  // replaced below by three checkpoints' worth of bytes
  RetentionPolicy none;
  const std::vector<RetentionCase> cases = {
      {"keep last 2", last2, "step-00000600", nullptr, {tag(500), tag(600)}},
      {"keep every 300", every300, "step-00000600", nullptr, {tag(300), tag(600)}},
      {"best 2 by eval_loss", best2, "step-00000600", nullptr, {tag(200), tag(400), tag(600)}},
      {"last 2 + every 300", mixed, "step-00000600", nullptr, {tag(300), tag(500), tag(600)}},
      {"latest points at an old one",
       last2,
       "step-00000100",
       nullptr,
       {tag(100), tag(500), tag(600)}},
      {"best is protected",
       last2,
       "step-00000600",
       "step-00000200",
       {tag(200), tag(500), tag(600)}},
      {"size cap drops the oldest",
       size,
       "step-00000600",
       "step-00000100",
       {tag(100), tag(500), tag(600)}},
      {"no policy keeps everything",
       none,
       "step-00000600",
       nullptr,
       {tag(100), tag(200), tag(300), tag(400), tag(500), tag(600)}},
  };
  const double losses[] = {3.0, 1.0, 2.5, 1.5, 2.0, 2.2};  // steps 100..600
  for (const RetentionCase& c : cases) {
    for (bool dry : {true, false}) {
      io::MemEnv env;
      Catalog cat(&env, "/s");
      for (int i = 0; i < 6; ++i) Commit(&env, "/s", 100 * (i + 1), losses[i], 1000);
      DS_ASSERT_OK(cat.SetLatest(c.latest));
      RetentionPolicy policy = c.policy;
      if (policy.max_bytes == 3) policy.max_bytes = 3 * cat.List()->front().bytes;
      if (c.best) {
        DS_ASSERT_OK(cat.SetBest({c.best, "eval_loss", 0, "min"}));
      }
      DS_ASSERT_OK_AND_ASSIGN(RetentionResult r, cat.ApplyRetention(policy, dry));
      EXPECT_THAT(Tags(r.kept), ElementsAreArray(c.kept)) << c.name;
      EXPECT_EQ(r.kept.size() + r.removed.size(), 6u) << c.name;
      DS_ASSERT_OK_AND_ASSIGN(auto left, cat.List());
      EXPECT_EQ(left.size(), dry ? 6u : c.kept.size()) << c.name << (dry ? " (dry run)" : "");
      uint64_t freed = 0;
      for (const auto& e : r.removed) freed += e.bytes;
      EXPECT_EQ(r.freed_bytes, freed);
      DS_ASSERT_OK_AND_ASSIGN(auto names, env.ListDir("/s"));
      for (const auto& n : names) EXPECT_NE(n.rfind(".trash-", 0), 0u) << n;
    }
  }
}

}  // namespace
}  // namespace ds::ckpt
