#include "engine/torch_status.h"

#include <c10/util/Exception.h>

namespace ds::engine {

std::string TorchMessage(const std::exception& e) {
  const auto* c = dynamic_cast<const c10::Error*>(&e);
  std::string m = c != nullptr ? c->what_without_backtrace() : e.what();
  // c10d's errors carry the C++ frames after this line even without the backtrace.
  return m.substr(0, m.find("\nException raised from"));
}

bool IsOutOfMemory(const std::exception& e) {
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr) return true;
  // LibTorch's CPU allocator reports a failed allocation as a plain c10::Error.
  const auto* c = dynamic_cast<const c10::Error*>(&e);
  return c != nullptr &&
         std::string_view(c->what_without_backtrace())
                 .find("DefaultCPUAllocator: can't allocate memory") != std::string_view::npos;
}

bool IsOutOfMemory(const Status& s) {
  return s.code() == StatusCode::kFailedPrecondition &&
         s.message().find(kOutOfMemoryAdvice) != std::string::npos;
}

Status TorchError(const std::exception& e, std::string_view what, StatusCode code) {
  std::string message = TorchMessage(e);
  if (IsOutOfMemory(e)) {
    code = StatusCode::kFailedPrecondition;
    message += kOutOfMemoryAdvice;
  } else if (dynamic_cast<const c10::DistError*>(&e) != nullptr) {
    code = StatusCode::kUnavailable;
  } else if (dynamic_cast<const c10::ValueError*>(&e) != nullptr ||
             dynamic_cast<const c10::TypeError*>(&e) != nullptr ||
             dynamic_cast<const c10::IndexError*>(&e) != nullptr ||
             dynamic_cast<const c10::NotImplementedError*>(&e) != nullptr) {
    code = StatusCode::kInvalidArgument;
  }
  return Status(code, std::string(what) + ": " + message);
}

}  // namespace ds::engine
