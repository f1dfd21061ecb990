// The steps whose results are still on the device. A GPU step returns before its kernels finish;
// its loss (and, unless the host already read them, its gradient norm and overflow flag) stay
// there until the window is flushed, every monitor.steps_per_print steps, with one copy for all.
// Step times are measured over the steps between two flushes (each flush waits for the losses)
// and shared out evenly.
// Thread safety: the training thread only.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "engine/monitor/monitor.h"
#include "io/env.h"

namespace ds::engine {

class Comm;

struct MetricsWindowOptions {
  io::Env* env = nullptr;
  bool on_gpu = false;          // step times come from the window (else: each step's own)
  double flops_per_token = 0;   // for MFU
  std::string device_name;      // "cpu", or CUDA's name of the GPU
  int world_size = 1;           // devices, for MFU
  int loss_ranks = 1;           // ranks whose losses are the job's (the last pipeline stage's)
  bool norm_known = false;      // gradient norms are computed (clipping or overflow checks)
};

class MetricsWindow {
 public:
  explicit MetricsWindow(MetricsWindowOptions o) : o_(std::move(o)) {}

  // A step done: its metrics, its mean loss (a device scalar), and {grad norm, overflow} still
  // on the device (undefined when the host read them at the step).
  void Add(StepMetrics m, at::Tensor loss, at::Tensor unread);
  bool empty() const { return pending_.empty(); }

  // Reads the window's values and records its steps in `monitor`. `on_read(step, overflow)` is
  // told each step whose overflow is read here. `across`: average the losses over its ranks (a
  // collective); null: this rank's own. Without `record_losses` (a pipeline stage that computes
  // none, with no collective to learn them) the steps are read and dropped.
  Status Flush(Monitor& monitor, Comm* across, bool record_losses, const MemoryStats& memory,
               const std::function<Status(int64_t step, bool overflow)>& on_read);

  // Starts the window's clock again (after an evaluation: its time is not a training step's).
  void RestartClock() { window_start_us_ = o_.env->NowMicros(); }
  std::optional<double> first_loss() const { return first_loss_; }
  void ForgetFirstLoss() { first_loss_.reset(); }
  double recent_loss() const { return recent_loss_; }  // mean over the last flush's steps

 private:
  Status ReadDeferred(const std::function<Status(int64_t, bool)>& on_read);

  MetricsWindowOptions o_;
  std::vector<StepMetrics> pending_;
  std::vector<at::Tensor> losses_;
  std::vector<at::Tensor> unread_;
  std::optional<double> first_loss_;
  double recent_loss_ = 0;
  uint64_t window_start_us_ = 0;
};

}  // namespace ds::engine
