#include "engine/torch_status.h"

#include <c10/util/Exception.h>

namespace ds::engine {

std::string TorchMessage(const std::exception& e) {
  const auto* c = dynamic_cast<const c10::Error*>(&e);
  std::string m = c != nullptr ? c->what_without_backtrace() : e.what();
  // c10d's errors carry the C++ frames after this line even without the backtrace.
  return m.substr(0, m.find("\nException raised from"));
}

Status TorchError(const std::exception& e, std::string_view what, StatusCode code) {
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr) {
    code = StatusCode::kFailedPrecondition;
  } else if (dynamic_cast<const c10::DistError*>(&e) != nullptr) {
    code = StatusCode::kUnavailable;
  } else if (dynamic_cast<const c10::ValueError*>(&e) != nullptr ||
             dynamic_cast<const c10::TypeError*>(&e) != nullptr ||
             dynamic_cast<const c10::IndexError*>(&e) != nullptr ||
             dynamic_cast<const c10::NotImplementedError*>(&e) != nullptr) {
    code = StatusCode::kInvalidArgument;
  }
  std::string message = TorchMessage(e);
  if (code == StatusCode::kFailedPrecondition &&
      dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr) {
    message += " (out of memory: lower train_micro_batch_size_per_gpu, raise the ZeRO stage, or "
               "offload; dsrun --dry-run estimates what fits)";
  }
  return Status(code, std::string(what) + ": " + message);
}

}  // namespace ds::engine
