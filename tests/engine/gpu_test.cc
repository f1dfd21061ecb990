// Tests that need a GPU (label `gpu`): they skip with a message where none is visible, so CI
// (no GPU) only proves they compile and link.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAFunctions.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "engine/config/config.h"
#include "engine/model/gpt.h"
#include "engine/model/llama.h"
#include "engine/model/model.h"
#include "engine/optim/adamw.h"
#include "engine/runtime_info.h"
#include "engine/train/trainer.h"
#include "engine/zero/internal/host_link.h"
#include "io/units.h"
#include "tests/engine/testing/stalled_collective.h"
#include "tests/testing/matchers.h"
#include "tests/testing/paths.h"

namespace ds::engine {
namespace {

c10::intrusive_ptr<c10d::TCPStore> Server(int workers) {
  c10d::TCPStoreOptions o;
  o.port = 0;
  o.isServer = true;
  o.numWorkers = workers;
  o.waitWorkers = false;
  return c10::make_intrusive<c10d::TCPStore>("127.0.0.1", o);
}

TEST(GpuTest, NcclAllReduceOnOneGpu) {
  RuntimeInfo info = QueryRuntime();
#ifndef USE_C10D_NCCL
  GTEST_SKIP() << "LibTorch was built without NCCL";
#else
  if (!info.cuda_available)
    GTEST_SKIP() << "no GPU visible: the NCCL path was compiled and linked only";
  auto store = Server(1);
  auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, 0, 1);
  std::vector<at::Tensor> t{torch::ones({1024}, torch::TensorOptions().device(torch::kCUDA))};
  pg->allreduce(t)->wait();
  EXPECT_EQ(t[0].sum().item<float>(), 1024.0f);
  pg->shutdown();
#endif
}

TEST(GpuTest, FusedCudaKernelMatchesThePlainPath) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible";
  torch::manual_seed(5);
  const int64_t n = 1 << 20;
  auto cuda = torch::TensorOptions().device(torch::kCUDA);
  torch::Tensor p1 = torch::randn({n}, cuda), p2 = p1.clone();
  torch::Tensor m1 = torch::zeros({n}, cuda), m2 = m1.clone(), v1 = m1.clone(), v2 = m1.clone();
  AdamWOptions o{0.9, 0.95, 1e-8, 0.1, true, true};
  for (int step = 1; step <= 10; ++step) {
    torch::Tensor g = torch::randn({n}, cuda);
    AdamWStep(p1, g, m1, v1, step, 1e-3, o, std::nan(""), true);
    AdamWStep(p2, g, m2, v2, step, 1e-3, o, std::nan(""), false);
  }
  EXPECT_LT((p1 - p2).abs().max().item<float>(), 1e-5);
}

// The demo of `./build.sh demo` in bf16 on the GPU: the loss falls as on the CPU. Prints the
// tokens/s that docs/benchmarks.md quotes.
TEST(GpuTest, DemoTrainsInBf16OnCuda) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible";
  ds::testing::TempDir out;
  Overrides o;
  o.set = {"bf16.enabled=true", "trainer.output_dir=" + out.path(), "tensorboard.enabled=false"};
  DS_ASSERT_OK_AND_ASSIGN(
      Config c, LoadConfig(io::Env::Default(),
                           io::JoinPath(ds::testing::SourceDir(), "examples/demo.json"), o));
  TrainerOptions t;
  t.device = "cuda";
  DS_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Trainer> trainer,
                          Trainer::Create(io::Env::Default(), c, t));
  DS_ASSERT_OK_AND_ASSIGN(TrainSummary s, trainer->Run());
  EXPECT_EQ(trainer->slots()[0].param.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(trainer->slots()[0].param.is_cuda());
  EXPECT_EQ(s.steps, 300);
  EXPECT_LT(s.last_loss, s.first_loss - 2.5);
  ASSERT_TRUE(s.last_eval_loss.has_value());
  EXPECT_LT(*s.last_eval_loss, 2.8);
  std::printf(
      "demo bf16 on %s: %.0f tokens/s over %lld steps (%.1f s), loss %.3f -> %.3f, eval %.3f\n",
      at::cuda::getDeviceProperties(0)->name, s.tokens_per_s, static_cast<long long>(s.steps),
      s.seconds, s.first_loss, s.last_loss, *s.last_eval_loss);
}

// ZeRO on one GPU: every stage (and stage 3 with optimizer and parameters offloaded to pinned
// host memory, Adam on the CPU) trains the demo model to the weights of stage 0. On the GPU the
// embedding's backward adds with atomics, so runs agree to rounding, not bit for bit.
TEST(GpuTest, ZeroStagesAndOffloadAgreeOnCuda) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible";
  auto run = [](const std::vector<std::string>& extra, ModelStateBytes* memory) -> torch::Tensor {
    ds::testing::TempDir out;
    Overrides o;
    o.set = {
        "trainer.output_dir=" + out.path(), "tensorboard.enabled=false",     "trainer.max_steps=5",
        "trainer.eval_interval=0",          "gradient_accumulation_steps=2", "steps_per_print=5"};
    o.set.insert(o.set.end(), extra.begin(), extra.end());
    Result<Config> c = LoadConfig(io::Env::Default(),
                                  io::JoinPath(ds::testing::SourceDir(), "examples/demo.json"), o);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    TrainerOptions t;
    t.device = "cuda";
    Result<std::unique_ptr<Trainer>> trainer = Trainer::Create(io::Env::Default(), *c, t);
    EXPECT_TRUE(trainer.ok()) << trainer.status().ToString();
    if (!trainer.ok()) return torch::Tensor();
    Result<TrainSummary> s = (*trainer)->Run();
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    *memory = (*trainer)->model_state();
    Result<torch::Tensor> m = (*trainer)->GatherMaster();
    return m.ok() ? *m : torch::Tensor();
  };
  ModelStateBytes mem0, mem;
  torch::Tensor ref = run({"zero_optimization.stage=0"}, &mem0);
  ASSERT_TRUE(ref.defined());
  EXPECT_EQ(mem0.on_host, 0u);
  ds::testing::TempDir nvme;  // parameters on NVMe: read into page-locked memory, uploaded
  for (const std::vector<std::string>& set :
       {std::vector<std::string>{"zero_optimization.stage=1"},
        {"zero_optimization.stage=2"},
        {"zero_optimization.stage=3", "zero_optimization.stage3_param_persistence_threshold=0"},
        {"zero_optimization.stage=2", "zero_optimization.offload_optimizer.device=cpu"},
        {"zero_optimization.stage=3", "zero_optimization.offload_optimizer.device=cpu",
         "zero_optimization.offload_param.device=cpu"},
        {"zero_optimization.stage=3", "zero_optimization.offload_optimizer.device=cpu",
         "zero_optimization.offload_param.device=nvme",
         "zero_optimization.offload_param.nvme_path=" + nvme.path()}}) {
    std::string name;
    for (const std::string& k : set) name += k + " ";
    SCOPED_TRACE(name);
    torch::Tensor got = run(set, &mem);
    ASSERT_TRUE(got.defined());
    EXPECT_LT((got - ref).abs().max().item<double>(), 1e-5);
    if (set.size() > 1 && set[1].find("offload_optimizer") != std::string::npos) {
      EXPECT_GE(mem.on_host, mem.optimizer);  // master and moments live in host memory
    }
  }
}

// Offloaded state's staging (engine/zero/internal/host_link.h): gradients sent down in more
// slots' worth than there are slots land in order (write, then add, then zero), converted from
// bf16; weights go up into bf16 exactly as a direct conversion would make them.
TEST(GpuTest, OffloadStagingKeepsOrderAndValues) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible";
  const auto cuda = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  GradSink sink(torch::Device(torch::kCUDA, 0), /*slot_elements=*/1000, /*slots=*/2);
  torch::Tensor host = torch::full({5003}, 7.0f);
  torch::Tensor a = torch::randn({5003}, cuda), b = torch::randn({5003}, cuda);
  sink.Send(a, host, /*add=*/false);
  sink.Send(b * 1, host, /*add=*/true);  // a temporary: freed at once, copied first
  sink.Zero(host.narrow(0, 10, 20));
  DS_ASSERT_OK(sink.Drain());
  torch::Tensor want = a.cpu().to(torch::kFloat) + b.cpu().to(torch::kFloat);
  want.narrow(0, 10, 20).zero_();
  EXPECT_TRUE(torch::equal(host, want));

  Uploader up(torch::Device(torch::kCUDA, 0), /*slot_elements=*/1000);
  torch::Tensor w = torch::randn({4321});
  const torch::Tensor want_d = w.to(torch::kBFloat16);
  torch::Tensor d = torch::empty({4321}, cuda);
  up.Upload(w, d);
  w.fill_(0);  // the host buffer is free once Upload returns
  EXPECT_TRUE(torch::equal(d.cpu(), want_d));
}

// A checkpoint written from the GPU (device-to-host copies into page-locked staging) and read
// back into a new trainer holds exactly the weights and optimizer state that were saved, for
// device-resident state (stage 2) and host-resident state (stage 3 with offload).
// The demo's trainer on the GPU in bf16, saving only when told, with `extra` --set overrides.
std::unique_ptr<Trainer> DemoTrainerOnCuda(const std::string& out,
                                           const std::vector<std::string>& extra,
                                           int64_t max_steps) {
  Overrides o;
  o.set = {"trainer.output_dir=" + out, "tensorboard.enabled=false", "bf16.enabled=true",
           "trainer.eval_interval=0", "checkpoint.save_interval_steps=0"};
  o.set.insert(o.set.end(), extra.begin(), extra.end());
  o.max_steps = max_steps;
  Result<Config> c = LoadConfig(io::Env::Default(),
                                io::JoinPath(ds::testing::SourceDir(), "examples/demo.json"), o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  if (!c.ok()) return nullptr;
  TrainerOptions t;
  t.device = "cuda";
  Result<std::unique_ptr<Trainer>> trainer = Trainer::Create(io::Env::Default(), *c, t);
  EXPECT_TRUE(trainer.ok()) << trainer.status().ToString();
  return trainer.ok() ? std::move(*trainer) : nullptr;
}

TEST(GpuTest, CheckpointsFromCudaResumeExactly) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible";
  for (const std::vector<std::string>& zero :
       {std::vector<std::string>{"zero_optimization.stage=2"},
        {"zero_optimization.stage=3", "zero_optimization.offload_optimizer.device=cpu",
         "zero_optimization.offload_param.device=cpu"}}) {
    SCOPED_TRACE(zero[0] + (zero.size() > 1 ? " with offload" : ""));
    ds::testing::TempDir out;
    auto make = [&](int64_t steps) { return DemoTrainerOnCuda(out.path(), zero, steps); };
    std::unique_ptr<Trainer> first = make(5);
    ASSERT_NE(first, nullptr);
    DS_ASSERT_OK_AND_ASSIGN(TrainSummary s, first->Run());  // saves step 5 at the end
    ASSERT_EQ(s.saves, 1);
    DS_ASSERT_OK_AND_ASSIGN(torch::Tensor saved, first->GatherMaster());
    std::optional<ckpt::SaveStats> stats = first->last_save();
    ASSERT_TRUE(stats.has_value());
    std::printf("checkpoint from %s: %s, stall %.4f s, durable after %.3f s\n", zero[0].c_str(),
                io::FormatBytes(stats->logical_bytes).c_str(), stats->snapshot_seconds,
                stats->durable_seconds);
    first.reset();
    std::unique_ptr<Trainer> second = make(5);
    ASSERT_NE(second, nullptr);
    ResumeOptions r;
    r.from = "latest";
    DS_ASSERT_OK_AND_ASSIGN(std::string line, second->Resume(r));
    EXPECT_THAT(line, ::testing::HasSubstr("at step 5"));
    DS_ASSERT_OK_AND_ASSIGN(torch::Tensor loaded, second->GatherMaster());
    EXPECT_TRUE(torch::equal(saved, loaded));
  }
}

// A snapshot's copies to the host run while training goes on (on a side stream, after a copy
// on the GPU when device staging is on). The checkpoint must hold the state of the step it was
// taken at, not bytes the following optimizer steps wrote: save, train three more steps at
// once, then compare what was stored with the weights as they were at the save. The model is
// large enough (1.2 GB of state) that the copies outlast a step.
TEST(GpuTest, SavesOverlappingTrainingHoldTheirStep) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible";
  for (const char* staging : {"true", "false"}) {
    SCOPED_TRACE(std::string("checkpoint.device_staging=") + staging);
    ds::testing::TempDir out;
    auto make = [&] {
      return DemoTrainerOnCuda(out.path(),
                               {"model.n_layer=8", "model.n_head=8", "model.d_model=1024",
                                std::string("checkpoint.device_staging=") + staging},
                               100);
    };
    std::unique_ptr<Trainer> first = make();
    ASSERT_NE(first, nullptr);
    for (int i = 0; i < 2; ++i) DS_ASSERT_OK(first->Step());
    DS_ASSERT_OK_AND_ASSIGN(torch::Tensor at_save, first->GatherMaster());
    DS_ASSERT_OK(first->SaveCheckpoint("test"));
    for (int i = 0; i < 3; ++i) DS_ASSERT_OK(first->Step());
    first->WaitForSaves();
    DS_ASSERT_OK_AND_ASSIGN(torch::Tensor after, first->GatherMaster());
    ASSERT_FALSE(torch::equal(at_save, after)) << "training did not move the weights";
    std::optional<ckpt::SaveStats> stats = first->last_save();
    ASSERT_TRUE(stats.has_value());
    std::printf("%s: %s, save call %.4f s, copies done after %.4f s, durable after %.3f s\n",
                staging, io::FormatBytes(stats->logical_bytes).c_str(), stats->snapshot_seconds,
                stats->copies_done_seconds, stats->durable_seconds);
    first.reset();
    std::unique_ptr<Trainer> second = make();
    ASSERT_NE(second, nullptr);
    ResumeOptions r;
    r.from = "latest";
    DS_ASSERT_OK_AND_ASSIGN(std::string line, second->Resume(r));
    EXPECT_THAT(line, ::testing::HasSubstr("at step 2"));
    DS_ASSERT_OK_AND_ASSIGN(torch::Tensor loaded, second->GatherMaster());
    EXPECT_TRUE(torch::equal(at_save, loaded))
        << (at_save != loaded).sum().item<int64_t>() << " of " << at_save.numel()
        << " weights differ; the checkpoint holds the later state: " << torch::equal(after, loaded);
  }
}

// The GPT's loss on 16-bit logits (fp16: log-softmax straight to fp32 on the GPU; bf16: converted
// first) equals the loss of the logits converted to fp32 first, and so do the gradients.
// The loss on a GPU runs our fused kernels (engine/model/cross_entropy_kernels.cu where nvcc
// was found): against LibTorch's cross-entropy of fp32 logits, for each logits type, for rows
// read 16 bytes at a time (1000 columns) and one by one (1001), with large logits, and with
// -inf padding columns, which must get a zero gradient.
// The rotary embedding and the SwiGLU gate through our kernels (engine/model/llama_kernels.h)
// against the written-out form in fp32 on the CPU, forward and backward: fp32 to rounding, bf16
// and fp16 within a few steps of their precision (inputs rounded to them, the result once).
TEST(GpuTest, LlamaKernelsMatchTheWrittenOutForm) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible";
  torch::manual_seed(11);
  HfModelSpec spec;
  spec.head_dim = 64;
  const int64_t B = 2, T = 37, H = 3, d = 64;
  auto [cos, sin] = LlamaImpl::RotaryTables(spec, T, torch::Device(torch::kCUDA));
  const torch::Tensor x32 = torch::randn({B, T, H, d});
  const torch::Tensor g32 = torch::randn({B, T, H, d});
  torch::Tensor ref_x = x32.clone().requires_grad_(true);
  torch::Tensor ref = ApplyRotary(ref_x, cos.cpu(), sin.cpu());  // the CPU: written out
  ref.backward(g32);
  for (torch::Dtype dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    SCOPED_TRACE(c10::toString(dtype));
    torch::Tensor x = x32.to(torch::kCUDA, dtype).requires_grad_(true);
    torch::Tensor y = ApplyRotary(x, cos, sin);
    ASSERT_EQ(y.scalar_type(), dtype);
    y.backward(g32.to(torch::kCUDA, dtype));
    const double tol = dtype == torch::kFloat32 ? 1e-5 : dtype == torch::kBFloat16 ? 3e-2 : 4e-3;
    EXPECT_LE((y.to(torch::kCPU, torch::kFloat32) - ref).abs().max().item<double>(),
              tol * ref.abs().max().item<double>());
    EXPECT_LE((x.grad().to(torch::kCPU, torch::kFloat32) - ref_x.grad()).abs().max().item<double>(),
              tol * ref_x.grad().abs().max().item<double>());
  }
  // The SwiGLU gate likewise: silu(gate) * up and both gradients.
  const torch::Tensor gate32 = 3 * torch::randn({B, T, 96}), up32 = torch::randn({B, T, 96});
  torch::Tensor ref_gate = gate32.clone().requires_grad_(true);
  torch::Tensor ref_up = up32.clone().requires_grad_(true);
  torch::Tensor ref_out = ApplySwiGlu(ref_gate, ref_up);
  const torch::Tensor go32 = torch::randn_like(ref_out);
  ref_out.backward(go32);
  for (torch::Dtype dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    SCOPED_TRACE(std::string("SwiGLU ") + c10::toString(dtype));
    torch::Tensor gate = gate32.to(torch::kCUDA, dtype).requires_grad_(true);
    torch::Tensor up = up32.to(torch::kCUDA, dtype).requires_grad_(true);
    torch::Tensor out = ApplySwiGlu(gate, up);
    out.backward(go32.to(torch::kCUDA, dtype));
    const double tol = dtype == torch::kFloat32 ? 1e-5 : dtype == torch::kBFloat16 ? 3e-2 : 4e-3;
    auto close = [&](const torch::Tensor& got, const torch::Tensor& want) {
      return (got.to(torch::kCPU, torch::kFloat32) - want).abs().max().item<double>() <=
             tol * want.abs().max().item<double>();
    };
    EXPECT_TRUE(close(out, ref_out));
    EXPECT_TRUE(close(gate.grad(), ref_gate.grad()));
    EXPECT_TRUE(close(up.grad(), ref_up.grad()));
  }
}

TEST(GpuTest, CrossEntropyOnTheGpuMatchesFp32) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible";
  torch::manual_seed(7);
  auto opts = torch::TensorOptions().device(torch::kCUDA);
  for (int64_t cols : {1000, 1001}) {
    for (torch::Dtype dtype : {torch::kFloat32, torch::kFloat16, torch::kBFloat16}) {
      for (bool padded : {false, true}) {
        SCOPED_TRACE(std::string(c10::toString(dtype)) + ", " + std::to_string(cols) + " columns" +
                     (padded ? ", -inf in the last 24" : ""));
        const int64_t vocab = padded ? cols - 24 : cols;
        torch::Tensor targets = torch::randint(vocab, {512}, opts.dtype(torch::kLong));
        targets[0] = vocab - 1;
        torch::Tensor base = 3 * torch::randn({512, cols}, opts);
        base[1] += 60;  // a row whose exp() overflows fp32 unless the maximum is taken out
        if (padded) base.narrow(1, vocab, cols - vocab).fill_(-INFINITY);
        base = base.to(dtype);
        torch::Tensor a = base.clone().requires_grad_(true), b = base.clone().requires_grad_(true);
        torch::Tensor fast = CrossEntropyInFp32(a, targets);
        torch::Tensor plain = torch::nn::functional::cross_entropy(b.to(torch::kFloat32), targets);
        EXPECT_EQ(fast.scalar_type(), torch::kFloat32);
        ASSERT_TRUE(std::isfinite(fast.item<double>()));
        EXPECT_NEAR(fast.item<double>(), plain.item<double>(), 1e-5 * plain.item<double>());
        (2 * fast).backward();  // an incoming gradient other than 1
        (2 * plain).backward();
        ASSERT_EQ(a.grad().scalar_type(), dtype);
        // The same fp32 arithmetic rounded to the logits' type once: at most one bf16 step
        // (2^-8) of the largest apart (fp32 and fp16 closer).
        torch::Tensor ga = a.grad().to(torch::kFloat32), gb = b.grad().to(torch::kFloat32);
        ASSERT_TRUE(ga.isfinite().all().item<bool>());
        EXPECT_LE((ga - gb).abs().max().item<double>(), gb.abs().max().item<double>() / 256);
        if (padded) {
          EXPECT_EQ(ga.narrow(1, vocab, cols - vocab).abs().max().item<double>(), 0.0);
        }
      }
    }
  }
}

// On a GPU the loss's logits are computed against the tied embedding padded to a multiple of
// 64 rows with -inf logits on the padding (cuBLAS's aligned kernels): the loss and every
// gradient must be those of the plain (B * T, V) logits.
TEST(GpuTest, PaddedHeadLossEqualsThePlainLoss) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible";
  GptOptions o;
  o.n_layer = 2;
  o.n_head = 4;
  o.d_model = 128;
  o.seq_len = 64;
  o.vocab = 1001;  // padded to 1024
  for (torch::Dtype dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    SCOPED_TRACE(c10::toString(dtype));
    Gpt gpt(o);
    gpt->to(torch::kCUDA, dtype);
    auto opts = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kLong);
    torch::manual_seed(3);
    torch::Tensor idx = torch::randint(o.vocab, {4, o.seq_len}, opts);
    torch::Tensor tgt = torch::randint(o.vocab, {4, o.seq_len}, opts);
    tgt[0][0] = o.vocab - 1;  // the last real column is not masked
    torch::Tensor padded = gpt->loss(idx, tgt);
    padded.backward();
    std::vector<torch::Tensor> grads;
    for (const auto& p : gpt->parameters()) {
      grads.push_back(p.grad().to(torch::kFloat32));
      p.mutable_grad() = torch::Tensor();
    }
    torch::Tensor logits = gpt->forward(idx);  // (B, T, V) through a plain product
    ASSERT_EQ(logits.size(2), o.vocab);
    torch::Tensor plain = CrossEntropyInFp32(logits.reshape({-1, o.vocab}), tgt.reshape({-1}));
    plain.backward();
    ASSERT_TRUE(std::isfinite(padded.item<double>()));
    // Different kernels sum in different orders: agreement to the 16-bit types' rounding.
    const double tol = dtype == torch::kFloat32 ? 1e-4 : 2e-2;
    EXPECT_NEAR(padded.item<double>(), plain.item<double>(), tol * plain.item<double>());
    auto params = gpt->named_parameters();
    for (size_t i = 0; i < params.size(); ++i) {
      torch::Tensor want = params[i].value().grad().to(torch::kFloat32);
      ASSERT_TRUE(grads[i].isfinite().all().item<bool>()) << params[i].key();
      EXPECT_LE((grads[i] - want).abs().max().item<double>(),
                tol * std::max(want.abs().max().item<double>(), 1e-3))
          << params[i].key();
    }
  }
}

// A user's model that reads its loss on the host inside the step: a step that cannot be
// captured as a CUDA graph.
class HostReadingBigram : public LanguageModel {
 public:
  explicit HostReadingBigram(int64_t vocab) : vocab_(vocab) {
    table_ = register_module("table", torch::nn::Embedding(vocab, vocab));
  }
  torch::Tensor loss(const torch::Tensor& idx, const torch::Tensor& targets) override {
    torch::Tensor l = torch::nn::functional::cross_entropy(
        table_(idx).view({-1, vocab_}).to(torch::kFloat32), targets.reshape({-1}));
    last_ = l.item<double>();  // a host synchronisation: not capturable
    return l;
  }

 private:
  int64_t vocab_;
  double last_ = 0;
  torch::nn::Embedding table_{nullptr};
};

// The step replayed as CUDA graphs trains as the eager step does: the same kernels on the same
// data, so the weights agree to the rounding of the embedding's atomic adds, with one and with
// several micro batches per step, and with activation checkpointing.
TEST(GpuTest, CudaGraphStepsTrainLikeEagerSteps) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible";
  for (const std::vector<std::string>& extra :
       {std::vector<std::string>{"gradient_accumulation_steps=1"},
        {"gradient_accumulation_steps=3"},
        {"gradient_accumulation_steps=2", "model.activation_checkpointing=true",
         "zero_optimization.stage=1"}}) {
    SCOPED_TRACE(extra[0] + (extra.size() > 1 ? " " + extra[1] : ""));
    auto run = [&](const char* graphs, TrainSummary* s) -> torch::Tensor {
      ds::testing::TempDir out;
      std::vector<std::string> set = extra;
      set.push_back(std::string("trainer.cuda_graphs=") + graphs);
      set.push_back("steps_per_print=4");
      std::unique_ptr<Trainer> t = DemoTrainerOnCuda(out.path(), set, 12);
      if (t == nullptr) return torch::Tensor();
      Result<TrainSummary> r = t->Run();
      EXPECT_TRUE(r.ok()) << r.status().ToString();
      if (r.ok()) *s = *r;
      Result<torch::Tensor> m = t->GatherMaster();
      return m.ok() ? *m : torch::Tensor();
    };
    TrainSummary eager, graphs;
    torch::Tensor a = run("false", &eager), b = run("true", &graphs);
    ASSERT_TRUE(a.defined() && b.defined());
    ASSERT_EQ(a.sizes(), b.sizes());
    // A stale learning rate or batch, or a lost micro batch, moves the weights by percents.
    EXPECT_LT(((a - b).norm() / a.norm()).item<double>(), 1e-4);
    EXPECT_EQ(graphs.steps, 12);
    EXPECT_NEAR(graphs.last_loss, eager.last_loss, 1e-3 * std::abs(eager.last_loss));
  }
}

// A step that cannot be captured: "auto" finishes it eagerly and trains on; "true" stops with
// the reason and names the key.
TEST(GpuTest, AStepThatCannotBeCapturedRunsEagerlyOrFailsClearly) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible";
  RegisterModel(
      "test-host-reading",
      [](const ModelConfig& c, uint64_t seed) -> Result<std::shared_ptr<LanguageModel>> {
        torch::manual_seed(seed);
        return std::shared_ptr<LanguageModel>(std::make_shared<HostReadingBigram>(c.vocab));
      });
  auto run = [](const char* graphs) -> Result<TrainSummary> {
    ds::testing::TempDir out;
    std::unique_ptr<Trainer> t = DemoTrainerOnCuda(
        out.path(), {"model.arch=test-host-reading", std::string("trainer.cuda_graphs=") + graphs},
        6);
    if (t == nullptr) return Status::FailedPrecondition("no trainer");
    return t->Run();
  };
  DS_ASSERT_OK_AND_ASSIGN(TrainSummary eager, run("false"));
  DS_ASSERT_OK_AND_ASSIGN(TrainSummary fallback, run("auto"));
  EXPECT_EQ(fallback.steps, 6);
  EXPECT_NEAR(fallback.last_loss, eager.last_loss, 1e-4 * std::abs(eager.last_loss));
  EXPECT_THAT(run("true"),
              ds::testing::StatusIs(StatusCode::kFailedPrecondition,
                                    ::testing::AllOf(::testing::HasSubstr("trainer.cuda_graphs"),
                                                     ::testing::HasSubstr("capturing step 3"))));
}

// comms.timeout_s over NCCL: rank 1 (GPU 1) stays away from an all-reduce for twice the
// timeout, then joins it late; rank 0's (GPU 0) wait ends at the timeout with an error naming
// the operation, the limit and rank 1, as over Gloo (comm_timeout_test.cc). Comm sets
// TORCH_NCCL_BLOCKING_WAIT: without it NCCL's watchdog would abort the process instead.
TEST(GpuTest, NcclCollectiveARankDoesNotJoinEndsAtTheTimeoutNamingTheRank) {
#ifndef USE_C10D_NCCL
  GTEST_SKIP() << "LibTorch was built without NCCL";
#else
  const int gpus = torch::cuda::is_available() ? static_cast<int>(torch::cuda::device_count()) : 0;
  if (gpus < 2) {
    GTEST_SKIP() << "needs 2 GPUs, " << gpus
                 << " visible: the NCCL timeout path was compiled and linked only (the same path "
                    "over Gloo runs in comm_timeout_test)";
  }
  testing::StallOptions o;
  o.backend = "nccl";
  o.cuda = true;
  o.timeout_s = 3;
  o.stall_s = 6;
  o.late_join = true;
  o.on_thread_start = [](int rank) { c10::cuda::set_device(static_cast<c10::DeviceIndex>(rank)); };
  o.make_tensor = [](int rank) {
    return torch::ones({1024}, torch::TensorOptions().device(torch::Device(
                                   torch::kCUDA, static_cast<c10::DeviceIndex>(rank))));
  };
  testing::StalledCollective r = testing::RunStalledCollective(o);
  DS_ASSERT_OK(r.setup);
  EXPECT_THAT(
      r.status,
      ds::testing::StatusIs(
          StatusCode::kUnavailable,
          ::testing::AllOf(::testing::HasSubstr("rank 0: all_reduce of"),
                           ::testing::HasSubstr("(nccl) of the stalled payload timed out "
                                                "after 3 s"),
                           ::testing::HasSubstr("rank 1 is alive but 1 collective(s) behind"))));
  std::printf(
      "the stalled NCCL all_reduce returned after %.2f s (timeout 3 s); rank 1's late "
      "join: %s\n",
      r.seconds, r.late.ToString().c_str());
  EXPECT_GE(r.seconds, 2.9);
  EXPECT_LT(r.seconds, 3 + 3.0);
#endif
}

}  // namespace
}  // namespace ds::engine
