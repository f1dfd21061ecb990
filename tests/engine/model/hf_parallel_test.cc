// Hugging Face families split across ranks (engine/model/split.h), ranks as threads over Gloo:
// a Llama folder (grouped-query attention, untied head) and a Qwen2 folder (q/k/v biases, tied
// embeddings) under tensor parallelism, pipeline stages and both, a GPT-2 folder in pipeline
// stages, train to the losses and weights of one process reading the same samples; a split
// checkpoint resumes bit-exact in one process and exports to a folder transformers loads with
// our logits; layouts a folder cannot take are refused with every reason at once.
//
// Tolerances as in tests/engine/train/parallel_test.cc (which says why): 1e-5 relative on the
// losses; on the weights after 3 steps at lr 1e-3, rounding moved one element of the Llama's
// row-parallel down_proj by 1.04e-5 (Adam on a gradient near rounding level), so we allow 5e-5
// absolute: lr / 20, where a wrong or missing sum moves elements by about lr per step.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "engine/config/memory.h"
#include "tests/engine/model/hf_test_util.h"
#include "tests/engine/testing/rank_threads.h"
#include "tests/testing/matchers.h"

namespace ds::engine {
namespace {

using ::testing::HasSubstr;
using testing::MakeFolder;

struct RankRun {
  Status status;
  TrainSummary summary;
  std::string resumed;       // Resume's line
  uint64_t param_bytes = 0;  // the model's parameters on this rank
};

class HfParallelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { torch::set_num_threads(1); }

  // The user's DeepSpeed file for `folder`, written under `out`: 4 micro batches of 2 per step.
  static std::string WriteConfig(const std::string& folder, const std::string& out, int steps) {
    nlohmann::json j = nlohmann::json::parse(R"({
      "train_micro_batch_size_per_gpu": 2,
      "gradient_accumulation_steps": 4,
      "gradient_clipping": 0.5,
      "optimizer": {"type": "AdamW", "params": {"lr": 0.001, "weight_decay": 0.1}},
      "data": {"path": "builtin", "val_fraction": 0.05},
      "comms": {"timeout_s": 60},
      "checkpoint": {"save_interval_steps": 0},
      "tensorboard": {"enabled": false},
      "trainer": {"eval_interval": 3, "eval_iters": 2, "seed": 5}
    })");
    j["model"] = {{"hf_path", folder}, {"seq_len", 12}};
    j["trainer"]["max_steps"] = steps;
    j["trainer"]["output_dir"] = out;
    const std::string file = out + "/ds_config.json";
    EXPECT_TRUE(io::Env::Default()->WriteFileSynced(file, j.dump()).ok());
    return file;
  }

  // Trains `tp` x `pp` ranks (threads) on `file` plus `set`; resumes first when `resume` is
  // given (then only Resume runs, and a save right after it).
  std::vector<RankRun> Run(const std::string& file, int tp, int pp, std::vector<std::string> set,
                           std::optional<ResumeOptions> resume = std::nullopt) {
    set.push_back("tensor_parallel.autotp_size=" + std::to_string(tp));
    set.push_back("pipeline.stages=" + std::to_string(pp));
    const int world = tp * pp;
    std::vector<RankRun> out(static_cast<size_t>(world));
    testing::RunRanks(world, [&](int r, int port) {
      RankRun& res = out[static_cast<size_t>(r)];
      Result<std::unique_ptr<Trainer>> t = testing::MakeRankTrainerFromFile(
          file, set, world, r, port, corpus_.path(), resume.has_value());
      if (!t.ok()) {
        res.status = t.status();
        return;
      }
      if (resume) {
        Result<std::string> line = (*t)->Resume(*resume);
        res.status = line.ok() ? (*t)->SaveCheckpoint("moved") : line.status();
        if (line.ok()) res.resumed = *line;
        (*t)->WaitForSaves();
        return;
      }
      Result<TrainSummary> s = (*t)->Run();
      res.status = s.status();
      if (s.ok()) res.summary = *s;
      res.param_bytes = (*t)->model_state().params;
    });
    return out;
  }

  struct Layout {
    int tp, pp, stage;
    std::vector<std::string> more = {};  // more --set items
  };
  // Every layout of `cases` against one process, for `variant`'s folder.
  void ExpectLayoutsTrainLikeOneProcess(const std::string& variant,
                                        const std::vector<Layout>& cases) {
    DS_SKIP_OR_FAIL_WITHOUT_PYTHON("transformers, safetensors");
    ds::testing::TempDir folder, one;
    MakeFolder(folder.path(), variant);
    if (HasFatalFailure()) return;
    std::vector<RankRun> ref = Run(WriteConfig(folder.path(), one.path(), 3), 1, 1, {});
    ASSERT_RANKS_OK(ref);
    const TrainSummary& want = ref[0].summary;
    for (const auto& [tp, pp, stage, more] : cases) {
      std::string extra;
      for (const std::string& m : more) extra += " " + m;
      SCOPED_TRACE(variant + ": TP " + std::to_string(tp) + " x PP " + std::to_string(pp) +
                   ", stage " + std::to_string(stage) + extra);
      ds::testing::TempDir dir;
      std::vector<std::string> set = more;
      set.push_back("zero_optimization.stage=" + std::to_string(stage));
      std::vector<RankRun> got = Run(WriteConfig(folder.path(), dir.path(), 3), tp, pp, set);
      ASSERT_RANKS_OK(got);
      for (size_t r = 0; r < got.size(); ++r) {
        const TrainSummary& s = got[r].summary;
        EXPECT_NEAR(s.first_loss, want.first_loss, 1e-5 * want.first_loss) << "rank " << r;
        EXPECT_NEAR(s.last_loss, want.last_loss, 1e-5 * want.last_loss) << "rank " << r;
        ASSERT_TRUE(s.last_eval_loss && want.last_eval_loss) << "rank " << r;
        EXPECT_NEAR(*s.last_eval_loss, *want.last_eval_loss, 1e-5 * *want.last_eval_loss);
      }
      EXPECT_LT(got[0].summary.last_loss, got[0].summary.first_loss);
      // dsrun --dry-run counts the rank that holds the most by the folder's shapes (fp32).
      uint64_t most = 0;
      for (const RankRun& run : got) most = std::max(most, run.param_bytes);
      Overrides o;
      o.set = {"tensor_parallel.autotp_size=" + std::to_string(tp),
               "pipeline.stages=" + std::to_string(pp)};
      o.world_size = tp * pp;
      Result<Config> c =
          LoadConfig(io::Env::Default(), WriteConfig(folder.path(), dir.path(), 3), o);
      ASSERT_TRUE(c.ok()) << c.status().ToString();
      EXPECT_EQ(most, 4 * static_cast<uint64_t>(ParametersOnLargestRank(c->model, c->parallel)));
      // The split run's checkpoint holds the whole model's tensors, under the folder's names.
      ExpectSameTensors(LatestIn(dir.path()), LatestIn(one.path()), 5e-5);
    }
  }

  static std::string LatestIn(const std::string& out) { return testing::LatestIn(out); }
  static void ExpectSameTensors(const std::string& a, const std::string& b, double atol) {
    testing::ExpectSameTensors(a, b, atol, 3 * 3 * 9);  // 3 layers x 3 buffers x 9, and more
  }

  static ds::testing::TempDir corpus_;
};
ds::testing::TempDir HfParallelTest::corpus_;

TEST_F(HfParallelTest, LlamaTrainsSplitLikeOneProcess) {
  // 4 heads, 2 key/value heads: TP 2 gives each rank 2 and 1. 3 layers over 2 stages: 2 + 1.
  // Activation checkpointing recomputes each layer exactly (its all-reduces again too); the
  // optimizer offloaded to the CPU runs the same Adam.
  ExpectLayoutsTrainLikeOneProcess("llama", {{2, 1, 1},
                                             {1, 2, 0},
                                             {2, 2, 1},
                                             {2,
                                              2,
                                              1,
                                              {"model.activation_checkpointing=true",
                                               "zero_optimization.offload_optimizer.device=cpu"}}});
}

TEST_F(HfParallelTest, TiedQwen2TrainsSplitLikeOneProcess) {
  // The tied embedding: the last stage's copy, its gradient summed with the first stage's.
  ExpectLayoutsTrainLikeOneProcess("qwen2", {{2, 1, 2}, {2, 2, 0}});
}

TEST_F(HfParallelTest, Gpt2TrainsInPipelineStagesLikeOneProcess) {
  ExpectLayoutsTrainLikeOneProcess("gpt2", {{1, 2, 1}});
}

// Saved split (TP 2 x PP 2), resumed in one process and from there split again: the same bytes;
// exported from the split checkpoint, the folder loads in transformers with our logits.
TEST_F(HfParallelTest, SplitCheckpointResumesWholeAndExportsToTransformers) {
  DS_SKIP_OR_FAIL_WITHOUT_PYTHON("transformers, safetensors");
  ds::testing::TempDir folder, split, whole, exported;
  MakeFolder(folder.path(), "qwen2");
  if (HasFatalFailure()) return;
  std::vector<RankRun> saved = Run(WriteConfig(folder.path(), split.path(), 2), 2, 2, {});
  ASSERT_RANKS_OK(saved);
  const std::string checkpoint = LatestIn(split.path());
  std::vector<RankRun> moved =
      Run(WriteConfig(folder.path(), whole.path(), 2), 1, 1, {}, testing::ResumeFrom(checkpoint));
  ASSERT_RANKS_OK(moved);
  EXPECT_THAT(moved[0].resumed, HasSubstr("at step 2"));
  ExpectSameTensors(checkpoint, LatestIn(whole.path()), 0);
  // ... and back from one process into TP 2 x PP 2: the same bytes again.
  ds::testing::TempDir again;
  std::vector<RankRun> split_again = Run(WriteConfig(folder.path(), again.path(), 2), 2, 2, {},
                                         testing::ResumeFrom(LatestIn(whole.path())));
  ASSERT_RANKS_OK(split_again);
  ExpectSameTensors(checkpoint, LatestIn(again.path()), 0);

  int status = 0;
  const std::string out =
      testing::Dsckpt("export " + bench::ShellQuote(checkpoint) + " --format hf --out " +
                          bench::ShellQuote(exported.path() + "/hf"),
                      &status);
  ASSERT_EQ(status, 0) << out;
  const std::string hf = exported.path() + "/hf";
  MakeFolder(hf, "reload");  // transformers' logits of the exported folder
  if (HasFatalFailure()) return;
  std::shared_ptr<LanguageModel> m = testing::Build(hf, /*deferred=*/false);
  ASSERT_NE(m, nullptr);
  torch::NoGradGuard no_grad;
  const torch::Tensor ours = testing::Logits(*m, testing::ReadOracle(hf, "ids"));
  const torch::Tensor theirs = testing::ReadOracle(hf, "logits");
  EXPECT_LE((ours - theirs).abs().max().item<double>(), 1e-4);
}

TEST_F(HfParallelTest, LayoutsAFolderCannotTakeAreRefusedWithEveryReason) {
  DS_SKIP_OR_FAIL_WITHOUT_PYTHON("transformers, safetensors");
  struct Bad {
    const char* variant;
    int tp, pp;
    std::vector<std::string> says;
  };
  const Bad bad[] = {
      {"llama",
       4,
       4,
       {"must divide num_key_value_heads (2)", "more than num_hidden_layers (3)", "config.json"}},
      {"gpt2", 2, 1, {"pipeline stages only"}},
      {"bert", 1, 2, {"BertForMaskedLM is not split across ranks"}},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.variant);
    ds::testing::TempDir folder, out;
    MakeFolder(folder.path(), b.variant);
    if (HasFatalFailure()) return;
    Overrides o;
    o.set = {"tensor_parallel.autotp_size=" + std::to_string(b.tp),
             "pipeline.stages=" + std::to_string(b.pp)};
    o.world_size = b.tp * b.pp;
    Result<Config> c = LoadConfig(io::Env::Default(), WriteConfig(folder.path(), out.path(), 1), o);
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
    for (const std::string& says : b.says) EXPECT_THAT(c.status().message(), HasSubstr(says));
  }
}

}  // namespace
}  // namespace ds::engine
