// Training metrics out of the engine: a progress line every steps_per_print steps, metrics.jsonl
// (one JSON object per step and per evaluation), TensorBoard events and DeepSpeed's csv_monitor
// files; plus the probes that feed them: a step-section timer, process memory, tokens/s and MFU.
// No LibTorch: GPU numbers are passed in. docs/monitoring.md lists every output.
// Thread safety: a Monitor and a StepTimer belong to the training thread; the helpers are pure.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "engine/config/config.h"
#include "io/env.h"
#include "io/status.h"

namespace ds::engine {

// ---- what one step and one evaluation report

// Memory at the end of a step, in bytes. GPU numbers come from the caller (torch.cuda's
// memory_allocated / memory_reserved / max_memory_allocated); all absent on a CPU run.
struct MemoryStats {
  std::optional<uint64_t> rss_bytes;       // process resident set (VmRSS)
  std::optional<uint64_t> peak_rss_bytes;  // process high-water mark (VmHWM)
  std::optional<uint64_t> gpu_allocated_bytes;
  std::optional<uint64_t> gpu_reserved_bytes;
  std::optional<uint64_t> gpu_peak_bytes;
  // This rank's parameters, gradients and optimizer state as ZeRO holds them (device and host).
  std::optional<uint64_t> model_state_bytes;
};

// One optimizer step. Optional fields are left out of every output when absent. A new metric
// is either a field here (and one line in StepRecord, monitor.cc) or an entry of `extras`.
struct StepMetrics {
  int64_t step = 0;                // optimizer steps done, this one included (the first is 1)
  std::optional<int64_t> samples;  // global samples through this step: TensorBoard/CSV x-axis
  double loss = 0;                 // mean training loss of the step
  double lr = 0;
  std::optional<double> loss_scale;  // fp16 only
  int64_t tokens = 0;                // tokens trained on in this step, all ranks
  double step_time_s = 0;            // wall clock of the whole step
  // wall_clock_breakdown: seconds in each phase, summed over the step's micro batches.
  std::optional<double> forward_s;
  std::optional<double> backward_s;
  std::optional<double> optimizer_s;
  std::optional<double> mfu;  // model FLOPs utilisation, a fraction (0.381 = 38.1%)
  std::optional<double> grad_norm;
  bool skipped = false;  // fp16 overflow: the optimizer step was skipped
  MemoryStats memory;
  // Further metrics by name ([A-Za-z0-9_]+, not a built-in key): a JSONL key, the TensorBoard
  // tag Train/Samples/<name>, the CSV file Train_Samples_<name>.csv, and `name value` at the
  // end of the progress line.
  std::map<std::string, double> extras;
};

struct EvalMetrics {
  int64_t step = 0;                // the optimizer step evaluated after
  std::optional<int64_t> samples;  // as StepMetrics::samples
  double eval_loss = 0;
  int64_t eval_tokens = 0;  // tokens evaluated, all ranks
  std::map<std::string, double> extras;
};

// ---- the monitor

struct MonitorOptions {
  MonitorConfig config;
  std::string output_dir = "out";  // trainer.output_dir: metrics.jsonl, and tensorboard /
                                   // csv_monitor output when their output_path is ""
  int rank = 0;
  // Only rank 0 writes and prints (as DeepSpeed). With all_ranks, every rank R > 0 also writes
  // <output_dir>/metrics-rank-<RRRRR>.jsonl and prints; TensorBoard and CSV stay on rank 0.
  bool all_ranks = false;
  int64_t max_steps = 0;  // shown as "step 120/1000"; 0: unknown
  // The step this run continues from: 0 starts metrics.jsonl afresh; on resume, the lines of
  // later steps (which this run writes again) and a line torn by a crash are cut off.
  int64_t resume_step = 0;
  // Fill memory.rss_bytes / peak_rss_bytes from /proc (through the Env) when the caller leaves
  // them empty; silently absent where there is no /proc.
  bool read_process_memory = true;
};

class Monitor {
 public:
  static Result<std::unique_ptr<Monitor>> Open(io::Env* env, MonitorOptions options);
  ~Monitor();  // Close(); an error is logged
  Monitor(const Monitor&) = delete;
  Monitor& operator=(const Monitor&) = delete;

  // Appends the step to every output; prints the progress line when step is a multiple of
  // steps_per_print (or max_steps). An error names the file; the monitor stays usable, and
  // the next line overwrites anything a failed write left behind.
  Status RecordStep(const StepMetrics& m);
  Status RecordEval(const EvalMetrics& m);
  // Makes every metrics.jsonl line written so far durable (fsync). Lines are written as they
  // are recorded, so a process crash loses at most the line in progress; a power cut loses the
  // lines after the last Sync. The trainer calls this before committing a checkpoint.
  Status Sync();
  Status Close();  // flushes TensorBoard, syncs metrics.jsonl, closes every file

  bool writes() const { return writes_; }  // this rank writes files and prints
  const std::string& metrics_path() const { return metrics_path_; }  // "" where !writes()

 private:
  struct Outputs;
  Monitor(io::Env* env, MonitorOptions options);

  io::Env* env_;
  MonitorOptions options_;
  bool writes_ = false;
  std::string metrics_path_;
  std::unique_ptr<Outputs> out_;
  bool memory_readable_ = true;
};

// ---- step-section timing (wall_clock_breakdown)

// Named sections (forward, backward, optimizer, or any other) that accumulate seconds between
// steps, on the Env's monotonic clock. Times what the host sees: a caller timing GPU work
// synchronises the device before Stop, as DeepSpeed's timers do.
class StepTimer {
 public:
  explicit StepTimer(io::Env* env) : env_(env) {}

  void Start(std::string_view section);  // restarts a section that is already running
  void Stop(std::string_view section);   // adds the time since Start; no-op if not running
  // RAII: { auto t = timer.Time("forward"); ... }
  class Scope {
   public:
    Scope(StepTimer* timer, std::string_view section) : timer_(timer), section_(section) {
      timer_->Start(section_);
    }
    ~Scope() { timer_->Stop(section_); }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    StepTimer* timer_;
    std::string section_;
  };
  [[nodiscard]] Scope Time(std::string_view section) { return Scope(this, section); }

  double Seconds(std::string_view section) const;  // finished intervals since the last take
  // Moves "forward", "backward" and "optimizer" into their StepMetrics fields and every other
  // section into extras as "<name>_s"; then clears all sections (running ones restart now).
  void TakeInto(StepMetrics* m);

 private:
  struct Section {
    double seconds = 0;
    std::optional<uint64_t> started_micros;
  };
  io::Env* env_;
  std::map<std::string, Section, std::less<>> sections_;
};

// ---- memory, throughput, MFU

struct ProcessMemory {
  uint64_t rss_bytes = 0;       // VmRSS
  uint64_t peak_rss_bytes = 0;  // VmHWM
};
// Reads /proc/self/status through `env`. NotFound where there is no /proc (not Linux, or an
// in-memory Env); Corruption when the fields are missing.
Result<ProcessMemory> ReadProcessMemory(io::Env* env);
Result<uint64_t> ProcessRssBytes(io::Env* env);
// The VmRSS / VmHWM fields of a /proc/<pid>/status text, in bytes.
Result<ProcessMemory> ParseProcStatus(std::string_view text);

double TokensPerSecond(int64_t tokens, double seconds);  // 0 when seconds <= 0

// Dense bf16/fp16 tensor-core peak of one device, FLOP/s, by the name CUDA reports
// ("NVIDIA H100 80GB HBM3"); nullopt for an unknown device or the CPU.
std::optional<double> PeakFlopsPerDevice(std::string_view device_name);
// FLOPs to train on one token of a decoder-only transformer (forward + backward): 6 * params
// + 12 * n_layer * d_model * seq_len (PaLM, appendix B; nanoGPT's estimate_mfu).
double TransformerFlopsPerToken(int64_t params, int64_t n_layer, int64_t d_model, int64_t seq_len);
// flops_per_token * tokens_per_s / (peak of the device * num_devices), where tokens_per_s
// counts all `num_devices`; nullopt where the peak is unknown.
std::optional<double> ModelFlopsUtilization(double flops_per_token, double tokens_per_s,
                                            std::string_view device_name, int num_devices);

}  // namespace ds::engine
