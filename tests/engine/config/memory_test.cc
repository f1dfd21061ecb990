// The built-in GPT's parameter count and the per-rank model-state memory at each ZeRO stage,
// against numbers worked out by hand here.
#include "engine/config/memory.h"

#include "config_test_util.h"

namespace ds::engine {
namespace {

using ::ds::testing::IsOk;
using ::ds::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

ModelConfig Preset(std::string_view name) {
  Result<ModelConfig> m = ModelPreset(name);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return m.ok() ? *m : ModelConfig{};
}

TEST(ConfigParameterCountTest, Gpt2SizesAsPublished) {
  // 124M: wte 50257*768 = 38,597,376; wpe 1024*768 = 786,432; per block 12*768^2 + 13*768 =
  // 7,087,872, times 12 = 85,054,464; ln_f 1,536.
  EXPECT_EQ(ModelParameterCount(Preset("gpt2-124m")), 124'439'808);
  EXPECT_EQ(ModelParameterCount(Preset("gpt2-350m")), 354'823'168);
  EXPECT_EQ(ModelParameterCount(Preset("gpt2-774m")), 774'030'080);
  EXPECT_EQ(ModelParameterCount(Preset("gpt2-1558m")), 1'557'611'200);
  // 50257*2048 + 2048*2048 + 24*(12*2048^2 + 13*2048) + 2*2048
  EXPECT_EQ(ModelParameterCount(Preset("gpt-1.3b")), 1'315'723'264);
  // 256*128 + 128*128 + 4*(12*128^2 + 13*128) + 2*128
  EXPECT_EQ(ModelParameterCount(Preset("demo")), 842'496);
  EXPECT_EQ(LargestGatheredParameters(Preset("gpt2-124m")), 38'597'376);  // the embedding
}

TEST(ConfigMemoryTest, Gpt2On4RanksInBf16AtEachStage) {
  const ModelConfig m = Preset("gpt2-124m");
  const uint64_t p = 124'439'808, shard = p / 4;  // 31,109,952
  ZeroConfig zero;
  struct Want {
    uint64_t params, grads, optimizer, gathered;
  };
  const Want kWant[] = {
      // fp32 gradients: the whole accumulator at stages 0-1, the partition at 2-3.
      {2 * p, 4 * p, 12 * p, 0},          // 248,879,616 / 497,759,232 / 1,493,277,696
      {2 * p, 4 * p, 12 * shard, 0},      // optimizer 373,319,424
      {2 * p, 4 * shard, 12 * shard, 0},  // grads 124,439,808
      {2 * shard, 4 * shard, 12 * shard, 2 * 38'597'376},
  };
  for (int stage = 0; stage <= 3; ++stage) {
    zero.stage = stage;
    MemoryEstimate e = EstimateMemory(m, 4, zero, Precision::kBf16);
    EXPECT_EQ(e.params, kWant[stage].params) << "stage " << stage;
    EXPECT_EQ(e.grads, kWant[stage].grads) << "stage " << stage;
    EXPECT_EQ(e.optimizer, kWant[stage].optimizer) << "stage " << stage;
    EXPECT_EQ(e.gathered, kWant[stage].gathered) << "stage " << stage;
    EXPECT_EQ(e.host, 0u);
  }
  zero.stage = 0;
  EXPECT_EQ(EstimateMemory(m, 4, zero, Precision::kBf16).device_total(), 18 * p);
}

TEST(ConfigMemoryTest, Fp32KeepsAMasterCopyToo) {
  const uint64_t p = 124'439'808;
  ZeroConfig zero;
  MemoryEstimate e = EstimateMemory(Preset("gpt2-124m"), 1, zero, Precision::kFp32);
  EXPECT_EQ(e.params, 4 * p);
  EXPECT_EQ(e.grads, 4 * p);
  EXPECT_EQ(e.optimizer, 12 * p);
}

TEST(ConfigMemoryTest, CpuOffloadMovesStateToTheHost) {
  const uint64_t shard = 124'439'808 / 4;
  ZeroConfig zero;
  zero.stage = 2;
  zero.offload_optimizer.device = OffloadConfig::Device::kCpu;
  MemoryEstimate e = EstimateMemory(Preset("gpt2-124m"), 4, zero, Precision::kFp16);
  EXPECT_EQ(e.optimizer, 0u);
  EXPECT_EQ(e.grads, 0u);
  EXPECT_EQ(e.host, 12 * shard + 4 * shard);  // master, moments, gradient partition
  zero.stage = 3;
  zero.offload_param.device = OffloadConfig::Device::kCpu;
  e = EstimateMemory(Preset("gpt2-124m"), 4, zero, Precision::kFp16);
  EXPECT_EQ(e.params, 0u);
  EXPECT_EQ(e.host, 16 * shard + 2 * shard);
  zero.stage = 0;  // offload needs ZeRO: nothing moves
  e = EstimateMemory(Preset("gpt2-124m"), 4, zero, Precision::kFp16);
  EXPECT_EQ(e.host, 0u);
}

TEST(ConfigMemoryTest, PartitionsRoundUp) {
  ZeroConfig zero;
  zero.stage = 3;
  // 842,496 / 5 = 168,499.2: each rank holds 168,500 elements.
  MemoryEstimate e = EstimateMemory(Preset("demo"), 5, zero, Precision::kFp32);
  EXPECT_EQ(e.params, 4u * 168'500);
  EXPECT_EQ(e.optimizer, 12u * 168'500);
}

TEST(ConfigMemoryTest, TableForDryRun) {
  json cfg = Base();
  cfg["model"] = {{"preset", "gpt2-124m"}};
  cfg["bf16"] = {{"enabled", true}};
  cfg["zero_optimization"] = {{"stage", 1}};
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg, {.world_size = 4}));
  std::string table = FormatMemoryTable(c);
  EXPECT_THAT(table, HasSubstr("Model states per rank: gpt2-124m, 124439808 parameters, bf16, "
                               "data-parallel size 4"));
  EXPECT_THAT(table, HasSubstr("  1*  "));
  EXPECT_THAT(table, HasSubstr("  3   "));
}

// What the model state needs against what the machine has: fits, the GPU too small, the host
// too small for several CPU ranks, and offloaded state against the host.
TEST(ConfigMemoryTest, CheckMemoryFitsNamesWhereAndTheKeysToChange) {
  json cfg = Base();
  cfg["model"] = {{"preset", "gpt2-124m"}};
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg));
  // fp32, stage 0, one rank: 124,439,808 x (4 weights + 4 grads + 12 optimizer) = 2.32 GiB.
  const uint64_t need = 124'439'808ull * 20;
  MachineMemory gpu{.device_bytes = need, .host_bytes = 1ull << 40, .device_name = "cuda:0"};
  EXPECT_THAT(CheckMemoryFits(c, gpu), IsOk());
  gpu.device_bytes = need - 1;
  EXPECT_THAT(CheckMemoryFits(c, gpu),
              StatusIs(StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("124439808 parameters need 2.3 GiB of model state at ZeRO "
                                       "stage 0"),
                             HasSubstr("the memory of cuda:0 is 2.3 GiB"),
                             HasSubstr("model.n_layer 12, model.d_model 768"),
                             HasSubstr("raise zero_optimization.stage (now 0)"))));
  // On the CPU every rank of the host shares its memory.
  MachineMemory cpu{.device_bytes = 0, .host_bytes = 2 * need, .ranks_per_host = 2};
  EXPECT_THAT(CheckMemoryFits(c, cpu), IsOk());
  cpu.ranks_per_host = 3;
  EXPECT_THAT(CheckMemoryFits(c, cpu),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("host memory (3 rank(s) on this host, training on the CPU)")));
  // Offloaded optimizer state counts against the host, not the GPU.
  cfg["zero_optimization"] = {{"stage", 2}, {"offload_optimizer", {{"device", "cpu"}}}};
  DS_ASSERT_OK_AND_ASSIGN(Config off, Parse(cfg));
  MachineMemory small_host{.device_bytes = 1ull << 40, .host_bytes = 1ull << 30};
  EXPECT_THAT(CheckMemoryFits(off, small_host),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("offloaded state")));
}

// Activations by hand for the demo preset (C 128, L 4, T 128, V 256) at micro batch 2, bf16:
// 256 tokens; a layer keeps 17 values per token and channel (tp 1): 256 * 128 * 17 * 2 bytes.
TEST(ConfigMemoryTest, ActivationsPerMicroBatchByHand) {
  json cfg = Base();
  cfg["model"] = {{"preset", "demo"}};
  cfg["bf16"] = {{"enabled", true}};
  cfg["train_micro_batch_size_per_gpu"] = 2;
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg));
  const uint64_t tokens = 256, layer = tokens * 128 * 17 * 2, embed = tokens * 128 * 2;
  EXPECT_EQ(ActivationBytes(c, false, true), 4 * layer + embed + tokens * 256 * 4);
  // Checkpointed: each layer's input, and one layer recomputed at a time.
  EXPECT_EQ(ActivationBytes(c, true, true),
            4 * tokens * 128 * 2 + layer + embed + tokens * 256 * 4);
  // The CPU's cross-entropy keeps fp32 log-probabilities and their gradient besides.
  EXPECT_EQ(ActivationBytes(c, false, false), 4 * layer + embed + tokens * 256 * (2 + 8));
  // Tensor parallelism cuts 12 of the 17.
  DS_ASSERT_OK_AND_ASSIGN(Config tp, Parse(cfg, {.world_size = 2}));
  tp.parallel.tp = 2;
  EXPECT_EQ(ActivationBytes(tp, false, true),
            4 * tokens * 128 * (5 + 6) * 2 + embed + tokens * 256 * 4);
}

// A Llama-3.2-1B-shaped folder (as LoadConfig keeps its config.json): its own layer shapes, not
// the GPT's, for the parameters a split rank holds, the unit stage 3 gathers and activations.
TEST(ConfigMemoryTest, ALlamaFolderIsCountedByItsOwnShapes) {
  ModelConfig m;
  m.arch = "hf";
  m.hf_path = "/models/llama";
  m.hf_config_json = R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 128256,
      "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
      "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
      "tie_word_embeddings": true})";
  m.n_layer = 16;
  m.n_head = 32;
  m.d_model = 2048;
  m.vocab = 128256;
  m.seq_len = 2048;
  m.hf_parameters = 1'235'814'400;  // transformers' count of this shape
  ASSERT_TRUE(FolderModel(m).has_value());
  EXPECT_EQ(FolderModel(m)->n_kv_head, 8);
  // A layer: q and o 2048 x 2048 each, k and v 2048 x 512 each, gate, up and down 2048 x 8192
  // each (60,817,408, halved at TP 2), and two RMSNorms (4,096, whole).
  const int64_t layer_tp2 = 60'817'408 / 2 + 4'096;
  ParallelConfig tp2;
  tp2.tp = 2;
  EXPECT_EQ(ParametersOnLargestRank(m, tp2), 16 * layer_tp2 + 128256LL * 2048 + 2048);
  // Two stages: 8 layers each; the first holds embed_tokens, the last the norm and a copy of it.
  ParallelConfig pp2;
  pp2.pp = 2;
  EXPECT_EQ(ParametersOnLargestRank(m, pp2), 8 * (60'817'408 + 4'096) + 128256LL * 2048 + 2048);
  ParallelConfig whole;
  // Whole: the folder's own count (every layer, the embedding once, the final norm).
  EXPECT_EQ(16 * (60'817'408 + 4'096) + 128256LL * 2048 + 2048, m.hf_parameters);
  EXPECT_EQ(ParametersOnLargestRank(m, whole), m.hf_parameters);
  EXPECT_EQ(LargestGatheredParameters(m), 128256LL * 2048);  // the embedding beats a layer

  json cfg = Base();
  cfg["model"] = {{"preset", "demo"}};
  cfg["bf16"] = {{"enabled", true}};
  cfg["train_micro_batch_size_per_gpu"] = 1;
  DS_ASSERT_OK_AND_ASSIGN(Config c, Parse(cfg));
  c.model = m;
  // Per token and layer on a GPU: 4 x 2048 whole, 5 x 2048 (query width) + 3 x 8192 cut; bf16.
  const uint64_t tokens = 2048, layer = tokens * (4 * 2048 + 5 * 2048 + 3 * 8192) * 2;
  const uint64_t embed = tokens * 2048 * 2, head = tokens * 128256ULL * 4;
  EXPECT_EQ(ActivationBytes(c, false, true), 16 * layer + embed + head);
  EXPECT_EQ(ActivationBytes(c, true, true), 16 * tokens * 2048 * 2 + layer + embed + head);
}

// The cheapest setting that fits one 80 GiB GPU and a 128 GiB host, by model size (bf16, one
// rank): 16 bytes a parameter of state at stage 0, 2 on the GPU and 16 on the host once the
// optimizer is offloaded.
TEST(ConfigMemoryTest, AdviceNamesTheCheapestSettingThatFits) {
  MachineMemory h100{
      .device_bytes = 80ull << 30, .host_bytes = 128ull << 30, .device_name = "cuda:0"};
  auto advice = [&](int64_t layers) {
    json cfg = Base();
    cfg["model"] = {{"n_layer", layers}, {"n_head", 32},   {"d_model", 4096},
                    {"seq_len", 1024},   {"vocab", 50304}, {"activation_checkpointing", true}};
    cfg["bf16"] = {{"enabled", true}};
    cfg["train_micro_batch_size_per_gpu"] = 1;
    Result<Config> c = Parse(cfg);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? MemoryAdvice(*c, h100) : std::string();
  };
  // 8 layers: 1.8B parameters, 27 GiB of state at stage 0.
  EXPECT_THAT(advice(8), HasSubstr("Cheapest setting that fits: stage 0: "));
  // 24 layers: 5.0B, 75 GiB at stage 0 (over 92% of 80); the optimizer offloaded: 9.4 GiB on
  // the GPU, 75 GiB of host.
  EXPECT_THAT(advice(24),
              HasSubstr("Cheapest setting that fits: stage 2 + offload_optimizer cpu: "));
  // 60 layers: 12.3B: 183 GiB of host for the offloaded state; with the optimizer on NVMe the
  // host holds the gradient partition and the parameters, 6 bytes a parameter (69 GiB).
  EXPECT_THAT(advice(60), HasSubstr("Cheapest setting that fits: stage 3 + offload_optimizer nvme "
                                    "+ offload_param cpu: "));
  // 110 layers: 22.4B: 6 bytes a parameter is 125 GiB of host (over 92% of 128); with the
  // parameters on NVMe too, the host holds the gradient partition only (83 GiB).
  EXPECT_THAT(advice(110), HasSubstr("Cheapest setting that fits: stage 3 + offload_optimizer nvme "
                                     "+ offload_param nvme: "));
  // 200 layers: 40.5B: 151 GiB of host for the gradient partition even so.
  EXPECT_THAT(advice(200), HasSubstr("No setting fits"));
  const std::string table = advice(24);
  EXPECT_THAT(table, HasSubstr("with activation checkpointing"));
  EXPECT_THAT(table, HasSubstr("stage 3 + offload_optimizer cpu + offload_param cpu"));
}

// Only settings the layout can run are weighed: pipeline stages take ZeRO 0-1 (the optimizer
// offloaded at stage 1), tensor parallelism 0-2.
TEST(ConfigMemoryTest, AdviceWeighsOnlyWhatTheLayoutRuns) {
  MachineMemory h100{
      .device_bytes = 80ull << 30, .host_bytes = 128ull << 30, .device_name = "cuda:0"};
  json cfg = Base();
  cfg["model"] = {{"preset", "gpt-1.3b"}};
  cfg["bf16"] = {{"enabled", true}};
  cfg["pipeline"] = {{"stages", 2}};
  DS_ASSERT_OK_AND_ASSIGN(Config pp, Parse(cfg, {.world_size = 2}));
  std::string table = MemoryAdvice(pp, h100);
  EXPECT_THAT(table, HasSubstr("  stage 1 "));
  EXPECT_THAT(table, HasSubstr("stage 1 + offload_optimizer cpu"));
  EXPECT_THAT(table, Not(HasSubstr("\n  stage 2")));  // the table's rows
  EXPECT_THAT(table, Not(HasSubstr("\n  stage 3")));
  cfg.erase("pipeline");
  cfg["tensor_parallel"] = {{"autotp_size", 2}};
  DS_ASSERT_OK_AND_ASSIGN(Config tp, Parse(cfg, {.world_size = 2}));
  table = MemoryAdvice(tp, h100);
  EXPECT_THAT(table, HasSubstr("stage 2 + offload_optimizer cpu"));
  EXPECT_THAT(table, Not(HasSubstr("\n  stage 3")));
  EXPECT_THAT(table, Not(HasSubstr("stage 1 + offload")));
}

}  // namespace
}  // namespace ds::engine
