// Shared by the Hugging Face family tests (llama_test.cc, bert_test.cc): the oracle folders of
// tests/engine/model/hf_oracle.py, its tensors, and a model built from a folder.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "engine/config/config.h"
#include "engine/model/bert.h"
#include "engine/model/hf_gpt2.h"
#include "engine/model/llama.h"
#include "engine/train/trainer.h"
#include "formats/safetensors.h"
#include "testing/paths.h"
#include "testing/python.h"

namespace ds::engine::testing {

// Runs the oracle into `dir`; a failed assertion (with the output) when it fails.
inline void RunOracle(const std::string& dir, const std::string& variant,
                      const std::string& extra) {
  int status = 0;
  const std::string cmd =
      bench::ShellQuote(ds::testing::Python()) + " " +
      bench::ShellQuote(ds::testing::SourceDir() + "/tests/engine/model/hf_oracle.py") + " " +
      bench::ShellQuote(dir) + " " + variant + " " + extra + " 2>&1";
  std::optional<std::string> out = bench::RunCapture(cmd, &status);
  ASSERT_TRUE(out.has_value() && status == 0) << cmd << "\n" << out.value_or("");
}

// Fills `dir` with the oracle's folder of `variant`. The folders are deterministic (seeded), and
// making one starts Python with transformers (~10 s), while ctest runs every test case as a
// process of its own: so each (variant, extra, hf_oracle.py's text) is made once, under
// <build>/test-cache/hf-oracle, and copied. "reload" reads `dir` itself and is never cached.
inline void MakeFolder(const std::string& dir, const std::string& variant,
                       const std::string& extra = "") {
  if (variant == "reload") return RunOracle(dir, variant, extra);
  io::Env* env = io::Env::Default();
  Result<std::string> script =
      env->ReadFileToString(ds::testing::SourceDir() + "/tests/engine/model/hf_oracle.py");
  ASSERT_TRUE(script.ok()) << script.status().ToString();
  std::string key = variant + extra + "-" + std::to_string(std::hash<std::string>{}(*script));
  for (char& c : key) {
    if (c == ' ' || c == '/') c = '_';
  }
  const std::string root = ds::testing::BuildDir() + "/test-cache/hf-oracle";
  const std::string cache = root + "/" + key;
  ASSERT_TRUE(env->CreateDirs(root).ok());
  Result<bool> cached = env->Exists(cache);
  ASSERT_TRUE(cached.ok());
  if (!*cached) {  // made aside and renamed into place: a test beside this one may race it
    const std::string tmp = cache + ".tmp." + std::to_string(::getpid());
    RunOracle(tmp, variant, extra);
    if (::testing::Test::HasFatalFailure()) return;
    if (std::rename(tmp.c_str(), cache.c_str()) != 0) {
      ASSERT_TRUE(env->RemoveAll(tmp).ok());  // the other test's copy is the same folder
    }
  }
  int status = 0;
  const std::string cp = "mkdir -p " + bench::ShellQuote(dir) + " && cp -a " +
                         bench::ShellQuote(cache + "/.") + " " + bench::ShellQuote(dir) + " 2>&1";
  std::optional<std::string> out = bench::RunCapture(cp, &status);
  ASSERT_TRUE(out.has_value() && status == 0) << cp << "\n" << out.value_or("");
}

// The smallest DeepSpeed config the family tests train with: no model or data section.
inline constexpr char kTinyConfig[] =
    R"({"train_micro_batch_size_per_gpu": 2, "model": {},
        "optimizer": {"type": "AdamW", "params": {"lr": 0.003}}})";

// A trainer on the CPU for `config_json` (written to `out`/ds_config.json, as a user's file),
// the --set items `set` and --max-steps `steps`.
inline Result<std::unique_ptr<Trainer>> MakeCpuTrainer(const std::string& out,
                                                       const std::string& config_json,
                                                       std::vector<std::string> set, int steps) {
  Overrides o;
  o.set = std::move(set);
  o.max_steps = steps;
  const std::string file = out + "/ds_config.json";
  DS_RETURN_IF_ERROR(io::Env::Default()->WriteFileSynced(file, config_json));
  DS_ASSIGN_OR_RETURN(Config c, LoadConfig(io::Env::Default(), file, o));
  TrainerOptions t;
  t.device = "cpu";
  return Trainer::Create(io::Env::Default(), c, t);
}

inline Result<TrainSummary> TrainOnCpu(const std::string& out, const std::string& config_json,
                                       std::vector<std::string> set, int steps) {
  DS_ASSIGN_OR_RETURN(std::unique_ptr<Trainer> trainer,
                      MakeCpuTrainer(out, config_json, std::move(set), steps));
  return trainer->Run();
}

// `dsckpt ARGS` (ARGS already quoted), its output with stderr, and its exit status.
inline std::string Dsckpt(const std::string& args, int* status) {
  return bench::RunCapture(
             bench::ShellQuote(ds::testing::BuildDir() + "/dsckpt") + " " + args + " 2>&1", status)
      .value_or("");
}

inline torch::Tensor ReadOracle(const std::string& dir, const std::string& name) {
  Result<std::unique_ptr<fmt::SafetensorsReader>> r =
      fmt::SafetensorsReader::Open(io::Env::Default(), dir + "/oracle.safetensors");
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  if (!r.ok()) return {};
  const size_t i = (*r)->Find(name).value();
  const fmt::SafetensorsTensor& t = (*r)->tensors()[i];
  torch::Tensor out =
      torch::empty(t.shape, t.dtype == fmt::DType::kI64 ? torch::kLong : torch::kFloat);
  EXPECT_TRUE(
      (*r)->ReadTensorData(
              i, 0, std::span<std::byte>(static_cast<std::byte*>(out.data_ptr()), t.nbytes()))
          .ok());
  return out;
}

inline std::shared_ptr<LanguageModel> Build(const std::string& dir, bool deferred) {
  ModelConfig c;
  c.arch = "hf";
  c.hf_path = dir;
  c.seq_len = 12;
  std::optional<DeferredInit> scope;
  if (deferred) scope.emplace();
  Result<std::shared_ptr<LanguageModel>> m = MakeModel(c, 1234);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return m.ok() ? *m : nullptr;
}

inline torch::Tensor Logits(LanguageModel& m, const torch::Tensor& ids) {
  if (auto* l = dynamic_cast<LlamaImpl*>(&m)) return l->forward(ids);
  if (auto* b = dynamic_cast<BertImpl*>(&m)) return b->forward(ids);
  return dynamic_cast<HfGpt2Impl&>(m).forward(ids);
}

}  // namespace ds::engine::testing
