// LibTorch's distributed pieces compile, link and run from C++ as the engine will use them:
// TCPStore rendezvous, the Gloo process group on CPU tensors, and (with a GPU) NCCL.
#include <gtest/gtest.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>

#include <thread>



namespace ds::engine {
namespace {

c10::intrusive_ptr<c10d::TCPStore> Server(int workers) {
  c10d::TCPStoreOptions o;
  o.port = 0;  // any free port
  o.isServer = true;
  o.numWorkers = workers;
  o.waitWorkers = false;
  return c10::make_intrusive<c10d::TCPStore>("127.0.0.1", o);
}

c10::intrusive_ptr<c10d::TCPStore> Client(uint16_t port) {
  c10d::TCPStoreOptions o;
  o.port = port;
  o.isServer = false;
  return c10::make_intrusive<c10d::TCPStore>("127.0.0.1", o);
}

TEST(C10dLinkTest, GlooAllReduceAndReduceScatterAcrossTwoRanks) {
  auto server = Server(2);
  const uint16_t port = server->getPort();
  std::vector<float> sums(2), scattered(2);
  auto rank_main = [&](int rank) {
    auto store = rank == 0 ? server : Client(port);
    auto opts = c10d::ProcessGroupGloo::Options::create();
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, 2, opts);
    std::vector<at::Tensor> t{torch::full({4}, static_cast<float>(rank + 1))};
    pg->allreduce(t)->wait();
    sums[rank] = t[0].sum().item<float>();
    at::Tensor in = torch::arange(4, torch::kFloat32) * (rank + 1);  // (4)
    at::Tensor out = torch::empty({2});
    pg->_reduce_scatter_base(out, in)->wait();
    scattered[rank] = out.sum().item<float>();
  };
  std::thread r1(rank_main, 1);
  rank_main(0);
  r1.join();
  EXPECT_EQ(sums[0], 12.0f);  // (1 + 2) * 4 elements
  EXPECT_EQ(sums[1], 12.0f);
  EXPECT_EQ(scattered[0], 3.0f * (0 + 1));  // rank 0 holds elements 0,1 of 3*arange
  EXPECT_EQ(scattered[1], 3.0f * (2 + 3));
}

}  // namespace
}  // namespace ds::engine
