// The DeepSpeed JSON config: DeepSpeed's batch arithmetic (the cases and outcomes come from
// DeepSpeed 0.19.8's own DeepSpeedConfig, through deepspeed_config_oracle.py), "auto", unknown
// keys, --set, precision, and the errors users see, asserted word for word.
#include "engine/config/config.h"

#include "config_test_util.h"

namespace ds::engine {
namespace {

using ::ds::testing::IsOk;
using ::ds::testing::StatusIs;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// ---- batch arithmetic

struct BatchCase {
  int64_t tbs, micro, gas, world;          // 0: the key is absent
  int64_t want_tbs, want_micro, want_gas;  // all 0: an error containing `error`
  const char* error;
};

// Each row's outcome is DeepSpeed's (deepspeed_config_oracle.py); where DeepSpeed fails, so do
// we, with a message that says what to change.
const BatchCase kDeepSpeedBatchCases[] = {
    {32, 4, 2, 4, 32, 4, 2, nullptr},
    {32, 4, 2, 2, 0, 0, 0,
     "cfg.json: train_batch_size (32) != train_micro_batch_size_per_gpu (4) * "
     "gradient_accumulation_steps (2) * data-parallel size (2) = 16"},
    {32, 4, 0, 2, 32, 4, 4, nullptr},
    {32, 0, 2, 2, 32, 8, 2, nullptr},
    {0, 4, 2, 2, 16, 4, 2, nullptr},
    {32, 0, 0, 4, 32, 8, 1, nullptr},
    {0, 4, 0, 4, 16, 4, 1, nullptr},
    {0, 0, 2, 1, 0, 0, 0,
     "cfg.json: give train_batch_size or train_micro_batch_size_per_gpu (DeepSpeed needs at "
     "least one; gradient_accumulation_steps alone is not enough)"},
    {0, 0, 0, 1, 0, 0, 0, "give train_batch_size or train_micro_batch_size_per_gpu"},
    {30, 4, 0, 2, 0, 0, 0,
     "cfg.json: cannot derive gradient_accumulation_steps: train_batch_size (30) is not a "
     "multiple of train_micro_batch_size_per_gpu (4) * data-parallel size (2) = 8"},
    {30, 0, 2, 2, 0, 0, 0,
     "cfg.json: cannot derive train_micro_batch_size_per_gpu: train_batch_size (30) is not a "
     "multiple of gradient_accumulation_steps (2) * data-parallel size (2) = 4"},
    {30, 0, 0, 4, 0, 0, 0,
     "cfg.json: cannot derive train_micro_batch_size_per_gpu: train_batch_size (30) is not a "
     "multiple of the data-parallel size (4) (gradient_accumulation_steps is 1 when not given, "
     "as in DeepSpeed) = 4"},
    {4, 4, 0, 2, 0, 0, 0,
     "train_batch_size (4) is not a multiple of train_micro_batch_size_per_gpu (4) * "
     "data-parallel size (2) = 8"},
    {48, 3, 0, 4, 48, 3, 4, nullptr},
    {7, 0, 0, 1, 7, 7, 1, nullptr},
};

TEST(ConfigBatchTest, MatchesDeepSpeedForEveryCombination) {
  for (const BatchCase& c : kDeepSpeedBatchCases) {
    SCOPED_TRACE(::testing::Message() << "tbs " << c.tbs << " micro " << c.micro << " gas " << c.gas
                                      << " world " << c.world);
    json cfg = Base();
    cfg.erase("train_batch_size");
    if (c.tbs) cfg["train_batch_size"] = c.tbs;
    if (c.micro) cfg["train_micro_batch_size_per_gpu"] = c.micro;
    if (c.gas) cfg["gradient_accumulation_steps"] = c.gas;
    Result<Config> r = Parse(cfg, {.world_size = c.world});
    if (c.error != nullptr) {
      EXPECT_THAT(r, StatusIs(StatusCode::kInvalidArgument, HasSubstr(c.error)));
      continue;
    }
    ASSERT_THAT(r, IsOk());
    EXPECT_EQ(r->batch.train_batch_size, c.want_tbs);
    EXPECT_EQ(r->batch.micro_batch_per_gpu, c.want_micro);
    EXPECT_EQ(r->batch.gradient_accumulation_steps, c.want_gas);
    EXPECT_EQ(r->batch.data_parallel_size, c.world);
    EXPECT_EQ(r->resolved["train_batch_size"], c.want_tbs);
    EXPECT_EQ(r->resolved["train_micro_batch_size_per_gpu"], c.want_micro);
    EXPECT_EQ(r->resolved["gradient_accumulation_steps"], c.want_gas);
  }
}

TEST(ConfigBatchTest, RefusesValuesThatAreNotPositiveIntegers) {
  json cfg = Base();
  cfg["train_batch_size"] = 0;
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   HasSubstr("cfg.json: train_batch_size must be a positive "
                                             "integer, got 0")));
  cfg["train_batch_size"] = 2.5;
  EXPECT_THAT(Parse(cfg),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("train_batch_size must be a positive integer, got 2.5")));
  cfg["train_batch_size"] = 16.0;  // integral: accepted, as Python's arithmetic would
  EXPECT_THAT(Parse(cfg), IsOk());
}

TEST(ConfigBatchTest, AutoIsDerivedFromTheOtherTwo) {
  json cfg = Base();
  cfg["train_batch_size"] = 64;
  cfg["train_micro_batch_size_per_gpu"] = "auto";
  cfg["gradient_accumulation_steps"] = 2;
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg, {.world_size = 4}));
  EXPECT_EQ(c.batch.micro_batch_per_gpu, 8);
  EXPECT_THAT(c.auto_filled, Contains("train_micro_batch_size_per_gpu = 8 (train_batch_size / "
                                      "(gradient_accumulation_steps * data-parallel size))"));

  cfg["train_batch_size"] = "auto";
  cfg["train_micro_batch_size_per_gpu"] = 4;
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(cfg, {.world_size = 4}));
  EXPECT_EQ(c.batch.train_batch_size, 32);
}

TEST(ConfigBatchTest, AutoThatCannotBeDerivedNamesTheKey) {
  json cfg = Base();
  cfg.erase("train_batch_size");
  cfg["train_micro_batch_size_per_gpu"] = "auto";
  cfg["gradient_accumulation_steps"] = "auto";
  EXPECT_THAT(Parse(cfg),
              StatusIs(StatusCode::kInvalidArgument,
                       "cfg.json: \"auto\" for train_micro_batch_size_per_gpu cannot be derived: "
                       "give train_batch_size and gradient_accumulation_steps, or pass --set "
                       "train_micro_batch_size_per_gpu=N"));
  // The command line fills it.
  DS_ASSERT_OK_AND_ASSIGN(
      Config c, Parse(cfg, {.set = {"train_micro_batch_size_per_gpu=2"}, .world_size = 2}));
  EXPECT_EQ(c.batch.train_batch_size, 4);
  EXPECT_EQ(c.batch.gradient_accumulation_steps, 1);

  json only_tbs_auto = Base();
  only_tbs_auto["train_batch_size"] = "auto";
  EXPECT_THAT(Parse(only_tbs_auto),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("\"auto\" for train_batch_size cannot be derived")));
}

// ---- precision

TEST(ConfigPrecisionTest, Fp16AndBf16TogetherAreAnError) {
  json cfg = Base();
  cfg["fp16"] = {{"enabled", true}};
  cfg["bf16"] = {{"enabled", true}};
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   "cfg.json: fp16.enabled and bf16.enabled are both true: choose "
                                   "one (DeepSpeed: bfloat16 and fp16 modes cannot be "
                                   "simultaneously enabled)"));
}

TEST(ConfigPrecisionTest, ReadsFp16AndTheOldBfloat16Name) {
  json cfg = Base();
  cfg["fp16"] = {{"enabled", true}, {"loss_scale", 128}, {"hysteresis", 4}};
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg));
  EXPECT_EQ(c.precision(), Precision::kFp16);
  EXPECT_EQ(c.fp16.loss_scale, 128);
  EXPECT_FALSE(c.fp16.dynamic());
  EXPECT_EQ(c.fp16.hysteresis, 4);

  json old = Base();
  old["bfloat16"] = {{"enabled", true}};
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(old));
  EXPECT_EQ(c.precision(), Precision::kBf16);
  EXPECT_EQ(c.resolved["bf16"]["enabled"], true);
  EXPECT_FALSE(c.resolved.contains("bfloat16"));

  old["bf16"] = {{"enabled", false}};  // DeepSpeed reads bf16 and ignores the old name
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(old));
  EXPECT_EQ(c.precision(), Precision::kFp32);
  EXPECT_THAT(c.warnings, Contains(HasSubstr("bfloat16 is ignored: bf16 is given")));
}

TEST(ConfigPrecisionTest, DynamicLossScaleParametersAreCheckedWhenUsed) {
  json cfg = Base();
  cfg["fp16"] = {{"enabled", true}, {"loss_scale_window", 0}};
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   HasSubstr("fp16.loss_scale_window must be > 0 when dynamic "
                                             "loss scaling is enabled (loss_scale=0), got 0")));
  cfg["fp16"]["loss_scale"] = 1024;  // static: the window is unused, as DeepSpeed allows
  EXPECT_THAT(Parse(cfg), IsOk());
  cfg["fp16"]["loss_scale"] = -1;
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   HasSubstr("fp16.loss_scale must be >= 0 (0 enables dynamic "
                                             "loss scaling), got -1")));
}

// ---- "auto" beyond the batch sizes

TEST(ConfigAutoTest, KeysWithADeepSpeedDefaultTakeIt) {
  json cfg = Base();
  cfg["gradient_clipping"] = "auto";
  cfg["fp16"] = {{"enabled", "auto"}};
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg));
  EXPECT_EQ(c.gradient_clipping, 1.0);
  EXPECT_FALSE(c.fp16.enabled);
  EXPECT_THAT(c.auto_filled, Contains("gradient_clipping = 1.0 (default)"));
  EXPECT_THAT(c.auto_filled, Contains("fp16.enabled = false (default)"));
}

TEST(ConfigAutoTest, ZeroBucketsFollowTheModelAsHuggingFaceDerivesThem) {
  json cfg = Base();  // demo: d_model 128
  cfg["zero_optimization"] = {{"stage", 3},
                              {"reduce_bucket_size", "auto"},
                              {"stage3_prefetch_bucket_size", "auto"},
                              {"stage3_param_persistence_threshold", "auto"}};
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg));
  EXPECT_EQ(c.zero.reduce_bucket_size, 128 * 128);
  EXPECT_EQ(c.zero.stage3_prefetch_bucket_size, 14745);  // int(0.9 * 16384)
  EXPECT_EQ(c.zero.stage3_param_persistence_threshold, 1280);
  EXPECT_THAT(c.auto_filled, Contains("zero_optimization.reduce_bucket_size = 16384 (d_model^2, "
                                      "as Hugging Face derives it)"));
}

TEST(ConfigAutoTest, LearningRateMustComeFromTheCommandLine) {
  json cfg = Base();
  cfg["optimizer"]["params"]["lr"] = "auto";
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   "cfg.json: \"auto\" for optimizer.params.lr cannot be derived: "
                                   "give a number, or pass --set optimizer.params.lr=X"));
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg, {.set = {"optimizer.params.lr=3e-4"}}));
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 3e-4);
}

TEST(ConfigAutoTest, ScheduleStepsAndPeakFollowTrainerAndOptimizer) {
  json cfg = Base();
  cfg["scheduler"] = {{"type", "WarmupDecayLR"},
                      {"params", {{"total_num_steps", "auto"}, {"warmup_max_lr", "auto"}}}};
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg, {.max_steps = 5000}));
  EXPECT_EQ(c.scheduler.total_num_steps, 5000);
  EXPECT_DOUBLE_EQ(c.scheduler.warmup_max_lr, 3e-4);
  EXPECT_THAT(c.auto_filled,
              Contains("scheduler.params.total_num_steps = 5000 (trainer.max_steps)"));

  // Without trainer.max_steps, a numeric total_num_steps gives it.
  json from_schedule = Base();
  from_schedule.erase("trainer");
  from_schedule["scheduler"] = {{"type", "WarmupCosineLR"}, {"params", {{"total_num_steps", 700}}}};
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(from_schedule));
  EXPECT_EQ(c.trainer.max_steps, 700);

  // Neither: the run is trainer.epochs passes over the data (one by default), counted when the
  // trainer opens the data, which also fills an "auto" total_num_steps (as DeepSpeed's
  // Hugging Face integration does).
  from_schedule["scheduler"]["params"]["total_num_steps"] = "auto";
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(from_schedule));
  EXPECT_EQ(c.trainer.max_steps, 0);
  EXPECT_EQ(c.trainer.epochs, 1);
  EXPECT_EQ(c.scheduler.total_num_steps, 0);
  from_schedule["trainer"] = {{"epochs", 3}};
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(from_schedule));
  EXPECT_EQ(c.trainer.epochs, 3);
  // A max_steps given wins over epochs (Hugging Face Trainer's rule), with a warning.
  from_schedule["trainer"]["max_steps"] = 9;
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(from_schedule));
  EXPECT_EQ(c.trainer.max_steps, 9);
  EXPECT_THAT(c.warnings, Contains(HasSubstr("trainer.epochs is ignored")));
}

// ---- unknown keys

// A file that cannot run gets all its independent problems in one message, each with its key.
TEST(ConfigErrorsTest, EveryProblemIsListedAtOnce) {
  json cfg = Base();
  cfg["fp16"] = {{"enabled", true}};
  cfg["bf16"] = {{"enabled", true}};
  cfg["optimizer"]["type"] = "Lamb";
  cfg["gradient_clipping"] = -1;
  Result<Config> c = Parse(cfg);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("gradient_clipping must be >= 0"));
  EXPECT_THAT(c.status().message(), HasSubstr("also: fp16.enabled and bf16.enabled are both true"));
  EXPECT_THAT(c.status().message(), HasSubstr("also: optimizer.type 'Lamb' is not supported"));
}

TEST(ConfigUnknownKeyTest, WarnsWithTheClosestKnownKeyAtEveryLevel) {
  json cfg = Base();
  cfg["train_batch_sizee"] = 1;
  cfg["zero_optimization"] = {{"stage3_prefech_bucket_size", 1000}};
  cfg["optimizer"]["params"]["beta"] = {0.9, 0.95};
  cfg["stage"] = 2;
  cfg["xyzzy"] = true;
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg));
  EXPECT_THAT(c.warnings,
              Contains("cfg.json: unknown key train_batch_sizee is ignored; did you mean "
                       "train_batch_size?"));
  EXPECT_THAT(c.warnings, Contains("cfg.json: unknown key "
                                   "zero_optimization.stage3_prefech_bucket_size is ignored; did "
                                   "you mean stage3_prefetch_bucket_size?"));
  EXPECT_THAT(c.warnings, Contains("cfg.json: unknown key optimizer.params.beta is ignored; did "
                                   "you mean betas?"));
  EXPECT_THAT(c.warnings, Contains("cfg.json: unknown key stage is ignored; did you mean "
                                   "zero_optimization.stage?"));
  EXPECT_THAT(c.warnings, Contains("cfg.json: unknown key xyzzy is ignored"));
  EXPECT_FALSE(c.resolved.contains("xyzzy"));
}

TEST(ConfigUnknownKeyTest, StrictMakesThemErrors) {
  json cfg = Base();
  cfg["zero_optimization"] = {{"stage3_prefech_bucket_size", 1000}};
  EXPECT_THAT(Parse(cfg, {.strict = true}),
              StatusIs(StatusCode::kInvalidArgument,
                       "cfg.json: unknown key zero_optimization.stage3_prefech_bucket_size "
                       "(--strict); did you mean stage3_prefetch_bucket_size?"));
  EXPECT_THAT(Parse(Base(), {.strict = true}), IsOk());
}

// ---- --set

TEST(ConfigSetOverrideTest, ParsesValuesAsJsonElseAsStrings) {
  DS_ASSERT_OK_AND_ASSIGN(
      Config c, Parse(Base(), {.set = {"optimizer.params.lr=3e-3", "zero_optimization.stage=2",
                                       "optimizer.type=Adam", "optimizer.params.betas=[0.8,0.95]",
                                       "zero_optimization.offload_optimizer.device=cpu",
                                       "bf16.enabled=true", "checkpoint.chunk_bytes=8MiB"}}));
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 3e-3);
  EXPECT_EQ(c.zero.stage, 2);
  EXPECT_EQ(c.optimizer.type, OptimizerConfig::Type::kAdam);
  EXPECT_DOUBLE_EQ(c.optimizer.beta1, 0.8);
  EXPECT_DOUBLE_EQ(c.optimizer.beta2, 0.95);
  EXPECT_EQ(c.zero.offload_optimizer.device, OffloadConfig::Device::kCpu);
  EXPECT_TRUE(c.bf16.enabled);
  EXPECT_EQ(c.checkpoint.chunk_bytes, uint64_t{8} << 20);
}

TEST(ConfigSetOverrideTest, LaterOnesWinAndNullRestoresTheDefault) {
  json cfg = Base();
  cfg["gradient_clipping"] = 0.5;
  DS_ASSERT_OK_AND_ASSIGN(
      Config c,
      Parse(cfg,
            {.set = {"gradient_clipping=2", "gradient_clipping=null"}, .max_steps = 9, .seed = 7}));
  EXPECT_EQ(c.gradient_clipping, 1.0);
  EXPECT_EQ(c.trainer.max_steps, 9);
  EXPECT_EQ(c.trainer.seed, 7u);
}

// dsrun --model_name DIR sets model.preset=null (and the sizes) before model.hf_path=DIR: null
// removes the key, so the file's preset yields to the folder instead of being refused beside it.
TEST(ConfigSetOverrideTest, NullRemovesTheKeySoAFilesPresetYieldsToAFolder) {
  EXPECT_THAT(Parse(Base(), {.set = {"model.hf_path=/models/llama"}}),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("model.preset is set beside model.hf_path")));
  DS_ASSERT_OK_AND_ASSIGN(
      Config c, Parse(Base(), {.set = {"model.preset=null", "model.n_layer=null",
                                       "model.hf_path=/models/llama", "model.seq_len=64"}}));
  EXPECT_EQ(c.model.arch, "hf");
  EXPECT_EQ(c.model.hf_path, "/models/llama");
  EXPECT_EQ(c.model.seq_len, 64);
}

TEST(ConfigSetOverrideTest, BadSyntaxNamesTheAssignment) {
  EXPECT_THAT(Parse(Base(), {.set = {"zero_optimization.stage"}}),
              StatusIs(StatusCode::kInvalidArgument,
                       "--set 'zero_optimization.stage': expected key.path=value (e.g. --set "
                       "zero_optimization.stage=2)"));
  EXPECT_THAT(Parse(Base(), {.set = {"zero..stage=1"}}),
              StatusIs(StatusCode::kInvalidArgument,
                       "--set 'zero..stage=1': empty key name in 'zero..stage'"));
  EXPECT_THAT(Parse(Base(), {.set = {"train_batch_size.x=1"}}),
              StatusIs(StatusCode::kInvalidArgument,
                       "--set 'train_batch_size.x=1': train_batch_size is 8, not a section"));
  EXPECT_THAT(Parse(Base(), {.set = {"zero_optimization.stage=two"}}),
              StatusIs(StatusCode::kInvalidArgument,
                       "cfg.json: zero_optimization.stage must be an integer, got \"two\""));
}

// ---- JSON itself

TEST(ConfigJsonTest, DuplicateKeysAndSyntaxErrorsAreRefused) {
  EXPECT_THAT(ParseConfig(R"({"zero_optimization": {"stage": 1, "stage": 2}})", {}, "cfg.json"),
              StatusIs(StatusCode::kInvalidArgument,
                       "cfg.json: duplicate key zero_optimization.stage (DeepSpeed refuses "
                       "duplicate keys too)"));
  EXPECT_THAT(ParseConfig("{\"train_batch_size\": 8,\n}", {}, "cfg.json"),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("cfg.json: not valid JSON: parse error at line 2, column 1")));
  EXPECT_THAT(
      ParseConfig("[1]", {}, "cfg.json"),
      StatusIs(StatusCode::kInvalidArgument, "cfg.json: the config must be a JSON object ({...})"));
}

TEST(ConfigJsonTest, CommentsAreAllowed) {
  std::string text = "// ours\n" + Base().dump() + " /* trailing */";
  EXPECT_THAT(ParseConfig(text, {}, "cfg.json"), IsOk());
}

TEST(ConfigJsonTest, LoadConfigReadsThroughTheEnv) {
  io::Env* env = io::Env::Default();
  ::ds::testing::TempDir dir;
  std::string path = dir.Join("ds_config.json");
  DS_ASSERT_OK(env->WriteFileSynced(path, Base().dump()));
  DS_ASSERT_OK_AND_ASSIGN(Config c, LoadConfig(env, path, {}));
  EXPECT_EQ(c.source, path);
  EXPECT_THAT(LoadConfig(env, dir.Join("missing.json"), {}),
              StatusIs(StatusCode::kNotFound, HasSubstr("missing.json")));
}

TEST(ConfigJsonTest, TheResolvedConfigParsesBackToItself) {
  json cfg = Base();
  cfg["fp16"] = {{"enabled", true}};
  cfg["zero_optimization"] = {{"stage", 2}, {"offload_optimizer", {{"device", "cpu"}}}};
  cfg["scheduler"] = {{"type", "OneCycle"},
                      {"params", {{"cycle_min_lr", 1e-5}, {"cycle_max_lr", 1e-3}}}};
  DS_ASSERT_OK_AND_ASSIGN(Config first, Parse(cfg));
  DS_ASSERT_OK_AND_ASSIGN(Config second, ParseConfig(first.resolved.dump(), {.strict = true}, "x"));
  EXPECT_EQ(first.resolved, second.resolved);
  EXPECT_THAT(second.warnings, ElementsAre());
}

// Sizes are bounded with messages naming the key, before anything multiplies them.
TEST(ConfigBoundsTest, ModelAndBatchSizesHaveLimitsThatNameTheKey) {
  json cfg = Base();
  cfg["model"] = {
      {"n_layer", 1e9}, {"n_head", 4}, {"d_model", 64}, {"seq_len", 64}, {"vocab", 256}};
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   HasSubstr("model.n_layer is 1000000000: at most 10000")));
  cfg["model"]["n_layer"] = 2;
  cfg["model"]["vocab"] = int64_t{1} << 30;
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   HasSubstr("model.vocab is 1073741824: at most 16777216")));
  cfg = Base();
  cfg.erase("train_batch_size");
  cfg["train_micro_batch_size_per_gpu"] = int64_t{1} << 62;
  EXPECT_THAT(Parse(cfg),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("train_micro_batch_size_per_gpu is 4611686018427387904: at most "
                                 "16777216")));
  // Each within its bound, the product beyond: refused, not overflowed.
  cfg["train_micro_batch_size_per_gpu"] = int64_t{1} << 20;
  cfg["gradient_accumulation_steps"] = int64_t{1} << 20;
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   HasSubstr("is more than 16777216 samples per step")));
}

TEST(ConfigBoundsTest, AnInvalidBatchKeyDoesNotMakeTheOthersUnknown) {
  json cfg = Base();
  cfg.erase("train_batch_size");
  cfg["train_micro_batch_size_per_gpu"] = -1;
  cfg["gradient_accumulation_steps"] = 2;
  Result<Config> c = Parse(cfg);
  EXPECT_THAT(c, StatusIs(StatusCode::kInvalidArgument,
                          HasSubstr("train_micro_batch_size_per_gpu must be a positive integer")));
  EXPECT_THAT(c.status().message(), ::testing::Not(HasSubstr("unknown key")));
}

TEST(ConfigBoundsTest, NestingIsLimitedInTheFileAndInSet) {
  std::string deep = "{\"a\": " + std::string(150000, '[') + std::string(150000, ']') + "}";
  EXPECT_THAT(ParseConfig(deep, {}, "deep.json"),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("deep.json: line 1: nested more than 64 levels deep")));
  // Brackets inside strings and comments do not count.
  json cfg = Base();
  cfg["trainer"]["output_dir"] = std::string(100, '[');
  std::string text = "// " + std::string(100, '{') + "\n" + cfg.dump();
  EXPECT_THAT(ParseConfig(text, {}, "ok.json"), IsOk());
  Overrides o;
  o.set = {"x=" + std::string(70, '[')};
  EXPECT_THAT(Parse(Base(), o),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("nested more than 64 levels deep")));
}

TEST(ConfigBoundsTest, AHugeFileIsNotAConfig) {
  ::ds::testing::TempDir dir;
  const std::string path = dir.Join("big.json");
  DS_ASSERT_OK(io::Env::Default()->WriteFileSynced(path, std::string(17 << 20, ' ')));
  EXPECT_THAT(LoadConfig(io::Env::Default(), path, {}),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("big.json is 17.0 MiB")));
}

}  // namespace
}  // namespace ds::engine
