// Checkpoints from the engine: N steps, save, resume, N more equals 2N straight bit for bit at
// every stage and world size (fp32 and bf16; fp16 with the loss scaler's state mid-flight); a
// checkpoint resumes at another world size and stage; a model that does not match, a missing or
// damaged checkpoint are clear errors (with --fallback going back to an older one); a save that
// hits a full disk lets training go on and the next save succeeds.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "ckpt/catalog.h"
#include "ckpt/reader.h"
#include "engine/model/gpt.h"
#include "engine/train/trainer.h"
#include "io/fault_env.h"
#include "tests/engine/testing/rank_threads.h"
#include "tests/testing/matchers.h"

namespace ds::engine {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

struct RankRun {
  Status status;
  TrainSummary summary;
  torch::Tensor master;
  std::string resumed;  // Resume's line
};

class ResumeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { torch::set_num_threads(1); }

  nlohmann::json Config(const std::string& out, int64_t steps) const {
    nlohmann::json j = nlohmann::json::parse(R"({
      "train_micro_batch_size_per_gpu": 2,
      "gradient_accumulation_steps": 2,
      "gradient_clipping": 0.5,
      "steps_per_print": 1,
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.1}},
      "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 4, "warmup_max_lr": 1e-3}},
      "model": {"n_layer": 2, "n_head": 2, "d_model": 32, "seq_len": 16, "vocab": 256},
      "data": {"path": "builtin", "val_fraction": 0.05},
      "comms": {"timeout_s": 60},
      "checkpoint": {"save_interval_steps": 0},
      "trainer": {"eval_interval": 0, "eval_iters": 2, "seed": 5}
    })");
    j["trainer"]["max_steps"] = steps;
    j["trainer"]["output_dir"] = out;
    j["zero_optimization"] = {{"reduce_bucket_size", 1000},
                              {"stage3_param_persistence_threshold", 0}};
    return j;
  }

  // Trains `world` ranks (threads) on `j` plus `set`; resumes first when `resume` is given.
  std::vector<RankRun> Run(int world, const nlohmann::json& j, const std::vector<std::string>& set,
                           std::optional<ResumeOptions> resume = std::nullopt,
                           io::Env* env = io::Env::Default()) {
    std::vector<RankRun> out(static_cast<size_t>(world));
    testing::RunRanks(world, [&](int r, int port) {
      RankRun& res = out[static_cast<size_t>(r)];
      // As dsrun --resume does: the initial weights are drawn only if nothing is loaded.
      Result<std::unique_ptr<Trainer>> t = testing::MakeRankTrainer(
          j, set, world, r, port, corpus_.path(), env, /*will_resume=*/resume.has_value());
      if (!t.ok()) {
        res.status = t.status();
        return;
      }
      if (resume) {
        Result<std::string> line = (*t)->Resume(*resume);
        if (!line.ok()) {
          res.status = line.status();
          return;
        }
        res.resumed = *line;
      }
      Result<TrainSummary> s = (*t)->Run();
      if (!s.ok()) {
        res.status = s.status();
        return;
      }
      res.summary = *s;
      Result<torch::Tensor> m = (*t)->GatherMaster();
      if (m.ok()) res.master = *m;
      res.status = m.status();
    });
    return out;
  }

  Status StepWithAFailingSwap(const std::string& dir, const std::vector<std::string>& set,
                              const io::FaultRule& rule);

  static ds::testing::TempDir corpus_;
};
ds::testing::TempDir ResumeTest::corpus_;

// The built-in GPT, counting the initial values it is asked for.
std::atomic<int64_t> g_initial_values_drawn{0};
class CountingGpt : public GptImpl {
 public:
  using GptImpl::GptImpl;
  torch::Tensor InitialValues(const std::string& name, int64_t begin, int64_t end) const override {
    g_initial_values_drawn += end - begin;
    return GptImpl::InitialValues(name, begin, end);
  }
};

// A resumed run never draws initial weights that the checkpoint would overwrite (the 1.3B
// model spent most of its start-up there); one that finds nothing to resume draws them and
// trains as a fresh run does.
TEST_F(ResumeTest, AResumedRunDrawsNoInitialWeightsAndOneWithNothingToLoadDoesAsAFreshRun) {
  RegisterModel(
      "test-counting-gpt",
      [](const ModelConfig& c, uint64_t seed) -> Result<std::shared_ptr<LanguageModel>> {
        return std::shared_ptr<LanguageModel>(std::make_shared<CountingGpt>(GptOptionsOf(c, seed)));
      });
  ds::testing::TempDir dir;
  const std::vector<std::string> set = {"model.arch=test-counting-gpt",
                                        "zero_optimization.stage=3"};
  g_initial_values_drawn = 0;
  std::vector<RankRun> first = Run(2, Config(dir.Join("a"), 3), set);
  ASSERT_RANKS_OK(first);
  EXPECT_GT(g_initial_values_drawn.load(), 0);

  g_initial_values_drawn = 0;
  std::vector<RankRun> resumed = Run(2, Config(dir.Join("a"), 5), set, testing::ResumeFrom());
  ASSERT_RANKS_OK(resumed);
  EXPECT_THAT(resumed[0].resumed, HasSubstr("step 3"));
  EXPECT_EQ(g_initial_values_drawn.load(), 0) << "a resumed run drew initial weights";

  // --resume-if-any with no checkpoint: a fresh run, drawn after the search found nothing.
  ResumeOptions if_any = testing::ResumeFrom();
  if_any.if_any = true;
  std::vector<RankRun> fresh = Run(2, Config(dir.Join("b"), 3), set, if_any);
  ASSERT_RANKS_OK(fresh);
  EXPECT_GT(g_initial_values_drawn.load(), 0);
  for (size_t r = 0; r < 2; ++r) {
    EXPECT_EQ(fresh[r].summary.first_loss, first[r].summary.first_loss) << "rank " << r;
    EXPECT_TRUE(torch::equal(fresh[r].master, first[r].master)) << "rank " << r;
  }
}

TEST_F(ResumeTest, StopAndResumeEqualsTrainingStraightThroughAtEveryStageAndWorldSize) {
  struct Case {
    int world, stage;
    const char* precision;
  };
  std::vector<Case> cases;
  for (int world : {1, 2, 4}) {
    for (int stage : {0, 1, 2, 3}) {
      cases.push_back({world, stage, "fp32"});
      cases.push_back({world, stage, "bf16"});
    }
  }
  for (const Case& k : cases) {
    SCOPED_TRACE("world " + std::to_string(k.world) + ", stage " + std::to_string(k.stage) + ", " +
                 k.precision);
    std::vector<std::string> set = {"zero_optimization.stage=" + std::to_string(k.stage)};
    if (std::string(k.precision) == "bf16") set.push_back("bf16.enabled=true");
    ds::testing::TempDir straight_dir, split_dir;
    std::vector<RankRun> straight = Run(k.world, Config(straight_dir.path(), 4), set);
    ASSERT_RANKS_OK(straight);
    std::vector<RankRun> first =
        Run(k.world, Config(split_dir.path(), 2), set);  // saves step 2 at the end
    ASSERT_RANKS_OK(first);
    ASSERT_EQ(first[0].summary.saves, 1);
    std::vector<RankRun> second =
        Run(k.world, Config(split_dir.path(), 4), set, testing::ResumeFrom());
    ASSERT_RANKS_OK(second);
    EXPECT_THAT(second[0].resumed, HasSubstr("at step 2"));
    for (int r = 0; r < k.world; ++r) {
      EXPECT_TRUE(torch::equal(second[static_cast<size_t>(r)].master, straight[0].master))
          << "rank " << r;
    }
    EXPECT_EQ(second[0].summary.last_loss, straight[0].summary.last_loss);  // step 4's loss
  }
}

TEST_F(ResumeTest, ACheckpointResumesAtAnotherWorldSizeAndStage) {
  ds::testing::TempDir dir;
  std::vector<RankRun> saved = Run(2, Config(dir.path(), 2), {"zero_optimization.stage=1"});
  ASSERT_RANKS_OK(saved);
  // 2 ranks at stage 1 -> 4 ranks at stage 3, resuming at the saved step: the same weights.
  std::vector<RankRun> four =
      Run(4, Config(dir.path(), 2), {"zero_optimization.stage=3"}, testing::ResumeFrom());
  ASSERT_RANKS_OK(four);
  EXPECT_THAT(four[0].resumed,
              HasSubstr("saved by 2 rank(s) at ZeRO stage 1, loaded into 4 at stage 3"));
  EXPECT_TRUE(torch::equal(four[0].master, saved[0].master));
  // ... and trains on, then 1 rank at stage 0 takes over.
  std::vector<RankRun> on =
      Run(4, Config(dir.path(), 4), {"zero_optimization.stage=3"}, testing::ResumeFrom());
  ASSERT_RANKS_OK(on);
  EXPECT_FALSE(torch::equal(on[0].master, saved[0].master));
  std::vector<RankRun> one =
      Run(1, Config(dir.path(), 4), {"zero_optimization.stage=0"}, testing::ResumeFrom());
  ASSERT_RANKS_OK(one);
  EXPECT_THAT(one[0].resumed, HasSubstr("at step 4"));
  EXPECT_TRUE(torch::equal(one[0].master, on[0].master));
  std::vector<RankRun> more =
      Run(1, Config(dir.path(), 6), {"zero_optimization.stage=0"}, testing::ResumeFrom());
  ASSERT_RANKS_OK(more);
  EXPECT_LT(more[0].summary.last_loss, saved[0].summary.first_loss);
}

// NVMe offload: the state is saved from the swap files and resumed into them at another world
// size and stage (there with the parameters on NVMe too; and out of them into memory), bit for
// bit; straight through equals saved and resumed, swapped or not.
TEST_F(ResumeTest, NvmeOffloadedStateSavesAndResumesAtAnotherWorldSizeAndStageBitExact) {
  ds::testing::TempDir dir, nvme;
  // At stage 3 the parameters go to NVMe too.
  auto swapped = [&](int stage) {
    std::vector<std::string> set = {"zero_optimization.stage=" + std::to_string(stage),
                                    "zero_optimization.offload_optimizer.device=nvme",
                                    "zero_optimization.offload_optimizer.nvme_path=" + nvme.path(),
                                    "aio.block_size=4096", "aio.queue_depth=2"};
    if (stage == 3) {
      set.insert(set.end(), {"zero_optimization.offload_param.device=nvme",
                             "zero_optimization.offload_param.nvme_path=" + nvme.path()});
    }
    return set;
  };
  // 2 steps on 2 ranks at stage 2, swapped; the same in memory.
  std::vector<RankRun> saved = Run(2, Config(dir.Join("a"), 2), swapped(2));
  ASSERT_RANKS_OK(saved);
  std::vector<RankRun> in_memory = Run(2, Config(dir.Join("b"), 2), {"zero_optimization.stage=2"});
  ASSERT_RANKS_OK(in_memory);
  EXPECT_TRUE(torch::equal(saved[0].master, in_memory[0].master));
  // Into 4 ranks at stage 3, swapped, at the saved step: the saved weights.
  std::vector<RankRun> four = Run(4, Config(dir.Join("a"), 2), swapped(3), testing::ResumeFrom());
  ASSERT_RANKS_OK(four);
  EXPECT_THAT(four[0].resumed,
              HasSubstr("saved by 2 rank(s) at ZeRO stage 2, loaded into 4 at stage 3"));
  EXPECT_TRUE(torch::equal(four[0].master, saved[0].master));
  // On to step 4 from each checkpoint, swapped and in memory: the same weights (the moments
  // came through the swap files whole, or Adam's steps would differ).
  std::vector<RankRun> on = Run(4, Config(dir.Join("a"), 4), swapped(3), testing::ResumeFrom());
  std::vector<RankRun> on_memory =
      Run(4, Config(dir.Join("b"), 4), {"zero_optimization.stage=3"}, testing::ResumeFrom());
  ASSERT_RANKS_OK(on);
  ASSERT_RANKS_OK(on_memory);
  EXPECT_TRUE(torch::equal(on[0].master, on_memory[0].master));
  EXPECT_FALSE(torch::equal(on[0].master, saved[0].master));
  // Out of the swap files into memory on one rank: the weights they were saved with.
  std::vector<RankRun> one =
      Run(1, Config(dir.Join("a"), 4), {"zero_optimization.stage=0"}, testing::ResumeFrom());
  ASSERT_RANKS_OK(one);
  EXPECT_TRUE(torch::equal(one[0].master, on[0].master));
  DS_ASSERT_OK_AND_ASSIGN(std::vector<std::string> left, io::Env::Default()->ListDir(nvme.path()));
  EXPECT_TRUE(left.empty()) << "swap files left behind";
}

// Trains 2 steps of `set` on one rank over a FaultEnv, saves, and returns the third step's
// status with `rule` in force.
Status ResumeTest::StepWithAFailingSwap(const std::string& dir, const std::vector<std::string>& set,
                                        const io::FaultRule& rule) {
  io::FaultEnv env(io::Env::Default());
  Status third;
  testing::RunRanks(1, [&](int r, int port) {
    Result<std::unique_ptr<Trainer>> t =
        testing::MakeRankTrainer(Config(dir, 5), set, 1, r, port, corpus_.path(), &env);
    if (!t.ok()) {
      third = t.status();
      return;
    }
    for (int i = 0; i < 2; ++i) {
      if (Status s = (*t)->Step(); !s.ok()) third = s;
    }
    DS_EXPECT_OK((*t)->SaveCheckpoint("test"));
    (*t)->WaitForSaves();
    if (!third.ok()) return;
    env.AddRule(rule);
    third = (*t)->Step();
    env.ClearRules();
  });
  return third;
}

// A swap that fails mid-run (EIO on the moments' file) stops training with the rank, the file
// and the elements named, and the last committed checkpoint stays whole and resumes.
TEST_F(ResumeTest, AFailedSwapStopsTrainingNamingTheFileAndLeavesTheCheckpointWhole) {
  ds::testing::TempDir dir, nvme;
  const std::vector<std::string> set = {
      "zero_optimization.stage=2",
      "zero_optimization.offload_optimizer.device=nvme",
      "zero_optimization.offload_optimizer.nvme_path=" + nvme.path(),
      "checkpoint.save_interval_steps=1",
      "aio.block_size=4096",
      "aio.queue_depth=1"};
  // The third step's writes of exp_avg fail (each step writes it in several chunks).
  EXPECT_THAT(StepWithAFailingSwap(
                  dir.path(), set,
                  {.ops = io::kFaultWrite, .path_glob = "*/exp_avg.swap", .skip = 0, .count = -1}),
              ds::testing::StatusIs(StatusCode::kIOError,
                                    AllOf(HasSubstr("rank 0: writing exp_avg elements ["),
                                          HasSubstr("/rank-0/exp_avg.swap"),
                                          HasSubstr("the committed checkpoints are untouched"))));
  std::vector<RankRun> resumed = Run(1, Config(dir.path(), 3), set, testing::ResumeFrom());
  ASSERT_RANKS_OK(resumed);
  EXPECT_THAT(resumed[0].resumed, HasSubstr("at step 2"));
}

// Stage 3's parameters on NVMe: a read of the partition that fails (EIO) while a unit is
// gathered stops training with the rank, the file and the elements named; the committed
// checkpoint stays whole and resumes into the swapped layout.
TEST_F(ResumeTest, AFailedParameterSwapStopsTrainingNamingTheFileAndLeavesTheCheckpointWhole) {
  ds::testing::TempDir dir, nvme;
  const std::vector<std::string> set = {"zero_optimization.stage=3",
                                        "zero_optimization.offload_optimizer.device=cpu",
                                        "zero_optimization.offload_param.device=nvme",
                                        "zero_optimization.offload_param.nvme_path=" + nvme.path(),
                                        "checkpoint.save_interval_steps=1",
                                        "aio.block_size=4096",
                                        "aio.queue_depth=1"};
  EXPECT_THAT(StepWithAFailingSwap(
                  dir.path(), set,
                  {.ops = io::kFaultRead, .path_glob = "*/params.swap", .skip = 0, .count = -1}),
              ds::testing::StatusIs(StatusCode::kIOError,
                                    AllOf(HasSubstr("rank 0: reading params elements ["),
                                          HasSubstr("/rank-0/params.swap"),
                                          HasSubstr("the committed checkpoints are untouched"))));
  std::vector<RankRun> resumed = Run(1, Config(dir.path(), 3), set, testing::ResumeFrom());
  ASSERT_RANKS_OK(resumed);
  EXPECT_THAT(resumed[0].resumed, HasSubstr("at step 2"));
  DS_ASSERT_OK_AND_ASSIGN(std::vector<std::string> left, io::Env::Default()->ListDir(nvme.path()));
  EXPECT_TRUE(left.empty()) << "swap files left behind";
}

TEST_F(ResumeTest, BadResumesAreClearErrors) {
  ds::testing::TempDir dir;
  // Nothing saved yet.
  std::vector<RankRun> none = Run(1, Config(dir.path(), 2), {}, testing::ResumeFrom());
  EXPECT_THAT(none[0].status,
              ds::testing::StatusIs(StatusCode::kNotFound, HasSubstr("--resume latest")));
  ResumeOptions if_any = testing::ResumeFrom();
  if_any.if_any = true;
  std::vector<RankRun> fresh = Run(1, Config(dir.path(), 2), {}, if_any);  // saves step 2
  ASSERT_RANKS_OK(fresh);
  EXPECT_THAT(fresh[0].resumed, HasSubstr("starting fresh"));
  // Another model: the first differing tensor and both shapes.
  std::vector<RankRun> wider =
      Run(1, Config(dir.path(), 4), {"model.d_model=64"}, testing::ResumeFrom());
  EXPECT_THAT(wider[0].status,
              ds::testing::StatusIs(StatusCode::kInvalidArgument,
                                    HasSubstr("tensor master/wte.weight is [256, 32] there, "
                                              "[256, 64] in the model")));
  // A damaged newest checkpoint: the chunk is named; --fallback takes the older one.
  std::vector<RankRun> more =
      Run(1, Config(dir.path(), 4), {}, testing::ResumeFrom());  // saves step 4
  ASSERT_RANKS_OK(more);
  io::Env* env = io::Env::Default();
  const std::string shard = io::JoinPath(dir.path(), "checkpoints/step-00000004/rank-00000.dss");
  DS_ASSERT_OK_AND_ASSIGN(std::string bytes, env->ReadFileToString(shard));
  for (size_t i = 4096; i < bytes.size(); i += 997) bytes[i] = static_cast<char>(bytes[i] ^ 0x5a);
  ASSERT_TRUE(env->WriteFileSynced(shard, bytes).ok());
  std::vector<RankRun> damaged = Run(1, Config(dir.path(), 6), {}, testing::ResumeFrom());
  EXPECT_THAT(damaged[0].status,
              ds::testing::StatusIs(StatusCode::kCorruption, HasSubstr("chunk")));
  ResumeOptions fallback = testing::ResumeFrom();
  fallback.fallback = true;
  std::vector<RankRun> fell = Run(1, Config(dir.path(), 6), {}, fallback);
  ASSERT_RANKS_OK(fell);
  EXPECT_THAT(fell[0].resumed, HasSubstr("at step 2"));
  EXPECT_THAT(fell[0].resumed, HasSubstr("fell back from the damaged"));
}

// A clock that runs 20 s ahead at every reading: save_interval_minutes fires every few steps.
class FastClockEnv : public io::EnvWrapper {
 public:
  explicit FastClockEnv(io::Env* base) : io::EnvWrapper(base) {}
  uint64_t NowMicros() override { return target()->NowMicros() + 20'000'000 * ++readings_; }

 private:
  std::atomic<uint64_t> readings_{0};
};

TEST_F(ResumeTest, SavesEveryFewMinutesByTheClock) {
  ds::testing::TempDir dir;
  FastClockEnv clock(io::Env::Default());
  nlohmann::json j = Config(dir.path(), 6);
  j["checkpoint"]["save_interval_minutes"] = 1;
  // The save pipeline's waits (for the other ranks' parts) read the same fast clock: give them
  // a limit it cannot reach, so only the interval sees time fly.
  j["comms"]["timeout_s"] = 1'000'000'000;
  std::vector<RankRun> run = Run(2, j, {}, std::nullopt, &clock);
  ASSERT_RANKS_OK(run);
  // Steps read the clock several times (20 s each): saves come every step or two, and the
  // ranks, whose clocks differ, agree on each one.
  EXPECT_GE(run[0].summary.saves, 3);
  EXPECT_EQ(run[0].summary.saves, run[1].summary.saves);
}

TEST_F(ResumeTest, AFullDiskFailsOneSaveAndTrainingGoesOn) {
  ds::testing::TempDir dir;
  io::FaultEnv faulty(io::Env::Default());
  // The first save cannot even make its directory; the second fails in the background on its
  // first write (after the snapshot: training has moved on); then the disk has room again.
  faulty.AddRule({io::kFaultCreateDir, "*/checkpoints/*", 0, 1, io::FaultKind::kNoSpace});
  faulty.AddRule({io::kFaultWrite, "*/checkpoints/*", 0, 1, io::FaultKind::kNoSpace});
  nlohmann::json j = Config(dir.path(), 6);
  j["checkpoint"]["save_interval_steps"] = 2;
  std::vector<RankRun> run = Run(1, j, {}, std::nullopt, &faulty);
  ASSERT_RANKS_OK(run);
  EXPECT_EQ(run[0].summary.steps, 6);
  EXPECT_EQ(run[0].summary.failed_saves, 2);
  EXPECT_EQ(run[0].summary.saves, 1);  // step 6
  EXPECT_EQ(faulty.injected_count(), 2u);
  ckpt::Catalog catalog(io::Env::Default(), io::JoinPath(dir.path(), "checkpoints"));
  DS_ASSERT_OK_AND_ASSIGN(std::optional<std::string> latest, catalog.ReadLatest());
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(*latest, "step-00000006");
}

// The JSON blob trainer/state of a checkpoint (the step, the loss scaler, the sampler, ...).
nlohmann::json TrainerState(const std::string& checkpoint) {
  Result<std::unique_ptr<ckpt::CheckpointReader>> reader =
      ckpt::CheckpointReader::Open(io::Env::Default(), checkpoint);
  EXPECT_TRUE(reader.ok()) << reader.status().ToString();
  if (!reader.ok()) return nullptr;
  Result<std::string> blob = (*reader)->ReadBlob("trainer/state");
  EXPECT_TRUE(blob.ok()) << blob.status().ToString();
  return blob.ok() ? nlohmann::json::parse(*blob) : nullptr;
}

// Each step's training loss in <output_dir>/metrics.jsonl, by step.
std::map<int64_t, double> LossesByStep(const std::string& output_dir) {
  std::map<int64_t, double> out;
  Result<std::string> text =
      io::Env::Default()->ReadFileToString(io::JoinPath(output_dir, "metrics.jsonl"));
  EXPECT_TRUE(text.ok()) << text.status().ToString();
  std::istringstream lines(text.ok() ? *text : "");
  for (std::string line; std::getline(lines, line);) {
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("loss") && j["loss"].is_number() && j.contains("step"))
      out[j["step"].get<int64_t>()] = j["loss"].get<double>();
  }
  return out;
}

// fp16 with DeepSpeed's dynamic loss scaler: a scale of 2^20 overflows at first (hysteresis 2:
// the first overflow only uses up one delay, each later one halves the scale) until the
// gradients fit (2^17 on one rank, 2^16 on two), and a window of 2 doubles it after 2 clean
// steps. Saved at step 6, the scaler is mid-window with its hysteresis used up (one rank:
// scale 2^17, iteration 6, last overflow 3, hysteresis left 1) and Adam has taken steps.
// Resumed from there, the scaler's state in every later checkpoint, the skipped steps, every
// later step's loss and the final weights equal a run that never stopped, bit for bit.
TEST_F(ResumeTest, Fp16ResumeKeepsTheLossScalersStateBitForBit) {
  const std::vector<std::string> fp16 = {"fp16.enabled=true", "fp16.initial_scale_power=20",
                                         "fp16.loss_scale_window=2", "fp16.hysteresis=2"};
  for (auto [world, stage] : {std::pair{1, 0}, std::pair{2, 2}}) {
    SCOPED_TRACE("world " + std::to_string(world) + ", stage " + std::to_string(stage));
    std::vector<std::string> set = fp16;
    set.push_back("zero_optimization.stage=" + std::to_string(stage));
    ds::testing::TempDir straight_dir, split_dir;
    auto config = [&](const ds::testing::TempDir& dir, int64_t steps) {
      nlohmann::json j = Config(dir.path(), steps);
      j["checkpoint"]["save_interval_steps"] = 1;  // every step's state, to compare
      return j;
    };
    std::vector<RankRun> straight = Run(world, config(straight_dir, 12), set);
    ASSERT_RANKS_OK(straight);
    std::vector<RankRun> first = Run(world, config(split_dir, 6), set);
    ASSERT_RANKS_OK(first);
    auto checkpoint = [](const ds::testing::TempDir& dir, int64_t step) {
      return dir.Join("checkpoints/" + ckpt::TagForStep(step));
    };
    // The state the resume starts from is not the scaler's initial one.
    const nlohmann::json at6 = TrainerState(checkpoint(split_dir, 6));
    ASSERT_TRUE(at6.is_object());
    const nlohmann::json& ls = at6["loss_scaler"];
    std::printf("world %d: loss scaler at step 6: %s, %lld skipped\n", world, ls.dump().c_str(),
                static_cast<long long>(at6["skipped"].get<int64_t>()));
    EXPECT_NE(ls["scale"].get<double>(), 1 << 20) << ls;
    EXPECT_GE(ls["last_overflow_iteration"].get<int64_t>(), 0) << ls;
    EXPECT_GT(at6["skipped"].get<int64_t>(), 0);
    EXPECT_EQ(ls, TrainerState(checkpoint(straight_dir, 6))["loss_scaler"]);

    std::vector<RankRun> second = Run(world, config(split_dir, 12), set, testing::ResumeFrom());
    ASSERT_RANKS_OK(second);
    EXPECT_THAT(second[0].resumed, HasSubstr("at step 6"));
    bool scaler_moved_after_resume = false;
    for (int64_t step = 7; step <= 12; ++step) {
      const nlohmann::json a = TrainerState(checkpoint(straight_dir, step));
      const nlohmann::json b = TrainerState(checkpoint(split_dir, step));
      EXPECT_EQ(b["loss_scaler"], a["loss_scaler"]) << "step " << step;
      EXPECT_EQ(b["skipped"], a["skipped"]) << "step " << step;
      EXPECT_EQ(b["adam_steps"], a["adam_steps"]) << "step " << step;
      scaler_moved_after_resume |= a["loss_scaler"]["scale"] != ls["scale"];
    }
    EXPECT_TRUE(scaler_moved_after_resume) << "the scale never changed after step 6";
    const std::map<int64_t, double> want = LossesByStep(straight_dir.path());
    const std::map<int64_t, double> got = LossesByStep(split_dir.path());
    for (int64_t step = 7; step <= 12; ++step) {
      ASSERT_TRUE(want.count(step) && got.count(step)) << "no loss for step " << step;
      EXPECT_EQ(got.at(step), want.at(step)) << "step " << step;
    }
    EXPECT_EQ(second[0].summary.last_loss, straight[0].summary.last_loss);
    for (int r = 0; r < world; ++r) {
      EXPECT_TRUE(torch::equal(second[static_cast<size_t>(r)].master, straight[0].master))
          << "rank " << r;
    }
  }
}

}  // namespace
}  // namespace ds::engine
