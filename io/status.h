// Status and Result<T>: errors as values, with a code, the errno when there was one, and a message
// that names the thing and the way out. Thread safety: values; share freely after construction.
#pragma once

#include <cassert>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace ds {

enum class StatusCode : uint8_t {
  kOk = 0,
  kNotFound,
  kCorruption,
  kIOError,
  kNoSpace,
  kInvalidArgument,
  kFailedPrecondition,
  kUnavailable,  // a peer (rank, store, lock holder) did not answer in time, or is busy
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message, int sys_errno = 0)
      : code_(code), errno_(sys_errno), message_(std::move(message)) {}

  static Status OK() { return Status(); }
  static Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
  static Status Corruption(std::string m) { return {StatusCode::kCorruption, std::move(m)}; }
  static Status IOError(std::string m, int e = 0) { return {StatusCode::kIOError, std::move(m), e}; }
  static Status NoSpace(std::string m) { return {StatusCode::kNoSpace, std::move(m), 28}; }
  static Status InvalidArgument(std::string m) {
    return {StatusCode::kInvalidArgument, std::move(m)};
  }
  static Status FailedPrecondition(std::string m) {
    return {StatusCode::kFailedPrecondition, std::move(m)};
  }
  static Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  int sys_errno() const { return errno_; }  // 0 when the error did not come from the OS
  const std::string& message() const { return message_; }
  bool IsNotFound() const { return code_ == StatusCode::kNotFound; }
  bool IsCorruption() const { return code_ == StatusCode::kCorruption; }
  bool IsNoSpace() const { return code_ == StatusCode::kNoSpace; }

  // "IOError: <message>", or "OK".
  std::string ToString() const;

  // Adds context in front of the message once: "while writing X: <message>". Context that the
  // message already contains is not repeated (no "file X: file X: ..." chains).
  Status WithContext(std::string_view context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  int errno_ = 0;
  std::string message_;
};

// Maps an errno from a system call to a Status: ENOENT -> NotFound, ENOSPC/EDQUOT -> NoSpace,
// everything else -> IOError. `context` names the operation and the path.
Status ErrnoStatus(std::string_view context, int sys_errno);

// Streams context onto a non-OK status; converts back to Status (used by DS_RETURN_IF_ERROR).
class StatusBuilder {
 public:
  explicit StatusBuilder(Status status) : status_(std::move(status)) {}
  template <typename T>
  StatusBuilder& operator<<(const T& value) {
    context_ << value;
    return *this;
  }
  operator Status() const {  // NOLINT(google-explicit-constructor)
    std::string ctx = context_.str();
    return ctx.empty() ? status_ : status_.WithContext(ctx);
  }
  template <typename T>
  operator T() const {  // NOLINT: lets `return builder;` fill a Result<T>
    return T(static_cast<Status>(*this));
  }

 private:
  Status status_;
  std::ostringstream context_;
};

// A value or the Status saying why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    assert(!std::get<Status>(v_).ok() && "Result needs a value or an error");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace ds

#define DS_CONCAT_INNER(a, b) a##b
#define DS_CONCAT(a, b) DS_CONCAT_INNER(a, b)

// Returns the status of `expr` from the enclosing function when it is not OK; context may be
// streamed on: DS_RETURN_IF_ERROR(file->Sync()) << "while syncing " << path;
#define DS_RETURN_IF_ERROR(expr)                                               \
  for (::ds::Status ds_status_ = (expr); !ds_status_.ok();) /* NOLINT */       \
  return ::ds::StatusBuilder(std::move(ds_status_))

#define DS_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr)     \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return ::ds::Status(tmp.status());  \
  lhs = std::move(tmp).value()

// lhs = value of `expr` (a Result<T>), or return its status.
#define DS_ASSIGN_OR_RETURN(lhs, expr) \
  DS_ASSIGN_OR_RETURN_IMPL(DS_CONCAT(ds_result_, __LINE__), lhs, expr)
