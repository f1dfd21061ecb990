// dsrun's pieces shared by dsrun.cc (the command line, one rank, the launcher), bench.cc
// (`dsrun bench`), doctor.cc and profile.cc. Not a public API.
// Thread safety: the main thread only.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bench/adam_bench.h"
#include "cli/dsrun/dsrun.h"
#include "engine/config/config.h"
#include "io/env.h"
#include "launch/launcher.h"

namespace ds::engine {

class Trainer;

constexpr int kExitTrainingFailed = 1;
constexpr int kExitUsage = 2;
// SIGTERM or SIGUSR1 stopped the run after a checkpoint of the current step (EX_TEMPFAIL: a
// scheduler's requeue script resumes with --resume latest).
constexpr int kExitPreempted = 75;

struct DsrunFlags {
  std::string config;
  std::vector<std::string> set;
  std::optional<int64_t> max_steps;
  std::optional<uint64_t> seed;
  std::string device;
  std::string backend;
  bool dry_run = false;
  bool strict = false;
  bool version = false;
  // Resuming (DeepSpeed's load_checkpoint options as flags).
  std::string resume;  // latest, best, a tag or a path
  bool no_load_optimizer = false;
  bool no_load_scheduler = false;
  bool load_module_only = false;
  bool fallback = false;
  bool resume_if_any = false;  // set by the launcher's restarts: no checkpoint yet is fine
  // Start at step 0 although checkpoint.save_dir holds committed checkpoints (kept: this run's
  // retention never deletes them). Without it such a start is refused.
  bool fresh_start = false;
  int max_restarts = 0;
  // The launcher (torchrun's and DeepSpeed's spellings).
  int nproc_per_node = 1;
  bool nproc_given = false;
  int nnodes = 1;
  int node_rank = -1;  // -1: 0, or this host's line of the hostfile
  std::string master_addr;
  int master_port = 0;
  std::string hostfile;
  // dsrun bench
  std::string stages = "0,1,2,3";
  std::string bench_offload = "none";  // none,optimizer,all,nvme: a row per stage and setting
  std::string bench_nvme_path;         // --offload nvme: where the swap files go ("": a temp dir)
  std::string bench_parallel = "1x1";  // TPxPP layouts: a row per stage and layout
  int64_t bench_steps = 10;
  int64_t bench_warmup = 3;
  bool json = false;
  std::string bench_dir;  // --out: bench.json, bench.csv, bench.svg there
  std::string bench_out;  // set on the ranks `dsrun bench` starts: rank 0 writes its numbers here
  std::string bench_profile;  // --profile DIR (on the ranks: the files' path and name prefix)
};

// The ranks' command line (config and overrides, without the launcher's flags), and how to
// start them.
std::vector<std::string> RankArgs(const DsrunFlags& f);
Result<launch::LaunchOptions> LaunchOptionsFor(const DsrunFlags& f,
                                               const std::vector<std::string>& rank_args);

int CudaDeviceCount();
// The device a rank trains on: `wanted` (--device) as given, except that none or a bare "cuda"
// is this rank's own GPU on a node with `gpus` of them (cuda:<local_rank mod gpus>).
std::string RankDevice(const std::string& wanted, int local_rank, int gpus);

// A rank of `dsrun bench`: warm-up steps, then timed steps; rank 0 writes one JSON object to
// f.bench_out (step time, tokens/s, memory, collectives per step).
Status MeasureSteps(io::Env* env, Trainer& trainer, const Config& config, const DsrunFlags& f,
                    int rank);
// --profile: `steps` more steps under LibTorch's profiler; writes <prefix>.txt (GPU busy time
// per step against the wall clock, and the kernels that took the most) and <prefix>.trace.json
// (a Chrome trace). An empty prefix runs the steps unrecorded (the other ranks).
Status ProfileSteps(io::Env* env, Trainer& trainer, int64_t steps, const std::string& prefix);
// The time covered by at least one of `spans` ({begin, end} in ns): overlapping device
// activities (a copy on a side stream beside a kernel) count once.
uint64_t BusyNanos(std::vector<std::pair<uint64_t, uint64_t>> spans);
// `dsrun bench`: launches the ranks once per stage and prints the table (and a --json line).
int RunBench(const DsrunFlags& f, const DsrunTools& tools);
// --out DIR: bench.json (what --json prints, indented), bench.csv (a row per stage), bench.svg
// (step time and model state per rank as bar charts).
std::string BenchCsv(const nlohmann::ordered_json& rows);
// One number through a printf format ("%.1f"), for the bench's table, CSV and chart.
std::string FormatNumber(const char* format, double v);
std::string BenchSvg(const nlohmann::ordered_json& rows, const std::string& title);
Status WriteBenchFiles(io::Env* env, const std::string& dir, const nlohmann::ordered_json& all);
// `dsrun bench adam`: the CPU Adam table (and a --json line); 1 when the run fails.
int RunAdamBenchCommand(const bench::AdamBenchOptions& options, bool json);
// `dsrun doctor [--config F]`: a pass / warn / fail table of what a job here needs; 1 on a fail.
int RunDoctor(const DsrunFlags& f, const DsrunTools& tools);

}  // namespace ds::engine
