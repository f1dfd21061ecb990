// How Launch works, in order:
//  1. Validate the options; pick a port when master_port is 0.
//  2. Install handlers for SIGINT, SIGTERM and SIGCHLD that write into a self-pipe.
//  3. Start each rank: fork, then in the child (async-signal-safe calls only) restore default
//     handlers, clear the signal mask, set PR_SET_PDEATHSIG, move the output pipes onto fds 1 and
//     2, execve. An exec failure comes back through a close-on-exec pipe, so it is known before
//     the next rank would start, and no further rank starts.
//  4. One poll loop copies the ranks' output line by line, reaps exited ranks, forwards signals,
//     and escalates SIGTERM to SIGKILL after grace_s. It ends when every rank is reaped.
//  5. Restore the previous signal handlers.
// Ranks stay in the launcher's process group, so a terminal's Ctrl-C reaches them directly; a
// signal the kernel sent (si_code SI_KERNEL: the terminal) is therefore not forwarded again. A
// signal sent to the whole group with kill(1) reaches the ranks twice, as with torchrun.
#include "launch/launcher.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <set>

extern char** environ;  // NOLINT: the launcher's environment, which the ranks inherit

namespace ds::launch {
namespace {

constexpr int kExitCannotExecute = 127;  // what shells report for a program they cannot run
constexpr size_t kMaxLineBytes = size_t{64}
                                 << 10;   // a longer line is emitted in pieces of this size
constexpr int kPollTickMs = 100;          // re-checks children even if a wake-up were lost
constexpr int kPollReads = 4;             // chunks read from one pipe per wake-up (fairness)
constexpr int kDrainReads = 1024;         // chunks read from a dead rank's pipe (16 MiB at most)
constexpr double kMaxGraceSeconds = 1e9;  // keeps the deadline arithmetic in range
constexpr int kGroupSignalWaitMs = 50;    // see Supervisor::OnExit
constexpr int kHandledSignals[] = {SIGINT, SIGTERM, SIGCHLD};

// ---- signals
// The only process-wide state, because a signal handler can reach nothing else: while Launch
// runs, the write end of its self-pipe. The handler writes one SignalRecord per signal; the poll
// loop reads them. g_launch_running keeps a second Launch from taking the handlers over.
static_assert(std::atomic<int>::is_always_lock_free, "the signal handler needs a lock-free int");
std::atomic<int> g_signal_pipe{-1};
std::atomic<bool> g_launch_running{false};

struct SignalRecord {
  uint8_t signo;
  uint8_t from_kernel;  // 1: the kernel sent it (a terminal's Ctrl-C to the process group)
};

void OnSignal(int signo, siginfo_t* info, void* /*context*/) {
  const int saved_errno = errno;
  const SignalRecord r{static_cast<uint8_t>(signo),
                       static_cast<uint8_t>(info != nullptr && info->si_code == SI_KERNEL)};
  const int fd = g_signal_pipe.load();
  if (fd >= 0) (void)!write(fd, &r, sizeof r);  // full pipe: a wake-up is pending anyway
  errno = saved_errno;
}

// Installs OnSignal for kHandledSignals; restores the previous handlers when destroyed.
class SignalScope {
 public:
  static Result<std::unique_ptr<SignalScope>> Install() {
    if (g_launch_running.exchange(true)) {
      return Status::FailedPrecondition("dsrun: another Launch is running in this process");
    }
    std::unique_ptr<SignalScope> s(new SignalScope());
    if (pipe2(s->pipe_, O_CLOEXEC | O_NONBLOCK) != 0) {
      return ErrnoStatus("dsrun: cannot create the signal pipe", errno);
    }
    g_signal_pipe.store(s->pipe_[1]);
    struct sigaction sa = {};
    sa.sa_sigaction = OnSignal;
    sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_NOCLDSTOP;
    sigemptyset(&sa.sa_mask);
    for (; s->installed_ < std::size(kHandledSignals); ++s->installed_) {
      const size_t i = s->installed_;
      if (sigaction(kHandledSignals[i], &sa, &s->old_[i]) != 0) {
        return ErrnoStatus("dsrun: cannot install a signal handler", errno);
      }
    }
    return s;
  }
  ~SignalScope() {
    for (size_t i = 0; i < installed_; ++i) sigaction(kHandledSignals[i], &old_[i], nullptr);
    g_signal_pipe.store(-1);
    for (int fd : pipe_) {
      if (fd >= 0) close(fd);
    }
    g_launch_running.store(false);
  }
  int read_fd() const { return pipe_[0]; }

 private:
  SignalScope() = default;
  int pipe_[2] = {-1, -1};
  struct sigaction old_[std::size(kHandledSignals)] = {};
  size_t installed_ = 0;  // handlers in old_ to restore
};

std::string SignalName(int signo) {
  static constexpr std::pair<int, const char*> kNames[] = {
      {SIGHUP, "SIGHUP"},   {SIGINT, "SIGINT"},   {SIGQUIT, "SIGQUIT"}, {SIGILL, "SIGILL"},
      {SIGTRAP, "SIGTRAP"}, {SIGABRT, "SIGABRT"}, {SIGBUS, "SIGBUS"},   {SIGFPE, "SIGFPE"},
      {SIGKILL, "SIGKILL"}, {SIGUSR1, "SIGUSR1"}, {SIGSEGV, "SIGSEGV"}, {SIGUSR2, "SIGUSR2"},
      {SIGPIPE, "SIGPIPE"}, {SIGALRM, "SIGALRM"}, {SIGTERM, "SIGTERM"}, {SIGXCPU, "SIGXCPU"},
      {SIGXFSZ, "SIGXFSZ"}};
  for (const auto& [number, name] : kNames) {
    if (number == signo) return name;
  }
  return "signal " + std::to_string(signo);
}

// Writes all of `data` to `fd`, waiting while a non-blocking `fd` is full. Output that cannot be
// written (a closed pipe) is dropped: there is nowhere left to report it.
void WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = write(fd, data.data(), data.size());
    if (n > 0) {
      data.remove_prefix(static_cast<size_t>(n));
    } else if (n < 0 && errno == EAGAIN) {
      pollfd p{fd, POLLOUT, 0};
      (void)poll(&p, 1, kPollTickMs);
    } else if (n >= 0 || errno != EINTR) {
      return;
    }
  }
}

std::string FormatSeconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g s", s);
  return buf;
}

// ---- options and the ranks' environment

constexpr const char* kPerRankVariables[] = {
    "RANK",      "LOCAL_RANK",  "WORLD_SIZE",  "LOCAL_WORLD_SIZE", "GROUP_RANK",
    "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "DSTRAIN_LAUNCHED"};

Status ValidateOptions(const LaunchOptions& o) {
  auto bad = [](const std::string& m) { return Status::InvalidArgument("dsrun: " + m); };
  if (o.argv.empty() || o.argv[0].empty()) return bad("no program to launch");
  if (o.nproc_per_node < 1) {
    return bad("--nproc-per-node " + std::to_string(o.nproc_per_node) + " is not at least 1");
  }
  if (o.nnodes < 1) return bad("--nnodes " + std::to_string(o.nnodes) + " is not at least 1");
  if (o.node_rank < 0 || o.node_rank >= o.nnodes) {
    return bad("--node-rank " + std::to_string(o.node_rank) + " is not in [0, " +
               std::to_string(o.nnodes) + ")");
  }
  if (o.master_port < 0 || o.master_port > 65535) {
    return bad("--master-port " + std::to_string(o.master_port) + " is not a TCP port");
  }
  if (o.master_port == 0 && o.nnodes > 1) {
    return bad("--master-port is needed with --nnodes " + std::to_string(o.nnodes) +
               " (every node must use the same port)");
  }
  if (!(o.grace_s >= 0)) {
    return bad("the grace period " + FormatSeconds(o.grace_s) + " is not a duration >= 0");
  }
  for (const auto& [name, value] : o.extra_env) {
    if (name.empty() || name.find('=') != std::string::npos) {
      return bad("\"" + name + "\" is not an environment variable name");
    }
    if (std::find(std::begin(kPerRankVariables), std::end(kPerRankVariables), name) !=
        std::end(kPerRankVariables)) {
      return bad(name + " is set by the launcher for each rank; it cannot be given");
    }
  }
  return Status::OK();
}

// KEY=VALUE entries of the launcher's environment, without those the launcher sets itself.
std::vector<std::string> InheritedEnvironment(const LaunchOptions& o) {
  std::set<std::string, std::less<>> replaced(std::begin(kPerRankVariables),
                                              std::end(kPerRankVariables));
  for (const auto& kv : o.extra_env) replaced.insert(kv.first);
  std::vector<std::string> out;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view entry(*e);
    if (!replaced.contains(entry.substr(0, entry.find('=')))) out.emplace_back(entry);
  }
  return out;
}

// `env` plus torchrun's variables for global rank `rank` (local rank `local`), then extra_env.
std::vector<std::string> RankEnvironment(const LaunchOptions& o, int port, int rank, int local,
                                         std::vector<std::string> env) {
  const int values[] = {rank,        local,      o.nnodes * o.nproc_per_node, o.nproc_per_node,
                        o.node_rank, o.node_rank};  // the first six of kPerRankVariables
  auto add = [&env](std::string_view name, std::string_view value) {
    std::string& entry = env.emplace_back(name);
    entry += '=';
    entry += value;
  };
  for (size_t i = 0; i < std::size(values); ++i) {
    add(kPerRankVariables[i], std::to_string(values[i]));
  }
  add("MASTER_ADDR", o.master_addr);
  add("MASTER_PORT", std::to_string(port));
  add("DSTRAIN_LAUNCHED", "1");
  for (const auto& [k, v] : o.extra_env) add(k, v);
  return env;
}

// ---- starting one rank (step 3)

// What the child needs after fork, prepared before it: no allocation between fork and exec.
struct ChildPlan {
  const char* path;
  char* const* argv;
  char* const* envp;
  int stdout_fd;      // becomes the child's fd 1
  int stderr_fd;      // becomes the child's fd 2
  int exec_error_fd;  // write end of the close-on-exec pipe that reports an exec failure
  pid_t launcher_pid;
};

[[noreturn]] void RunChild(const ChildPlan& p) {
  struct sigaction dfl = {};
  dfl.sa_handler = SIG_DFL;
  for (int sig : kHandledSignals) sigaction(sig, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  // The death signal follows the forking thread; Launch's thread outlives every rank.
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != p.launcher_pid) _exit(1);
  if (dup2(p.stdout_fd, STDOUT_FILENO) >= 0 && dup2(p.stderr_fd, STDERR_FILENO) >= 0) {
    execve(p.path, p.argv, p.envp);
  }
  const int error = errno;
  (void)!write(p.exec_error_fd, &error, sizeof error);
  _exit(kExitCannotExecute);
}

struct Spawned {
  pid_t pid = -1;
  int out_fd = -1;     // read end of its stdout pipe (non-blocking); -1 without prefixing
  int err_fd = -1;     // same for stderr
  int exec_errno = 0;  // why execve failed (the child has exited 127 and is reaped); 0: it ran
};

// Forks and executes o.argv with `env`. Every descriptor made here is close-on-exec, so no rank
// holds another rank's pipe open (which would hide its end of file); dup2 clears the flag.
Result<Spawned> Spawn(const LaunchOptions& o, std::vector<std::string> env) {
  std::vector<std::string> args = o.argv;
  std::vector<char*> argv, envp;
  for (std::string& s : args) argv.push_back(s.data());
  for (std::string& s : env) envp.push_back(s.data());
  argv.push_back(nullptr);
  envp.push_back(nullptr);

  int out[2] = {-1, -1}, err[2] = {-1, -1}, exec_error[2] = {-1, -1};
  auto close_fds = [&](std::initializer_list<int*> fds) {
    for (int* fd : fds) {
      if (*fd >= 0) close(*fd);
      *fd = -1;
    }
  };
  auto fail = [&](std::string_view what, int e) {
    close_fds({&out[0], &out[1], &err[0], &err[1], &exec_error[0], &exec_error[1]});
    return ErrnoStatus("dsrun: cannot start a rank: " + std::string(what), e);
  };
  if (pipe2(exec_error, O_CLOEXEC) != 0) return fail("pipe", errno);
  if (o.prefix_output) {
    if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) return fail("pipe", errno);
  } else {  // copies above 2, so that dup2 onto 1 and 2 cannot clobber one with the other
    out[1] = fcntl(o.stdout_fd, F_DUPFD_CLOEXEC, 3);
    err[1] = fcntl(o.stderr_fd, F_DUPFD_CLOEXEC, 3);
    if (out[1] < 0 || err[1] < 0) return fail("dup of the output descriptors", errno);
  }
  const ChildPlan plan{argv[0], argv.data(), envp.data(), out[1], err[1], exec_error[1], getpid()};
  // Signals stay blocked across fork so that the child never runs OnSignal (which would write
  // into the launcher's pipe); the child resets the handlers before unblocking them.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  Spawned s;
  s.pid = fork();
  if (s.pid == 0) RunChild(plan);
  const int fork_errno = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  close_fds({&out[1], &err[1], &exec_error[1]});
  if (s.pid < 0) return fail("fork", fork_errno);

  ssize_t n;  // 0: exec succeeded and closed the pipe
  while ((n = read(exec_error[0], &s.exec_errno, sizeof s.exec_errno)) < 0 && errno == EINTR) {
  }
  close_fds({&exec_error[0]});
  if (n == sizeof s.exec_errno) {
    while (waitpid(s.pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    close_fds({&out[0], &err[0]});
    return s;
  }
  s.exec_errno = 0;
  for (int fd : {out[0], err[0]}) {
    if (fd >= 0) fcntl(fd, F_SETFL, O_NONBLOCK);
  }
  s.out_fd = out[0];
  s.err_fd = err[0];
  return s;
}

// ---- the supervisor: the ranks and the poll loop (step 4)

// One output stream of one rank, read through a pipe.
struct Stream {
  int fd = -1;          // read end (non-blocking); -1 once closed
  int dest_fd = -1;     // where its lines go
  std::string partial;  // bytes after the last newline
};

struct RankProcess {
  int rank = 0;
  int local = 0;
  pid_t pid = -1;
  bool running = false;
  Stream out, err;
  RankExit exit;
};

class Supervisor {
 public:
  Supervisor(io::Env* env, const LaunchOptions& o, int port, int signal_fd)
      : env_(env), o_(o), port_(port), signal_fd_(signal_fd) {}
  ~Supervisor();  // kills and reaps ranks still running (only on error paths), closes pipes

  Status Start();
  Status Wait();
  LaunchResult TakeResult();

 private:
  void Pump(const RankProcess& r, Stream& s, int max_reads, bool final);
  void OnExit(RankProcess& r, int wait_status);
  void RecordFailure(const RankExit& e, std::string what);
  void HandleSignals();
  void BeginStop(int signo, bool send);
  void KillRemaining();
  void Log(const std::string& message) { WriteAll(o_.stderr_fd, "dsrun: " + message + "\n"); }
  size_t Running() const {
    return static_cast<size_t>(std::count_if(ranks_.begin(), ranks_.end(),
                                             [](const RankProcess& r) { return r.running; }));
  }

  io::Env* env_;
  const LaunchOptions& o_;
  int port_;
  int signal_fd_;
  std::vector<RankProcess> ranks_;
  LaunchResult result_;
  bool stopping_ = false;
  int stop_signal_ = 0;
  uint64_t kill_at_micros_ = 0;  // when the stop escalates to SIGKILL (env clock)
  bool killed_ = false;
};

Supervisor::~Supervisor() {
  for (RankProcess& r : ranks_) {
    if (r.running) {
      kill(r.pid, SIGKILL);
      while (waitpid(r.pid, nullptr, 0) < 0 && errno == EINTR) {
      }
    }
    for (Stream* s : {&r.out, &r.err}) {
      if (s->fd >= 0) close(s->fd);
    }
  }
}

Status Supervisor::Start() {
  const std::vector<std::string> inherited = InheritedEnvironment(o_);
  for (int local = 0; local < o_.nproc_per_node && !stopping_; ++local) {
    const int rank = o_.node_rank * o_.nproc_per_node + local;
    DS_ASSIGN_OR_RETURN(Spawned s, Spawn(o_, RankEnvironment(o_, port_, rank, local, inherited)));
    RankProcess& r = ranks_.emplace_back();
    r.rank = rank;
    r.local = local;
    r.pid = s.pid;
    r.running = s.exec_errno == 0;
    r.out = {s.out_fd, o_.stdout_fd, {}};
    r.err = {s.err_fd, o_.stderr_fd, {}};
    if (s.exec_errno != 0) {
      r.exit = {rank, kExitCannotExecute, 0};
      RecordFailure(r.exit, "cannot execute " + o_.argv[0] + ": " + std::strerror(s.exec_errno));
    }
  }
  return Status::OK();
}

// Copies what `s` holds now, whole lines only, reading at most `max_reads` chunks so that one
// busy rank cannot starve the others. At end of file, or with `final` (its rank is gone), the
// last partial line is completed with a newline and the pipe is closed.
void Supervisor::Pump(const RankProcess& r, Stream& s, int max_reads, bool final) {
  if (s.fd < 0) return;
  char buf[16 * 1024];
  bool eof = false;
  for (int i = 0; i < max_reads; ++i) {
    const ssize_t n = read(s.fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      eof = n == 0 || errno != EAGAIN;
      break;
    }
    s.partial.append(buf, static_cast<size_t>(n));
  }
  const std::string prefix = "[rank " + std::to_string(r.rank) + "] ";
  std::string lines;  // everything complete, written at once
  size_t begin = 0;
  while (begin < s.partial.size()) {
    const size_t nl = s.partial.find('\n', begin);
    if (nl == std::string::npos && s.partial.size() - begin < kMaxLineBytes) break;
    const size_t len = nl == std::string::npos ? kMaxLineBytes : nl - begin;
    lines += prefix;
    lines.append(s.partial, begin, len);
    lines += '\n';
    begin += len + (nl == std::string::npos ? 0 : 1);
  }
  s.partial.erase(0, begin);
  if ((eof || final) && !s.partial.empty()) {
    lines += prefix + s.partial + "\n";
    s.partial.clear();
  }
  WriteAll(s.dest_fd, lines);
  if (eof || final) {
    close(s.fd);
    s.fd = -1;
  }
}

void Supervisor::OnExit(RankProcess& r, int wait_status) {
  r.running = false;
  Pump(r, r.out, kDrainReads, false);  // its last lines come before any message about it
  Pump(r, r.err, kDrainReads, false);
  const std::string who = "rank " + std::to_string(r.rank) + " (local " + std::to_string(r.local) +
                          ", pid " + std::to_string(r.pid) + ")";
  if (WIFSIGNALED(wait_status)) {
    const int sig = WTERMSIG(wait_status);
    if (!stopping_ && (sig == SIGINT || sig == SIGTERM || sig == SIGHUP || sig == SIGQUIT)) {
      // Sent to the whole process group (a terminal, a scheduler)? Then the launcher's own copy
      // is on its way, and the job was interrupted rather than failed by this rank.
      pollfd p{signal_fd_, POLLIN, 0};
      if (poll(&p, 1, kGroupSignalWaitMs) > 0) HandleSignals();
    }
    r.exit = {r.rank, -1, sig};
    RecordFailure(r.exit, who + " was killed by signal " + std::to_string(sig) + " (" +
                              SignalName(sig) + ")");
  } else {
    const int code = WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : 1;
    r.exit = {r.rank, code, 0};
    if (code != 0) RecordFailure(r.exit, who + " exited with code " + std::to_string(code));
  }
}

// Only the first failure counts and is logged: the ranks that the launcher then stops fail
// after it. `what` describes how rank e.rank ended.
void Supervisor::RecordFailure(const RankExit& e, std::string what) {
  if (!result_.first_failure.empty()) return;
  result_.exit_code = e.signal != 0 ? 128 + e.signal : e.exit_code;
  const size_t others = Running();
  if (!stopping_ && others > 0) {
    what += "; stopping the other " +
            (others == 1 ? std::string("rank") : std::to_string(others) + " ranks");
  }
  result_.first_failure = what;
  Log(what);
  if (!stopping_) BeginStop(SIGTERM, true);
}

// Sends `signo` to every running rank when `send`; starts the grace period unless it runs.
void Supervisor::BeginStop(int signo, bool send) {
  for (RankProcess& r : ranks_) {
    if (!send || !r.running) continue;
    kill(r.pid, signo);
    // A stopped rank (SIGSTOP, a debugger's pause) acts on SIGTERM only once continued.
    if (signo == SIGTERM) kill(r.pid, SIGCONT);
  }
  if (stopping_) return;
  stopping_ = true;
  stop_signal_ = signo;
  const double grace_micros = std::min(o_.grace_s, kMaxGraceSeconds) * 1e6;
  kill_at_micros_ = env_->NowMicros() + static_cast<uint64_t>(grace_micros);
}

void Supervisor::KillRemaining() {
  std::string list;
  for (RankProcess& r : ranks_) {
    if (!r.running) continue;
    kill(r.pid, SIGKILL);
    list += (list.empty() ? "rank " : ", rank ") + std::to_string(r.rank) + " (pid " +
            std::to_string(r.pid) + ")";
  }
  Log(list + " still running " + FormatSeconds(o_.grace_s) + " after " + SignalName(stop_signal_) +
      "; sending SIGKILL");
  killed_ = true;
}

void Supervisor::HandleSignals() {
  SignalRecord r;
  while (read(signal_fd_, &r, sizeof r) == sizeof r) {
    if (r.signo != SIGINT && r.signo != SIGTERM) continue;  // SIGCHLD: the loop reaps anyway
    const std::string name = SignalName(r.signo);
    if (r.from_kernel) {
      Log("interrupted (" + name + " from the terminal, which sent it to the ranks too); " +
          "waiting up to " + FormatSeconds(o_.grace_s) + " for them to exit");
    } else {
      const size_t n = Running();
      Log("got " + name + "; forwarding it to the " + std::to_string(n) + " running rank" +
          (n == 1 ? "" : "s"));
    }
    BeginStop(r.signo, !r.from_kernel);
  }
}

Status Supervisor::Wait() {
  std::vector<pollfd> fds;
  std::vector<std::pair<const RankProcess*, Stream*>> streams;  // polled at fds[i + 1]
  while (Running() > 0) {
    fds.assign(1, pollfd{signal_fd_, POLLIN, 0});
    streams.clear();
    for (RankProcess& r : ranks_) {
      for (Stream* s : {&r.out, &r.err}) {
        if (s->fd < 0) continue;
        fds.push_back(pollfd{s->fd, POLLIN, 0});
        streams.emplace_back(&r, s);
      }
    }
    int timeout_ms = kPollTickMs;
    if (stopping_ && !killed_) {
      const uint64_t now = env_->NowMicros();
      const uint64_t left_ms = now >= kill_at_micros_ ? 0 : (kill_at_micros_ - now + 999) / 1000;
      timeout_ms = static_cast<int>(std::min<uint64_t>(left_ms, kPollTickMs));
    }
    if (poll(fds.data(), fds.size(), timeout_ms) < 0 && errno != EINTR) {
      return ErrnoStatus("dsrun: poll", errno);
    }
    if (fds[0].revents != 0) HandleSignals();
    for (size_t i = 0; i < streams.size(); ++i) {
      if (fds[i + 1].revents != 0) Pump(*streams[i].first, *streams[i].second, kPollReads, false);
    }
    for (RankProcess& r : ranks_) {
      int wait_status = 0;
      if (r.running && waitpid(r.pid, &wait_status, WNOHANG) == r.pid) OnExit(r, wait_status);
    }
    if (stopping_ && !killed_ && Running() > 0 && env_->NowMicros() >= kill_at_micros_) {
      KillRemaining();
    }
  }
  // Every rank is gone: copy what their pipes still hold, without waiting for processes they
  // left behind that may keep a pipe open.
  for (RankProcess& r : ranks_) {
    Pump(r, r.out, kDrainReads, true);
    Pump(r, r.err, kDrainReads, true);
  }
  return Status::OK();
}

LaunchResult Supervisor::TakeResult() {
  for (const RankProcess& r : ranks_) result_.ranks.push_back(r.exit);
  return std::move(result_);
}

}  // namespace

Result<LaunchResult> Launch(io::Env* env, const LaunchOptions& options) {
  DS_RETURN_IF_ERROR(ValidateOptions(options));
  int port = options.master_port;
  if (port == 0) {
    DS_ASSIGN_OR_RETURN(port, PickFreePort());
  }
  DS_ASSIGN_OR_RETURN(std::unique_ptr<SignalScope> signals, SignalScope::Install());
  Supervisor supervisor(env, options, port, signals->read_fd());  // destroyed before `signals`
  DS_RETURN_IF_ERROR(supervisor.Start());
  DS_RETURN_IF_ERROR(supervisor.Wait());
  return supervisor.TakeResult();
}

Result<int> PickFreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus("dsrun: cannot pick a free port: socket", errno);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;  // the kernel picks
  socklen_t len = sizeof addr;
  Status s;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    s = ErrnoStatus("dsrun: cannot pick a free port: bind 127.0.0.1:0", errno);
  } else if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    s = ErrnoStatus("dsrun: cannot pick a free port: getsockname", errno);
  }
  close(fd);
  if (!s.ok()) return s;
  return static_cast<int>(ntohs(addr.sin_port));
}

}  // namespace ds::launch
