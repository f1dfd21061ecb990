// dsrun's local launcher: starts this node's ranks with torchrun's environment variables, copies
// their output with a "[rank N] " prefix, stops them all when one fails, and forwards signals.
// It reaches the OS outside io::Env on purpose: fork and exec, signals, pipes, the environment the
// ranks inherit, and a socket for PickFreePort are processes and network, which Env does not model.
// Thread safety: one Launch per process at a time (it owns SIGINT, SIGTERM and SIGCHLD while it
// runs; a second concurrent call fails); PickFreePort may be called from any thread.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "io/env.h"
#include "io/status.h"

namespace ds::launch {

struct LaunchOptions {
  // The rank program and its arguments. argv[0] is a path, executed as given (no PATH search).
  std::vector<std::string> argv;
  int nproc_per_node = 1;  // ranks started on this node
  int nnodes = 1;
  int node_rank = 0;  // in [0, nnodes)
  std::string master_addr = "127.0.0.1";
  int master_port = 0;  // 0: pick a free port (only with nnodes == 1: every node needs the same)
  // Seconds between SIGTERM and SIGKILL when the ranks are being stopped (a rank failed, or the
  // launcher got SIGINT/SIGTERM).
  double grace_s = 10;
  // true: "[rank N] " before each line of each rank's stdout and stderr. false: the ranks write
  // to stdout_fd and stderr_fd directly (torchrun's default).
  bool prefix_output = true;
  // Added to each rank's environment (which is otherwise the launcher's), replacing variables of
  // the same name; may not set the variables the launcher sets per rank (RANK, ...).
  std::vector<std::pair<std::string, std::string>> extra_env;
  // Where the ranks' output and the launcher's own messages ("dsrun: ...") go.
  int stdout_fd = 1;
  int stderr_fd = 2;
};

// How one rank ended. Exactly one of exit_code and signal is meaningful.
struct RankExit {
  int rank = 0;        // global rank
  int exit_code = -1;  // its exit status; -1 when a signal ended it
  int signal = 0;      // the signal that ended it; 0 when it exited
};

struct LaunchResult {
  // 0 when every rank exited 0; else the first failed rank's exit code, or 128 + the signal that
  // killed it (as a shell reports it); 127 when the program could not be executed.
  int exit_code = 0;
  std::vector<RankExit> ranks;  // by rank, for every rank that was started
  // Why the job failed, as logged: "rank 3 (local 1, pid 1234) exited with code 7; stopping the
  // other 3 ranks". Empty when exit_code is 0.
  std::string first_failure;
};

// Starts options.nproc_per_node ranks and waits for all of them. Each gets the launcher's
// environment plus RANK (node_rank * nproc_per_node + local rank), LOCAL_RANK, WORLD_SIZE,
// LOCAL_WORLD_SIZE, GROUP_RANK and NODE_RANK (= node_rank), MASTER_ADDR, MASTER_PORT,
// DSTRAIN_LAUNCHED=1 and extra_env. When a rank exits non-zero or by a signal, the others get
// SIGTERM, then SIGKILL after grace_s. SIGINT and SIGTERM sent to the launcher are forwarded to
// the ranks (not a terminal's Ctrl-C, which already reached them: they stay in the launcher's
// process group). Ranks die with SIGKILL if the launcher dies (PR_SET_PDEATHSIG), so Launch's
// thread must not exit while Launch runs (it cannot: Launch blocks). `env` gives the clock.
// Errors: InvalidArgument for bad options; FailedPrecondition while another Launch runs; IOError
// when pipes or processes cannot be made. A rank that fails, including a program that cannot be
// executed, is a result, not an error.
Result<LaunchResult> Launch(io::Env* env, const LaunchOptions& options);

// A TCP port that was free on 127.0.0.1 a moment ago (bind port 0, read it, close). Another
// process may take it before rank 0 binds it; torchrun accepts the same race.
Result<int> PickFreePort();

}  // namespace ds::launch
