#include "io/status.h"

#include <cerrno>
#include <cstring>

namespace ds {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kNotFound: return "NotFound";
    case StatusCode::kCorruption: return "Corruption";
    case StatusCode::kIOError: return "IOError";
    case StatusCode::kNoSpace: return "NoSpace";
    case StatusCode::kInvalidArgument: return "InvalidArgument";
    case StatusCode::kFailedPrecondition: return "FailedPrecondition";
    case StatusCode::kUnavailable: return "Unavailable";
  }
  return "Unknown";
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string out(StatusCodeName(code_));
  out += ": ";
  out += message_;
  return out;
}

Status Status::WithContext(std::string_view context) const {
  if (ok() || context.empty()) return *this;
  if (message_.find(context) != std::string::npos) return *this;
  std::string m(context);
  m += ": ";
  m += message_;
  return Status(code_, std::move(m), errno_);
}

Status ErrnoStatus(std::string_view context, int sys_errno) {
  std::string m(context);
  m += ": ";
  m += std::strerror(sys_errno);
  switch (sys_errno) {
    case ENOENT:
      return Status(StatusCode::kNotFound, std::move(m), sys_errno);
    case ENOSPC:
    case EDQUOT:
      m += " (free space on that filesystem, or lower the retention, and try again)";
      return Status(StatusCode::kNoSpace, std::move(m), sys_errno);
    case EWOULDBLOCK:
      return Status(StatusCode::kUnavailable, std::move(m), sys_errno);
    default:
      return Status(StatusCode::kIOError, std::move(m), sys_errno);
  }
}

}  // namespace ds
