// `dsrun bench`: one launch per ZeRO stage, each rank 0 reporting step time, tokens/s, memory
// per rank and the collectives per step, then one table (and a --json line) comparing them.
#include <sys/resource.h>
#include <torch/cuda.h>

#if DS_TORCH_HAS_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "cli/dsrun/internal.h"
#include "engine/train/trainer.h"
#include "io/progress.h"
#include "io/units.h"

namespace ds::engine {
namespace {

using Json = nlohmann::ordered_json;

constexpr int64_t kProfiledSteps = 3;  // --profile

uint64_t PeakRssBytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<uint64_t>(u.ru_maxrss) * 1024;  // Linux reports KiB
}

Result<std::vector<int>> ParseStages(const std::string& text) {
  std::vector<int> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (item.size() != 1 || item[0] < '0' || item[0] > '3') {
      return Status::InvalidArgument("--stages '" + text + "': '" + item +
                                     "' is not a ZeRO stage (use a list of 0, 1, 2, 3)");
    }
    out.push_back(item[0] - '0');
  }
  if (out.empty()) return Status::InvalidArgument("--stages is empty (use e.g. 0,1,2,3)");
  return out;
}

std::string Mib(double bytes) { return FormatNumber("%.1f", bytes / (1024.0 * 1024.0)); }

std::string Percent(double fraction) { return FormatNumber("%.1f%%", fraction * 100); }

std::string Ms(double seconds) { return FormatNumber("%.1f", seconds * 1e3); }

// The disk's direct-write bound where the checkpoints went (our io benchmark, and fio when it is
// installed), against what the saves achieved: every rank's stored bytes over the time to
// durable. Empty when no save was measured or the config cannot be read here.
std::string DiskBound(io::Env* env, const DsrunFlags& f, const DsrunTools& tools,
                      const Json& rows) {
  double stored = 0, seconds = 0;
  int ranks = 1;
  for (const Json& j : rows) {
    if (!j.contains("save_stored_bytes")) continue;
    stored = j["save_stored_bytes"].get<double>();
    seconds = j["save_durable_s"].get<double>();
    ranks = j["ranks"].get<int>();
  }
  Overrides o;
  o.set = f.set;
  Result<Config> c = LoadConfig(env, f.config, o);
  if (stored <= 0 || seconds <= 0 || !c.ok()) return "";
  const std::string save_dir = CheckpointDir(*c);
  const uint64_t bytes =
      std::clamp<uint64_t>(static_cast<uint64_t>(stored * ranks), 64 << 20, uint64_t{2} << 30);
  Result<DiskSpeed> r = tools.measure_disk
                            ? tools.measure_disk(env, save_dir, bytes, /*with_fio=*/true)
                            : Status::Unavailable("this program measures no disk (dsrun does)");
  if (!r.ok()) return "disk bound: not measured (" + r.status().message() + ")\n";
  const double achieved = stored * ranks / seconds;
  const DiskSpeed& b = *r;
  char line[512];
  std::snprintf(
      line, sizeof line,
      "last save: %s stored by %d rank(s) in %.2f s = %s/s; the disk's direct-write bound in %s: "
      "%s/s (%s%s) -> %.2fx of it%s\n",
      io::FormatBytes(static_cast<uint64_t>(stored * ranks)).c_str(), ranks, seconds,
      io::FormatBytes(static_cast<uint64_t>(achieved)).c_str(), save_dir.c_str(),
      io::FormatBytes(static_cast<uint64_t>(b.write_bps)).c_str(), b.backend.c_str(),
      b.direct ? ", O_DIRECT" : "", b.write_bps > 0 ? achieved / b.write_bps : 0.0,
      b.fio_write_bps > 0
          ? (", fio " + io::FormatBytes(static_cast<uint64_t>(b.fio_write_bps)) + "/s").c_str()
          : "");
  return line;
}

// Launch, drawing the progress rank 0 reports in `progress_file` (units done this launch) on
// `bar` while the ranks run; afterwards the bar stands at `units` whatever the ranks did (no
// saves when checkpoints are off, a failure). The bar shows only on a terminal.
Result<launch::LaunchResult> LaunchWithProgress(io::Env* env, const launch::LaunchOptions& options,
                                                const std::string& progress_file, uint64_t units,
                                                io::Progress* bar) {
  std::atomic<bool> finished{false};
  Result<launch::LaunchResult> result = Status::Unavailable("not launched");
  std::thread launcher([&] {
    result = launch::Launch(env, options);
    finished = true;
  });
  uint64_t shown = 0;
  auto poll = [&] {
    Result<std::string> text = env->ReadFileToString(progress_file);
    const uint64_t done = text.ok() ? std::strtoull(text->c_str(), nullptr, 10) : 0;
    if (done > shown) bar->Add(done - shown);
    shown = std::max(shown, done);
  };
  while (!finished) {
    poll();
    env->SleepForMicros(200'000);
  }
  launcher.join();
  poll();
  if (units > shown) bar->Add(units - shown);
  return result;
}

}  // namespace

Status MeasureSteps(io::Env* env, Trainer& trainer, const Config& config, const DsrunFlags& f,
                    int rank) {
  const bool cuda = trainer.device_name().rfind("cuda", 0) == 0;
  (void)cuda;
  // What building the model and the state took (the high-water marks before any step).
  const uint64_t init_peak_rss = PeakRssBytes();
  const std::optional<uint64_t> init_gpu_peak = trainer.memory().gpu_peak_bytes;
  // The training stream only: a device-wide sync would also wait for a snapshot's copies to the
  // host, which run beside training on their own stream.
  auto sync = [&] {
#if DS_TORCH_HAS_CUDA
    if (cuda) c10::cuda::getCurrentCUDAStream().synchronize();
#endif
  };
  // Rank 0 tells `dsrun bench` how far it is (its progress bar): units done, one per step or
  // save, as a fixed-width number rewritten in place: no fsync or rename in the timed loop.
  std::unique_ptr<io::File> progress_file;
  if (rank == 0) {
    Result<std::unique_ptr<io::File>> pf =
        env->OpenFile(f.bench_out + ".progress", {io::OpenMode::kTruncate});
    if (pf.ok()) progress_file = std::move(*pf);  // no bar is no reason to fail the bench
  }
  uint64_t done = 0;
  auto progress = [&] {
    if (progress_file == nullptr) return;
    char text[24];
    std::snprintf(text, sizeof text, "%020llu", static_cast<unsigned long long>(++done));
    (void)progress_file->WriteAt(0, std::as_bytes(std::span(text, 20)));
  };
  for (int64_t i = 0; i < f.bench_warmup; ++i) {
    DS_RETURN_IF_ERROR(trainer.Step());
    progress();
  }
  sync();
  const std::map<std::string, CollectiveStats> before = trainer.comm_stats();
  const uint64_t t0 = env->NowMicros();
  for (int64_t i = 0; i < f.bench_steps; ++i) {
    DS_RETURN_IF_ERROR(trainer.Step());
    progress();  // steps the host has queued: no sync here, it would cost the GPU its lead
  }
  sync();
  const double seconds = static_cast<double>(env->NowMicros() - t0) / 1e6;
  if (!f.bench_profile.empty()) {  // every rank steps (collectives); rank 0 records
    DS_RETURN_IF_ERROR(
        ProfileSteps(env, trainer, kProfiledSteps, rank == 0 ? f.bench_profile : ""));
  }
  // A checkpoint of the state as it is now, and the step after it: what the save costs training
  // (the save call and that step, less an ordinary step: on a GPU the snapshot's copies overlap
  // the step's forward and backward and its optimizer waits for them), and how long until
  // durable. Twice: the first save also allocates (and on a GPU page-locks) the staging memory,
  // which a training run pays once; the second is what every later save costs.
  const double step_s = seconds / static_cast<double>(f.bench_steps);
  std::optional<ckpt::SaveStats> first_save, save;
  double first_stall = 0, stall = 0;
  if (config.checkpoint.enabled) {
    for (int i = 0; i < 2; ++i) {
      const uint64_t s0 = env->NowMicros();
      DS_RETURN_IF_ERROR(trainer.SaveCheckpoint("bench"));
      DS_RETURN_IF_ERROR(trainer.Step());
      sync();
      (i == 0 ? first_stall : stall) =
          std::max(0.0, static_cast<double>(env->NowMicros() - s0) / 1e6 - step_s);
      trainer.WaitForSaves();
      progress();
      (i == 0 ? first_save : save) = trainer.last_save();
    }
  }
  // Every rank's own memory, for `dsrun bench` to report the largest.
  Json mine = {{"init_peak_rss_bytes", init_peak_rss}, {"peak_rss_bytes", PeakRssBytes()}};
  if (init_gpu_peak) mine["init_gpu_peak_bytes"] = *init_gpu_peak;
  DS_RETURN_IF_ERROR(
      env->ReplaceFileAtomically(f.bench_out + ".rank-" + std::to_string(rank), mine.dump()));
  if (rank != 0) return Status::OK();
  const double steps = static_cast<double>(f.bench_steps);
  Json j;
  j["stage"] = config.zero.stage;
  j["ranks"] = config.parallel.dp * config.parallel.tp * config.parallel.pp;
  j["tp"] = config.parallel.tp;
  j["pp"] = config.parallel.pp;
  j["offload_optimizer"] = config.zero.offload_optimizer.device != OffloadConfig::Device::kNone;
  j["optimizer_on_nvme"] = config.zero.offload_optimizer.device == OffloadConfig::Device::kNvme;
  j["step_s"] = seconds / steps;
  j["tokens_per_s"] =
      static_cast<double>(config.batch.train_batch_size * config.model.seq_len) * steps / seconds;
  if (auto mfu = trainer.mfu(j["tokens_per_s"].get<double>())) j["mfu"] = *mfu;
  const ModelStateBytes m = trainer.model_state();
  j["model_state_bytes"] = m.total();
  j["model_state_on_host_bytes"] = m.on_host;
  j["model_state_on_nvme_bytes"] = m.on_nvme;
  j["params_bytes"] = m.params;
  j["grads_bytes"] = m.grads;
  j["optimizer_bytes"] = m.optimizer;
  const MemoryStats mem = trainer.memory();
  j["peak_bytes"] = mem.gpu_peak_bytes ? *mem.gpu_peak_bytes : PeakRssBytes();
  j["peak_kind"] = mem.gpu_peak_bytes ? "gpu" : "rss";
  if (mem.gpu_peak_bytes) {
    // What the peak holds beyond the model state on the GPU: activations, gathered parameters,
    // buckets and the allocator's slack.
    const uint64_t on_gpu = m.total() - m.on_host;
    j["activation_bytes"] = *mem.gpu_peak_bytes > on_gpu ? *mem.gpu_peak_bytes - on_gpu : 0;
  }
  j["offload_param"] = config.zero.offload_param.device == OffloadConfig::Device::kCpu;
  Json comm = Json::object();
  double bytes = 0, secs = 0;
  for (const auto& [op, after] : trainer.comm_stats()) {
    CollectiveStats d = after;
    if (auto it = before.find(op); it != before.end()) {
      d.calls -= it->second.calls;
      d.bytes -= it->second.bytes;
      d.seconds -= it->second.seconds;
    }
    comm[op] = {{"calls_per_step", static_cast<double>(d.calls) / steps},
                {"bytes_per_step", static_cast<double>(d.bytes) / steps},
                {"seconds_per_step", d.seconds / steps}};
    bytes += static_cast<double>(d.bytes);
    secs += d.seconds;
  }
  j["comm_bytes_per_step"] = bytes / steps;
  j["comm_seconds_per_step"] = secs / steps;
  if (secs > 0) j["comm_bandwidth_bps"] = bytes / secs;  // while a collective was in flight
  j["comm"] = comm;
  if (save) {
    // A synchronous save would stall training until durable.
    j["save_stall_s"] = stall;
    if (first_save) j["first_save_stall_s"] = first_stall;
    j["save_snapshot_s"] = save->snapshot_seconds;        // the save call itself
    j["save_copies_done_s"] = save->copies_done_seconds;  // every byte in staging
    // Durable: the checkpoint and `latest` on disk, what a save is for. The total adds retention
    // (deleting the checkpoint it replaces with keep_last), which runs after and frees space.
    j["save_durable_s"] = save->durable_seconds;
    j["save_total_s"] = save->total_seconds;
    j["save_retention_s"] = save->retention_seconds;
    j["save_logical_bytes"] = save->logical_bytes;
    j["save_stored_bytes"] = save->stored_bytes;
    j["save_stall_per_step"] = stall / step_s;
    j["save_stall_per_sync_save"] = save->durable_seconds > 0 ? stall / save->durable_seconds : 0;
  }
  return env->ReplaceFileAtomically(f.bench_out, j.dump());
}

namespace {

// One row of the comparison: a ZeRO stage with an offload setting and a tensor x pipeline
// layout.
struct BenchCase {
  int stage = 0;
  // "none", "optimizer" (offload_optimizer), "all" (and offload_param), "nvme" (the optimizer on
  // NVMe, parameters on the CPU) or "nvme-all" (both on NVMe)
  std::string offload;
  int tp = 1, pp = 1;
  std::string Label() const {
    return std::to_string(stage) +
           (offload == "none"       ? ""
            : offload == "all"      ? "+all"
            : offload == "nvme"     ? "+nvme"
            : offload == "nvme-all" ? "+nvme-all"
                                    : "+opt") +
           (tp * pp > 1 ? "/tp" + std::to_string(tp) + "pp" + std::to_string(pp) : "");
  }
};

// --parallel: "TPxPP" items ("1x1,2x1,1x2,2x2").
Result<std::vector<std::pair<int, int>>> ParseLayouts(const std::string& text) {
  std::vector<std::pair<int, int>> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    int tp = 0, pp = 0;
    char x = 0, extra = 0;
    if (std::sscanf(item.c_str(), "%d%c%d%c", &tp, &x, &pp, &extra) != 3 || x != 'x' || tp < 1 ||
        pp < 1) {
      return Status::InvalidArgument("--parallel '" + text + "': '" + item +
                                     "' is not TPxPP (tensor-parallel degree x pipeline stages, "
                                     "e.g. 2x1)");
    }
    out.push_back({tp, pp});
  }
  if (out.empty()) return Status::InvalidArgument("--parallel is empty (use e.g. 1x1,2x1)");
  return out;
}

// --stages x --offload x --parallel, skipping what cannot run: stage 0 has no optimizer partition
// to offload (DeepSpeed: stages 1-3), only stage 3 offloads parameters, tensor parallelism
// takes stages 0-2 and the pipeline 0-1, and TP x PP must divide the ranks.
Result<std::vector<BenchCase>> BenchCases(const DsrunFlags& f) {
  DS_ASSIGN_OR_RETURN(std::vector<int> stages, ParseStages(f.stages));
  DS_ASSIGN_OR_RETURN(auto layouts, ParseLayouts(f.bench_parallel));
  std::vector<std::string> offloads;
  std::stringstream in(f.bench_offload);
  for (std::string item; std::getline(in, item, ',');) {
    if (item != "none" && item != "optimizer" && item != "all" && item != "nvme" &&
        item != "nvme-all") {
      return Status::InvalidArgument("--offload '" + f.bench_offload + "': '" + item +
                                     "' is not an offload setting (use none, optimizer, all, "
                                     "nvme, nvme-all)");
    }
    offloads.push_back(item);
  }
  const int ranks = f.nproc_per_node * f.nnodes;
  std::vector<BenchCase> out;
  for (const auto& [tp, pp] : layouts) {
    for (int stage : stages) {
      for (const std::string& o : offloads) {
        if ((o != "none" && stage == 0) || ((o == "all" || o == "nvme-all") && stage != 3))
          continue;
        if ((tp > 1 && stage == 3) || (pp > 1 && stage > 1) || ranks % (tp * pp) != 0) continue;
        out.push_back({stage, o, tp, pp});
      }
    }
  }
  if (out.empty()) {
    return Status::InvalidArgument(
        "--stages " + f.stages + " with --offload " + f.bench_offload + " and --parallel " +
        f.bench_parallel +
        " leaves nothing to run (offload needs stage 1-3, 'all' stage 3; "
        "tensor parallelism stages 0-2, pipelines 0-1; TP x PP must divide the " +
        std::to_string(ranks) + " rank(s))");
  }
  return out;
}

// The largest of the ranks' memory figures (the files of the ranks on this node): host peaks
// at init (model and state built, before any step) and at the end, and the GPU's at init.
void AddRankMemory(io::Env* env, const std::string& out, int ranks, Json* row) {
  for (int r = 0; r < ranks; ++r) {
    Result<std::string> text = env->ReadFileToString(out + ".rank-" + std::to_string(r));
    if (!text.ok()) continue;  // a rank on another node
    const Json m = Json::parse(*text, nullptr, /*allow_exceptions=*/false);
    if (!m.is_object()) continue;
    for (const char* key : {"init_peak_rss_bytes", "peak_rss_bytes", "init_gpu_peak_bytes"}) {
      if (!m.contains(key)) continue;
      const std::string max_key = std::string("max_rank_") + key;
      (*row)[max_key] = std::max(row->value(max_key, uint64_t{0}), m[key].get<uint64_t>());
    }
  }
}

void PrintBenchTable(const DsrunFlags& f, const Json& rows) {
  std::printf("\nZeRO stages: %s, %d rank(s) per node x %d node(s), %lld timed steps each\n",
              f.config.c_str(), f.nproc_per_node, f.nnodes, static_cast<long long>(f.bench_steps));
  std::printf("%-13s %5s %9s %11s %6s %14s %12s %9s %13s %12s %9s %10s %10s %13s %13s\n", "stage",
              "ranks", "step ms", "tokens/s", "MFU", "state/rank MiB", "peak MiB", "act MiB",
              "comm MiB/step", "comm ms/step", "comm GB/s", "stall ms", "durable ms",
              "init rss MiB", "max rss MiB");
  for (const Json& j : rows) {
    const auto opt = [&](const char* key, auto format) {
      return j.contains(key) ? format(j[key].get<double>()) : std::string("-");
    };
    std::printf(
        "%-13s %5d %9.1f %11.0f %6s %14s %12s %9s %13s %12.1f %9s %10s %10s %13s %13s\n",
        j.value("case", std::to_string(j["stage"].get<int>())).c_str(), j["ranks"].get<int>(),
        j["step_s"].get<double>() * 1e3, j["tokens_per_s"].get<double>(),
        opt("mfu", Percent).c_str(), Mib(j["model_state_bytes"].get<double>()).c_str(),
        (Mib(j["peak_bytes"].get<double>()) + (j["peak_kind"] == "gpu" ? " gpu" : " rss")).c_str(),
        opt("activation_bytes", Mib).c_str(), Mib(j["comm_bytes_per_step"].get<double>()).c_str(),
        j["comm_seconds_per_step"].get<double>() * 1e3,
        opt("comm_bandwidth_bps", [](double b) { return FormatNumber("%.2f", b / 1e9); }).c_str(),
        opt("save_stall_s", Ms).c_str(), opt("save_durable_s", Ms).c_str(),
        opt("max_rank_init_peak_rss_bytes", Mib).c_str(),
        opt("max_rank_peak_rss_bytes", Mib).c_str());
  }
  std::printf(
      "init rss, max rss: the largest rank's host high-water mark once its model and "
      "state were built, and at the end\n");
}

}  // namespace

int RunBench(const DsrunFlags& f, const DsrunTools& tools) {
  io::Env* env = io::Env::Default();
  Result<std::vector<BenchCase>> cases = BenchCases(f);
  if (!cases.ok()) {
    std::fprintf(stderr, "dsrun bench: %s\n", cases.status().message().c_str());
    return kExitUsage;
  }
  if (f.bench_steps < 1 || f.bench_warmup < 0) {
    std::fprintf(stderr, "dsrun bench: --steps must be at least 1 and --warmup at least 0\n");
    return kExitUsage;
  }
  if (!f.bench_profile.empty()) {
    if (Status s = env->CreateDirs(f.bench_profile); !s.ok()) {
      std::fprintf(stderr, "dsrun bench: --profile %s: %s\n", f.bench_profile.c_str(),
                   s.message().c_str());
      return kExitUsage;
    }
  }
  Result<std::string> dir = env->MakeTempDir("dsrun-bench-");
  if (!dir.ok()) {
    std::fprintf(stderr, "dsrun bench: %s\n", dir.status().message().c_str());
    return kExitTrainingFailed;
  }
  Json rows = Json::array();
  int rc = 0;
  // Units of work per launch: every step, and each of the two saves with the step after it.
  const int64_t per_case = f.bench_warmup + f.bench_steps + 2;
  io::Progress bar("dsrun bench", static_cast<uint64_t>(per_case) * cases->size(),
                   /*bytes=*/false);
  for (const BenchCase& bc : *cases) {
    DsrunFlags child = f;
    std::string file = "case-" + bc.Label() + ".json";
    std::replace(file.begin(), file.end(), '/', '-');
    const std::string out = io::JoinPath(*dir, file);
    child.set.push_back("zero_optimization.stage=" + std::to_string(bc.stage));
    child.set.push_back("tensor_parallel.autotp_size=" + std::to_string(bc.tp));
    child.set.push_back("pipeline.stages=" + std::to_string(bc.pp));
    const std::string nvme_path = f.bench_nvme_path.empty() ? *dir : f.bench_nvme_path;
    if (bc.offload == "nvme" || bc.offload == "nvme-all") {
      child.set.push_back("zero_optimization.offload_optimizer.device=nvme");
      child.set.push_back("zero_optimization.offload_optimizer.nvme_path=" + nvme_path);
      if (bc.offload == "nvme-all") {
        child.set.push_back("zero_optimization.offload_param.device=nvme");
        child.set.push_back("zero_optimization.offload_param.nvme_path=" + nvme_path);
      } else if (bc.stage == 3) {
        child.set.push_back("zero_optimization.offload_param.device=cpu");
      }
    } else if (bc.offload != "none") {
      child.set.push_back("zero_optimization.offload_optimizer.device=cpu");
    }
    if (bc.offload == "all") child.set.push_back("zero_optimization.offload_param.device=cpu");
    child.set.push_back("steps_per_print=1000000000");  // the table is the output
    child.max_steps = f.bench_warmup + f.bench_steps;
    std::vector<std::string> args = RankArgs(child);
    args.insert(args.end(),
                {"--bench-out", out, "--bench-warmup-steps", std::to_string(f.bench_warmup),
                 "--bench-timed-steps", std::to_string(f.bench_steps)});
    if (!f.bench_profile.empty()) {  // "profile-<row>", the row's name as in `file`
      args.insert(args.end(),
                  {"--bench-profile",
                   io::JoinPath(f.bench_profile, "profile-" + file.substr(5, file.size() - 10))});
    }
    Result<launch::LaunchOptions> lo = LaunchOptionsFor(child, args);
    Result<launch::LaunchResult> r =
        lo.ok()
            ? LaunchWithProgress(env, *lo, out + ".progress", static_cast<uint64_t>(per_case), &bar)
            : Result<launch::LaunchResult>(lo.status());
    Result<std::string> text = r.ok() && r->exit_code == 0
                                   ? env->ReadFileToString(out)
                                   : Result<std::string>(Status::IOError("no result"));
    if (!text.ok()) {
      std::fprintf(stderr, "dsrun bench: stage %s failed (%s)\n", bc.Label().c_str(),
                   !r.ok()             ? r.status().message().c_str()
                   : r->exit_code != 0 ? r->first_failure.c_str()
                                       : text.status().message().c_str());
      rc = kExitTrainingFailed;
      continue;
    }
    Json row = Json::parse(*text);
    AddRankMemory(env, out, f.nproc_per_node * f.nnodes, &row);
    row["case"] = bc.Label();
    row["offload"] = bc.offload;
    rows.push_back(std::move(row));
  }
  bar.Finish();
  (void)env->RemoveAll(*dir);
  const std::string disk = DiskBound(env, f, tools, rows);
  PrintBenchTable(f, rows);
  if (!disk.empty()) std::printf("%s", disk.c_str());
  Json all = {{"bench", "dsrun_zero_stages"},       {"config", f.config},
              {"nproc_per_node", f.nproc_per_node}, {"nnodes", f.nnodes},
              {"timed_steps", f.bench_steps},       {"rows", rows}};
  if (f.json) std::printf("%s\n", all.dump().c_str());
  if (!f.bench_dir.empty()) {
    Status s = WriteBenchFiles(env, f.bench_dir, all);
    if (!s.ok()) {
      std::fprintf(stderr, "dsrun bench: %s\n", s.message().c_str());
      return kExitTrainingFailed;
    }
    std::printf("wrote %s/bench.json, bench.csv and bench.svg (open it in a browser)\n",
                f.bench_dir.c_str());
  }
  return rc;
}

int RunAdamBenchCommand(const bench::AdamBenchOptions& options, bool json) {
  Result<bench::AdamBenchReport> r = bench::RunAdamBench(options);
  if (!r.ok()) {
    std::fprintf(stderr, "%s\n", r.status().message().c_str());
    return r.status().code() == StatusCode::kInvalidArgument ? kExitUsage : kExitTrainingFailed;
  }
  std::fputs(bench::AdamBenchTable(*r).c_str(), stdout);
  if (json) std::printf("%s\n", bench::AdamBenchJson(*r).c_str());
  return 0;
}

}  // namespace ds::engine
