// Runs a function that parses untrusted bytes in a forked child process, with limits on its
// memory, CPU and wall time, so that a library that crashes or hangs on a damaged file (libhdf5)
// costs the caller a Status, not the process. The child sends its answer back through a pipe.
// Thread safety: RunIsolated may be called from any thread; see IsolationLimits::hold_across_fork.
//
// This reaches the OS outside io::Env on purpose: fork, pipe, poll, waitpid, kill and setrlimit
// are process control, not file access, and no Env (in-memory or fault-injecting) could stand in
// for a process that really dies.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#include "io/status.h"

namespace ds::io {

#if defined(__SANITIZE_ADDRESS__)
#define DS_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DS_UNDER_ASAN 1
#endif
#endif

// Whether the child's address space can be limited: not under AddressSanitizer, which reserves
// terabytes of shadow memory up front (RLIMIT_AS would make every allocation fail).
#ifdef DS_UNDER_ASAN
inline constexpr bool kIsolationLimitsMemory = false;
#else
inline constexpr bool kIsolationLimitsMemory = true;
#endif

struct IsolationLimits {
  // Wall clock from the fork to the child's whole answer; then the child is killed (SIGKILL).
  std::chrono::milliseconds timeout{30000};
  // Address space the child may add to what it inherits (RLIMIT_AS = inherited + this); 0: no
  // limit. Ignored where kIsolationLimitsMemory is false.
  uint64_t memory_bytes = 0;  // bytes
  // The longest answer the parent accepts (the child is killed beyond it).
  uint64_t max_answer_bytes = uint64_t{1} << 30;  // bytes
  // Held by the parent across fork() only (never locked in the child): pass the lock that
  // serialises the library `fn` uses, so that no other thread is inside it while its state is
  // copied into the child. Null: none.
  std::mutex* hold_across_fork = nullptr;
  // Turns how the child failed into the Status RunIsolated returns; `how` is a phrase such as
  // "crashed (SIGSEGV)", "did not finish within 30 s (killed)", "ran out of memory (limit
  // 1.0 GiB)" or "exited with status 3 without an answer". Unset: IOError("a child process " +
  // how).
  std::function<Status(const std::string& how)> on_failure;
};

// Forks; the child sets its limits, runs `fn`, sends the result (bytes or the Status) and exits
// with _exit. The parent returns what `fn` returned: its bytes, or its Status with code and
// message unchanged. A child that crashes, hangs, runs out of memory or exits without an answer
// becomes limits.on_failure(how), `how` quoting the last line the child wrote to stderr (which
// goes to the parent, not to the terminal: "crashed (SIGABRT; it printed 'free(): invalid
// pointer')"). A failing fork or pipe is an IOError.
//
// The child of a multi-threaded parent holds only the calling thread: `fn` must not take locks
// that other threads may have held at the fork (malloc is safe with glibc), and should touch
// nothing but memory (no files, no logging).
Result<std::string> RunIsolated(const std::function<Result<std::string>()>& fn,
                                const IsolationLimits& limits);

}  // namespace ds::io
