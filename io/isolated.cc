// RunIsolated: fork, limit, run, answer through a pipe; the parent waits with a deadline.
//
// The answer is one frame, so the parent knows it is whole without waiting for end-of-file
// (another thread's child may hold a copy of the pipe's write end):
//   u64 LE length of what follows | u8 kind | payload
//   kind 0: payload = the bytes fn returned
//   kind 1: payload = u8 status code, then the message
//   kind 2: no payload: fn ran out of memory (std::bad_alloc)
#include "io/isolated.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <new>
#include <optional>

#include "io/units.h"

#ifdef DS_UNDER_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

namespace ds::io {
namespace {

enum FrameKind : uint8_t { kBytes = 0, kStatus = 1, kOutOfMemory = 2 };
constexpr int kExitUncaughtException = 70;  // the child's exit status when fn threw

std::string Frame(FrameKind kind, std::string_view payload) {
  std::string f(9, '\0');
  const uint64_t n = payload.size() + 1;
  for (int i = 0; i < 8; ++i) f[i] = static_cast<char>(n >> (8 * i));
  f[8] = static_cast<char>(kind);
  f.append(payload);
  return f;
}

std::string SignalName(int sig) {
  switch (sig) {
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGABRT: return "SIGABRT";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    case SIGKILL: return "SIGKILL";
    case SIGXCPU: return "SIGXCPU";
    case SIGTERM: return "SIGTERM";
    case SIGPIPE: return "SIGPIPE";
    case SIGTRAP: return "SIGTRAP";
    case SIGSYS: return "SIGSYS";
    default: return "signal " + std::to_string(sig);
  }
}

std::string Seconds(std::chrono::milliseconds d) {
  const auto ms = d.count();
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + " s";
  return std::to_string(ms / 1000) + "." + std::to_string(ms % 1000 / 100) + " s";
}

// The address space this process already has (what a child inherits), in bytes; 0 if unknown.
uint64_t CurrentAddressSpace() {
  int fd = ::open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[128] = {};
  ssize_t n = ::read(fd, buf, sizeof(buf) - 1);
  ::close(fd);
  if (n <= 0) return 0;
  return std::strtoull(buf, nullptr, 10) * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}

bool WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// The child: limits, default crash signals (no inherited crash handler prints or dumps for it),
// fn, one frame, _exit. Never returns, never runs the parent's atexit handlers or destructors.
[[noreturn]] void RunChild(int fd, const std::function<Result<std::string>()>& fn,
                           const IsolationLimits& limits, uint64_t inherited_address_space) {
  for (int sig : {SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL, SIGXCPU, SIGPIPE}) {
    ::signal(sig, SIG_DFL);
  }
#ifdef DS_UNDER_ASAN
  // A sanitizer report in the child (libhdf5 copying overlapping memory, say) ends the child
  // only: the parent's death callback (libFuzzer's writes a crash artifact) must not run for it.
  __sanitizer_set_death_callback(nullptr);
#endif
  struct rlimit no_core = {0, 0};
  ::setrlimit(RLIMIT_CORE, &no_core);  // a crash must not drop a core of the whole parent
  const uint64_t cpu = static_cast<uint64_t>(limits.timeout.count() + 999) / 1000 + 1;  // s
  struct rlimit cpu_limit = {cpu, cpu + 1};  // SIGXCPU, then SIGKILL a second later
  ::setrlimit(RLIMIT_CPU, &cpu_limit);
  if (kIsolationLimitsMemory && limits.memory_bytes > 0) {
    const rlim_t as = inherited_address_space + limits.memory_bytes;
    struct rlimit old = {};
    ::getrlimit(RLIMIT_AS, &old);
    struct rlimit lim = {std::min(as, old.rlim_max), std::min(as, old.rlim_max)};
    ::setrlimit(RLIMIT_AS, &lim);
  }
  static const char kOom[9] = {1, 0, 0, 0, 0, 0, 0, 0, kOutOfMemory};
  try {
    std::string frame;
    {
      Result<std::string> r = fn();
      if (r.ok()) {
        frame = Frame(kBytes, *r);
      } else {
        std::string payload(1, static_cast<char>(r.status().code()));
        payload += r.status().message();
        frame = Frame(kStatus, payload);
      }
    }
    _exit(WriteAll(fd, frame.data(), frame.size()) ? 0 : 1);
  } catch (const std::bad_alloc&) {
    _exit(WriteAll(fd, kOom, sizeof(kOom)) ? 0 : 1);
  } catch (...) {
    _exit(kExitUncaughtException);
  }
}

// Waits for the child to end (it is exiting, or was killed); its wait status, or -1.
int Reap(pid_t pid) {
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0) {
    if (errno != EINTR) return -1;  // ECHILD: SIGCHLD ignored, the child reaped itself
  }
  return st;
}

// What the parent read: the whole frame, or why not; and the end of what the child printed.
struct Answer {
  std::string frame;  // with its 8-byte length prefix
  bool complete = false;
  bool timed_out = false;
  bool too_long = false;
  int read_errno = 0;
  std::string err_tail;  // the last kErrTailBytes the child wrote to stderr
};
constexpr size_t kErrTailBytes = 4096;

// Reads what is there on the child's stderr (a non-blocking pipe), keeping the tail. False at
// its end (or error).
bool DrainStderr(int fd, std::string* tail) {
  char tmp[4096];
  while (true) {
    ssize_t n = ::read(fd, tmp, sizeof(tmp));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK;
    if (n == 0) return false;
    tail->append(tmp, static_cast<size_t>(n));
    if (tail->size() > kErrTailBytes) tail->erase(0, tail->size() - kErrTailBytes);
  }
}

// Reads the answer until it is whole, the child closes it, or the deadline; meanwhile keeps
// the tail of the child's stderr (so that a chatty child never blocks on a full pipe).
Answer ReadAnswer(int fd, int err_fd, const IsolationLimits& limits) {
  Answer a;
  const auto deadline = std::chrono::steady_clock::now() + limits.timeout;
  std::string buf;
  uint64_t need = 8;  // bytes: the length prefix, then the whole frame
  bool have_length = false;
  bool err_open = true;
  char tmp[64 << 10];
  while (true) {
    if (!have_length && buf.size() >= 8) {
      uint64_t n = 0;
      for (int i = 0; i < 8; ++i) n |= uint64_t{static_cast<uint8_t>(buf[i])} << (8 * i);
      if (n > limits.max_answer_bytes + 16) {
        a.too_long = true;
        return a;
      }
      need = 8 + n;
      have_length = true;
      buf.reserve(need);
    }
    if (have_length && buf.size() >= need) break;
    const auto left =
        std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      a.timed_out = true;
      return a;
    }
    struct pollfd p[2] = {{fd, POLLIN, 0}, {err_open ? err_fd : -1, POLLIN, 0}};
    int r = ::poll(p, 2, static_cast<int>(std::min<int64_t>(left.count(), 1 << 30)));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      a.read_errno = errno;
      return a;
    }
    if (err_open && p[1].revents != 0) err_open = DrainStderr(err_fd, &a.err_tail);
    if (p[0].revents == 0) continue;  // the deadline is checked above
    ssize_t n = ::read(fd, tmp, std::min<uint64_t>(sizeof(tmp), need - buf.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      a.read_errno = errno;
      return a;
    }
    if (n == 0) return a;  // end of file before the whole frame: the child died
    buf.append(tmp, static_cast<size_t>(n));
  }
  a.frame = std::move(buf);
  a.complete = true;
  return a;
}

// The last line the child printed, short and printable: "malloc(): corrupted top size".
std::string LastLine(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  s = s.substr(s.find_last_of('\n') == std::string::npos ? 0 : s.find_last_of('\n') + 1);
  for (char& c : s) c = (c < 0x20 || c == 0x7f) ? '?' : c;
  return s.size() > 200 ? s.substr(0, 200) + "..." : s;
}

// The frame as fn's result, or nullopt when it is malformed.
std::optional<Result<std::string>> ParseFrame(std::string_view frame) {
  if (frame.empty()) return std::nullopt;
  switch (static_cast<uint8_t>(frame.front())) {
    case kBytes: return Result<std::string>(std::string(frame.substr(1)));
    case kStatus: {
      if (frame.size() < 2) return std::nullopt;
      const auto code = static_cast<StatusCode>(static_cast<uint8_t>(frame[1]));
      if (code == StatusCode::kOk || code > StatusCode::kUnavailable) return std::nullopt;
      return Result<std::string>(Status(code, std::string(frame.substr(2))));
    }
    default: return std::nullopt;
  }
}

// How the child ended without an answer, with the last line it printed (a libc or sanitizer
// message) when there is one: "crashed (SIGABRT; it printed 'free(): invalid pointer')".
std::string DescribeEnd(int st, const IsolationLimits& limits, const std::string& printed) {
  const std::string said = printed.empty() ? "" : "it printed '" + printed + "'";
  const std::string also = said.empty() ? "" : "; " + said;
  if (st != -1 && WIFSIGNALED(st)) {
    const int sig = WTERMSIG(st);
    if (sig == SIGXCPU) {
      return "used more than " + Seconds(limits.timeout) + " of CPU (killed by SIGXCPU" + also +
             ")";
    }
    return "crashed (" + SignalName(sig) + also + ")";
  }
  std::string how = "exited without an answer";
  if (st == -1) {
    how = "ended without an answer";
  } else if (WIFEXITED(st) && WEXITSTATUS(st) == kExitUncaughtException) {
    how = "threw an exception (exit status " + std::to_string(kExitUncaughtException) + ")";
  } else if (WIFEXITED(st) && WEXITSTATUS(st) != 0) {
    how = "exited with status " + std::to_string(WEXITSTATUS(st)) + " without an answer";
  }
  return said.empty() ? how : how + " (" + said + ")";
}

}  // namespace

Result<std::string> RunIsolated(const std::function<Result<std::string>()>& fn,
                                const IsolationLimits& limits) {
  auto fail = [&](const std::string& how) -> Status {
    return limits.on_failure ? limits.on_failure(how) : Status::IOError("a child process " + how);
  };
  const uint64_t inherited = kIsolationLimitsMemory ? CurrentAddressSpace() : 0;
  int fds[2], err[2];  // the answer, the child's stderr
  if (::pipe2(fds, O_CLOEXEC) != 0) return ErrnoStatus("creating a pipe to a child process", errno);
  if (::pipe2(err, O_CLOEXEC) != 0) {
    const int e = errno;
    ::close(fds[0]);
    ::close(fds[1]);
    return ErrnoStatus("creating a pipe to a child process", e);
  }
  pid_t pid;
  int fork_errno = 0;
  {
    std::unique_lock<std::mutex> lock;
    if (limits.hold_across_fork != nullptr) lock = std::unique_lock(*limits.hold_across_fork);
    pid = ::fork();
    fork_errno = errno;
    if (pid == 0) {
      ::close(fds[0]);
      ::close(err[0]);
      ::dup2(err[1], STDERR_FILENO);  // (dup2 clears close-on-exec on the copy)
      RunChild(fds[1], fn, limits, inherited);
    }
  }
  ::close(fds[1]);
  ::close(err[1]);
  if (pid < 0) {
    ::close(fds[0]);
    ::close(err[0]);
    return ErrnoStatus("starting a child process (fork)", fork_errno);
  }
  ::fcntl(err[0], F_SETFL, ::fcntl(err[0], F_GETFL) | O_NONBLOCK);
  Answer a = ReadAnswer(fds[0], err[0], limits);
  ::close(fds[0]);
  if (a.timed_out || a.too_long || a.read_errno != 0) ::kill(pid, SIGKILL);
  const int st = Reap(pid);
  DrainStderr(err[0], &a.err_tail);  // the child is gone: what it wrote is in the pipe
  ::close(err[0]);
  if (a.timed_out) return fail("did not finish within " + Seconds(limits.timeout) + " (killed)");
  if (a.too_long) {
    return fail("sent an answer longer than " + FormatBytes(limits.max_answer_bytes) + " (killed)");
  }
  if (a.read_errno != 0) {
    return ErrnoStatus("reading the answer of a child process", a.read_errno);
  }
  if (!a.complete) return fail(DescribeEnd(st, limits, LastLine(a.err_tail)));
  const std::string_view frame = std::string_view(a.frame).substr(8);
  if (frame.size() == 1 && static_cast<uint8_t>(frame.front()) == kOutOfMemory) {
    return fail(limits.memory_bytes > 0 && kIsolationLimitsMemory
                    ? "ran out of memory (limit " + FormatBytes(limits.memory_bytes) + ")"
                    : "ran out of memory");
  }
  std::optional<Result<std::string>> r = ParseFrame(frame);
  if (!r) return fail("sent a malformed answer");
  return std::move(*r);
}

}  // namespace ds::io
