// The stores that coordinate a save: values round trip, waits are bounded and name the keys
// still missing, and a value set from another thread or process wakes the waiter.
#include "ckpt/kv_store.h"

#include <thread>

#include "io/mem_env.h"
#include "testing/matchers.h"

namespace ds::ckpt {
namespace {

using ::ds::testing::StatusIs;
using ::testing::HasSubstr;

void Exercise(KeyValueStore& store) {
  DS_ASSERT_OK(store.Set("ckpt/step-1/rank/0", "record zero"));
  DS_ASSERT_OK_AND_ASSIGN(auto v, store.Get("ckpt/step-1/rank/0"));
  EXPECT_EQ(v, "record zero");
  DS_ASSERT_OK_AND_ASSIGN(v, store.Get("ckpt/step-1/rank/1"));
  EXPECT_FALSE(v.has_value());
  const std::vector<std::string> keys = {"ckpt/step-1/rank/0", "ckpt/step-1/rank/1",
                                         "ckpt/step-1/rank/2"};
  EXPECT_THAT(store.Wait(keys, 50000),
              StatusIs(StatusCode::kUnavailable,
                       HasSubstr("waited 0.1 s for ckpt/step-1/rank/1, ckpt/step-1/rank/2")));
  std::thread late([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    (void)store.Set("ckpt/step-1/rank/1", "a");
    (void)store.Set("ckpt/step-1/rank/2", "b");
  });
  DS_EXPECT_OK(store.Wait(keys, 5000000));
  late.join();
  DS_ASSERT_OK(store.Delete("ckpt/step-1/rank/1"));
  DS_ASSERT_OK(store.Delete("never/set"));
  DS_ASSERT_OK_AND_ASSIGN(v, store.Get("ckpt/step-1/rank/1"));
  EXPECT_FALSE(v.has_value());
}

TEST(KeyValueStoreTest, InProcess) {
  InProcessStore store;
  Exercise(store);
}

TEST(KeyValueStoreTest, FileStoreOnMemEnv) {
  io::MemEnv env;
  FileStore store(&env, "/shared/store");
  Exercise(store);
}

TEST(KeyValueStoreTest, FileStoreOnDisk) {
  testing::TempDir dir;
  FileStore store(io::Env::Default(), dir.Join("store"));
  Exercise(store);
  FileStore other(io::Env::Default(), dir.Join("store"));  // another process's view
  DS_ASSERT_OK_AND_ASSIGN(auto v, other.Get("ckpt/step-1/rank/0"));
  EXPECT_EQ(v, "record zero");
}

}  // namespace
}  // namespace ds::ckpt
