// Tensor and pipeline parallelism over Gloo, ranks as threads of one process: TP=2, PP=2,
// TP=2 x PP=2 and TP=2 x DP=2 train to the losses and weights of one process reading the same
// samples; checkpoints saved in one layout resume bit-exact in another (through the one load
// planner, and through dsckpt's reshard); bad layouts are clear errors.
//
// Tolerances. Tensor parallelism sums each row-parallel product in two halves and adds them
// (Gloo's all-reduce), where one process sums all of it in one GEMM: fp32 rounding, ~1e-7
// relative per sum. The pipeline sums the tied embedding's gradient as (first stage's over the
// micro batches) + (last stage's), one process as the sum over micro batches of both: again
// rounding. Adam divides by sqrt(v), so an element whose gradient is near rounding level moves
// differently by up to lr per step; in practice, after 3 steps at lr 1e-3 the weights agree to
// 3.3e-6 (the MLP's column-parallel weights under TP). We allow 1e-5 absolute (lr / 100: a
// wrong gradient moves an element by ~lr per step, 100x more), and 1e-5 relative on the
// losses. Moving a checkpoint between layouts copies bytes: bit-exact.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <functional>
#include <nlohmann/json.hpp>

#include "ckpt/catalog.h"
#include "ckpt/diff.h"
#include "ckpt/reshard.h"
#include "engine/config/memory.h"
#include "engine/train/trainer.h"
#include "tests/engine/testing/rank_threads.h"
#include "tests/testing/matchers.h"

namespace ds::engine {
namespace {

using ::testing::HasSubstr;

struct RankRun {
  Status status;
  TrainSummary summary;
  std::string resumed;       // Resume's line
  std::string saved;         // the checkpoint saved right after resuming (save_after_resume)
  uint64_t param_bytes = 0;  // the model's parameters on this rank
};

class ParallelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { torch::set_num_threads(1); }

  // `micro`: samples per data-parallel rank per micro batch.
  nlohmann::json Config(const std::string& out, int64_t steps, int micro = 2) const {
    nlohmann::json j = nlohmann::json::parse(R"({
      "gradient_accumulation_steps": 4,
      "gradient_clipping": 0.5,
      "steps_per_print": 1,
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.1}},
      "model": {"n_layer": 4, "n_head": 4, "d_model": 32, "seq_len": 16, "vocab": 256},
      "data": {"path": "builtin", "val_fraction": 0.05},
      "comms": {"timeout_s": 60},
      "checkpoint": {"save_interval_steps": 0},
      "zero_optimization": {"reduce_bucket_size": 1000},
      "trainer": {"eval_interval": 3, "eval_iters": 2, "seed": 5}
    })");
    j["train_micro_batch_size_per_gpu"] = micro;
    j["trainer"]["max_steps"] = steps;
    j["trainer"]["output_dir"] = out;
    return j;
  }

  static std::vector<std::string> Layout(int tp, int pp, std::vector<std::string> more = {}) {
    more.push_back("tensor_parallel.autotp_size=" + std::to_string(tp));
    more.push_back("pipeline.stages=" + std::to_string(pp));
    return more;
  }

  // Trains `world` ranks (threads) on `j` plus `set`; resumes first when `resume` is given, and
  // then saves at once into `save_after_resume` when that is not empty.
  std::vector<RankRun> Run(int world, const nlohmann::json& j, const std::vector<std::string>& set,
                           std::optional<ResumeOptions> resume = std::nullopt,
                           const std::string& save_after_resume = "",
                           const std::function<void(int rank)>& before_run = nullptr) {
    std::vector<RankRun> out(static_cast<size_t>(world));
    testing::RunRanks(world, [&](int r, int port) {
      RankRun& res = out[static_cast<size_t>(r)];
      Result<std::unique_ptr<Trainer>> t =
          testing::MakeRankTrainer(j, set, world, r, port, corpus_.path());
      if (!t.ok()) {
        res.status = t.status();
        return;
      }
      if (before_run) before_run(r);
      if (resume) {
        Result<std::string> line = (*t)->Resume(*resume);
        if (!line.ok()) {
          res.status = line.status();
          return;
        }
        res.resumed = *line;
      }
      if (!save_after_resume.empty()) {
        res.status = (*t)->SaveCheckpoint("test");
        (*t)->WaitForSaves();
        if (std::optional<ckpt::SaveStats> st = (*t)->last_save()) res.saved = st->path;
        return;
      }
      Result<TrainSummary> s = (*t)->Run();
      if (!s.ok()) {
        res.status = s.status();
        return;
      }
      res.summary = *s;
      res.param_bytes = (*t)->model_state().params;
    });
    return out;
  }

  static ds::testing::TempDir corpus_;
};
ds::testing::TempDir ParallelTest::corpus_;

using testing::LatestIn;

// Every tensor of two checkpoints: equal within `atol` (0: bit-exact).
void ExpectSameTensors(const std::string& a, const std::string& b, double atol) {
  testing::ExpectSameTensors(a, b, atol, 40);  // 4 blocks x 12 parameters x 3 buffers, and more
}

TEST_F(ParallelTest, LayoutsTrainLikeOneProcess) {
  struct Case {
    int tp, pp, dp, stage;
    std::string extra = "";  // one more --set
  };
  // Activation checkpointing recomputes blocks exactly: the same reference.
  const Case cases[] = {{2, 1, 1, 0},
                        {1, 2, 1, 0},
                        {2, 2, 1, 1},
                        {2, 1, 2, 1},
                        {2, 1, 2, 2},
                        {1, 2, 2, 1},
                        {2, 2, 1, 0, "model.activation_checkpointing=true"},
                        {2, 2, 1, 1, "zero_optimization.offload_optimizer.device=cpu"}};
  // The reference: one process reading the data-parallel ranks' micro batches at once.
  std::map<int, std::pair<TrainSummary, std::string>> reference;  // by data-parallel size
  ds::testing::TempDir reference_dirs[2];
  for (int dp : {1, 2}) {
    const std::string dir = reference_dirs[dp - 1].path();
    std::vector<RankRun> one = Run(1, Config(dir, 3, 2 * dp), {});
    ASSERT_RANKS_OK(one);
    reference[dp] = {one[0].summary, LatestIn(dir)};
  }
  for (const Case& k : cases) {
    const int world = k.tp * k.pp * k.dp;
    SCOPED_TRACE("TP " + std::to_string(k.tp) + " x PP " + std::to_string(k.pp) + " x DP " +
                 std::to_string(k.dp) + ", stage " + std::to_string(k.stage) + " " + k.extra);
    ds::testing::TempDir dir;
    std::vector<std::string> set = {"zero_optimization.stage=" + std::to_string(k.stage)};
    if (!k.extra.empty()) set.push_back(k.extra);
    std::vector<RankRun> got = Run(world, Config(dir.path(), 3), Layout(k.tp, k.pp, set));
    ASSERT_RANKS_OK(got);
    const TrainSummary& ref = reference[k.dp].first;
    for (int r = 0; r < world; ++r) {
      const TrainSummary& s = got[static_cast<size_t>(r)].summary;
      EXPECT_NEAR(s.first_loss, ref.first_loss, 1e-5 * ref.first_loss) << "rank " << r;
      EXPECT_NEAR(s.last_loss, ref.last_loss, 1e-5 * ref.last_loss) << "rank " << r;
      ASSERT_TRUE(s.last_eval_loss && ref.last_eval_loss) << "rank " << r;
      EXPECT_NEAR(*s.last_eval_loss, *ref.last_eval_loss, 1e-5 * *ref.last_eval_loss);
    }
    EXPECT_LT(got[0].summary.last_loss, got[0].summary.first_loss);
    // dsrun --dry-run's memory table counts the rank that holds the most (fp32: 4 bytes each).
    uint64_t most = 0;
    for (const RankRun& run : got) most = std::max(most, run.param_bytes);
    Overrides o;
    o.set = Layout(k.tp, k.pp);
    o.world_size = world;
    Result<engine::Config> c = ParseConfig(Config(dir.path(), 3).dump(), o, "cfg.json");
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(most, 4 * static_cast<uint64_t>(ParametersOnLargestRank(c->model, c->parallel)));
    ExpectSameTensors(LatestIn(dir.path()), reference[k.dp].second, 1e-5);
  }
}

// bf16: tensor parallelism sums the row-parallel halves in bf16 (one process accumulates the
// whole GEMM in fp32), so the losses agree only to bf16's precision; we allow 1% (a missing
// all-reduce or a wrong head changes the first loss by far more).
TEST_F(ParallelTest, Bf16TrainsLikeOneProcessWithinItsPrecision) {
  ds::testing::TempDir one_dir, split_dir;
  std::vector<RankRun> one = Run(1, Config(one_dir.path(), 3), {"bf16.enabled=true"});
  ASSERT_RANKS_OK(one);
  std::vector<RankRun> split =
      Run(4, Config(split_dir.path(), 3), Layout(2, 2, {"bf16.enabled=true"}));
  ASSERT_RANKS_OK(split);
  EXPECT_NEAR(split[0].summary.first_loss, one[0].summary.first_loss,
              1e-2 * one[0].summary.first_loss);
  EXPECT_NEAR(split[0].summary.last_loss, one[0].summary.last_loss,
              1e-2 * one[0].summary.last_loss);
  EXPECT_LT(split[0].summary.last_loss, split[0].summary.first_loss);
}

TEST_F(ParallelTest, CheckpointsMoveBetweenLayoutsBitExact) {
  struct Move {
    int from_tp, from_pp, to_tp, to_pp;
  };
  for (const Move& m : {Move{2, 2, 1, 1}, Move{1, 1, 2, 2}, Move{2, 1, 1, 2}}) {
    SCOPED_TRACE("TP " + std::to_string(m.from_tp) + " x PP " + std::to_string(m.from_pp) +
                 " -> TP " + std::to_string(m.to_tp) + " x PP " + std::to_string(m.to_pp));
    ds::testing::TempDir dir, again;
    std::vector<RankRun> saved =
        Run(m.from_tp * m.from_pp, Config(dir.path(), 2), Layout(m.from_tp, m.from_pp));
    ASSERT_RANKS_OK(saved);
    nlohmann::json j = Config(dir.path(), 2);
    j["checkpoint"]["save_dir"] = again.path();
    ResumeOptions from = testing::ResumeFrom(LatestIn(dir.path()));
    std::vector<RankRun> moved =
        Run(m.to_tp * m.to_pp, j, Layout(m.to_tp, m.to_pp), from, "save at once");
    ASSERT_RANKS_OK(moved);
    EXPECT_THAT(moved[0].resumed, HasSubstr("at step 2"));
    ExpectSameTensors(LatestIn(dir.path()), moved[0].saved, 0);
    // ... and trains on from there.
    std::vector<RankRun> on = Run(m.to_tp * m.to_pp, Config(dir.path(), 4),
                                  Layout(m.to_tp, m.to_pp), testing::ResumeFrom());
    ASSERT_RANKS_OK(on);
    EXPECT_EQ(on[0].summary.steps, 4);
  }
}

TEST_F(ParallelTest, DsckptReshardCutsAOneRankCheckpointForTensorParallelism) {
  ds::testing::TempDir dir, again;
  std::vector<RankRun> one = Run(1, Config(dir.path(), 2), {});
  ASSERT_RANKS_OK(one);
  ckpt::ReshardOptions o;
  o.layout.world_size = 2;
  o.layout.tp_degree = 2;
  o.layout.zero_stage = 1;
  o.out = again.path() + "/step-00000002";
  Result<ckpt::ReshardResult> r = ckpt::Reshard(io::Env::Default(), LatestIn(dir.path()), o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ExpectSameTensors(LatestIn(dir.path()), r->path, 0);
  // A TP=2 run resumes it, and saves what it read.
  ds::testing::TempDir third;
  nlohmann::json j = Config(dir.path(), 2);
  j["checkpoint"]["save_dir"] = third.path();
  ResumeOptions from;
  from.from = r->path;
  std::vector<RankRun> moved =
      Run(2, j, Layout(2, 1, {"zero_optimization.stage=1"}), from, "save at once");
  ASSERT_RANKS_OK(moved);
  EXPECT_THAT(moved[0].resumed, HasSubstr("at step 2"));
  ExpectSameTensors(r->path, moved[0].saved, 0);
}

// A stage that stops answering: the stage waiting for it fails within the timeout, naming the
// message it waited for, the pipeline's group with its global ranks, and who is behind.
TEST_F(ParallelTest, AStageThatStopsAnsweringEndsTheOtherWithTheMessageNamed) {
  ds::testing::TempDir dir;
  nlohmann::json j = Config(dir.path(), 3);
  j["comms"]["timeout_s"] = 3;
  const uint64_t t0 = io::Env::Default()->NowMicros();
  std::vector<RankRun> got = Run(2, j, Layout(1, 2), std::nullopt, "", [](int rank) {
    if (rank == 1) ::sleep(6);  // the last stage stops for twice the timeout, then goes on
  });
  const double seconds = static_cast<double>(io::Env::Default()->NowMicros() - t0) / 1e6;
  EXPECT_THAT(got[0].status,
              ds::testing::StatusIs(StatusCode::kUnavailable, HasSubstr("timed out after 3 s")));
  EXPECT_THAT(got[0].status.message(),
              HasSubstr("recv of 4.0 KiB across group pipe-0-0 (global ranks 0, 1) (gloo) of "
                        "gradients of micro batch 0"));
  EXPECT_THAT(got[0].status.message(), HasSubstr("rank 1 is alive but"));
  EXPECT_LT(seconds, 30);
}

TEST_F(ParallelTest, LayoutsThatCannotWorkAreClearErrors) {
  ds::testing::TempDir dir;
  struct Bad {
    int world;
    std::vector<std::string> set;
    const char* says;
  };
  const Bad bad[] = {
      {3, Layout(2, 1), "does not divide the world size 3"},
      {3, Layout(3, 1), "must divide model.n_head (4)"},
      {8, Layout(1, 8), "more than model.n_layer (4)"},
      {2, Layout(2, 1, {"zero_optimization.stage=3"}), "stage 0, 1 or 2, not 3"},
      {2, Layout(1, 2, {"zero_optimization.stage=2"}), "stage 0 or 1, not 2"},
      {2, Layout(2, 1, {"model.arch=bigram"}), "only the built-in GPT"},
      {2, {"pipeline.stages=0"}, "positive integer"},
  };
  for (const Bad& b : bad) {
    Overrides o;
    o.set = b.set;
    o.world_size = b.world;
    Result<engine::Config> c = ParseConfig(Config(dir.path(), 1).dump(), o, "cfg.json");
    EXPECT_FALSE(c.ok()) << b.says;
    if (!c.ok()) {
      EXPECT_THAT(c.status().message(), HasSubstr(b.says));
    }
  }
  Overrides ok;
  ok.set = Layout(2, 2);
  ok.world_size = 8;
  Result<engine::Config> c = ParseConfig(Config(dir.path(), 1).dump(), ok, "cfg.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->parallel.dp, 2);
  EXPECT_EQ(c->batch.train_batch_size, 2 * 4 * 2);  // micro x accumulation x data-parallel
}

}  // namespace
}  // namespace ds::engine
