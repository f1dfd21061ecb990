// Each section of the config: DeepSpeed's defaults (taken from DeepSpeed 0.19.8 itself by
// deepspeed_config_oracle.py), its checks, and dstrain's own sections.
#include "config_test_util.h"

namespace ds::engine {
namespace {

using ::ds::testing::IsOk;
using ::ds::testing::StatusIs;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// ---- defaults equal DeepSpeed's

// deepspeed_config_oracle.py's "defaults", for the blocks dstrain resolves. DeepSpeed shows an
// absent offload block as null; dstrain shows it with device "none" and the block's defaults.
const char* const kDeepSpeedDefaults = R"({
  "gradient_clipping": 1.0, "steps_per_print": null, "wall_clock_breakdown": false,
  "prescale_gradients": false, "gradient_predivide_factor": 1.0,
  "communication_data_type": null,
  "fp16": {"enabled": false, "auto_cast": false, "loss_scale": 0.0, "initial_scale_power": 16,
           "loss_scale_window": 1000, "hysteresis": 2, "consecutive_hysteresis": false,
           "min_loss_scale": 1, "fp16_master_weights_and_grads": false},
  "bf16": {"enabled": false, "immediate_grad_update": false, "check_grad_overflow": true,
           "bf16_master_weights_and_grads": false, "bf16_optimizer_states": false},
  "zero_optimization": {"stage": 0, "contiguous_gradients": true, "reduce_scatter": true,
   "reduce_bucket_size": 500000000, "use_multi_rank_bucket_allreduce": true,
   "allgather_partitions": true, "allgather_bucket_size": 500000000, "overlap_comm": false,
   "compute_grad_norm": true, "load_from_fp32_weights": true, "elastic_checkpoint": false,
   "sub_group_size": 1000000000, "stage3_prefetch_bucket_size": 50000000,
   "stage3_param_persistence_threshold": 100000,
   "stage3_model_persistence_threshold": 9223372036854775807,
   "stage3_max_live_parameters": 1000000000, "stage3_max_reuse_distance": 1000000000,
   "stage3_gather_16bit_weights_on_model_save": false, "stage3_module_granularity_threshold": 0,
   "stage3_use_all_reduce_for_fetch_params": false, "stage3_allgather_sequential": false,
   "ignore_unused_parameters": true, "legacy_stage1": false, "round_robin_gradients": false,
   "parameter_alignment": false, "zero_hpz_partition_size": 1, "zero_quantized_weights": false,
   "zero_quantized_nontrainable_weights": false, "zero_quantized_gradients": false,
   "memory_efficient_linear": true, "pipeline_loading_checkpoint": false,
   "override_module_apply": true, "log_trace_cache_warnings": false,
   "enable_sanity_checks": false, "save_muon_momentum_buffer_in_memory": false,
   "offload_optimizer": {"device": "none", "nvme_path": null, "buffer_count": 4,
     "pin_memory": true, "pipeline_read": false, "pipeline_write": false, "fast_init": false,
     "ratio": 1.0, "super_offload": false, "cpuadam_cores_perc": 0.8},
   "offload_param": {"device": "none", "nvme_path": null, "buffer_count": 5,
     "buffer_size": 100000000, "max_in_cpu": 1000000000, "pin_memory": true}},
  "tensorboard": {"enabled": false, "output_path": "", "job_name": "DeepSpeedJobName"},
  "csv_monitor": {"enabled": false, "output_path": "", "job_name": "DeepSpeedJobName"},
  "wandb": {"enabled": false, "group": null, "team": null, "project": "deepspeed"},
  "comet": {"enabled": false, "samples_log_interval": 100, "project": null, "workspace": null,
            "api_key": null, "experiment_name": null, "experiment_key": null, "online": null,
            "mode": null},
  "flops_profiler": {"enabled": false, "recompute_fwd_factor": 0.0, "profile_step": 1,
                     "module_depth": -1, "top_modules": 1, "detailed": true,
                     "output_file": null},
  "activation_checkpointing": {"partition_activations": false,
    "contiguous_memory_optimization": false, "cpu_checkpointing": false,
    "number_checkpoints": null, "synchronize_checkpoint_boundary": false, "profile": false},
  "pipeline": {"stages": "auto", "partition": "best", "seed_layers": false,
               "activation_checkpoint_interval": 0, "pipe_partitioned": true,
               "grad_partitioned": true}
})";

// Every key of `want` is in `got` with the same value (numbers compared as numbers).
void ExpectSubset(const json& want, const json& got, const std::string& path) {
  for (auto it = want.begin(); it != want.end(); ++it) {
    std::string key = path.empty() ? it.key() : path + "." + it.key();
    ASSERT_TRUE(got.contains(it.key())) << key << " is missing";
    if (it->is_object()) {
      ExpectSubset(*it, got[it.key()], key);
    } else {
      EXPECT_EQ(got[it.key()], *it) << key;
    }
  }
}

TEST(ConfigDefaultsTest, EqualDeepSpeedsForEveryBlock) {
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(Base()));
  ExpectSubset(json::parse(kDeepSpeedDefaults), c.resolved, "");
  EXPECT_EQ(c.resolved["checkpoint"]["tag_validation"], "WARN");
  EXPECT_EQ(c.resolved["checkpoint"]["load_universal"], false);
  EXPECT_EQ(c.resolved["checkpoint"]["use_node_local_storage"], false);
  EXPECT_EQ(c.resolved["scheduler"], nullptr);
  // DeepSpeed turns overlap_comm on by default at stage 3 only.
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(Base(), {.set = {"zero_optimization.stage=3"}}));
  EXPECT_TRUE(c.zero.overlap_comm);
  EXPECT_THAT(c.warnings, IsEmpty());
}

TEST(ConfigDefaultsTest, TypedValuesMatchTheResolvedOnes) {
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(Base()));
  EXPECT_EQ(c.gradient_clipping, 1.0);
  EXPECT_EQ(c.fp16.initial_scale_power, 16);
  EXPECT_EQ(c.fp16.loss_scale_window, 1000);
  EXPECT_EQ(c.fp16.hysteresis, 2);
  EXPECT_EQ(c.fp16.min_loss_scale, 1);
  EXPECT_TRUE(c.fp16.dynamic());
  EXPECT_EQ(c.zero.reduce_bucket_size, 500'000'000);
  EXPECT_EQ(c.zero.stage3_prefetch_bucket_size, 50'000'000);
  EXPECT_EQ(c.zero.stage3_param_persistence_threshold, 100'000);
  EXPECT_FALSE(c.zero.overlap_comm);
  EXPECT_EQ(c.zero.offload_optimizer.device, OffloadConfig::Device::kNone);
  EXPECT_TRUE(c.zero.offload_optimizer.pin_memory);
  EXPECT_EQ(c.monitor.steps_per_print, 10);  // DeepSpeed's null: we print every 10 steps
  EXPECT_FALSE(c.comms.communication_data_type.has_value());
  EXPECT_EQ(c.comms.timeout_s, 600);
  EXPECT_EQ(c.scheduler.type, SchedulerConfig::Type::kNone);
}

// ---- optimizer

TEST(ConfigOptimizerTest, AdamAndAdamWAsDeepSpeedReadsThem) {
  json cfg = Base();
  cfg["optimizer"] = {{"type", "adam"},
                      {"params", {{"lr", 1e-4}, {"weight_decay", 0.1}, {"eps", 1e-6}}}};
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg));
  EXPECT_EQ(c.optimizer.type, OptimizerConfig::Type::kAdam);
  EXPECT_TRUE(c.optimizer.adam_w_mode);  // DeepSpeed's "Adam" decouples weight decay by default
  EXPECT_EQ(c.resolved["optimizer"]["type"], "Adam");
  EXPECT_DOUBLE_EQ(c.optimizer.beta1, 0.9);
  EXPECT_DOUBLE_EQ(c.optimizer.beta2, 0.999);
  EXPECT_DOUBLE_EQ(c.optimizer.eps, 1e-6);

  cfg["optimizer"]["params"]["adam_w_mode"] = false;
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(cfg));
  EXPECT_FALSE(c.optimizer.adam_w_mode);
  cfg["optimizer"]["type"] = "AdamW";  // AdamW is always decoupled
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(cfg));
  EXPECT_TRUE(c.optimizer.adam_w_mode);
}

TEST(ConfigOptimizerTest, RefusesWhatDeepSpeedOrDstrainCannotRun) {
  json cfg = Base();
  cfg["optimizer"]["type"] = "Lamb";
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   "cfg.json: optimizer.type 'Lamb' is not supported (supported: "
                                   "Adam, AdamW)"));
  cfg = Base();
  cfg["optimizer"]["params"]["max_grad_norm"] = 1.0;
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   HasSubstr("optimizer.params.max_grad_norm is not supported: "
                                             "use the top-level gradient_clipping")));
  cfg = Base();
  cfg["optimizer"]["params"]["betas"] = {0.9};
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   "cfg.json: optimizer.params.betas must be two numbers like "
                                   "[0.9, 0.999], got [0.9]"));
  // No optimizer section (DeepSpeed would take the script's): Hugging Face Trainer's default
  // AdamW, with a warning naming the values.
  cfg = Base();
  cfg.erase("optimizer");
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg));
  EXPECT_EQ(c.optimizer.type, OptimizerConfig::Type::kAdamW);
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 5e-5);
  EXPECT_DOUBLE_EQ(c.optimizer.beta2, 0.999);
  EXPECT_DOUBLE_EQ(c.optimizer.weight_decay, 0);
  EXPECT_THAT(c.warnings, ::testing::Contains(HasSubstr("optimizer is not set: training with "
                                                        "AdamW, lr 5e-05")));
}

// ---- scheduler

TEST(ConfigSchedulerTest, DefaultsPerScheduleAsInLrSchedules) {
  json cfg = Base();
  cfg["scheduler"] = {{"type", "WarmupLR"}};
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg));
  EXPECT_EQ(c.scheduler.type, SchedulerConfig::Type::kWarmupLR);
  EXPECT_EQ(c.scheduler.warmup_min_lr, 0);
  EXPECT_DOUBLE_EQ(c.scheduler.warmup_max_lr, 3e-4);  // WarmupLR: the optimizer's lr
  EXPECT_EQ(c.scheduler.warmup_num_steps, 1000);
  EXPECT_EQ(c.scheduler.warmup_type, SchedulerConfig::WarmupType::kLog);

  cfg["scheduler"] = {{"type", "WarmupDecayLR"}, {"params", {{"total_num_steps", 2000}}}};
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(cfg));
  EXPECT_DOUBLE_EQ(c.scheduler.warmup_max_lr, 1e-3);  // WarmupDecayLR: 0.001

  cfg["scheduler"] = {{"type", "WarmupCosineLR"}, {"params", {{"total_num_steps", 2000}}}};
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(cfg));
  EXPECT_DOUBLE_EQ(c.scheduler.cos_min_ratio, 1e-4);
  EXPECT_EQ(c.scheduler.warmup_min_ratio, 0);

  cfg["scheduler"] = {{"type", "OneCycle"},
                      {"params",
                       {{"cycle_min_lr", 1e-4},
                        {"cycle_max_lr", 1e-3},
                        {"cycle_first_step_size", 500},
                        {"cycle_first_stair_count", 3}}}};
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(cfg));
  EXPECT_EQ(c.scheduler.cycle_second_step_size, 500);  // the first, unless given
  EXPECT_EQ(c.scheduler.cycle_second_stair_count, 3);
  EXPECT_DOUBLE_EQ(c.scheduler.cycle_min_mom, 0.8);
  EXPECT_DOUBLE_EQ(c.scheduler.cycle_max_mom, 0.9);
  EXPECT_TRUE(c.scheduler.cycle_momentum);

  cfg["scheduler"] = {{"type", "LRRangeTest"}};
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(cfg));
  EXPECT_DOUBLE_EQ(c.scheduler.lr_range_test_min_lr, 1e-3);
  EXPECT_EQ(c.scheduler.lr_range_test_step_size, 2000);
  EXPECT_DOUBLE_EQ(c.scheduler.lr_range_test_step_rate, 1.0);
  EXPECT_FALSE(c.scheduler.lr_range_test_staircase);
}

TEST(ConfigSchedulerTest, RefusesUnknownTypesAndMissingRequiredParameters) {
  json cfg = Base();
  cfg["scheduler"] = {{"type", "CosineAnnealing"}};
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   "cfg.json: scheduler.type 'CosineAnnealing' is not supported "
                                   "(supported: WarmupLR, WarmupDecayLR, WarmupCosineLR, "
                                   "OneCycle, LRRangeTest)"));
  cfg["scheduler"] = {{"type", "WarmupDecayLR"}};
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   "cfg.json: scheduler.params.total_num_steps is required by "
                                   "WarmupDecayLR (DeepSpeed has no default): give a number, or "
                                   "\"auto\" to use trainer.max_steps"));
  cfg["scheduler"] = {{"type", "OneCycle"}, {"params", {{"cycle_max_lr", 1e-3}}}};
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   HasSubstr("scheduler.params.cycle_min_lr is required by "
                                             "OneCycle")));
  cfg["scheduler"] = {{"type", "LRRangeTest"}, {"params", {{"lr_range_test_step_size", 0}}}};
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   "cfg.json: scheduler.params.lr_range_test_step_size must be "
                                   ">= 1, got 0"));
  cfg["scheduler"] = {{"type", "WarmupLR"}, {"params", {{"warmup_type", "cubic"}}}};
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg));
  EXPECT_THAT(c.warnings, Contains("cfg.json: scheduler.params.warmup_type 'cubic' is not log or "
                                   "linear: using log (as DeepSpeed does)"));
}

// ---- ZeRO

TEST(ConfigZeroTest, ReadsStagesOffloadAndDeepSpeedsAliases) {
  json cfg = Base();
  cfg["zero_optimization"] = {{"stage", 3},
                              {"prefetch_bucket_size", 5e7},
                              {"reduce_bucket_size", 2e8},
                              {"overlap_comm", false},
                              {"offload_optimizer", {{"device", "cpu"}, {"pin_memory", false}}},
                              {"offload_param", {{"device", "cpu"}}},
                              {"stage3_gather_16bit_weights_on_model_save", true}};
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg));
  EXPECT_EQ(c.zero.stage, 3);
  EXPECT_EQ(c.zero.stage3_prefetch_bucket_size, 50'000'000);
  EXPECT_EQ(c.zero.reduce_bucket_size, 200'000'000);
  EXPECT_FALSE(c.zero.overlap_comm);
  EXPECT_EQ(c.zero.offload_optimizer.device, OffloadConfig::Device::kCpu);
  EXPECT_FALSE(c.zero.offload_optimizer.pin_memory);
  EXPECT_EQ(c.zero.offload_param.device, OffloadConfig::Device::kCpu);
  EXPECT_TRUE(c.zero.stage3_gather_16bit_weights_on_model_save);
  EXPECT_EQ(c.resolved["zero_optimization"]["stage3_prefetch_bucket_size"], 50'000'000);
  EXPECT_THAT(c.warnings, IsEmpty());
}

TEST(ConfigZeroTest, NvmeOffloadOfTheOptimizerNeedsAPathAndAStageAndBadStagesAreRefused) {
  json cfg = Base();
  cfg["zero_optimization"] = {{"stage", 2}, {"offload_optimizer", {{"device", "nvme"}}}};
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   "cfg.json: zero_optimization.offload_optimizer.nvme_path must "
                                   "name a directory on the NVMe disk when device is 'nvme'"));
  cfg["zero_optimization"]["offload_optimizer"]["nvme_path"] = "/local_nvme";
  cfg["zero_optimization"]["offload_optimizer"]["buffer_count"] = 2;
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg));
  EXPECT_EQ(c.zero.offload_optimizer.device, OffloadConfig::Device::kNvme);
  EXPECT_EQ(c.zero.offload_optimizer.nvme_path, "/local_nvme");
  EXPECT_EQ(c.zero.offload_optimizer.buffer_count, 2);
  cfg["zero_optimization"]["stage"] = 0;
  EXPECT_THAT(Parse(cfg),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("offload_optimizer.device 'nvme' needs ZeRO stage 1-3")));
  // The parameters on NVMe (stage 3): a path of their own is needed; below stage 3 the section
  // has no effect, as in DeepSpeed (a warning).
  cfg["zero_optimization"] = {{"stage", 3}, {"offload_param", {{"device", "nvme"}}}};
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   HasSubstr("offload_param.nvme_path must name a directory")));
  cfg["zero_optimization"]["offload_param"]["nvme_path"] = "/local_nvme";
  DS_ASSERT_OK_AND_ASSIGN(Config p, Parse(cfg));
  EXPECT_EQ(p.zero.offload_param.device, OffloadConfig::Device::kNvme);
  EXPECT_EQ(p.zero.offload_param.nvme_path, "/local_nvme");
  cfg["zero_optimization"]["stage"] = 2;
  DS_ASSERT_OK_AND_ASSIGN(Config below, Parse(cfg));
  EXPECT_THAT(below.warnings, Contains(HasSubstr("offload_param has no effect below stage 3")));
  cfg["zero_optimization"] = {{"stage", 4}};
  EXPECT_THAT(Parse(cfg),
              StatusIs(StatusCode::kInvalidArgument,
                       "cfg.json: zero_optimization.stage must be 0, 1, 2 or 3, got 4"));
  cfg["zero_optimization"] = {{"stage", 2}, {"mics_shard_size", 8}};
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   HasSubstr("zero_optimization.mics_shard_size was removed from "
                                             "DeepSpeed")));
  cfg["zero_optimization"] = {{"prefetch_bucket_size", 1}, {"stage3_prefetch_bucket_size", 2}};
  EXPECT_THAT(Parse(cfg),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("give zero_optimization.stage3_prefetch_bucket_size "
                                 "or zero_optimization.prefetch_bucket_size, not both")));
}

TEST(ConfigZeroTest, AcceptsDeepSpeedsDeprecatedForms) {
  json cfg = Base();
  cfg["zero_optimization"] = {{"stage", 2}, {"cpu_offload", true}};
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg));
  EXPECT_EQ(c.zero.offload_optimizer.device, OffloadConfig::Device::kCpu);
  EXPECT_THAT(c.warnings, Contains(HasSubstr("zero_optimization.cpu_offload is deprecated: use "
                                             "zero_optimization.offload_optimizer")));
  cfg["zero_optimization"] = true;  // the oldest form: stage 1
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(cfg));
  EXPECT_EQ(c.zero.stage, 1);
  EXPECT_EQ(c.resolved["zero_optimization"]["stage"], 1);
}

// ---- accepted but not implemented, and refused

TEST(ConfigNotImplementedTest, KeysSetAwayFromTheirDefaultsAreNamed) {
  json cfg = Base();
  cfg["flops_profiler"] = {{"enabled", true}};
  cfg["activation_checkpointing"] = {{"partition_activations", true}, {"profile", false}};
  cfg["zero_optimization"] = {
      {"stage", 2}, {"zero_quantized_weights", true}, {"contiguous_gradients", true}};
  cfg["autotuning"] = {{"enabled", true}};
  cfg["wandb"] = {{"enabled", true}};
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg));
  EXPECT_THAT(c.not_implemented,
              ::testing::UnorderedElementsAre(
                  "flops_profiler.enabled", "activation_checkpointing.partition_activations",
                  "zero_optimization.zero_quantized_weights", "autotuning", "wandb.enabled"));
  EXPECT_THAT(c.warnings, Contains(HasSubstr("cfg.json: accepted but not implemented (no effect "
                                             "in dstrain): ")));
  EXPECT_THAT(c.warnings, Contains("cfg.json: wandb.enabled: wandb is not supported (dstrain "
                                   "runs offline): ignored; use tensorboard or csv_monitor"));
  EXPECT_TRUE(c.monitor.wall_clock_breakdown);  // the profiler turns it on, as in DeepSpeed
}

TEST(ConfigParallelismTest, DegreesAreReadAndMustFitTheWorld) {
  json cfg = Base();
  cfg["pipeline"] = {{"stages", 2}};
  cfg["tensor_parallel"] = {{"autotp_size", 2}};
  Overrides eight;
  eight.world_size = 8;
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg, eight));
  EXPECT_EQ(c.parallel.tp, 2);
  EXPECT_EQ(c.parallel.pp, 2);
  EXPECT_EQ(c.parallel.dp, 2);
  EXPECT_EQ(c.batch.data_parallel_size, 2);
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   "cfg.json: tensor_parallel.autotp_size (2) x pipeline.stages "
                                   "(2) = 4 does not divide the world size 1: launch a multiple "
                                   "of 4 ranks"));
  cfg = Base();
  cfg["pipeline"] = {{"stages", "auto"}};
  cfg["tensor_parallel"] = {{"autotp_size", 0}};
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(cfg));
  EXPECT_EQ(c.parallel.tp * c.parallel.pp, 1);
  cfg["tensor_parallel"] = {{"autotp_size", 2}, {"tp", {{"tp_size", 4}}}};
  EXPECT_THAT(Parse(cfg, eight), StatusIs(StatusCode::kInvalidArgument, HasSubstr("disagree")));
  cfg = Base();
  cfg["pipeline"] = {{"stages", -1}};
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   HasSubstr("pipeline.stages -1: the number of pipeline stages "
                                             "is a positive integer")));
}

TEST(ConfigNotImplementedTest, SettingsWeCannotHonourAreErrors) {
  json cfg = Base();
  cfg["sequence_parallel_size"] = 2;
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   HasSubstr("sequence parallelism is not implemented")));
  cfg = Base();
  cfg["gradient_allreduce_op"] = "sum";
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   "cfg.json: gradient_allreduce_op 'sum' is not implemented in "
                                   "dstrain (gradients are averaged: use \"mean\")"));
  cfg = Base();
  cfg["amp"] = {{"enabled", true}};
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   "cfg.json: amp was removed from DeepSpeed, which refuses it "
                                   "(use fp16 or bf16): remove the key"));
}

// ---- dstrain's sections

TEST(ConfigModelTest, PresetsAndExplicitSizes) {
  const struct {
    const char* preset;
    int64_t n_layer, n_head, d_model, seq_len, vocab;
  } kPresets[] = {{"demo", 4, 4, 128, 128, 256},
                  {"gpt2-124m", 12, 12, 768, 1024, 50257},
                  {"gpt2-350m", 24, 16, 1024, 1024, 50257},
                  {"gpt2-774m", 36, 20, 1280, 1024, 50257},
                  {"gpt2-1558m", 48, 25, 1600, 1024, 50257},
                  {"gpt-1.3b", 24, 16, 2048, 2048, 50257}};
  for (const auto& p : kPresets) {
    json cfg = Base();
    cfg["model"] = {{"preset", p.preset}};
    DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg));
    EXPECT_EQ(c.model.preset, p.preset);
    EXPECT_EQ(c.model.n_layer, p.n_layer) << p.preset;
    EXPECT_EQ(c.model.n_head, p.n_head) << p.preset;
    EXPECT_EQ(c.model.d_model, p.d_model) << p.preset;
    EXPECT_EQ(c.model.seq_len, p.seq_len) << p.preset;
    EXPECT_EQ(c.model.vocab, p.vocab) << p.preset;
  }
  EXPECT_EQ(ModelPresetNames().size(), std::size(kPresets));

  json cfg = Base();
  cfg["model"] = {{"preset", "gpt2-124m"}, {"seq_len", 256}, {"vocab", 50304}};
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg));
  EXPECT_EQ(c.model.seq_len, 256);
  EXPECT_EQ(c.model.vocab, 50304);
  EXPECT_EQ(c.model.n_layer, 12);

  cfg["model"] = {{"n_layer", 2}, {"n_head", 2}, {"d_model", 64}, {"seq_len", 32}, {"vocab", 99}};
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(cfg));
  EXPECT_EQ(c.model.preset, "");
  EXPECT_EQ(c.model.vocab, 99);
}

TEST(ConfigModelTest, ErrorsSayWhatIsMissing) {
  json cfg = Base();
  cfg["model"] = {{"preset", "gpt5"}};
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   "cfg.json: model.preset 'gpt5' is not known (presets: demo, "
                                   "gpt2-124m, gpt2-350m, gpt2-774m, gpt2-1558m, gpt-1.3b)"));
  cfg["model"] = {{"n_layer", 2}, {"n_head", 2}, {"d_model", 64}, {"seq_len", 32}};
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   HasSubstr("cfg.json: model.vocab is not set: give it, or a "
                                             "model.preset")));
  cfg["model"]["vocab"] = 256;
  cfg["model"]["d_model"] = 65;
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   "cfg.json: model.d_model (65) must be a multiple of "
                                   "model.n_head (2)"));
  cfg.erase("model");
  EXPECT_THAT(Parse(cfg),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("cfg.json: model is not set")));
}

TEST(ConfigTrainerDataCheckpointTest, MlmProbabilityIsARateStrictlyBetween0And1) {
  json cfg = Base();
  cfg["data"] = {{"mlm_probability", 0.3}};
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg));
  EXPECT_DOUBLE_EQ(c.data.mlm_probability.value_or(0), 0.3);
  for (double bad : {0.0, 1.0, -0.1}) {
    cfg["data"]["mlm_probability"] = bad;
    EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                     HasSubstr("data.mlm_probability must be in (0, 1)")));
  }
}

TEST(ConfigTrainerDataCheckpointTest, DefaultsAndOurKeys) {
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(Base()));
  EXPECT_EQ(c.trainer.max_steps, 100);
  EXPECT_EQ(c.trainer.eval_interval, 250);
  EXPECT_EQ(c.trainer.seed, 42u);
  EXPECT_EQ(c.data.format, DataConfig::Format::kAuto);
  EXPECT_DOUBLE_EQ(c.data.val_fraction, 0.1);
  EXPECT_FALSE(c.data.mlm_probability.has_value());  // the model's own (BERT: 0.15)
  EXPECT_EQ(c.checkpoint.save_dir, "");              // <trainer.output_dir>/checkpoints
  EXPECT_EQ(c.checkpoint.codec, "bytegroup+zstd");
  EXPECT_EQ(c.checkpoint.chunk_bytes, uint64_t{4} << 20);
  EXPECT_EQ(c.checkpoint.staging_bytes, 0u);  // auto: sized to the state when the writer starts
  EXPECT_EQ(c.checkpoint.best_metric, "eval_loss");

  json cfg = Base();
  cfg["data"] = {{"path", "data/train.bin"}, {"format", "nanogpt"}};
  cfg["checkpoint"] = {{"save_dir", "/ckpt"}, {"keep_last", 3},           {"max_bytes", "100G"},
                       {"codec", "zstd"},     {"tag_validation", "fail"}, {"best_mode", "max"}};
  cfg["comms"] = {{"timeout_s", 1800}};
  cfg["communication_data_type"] = "BF16";
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(cfg));
  EXPECT_EQ(c.data.format, DataConfig::Format::kNanoGpt);
  EXPECT_EQ(c.checkpoint.keep_last, 3u);
  EXPECT_EQ(c.checkpoint.max_bytes, uint64_t{100} << 30);
  EXPECT_EQ(c.checkpoint.codec, "zstd");
  EXPECT_EQ(c.checkpoint.tag_validation, "FAIL");
  EXPECT_EQ(c.checkpoint.best_mode, "max");
  EXPECT_EQ(c.comms.timeout_s, 1800);
  EXPECT_EQ(c.comms.communication_data_type, Precision::kBf16);

  cfg["checkpoint"] = {{"codec", "lz4"}};
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   "cfg.json: checkpoint.codec 'lz4' is not one of: "
                                   "bytegroup+zstd, zstd, raw"));
  cfg["checkpoint"] = {{"chunk_bytes", "64MiB"}, {"staging_bytes", "100MiB"}};
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   HasSubstr("checkpoint.staging_bytes (100.0 MiB) must hold at "
                                             "least two chunks")));
  cfg["checkpoint"] = {{"chunk_bytes", "64MiB"}, {"staging_bytes", "auto"}};
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(cfg));
  EXPECT_EQ(c.checkpoint.staging_bytes, 0u);
  cfg["checkpoint"] = {{"staging_bytes", "18GiB"}};
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(cfg));
  EXPECT_EQ(c.checkpoint.staging_bytes, uint64_t{18} << 30);
  EXPECT_EQ(c.checkpoint.device_staging, "auto");
  cfg["checkpoint"] = {{"device_staging", false}};  // JSON booleans, as DeepSpeed's flags are
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(cfg));
  EXPECT_EQ(c.checkpoint.device_staging, "false");
  EXPECT_EQ(c.checkpoint.encode_threads, 0u);
  EXPECT_EQ(c.checkpoint.background_nice, 10);
  cfg["checkpoint"] = {{"encode_threads", 8}, {"background_nice", 0}};
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(cfg));
  EXPECT_EQ(c.checkpoint.encode_threads, 8u);
  EXPECT_EQ(c.checkpoint.background_nice, 0);
  cfg["checkpoint"] = {{"background_nice", 20}};
  EXPECT_THAT(Parse(cfg),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("checkpoint.background_nice must be between 0 and 19")));
  cfg["checkpoint"] = {{"device_staging", "maybe"}};
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   "cfg.json: checkpoint.device_staging 'maybe' is not one of: "
                                   "auto, true, false"));
  cfg.erase("checkpoint");
  EXPECT_EQ(c.trainer.cuda_graphs, "false");
  cfg["trainer"] = {{"max_steps", 10}, {"cuda_graphs", true}};
  DS_ASSERT_OK_AND_ASSIGN(c, Parse(cfg));
  EXPECT_EQ(c.trainer.cuda_graphs, "true");
  cfg["trainer"] = {{"max_steps", 10}, {"cuda_graphs", "sometimes"}};
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   "cfg.json: trainer.cuda_graphs 'sometimes' is not one of: "
                                   "auto, true, false"));
  cfg["trainer"] = {{"max_steps", 0}};
  EXPECT_THAT(Parse(cfg), StatusIs(StatusCode::kInvalidArgument,
                                   "cfg.json: trainer.max_steps must be >= 1, got 0"));
}

}  // namespace
}  // namespace ds::engine
