// NVMe offload's swap files: ranges round-trip (on the real disk with O_DIRECT where it is
// allowed, and in memory); EIO, ENOSPC and short writes, injected by FaultEnv, are errors naming
// the rank, the file and the elements; a disk too small fails at Open; a killed run's files are
// removed and never read; a directory in use is refused; everything is removed at the end.
#include "engine/zero/swap.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <span>

#include "io/fault_env.h"
#include "io/mem_env.h"
#include "tests/testing/matchers.h"

namespace ds::engine {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

SwapOptions Options(io::Env* env, const std::string& nvme, int rank = 3) {
  SwapOptions o;
  o.env = env;
  o.nvme_path = nvme;
  o.job = SwapJobName("/ckpt/run-1");
  o.rank = rank;
  o.buffers = {{"master", 5000}, {"exp_avg", 5000}, {"exp_avg_sq", 5000}};
  return o;
}

std::vector<float> Iota(size_t n, float from) {
  std::vector<float> v(n);
  std::iota(v.begin(), v.end(), from);
  return v;
}

void RoundTrip(io::Env* env, const std::string& nvme) {
  DS_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SwapSpace> s, SwapSpace::Open(Options(env, nvme)));
  EXPECT_FALSE(s->reclaimed_stale());
  EXPECT_EQ(s->bytes(), 3u * 5000 * 4);
  EXPECT_EQ(s->dir(), nvme + "/" + SwapJobName("/ckpt/run-1") + "/rank-3");
  // Unaligned ranges (O_DIRECT's 4 KiB is 1024 floats), in every buffer.
  const std::vector<float> a = Iota(1500, 1.0f), b = Iota(777, -5.0f);
  DS_ASSERT_OK(s->Write(0, 0, a));
  DS_ASSERT_OK(s->Write(0, 1500, b));
  DS_ASSERT_OK(s->Write(2, 4223, b));
  std::vector<float> got(2277);
  DS_ASSERT_OK(s->Read(0, 0, got));
  EXPECT_TRUE(std::equal(a.begin(), a.end(), got.begin()));
  EXPECT_TRUE(std::equal(b.begin(), b.end(), got.begin() + 1500));
  std::vector<float> tail(777);
  DS_ASSERT_OK(s->Read(2, 4223, tail));
  EXPECT_EQ(tail, b);
  std::vector<float> unwritten(100, 7.0f);  // a fresh file reads as zeros
  DS_ASSERT_OK(s->Read(1, 4900, unwritten));
  EXPECT_EQ(unwritten, std::vector<float>(100, 0.0f));
  EXPECT_THAT(s->Read(1, 4950, unwritten),
              ds::testing::StatusIs(StatusCode::kInvalidArgument, HasSubstr("is outside it")));
  const std::string dir = s->dir();
  s.reset();  // the end of the run: nothing is left
  DS_ASSERT_OK_AND_ASSIGN(bool left, env->Exists(dir));
  EXPECT_FALSE(left) << dir;
}

TEST(SwapTest, RangesRoundTripOnDiskAndInMemoryAndNothingIsLeftAfter) {
  ds::testing::TempDir disk;
  RoundTrip(io::Env::Default(), disk.path());
  io::MemEnv mem;
  DS_ASSERT_OK(mem.CreateDirs("/nvme"));
  RoundTrip(&mem, "/nvme");
}

TEST(SwapTest, InjectedFailuresNameTheRankTheFileAndTheElements) {
  io::MemEnv mem;
  DS_ASSERT_OK(mem.CreateDirs("/nvme"));
  io::FaultEnv env(&mem);
  DS_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SwapSpace> s, SwapSpace::Open(Options(&env, "/nvme")));
  const std::vector<float> data = Iota(2000, 0.0f);
  for (io::FaultKind kind :
       {io::FaultKind::kIOError, io::FaultKind::kNoSpace, io::FaultKind::kShortWrite}) {
    env.AddRule({.ops = io::kFaultWrite, .path_glob = "*/exp_avg.swap", .kind = kind});
    const Status st = s->Write(1, 100, data);
    EXPECT_FALSE(st.ok());
    EXPECT_THAT(st.message(), AllOf(HasSubstr("rank 3: writing exp_avg elements [100, 2100) to "),
                                    HasSubstr("/rank-3/exp_avg.swap"),
                                    HasSubstr("the committed checkpoints are untouched")));
    if (kind == io::FaultKind::kNoSpace) {
      EXPECT_EQ(st.code(), StatusCode::kNoSpace);
    }
    env.ClearRules();
  }
  env.AddRule({.ops = io::kFaultRead, .path_glob = "*/master.swap"});
  std::vector<float> out(10);
  EXPECT_THAT(s->Read(0, 0, out),
              ds::testing::StatusIs(StatusCode::kIOError,
                                    HasSubstr("rank 3: reading master elements [0, 10) from ")));
  env.ClearRules();
  // After the failures the space works again (a failed write changes nothing it reports done).
  DS_ASSERT_OK(s->Write(1, 100, data));
  std::vector<float> back(2000);
  DS_ASSERT_OK(s->Read(1, 100, back));
  EXPECT_EQ(back, data);
}

// Stage 3's parameters on NVMe: a buffer of 2-byte elements (bf16), read and written by element
// range; a byte count that is not whole elements is refused; errors name the config key given.
TEST(SwapTest, TwoByteBuffersAndTheKeyTheirErrorsName) {
  io::MemEnv mem;
  DS_ASSERT_OK(mem.CreateDirs("/nvme"));
  SwapOptions o = Options(&mem, "/nvme");
  o.job += "-params";
  o.key = "offload_param.nvme_path";
  o.buffers = {{"params", 3000, 2}};
  DS_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SwapSpace> s, SwapSpace::Open(o));
  EXPECT_EQ(s->bytes(), 6000u);
  std::vector<uint16_t> a(1001);
  std::iota(a.begin(), a.end(), uint16_t{7});
  DS_ASSERT_OK(s->WriteBytes(0, 1999, std::as_bytes(std::span(a))));
  std::vector<uint16_t> got(1001);
  DS_ASSERT_OK(s->ReadBytes(0, 1999, std::as_writable_bytes(std::span(got))));
  EXPECT_EQ(got, a);
  EXPECT_THAT(s->ReadBytes(0, 2999, std::as_writable_bytes(std::span(got))),
              ds::testing::StatusIs(StatusCode::kInvalidArgument, HasSubstr("is outside it")));
  std::byte odd[3];
  EXPECT_THAT(s->WriteBytes(0, 0, odd),
              ds::testing::StatusIs(StatusCode::kInvalidArgument, HasSubstr("is outside it")));
  o.nvme_path = "/no/such/dir";
  EXPECT_THAT(SwapSpace::Open(o),
              ds::testing::StatusIs(StatusCode::kInvalidArgument,
                                    HasSubstr("(offload_param.nvme_path: name a directory")));
}

TEST(SwapTest, ADiskTooSmallFailsAtOpenNamingTheSpace) {
  io::MemEnv mem;
  DS_ASSERT_OK(mem.CreateDirs("/nvme"));
  io::FaultEnv env(&mem);
  env.AddRule({.ops = io::kFaultWrite | io::kFaultTruncate,
               .path_glob = "*/exp_avg_sq.swap",
               .kind = io::FaultKind::kNoSpace});
  EXPECT_THAT(
      SwapSpace::Open(Options(&env, "/nvme")),
      ds::testing::StatusIs(StatusCode::kNoSpace, AllOf(HasSubstr("rank 3: swap file "),
                                                        HasSubstr("exp_avg_sq.swap needs 19.5 KiB"),
                                                        HasSubstr("offload_optimizer.nvme_path"))));
  EXPECT_THAT(SwapSpace::Open(Options(&env, "/no/such/dir")),
              ds::testing::StatusIs(StatusCode::kInvalidArgument,
                                    HasSubstr("nvme_path /no/such/dir is not a directory")));
}

TEST(SwapTest, AKilledRunsFilesAreRemovedNeverReadAndALiveOnesAreRefused) {
  ds::testing::TempDir disk;
  io::Env* env = io::Env::Default();
  const SwapOptions o = Options(env, disk.path());
  // What a killed run leaves: its rank directory with state in it, no lock held.
  const std::string dir = disk.Join(o.job + "/rank-3");
  DS_ASSERT_OK(env->CreateDirs(dir));
  DS_ASSERT_OK(env->WriteFileSynced(io::JoinPath(dir, "master.swap"), std::string(20000, 'x')));
  DS_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SwapSpace> s, SwapSpace::Open(o));
  EXPECT_TRUE(s->reclaimed_stale());
  std::vector<float> fresh(5000, 1.0f);
  DS_ASSERT_OK(s->Read(0, 0, fresh));
  EXPECT_EQ(fresh, std::vector<float>(5000, 0.0f)) << "the killed run's bytes were read";
  // A second process (or rank) on the same directory while this one lives.
  EXPECT_THAT(SwapSpace::Open(o),
              ds::testing::StatusIs(StatusCode::kFailedPrecondition,
                                    AllOf(HasSubstr("rank 3: swap directory "),
                                          HasSubstr("is in use by another process"))));
  // Another rank of the same job has its own directory.
  DS_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SwapSpace> other,
                          SwapSpace::Open(Options(env, disk.path(), 4)));
  EXPECT_NE(other->dir(), s->dir());
}

}  // namespace
}  // namespace ds::engine
