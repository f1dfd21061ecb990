// The state behind Trainer, shared by trainer.cc (set-up, the step, evaluation) and
// checkpoint.cc (saving and resuming). Not part of the public API.
// Thread safety: the training thread only.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ckpt/writer.h"
#include "engine/comm/comm.h"
#include "engine/core/loss_scaler.h"
#include "engine/core/lr_schedule.h"
#include "engine/data/dataset.h"
#include "engine/data/sampler.h"
#include "engine/model/model.h"
#include "engine/monitor/monitor.h"
#include "engine/train/trainer.h"
#include "engine/zero/zero.h"

namespace ds::engine {

struct Trainer::Impl {
  io::Env* env = nullptr;
  Config config;
  TrainerOptions options;
  torch::Device device{torch::kCPU};
  torch::Dtype dtype = torch::kFloat32;

  std::shared_ptr<LanguageModel> model;
  std::vector<ParamSlot> slots;
  std::unique_ptr<Comm> comm;  // with world_size > 1
  std::unique_ptr<ZeroOptimizer> zero;

  Dataset data;
  std::optional<Sampler> sampler;
  std::optional<EvalBatches> eval;
  Batch batch;

  std::unique_ptr<LrSchedule> schedule;
  std::unique_ptr<LossScaler> scaler;
  std::unique_ptr<Monitor> monitor;
  std::unique_ptr<StepTimer> timer;

  int64_t step = 0;  // optimizer steps done
  int64_t skipped = 0;
  // Steps whose loss is still on the device: read together every steps_per_print steps.
  std::vector<StepMetrics> pending;
  std::vector<torch::Tensor> pending_loss;
  std::optional<double> first_loss;
  double recent_loss = 0;
  double flops_per_token = 0;
  // On a GPU a step returns before its kernels finish, so step times are measured over the
  // steps between two flushes (each flush waits for the losses) and shared out evenly.
  uint64_t window_start_us = 0;
  std::string device_name;  // "cpu", or what CUDA calls the GPU ("NVIDIA H100 80GB HBM3")

  Status Setup();
  Status SetupZero();
  Status EnsureMonitor();
  Status Step();
  bool failed = false;  // a step failed: its peers may be gone, and pending steps are moot
  // Reads pending losses (averaged over the ranks when `across_ranks`: a collective), records
  // their steps.
  Status Flush(bool across_ranks = true);
  MemoryStats Memory() const;
  // Whether to save now (interval or minutes) and whether to stop (stop_requested): every rank
  // gets the same answer (one small all-reduce when a rank could disagree).
  Result<std::pair<bool, bool>> SaveOrStopNow();

  // ---- checkpoints (checkpoint.cc)
  std::string save_dir;         // config's, or <output_dir>/checkpoints
  int64_t schedule_origin = 0;  // the LR schedule runs at step - schedule_origin
  std::optional<double> last_eval;  // at last_eval_step
  int64_t last_eval_step = -1;
  std::unique_ptr<ckpt::KeyValueStore> ckpt_store;  // several ranks: over the rendezvous store
  std::unique_ptr<ckpt::CheckpointWriter> writer;   // made at the first save
  std::shared_ptr<ckpt::SaveHandle> in_flight;
  int64_t in_flight_step = 0;
  int64_t last_saved_step = -1;
  uint64_t last_save_us = 0;
  double last_stall_s = -1;  // the last snapshot's stall, for the next step's metrics
  int64_t saves = 0, failed_saves = 0;
  std::string last_checkpoint;
  std::optional<ckpt::SaveStats> last_save_stats;
  // On a GPU a snapshot's device-to-host copies run on a side stream and overlap the next
  // forward and backward; the next optimizer step waits for them (checkpoint.cc).
  struct SnapshotCopies;
  std::shared_ptr<SnapshotCopies> snapshot_copies;

  Status SetupCheckpoints();
  Status CreateWriter();
  uint64_t AutoStagingBytes(uint64_t chunk_bytes) const;  // checkpoint.staging_bytes "auto"
  std::string StateJson() const;
  // Snapshots now, commits in the background; a failure to save is logged, not returned.
  Status Save(const std::string& reason);
  void ReapSave(bool wait);       // reports a finished save (waits for it when `wait`)
  // Makes the device's next work wait until the last snapshot's copies are done: call before
  // anything writes the master weights or Adam's moments.
  void WaitForSnapshotCopies();
  std::vector<at::Tensor> SnapshotSources();  // what a snapshot reads (checkpoint.cc)
  std::string FreeSpace() const;  // "; 1.2 GiB free on <save_dir>", for messages
  Result<std::string> Load(const std::string& path, const ResumeOptions& r);
};

}  // namespace ds::engine
