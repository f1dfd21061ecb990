// The state behind Trainer, shared by trainer.cc (set-up, the step, evaluation) and
// checkpoint.cc (saving and resuming). Not part of the public API.
// Thread safety: the training thread only.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ckpt/tp_layout.h"
#include "ckpt/writer.h"
#include "engine/comm/comm.h"
#include "engine/core/loss_scaler.h"
#include "engine/core/lr_schedule.h"
#include "engine/data/dataset.h"
#include "engine/data/sampler.h"
#include "engine/model/gpt.h"
#include "engine/model/model.h"
#include "engine/monitor/monitor.h"
#include "engine/train/trainer.h"
#include "engine/zero/zero.h"

namespace ds::engine {

// Where one of the model's parameters (ZeRO's order) sits in the whole model.
struct TensorPlace {
  std::string name;            // the parameter's name
  std::vector<int64_t> shape;  // the whole tensor's shape
  ckpt::TpSplit split;         // how tensor parallelism cuts it
  // This rank counts and saves its elements: false for the copies other ranks count (whole
  // tensors on tensor-parallel ranks > 0, the last pipeline stage's tied embedding).
  bool owned = true;
};

// This rank's place in a tensor- and pipeline-parallel job (parallel.cc). The world is
// dp x pp x tp ranks: rank = (stage * dp + dp_rank) * tp + tp_rank.
struct ParallelState {
  int tp = 1, pp = 1, dp = 1;
  int tp_rank = 0, stage = 0, dp_rank = 0;
  // Groups, made only when the job splits the model: the tensor-parallel ranks of this stage and
  // replica; the data-parallel ranks holding the same part; the parts of this replica (tp x pp
  // ranks); the stages of this tensor-parallel rank (pipe, by stage); the first and last stage
  // (their tied embedding).
  std::unique_ptr<Comm> tp_comm, dp_comm, model_comm, pipe_comm, tied_comm;
  std::shared_ptr<GptImpl> gpt;  // the model, when split
  bool split() const { return tp * pp > 1; }
  bool first_stage() const { return stage == 0; }
  bool last_stage() const { return stage == pp - 1; }
};

struct Trainer::Impl {
  io::Env* env = nullptr;
  Config config;
  TrainerOptions options;
  torch::Device device{torch::kCPU};
  torch::Dtype dtype = torch::kFloat32;

  std::shared_ptr<LanguageModel> model;
  std::vector<ParamSlot> slots;
  std::unique_ptr<Comm> comm;  // with world_size > 1
  ParallelState par;
  std::vector<TensorPlace> places;  // per parameter, in ZeRO's order
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
  // Per pending step: {grad norm, overflow} still on the device (undefined: already read).
  std::vector<torch::Tensor> pending_unread;
  std::optional<double> first_loss;
  double recent_loss = 0;
  double flops_per_token = 0;
  // On a GPU a step returns before its kernels finish, so step times are measured over the
  // steps between two flushes (each flush waits for the losses) and shared out evenly.
  uint64_t window_start_us = 0;
  std::string device_name;  // "cpu", or what CUDA calls the GPU ("NVIDIA H100 80GB HBM3")

  Status Setup();
  Status Connect();  // the world's communicator
  Status SetupZero();
  // ---- tensor and pipeline parallelism (parallel.cc)
  // Places this rank, makes the groups and this rank's part of the GPT.
  Status SetupParallel();
  void FindPlaces();       // `places`, after ZeRO took the model
  Comm* DataComm() const;  // the data-parallel group (the world when the model is whole)
  // Ranks whose losses are the job's: the last stage's (all of them without pipelining).
  int LossRanks() const { return options.world_size / par.pp; }
  // One optimizer step's micro batches through this stage in 1F1B order (forward of micro
  // batch i + warm-up, then backward of micro batch i), adding the last stage's losses into
  // `loss_sum`; `scale` multiplies the loss before backward.
  Status PipelineMicroSteps(double scale, torch::Tensor& loss_sum);
  // The sum of `batches`' losses on the last stage (0 elsewhere), forward only.
  Result<torch::Tensor> PipelineEval(int64_t batches);
  // The micro batch `b` on the device: inputs and targets.
  std::pair<torch::Tensor, torch::Tensor> OnDevice(Batch& b) const;
  // The same into tensors of its shape on the GPU (the ones CUDA graphs read), without waiting.
  void CopyBatchTo(Batch& b, torch::Tensor& x, torch::Tensor& y) const;
  Status EnsureMonitor();
  Status Step();
  // One micro batch's forward and backward into ZeRO's gradient; its loss added to `loss_sum`.
  Status MicroStep(const torch::Tensor& x, const torch::Tensor& y, double scale, bool last_of_step,
                   torch::Tensor& loss_sum);
  // ---- CUDA graphs (step_graphs.cc): the step captured once and replayed
  struct StepGraphs;
  std::shared_ptr<StepGraphs> graphs;     // null: every step runs eagerly
  std::string GraphsUnsupported() const;  // why this job's step cannot be captured, or ""
  Status SetupGraphs();                   // per trainer.cuda_graphs
  bool ReplaysGraphs();                   // this step replays (after a few eager steps)
  // The step's micro batches and optimizer step through the graphs (capturing each at its first
  // use); its result and the sum of its losses on the device.
  Status GraphStep(double scale, double lr, ZeroStepResult* result, torch::Tensor* loss_sum);
  // After a failed capture: "auto" trains on eagerly, "true" returns the error.
  Status GraphFailed(const Status& why);
  bool failed = false;  // a step failed: its peers may be gone, and pending steps are moot
  // Reads pending losses (averaged over the ranks when `across_ranks`: a collective), records
  // their steps.
  Status Flush(bool across_ranks = true);
  Status ReadDeferredSteps();  // fills the pending steps' norms and overflows (Flush)
  // Counts a skipped step and tells the loss scaler (fp16: at once; else when read).
  Status RecordOverflow(int64_t at_step, bool overflow);
  bool ChecksOverflow() const;  // fp16, or bf16 with check_grad_overflow: overflows skip steps
  MemoryStats Memory() const;
  // Whether to save now (interval or minutes) and whether to stop (stop_requested): every rank
  // gets the same answer (one small all-reduce when a rank could disagree).
  Result<std::pair<bool, bool>> SaveOrStopNow();

  // ---- checkpoints (checkpoint.cc)
  std::string save_dir;             // config's, or <output_dir>/checkpoints
  int64_t schedule_origin = 0;      // the LR schedule runs at step - schedule_origin
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
  int64_t failed_in_a_row = 0;  // checkpoint.max_failed_saves stops training after so many
  std::string last_save_error;  // the newest failure's message
  std::string last_checkpoint;  // the newest checkpoint this run committed
  // The newest checkpoint this run's state is in: the one it resumed from, then each it
  // committed (-1 and empty: none yet). What a failure loses is the steps after it.
  int64_t committed_step = -1;
  std::string committed_path;
  // The step this run resumed from, -1 when it started fresh: retention never deletes a
  // checkpoint of a later step that was there before this run (ckpt::RetentionPolicy).
  int64_t started_after_step = -1;
  std::optional<ckpt::SaveStats> last_save_stats;
  // On a GPU a snapshot's device-to-host copies run on a side stream and overlap the next
  // forward and backward; the next optimizer step waits for them (checkpoint.cc).
  struct SnapshotCopies;
  std::shared_ptr<SnapshotCopies> snapshot_copies;

  Status SetupCheckpoints();
  Status CreateWriter();
  uint64_t AutoStagingBytes(uint64_t chunk_bytes) const;  // checkpoint.staging_bytes "auto"
  std::string StateJson() const;
  std::string TpSplitsJson() const;
  // Snapshots now, commits in the background; a failure to save is logged, not returned.
  Status Save(const std::string& reason);
  void ReapSave(bool wait);  // reports a finished save (waits for it when `wait`)
  void NoteFailedSave(int64_t at_step, const Status& s);
  // An error once checkpoint.max_failed_saves saves failed in a row (or, `final`, when the
  // last save failed), naming what is lost since the newest committed checkpoint.
  Status CheckSavesFailing(bool final) const;
  // Makes the device's next work wait until the last snapshot's copies are done: call before
  // anything writes the master weights or Adam's moments.
  void WaitForSnapshotCopies();
  std::vector<at::Tensor> SnapshotSources();  // what a snapshot reads (checkpoint.cc)
  std::string FreeSpace() const;              // "; 1.2 GiB free on <save_dir>", for messages
  Result<std::string> Load(const std::string& path, const ResumeOptions& r);
};

}  // namespace ds::engine
