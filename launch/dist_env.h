// Where this process sits in a distributed job (rank, world, node, master) as read from torchrun's
// or SLURM's environment variables, plus SLURM node lists and DeepSpeed hostfiles.
// Thread safety: pure functions over their arguments; DistEnv and Host are values.
#pragma once

#include <cstdlib>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "io/status.h"

namespace ds::launch {

struct DistEnv {
  int rank = 0;              // global rank in [0, world_size)
  int local_rank = 0;        // rank on this node in [0, local_world_size)
  int world_size = 1;        // ranks in the job
  int local_world_size = 1;  // ranks on this node
  int node_rank = 0;         // in [0, nnodes)
  int nnodes = 1;
  std::string master_addr = "127.0.0.1";  // where rank 0 serves the rendezvous store
  int master_port = 29500;
  std::string source = "single";  // "single", "torchrun" (also what dsrun's launcher sets), "slurm"
};

// Reads one environment variable; nullptr when unset. Production passes ::getenv, tests a map.
// A variable set to the empty string counts as unset.
using GetEnvFn = std::function<const char*(const char*)>;

// The first convention that applies wins:
//  1. torchrun (and dsrun's own launcher): RANK and WORLD_SIZE are set. Also reads LOCAL_RANK
//     (default: RANK mod LOCAL_WORLD_SIZE), LOCAL_WORLD_SIZE (default: DeepSpeed's LOCAL_SIZE,
//     else WORLD_SIZE), GROUP_RANK or NODE_RANK (default: RANK / LOCAL_WORLD_SIZE), MASTER_ADDR,
//     MASTER_PORT; nnodes = WORLD_SIZE / LOCAL_WORLD_SIZE. Setting only one of RANK and
//     WORLD_SIZE is an error.
//  2. a SLURM task (srun): SLURM_PROCID and SLURM_NTASKS are set. SLURM_LOCALID, SLURM_NODEID,
//     SLURM_NNODES, and the tasks on this node from SLURM_NTASKS_PER_NODE or
//     SLURM_TASKS_PER_NODE ("4(x2),3"); the master is MASTER_ADDR, else the first host of
//     SLURM_JOB_NODELIST (or SLURM_NODELIST); the port MASTER_PORT, else 29500. srun sets them
//     all; when one is missing: SLURM_NNODES 1, SLURM_NODEID 0, all SLURM_NTASKS on a lone node,
//     SLURM_LOCALID = rank mod tasks on this node, master 127.0.0.1 on a lone node (an error on
//     several). A shell inside an allocation (SLURM_JOB_ID but no SLURM_PROCID) is a single
//     process.
//  3. a single process: the defaults above.
// Errors (InvalidArgument) name the variable, its value and what was expected:
// "RANK=4 is not below WORLD_SIZE=4".
Result<DistEnv> DistEnvFromEnvironment(const GetEnvFn& get_env = GetEnvFn(::getenv));

// The first host of a SLURM compressed host list, zero padding kept: "gpu[03-05,9],cpu1" ->
// "gpu03", "rack1-node[007-010]" -> "rack1-node007", "n[1,3]x" -> "n1x". The whole list is
// checked; a malformed one is an InvalidArgument naming it.
Result<std::string> FirstSlurmHost(std::string_view nodelist);

// One line of a DeepSpeed hostfile: "worker-1 slots=4".
struct Host {
  std::string name;
  int slots = 0;  // ranks (GPUs) to run there, at least 1
};

// Parses a DeepSpeed hostfile: one "<host> slots=<n>" per line, blank lines and '#' comments
// ignored, any whitespace around the fields. A duplicate host, missing, zero or non-numeric
// slots, extra fields, or no host at all are InvalidArgument errors naming "path:line".
// `path` is only used in messages.
Result<std::vector<Host>> ParseHostfile(std::string_view text, std::string_view path);

}  // namespace ds::launch
