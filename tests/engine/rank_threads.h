// Ranks as threads of one test process: each runs its own Trainer, Gloo process group and
// TCPStore client over loopback. Used by the ZeRO and resume tests.
// Thread safety: RunRanks starts and joins its threads.
#pragma once

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <thread>
#include <vector>

namespace ds::engine::testing {

// A TCP port that was free a moment ago.
inline int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  ::close(fd);
  return ntohs(a.sin_port);
}

// Runs fn(rank, port) for every rank at once and waits for all.
inline void RunRanks(int world, const std::function<void(int rank, int port)>& fn) {
  const int port = FreePort();
  std::vector<std::thread> ranks;
  for (int r = 0; r < world; ++r) ranks.emplace_back([&fn, r, port] { fn(r, port); });
  for (std::thread& t : ranks) t.join();
}

}  // namespace ds::engine::testing
