// dsrun as a launcher, through the binary: N local ranks train together over Gloo with their
// output prefixed; a rank killed by a signal, or one that stops answering, ends the whole job
// with a non-zero exit and a message naming the rank, instead of a hang.
#include <gtest/gtest.h>

#include <cstring>

#include "bench/fio.h"
#include "io/env.h"
#include "testing/matchers.h"
#include "testing/paths.h"
#include "testing/shell.h"

namespace ds {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using testing::Sh;
using testing::ShellResult;

std::string Q(const std::string& s) { return bench::ShellQuote(s); }

// A model that trains a step in milliseconds.
std::string TinyRun(const std::string& out_dir, const std::string& extra) {
  // --device cpu: on a GPU machine two ranks would otherwise want a GPU each.
  return Q(testing::BuildDir() + "/dsrun") + " --device cpu --config " +
         Q(testing::SourceDir() + "/examples/demo.json") +
         " --set model.n_layer=1 model.d_model=32 model.n_head=2 model.seq_len=32"
         " train_micro_batch_size_per_gpu=4 trainer.eval_interval=0 steps_per_print=1"
         " tensorboard.enabled=false trainer.output_dir=" +
         Q(out_dir) + " " + extra;
}

// Starts `cmd` (a launcher) in the background, waits for rank 0's first step, sends `signal`
// to the rank whose RANK is `victim`, and returns what the launcher printed and its status.
ShellResult SignalARankMidRun(const std::string& cmd, const std::string& log, int victim,
                              const char* signal) {
  const std::string script = "(" + cmd + ") >" + Q(log) +
                             " 2>&1 & L=$!\n"
                             "for i in $(seq 1 600); do grep -q '\\[rank 0\\] step' " +
                             Q(log) +
                             " && break; sleep 0.1; done\n"
                             "for p in $(pgrep -P $L); do\n"
                             "  if tr '\\0' '\\n' < /proc/$p/environ | grep -qx RANK=" +
                             std::to_string(victim) +
                             "; then\n"
                             "    kill -" +
                             signal +
                             " $p; fi\n"
                             "done\n"
                             "wait $L; rc=$?; cat " +
                             Q(log) + "; exit $rc";
  return Sh("timeout 120 bash -c " + Q(script));
}

TEST(DsrunLaunchTest, TwoRanksTrainTogetherWithPrefixedOutput) {
  testing::TempDir dir;
  ShellResult r = Sh(
      TinyRun(dir.Join("out"), "--nproc-per-node 2 --max-steps 6 --set zero_optimization.stage=2"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("[rank 0] model: gpt 1 layers"));
  EXPECT_THAT(r.out, HasSubstr("ZeRO stage 2 over 2 ranks"));
  EXPECT_THAT(r.out, HasSubstr("[rank 0] trained 6 steps"));
  Result<bool> metrics = io::Env::Default()->Exists(dir.Join("out/metrics.jsonl"));
  EXPECT_TRUE(metrics.ok() && *metrics);
  // Every line of the job's output came from a rank (rank 1 prints nothing but warnings).
  for (size_t at = 0; at < r.out.size();) {
    const size_t end = r.out.find('\n', at);
    const std::string line = r.out.substr(at, end - at);
    if (!line.empty()) {
      EXPECT_THAT(line, MatchesRegex("\\[rank [01]\\] .*")) << r.out;
    }
    at = end == std::string::npos ? r.out.size() : end + 1;
  }
}

TEST(DsrunLaunchTest, AKilledRankEndsTheJobNamingItAndItsSignal) {
  testing::TempDir dir;
  const uint64_t t0 = io::Env::Default()->NowMicros();
  ShellResult r =
      SignalARankMidRun(TinyRun(dir.Join("out"), "--nproc-per-node 2 --max-steps 1000000"),
                        dir.Join("log"), 1, "KILL");
  const double seconds = static_cast<double>(io::Env::Default()->NowMicros() - t0) / 1e6;
  EXPECT_EQ(r.status, 128 + 9) << r.out;
  EXPECT_THAT(r.out, HasSubstr("dsrun: rank 1 (local 1, pid "));
  EXPECT_THAT(r.out, HasSubstr("killed by signal 9 (SIGKILL)"));
  EXPECT_LT(seconds, 60) << r.out;
}

TEST(DsrunLaunchTest, ARankThatStopsAnsweringEndsTheJobWithinTheTimeout) {
  testing::TempDir dir;
  const uint64_t t0 = io::Env::Default()->NowMicros();
  ShellResult r = SignalARankMidRun(
      TinyRun(dir.Join("out"), "--nproc-per-node 2 --max-steps 1000000 --set comms.timeout_s=3"),
      dir.Join("log"), 1, "STOP");
  const double seconds = static_cast<double>(io::Env::Default()->NowMicros() - t0) / 1e6;
  EXPECT_EQ(r.status, 1) << r.out;
  // Rank 0 gives up on the collective rank 1 never joins, and says which one and for how long.
  EXPECT_THAT(r.out, HasSubstr("[rank 0] dsrun: rank 0: "));
  EXPECT_THAT(r.out, HasSubstr("timed out after 3 s"));
  EXPECT_THAT(r.out, HasSubstr("rank 1 has been silent for"));  // its heartbeats stopped
  EXPECT_THAT(r.out, HasSubstr("dsrun: rank 0 (local 0, pid "));
  EXPECT_LT(seconds, 60) << r.out;
}

TEST(DsrunLaunchTest, LauncherFlagErrorsExitTwo) {
  testing::TempDir dir;
  ShellResult r = Sh(TinyRun(dir.Join("out"), "--nproc-per-node 0"));
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("--nproc-per-node (0)"));
  const std::string hostfile = dir.Join("hostfile");
  ASSERT_TRUE(
      io::Env::Default()->WriteFileSynced(hostfile, "worker-1 slots=2\nworker-2 slots\n").ok());
  r = Sh(TinyRun(dir.Join("out"), "--hostfile " + Q(hostfile)));
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("hostfile:2"));
  ASSERT_TRUE(
      io::Env::Default()->WriteFileSynced(hostfile, "worker-1 slots=2\nworker-2 slots=2\n").ok());
  r = Sh(TinyRun(dir.Join("out"), "--hostfile " + Q(hostfile)));
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("is not listed; pass --node-rank"));
  ASSERT_TRUE(
      io::Env::Default()->WriteFileSynced(hostfile, "worker-1 slots=2\nworker-2 slots=4\n").ok());
  r = Sh(TinyRun(dir.Join("out"), "--hostfile " + Q(hostfile) + " --node-rank 0"));
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("every host needs the same slots (worker-1 has 2, worker-2 has 4)"));
}

// `dsrun bench` of a tiny GPT on 2 CPU ranks: `flags` picks the rows, `sets` sizes the model.
std::string TinyBench(const testing::TempDir& dir, const std::string& flags,
                      const std::string& sets) {
  return Q(testing::BuildDir() + "/dsrun") + " bench --device cpu --config " +
         Q(testing::SourceDir() + "/examples/demo.json") + " --nproc-per-node 2 " + flags +
         " --json --set " + sets +
         " model.d_model=32 model.n_head=2 model.seq_len=32 tensorboard.enabled=false"
         " trainer.output_dir=" +
         Q(dir.Join("out"));
}

TEST(DsrunLaunchTest, BenchPrintsATableAndAJsonLinePerStageAndOffload) {
  testing::TempDir dir;
  const std::string cmd = TinyBench(
      dir, "--stages 1,3 --offload none,all --steps 2 --warmup 1 --out " + Q(dir.Join("report")),
      "model.n_layer=1 train_micro_batch_size_per_gpu=4");
  ShellResult r = Sh(cmd);
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, ::testing::ContainsRegex("\nstage +ranks +step ms"));
  EXPECT_THAT(r.out, MatchesRegex("(.|\n)*\n1 +2 +[0-9.]+ +[0-9]+ (.|\n)*"));
  EXPECT_THAT(r.out, MatchesRegex("(.|\n)*\n3 +2 +[0-9.]+ +[0-9]+ (.|\n)*"));
  // Offloading parameters is a stage 3 setting: no "1+all" row.
  EXPECT_THAT(r.out, MatchesRegex("(.|\n)*\n3\\+all +2 +[0-9.]+ +[0-9]+ (.|\n)*"));
  EXPECT_THAT(r.out, ::testing::Not(HasSubstr("1+all")));
  EXPECT_THAT(r.out, HasSubstr("comm GB/s"));
  EXPECT_THAT(r.out, HasSubstr("{\"bench\":\"dsrun_zero_stages\""));
  EXPECT_THAT(r.out, HasSubstr("\"reduce_scatter\""));
  // --out: the same rows as CSV, and a chart with a bar per stage in each of its two panels.
  DS_ASSERT_OK_AND_ASSIGN(std::string csv,
                          io::Env::Default()->ReadFileToString(dir.Join("report/bench.csv")));
  EXPECT_THAT(csv, ::testing::StartsWith(
                       "case,stage,ranks,offload_optimizer,offload_param,step_s,tokens_per_s,"));
  EXPECT_THAT(csv, ::testing::ContainsRegex("\n\"1\",1,2,false,false,[0-9.e-]+,"));
  EXPECT_THAT(csv, ::testing::ContainsRegex("\n\"3\",3,2,false,false,[0-9.e-]+,"));
  EXPECT_THAT(csv, ::testing::ContainsRegex("\n\"3\\+all\",3,2,true,true,[0-9.e-]+,"));
  DS_ASSERT_OK_AND_ASSIGN(std::string svg,
                          io::Env::Default()->ReadFileToString(dir.Join("report/bench.svg")));
  EXPECT_THAT(svg, ::testing::StartsWith("<svg xmlns=\"http://www.w3.org/2000/svg\""));
  size_t bars = 0;
  for (size_t at = svg.find("class=\"bar\""); at != std::string::npos;
       at = svg.find("class=\"bar\"", at + 1))
    ++bars;
  EXPECT_EQ(bars, 6u);  // three rows, two panels
  ShellResult xml = Sh("python3 -c " + Q("import sys, xml.dom.minidom as m; m.parse(sys.argv[1])") +
                       " " + Q(dir.Join("report/bench.svg")));
  EXPECT_EQ(xml.status, 0) << xml.out;

  r = Sh(Q(testing::BuildDir() + "/dsrun") + " bench --config x.json --stages 0,5");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("'5' is not a ZeRO stage"));
  r = Sh(Q(testing::BuildDir() + "/dsrun") + " bench --config x.json --offload cpu");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(
      r.out,
      HasSubstr("'cpu' is not an offload setting (use none, optimizer, all, nvme, nvme-all)"));
}

// --profile: rank 0 profiles 3 more steps (the other rank steps with it) and writes a summary
// and a Chrome trace per row.
TEST(DsrunLaunchTest, BenchProfilesStepsOnRankZero) {
  testing::TempDir dir;
  ShellResult r = Sh(TinyBench(dir, "--stages 0 --steps 1 --warmup 1 --profile " + Q(dir.Join("p")),
                               "model.n_layer=1 train_micro_batch_size_per_gpu=2"));
  ASSERT_EQ(r.status, 0) << r.out;
  DS_ASSERT_OK_AND_ASSIGN(std::string text,
                          io::Env::Default()->ReadFileToString(dir.Join("p/profile-0.txt")));
  EXPECT_THAT(text, MatchesRegex("profile: 3 steps; per step: wall [0-9.]+ ms, GPU busy "
                                 "[0-9.]+ ms (.|\n)*"));
  EXPECT_THAT(text, HasSubstr("no GPU activity recorded"));  // a CPU run
  ShellResult trace = Sh("python3 -c " + Q("import json, sys; json.load(open(sys.argv[1]))") + " " +
                         Q(dir.Join("p/profile-0.trace.json")));
  EXPECT_EQ(trace.status, 0) << trace.out;
  // A folder that cannot be made: named, before any rank starts.
  ASSERT_TRUE(io::Env::Default()->WriteFileSynced(dir.Join("file"), "x").ok());
  r = Sh(Q(testing::BuildDir() + "/dsrun") + " bench --config x.json --profile " +
         Q(dir.Join("file/p")));
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("--profile " + dir.Join("file/p")));
}

TEST(DsrunLaunchTest, BenchMeasuresTensorAndPipelineLayouts) {
  testing::TempDir dir;
  const std::string cmd = TinyBench(dir, "--stages 1,2 --parallel 1x1,2x1,1x2 --steps 1 --warmup 1",
                                    "model.n_layer=2 train_micro_batch_size_per_gpu=2 "
                                    "gradient_accumulation_steps=2");
  ShellResult r = Sh(cmd);
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, MatchesRegex("(.|\n)*\n1 +2 +[0-9.]+ +[0-9]+ (.|\n)*"));
  EXPECT_THAT(r.out, MatchesRegex("(.|\n)*\n1/tp2pp1 +2 +[0-9.]+ +[0-9]+ (.|\n)*"));
  EXPECT_THAT(r.out, MatchesRegex("(.|\n)*\n2/tp2pp1 +2 +[0-9.]+ +[0-9]+ (.|\n)*"));
  EXPECT_THAT(r.out, MatchesRegex("(.|\n)*\n1/tp1pp2 +2 +[0-9.]+ +[0-9]+ (.|\n)*"));
  // A pipeline takes ZeRO stages 0-1 only: no 2/tp1pp2 row.
  EXPECT_THAT(r.out, ::testing::Not(HasSubstr("2/tp1pp2")));
  EXPECT_THAT(r.out, HasSubstr("\"tp\":2,\"pp\":1"));
  EXPECT_THAT(r.out, HasSubstr("\"pipe:send\""));      // the pipeline's activations and gradients
  EXPECT_THAT(r.out, HasSubstr("\"tp:all_reduce\""));  // the row-parallel layers' sums

  r = Sh(Q(testing::BuildDir() + "/dsrun") + " bench --config x.json --parallel 2-1");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("'2-1' is not TPxPP"));
}

TEST(DsrunLaunchTest, SigtermSavesTheStepExitsSeventyFiveAndResumes) {
  testing::TempDir dir;
  const std::string run =
      TinyRun(dir.Join("out"), "--max-steps 1000000 --set checkpoint.save_interval_steps=0");
  const std::string script = "(" + run + ") >" + Q(dir.Join("log")) +
                             " 2>&1 & P=$!\n"
                             "for i in $(seq 1 600); do grep -q '^step 3/' " +
                             Q(dir.Join("log")) +
                             " && break; sleep 0.1; done\n"
                             "kill -TERM $P; wait $P; rc=$?; cat " +
                             Q(dir.Join("log")) + "; exit $rc";
  ShellResult r = Sh("timeout 120 bash -c " + Q(script));
  ASSERT_EQ(r.status, 75) << r.out;
  EXPECT_THAT(
      r.out, MatchesRegex("(.|\n)*dsrun: SIGTERM at step [0-9]+: saved .*/checkpoints/step-[0-9]+; "
                          "resume with --resume latest\n(.|\n)*"));
  // The checkpoint is whole and resumes, for ten more steps than it holds (how many it holds
  // depends on how fast the machine ran before the signal).
  const size_t at = r.out.find("SIGTERM at step ");
  ASSERT_NE(at, std::string::npos);
  const int saved = std::stoi(r.out.substr(at + std::strlen("SIGTERM at step ")));
  ShellResult resumed =
      Sh(TinyRun(dir.Join("out"), "--resume latest --max-steps " + std::to_string(saved + 10)));
  ASSERT_EQ(resumed.status, 0) << resumed.out;
  EXPECT_THAT(resumed.out, HasSubstr("resumed from "));
  EXPECT_THAT(resumed.out, HasSubstr("at step " + std::to_string(saved)));
  // How long the read took and its rate (the load bandwidth the GPU runs report).
  EXPECT_THAT(resumed.out,
              ::testing::ContainsRegex(
                  "; read [0-9.]+ [KMG]?i?B in [0-9]+\\.[0-9]{2} s \\([0-9.]+ [kMG]?B/s "
                  "of state\\), every chunk checksummed"));
  EXPECT_THAT(resumed.out, HasSubstr("trained " + std::to_string(saved + 10) + " steps"));
}

TEST(DsrunLaunchTest, KilledRanksRestartFromTheLatestCheckpointAndFinishAsIfNothingHappened) {
  testing::TempDir dir;
  // A slightly larger model than TinyRun's, so 200 steps last a few seconds.
  const std::string common =
      "--nproc-per-node 2 --max-steps 200 --set checkpoint.save_interval_steps=10 "
      "zero_optimization.stage=2 model.n_layer=2 model.d_model=64";
  ShellResult clean = Sh(TinyRun(dir.Join("clean"), common));
  ASSERT_EQ(clean.status, 0) << clean.out;
  // Kill rank 1 twice: some steps after the first checkpoint, then some steps after resuming.
  const std::string faulty = TinyRun(dir.Join("faulty"), common + " --max-restarts 3");
  const std::string log = Q(dir.Join("log"));
  const std::string kill_rank1 =
      "for p in $(pgrep -P $L); do\n"
      "  if tr '\\0' '\\n' < /proc/$p/environ 2>/dev/null | grep -qx RANK=1; then kill -9 $p; fi\n"
      "done\n";
  const std::string steps = "$(grep -c 'rank 0\\] step ' " + log + ")";
  const std::string script = "(" + faulty + ") >" + log + " 2>&1 & L=$!\n" +
                             "for i in $(seq 1 1200); do grep -q 'rank 0\\] step 15/' " + log +
                             " && break; sleep 0.05; done\n" + kill_rank1 +
                             "for i in $(seq 1 1200); do grep -q 'resumed from' " + log +
                             " && break; sleep 0.05; done\n" + "n=" + steps + "\n" +
                             "for i in $(seq 1 1200); do [ " + steps +
                             " -ge $((n + 5)) ] && break; sleep 0.05; done\n" + kill_rank1 +
                             "wait $L; rc=$?; cat " + log + "; exit $rc";
  ShellResult r = Sh("timeout 300 bash -c " + Q(script));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("dsrun: restart 1 of 3: rank 1 (local 1, pid "));
  EXPECT_THAT(r.out, HasSubstr("dsrun: restart 2 of 3: rank 1 (local 1, pid "));
  EXPECT_THAT(r.out, HasSubstr("killed by signal 9 (SIGKILL)"));
  EXPECT_THAT(r.out, HasSubstr("resumed from "));
  EXPECT_THAT(r.out, HasSubstr("[rank 0] trained 200 steps"));
  // The final weights and optimizer state equal the run without faults, bit for bit.
  ShellResult diff = Sh(Q(testing::BuildDir() + "/dsckpt") + " diff --ignore-blobs " +
                        Q(dir.Join("clean/checkpoints/step-00000200")) + " " +
                        Q(dir.Join("faulty/checkpoints/step-00000200")));
  EXPECT_EQ(diff.status, 0) << diff.out;
}

}  // namespace
}  // namespace ds
