// dsrun against what a careless or hostile user (or a full disk) does to a run: configs that
// resolve but could never train, a fresh start beside committed checkpoints, a `latest` pointer
// lost after its checkpoint was committed, and saves that keep failing. Each test makes the
// condition and asserts the exact outcome: the exit code, the message, and what is on disk.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "bench/fio.h"
#include "testing/matchers.h"
#include "testing/paths.h"
#include "testing/shell.h"

namespace ds {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testing::Sh;
using testing::ShellResult;

std::string Q(const std::string& s) { return bench::ShellQuote(s); }
std::string Dsrun() { return Q(testing::BuildDir() + "/dsrun"); }
std::string Demo() { return Q(testing::SourceDir() + "/examples/demo.json"); }

bool Exists(const std::string& path) {
  Result<bool> e = io::Env::Default()->Exists(path);
  return e.ok() && *e;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// ---- configs that pass a careless reading but could never train

TEST(DsrunHardenTest, SizesBeyondAnyModelAreRefusedNamingTheKey) {
  ShellResult r = Sh(Dsrun() + " --config " + Demo() + " --set model.preset=null" +
                     " --set model.n_layer=1e9 --set model.n_head=4 --set model.d_model=64" +
                     " --set model.seq_len=64 --set model.vocab=256 --dry-run");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("model.n_layer is 1000000000: at most 10000"));

  r = Sh(Dsrun() + " --config " + Demo() +
         " --set train_micro_batch_size_per_gpu=4611686018427387904" + " --dry-run");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("train_micro_batch_size_per_gpu is 4611686018427387904: at most "
                               "16777216"));
  // An invalid value of one batch key does not make the others look unknown.
  r = Sh(Dsrun() + " --config " + Demo() + " --set train_micro_batch_size_per_gpu=-3 --dry-run");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("train_micro_batch_size_per_gpu must be a positive integer"));
  EXPECT_THAT(r.out, Not(HasSubstr("unknown key gradient_accumulation_steps")));
}

TEST(DsrunHardenTest, AModelThatCannotFitIsRefusedByTheDryRunAndBeforeTraining) {
  // Within every bound, but 10,000 layers of width 65,536 are 5e14 parameters.
  const std::string big =
      " --set model.preset=null --set model.n_layer=10000 "
      "--set model.n_head=512 --set model.d_model=65536 "
      "--set model.seq_len=64 --set model.vocab=256";
  ShellResult r = Sh(Dsrun() + " --config " + Demo() + big + " --dry-run");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("stage"));  // the memory table is still printed
  EXPECT_THAT(r.out, HasSubstr("the model does not fit"));
  EXPECT_THAT(r.out, HasSubstr("lower the model's size (model.n_layer 10000"));
  EXPECT_THAT(r.out, Not(HasSubstr("the config resolves")));
  // On this machine's CPU: refused against its memory, before anything is allocated.
  testing::TempDir dir;
  r = Sh("ulimit -v 4000000; " + Dsrun() + " --config " + Demo() + big + " --device cpu" +
         " --set " + Q("trainer.output_dir=" + dir.path()));
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("host memory"));
}

TEST(DsrunHardenTest, AConfigNestedBeyondReasonIsRefusedNotACrash) {
  testing::TempDir dir;
  const std::string path = dir.Join("deep.json");
  {
    std::ofstream out(path);
    out << "{\"a\": ";
    for (int i = 0; i < 150000; ++i) out << '[';
    for (int i = 0; i < 150000; ++i) out << ']';
    out << "}";
  }
  ShellResult r = Sh(Dsrun() + " --config " + Q(path) + " --dry-run");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("deep.json: line 1: nested more than 64 levels deep"));
  // The same through --set.
  r = Sh(Dsrun() + " --config " + Demo() + " --set " + Q("x=" + std::string(1000, '[')) +
         " --dry-run");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("nested more than 64 levels deep"));
}

// ---- runs and their checkpoints

class DsrunRunTest : public ::testing::Test {
 protected:
  std::string Run(const std::string& flags) {
    return Dsrun() + " --config " + Demo() + " --device cpu --set " +
           Q("trainer.output_dir=" + dir_.path()) + " --set trainer.eval_interval=0" +
           " --set train_micro_batch_size_per_gpu=4 --set checkpoint.save_interval_steps=5" +
           " --set checkpoint.keep_last=2 " + flags;
  }
  std::string Ckpts() const { return dir_.Join("checkpoints"); }
  std::string Ckpt(int step) const {
    char tag[32];
    std::snprintf(tag, sizeof tag, "step-%08d", step);
    return io::JoinPath(Ckpts(), tag);
  }
  testing::TempDir dir_;
};

TEST_F(DsrunRunTest, AFreshStartBesideCommittedCheckpointsIsRefusedUnlessAskedFor) {
  ShellResult r = Sh(Run("--max-steps 15"));
  ASSERT_EQ(r.status, 0) << r.out;
  ASSERT_TRUE(Exists(Ckpt(15)));
  const std::string metrics = ReadAll(dir_.Join("metrics.jsonl"));
  r = Sh(Run("--max-steps 10"));
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("already holds 2 committed checkpoint(s), the newest "
                               "step-00000015: resume with --resume latest"));
  EXPECT_EQ(ReadAll(dir_.Join("metrics.jsonl")), metrics);  // untouched
  // Asked for: it trains from step 0 and its retention (keep_last 2) deletes none of them.
  r = Sh(Run("--max-steps 20 --fresh-start"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("retention keeps the 2 checkpoint(s)"));
  EXPECT_TRUE(Exists(Ckpt(10)));
  EXPECT_TRUE(Exists(Ckpt(15)));
  EXPECT_TRUE(Exists(Ckpt(20)));
}

// The state a full disk leaves after the commit: the checkpoint renamed into place, `latest`
// never updated (here: removed, then stale). Resuming finds the newest committed checkpoint,
// keeps the metrics, and retention deletes nothing newer than what was resumed.
TEST_F(DsrunRunTest, ResumeFindsTheNewestCommittedCheckpointWhenLatestWasLost) {
  ShellResult r = Sh(Run("--max-steps 15"));
  ASSERT_EQ(r.status, 0) << r.out;
  ASSERT_TRUE(io::Env::Default()->RemoveFile(io::JoinPath(Ckpts(), "latest")).ok());
  r = Sh(Run("--max-steps 20 --resume latest --resume-if-any"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("there is no 'latest' pointer: using step-00000015"));
  EXPECT_THAT(r.out, HasSubstr("resumed from " + Ckpt(15) + " at step 15"));
  EXPECT_THAT(r.out, Not(HasSubstr("starting fresh")));
  EXPECT_THAT(ReadAll(dir_.Join("metrics.jsonl")), HasSubstr("\"step\":15"));
  EXPECT_TRUE(Exists(Ckpt(15)));
  EXPECT_TRUE(Exists(Ckpt(20)));

  // Stale: `latest` names step 15, but step 20 was committed after it.
  std::ofstream(io::JoinPath(Ckpts(), "latest")) << "step-00000015\n";
  r = Sh(Run("--max-steps 25 --resume latest --resume-if-any"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("'latest' names step-00000015 but step-00000020 was committed "
                               "after it"));
  EXPECT_THAT(r.out, HasSubstr("resumed from " + Ckpt(20) + " at step 20"));
}

// Resuming an older checkpoint explicitly: the newer ones are another timeline, never deleted.
TEST_F(DsrunRunTest, RetentionNeverDeletesCheckpointsNewerThanTheResumedOne) {
  ShellResult r = Sh(Run("--max-steps 20"));
  ASSERT_EQ(r.status, 0) << r.out;
  ASSERT_TRUE(Exists(Ckpt(15)) && Exists(Ckpt(20)));
  r = Sh(Run("--max-steps 30 --resume step-00000015 --set checkpoint.keep_last=1"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_TRUE(Exists(Ckpt(20)));   // newer than step 15 and not this run's
  EXPECT_FALSE(Exists(Ckpt(15)));  // this run's own past: retention's to remove
  EXPECT_TRUE(Exists(Ckpt(30)));
}

TEST_F(DsrunRunTest, SavesFailingInARowStopTrainingWithAnErrorNamingWhatIsLost) {
  const std::string blocker = dir_.Join("not-a-dir");
  std::ofstream(blocker) << "x";
  const std::string save_dir = " --set " + Q("checkpoint.save_dir=" + blocker + "/ckpts");
  ShellResult r = Sh(Run("--max-steps 60 --set checkpoint.max_failed_saves=2" + save_dir));
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("2 checkpoint saves in a row failed "
                               "(checkpoint.max_failed_saves: 2)"));
  EXPECT_THAT(r.out, HasSubstr("no checkpoint holds this run's state: steps 1-15 are not saved"));
  EXPECT_THAT(r.out, Not(HasSubstr("trained 60 steps")));

  // Never stopping for them (0): the run ends, but the final save failing is still an error.
  r = Sh(Run("--max-steps 10 --set checkpoint.max_failed_saves=0" + save_dir));
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("the final checkpoint (step 10) failed"));
  EXPECT_THAT(r.out, Not(HasSubstr("trained 10 steps")));
}

// A shard missing, or a directory in its place: --fallback goes back to the newest older
// checkpoint that loads (the reader calls both damage, Corruption).
TEST_F(DsrunRunTest, FallbackSkipsACheckpointWhoseShardIsMissingOrADirectory) {
  ShellResult r = Sh(Run("--max-steps 15"));
  ASSERT_EQ(r.status, 0) << r.out;
  const std::string shard = io::JoinPath(Ckpt(15), "rank-00000.dss");
  ASSERT_TRUE(io::Env::Default()->RemoveFile(shard).ok());
  r = Sh(Run("--max-steps 15 --resume latest"));
  EXPECT_EQ(r.status, 2) << r.out;  // without --fallback: the damage, named
  EXPECT_THAT(r.out, HasSubstr("rank-00000.dss (rank 0) is missing"));
  r = Sh(Run("--max-steps 15 --resume latest --fallback"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("resumed from " + Ckpt(10) + " at step 10"));
  EXPECT_THAT(r.out, HasSubstr("fell back from the damaged " + Ckpt(15)));

  ASSERT_TRUE(io::Env::Default()->CreateDir(shard).ok());  // a directory in its place
  r = Sh(Run("--max-steps 15 --resume step-00000015 --fallback"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("fell back from the damaged " + Ckpt(15)));
}

// A save killed half way leaves .tmp-<tag>-<nonce>/ with a lock file no process holds: the
// next run's rank 0 reclaims it at start; a save dir of another live job is not touched.
TEST_F(DsrunRunTest, ARunReclaimsTheHalfWrittenSavesOfKilledRuns) {
  ShellResult r = Sh(Run("--max-steps 5"));
  ASSERT_EQ(r.status, 0) << r.out;
  const std::string torn = io::JoinPath(Ckpts(), ".tmp-step-00000010-0123456789abcdef");
  ASSERT_TRUE(io::Env::Default()->CreateDirs(torn).ok());
  std::ofstream(io::JoinPath(torn, "rank-00000.dss")) << std::string(1 << 20, 'x');
  std::ofstream(io::JoinPath(torn, ".writer-0.lock"));
  ASSERT_EQ(
      Sh("touch -d '1 hour ago' " + Q(io::JoinPath(torn, ".writer-0.lock")) + " " + Q(torn)).status,
      0);
  r = Sh(Run("--max-steps 5 --resume latest"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out,
              HasSubstr("reclaimed 1 save(s) that killed runs left in " + Ckpts() + " (1.0 MiB)"));
  EXPECT_FALSE(Exists(torn));
  EXPECT_TRUE(Exists(Ckpt(5)));
}

}  // namespace
}  // namespace ds
