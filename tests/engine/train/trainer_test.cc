// The training loop end to end on the embedded corpus: a short run lowers the loss in fp32,
// bf16 and fp16; runs are deterministic; gradient accumulation equals a larger micro batch;
// fp16 overflow skips steps and lowers the scale; a registered model trains; metrics and
// TensorBoard files are written and parse; user errors name what to fix.
#include "engine/train/trainer.h"

#include <gtest/gtest.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/modules/embedding.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/core/tensorboard.h"
#include "engine/model/model.h"
#include "tests/testing/matchers.h"

namespace ds::engine {
namespace {

using ::testing::HasSubstr;

// A model small enough that 60 steps take a second on one core.
nlohmann::json SmallConfig(const std::string& out) {
  nlohmann::json j = nlohmann::json::parse(R"({
    "train_micro_batch_size_per_gpu": 8,
    "gradient_accumulation_steps": 1,
    "gradient_clipping": 1.0,
    "steps_per_print": 10,
    "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.01}},
    "model": {"n_layer": 2, "n_head": 2, "d_model": 64, "seq_len": 64, "vocab": 256},
    "data": {"path": "builtin", "val_fraction": 0.05},
    "trainer": {"max_steps": 60, "eval_interval": 0, "eval_iters": 4, "seed": 11}
  })");
  j["trainer"]["output_dir"] = out;
  return j;
}

Result<Config> Parse(const nlohmann::json& j, std::vector<std::string> set = {}) {
  Overrides o;
  o.set = std::move(set);
  return ParseConfig(j.dump(), o, "test.json");
}

torch::Tensor Master(Trainer& t) {
  Result<torch::Tensor> m = t.GatherMaster();
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return m.ok() ? *m : torch::Tensor();
}

class TrainerTest : public ::testing::Test {
 protected:
  // Trains `config` and returns the trainer (for its weights) and the summary.
  std::unique_ptr<Trainer> Train(const Config& c, TrainSummary* summary) {
    TrainerOptions o;
    o.device = "cpu";
    o.corpus_cache_dir = corpus_.path();
    Result<std::unique_ptr<Trainer>> t = Trainer::Create(io::Env::Default(), c, o);
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    if (!t.ok()) return nullptr;
    Result<TrainSummary> s = (*t)->Run();
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    if (s.ok()) *summary = *s;
    return std::move(*t);
  }

  static ds::testing::TempDir corpus_;  // the default corpus, built once for all tests
  ds::testing::TempDir out_;
};
ds::testing::TempDir TrainerTest::corpus_;

TEST_F(TrainerTest, ShortRunLowersTheLossAndWritesMetrics) {
  nlohmann::json j = SmallConfig(out_.path());
  j["trainer"]["eval_interval"] = 30;
  j["tensorboard"] = {{"enabled", true}, {"output_path", out_.Join("tb")}, {"job_name", "run"}};
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(j));
  TrainSummary s;
  auto t = Train(c, &s);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(s.steps, 60);
  EXPECT_EQ(s.skipped_steps, 0);
  EXPECT_NEAR(s.first_loss, std::log(256.0), 0.3);  // GPT-2 init predicts nearly uniformly
  EXPECT_LT(s.last_loss, s.first_loss - 1.5) << "60 steps should learn byte statistics";
  ASSERT_TRUE(s.last_eval_loss.has_value());
  EXPECT_LT(*s.last_eval_loss, s.first_loss - 1.0);

  // metrics.jsonl: one object per step with the documented keys, then eval lines.
  DS_ASSERT_OK_AND_ASSIGN(std::string text,
                          io::Env::Default()->ReadFileToString(out_.Join("metrics.jsonl")));
  std::istringstream lines(text);
  std::string line;
  int steps = 0, evals = 0;
  while (std::getline(lines, line)) {
    nlohmann::json m = nlohmann::json::parse(line);
    if (m.contains("eval_loss")) {
      ++evals;
      continue;
    }
    ++steps;
    EXPECT_EQ(m["step"].get<int>(), steps);
    for (const char* key : {"loss", "lr", "tokens_per_s", "step_time_s"}) {
      EXPECT_TRUE(m.contains(key)) << key << " missing in " << line;
    }
    EXPECT_TRUE(std::isfinite(m["loss"].get<double>()));
  }
  EXPECT_EQ(steps, 60);
  EXPECT_EQ(evals, 2);  // at step 30 and at the end

  // TensorBoard: the events parse (every CRC checked) and carry DeepSpeed's loss tag per step.
  DS_ASSERT_OK_AND_ASSIGN(std::vector<std::string> files,
                          io::Env::Default()->ListDir(out_.Join("tb/run")));
  ASSERT_EQ(files.size(), 1u);
  DS_ASSERT_OK_AND_ASSIGN(
      auto events, ReadTensorBoardScalars(io::Env::Default(), out_.Join("tb/run/" + files[0])));
  int loss_events = 0;
  for (const ScalarEvent& e : events) loss_events += e.tag == "Train/Samples/train_loss";
  EXPECT_EQ(loss_events, 60);
}

TEST_F(TrainerTest, Bf16AndFp16RunsLearn) {
  for (const char* precision : {"bf16", "fp16"}) {
    SCOPED_TRACE(precision);
    ds::testing::TempDir out;
    DS_ASSERT_OK_AND_ASSIGN(
        Config c, Parse(SmallConfig(out.path()), {std::string(precision) + ".enabled=true"}));
    TrainSummary s;
    auto t = Train(c, &s);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->slots()[0].param.scalar_type(),
              std::string(precision) == "bf16" ? torch::kBFloat16 : torch::kFloat16);
    EXPECT_EQ(Master(*t).scalar_type(), torch::kFloat32);
    EXPECT_LT(s.last_loss, s.first_loss - 1.0);
    // fp16 starts at DeepSpeed's 2^16 scale; whatever overflowed was skipped, not applied.
    EXPECT_LT(s.skipped_steps, 20);
    EXPECT_TRUE(torch::isfinite(Master(*t)).all().item<bool>());
  }
}

TEST_F(TrainerTest, Fp16OverflowSkipsStepsAndLowersTheScale) {
  ds::testing::TempDir out;
  // 2^40 overflows fp16 gradients at once: the scaler halves until they fit.
  DS_ASSERT_OK_AND_ASSIGN(
      Config c, Parse(SmallConfig(out.path()), {"fp16.enabled=true", "fp16.initial_scale_power=40",
                                                "fp16.hysteresis=1", "trainer.max_steps=40"}));
  TrainSummary s;
  auto t = Train(c, &s);
  ASSERT_NE(t, nullptr);
  EXPECT_GE(s.skipped_steps, 20);  // 2^40 -> below 2^16 takes at least 24 halvings
  EXPECT_LT(s.skipped_steps, 40);
  EXPECT_TRUE(torch::isfinite(Master(*t)).all().item<bool>());
  DS_ASSERT_OK_AND_ASSIGN(std::string text,
                          io::Env::Default()->ReadFileToString(out.Join("metrics.jsonl")));
  EXPECT_THAT(text, HasSubstr("\"skipped\":true"));
  EXPECT_THAT(text, HasSubstr("\"loss_scale\":1099511627776"));  // 2^40 on the first step
}

TEST_F(TrainerTest, SameSeedSameWeightsAndOtherSeedOtherWeights) {
  auto run = [&](uint64_t seed) {
    ds::testing::TempDir out;
    Result<Config> c = Parse(SmallConfig(out.path()),
                             {"trainer.max_steps=5", "trainer.seed=" + std::to_string(seed)});
    EXPECT_TRUE(c.ok());
    TrainSummary s;
    auto t = Train(*c, &s);
    return t == nullptr ? torch::Tensor() : Master(*t).clone();
  };
  torch::Tensor a = run(3), b = run(3), other = run(4);
  ASSERT_TRUE(a.defined() && b.defined() && other.defined());
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_FALSE(torch::equal(a, other));
}

TEST_F(TrainerTest, GradientAccumulationEqualsTheLargerMicroBatch) {
  auto run = [&](int micro, int gas) {
    ds::testing::TempDir out;
    Result<Config> c =
        Parse(SmallConfig(out.path()), {"trainer.max_steps=3", "gradient_clipping=0",
                                        "train_micro_batch_size_per_gpu=" + std::to_string(micro),
                                        "gradient_accumulation_steps=" + std::to_string(gas)});
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    TrainSummary s;
    auto t = Train(*c, &s);
    return t == nullptr ? torch::Tensor() : Master(*t).clone();
  };
  torch::Tensor one = run(8, 1), two = run(4, 2), three = run(2, 4);
  ASSERT_TRUE(one.defined() && two.defined() && three.defined());
  // Same samples in the same order, averaged the same way: equal up to fp32 summation order.
  EXPECT_TRUE(torch::allclose(one, two, 1e-4, 1e-5));
  EXPECT_TRUE(torch::allclose(one, three, 1e-4, 1e-5));
}

// A model a user registers: a bigram table.
class Bigram : public LanguageModel {
 public:
  explicit Bigram(int64_t vocab) : vocab_(vocab) {
    table_ = register_module("table", torch::nn::Embedding(vocab, vocab));
  }
  torch::Tensor loss(const torch::Tensor& idx, const torch::Tensor& targets) override {
    return torch::nn::functional::cross_entropy(table_(idx).view({-1, vocab_}).to(torch::kFloat32),
                                                targets.reshape({-1}));
  }

 private:
  int64_t vocab_;
  torch::nn::Embedding table_{nullptr};
};

TEST_F(TrainerTest, ARegisteredModelTrains) {
  RegisterModel("test-bigram",
                [](const ModelConfig& c, uint64_t seed) -> Result<std::shared_ptr<LanguageModel>> {
                  torch::manual_seed(seed);
                  return std::shared_ptr<LanguageModel>(std::make_shared<Bigram>(c.vocab));
                });
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(SmallConfig(out_.path()),
                                          {"model.arch=test-bigram", "optimizer.params.lr=0.05"}));
  TrainSummary s;
  auto t = Train(c, &s);
  ASSERT_NE(t, nullptr);
  ASSERT_EQ(t->slots().size(), 1u);
  EXPECT_EQ(t->slots()[0].name, "table.weight");
  EXPECT_LT(s.last_loss, s.first_loss - 0.5);
}

// A bigram whose loss asks for 4 PiB: the allocator's real failure, in the middle of a step.
class Greedy : public Bigram {
 public:
  using Bigram::Bigram;
  torch::Tensor loss(const torch::Tensor& idx, const torch::Tensor& targets) override {
    return Bigram::loss(idx, targets) + torch::zeros({int64_t{1} << 50}).sum();
  }
};

// Out of memory in a step: no LibTorch trace, but what the rank needs at each ZeRO setting and
// the cheapest one that fits this machine, as dsrun --dry-run says it.
TEST_F(TrainerTest, OutOfMemoryInAStepComesWithTheMemoryTableAndAdvice) {
  RegisterModel("test-greedy",
                [](const ModelConfig& c, uint64_t seed) -> Result<std::shared_ptr<LanguageModel>> {
                  torch::manual_seed(seed);
                  return std::shared_ptr<LanguageModel>(std::make_shared<Greedy>(c.vocab));
                });
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(SmallConfig(out_.path()), {"model.arch=test-greedy"}));
  TrainerOptions o;
  o.device = "cpu";
  o.corpus_cache_dir = corpus_.path();
  DS_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Trainer> t, Trainer::Create(io::Env::Default(), c, o));
  const Status s = t->Step();
  EXPECT_THAT(s, ds::testing::StatusIs(
                     StatusCode::kFailedPrecondition,
                     AllOf(HasSubstr("training step 1 on cpu"),
                           HasSubstr("DefaultCPUAllocator: can't allocate memory"),
                           HasSubstr("out of memory: lower train_micro_batch_size_per_gpu"),
                           HasSubstr("Model states per rank"), HasSubstr("Activations per micro"),
                           HasSubstr("Cheapest setting that fits: stage 0"))))
      << s.message();
  EXPECT_EQ(s.message().find("Exception raised from"), std::string::npos) << s.message();
}

// A model that says it defers its initial values must give them and hold no buffers: either
// mistake is a clear error when the trainer is made, never training from placeholders.
class DeferringBigram : public Bigram {
 public:
  DeferringBigram(int64_t vocab, bool with_buffer) : Bigram(vocab) {
    if (with_buffer) register_buffer("counts", torch::zeros({vocab}));
  }
  bool deferred() const override { return true; }
};

TEST_F(TrainerTest, ADeferringModelWithoutValuesOrWithBuffersIsAClearError) {
  for (bool with_buffer : {false, true}) {
    const std::string arch = with_buffer ? "test-deferring-buffer" : "test-deferring";
    RegisterModel(
        arch,
        [with_buffer](const ModelConfig& c, uint64_t) -> Result<std::shared_ptr<LanguageModel>> {
          return std::shared_ptr<LanguageModel>(
              std::make_shared<DeferringBigram>(c.vocab, with_buffer));
        });
    DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(SmallConfig(out_.path()), {"model.arch=" + arch}));
    TrainerOptions o;
    o.device = "cpu";
    o.corpus_cache_dir = corpus_.path();
    const ::testing::Matcher<std::string> says =
        with_buffer ? ::testing::Matcher<std::string>(
                          HasSubstr("a model with deferred initial values cannot have buffers "
                                    "(it has 1)"))
                    : AllOf(HasSubstr("making the initial weights: parameter table.weight"),
                            HasSubstr("override LanguageModel::InitialValues"));
    EXPECT_THAT(Trainer::Create(io::Env::Default(), c, o),
                ds::testing::StatusIs(StatusCode::kInvalidArgument, says));
  }
}

TEST_F(TrainerTest, UnknownArchAndMissingGpuAreClearErrors) {
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(SmallConfig(out_.path()), {"model.arch=llama"}));
  TrainerOptions o;
  o.device = "cpu";
  o.corpus_cache_dir = corpus_.path();
  EXPECT_THAT(Trainer::Create(io::Env::Default(), c, o),
              ds::testing::StatusIs(StatusCode::kInvalidArgument,
                                    AllOf(HasSubstr("model.arch 'llama'"), HasSubstr("gpt"))));
  DS_ASSERT_OK_AND_ASSIGN(Config ok, Parse(SmallConfig(out_.path())));
  o.device = "tpu";
  EXPECT_THAT(
      Trainer::Create(io::Env::Default(), ok, o),
      ds::testing::StatusIs(StatusCode::kInvalidArgument, HasSubstr("'tpu' is not a device")));
  if (!torch::cuda::is_available()) {
    o.device = "cuda";
    EXPECT_THAT(
        Trainer::Create(io::Env::Default(), ok, o),
        ds::testing::StatusIs(StatusCode::kFailedPrecondition, HasSubstr("no GPU is visible")));
  }
}

// CUDA graphs asked for where the step cannot be captured: the key and the reason.
TEST_F(TrainerTest, CudaGraphsWhereTheyCannotRunAreAClearError) {
  TrainerOptions o;
  o.device = "cpu";
  o.corpus_cache_dir = corpus_.path();
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(SmallConfig(out_.path()), {"trainer.cuda_graphs=true"}));
  EXPECT_THAT(Trainer::Create(io::Env::Default(), c, o),
              ds::testing::StatusIs(
                  StatusCode::kInvalidArgument,
                  AllOf(HasSubstr("trainer.cuda_graphs is true"), HasSubstr("not on a GPU"))));
  // "auto" trains eagerly there.
  DS_ASSERT_OK_AND_ASSIGN(Config a, Parse(SmallConfig(out_.path()), {"trainer.cuda_graphs=auto"}));
  TrainSummary s;
  ASSERT_NE(Train(a, &s), nullptr);
  EXPECT_GT(s.steps, 0);
}

// With no step count (a DeepSpeed config as it stands), the run is trainer.epochs passes over
// the training split: its windows over the samples of one optimizer step, per epoch.
TEST_F(TrainerTest, WithoutMaxStepsTheRunIsEpochsOfTheData) {
  const std::string text = out_.path() + "/small.txt";
  std::string body;
  for (int i = 0; body.size() < 2000; ++i) body += "line " + std::to_string(i) + " of text. ";
  ASSERT_TRUE(io::Env::Default()->WriteFileSynced(text, body.substr(0, 2000)).ok());
  auto steps = [&](int epochs) -> int64_t {
    nlohmann::json j = SmallConfig(out_.path() + "/e" + std::to_string(epochs));
    j["trainer"].erase("max_steps");
    j["trainer"]["epochs"] = epochs;
    j["data"] = {{"path", text}, {"format", "text"}, {"val_fraction", 0.05}};
    j["train_micro_batch_size_per_gpu"] = 2;
    j["gradient_accumulation_steps"] = 2;
    j.erase("train_batch_size");
    Result<Config> c = Parse(j);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    if (!c.ok()) return -1;
    EXPECT_EQ(c->trainer.max_steps, 0);
    TrainSummary s;
    return Train(*c, &s) ? s.steps : -1;
  };
  // 1,900 training tokens: (1900 - 1) / 64 = 29 windows, 4 a step: 7 steps an epoch.
  EXPECT_EQ(steps(1), 7);
  EXPECT_EQ(steps(2), 14);
}

TEST_F(TrainerTest, MissingDataFileNamesThePath) {
  DS_ASSERT_OK_AND_ASSIGN(Config c,
                          Parse(SmallConfig(out_.path()), {"data.path=" + out_.Join("nope.bin")}));
  TrainerOptions o;
  o.device = "cpu";
  Result<std::unique_ptr<Trainer>> t = Trainer::Create(io::Env::Default(), c, o);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("nope.bin"));
}

}  // namespace
}  // namespace ds::engine
