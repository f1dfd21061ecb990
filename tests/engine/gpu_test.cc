// Tests that need a GPU (label `gpu`): they skip with a message where none is visible, so CI
// (no GPU) only proves they compile and link.
#include <gtest/gtest.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>

#include <cmath>

#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "engine/optim/adamw.h"
#include "engine/runtime_info.h"

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
  if (!info.cuda_available) GTEST_SKIP() << "no GPU visible: the NCCL path was compiled and linked only";
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

}  // namespace
}  // namespace ds::engine
