// dsrun and a program built on DsrunMain, end to end through the binaries: exit codes (0 ok,
// 2 usage or config error, 1 training failed), a dry run's memory table, messages that name the
// file and key, and a registered model training from the command line.
#include <gtest/gtest.h>

#include <fstream>

#include "bench/fio.h"
#include "testing/matchers.h"
#include "testing/paths.h"
#include "testing/shell.h"

namespace ds {
namespace {

using ::testing::HasSubstr;
using testing::Sh;
using testing::ShellResult;

std::string Q(const std::string& s) { return bench::ShellQuote(s); }
std::string Dsrun() { return Q(testing::BuildDir() + "/dsrun"); }
std::string Demo() { return Q(testing::SourceDir() + "/examples/demo.json"); }

TEST(DsrunCliTest, DryRunPrintsTheResolvedConfigAndMemoryAndExitsZero) {
  ShellResult r =
      Sh(Dsrun() + " --config " + Demo() + " --dry-run --set zero_optimization.stage=2");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("\"train_batch_size\": 16"));
  EXPECT_THAT(r.out, HasSubstr("the config resolves"));
  EXPECT_THAT(r.out, HasSubstr("stage"));  // the memory table's header
}

TEST(DsrunCliTest, ConfigErrorsExitTwoAndNameTheFileAndKey) {
  testing::TempDir dir;
  const std::string bad = dir.Join("bad.json");
  std::ofstream(bad) << R"({"train_batch_size": 10, "train_micro_batch_size_per_gpu": 4,
                            "gradient_accumulation_steps": 2, "model": {"preset": "demo"},
                            "trainer": {"max_steps": 10}})";
  ShellResult r = Sh(Dsrun() + " --config " + Q(bad) + " --dry-run");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("bad.json"));
  EXPECT_THAT(r.out, HasSubstr("train_batch_size"));

  r = Sh(Dsrun() + " --config " + Q(dir.Join("missing.json")));
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("missing.json"));

  r = Sh(Dsrun() + " --config " + Demo() + " --set model.preset=gpt-9b --dry-run");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("model.preset 'gpt-9b' is not known"));

  // A misspelt key beside the error it causes is named in the same message.
  std::ofstream(bad) << R"({"train_micro_batch_size_per_gp": 4, "model": {"preset": "demo"},
                            "trainer": {"max_steps": 10}})";
  r = Sh(Dsrun() + " --config " + Q(bad) + " --dry-run");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("train_micro_batch_size_per_gpu"));
  EXPECT_THAT(r.out, HasSubstr("unknown key train_micro_batch_size_per_gp is ignored; did you "
                               "mean train_micro_batch_size_per_gpu?"));

  r = Sh(Dsrun());
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("--config is required"));
}

TEST(DsrunCliTest, UnknownKeysWarnAndStrictMakesThemErrors) {
  testing::TempDir dir;
  const std::string cfg = dir.Join("typo.json");
  std::ofstream(cfg) << R"({"train_micro_batch_size_per_gpu": 4, "gradient_clipping": 1.0,
                            "gradient_clipings": 2.0, "model": {"preset": "demo"},
                            "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
                            "trainer": {"max_steps": 10}})";
  ShellResult r = Sh(Dsrun() + " --config " + Q(cfg) + " --dry-run");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("gradient_clipping"));  // the closest known key
  r = Sh(Dsrun() + " --config " + Q(cfg) + " --dry-run --strict");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("gradient_clipings"));
}

TEST(DsrunCliTest, TrainsAFewStepsAndAnUnregisteredArchIsAUsageError) {
  testing::TempDir dir;
  const std::string out = "trainer.output_dir=" + dir.path();
  ShellResult r = Sh(Dsrun() + " --config " + Demo() + " --max-steps 3 --device cpu --set " +
                     Q(out) + " model.n_layer=1 tensorboard.enabled=false");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("trained 3 steps on cpu"));

  r = Sh(Dsrun() + " --config " + Demo() + " --max-steps 3 --fresh-start --set " + Q(out) +
         " model.arch=bigram-mlp");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("model.arch 'bigram-mlp' is not a registered model"));

  r = Sh(Dsrun() + " --config " + Demo() + " --device cuda:7 --max-steps 1 --fresh-start --set " +
         Q(out));
  if (r.out.find("no GPU is visible") != std::string::npos) {
    EXPECT_EQ(r.status, 2) << r.out;
  }
}

TEST(DsrunCliTest, TheCustomModelExampleTrainsThroughDsrunMain) {
  testing::TempDir dir;
  ShellResult r = Sh(Q(testing::BuildDir() + "/examples/bigram_lm") + " --config " +
                     Q(testing::SourceDir() + "/examples/custom_model/bigram.json") +
                     " --max-steps 40 --set " + Q("trainer.output_dir=" + dir.path()));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("model: bigram-mlp"));
  EXPECT_THAT(r.out, HasSubstr("trained 40 steps"));
}

// The example configs resolve at a typical world size, with no unknown or misspelt key, and
// the launch scripts parse (and pass shellcheck where it is installed).
TEST(DsrunCliTest, ExampleConfigsAndScriptsAreValid) {
  for (const char* name :
       {"single_node.json", "multi_node.json", "large_model_stage3.json", "demo.json"}) {
    SCOPED_TRACE(name);
    ShellResult r = Sh(Dsrun() + " --config " + Q(testing::SourceDir() + "/examples/" + name) +
                       " --dry-run --nproc-per-node 8 --nnodes 4");
    EXPECT_EQ(r.status, 0) << r.out;
    EXPECT_THAT(r.out, HasSubstr("data-parallel size 32"));
    EXPECT_THAT(r.out, ::testing::Not(HasSubstr("unknown key")));
  }
  const bool shellcheck = Sh("command -v shellcheck").status == 0;
  for (const char* script :
       {"launch_single_node.sh", "launch_multi_node.sh", "launch_slurm.sbatch"}) {
    SCOPED_TRACE(script);
    const std::string path = Q(testing::SourceDir() + "/examples/" + script);
    ShellResult r = Sh("bash -n " + path);
    EXPECT_EQ(r.status, 0) << r.out;
    if (shellcheck) {
      r = Sh("shellcheck " + path);
      EXPECT_EQ(r.status, 0) << r.out;
    }
  }
}

// dsrun doctor: a table of checks; a config that does not resolve is a fail and exit 1.
// `dsrun bench adam` on a small buffer: the table's rows and the JSON line; bad sizes are usage
// errors.
TEST(DsrunCliTest, BenchAdamComparesWithTorchAndRefusesEmptyBuffers) {
  ShellResult r = Sh(Dsrun() + " bench adam --elements 100000 --repeat 1 --threads 1 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("torch AdamW (default)"));
  EXPECT_THAT(r.out, HasSubstr("dstrain fused"));
  EXPECT_THAT(r.out, HasSubstr("{\"bench\":\"adam\",\"elements\":100000,"));
  r = Sh(Dsrun() + " bench adam --elements 0");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("--elements and --repeat must be at least 1"));
}

TEST(DsrunCliTest, DoctorChecksThisMachineAndTheConfig) {
  testing::TempDir dir;
  ShellResult r =
      Sh(Dsrun() + " doctor --config " + Demo() + " --set trainer.output_dir=" + Q(dir.path()));
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("examples/demo.json resolves"));
  EXPECT_THAT(r.out, ::testing::ContainsRegex(
                         "gloo all-reduce +pass +two ranks on 127.0.0.1 met and summed"));
  EXPECT_THAT(r.out, ::testing::ContainsRegex("free space +pass"));
  EXPECT_THAT(r.out, ::testing::ContainsRegex("disk bandwidth +(pass|warn)"));
  r = Sh(Dsrun() + " doctor --config " + Q(dir.Join("missing.json")));
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_THAT(r.out, ::testing::ContainsRegex("config +fail .*missing.json"));
}

}  // namespace
}  // namespace ds
