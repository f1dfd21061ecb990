// `dsrun doctor`: checks what a job on this machine needs and prints one row per check, pass,
// warn or fail, each with what was found and what to do; exits 1 when any check fails.
#include <torch/torch.h>

#include <cstdio>
#include <thread>

#include "cli/dsrun/internal.h"
#include "engine/comm/comm.h"
#include "engine/config/memory.h"
#include "engine/runtime_info.h"
#include "io/async_io.h"
#include "io/units.h"
#include "launch/launcher.h"

namespace ds::engine {
namespace {

struct Check {
  std::string name;
  std::string verdict;  // "pass", "warn", "fail"
  std::string detail;   // what was found, and what to do
};

void Add(std::vector<Check>* out, std::string name, std::string verdict, std::string detail) {
  out->push_back({std::move(name), std::move(verdict), std::move(detail)});
}

void CheckRuntime(std::vector<Check>* out, bool want_gpu) {
  const RuntimeInfo r = QueryRuntime();
  Add(out, "libtorch", "pass",
      "LibTorch " + r.torch_version + (r.cuda_built ? ", CUDA " + r.cuda_version : ", CPU only") +
          (r.nccl_version.empty() ? "" : ", NCCL " + r.nccl_version) +
          (r.gloo_built ? ", Gloo" : ""));
  if (r.cuda_available) {
    Add(out, "gpus", "pass", std::to_string(r.gpu_count) + " GPU(s) visible");
  } else {
    Add(out, "gpus", want_gpu ? "fail" : "warn",
        r.cuda_built ? "no GPU visible: check nvidia-smi and CUDA_VISIBLE_DEVICES, or train with "
                       "--device cpu"
                     : "this LibTorch has no CUDA: training runs on the CPU");
  }
}

void CheckStorage(io::Env* env, const Config& c, const DsrunTools& tools, std::vector<Check>* out) {
  const std::string dir = CheckpointDir(c);
  if (Status s = env->CreateDirs(dir); !s.ok()) {
    Add(out, "save dir", "fail",
        s.message() + ": make " + dir + " writable or set checkpoint.save_dir");
    return;
  }
  Result<std::unique_ptr<io::AsyncIo>> aio = io::OpenAsyncIo({});
  if (aio.ok()) {
    Add(out, "io backend", (*aio)->backend() == "uring" ? "pass" : "warn",
        (*aio)->backend() + " (" + (*aio)->reason() + ")" +
            ((*aio)->backend() == "uring" ? "" : ": saves use pwrite threads, a little slower"));
  } else {
    Add(out, "io backend", "fail", aio.status().message());
  }
  const std::string probe = io::JoinPath(dir, ".dsrun-doctor-probe");
  Result<std::unique_ptr<io::File>> f = env->OpenFile(probe, {io::OpenMode::kTruncate, true});
  if (f.ok()) {
    Add(out, "O_DIRECT", (*f)->direct() ? "pass" : "warn",
        (*f)->direct() ? dir + " accepts O_DIRECT"
                       : dir + " refuses O_DIRECT: saves go through the page cache");
    (void)(*f)->Close();
  }
  (void)env->RemoveFile(probe);
  Result<DiskSpeed> r = tools.measure_disk
                            ? tools.measure_disk(env, dir, 256 << 20, /*with_fio=*/false)
                            : Status::Unavailable("this program measures no disk (dsrun does)");
  if (r.ok()) {
    const double w = r->write_bps;
    Add(out, "disk bandwidth", w >= 500e6 ? "pass" : "warn",
        io::FormatBytes(static_cast<uint64_t>(w)) + "/s direct writes, " +
            io::FormatBytes(static_cast<uint64_t>(r->read_bps)) + "/s reads in " + dir +
            (w >= 500e6
                 ? ""
                 : ": saves of large models will take long; use a faster disk for save_dir"));
  } else {
    Add(out, "disk bandwidth", "warn", "not measured: " + r.status().message());
  }
  // One checkpoint holds 12 bytes per parameter (fp32 master and both moments), before
  // compression; retention keeps keep_last of them (all when 0: count three here).
  const uint64_t one = 12 * static_cast<uint64_t>(ModelParameterCount(c.model));
  const uint64_t kept = c.checkpoint.keep_last > 0 ? c.checkpoint.keep_last : 3;
  Result<io::SpaceInfo> fs = env->StatFs(dir);
  if (fs.ok()) {
    const bool enough = fs->available_bytes >= one * (kept + 1);
    Add(out, "free space", enough ? "pass" : (fs->available_bytes >= one ? "warn" : "fail"),
        io::FormatBytes(fs->available_bytes) + " free in " + dir + "; a checkpoint is up to " +
            io::FormatBytes(one) + " (" + std::to_string(kept) + " kept + 1 being written)" +
            (enough ? "" : ": free space or lower checkpoint.keep_last"));
  }
}

// Two ranks of this process (threads) meet through a TCPStore and all-reduce over Gloo.
void CheckGloo(std::vector<Check>* out) {
  Result<int> port = launch::PickFreePort();
  if (!port.ok()) {
    Add(out, "gloo all-reduce", "fail", port.status().message());
    return;
  }
  Status status[2];
  float sum[2] = {0, 0};
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      CommOptions o;
      o.rank = r;
      o.world_size = 2;
      o.master_port = *port;
      o.backend = "gloo";
      o.timeout_s = 20;
      Result<std::unique_ptr<Comm>> c = Comm::Connect(o);
      if (!c.ok()) {
        status[r] = c.status();
        return;
      }
      at::Tensor t = torch::full({1024}, static_cast<float>(r + 1));
      status[r] = (*c)->AllReduce(t, "doctor's test tensor");
      sum[r] = t[0].item<float>();
    });
  }
  for (std::thread& t : ranks) t.join();
  for (int r = 0; r < 2; ++r) {
    if (!status[r].ok()) {
      Add(out, "gloo all-reduce", "fail", status[r].message());
      return;
    }
  }
  const bool right = sum[0] == 3.0f && sum[1] == 3.0f;
  Add(out, "gloo all-reduce", right ? "pass" : "fail",
      right ? "two ranks on 127.0.0.1 met and summed" : "the sum was wrong: report this");
}

void CheckEnvironment(io::Env* env, std::vector<Check>* out) {
  auto get = [env](const char* n) { return env->GetEnvVar(n).value_or(""); };
  if (get("NCCL_NVLS_ENABLE") != "0") {
    Add(out, "NCCL_NVLS_ENABLE", "warn",
        "not 0: NCCL may try NVLink SHARP multicast, which fails where it is not allowed; export "
        "NCCL_NVLS_ENABLE=0");
  }
  if (!get("CUDA_VISIBLE_DEVICES").empty()) {
    Add(out, "CUDA_VISIBLE_DEVICES", "pass",
        "= " + get("CUDA_VISIBLE_DEVICES") + ": only these GPUs are used");
  }
  if (!get("MASTER_ADDR").empty() && get("RANK").empty() && get("SLURM_PROCID").empty()) {
    Add(out, "MASTER_ADDR", "warn",
        "= " + get("MASTER_ADDR") +
            " but no RANK: dsrun's launcher sets its own; set --master-addr for multi-node jobs");
  }
  if (!get("SLURM_JOB_ID").empty() && get("SLURM_PROCID").empty()) {
    Add(out, "SLURM", "warn",
        "inside allocation " + get("SLURM_JOB_ID") +
            " but not a task: start dsrun with srun (one task per GPU), see "
            "examples/launch_slurm.sbatch");
  }
  for (const char* n : {"NCCL_DEBUG", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "NCCL_IB_DISABLE",
                        "NCCL_P2P_DISABLE"}) {
    if (!get(n).empty()) Add(out, n, "pass", "= " + get(n));
  }
}

}  // namespace

int RunDoctor(const DsrunFlags& f, const DsrunTools& tools) {
  io::Env* env = io::Env::Default();
  std::vector<Check> checks;
  bool want_gpu = false;
  Result<Config> config = Status::NotFound("no --config given");
  if (!f.config.empty()) {
    Overrides o;
    o.set = f.set;
    o.world_size = f.nproc_per_node * f.nnodes;
    config = LoadConfig(env, f.config, o);
    Add(&checks, "config", config.ok() ? "pass" : "fail",
        config.ok()
            ? f.config + " resolves (" + std::to_string(config->warnings.size()) + " warning(s))"
            : config.status().message());
  }
  want_gpu = f.device.rfind("cuda", 0) == 0;
  CheckRuntime(&checks, want_gpu);
  if (config.ok()) CheckStorage(env, *config, tools, &checks);
  CheckGloo(&checks);
  CheckEnvironment(env, &checks);
  bool failed = false;
  std::printf("%-22s %-5s %s\n", "check", "", "found, and what to do");
  for (const Check& c : checks) {
    std::printf("%-22s %-5s %s\n", c.name.c_str(), c.verdict.c_str(), c.detail.c_str());
    failed = failed || c.verdict == "fail";
  }
  return failed ? kExitTrainingFailed : 0;
}

}  // namespace ds::engine
