// The one way a LibTorch exception becomes a Status (engine/torch_status.h): the code follows
// from what was thrown, the message names what was being done, and LibTorch's C++ backtrace is
// not in it.
#include "engine/torch_status.h"

#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <stdexcept>

namespace ds::engine {
namespace {

TEST(TorchStatusTest, TheCodeFollowsFromWhatWasThrown) {
  Status oom = TorchCall("optimizer step", [] {
    TORCH_CHECK_WITH(OutOfMemoryError, false, "CUDA out of memory. Tried to allocate 2.00 GiB");
  });
  EXPECT_EQ(oom.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(oom.message().find("optimizer step: CUDA out of memory. Tried to allocate 2.00 GiB"),
            std::string::npos)
      << oom.message();
  EXPECT_NE(oom.message().find("lower train_micro_batch_size_per_gpu"), std::string::npos)
      << oom.message();

  Status peer = TorchCall("reducing gradients", [] {
    TORCH_CHECK_WITH(DistBackendError, false, "Connection closed by peer");
  });
  EXPECT_EQ(peer.code(), StatusCode::kUnavailable);
  EXPECT_NE(peer.message().find("reducing gradients: Connection closed by peer"),
            std::string::npos)
      << peer.message();

  Status value = TorchCall("building model 'gpt'", [] {
    TORCH_CHECK_VALUE(false, "n_head must divide d_model");
  });
  EXPECT_EQ(value.code(), StatusCode::kInvalidArgument);

  // Anything else takes the caller's code.
  Status other = TorchCall("training step 3 on cpu", [] { TORCH_CHECK(false, "shape mismatch"); });
  EXPECT_EQ(other.code(), StatusCode::kIOError);
  EXPECT_NE(other.message().find("training step 3 on cpu: shape mismatch"), std::string::npos)
      << other.message();
  EXPECT_EQ(other.message().find("Exception raised from"), std::string::npos) << other.message();
  Status std_error = TorchCall(
      "loading", [] { throw std::runtime_error("boom"); }, StatusCode::kCorruption);
  EXPECT_EQ(std_error.code(), StatusCode::kCorruption);
  EXPECT_EQ(std_error.message(), "loading: boom");
}

TEST(TorchStatusTest, ABodyThatDoesNotThrowGivesItsOwnStatus) {
  EXPECT_TRUE(TorchCall("nothing", [] {}).ok());
  Status s = TorchCall("reading", [] { return Status::NotFound("no such blob"); });
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "no such blob");
}

}  // namespace
}  // namespace ds::engine
