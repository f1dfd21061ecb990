#include "io/buffer_pool.h"

#include <atomic>
#include <thread>

#include "testing/matchers.h"

namespace ds::io {
namespace {

using ::ds::testing::StatusIs;
using ::testing::HasSubstr;

TEST(BufferPoolTest, AlignedAndRoundedUp) {
  BufferPool pool({.capacity_bytes = 1 << 20});
  DS_ASSERT_OK_AND_ASSIGN(Buffer b, pool.Acquire(100));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % kDirectAlignment, 0u);
  EXPECT_EQ(b.size(), 100u);
  EXPECT_EQ(b.capacity(), kDirectAlignment);
  EXPECT_EQ(pool.in_use_bytes(), kDirectAlignment);
  b.Release();
  EXPECT_EQ(pool.in_use_bytes(), 0u);
}

TEST(BufferPoolTest, BlocksWhenFullAndWakesOnReturn) {
  BufferPool pool({.capacity_bytes = 64 << 10});
  DS_ASSERT_OK_AND_ASSIGN(Buffer a, pool.Acquire(48 << 10));
  EXPECT_THAT(pool.Acquire(32 << 10, 20000),
              StatusIs(StatusCode::kUnavailable, HasSubstr("staging memory is full")));
  std::atomic<bool> got{false};
  std::thread waiter([&] {
    Result<Buffer> b = pool.Acquire(32 << 10);
    got = b.ok();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  EXPECT_FALSE(got.load());
  a.Release();
  waiter.join();
  EXPECT_TRUE(got.load());
  EXPECT_LE(pool.peak_in_use_bytes(), 64u << 10);
}

TEST(BufferPoolTest, TooLargeIsAnErrorNotAHang) {
  BufferPool pool({.capacity_bytes = 64 << 10});
  EXPECT_THAT(pool.Acquire(1 << 20),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("does not fit the pool")));
}

TEST(BufferPoolTest, HooksSeeEveryBlockOnceAndBlocksAreReused) {
  int allocated = 0, released = 0;
  {
    BufferPool pool({.capacity_bytes = 1 << 20,
                     .on_allocate = [&](std::byte*, size_t) { ++allocated; },
                     .on_release = [&](std::byte*, size_t) { ++released; }});
    for (int i = 0; i < 10; ++i) {
      DS_ASSERT_OK_AND_ASSIGN(Buffer b, pool.Acquire(64 << 10));
    }
    EXPECT_EQ(allocated, 1);  // the same block came back each time
    // A different size evicts cached blocks only when the capacity requires it.
    DS_ASSERT_OK_AND_ASSIGN(Buffer big, pool.Acquire(1 << 20));
    EXPECT_EQ(released, 1);
  }
  EXPECT_EQ(allocated, 2);
  EXPECT_EQ(released, 2);
}

}  // namespace
}  // namespace ds::io
