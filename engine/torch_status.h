// The one way a LibTorch exception becomes a Status. LibTorch reports errors by throwing; the
// engine returns Status everywhere, so every call into LibTorch that can fail for a reason the
// user causes or the machine has (out of memory, a dead peer, a bad tensor) goes through here.
// The code follows from what was thrown:
//   c10::OutOfMemoryError, or the      -> kFailedPrecondition (the job needs less memory: a
//   CPU allocator's failed allocation     smaller micro batch, offload, a higher ZeRO stage)
//   c10::DistError and its kinds       -> kUnavailable (a peer did not answer or went away)
//   c10::ValueError, TypeError,
//   IndexError, NotImplementedError    -> kInvalidArgument (a tensor or model that does not fit)
//   anything else                      -> the caller's `code` (kIOError by default: a device
//                                         operation that failed)
// Thread safety: pure functions.
#pragma once

#include <exception>
#include <string>
#include <string_view>
#include <utility>

#include "io/status.h"

namespace ds::engine {

// The exception's message, without LibTorch's C++ backtrace.
std::string TorchMessage(const std::exception& e);

// What TorchError adds to an out-of-memory error's message.
inline constexpr char kOutOfMemoryAdvice[] =
    " (out of memory: lower train_micro_batch_size_per_gpu, raise the ZeRO stage, or offload; "
    "dsrun --dry-run estimates what fits)";

// A failed allocation: c10::OutOfMemoryError (CUDA), or the CPU allocator's c10::Error. And a
// Status TorchError made of one.
bool IsOutOfMemory(const std::exception& e);
bool IsOutOfMemory(const Status& s);

// "<what>: <message>" with the code the exception calls for (above).
Status TorchError(const std::exception& e, std::string_view what,
                  StatusCode code = StatusCode::kIOError);

// Runs `body` (returning Status or void); an exception it throws becomes TorchError(e, what,
// code).
template <class Body>
Status TorchCall(std::string_view what, Body&& body, StatusCode code = StatusCode::kIOError) {
  try {
    if constexpr (std::is_same_v<decltype(std::forward<Body>(body)()), void>) {
      std::forward<Body>(body)();
      return Status::OK();
    } else {
      return std::forward<Body>(body)();
    }
  } catch (const std::exception& e) {
    return TorchError(e, what, code);
  }
}

}  // namespace ds::engine
