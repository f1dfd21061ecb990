// The thread pool: every task runs, ParallelFor covers each index once, and workers of a pool
// made with a niceness run at that much lower priority than the thread that made them.
#include "io/thread_pool.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <vector>

namespace ds::io {
namespace {

int MyNice() { return getpriority(PRIO_PROCESS, static_cast<id_t>(gettid())); }

TEST(ThreadPoolTest, ParallelForRunsEveryIndexOnce) {
  ThreadPool pool(3);
  std::vector<std::atomic<int>> hits(1000);
  pool.ParallelFor(hits.size(), [&](size_t i) { hits[i].fetch_add(1); });
  for (const auto& h : hits) EXPECT_EQ(h.load(), 1);
}

TEST(ThreadPoolTest, WorkersOfANicePoolYieldTheCpu) {
  const int mine = MyNice();
  std::atomic<int> plain{-100}, nice{-100};
  {
    ThreadPool normal(1);
    normal.Submit([&] { plain = MyNice(); });
    normal.Wait();
    ThreadPool background(1, 5);
    background.Submit([&] { nice = MyNice(); });
    background.Wait();
  }
  EXPECT_EQ(plain.load(), mine);
  EXPECT_EQ(nice.load(), std::min(mine + 5, 19));
  EXPECT_EQ(MyNice(), mine);  // the caller's own priority is untouched
}

}  // namespace
}  // namespace ds::io
