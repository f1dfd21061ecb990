// comms.timeout_s over Gloo on the CPU: a collective that a live rank does not join ends within
// the timeout (plus a little for the diagnosis), naming the operation, the payload, the limit
// and the rank that is behind. The same scenario runs over NCCL in gpu_test.cc.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "tests/engine/testing/stalled_collective.h"
#include "tests/testing/matchers.h"

namespace ds::engine {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

TEST(CommTimeoutTest, AGlooCollectiveARankDoesNotJoinEndsAtTheTimeoutNamingTheRank) {
  testing::StallOptions o;
  o.backend = "gloo";
  o.timeout_s = 2;
  o.stall_s = 3.5;
  testing::StalledCollective r = testing::RunStalledCollective(o);
  DS_ASSERT_OK(r.setup);
  EXPECT_THAT(r.status,
              ds::testing::StatusIs(
                  StatusCode::kUnavailable,
                  AllOf(HasSubstr("rank 0: all_reduce of 4.0 KiB across ranks 0, 1 (gloo) of the "
                                  "stalled payload timed out after 2 s"),
                        HasSubstr("rank 1 is alive but 1 collective(s) behind"),
                        HasSubstr("comms.timeout_s sets the limit"))));
  std::printf("the stalled all_reduce returned after %.2f s (timeout 2 s): %s\n", r.seconds,
              r.status.ToString().c_str());
  EXPECT_GE(r.seconds, 1.9);
  EXPECT_LT(r.seconds, 2 + 3.0);  // the diagnosis reads the store once; no sleep on a timeout
}

}  // namespace
}  // namespace ds::engine
