#include "cli/dsrun/dsrun.h"

#include <malloc.h>
#include <torch/cuda.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "ckpt/catalog.h"
#include "cli/dsrun/internal.h"
#include "engine/config/config.h"
#include "engine/config/memory.h"
#include "engine/runtime_info.h"
#include "engine/train/trainer.h"
#include "io/log.h"
#include "launch/dist_env.h"
#include "launch/launcher.h"

namespace ds::engine {
namespace {

// The signal that asked this rank to stop (SIGTERM, SIGUSR1), 0 if none: the trainer polls it
// between steps, saves and returns. A signal handler can only set a flag.
std::atomic<int> g_stop_signal{0};
extern "C" void OnStopSignal(int sig) { g_stop_signal.store(sig); }

void InstallStopHandlers() {
  struct sigaction sa {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
}

}  // namespace

std::string RankDevice(const std::string& wanted, int local_rank, int gpus) {
  // A bare "cuda" would put every rank on GPU 0, where NCCL refuses a second rank.
  if ((wanted.empty() || wanted == "cuda") && gpus > 0) {
    return "cuda:" + std::to_string(local_rank % gpus);
  }
  return wanted;
}

namespace {

// 288 GB: the largest memory of one GPU on sale (NVIDIA B300).
constexpr uint64_t kLargestGpuBytes = uint64_t{288} << 30;

MachineMemory MachineMemoryFor(const std::string& device, int gpus, int local_rank,
                               int ranks_per_host) {
  MachineMemory m;
  m.host_bytes = PhysicalMemoryBytes();
  m.ranks_per_host = std::max(ranks_per_host, 1);
  int index = -1;
  if ((device.empty() || device == "cuda") && gpus > 0) {
    index = local_rank % gpus;
  } else if (device.rfind("cuda:", 0) == 0) {
    index = std::atoi(device.c_str() + 5);
  }
  if (index >= 0) {
    m.device_bytes = GpuMemoryBytes(index);
    m.device_name = "cuda:" + std::to_string(index);
  }
  return m;
}

}  // namespace

int CudaDeviceCount() {
  return torch::cuda::is_available() ? static_cast<int>(torch::cuda::device_count()) : 0;
}

namespace {

// A run started without --resume beside committed checkpoints would begin at step 0, cut
// metrics.jsonl and let retention eat what it should have resumed: refused, naming the ways on.
Status RefuseFreshStartBesideCheckpoints(io::Env* env, const std::string& save_dir) {
  Result<bool> exists = env->Exists(save_dir);
  if (!exists.ok() || !*exists) return Status::OK();  // nothing there (or the save says why)
  ckpt::Catalog catalog(env, save_dir);
  Result<std::vector<ckpt::CheckpointEntry>> all = catalog.List();
  if (!all.ok())
    return Status(all.status().code(),
                  all.status().message() + " (listing " + save_dir + " before a fresh start)");
  if (all->empty()) return Status::OK();
  return Status::FailedPrecondition(
      save_dir + " already holds " + std::to_string(all->size()) +
      " committed checkpoint(s), the newest " + all->back().tag +
      ": resume with --resume latest (launch scripts: --resume latest --resume-if-any), or "
      "start from step 0 beside them with --fresh-start (this run then deletes none of them), "
      "or set checkpoint.save_dir to another directory");
}

int Fail(int code, const std::string& who, const Status& s) {
  // Collectives name their rank themselves.
  const bool named = s.message().rfind("rank ", 0) == 0;
  std::fprintf(stderr, "dsrun: %s%s\n", named ? "" : who.c_str(), s.message().c_str());
  return code;
}

// ---- one rank

int RunRank(const DsrunFlags& f) {
  io::Env* env = io::Env::Default();
  Result<launch::DistEnv> dist = launch::DistEnvFromEnvironment();
  if (!dist.ok()) return Fail(kExitUsage, "", dist.status());
  const std::string who = dist->world_size > 1 ? "rank " + std::to_string(dist->rank) + ": " : "";
  Overrides o;
  o.set = f.set;
  o.max_steps = f.max_steps;
  o.seed = f.seed;
  o.strict = f.strict;
  o.world_size = dist->world_size;
  if (f.dry_run && dist->source == "single") o.world_size = f.nproc_per_node * f.nnodes;
  Result<Config> config = LoadConfig(env, f.config, o);
  if (!config.ok()) return Fail(kExitUsage, who, config.status());
  if (dist->rank == 0) {
    for (const std::string& w : config->warnings) io::LogWarning(w);
    if (!config->not_implemented.empty()) {
      std::string keys;
      for (const std::string& k : config->not_implemented) keys += (keys.empty() ? "" : ", ") + k;
      io::LogWarning(f.config + ": accepted but not implemented (no effect): " + keys);
    }
  }
  TrainerOptions topts;
  topts.device = f.device;
  const int gpus = topts.device.empty() || topts.device == "cuda" ? CudaDeviceCount() : 0;
  MachineMemory machine = MachineMemoryFor(
      f.device, gpus, dist->local_rank,
      f.dry_run && dist->source == "single" ? f.nproc_per_node : dist->local_world_size);
  if (f.dry_run && gpus == 0 && f.device.empty()) {
    // No GPU here and none named: this is a login node planning a GPU job. Check what no GPU
    // could hold; the host that will train is not this one.
    machine.device_bytes = kLargestGpuBytes;
    machine.device_name = "the largest GPU made (no GPU here; --device cpu checks this host)";
    machine.host_bytes = 0;
  }
  const Status fits = CheckMemoryFits(*config, machine);
  if (f.dry_run) {
    std::printf("%s\n\n%s%s", config->resolved.dump(2).c_str(), FormatMemoryTable(*config).c_str(),
                MemoryAdvice(*config, machine).c_str());
    if (!fits.ok())
      return Fail(kExitUsage, who, Status(fits.code(), f.config + ": " + fits.message()));
    std::printf("\n%s: the config resolves; drop --dry-run to train\n", f.config.c_str());
    return 0;
  }
  if (!fits.ok())
    return Fail(kExitUsage, who, Status(fits.code(), f.config + ": " + fits.message()));
  if (gpus > 0 && dist->local_world_size > gpus) {
    return Fail(
        kExitUsage, who,
        Status::InvalidArgument(std::to_string(dist->local_world_size) +
                                " ranks on this node but " + std::to_string(gpus) +
                                " GPU(s) visible: NCCL needs a GPU per rank; "
                                "start fewer ranks, or train on the CPU with --device cpu (Gloo)"));
  }
  topts.device = RankDevice(f.device, dist->local_rank, gpus);
  topts.rank = dist->rank;
  topts.world_size = dist->world_size;
  topts.master_addr = dist->master_addr;
  topts.master_port = dist->master_port;
  topts.backend = f.backend;
  topts.stop_requested = [] { return g_stop_signal.load() != 0; };
  topts.will_resume = !f.resume.empty();
  topts.ranks_per_host = dist->local_world_size;
  InstallStopHandlers();
  if (f.resume.empty() && f.bench_out.empty() && config->checkpoint.enabled && !f.fresh_start) {
    if (Status s = RefuseFreshStartBesideCheckpoints(env, CheckpointDir(*config)); !s.ok()) {
      return Fail(kExitUsage, who, s);
    }
  }
  Result<std::unique_ptr<Trainer>> trainer = Trainer::Create(env, *config, topts);
  if (!trainer.ok()) return Fail(kExitUsage, who, trainer.status());
  if (!f.resume.empty()) {
    ResumeOptions ro;
    ro.from = f.resume;
    ro.load_optimizer = !f.no_load_optimizer;
    ro.load_scheduler = !f.no_load_scheduler;
    ro.module_only = f.load_module_only;
    ro.fallback = f.fallback;
    ro.if_any = f.resume_if_any;
    Result<std::string> r = (*trainer)->Resume(ro);
    if (!r.ok()) return Fail(kExitUsage, who, r.status());
    if (dist->rank == 0) io::LogInfo(*r);
  }
  if (!f.bench_out.empty()) {
    Status s = MeasureSteps(env, **trainer, *config, f, dist->rank);
    return s.ok() ? 0 : Fail(kExitTrainingFailed, who, s);
  }
  Result<TrainSummary> s = (*trainer)->Run();
  if (!s.ok()) return Fail(kExitTrainingFailed, who, s.status());
  if (s->preempted) {
    if (dist->rank == 0) {
      std::fprintf(stderr, "dsrun: %s at step %lld: %s; resume with --resume latest\n",
                   g_stop_signal.load() == SIGUSR1 ? "SIGUSR1" : "SIGTERM",
                   static_cast<long long>(s->steps),
                   s->last_checkpoint.empty()
                       ? "no checkpoint was saved (checkpoint.enabled is false, or the "
                         "save failed: see above)"
                       : ("saved " + s->last_checkpoint).c_str());
    }
    return kExitPreempted;
  }
  if (dist->rank != 0) return 0;
  std::printf("trained %lld steps on %s in %.1f s (%.0f tokens/s): loss %.4f -> %.4f",
              static_cast<long long>(s->steps), s->device.c_str(), s->seconds, s->tokens_per_s,
              s->first_loss, s->last_loss);
  if (s->last_eval_loss) std::printf(", eval loss %.4f", *s->last_eval_loss);
  if (s->skipped_steps > 0)
    std::printf(", %lld steps skipped (overflow)", static_cast<long long>(s->skipped_steps));
  std::printf("\nmetrics: %s/metrics.jsonl\n", config->trainer.output_dir.c_str());
  return 0;
}

// ---- the launcher

// Fills nnodes, node_rank and master_addr from a DeepSpeed hostfile: every host runs `slots`
// ranks, the first host is the master, and this host's place is found by its name.
Status ApplyHostfile(io::Env* env, DsrunFlags* f) {
  DS_ASSIGN_OR_RETURN(std::string text, env->ReadFileToString(f->hostfile));
  DS_ASSIGN_OR_RETURN(std::vector<launch::Host> hosts, launch::ParseHostfile(text, f->hostfile));
  for (const launch::Host& h : hosts) {
    if (h.slots != hosts[0].slots) {
      return Status::InvalidArgument(f->hostfile + ": every host needs the same slots (" +
                                     hosts[0].name + " has " + std::to_string(hosts[0].slots) +
                                     ", " + h.name + " has " + std::to_string(h.slots) +
                                     "): dsrun starts the same ranks per node");
    }
  }
  f->nnodes = static_cast<int>(hosts.size());
  if (!f->nproc_given) f->nproc_per_node = hosts[0].slots;
  if (f->master_addr.empty()) f->master_addr = hosts[0].name;
  if (f->node_rank < 0) {
    const std::string name = env->HostName();
    for (size_t i = 0; i < hosts.size(); ++i) {
      if (hosts[i].name == name) f->node_rank = static_cast<int>(i);
    }
    if (f->node_rank < 0) {
      return Status::InvalidArgument(f->hostfile + ": this host ('" + name +
                                     "') is not listed; pass --node-rank to say which line it is");
    }
  }
  return Status::OK();
}

}  // namespace

Result<launch::LaunchOptions> LaunchOptionsFor(const DsrunFlags& f,
                                               const std::vector<std::string>& rank_args) {
  launch::LaunchOptions lo;
  lo.argv = {"/proc/self/exe"};
  lo.argv.insert(lo.argv.end(), rank_args.begin(), rank_args.end());
  lo.nproc_per_node = f.nproc_per_node;
  lo.nnodes = f.nnodes;
  lo.node_rank = std::max(0, f.node_rank);
  lo.master_addr = f.master_addr.empty() ? "127.0.0.1" : f.master_addr;
  lo.master_port = f.master_port;
  if (lo.master_port == 0 && lo.nnodes > 1) lo.master_port = 29500;  // every node must agree
  // Like torchrun: ranks sharing a CPU split its cores instead of each taking all of them.
  if (!io::Env::Default()->GetEnvVar("OMP_NUM_THREADS") && f.nproc_per_node > 1) {
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    lo.extra_env.emplace_back(
        "OMP_NUM_THREADS",
        std::to_string(std::max(1u, cores / static_cast<unsigned>(f.nproc_per_node))));
  }
  return lo;
}

std::vector<std::string> RankArgs(const DsrunFlags& f) {
  std::vector<std::string> a = {"--config", f.config};
  if (!f.resume.empty()) a.insert(a.end(), {"--resume", f.resume});
  if (f.no_load_optimizer) a.push_back("--no-load-optimizer");
  if (f.no_load_scheduler) a.push_back("--no-load-scheduler");
  if (f.load_module_only) a.push_back("--load-module-only");
  if (f.fallback) a.push_back("--fallback");
  if (f.resume_if_any) a.push_back("--resume-if-any");
  if (f.fresh_start) a.push_back("--fresh-start");
  for (const std::string& s : f.set) a.insert(a.end(), {"--set", s});
  if (f.max_steps) a.insert(a.end(), {"--max-steps", std::to_string(*f.max_steps)});
  if (f.seed) a.insert(a.end(), {"--seed", std::to_string(*f.seed)});
  if (!f.device.empty()) a.insert(a.end(), {"--device", f.device});
  if (!f.backend.empty()) a.insert(a.end(), {"--backend", f.backend});
  if (f.strict) a.push_back("--strict");
  return a;
}

namespace {

// Exit codes a restart cannot help: success, a usage error, a preemption, Ctrl-C.
bool Restartable(int code) {
  return code != 0 && code != kExitUsage && code != kExitPreempted && code != 130;
}

int RunLauncher(const DsrunFlags& f) {
  for (int attempt = 0;; ++attempt) {
    DsrunFlags run = f;
    if (attempt > 0) {  // every restart resumes from the newest checkpoint, if there is one
      run.resume = "latest";
      run.resume_if_any = true;
      run.load_module_only = run.no_load_optimizer = run.no_load_scheduler = run.fallback = false;
      run.fresh_start = false;
    }
    Result<launch::LaunchOptions> lo = LaunchOptionsFor(run, RankArgs(run));
    if (!lo.ok()) return Fail(kExitUsage, "", lo.status());
    Result<launch::LaunchResult> r = launch::Launch(io::Env::Default(), *lo);
    if (!r.ok()) return Fail(kExitTrainingFailed, "", r.status());
    if (!Restartable(r->exit_code) || attempt >= f.max_restarts) {
      if (r->exit_code != 0 && f.max_restarts > 0 && attempt >= f.max_restarts) {
        std::fprintf(stderr, "dsrun: giving up after %d restart(s) (--max-restarts %d)\n", attempt,
                     f.max_restarts);
      }
      return r->exit_code;
    }
    std::fprintf(
        stderr,
        "dsrun: restart %d of %d: %s; starting all ranks again from the latest checkpoint\n",
        attempt + 1, f.max_restarts, r->first_failure.c_str());
  }
}

}  // namespace

// Host buffers of 1 MiB and more straight from mmap, and back to the OS when freed. glibc's
// threshold otherwise rises (to 32 MiB) each time such a buffer is freed, after which they come
// from its heaps and stay resident once freed (measured once, before this was set: a ZeRO-3
// rank of 4, 50M parameters in fp32 on the CPU, peaked 224 MiB higher during its steps).
// A user's MALLOC_MMAP_THRESHOLD_ wins.
static void KeepLargeBuffersMapped() {
  if (io::Env::Default()->GetEnvVar("MALLOC_MMAP_THRESHOLD_")) return;
  (void)mallopt(M_MMAP_THRESHOLD, 1 << 20);
}

int DsrunMain(int argc, char** argv, const DsrunTools& tools) {
  KeepLargeBuffersMapped();
  CLI::App app{"dsrun: train with ZeRO from a DeepSpeed JSON config"};
  app.fallthrough();
  DsrunFlags f;
  app.add_option("--config", f.config,
                 "DeepSpeed JSON config (with our model/data/trainer sections)");
  app.add_option("--set", f.set, "Override a key: --set optimizer.params.lr=3e-4 (repeatable)")
      ->take_all();
  std::string model_name, dataset_path;
  int64_t epochs = 0;
  app.add_option("--model_name,--model-name", model_name,
                 "A Hugging Face model folder (config.json, model.safetensors) to train: "
                 "model.hf_path (Llama, Mistral, Qwen2, GPT-2, BERT); it replaces a preset "
                 "or sizes the config gives");
  app.add_option("--dataset_path,--dataset-path", dataset_path,
                 "The training data: data.path (tokens: .bin, a directory or glob of llm.c "
                 "shards; text: .txt)");
  app.add_option("--epochs", epochs,
                 "Passes over the training data when no step count is given (trainer.epochs)")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-steps", f.max_steps, "Optimizer steps to train (trainer.max_steps)");
  app.add_option("--seed", f.seed, "Seed (trainer.seed)");
  app.add_option("--device", f.device,
                 "cpu, cuda or cuda:N (default: cuda:LOCAL_RANK when a GPU is visible)");
  app.add_option("--backend", f.backend, "nccl or gloo (default: nccl on GPUs, gloo on the CPU)");
  app.add_flag("--dry-run", f.dry_run,
               "Validate, print the resolved config and the memory per rank at each ZeRO stage");
  app.add_flag("--strict", f.strict, "Unknown config keys are errors, not warnings");
  app.add_option("--resume", f.resume,
                 "Resume from latest, best, a tag of the save_dir, or a checkpoint path");
  app.add_flag("--no-load-optimizer", f.no_load_optimizer,
               "Resume without Adam's state (it starts afresh)");
  app.add_flag("--no-load-scheduler", f.no_load_scheduler,
               "Resume with the LR schedule starting over");
  app.add_flag("--load-module-only", f.load_module_only,
               "Take only the weights: a fresh run from them");
  app.add_flag("--fallback", f.fallback,
               "A damaged checkpoint: resume from the newest older one that loads");
  app.add_flag("--resume-if-any", f.resume_if_any,
               "With --resume: start fresh when there is no checkpoint yet (for launch scripts)");
  app.add_flag("--fresh-start", f.fresh_start,
               "Start at step 0 although checkpoint.save_dir holds committed checkpoints "
               "(they are kept: this run's retention deletes none of them)");
  app.add_option(
      "--max-restarts", f.max_restarts,
      "When a rank dies, restart all ranks from the latest checkpoint, up to this many times");
  app.add_flag("--version", f.version, "Print versions of dstrain, LibTorch, CUDA, NCCL and Gloo");
  auto* nproc = app.add_option("--nproc-per-node,--nproc_per_node,--num_gpus", f.nproc_per_node,
                               "Ranks to start on this node (torchrun's --nproc-per-node)");
  app.add_option("--nnodes,--num_nodes", f.nnodes, "Nodes in the job (run dsrun on each)");
  app.add_option("--node-rank,--node_rank", f.node_rank, "This node's index in [0, nnodes)");
  app.add_option("--master-addr,--master_addr", f.master_addr,
                 "Host of rank 0 (default 127.0.0.1)");
  app.add_option("--master-port,--master_port", f.master_port,
                 "Port of the rendezvous (default: free)");
  app.add_option("--hostfile", f.hostfile,
                 "DeepSpeed hostfile ('host slots=N' lines): nnodes, slots, master");
  CLI::App* doctor = app.add_subcommand("doctor",
                                        "Check this machine (and --config): LibTorch, GPUs, "
                                        "io_uring, O_DIRECT, disk, free space, Gloo");
  CLI::App* bench = app.add_subcommand(
      "bench",
      "Measure each ZeRO stage (and TP/PP layout): step time, tokens/s, memory, collectives");
  bench->add_option("--stages", f.stages, "Stages to measure (default 0,1,2,3)");
  bench->add_option("--offload", f.bench_offload,
                    "Offload settings to measure at each stage: none, optimizer, all, nvme "
                    "(the optimizer on NVMe, and at stage 3 the parameters on the CPU), "
                    "nvme-all (stage 3: both on NVMe); default none; e.g. none,optimizer,all");
  bench->add_option("--nvme-path", f.bench_nvme_path,
                    "Where --offload nvme and nvme-all put their swap files (default: a temporary "
                    "directory)");
  bench->add_option("--parallel", f.bench_parallel,
                    "Tensor-parallel x pipeline layouts to measure at each stage, TPxPP "
                    "(default 1x1; e.g. 1x1,2x1,1x2,2x2)");
  bench->add_option("--steps", f.bench_steps, "Steps timed per stage (after the warm-up)");
  bench->add_option("--warmup", f.bench_warmup, "Steps run first and not timed");
  bench->add_flag("--json", f.json, "Also print the table as one JSON line");
  bench->add_option("--profile", f.bench_profile,
                    "Profile 3 more steps per row on rank 0: GPU busy time and the top kernels "
                    "(DIR/profile-<row>.txt) and a Chrome trace (DIR/profile-<row>.trace.json)");
  bench->add_option("--out", f.bench_dir,
                    "Write bench.json, bench.csv and bench.svg (a chart) here");
  bench::AdamBenchOptions adam_opts;
  CLI::App* adam = bench->add_subcommand(
      "adam", "Measure the CPU Adam step of ZeRO-Offload against torch's CPU AdamW");
  adam->add_option("--elements", adam_opts.elements, "fp32 parameters (default 100000000)");
  adam->add_option("--threads", adam_opts.threads, "Threads (default: LibTorch's, all cores)");
  adam->add_option("--repeat", adam_opts.repeat, "Timed steps per row (median)");
  adam->add_flag("--json", f.json, "Also print the table as one JSON line");
  // What `dsrun bench` passes its ranks.
  app.add_option("--bench-out", f.bench_out)->group("");
  app.add_option("--bench-warmup-steps", f.bench_warmup)->group("");
  app.add_option("--bench-timed-steps", f.bench_steps)->group("");
  app.add_option("--bench-profile", f.bench_profile)->group("");
  app.footer(
      "Examples:\n"
      "  dsrun --config examples/demo.json\n"
      "  dsrun --nproc-per-node 4 --config cfg.json --set zero_optimization.stage=2\n"
      "  dsrun --config cfg.json --set zero_optimization.stage=3 --dry-run\n"
      "  dsrun bench --config cfg.json --stages 0,1,2,3 --nproc-per-node 2 --json\n"
      "  dsrun bench adam --elements 100000000\n"
      "  dsrun doctor --config cfg.json\n"
      "Under torchrun or srun, dsrun reads RANK/WORLD_SIZE (or SLURM_PROCID/SLURM_NTASKS) and runs "
      "one rank.");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : kExitUsage;
  }
  // The seed's flags, as the keys they stand for (before --set, which can still override).
  if (!dataset_path.empty()) f.set.insert(f.set.begin(), "data.path=" + dataset_path);
  if (epochs > 0) f.set.insert(f.set.begin(), "trainer.epochs=" + std::to_string(epochs));
  if (!model_name.empty()) {
    // The flag names the model: the file's own choice of one (a preset, sizes) yields to it.
    f.set.insert(f.set.begin(), "model.hf_path=" + model_name);
    for (const char* key : {"preset", "n_layer", "n_head", "d_model", "vocab"}) {
      f.set.insert(f.set.begin(), std::string("model.") + key + "=null");
    }
  }
  // Parse only, run nothing: tests/docs/docs_commands_test.py checks the commands in the docs.
  if (io::Env::Default()->GetEnvVar("DSTRAIN_CHECK_ARGS") == "1") return 0;
  f.nproc_given = nproc->count() > 0;
  if (f.version) {
    std::printf("dsrun %s\n%s", DSTRAIN_VERSION, DescribeRuntime(QueryRuntime()).c_str());
    return 0;
  }
  if (doctor->parsed()) return RunDoctor(f, tools);
  if (adam->parsed()) return RunAdamBenchCommand(adam_opts, f.json);
  if (f.config.empty()) {
    std::fputs(app.help().c_str(), stderr);
    std::fprintf(stderr, "dsrun: --config is required\n");
    return kExitUsage;
  }
  if (f.nproc_per_node < 1 || f.nnodes < 1 || (f.node_rank >= 0 && f.node_rank >= f.nnodes)) {
    std::fprintf(stderr,
                 "dsrun: --nproc-per-node (%d) and --nnodes (%d) must be at least 1 and "
                 "--node-rank (%d) below --nnodes\n",
                 f.nproc_per_node, f.nnodes, f.node_rank);
    return kExitUsage;
  }
  if (!f.hostfile.empty()) {
    Status s = ApplyHostfile(io::Env::Default(), &f);
    if (!s.ok()) return Fail(kExitUsage, "", s);
  }
  if (bench->parsed()) return RunBench(f, tools);
  Result<launch::DistEnv> dist = launch::DistEnvFromEnvironment();
  const bool inside_a_job = dist.ok() && dist->source != "single";
  if (!inside_a_job && !f.dry_run && (f.nproc_per_node > 1 || f.nnodes > 1)) return RunLauncher(f);
  return RunRank(f);
}

}  // namespace ds::engine
