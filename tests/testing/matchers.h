// Test helpers: Status matchers and a temporary directory that cleans up after itself.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "io/env.h"
#include "io/status.h"

namespace ds::testing {

inline const Status& GetStatus(const Status& s) { return s; }
template <typename T>
const Status& GetStatus(const Result<T>& r) {
  return r.status();
}

// EXPECT_THAT(f(), StatusIs(StatusCode::kCorruption, HasSubstr("chunk 17")));
MATCHER_P2(StatusIs, code, message_matcher, "") {
  const Status& s = ::ds::testing::GetStatus(arg);
  if (s.code() != code) {
    *result_listener << "status is " << s.ToString();
    return false;
  }
  return ::testing::ExplainMatchResult(message_matcher, s.message(), result_listener);
}

MATCHER(IsOk, "") {
  const Status& s = ::ds::testing::GetStatus(arg);
  if (!s.ok()) *result_listener << "status is " << s.ToString();
  return s.ok();
}

#define DS_ASSERT_OK(expr) ASSERT_THAT((expr), ::ds::testing::IsOk())
#define DS_EXPECT_OK(expr) EXPECT_THAT((expr), ::ds::testing::IsOk())
// Declares `lhs` from a Result, failing the test on error.
#define DS_ASSERT_OK_AND_ASSIGN(lhs, expr)                      \
  auto DS_CONCAT(ds_r_, __LINE__) = (expr);                     \
  ASSERT_THAT(DS_CONCAT(ds_r_, __LINE__), ::ds::testing::IsOk()); \
  lhs = std::move(DS_CONCAT(ds_r_, __LINE__)).value()

// A fresh directory on the real filesystem, removed with everything in it at scope exit.
class TempDir {
 public:
  explicit TempDir(io::Env* env = io::Env::Default(), std::string_view prefix = "dstrain-test-")
      : env_(env) {
    Result<std::string> dir = env_->MakeTempDir(prefix);
    EXPECT_TRUE(dir.ok()) << dir.status().ToString();
    if (dir.ok()) path_ = *dir;
  }
  ~TempDir() {
    if (!path_.empty()) (void)env_->RemoveAll(path_);
  }
  const std::string& path() const { return path_; }
  std::string Join(std::string_view name) const { return io::JoinPath(path_, name); }

 private:
  io::Env* env_;
  std::string path_;
};

}  // namespace ds::testing
