// Where a tensor leaves for disk: the trainer's checkpoints through the checkpoint library
// (ckpt/writer.h, reader.h). The agent owns the writer, the save in flight, the snapshot's
// device-to-host copies, the busy and failure policies (checkpoint.when_busy,
// checkpoint.max_failed_saves), and resuming; what it saves and loads of the optimizer state is
// one StatePlan (engine/train/state_plan.h), and the trainer's own counters travel as a
// TrainerState (engine/train/state_blob.h).
//
// A checkpoint holds, per parameter <p>, master/<p>, optim/exp_avg/<p>, optim/exp_avg_sq/<p>
// (fp32, the whole tensor's shape, each element written by exactly one rank); the blobs
// trainer/state (rank 0), tp/splits (rank 0) and rng/rank-<r> (LibTorch's CPU generator, each
// rank); and in the manifest the resolved config and {"loss", "eval_loss"} for `best`. The
// weights in the training precision are not stored: they are the master rounded. Resuming reads
// the slices this rank holds in its *current* layout, whatever layout wrote them.
// Thread safety: the training thread only (the writer's own threads are the library's).
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "ckpt/tp_layout.h"
#include "ckpt/writer.h"
#include "engine/config/config.h"
#include "engine/data/sampler.h"
#include "engine/train/state_blob.h"
#include "engine/train/state_plan.h"
#include "engine/train/trainer.h"
#include "io/env.h"

namespace ds::engine {

class Comm;
class ZeroOptimizer;

struct CheckpointAgentOptions {
  io::Env* env = nullptr;
  const Config* config = nullptr;  // outlives the agent
  int rank = 0, world_size = 1;
  int tp = 1, pp = 1;             // the job's tensor- and pipeline-parallel degrees
  Comm* comm = nullptr;           // the world's (null with one rank): the ranks agree through it
  c10::Device device{c10::kCPU};  // where training runs
  ZeroOptimizer* zero = nullptr;  // owns the state saved and loaded; outlives the agent
  StatePlan plan;
  ckpt::TpSplits tp_splits;  // every split tensor of the whole model (rank 0 writes them)
};

// The trainer at a step, as a save records it.
struct SavePoint {
  int64_t step = 0;
  TrainerState state;
  double loss = 0;                   // the recent training loss
  std::optional<double> eval_loss;  // only one evaluated at this very step
};

// What a resume restored. ZeRO's buffers, Adam's step count and the RNG are restored already;
// the trainer applies `state` to its counters, schedule, loss scaler and `sampler`.
struct Restored {
  std::optional<TrainerState> state;  // absent: the weights only (module_only)
  SamplerState sampler;
  std::string path;
  std::string line;  // what was loaded, for the log
};

class CheckpointAgent {
 public:
  explicit CheckpointAgent(CheckpointAgentOptions options);
  ~CheckpointAgent();  // waits for a save in flight

  // Reclaims the saves that killed runs left half written (rank 0, before any save starts).
  void ReclaimAbandonedSaves();

  const std::string& save_dir() const;
  // checkpoint.save_interval_steps or _minutes says to save after `step` (this rank's clock).
  bool Due(int64_t step) const;
  int64_t last_saved_step() const;

  // Snapshots the state now and commits it in the background. A save that fails is logged and
  // counted, not returned; an error only when the ranks cannot agree or too many failed.
  Status Save(const SavePoint& point, const std::string& reason);
  // Reports a finished save (waits for it when `wait`).
  void Reap(bool wait);
  // An error once checkpoint.max_failed_saves saves failed in a row (or, `final`, when the last
  // save failed), naming what is lost after the newest committed checkpoint. `step`: now.
  Status CheckFailing(int64_t step, bool final) const;
  // Makes the device's next work wait until the last snapshot's copies are done: call before
  // anything writes the master weights or Adam's moments.
  void WaitForSnapshotCopies();

  // Resolves r.from ("latest", "best", a tag, a path), loads it (or with r.fallback the newest
  // older one that loads). `step`: the trainer's now (what a weights-only resume keeps).
  Result<Restored> Resume(const ResumeOptions& r, int64_t step);

  int64_t saves() const;
  int64_t failed_saves() const;
  const std::string& last_checkpoint() const;  // the newest this run committed
  std::optional<ckpt::SaveStats> last_save_stats() const;
  // The last snapshot's stall in seconds, once (the next step's metrics report it); -1: none.
  double TakeStall();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ds::engine
