// The Llama family (engine/model/llama.h) against transformers itself: tiny random folders made
// by tests/engine/model/hf_oracle.py (save_pretrained, plain and sharded), the logits of both on
// the same tokens, training under ZeRO with partitioned construction, and the keys a folder
// may hold that the family refuses.
#include "engine/model/llama.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/config/config.h"
#include "engine/config/hf_model.h"
#include "engine/model/hf_gpt2.h"
#include "engine/train/trainer.h"
#include "formats/safetensors.h"
#include "testing/matchers.h"
#include "testing/paths.h"
#include "testing/python.h"
#include "tests/engine/data/data_test_util.h"
#include "tests/engine/model/hf_test_util.h"

namespace ds::engine {
namespace {

using testing::Build;
using testing::Dsckpt;
using testing::kTinyConfig;
using testing::Logits;
using testing::MakeCpuTrainer;
using testing::MakeFolder;
using testing::ReadOracle;
using testing::TrainOnCpu;

using ::testing::HasSubstr;

// fp32 logits of dstrain's model built from the folder against transformers': Llama with GQA
// and llama3 rope scaling from a sharded folder; Qwen2 with q/k/v biases, tied embeddings and
// linear scaling; a bf16 folder (weights converted to fp32 as they are read); and GPT-2
// (Conv1D layout, tied head).
TEST(LlamaTest, LogitsEqualTransformers) {
  DS_SKIP_OR_FAIL_WITHOUT_PYTHON("transformers, safetensors");
  for (const auto& [variant, extra] : std::vector<std::pair<std::string, std::string>>{
           {"llama", "--shards 3"}, {"qwen2", ""}, {"llama", "--dtype bfloat16"}, {"gpt2", ""}}) {
    SCOPED_TRACE(variant + " " + extra);
    ds::testing::TempDir dir;
    MakeFolder(dir.path(), variant, extra);
    std::shared_ptr<LanguageModel> m = Build(dir.path(), /*deferred=*/false);
    ASSERT_NE(m, nullptr);
    m->eval();
    torch::NoGradGuard no_grad;
    const torch::Tensor want = ReadOracle(dir.path(), "logits");
    const torch::Tensor got = Logits(*m, ReadOracle(dir.path(), "ids"));
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_LE((got - want).abs().max().item<double>(), 1e-4);
  }
}

// Deferred (partitioned) construction reads each parameter's ranges from the files: any split
// of a parameter equals the whole one.
TEST(LlamaTest, DeferredRangesEqualTheWholeTensor) {
  DS_SKIP_OR_FAIL_WITHOUT_PYTHON("transformers, safetensors");
  ds::testing::TempDir dir;
  MakeFolder(dir.path(), "llama", "--shards 2");
  std::shared_ptr<LanguageModel> whole = Build(dir.path(), false);
  std::shared_ptr<LanguageModel> lazy = Build(dir.path(), true);
  ASSERT_TRUE(whole && lazy && lazy->deferred());
  for (const auto& p : whole->named_parameters()) {
    const int64_t n = p.value().numel(), cut = n / 3 + 1;
    torch::Tensor parts =
        torch::cat({lazy->InitialValues(p.key(), 0, cut), lazy->InitialValues(p.key(), cut, n)});
    EXPECT_TRUE(torch::equal(parts, p.value().reshape({-1}))) << p.key();
  }
}

// A folder trains under ZeRO-3 (deferred: each rank reads its partition) to the same losses as
// at stage 0, and a folder without weights trains from transformers-style random values.
TEST(LlamaTest, TrainsFromAFolderAtStages0And3) {
  DS_SKIP_OR_FAIL_WITHOUT_PYTHON("transformers, safetensors");
  ds::testing::TempDir dir, nofile;
  MakeFolder(dir.path(), "llama");
  MakeFolder(nofile.path(), "llama-nofile");
  // The first and the last step's loss.
  auto run = [](const std::string& folder, int stage) -> std::vector<double> {
    ds::testing::TempDir out;
    Result<TrainSummary> s = TrainOnCpu(
        out.path(), kTinyConfig,
        {"model.hf_path=" + folder, "model.seq_len=12", "trainer.output_dir=" + out.path(),
         "tensorboard.enabled=false", "trainer.eval_interval=0", "steps_per_print=1",
         "checkpoint.enabled=false", "zero_optimization.stage=" + std::to_string(stage),
         "zero_optimization.stage3_param_persistence_threshold=0"},
        4);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::vector<double>{s->first_loss, s->last_loss} : std::vector<double>{};
  };
  const std::vector<double> zero0 = run(dir.path(), 0), zero3 = run(dir.path(), 3);
  ASSERT_EQ(zero0.size(), 2u);
  ASSERT_EQ(zero3.size(), 2u);
  for (size_t i = 0; i < zero0.size(); ++i) EXPECT_NEAR(zero0[i], zero3[i], 1e-4) << "loss " << i;
  EXPECT_LT(zero0.back(), zero0.front());
  const std::vector<double> fresh = run(nofile.path(), 3);
  ASSERT_EQ(fresh.size(), 2u);
  EXPECT_LT(fresh.back(), fresh.front());
}

// Trained from a folder, saved, exported back as a folder (`dsckpt export --format hf`):
// transformers loads it (AutoModelForCausalLM.from_pretrained) and its logits equal ours; the
// folder imports back (`dsckpt import DIR`) and exports to the same model.
TEST(LlamaTest, ExportedFolderLoadsInTransformersWithEqualLogits) {
  DS_SKIP_OR_FAIL_WITHOUT_PYTHON("transformers, safetensors");
  for (const std::string variant : {"qwen2", "gpt2"}) {
    SCOPED_TRACE(variant);
    ds::testing::TempDir dir, out;
    MakeFolder(dir.path(), variant);
    DS_ASSERT_OK_AND_ASSIGN(
        std::unique_ptr<Trainer> trainer,
        MakeCpuTrainer(
            out.path(), kTinyConfig,
            {"model.hf_path=" + dir.path(), "model.seq_len=12", "trainer.output_dir=" + out.path(),
             "tensorboard.enabled=false", "trainer.eval_interval=0", "zero_optimization.stage=3"},
            3));
    // The folder's config.json was read at start: saves do not need it any more.
    const std::string config = dir.path() + "/config.json";
    ASSERT_EQ(std::rename(config.c_str(), (config + ".away").c_str()), 0);
    DS_ASSERT_OK_AND_ASSIGN(TrainSummary s, trainer->Run());
    ASSERT_EQ(std::rename((config + ".away").c_str(), config.c_str()), 0);
    ASSERT_EQ(s.saves, 1);
    trainer.reset();
    const std::string folder = out.path() + "/hf";
    int status = 0;
    // Qwen2's folder in shards of at most 100 KB (save_pretrained's layout, with an index).
    const bool sharded = variant == "qwen2";
    std::string said = Dsckpt("export " + bench::ShellQuote(out.path() + "/checkpoints/latest") +
                                  " --format hf --out " + bench::ShellQuote(folder) +
                                  (sharded ? " --max-shard-size 100KB" : ""),
                              &status);
    ASSERT_EQ(status, 0) << said;
    DS_ASSERT_OK_AND_ASSIGN(const bool has_index,
                            io::Env::Default()->Exists(folder + "/model.safetensors.index.json"));
    EXPECT_EQ(has_index, sharded);
    if (sharded) {
      DS_ASSERT_OK_AND_ASSIGN(std::vector<std::string> files, io::Env::Default()->ListDir(folder));
      EXPECT_GT(std::count_if(files.begin(), files.end(),
                              [](const std::string& f) { return f.starts_with("model-0000"); }),
                3)
          << ::testing::PrintToString(files);
    }
    MakeFolder(folder, "reload");
    std::shared_ptr<LanguageModel> m = Build(folder, /*deferred=*/false);
    ASSERT_NE(m, nullptr);
    m->eval();
    torch::NoGradGuard no_grad;
    const torch::Tensor want = ReadOracle(folder, "logits");
    const torch::Tensor got = Logits(*m, ReadOracle(folder, "ids"));
    EXPECT_LE((got - want).abs().max().item<double>(), 1e-4);
    // The folder (sharded or not) imports back into a checkpoint (dsckpt import DIR keeps its
    // config.json), which exports to the same model.
    said = Dsckpt("import " + bench::ShellQuote(folder) + " --out " +
                      bench::ShellQuote(out.path() + "/imported"),
                  &status);
    ASSERT_EQ(status, 0) << said;
    said = Dsckpt("export " + bench::ShellQuote(out.path() + "/imported/latest") +
                      " --format hf --out " + bench::ShellQuote(folder + "2"),
                  &status);
    ASSERT_EQ(status, 0) << said;
    std::shared_ptr<LanguageModel> again = Build(folder + "2", /*deferred=*/false);
    ASSERT_NE(again, nullptr);
    again->eval();
    EXPECT_TRUE(torch::equal(Logits(*again, ReadOracle(folder, "ids")), got));
    // And the trained weights are not the folder's first ones.
    std::shared_ptr<LanguageModel> first = Build(dir.path(), false);
    const std::string any = first->named_parameters().keys().back();
    EXPECT_FALSE(torch::allclose(first->named_parameters()[any], m->named_parameters()[any]))
        << any;
  }
}

// 20 steps of dstrain from a folder give the losses of the same model trained by a PyTorch loop
// (tests/engine/model/hf_train_oracle.py: transformers' model, torch.optim.AdamW, clipping, a
// constant lr) on the same batch: the data is 2T + 1 tokens, the whole training split, which a
// micro batch of 2 reads every step. fp32 on the CPU; the tolerance is 2e-4 on each loss (the
// two sum in different orders; measured differences are around 1e-6).
TEST(LlamaTest, TwentyStepsEqualAPyTorchLoop) {
  DS_SKIP_OR_FAIL_WITHOUT_PYTHON("transformers, safetensors");
  for (const std::string variant : {"llama", "gpt2"}) {
    SCOPED_TRACE(variant);
    ds::testing::TempDir dir, out;
    MakeFolder(dir.path(), variant);
    constexpr int kT = 12, kSteps = 20;
    std::vector<uint32_t> tokens;
    for (int i = 0; i < 2 * kT + 1; ++i)
      tokens.push_back(static_cast<uint32_t>((i * 131 + 7) % 311));
    const std::string bytes = testing::LlmcBytes(20240520, 1, static_cast<int64_t>(tokens.size()),
                                                 tokens, 2);  // llm.c's uint16 format
    const std::string data = out.path() + "/train.bin";
    ASSERT_TRUE(io::Env::Default()->WriteFileSynced(data, bytes).ok());

    DS_ASSERT_OK_AND_ASSIGN(
        std::unique_ptr<Trainer> trainer,
        MakeCpuTrainer(
            out.path(), R"({"train_micro_batch_size_per_gpu": 2,
                          "gradient_clipping": 1.0, "model": {},
                          "optimizer": {"type": "AdamW", "params": {"lr": 0.002,
                            "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}}})",
            {"model.hf_path=" + dir.path(), "model.seq_len=12", "data.path=" + data,
             "data.val_fraction=0", "trainer.output_dir=" + out.path(), "tensorboard.enabled=false",
             "trainer.eval_interval=0", "steps_per_print=1", "checkpoint.enabled=false"},
            kSteps));
    DS_ASSERT_OK_AND_ASSIGN(TrainSummary summary, trainer->Run());
    ASSERT_EQ(summary.steps, kSteps);
    trainer.reset();
    std::vector<double> ours;
    DS_ASSERT_OK_AND_ASSIGN(std::string metrics,
                            io::Env::Default()->ReadFileToString(out.path() + "/metrics.jsonl"));
    for (size_t at = 0, end; (end = metrics.find('\n', at)) != std::string::npos; at = end + 1) {
      const nlohmann::json j = nlohmann::json::parse(metrics.substr(at, end - at));
      if (j.contains("loss")) ours.push_back(j["loss"].get<double>());
    }

    std::string list;
    for (uint32_t tok : tokens) list += (list.empty() ? "" : ",") + std::to_string(tok);
    int status = 0;
    const std::string cmd =
        bench::ShellQuote(ds::testing::Python()) + " " +
        bench::ShellQuote(ds::testing::SourceDir() + "/tests/engine/model/hf_train_oracle.py") +
        " " + bench::ShellQuote(dir.path()) + " " + list + " 12 20 0.002 0.9 0.95 1e-8 0.1 1.0";
    std::optional<std::string> said = bench::RunCapture(cmd + " 2>/dev/null", &status);
    ASSERT_TRUE(said.has_value() && status == 0) << cmd << "\n" << said.value_or("");
    const nlohmann::json want = nlohmann::json::parse(said->substr(said->rfind("{\"losses\"")));
    ASSERT_EQ(ours.size(), static_cast<size_t>(kSteps));
    ASSERT_EQ(want["losses"].size(), static_cast<size_t>(kSteps));
    double max_diff = 0;
    for (int i = 0; i < kSteps; ++i) {
      max_diff = std::max(max_diff, std::abs(ours[static_cast<size_t>(i)] -
                                             want["losses"][static_cast<size_t>(i)].get<double>()));
      EXPECT_NEAR(ours[static_cast<size_t>(i)],
                  want["losses"][static_cast<size_t>(i)].get<double>(), 2e-4)
          << "step " << i + 1;
    }
    std::printf("%s: max |loss difference| over %d steps: %.3g\n", variant.c_str(), kSteps,
                max_diff);
    EXPECT_LT(ours.back(), ours.front() - 1.0);  // it learns the batch
  }
}

// What the family cannot build is refused naming the file and the key.
TEST(LlamaTest, UnsupportedKeysAreRefusedByName) {
  ds::testing::TempDir dir;
  io::Env* env = io::Env::Default();
  auto write = [&](const std::string& json) {
    ASSERT_TRUE(env->WriteFileSynced(dir.path() + "/config.json", json).ok());
  };
  const std::string base =
      R"("architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8,
         "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2)";
  write("{" + base + R"(, "sliding_window": 4096})");
  EXPECT_THAT(ReadHfModel(env, dir.path()).status().message(), HasSubstr("sliding_window"));
  write("{" + base + R"(, "rope_scaling": {"rope_type": "yarn", "factor": 4}})");
  EXPECT_THAT(ReadHfModel(env, dir.path()).status().message(), HasSubstr("yarn"));
  write("{" + base + R"(, "num_key_value_heads": 3})");
  EXPECT_THAT(ReadHfModel(env, dir.path()).status().message(), HasSubstr("num_key_value_heads"));
  write(R"({"architectures": ["GPTNeoXForCausalLM"], "vocab_size": 10})");
  EXPECT_THAT(ReadHfModel(env, dir.path()).status().message(), HasSubstr("GPTNeoXForCausalLM"));
  write("{" + base + "}");
  Result<HfModelSpec> ok = ReadHfModel(env, dir.path());
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->head_dim, 4);
  EXPECT_TRUE(ok->weight_files.empty());
  EXPECT_THAT(ReadHfModel(env, dir.path() + "/nope").status().message(),
              HasSubstr("config.json does not exist"));
}

}  // namespace
}  // namespace ds::engine
