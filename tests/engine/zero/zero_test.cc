// ZeRO over Gloo with ranks as threads of one process (each rank its own Trainer, process group
// and TCPStore client): every stage at world sizes 1, 2 and 4, with and without CPU offload,
// trains to the weights and losses of one process that reads the same samples; memory per rank
// falls as the stage says; a rank that stops answering ends the others' steps with an error
// naming the collective instead of a hang.
//
// Tolerances: one rank reproduces the single process bit for bit at every stage (the same sums
// in the same order; stage 3's recomputed units are the same kernels on the same inputs).
// Several ranks sum the same gradients in another order (Gloo's ring, then a division by the
// world size instead of a mean over a larger batch): fp32 rounding, ~1e-7 relative per sum.
// Adam divides by sqrt(v), so an element whose gradient is at rounding level may move by up to
// lr per step differently; in practice (3 steps at lr 1e-3) weights agree to within 7e-7. We
// allow 2e-6 absolute on the weights (lr / 500) and 1e-5 relative on the losses.
#include "engine/zero/zero.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <torch/torch.h>
#include <unistd.h>

#include <limits>
#include <nlohmann/json.hpp>
#include <thread>

#include "engine/config/memory.h"
#include "engine/model/model.h"
#include "engine/train/trainer.h"
#include "tests/engine/testing/rank_threads.h"
#include "tests/testing/matchers.h"

namespace ds::engine {
namespace {

using ::testing::HasSubstr;

struct RankResult {
  Status status;
  TrainSummary summary;
  torch::Tensor master;  // fp32, every parameter
  ModelStateBytes memory;
};

class ZeroTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { torch::set_num_threads(1); }

  // micro batch per rank, so a world of W reads micro * W windows per micro step.
  nlohmann::json BaseConfig(int micro) const {
    nlohmann::json j = nlohmann::json::parse(R"({
      "gradient_accumulation_steps": 2,
      "gradient_clipping": 0.5,
      "steps_per_print": 1,
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.1}},
      "model": {"n_layer": 2, "n_head": 2, "d_model": 32, "seq_len": 16, "vocab": 256},
      "data": {"path": "builtin", "val_fraction": 0.05},
      "comms": {"timeout_s": 60},
      "trainer": {"max_steps": 3, "eval_interval": 0, "eval_iters": 2, "seed": 5}
    })");
    j["train_micro_batch_size_per_gpu"] = micro;
    // Small buckets and no persistence, so the tiny model still crosses buckets and units.
    j["zero_optimization"] = {{"reduce_bucket_size", 1000},
                              {"stage3_param_persistence_threshold", 0},
                              {"stage3_prefetch_bucket_size", 1000}};
    return j;
  }

  // Trains `world` ranks as threads; each rank's config is `j` with `set` applied.
  std::vector<RankResult> Train(int world, nlohmann::json j, const std::vector<std::string>& set,
                                const std::function<void(int, Trainer&)>& before_run = nullptr) {
    std::vector<RankResult> out(static_cast<size_t>(world));
    std::vector<ds::testing::TempDir> dirs(static_cast<size_t>(world));
    testing::RunRanks(world, [&](int r, int port) {
      RankResult& res = out[static_cast<size_t>(r)];
      nlohmann::json mine = j;
      mine["trainer"]["output_dir"] = dirs[static_cast<size_t>(r)].path();
      // A save is one directory every rank writes into (the final save must commit).
      mine["checkpoint"]["save_dir"] = dirs[0].Join("checkpoints");
      Result<std::unique_ptr<Trainer>> t =
          testing::MakeRankTrainer(mine, set, world, r, port, corpus_.path());
      if (!t.ok()) {
        res.status = t.status();
        return;
      }
      if (before_run) before_run(r, **t);
      Result<TrainSummary> s = (*t)->Run();
      if (!s.ok()) {
        res.status = s.status();
        return;
      }
      res.summary = *s;
      res.memory = (*t)->model_state();
      Result<torch::Tensor> m = (*t)->GatherMaster();
      if (m.ok()) res.master = *m;
      res.status = m.status();
    });
    return out;
  }

  static ds::testing::TempDir corpus_;
};
ds::testing::TempDir ZeroTest::corpus_;

TEST_F(ZeroTest, EveryStageAndWorldSizeTrainsLikeOneProcess) {
  struct Case {
    int world;
    int stage;
    bool offload;
    bool overlap = false;     // stage 1: buckets reduced during the last micro batch's backward
    bool nvme = false;        // the optimizer state in swap files, streamed in 1024-float chunks
    bool param_nvme = false;  // stage 3's parameter partition in a swap file too
  };
  std::vector<Case> cases;
  for (int world : {1, 2, 4}) {
    for (int stage : {0, 1, 2, 3}) cases.push_back({world, stage, false});
    cases.push_back({world, 2, true});
    cases.push_back({world, 3, true});
    cases.push_back({world, 1, false, true});
    cases.push_back({world, 1, true, true});
    for (int stage : {1, 2, 3}) cases.push_back({world, stage, true, false, true});
    cases.push_back({world, 3, true, false, false, true});  // optimizer on the CPU
    cases.push_back({world, 3, true, false, true, true});   // both on NVMe
  }
  ds::testing::TempDir nvme;
  // The reference: one process reading the world's micro batches at once, at stage 0.
  std::map<int, RankResult> reference;
  for (int world : {1, 2, 4}) {
    std::vector<RankResult> one = Train(1, BaseConfig(2 * world), {});
    ASSERT_TRUE(one[0].status.ok()) << one[0].status.ToString();
    reference[world] = one[0];
  }
  for (const Case& k : cases) {
    SCOPED_TRACE("world " + std::to_string(k.world) + ", stage " + std::to_string(k.stage) +
                 (k.offload ? (k.nvme ? ", NVMe offload" : ", CPU offload") : "") +
                 (k.param_nvme ? ", parameters on NVMe" : "") +
                 (k.overlap ? ", overlap_comm" : ""));
    std::vector<std::string> set = {"zero_optimization.stage=" + std::to_string(k.stage)};
    if (k.overlap) set.push_back("zero_optimization.overlap_comm=true");
    if (k.offload) {
      set.push_back("zero_optimization.offload_optimizer.device=" +
                    std::string(k.nvme ? "nvme" : "cpu"));
      if (k.stage == 3) {
        set.push_back("zero_optimization.offload_param.device=" +
                      std::string(k.param_nvme ? "nvme" : "cpu"));
      }
    }
    if (k.param_nvme) {
      set.insert(set.end(), {"zero_optimization.offload_param.nvme_path=" + nvme.path(),
                             "aio.block_size=4096", "aio.queue_depth=1"});
    }
    if (k.nvme) {
      set.insert(set.end(), {"zero_optimization.offload_optimizer.nvme_path=" + nvme.path(),
                             "aio.block_size=4096", "aio.queue_depth=1"});
    }
    std::vector<RankResult> got = Train(k.world, BaseConfig(2), set);
    const RankResult& ref = reference[k.world];
    for (int r = 0; r < k.world; ++r) {
      const RankResult& g = got[static_cast<size_t>(r)];
      ASSERT_TRUE(g.status.ok()) << "rank " << r << ": " << g.status.ToString();
      ASSERT_EQ(g.master.numel(), ref.master.numel());
      if (k.world == 1) {
        EXPECT_TRUE(torch::equal(g.master, ref.master)) << "rank " << r;
        EXPECT_EQ(g.summary.first_loss, ref.summary.first_loss);
        EXPECT_EQ(g.summary.last_loss, ref.summary.last_loss);
      } else {
        const double diff = (g.master - ref.master).abs().max().item<double>();
        EXPECT_LE(diff, 2e-6) << "rank " << r;
        if (r == 0)
          std::printf("world %d stage %d: max |weight - reference| %.3g\n", k.world, k.stage, diff);
        EXPECT_NEAR(g.summary.first_loss, ref.summary.first_loss, 1e-5 * ref.summary.first_loss);
        EXPECT_NEAR(g.summary.last_loss, ref.summary.last_loss, 1e-5 * ref.summary.last_loss);
      }
      // Training moved the weights away from where they started.
      EXPECT_LT(g.summary.last_loss, g.summary.first_loss);
      if (k.nvme || k.param_nvme) {
        EXPECT_GT(g.memory.on_nvme, 0u) << "rank " << r;
      }
    }
    // The swap files are gone with the run.
    DS_ASSERT_OK_AND_ASSIGN(std::vector<std::string> left,
                            io::Env::Default()->ListDir(nvme.path()));
    EXPECT_TRUE(left.empty()) << left.size() << " entries left in " << nvme.path();
  }
}

// A model whose second table is used by the first micro batch of a step only: with stage 1's
// buckets filled during the last micro batch's backward, that table's gradient never arrives
// there and must still be sent from the accumulator (the first micro batch's part).
class AlternatingTables : public LanguageModel {
 public:
  explicit AlternatingTables(int64_t vocab) : vocab_(vocab) {
    a_ = register_module("a", torch::nn::Embedding(vocab, vocab));
    b_ = register_module("b", torch::nn::Embedding(vocab, vocab));
  }
  torch::Tensor loss(const torch::Tensor& idx, const torch::Tensor& targets) override {
    torch::Tensor logits = a_(idx);
    if (calls_++ % 2 == 0) logits = logits + b_(idx);  // micro batch 0 of each step (gas 2)
    return torch::nn::functional::cross_entropy(logits.view({-1, vocab_}).to(torch::kFloat32),
                                                targets.reshape({-1}));
  }

 private:
  int64_t vocab_;
  int64_t calls_ = 0;
  torch::nn::Embedding a_{nullptr}, b_{nullptr};
};

TEST_F(ZeroTest, Stage1BucketsCarryGradientsTheLastMicroBatchDidNotTouch) {
  RegisterModel(
      "test-alternating",
      [](const ModelConfig& c, uint64_t seed) -> Result<std::shared_ptr<LanguageModel>> {
        torch::manual_seed(seed);
        return std::shared_ptr<LanguageModel>(std::make_shared<AlternatingTables>(c.vocab));
      });
  const std::vector<std::string> model = {"model.arch=test-alternating"};
  std::vector<RankResult> one = Train(1, BaseConfig(4), model);
  ASSERT_TRUE(one[0].status.ok()) << one[0].status.ToString();
  std::vector<std::string> set = model;
  set.insert(set.end(), {"zero_optimization.stage=1", "zero_optimization.overlap_comm=true"});
  std::vector<RankResult> two = Train(2, BaseConfig(2), set);
  for (int r = 0; r < 2; ++r) {
    const RankResult& g = two[static_cast<size_t>(r)];
    ASSERT_TRUE(g.status.ok()) << "rank " << r << ": " << g.status.ToString();
    EXPECT_LE((g.master - one[0].master).abs().max().item<double>(), 2e-6) << "rank " << r;
  }
  // (Had the first micro batch's part of table b been dropped, its Adam steps would differ by
  // up to lr = 1e-3 per step from the reference's.)
}

TEST_F(ZeroTest, MemoryPerRankFallsWithTheStage) {
  std::map<int, ModelStateBytes> at;
  for (int stage : {0, 1, 2, 3}) {
    const std::vector<std::string> set = {"zero_optimization.stage=" + std::to_string(stage)};
    std::vector<RankResult> got = Train(4, BaseConfig(2), set);
    ASSERT_TRUE(got[1].status.ok()) << got[1].status.ToString();
    at[stage] = got[1].memory;
    // dsrun --dry-run's estimate is what the engine holds, up to partition padding.
    Overrides o;
    o.set = set;
    o.world_size = 4;
    DS_ASSERT_OK_AND_ASSIGN(Config c, ParseConfig(BaseConfig(2).dump(), o, "zero-test.json"));
    const MemoryEstimate e = EstimateMemory(c.model, 4, c.zero, c.precision());
    const double estimated = static_cast<double>(e.params + e.grads + e.optimizer);
    EXPECT_NEAR(static_cast<double>(at[stage].total()) / estimated, 1.0, stage == 3 ? 0.15 : 0.02)
        << "stage " << stage;
  }
  const double opt0 = static_cast<double>(at[0].optimizer),
               grads0 = static_cast<double>(at[0].grads);
  const double params0 = static_cast<double>(at[0].params);
  // Padding to world_size * alignment adds a little to each partition.
  EXPECT_NEAR(static_cast<double>(at[1].optimizer) / opt0, 0.25, 0.02);
  EXPECT_EQ(at[1].params, at[0].params);
  EXPECT_NEAR(static_cast<double>(at[2].grads) / grads0, 0.25, 0.02);
  EXPECT_NEAR(static_cast<double>(at[2].optimizer) / opt0, 0.25, 0.02);
  // Stage 3: parameters outside the step are partitions (per tensor, so more padding).
  EXPECT_LT(static_cast<double>(at[3].params) / params0, 0.35);
  EXPECT_LT(static_cast<double>(at[3].optimizer) / opt0, 0.35);
}

TEST_F(ZeroTest, GradientCompressionAndPredivisionAgreeWithThePlainAverage) {
  std::vector<RankResult> plain = Train(2, BaseConfig(2), {"zero_optimization.stage=2"});
  ASSERT_TRUE(plain[0].status.ok()) << plain[0].status.ToString();
  for (const std::vector<std::string>& set :
       {std::vector<std::string>{"prescale_gradients=true"},
        std::vector<std::string>{"gradient_predivide_factor=2.0"},
        std::vector<std::string>{"gradient_predivide_factor=4.0"}}) {
    SCOPED_TRACE(set[0]);
    std::vector<std::string> all = set;
    all.push_back("zero_optimization.stage=2");
    std::vector<RankResult> got = Train(2, BaseConfig(2), all);
    ASSERT_TRUE(got[0].status.ok()) << got[0].status.ToString();
    EXPECT_LE((got[0].master - plain[0].master).abs().max().item<double>(), 2e-6);
  }
  // bf16 on the wire: 8 bits of mantissa, so only close, and not equal.
  std::vector<RankResult> bf16 =
      Train(2, BaseConfig(2), {"zero_optimization.stage=1", "communication_data_type=\"bf16\""});
  ASSERT_TRUE(bf16[0].status.ok()) << bf16[0].status.ToString();
  const double diff = (bf16[0].master - plain[0].master).abs().max().item<double>();
  EXPECT_GT(diff, 0.0);
  EXPECT_LT(diff, 3e-3);  // lr 1e-3, 3 steps
}

TEST_F(ZeroTest, ARankThatStopsAnsweringEndsTheOthersWithTheCollectiveNamed) {
  nlohmann::json j = BaseConfig(2);
  j["comms"]["timeout_s"] = 3;
  const uint64_t t0 = io::Env::Default()->NowMicros();
  std::vector<RankResult> got = Train(2, j, {"zero_optimization.stage=2"}, [&](int rank, Trainer&) {
    if (rank == 1) ::sleep(6);  // rank 1 stops answering for twice the timeout, then goes on
  });
  const double seconds = static_cast<double>(io::Env::Default()->NowMicros() - t0) / 1e6;
  EXPECT_THAT(got[0].status,
              ds::testing::StatusIs(StatusCode::kUnavailable, HasSubstr("timed out after 3 s")));
  EXPECT_THAT(got[0].status.message(), HasSubstr("rank 0: reduce of"));
  // Rank 1's heartbeat thread still posts, so it is alive but has not called the collective.
  EXPECT_THAT(got[0].status.message(), HasSubstr("rank 1 is alive but 1 collective(s) behind"));
  EXPECT_LT(seconds, 30);
}

}  // namespace
}  // namespace ds::engine

namespace ds::engine {
namespace {

// A step decided on the device (no host read): non-finite gradients leave the weights, the
// moments and Adam's count as they were, and report the overflow; the next finite step counts
// as Adam's first. The same as the host-read path, which fp16 uses.
TEST(ZeroStepTest, AnOverflowSkipsTheStepOnTheDeviceAsOnTheHost) {
  for (bool read_now : {false, true}) {
    SCOPED_TRACE(read_now ? "read now" : "read later");
    ModelConfig mc;
    mc.n_layer = 1;
    mc.n_head = 2;
    mc.d_model = 16;
    mc.seq_len = 8;
    mc.vocab = 32;
    DS_ASSERT_OK_AND_ASSIGN(std::shared_ptr<LanguageModel> model, MakeModel(mc, 3));
    ZeroOptions o;
    o.stage = 1;
    DS_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ZeroOptimizer> z, ZeroOptimizer::Create(model, o));
    const torch::Tensor before = z->master().clone();
    auto backward = [&](double fill) {
      ASSERT_TRUE(z->BeginMicroStep().ok());
      for (auto& p : model->parameters()) p.mutable_grad() = torch::full_like(p, fill);
      ASSERT_TRUE(z->EndMicroStep(true).ok());
    };
    backward(std::numeric_limits<double>::infinity());
    DS_ASSERT_OK_AND_ASSIGN(ZeroStepResult bad,
                            z->Step(1e-2, std::nullopt, 1.0, 1.0, true, read_now));
    EXPECT_EQ(bad.read, read_now);
    EXPECT_EQ(bad.overflow_t.item<float>(), 1.0f);
    EXPECT_EQ(bad.overflow, read_now);
    EXPECT_TRUE(torch::equal(z->master(), before));
    EXPECT_EQ(z->exp_avg().abs().sum().item<float>(), 0.0f);
    EXPECT_EQ(z->adam_steps(), 0);
    backward(0.5);
    DS_ASSERT_OK_AND_ASSIGN(ZeroStepResult good,
                            z->Step(1e-2, std::nullopt, 1.0, 0.0, true, read_now));
    EXPECT_EQ(good.overflow_t.item<float>(), 0.0f);
    EXPECT_FALSE(good.overflow);
    EXPECT_EQ(z->adam_steps(), 1);
    // Adam's first step moves every element by lr (the gradient's sign) before weight decay.
    EXPECT_NEAR((before - z->master()).abs().max().item<float>(), 1e-2, 1e-5);
    for (const auto& p : model->named_parameters()) {
      EXPECT_FALSE(p.value().grad().defined() && p.value().grad().abs().sum().item<float>() != 0)
          << p.key();
    }
  }
}

}  // namespace
}  // namespace ds::engine
