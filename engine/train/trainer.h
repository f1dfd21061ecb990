// The training loop of one rank: next batch, forward, backward, reduce, optimizer step, and
// maybe a checkpoint (engine/train/checkpoint.cc). Parameters live in the model in the training
// precision (fp32, bf16 or fp16); the ZeRO optimizer (engine/zero) keeps the fp32 master weights,
// Adam's moments and the gradients, partitioned over the ranks as zero_optimization.stage says.
// Losses stay on the device and are read once per steps_per_print, so a GPU step has no host
// synchronisation except fp16's overflow check (and gradient clipping's norm).
// Thread safety: one thread drives a Trainer.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ckpt/writer.h"
#include "engine/comm/comm.h"
#include "engine/config/config.h"
#include "engine/monitor/monitor.h"
#include "engine/zero/zero.h"
#include "io/env.h"

namespace ds::engine {

struct TrainerOptions {
  std::string device;  // "cpu", "cuda", "cuda:N"; "": cuda when a GPU is visible, else cpu
  int rank = 0;
  int world_size = 1;
  // Where rank 0 hosts the rendezvous store (world_size > 1).
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string backend;  // "nccl", "gloo"; "": nccl on a GPU, gloo on the CPU
  // Polled between steps (every rank; the ranks agree through a collective): true saves a
  // checkpoint and ends Run with TrainSummary::preempted. dsrun sets it from SIGTERM / SIGUSR1.
  std::function<bool()> stop_requested;
  // Where the default corpus is cached when data.path is "builtin" ("": <output_dir>/data).
  std::string corpus_cache_dir;
  // Resume() follows Create(): the initial weights are drawn only if it finds no checkpoint (a
  // model with deferred values, such as the built-in GPT), never to be overwritten at once.
  bool will_resume = false;
  // Ranks sharing this host's memory (the local world size): for the advice an out-of-memory
  // error comes with.
  int ranks_per_host = 1;
};

struct TrainSummary {
  int64_t steps = 0;          // optimizer steps done (skipped overflow steps included)
  int64_t skipped_steps = 0;  // fp16/bf16 overflow
  double first_loss = 0;      // the first step's training loss
  double last_loss = 0;       // mean of the last steps_per_print steps' losses
  std::optional<double> last_eval_loss;
  double seconds = 0;
  double tokens_per_s = 0;
  std::string device;
  bool preempted = false;       // stop_requested ended the run early (after saving)
  std::string last_checkpoint;  // the newest checkpoint this run committed
  int64_t saves = 0;            // checkpoints committed by this run
  int64_t failed_saves = 0;     // saves that failed (training went on)
};

// What `dsrun --resume` restores. DeepSpeed's load_checkpoint options: load_optimizer_states,
// load_lr_scheduler_states, load_module_only.
struct ResumeOptions {
  std::string from;            // "latest", "best", a tag of the save_dir, or a checkpoint directory
  bool load_optimizer = true;  // Adam's moments and step count
  bool load_scheduler = true;  // the step count the schedule (and data order) continue from
  bool module_only = false;    // the weights only: a fresh run that starts from them
  bool fallback = false;       // a damaged checkpoint: go back to the newest older one that loads
  bool if_any = false;         // no checkpoint yet: start fresh (dsrun's restarts)
};

// One named parameter's place in the flat buffers.
struct ParamSlot {
  std::string name;    // "h0.attn_c_attn.weight"
  at::Tensor param;    // the model's tensor (training precision, on the device)
  int64_t offset = 0;  // elements into the flat buffers
  int64_t numel = 0;
};

class Trainer {
 public:
  static Result<std::unique_ptr<Trainer>> Create(io::Env* env, const Config& config,
                                                 const TrainerOptions& options);
  ~Trainer();

  // Trains to trainer.max_steps (from the current step), evaluating every eval_interval and
  // at the end.
  Result<TrainSummary> Run();

  // One optimizer step (gradient_accumulation_steps micro batches). Exposed for tests.
  Status Step();
  // Mean loss over the eval split's batches (at most eval_iters); nullopt without an eval split.
  Result<std::optional<double>> Evaluate();

  // Restores the state of a checkpoint, saved at any world size and ZeRO stage (each rank reads
  // the slices it now holds). Call before Run. Returns a line saying what was loaded.
  Result<std::string> Resume(const ResumeOptions& options);
  // Snapshots the state now and commits it in the background (checkpoint.when_busy decides
  // whether it waits for a previous save). `reason` is logged ("interval", "final", ...).
  Status SaveCheckpoint(const std::string& reason);
  // Waits for saves in flight; their errors are reported, not returned.
  void WaitForSaves();
  // The last save that finished: its stall (snapshot) and time until durable; nullopt if none
  // succeeded yet.
  std::optional<ckpt::SaveStats> last_save() const;

  int64_t step() const;
  const std::vector<ParamSlot>& slots() const;
  // The optimizer's fp32 copy of all the weights (numel, on the CPU), gathered from every rank:
  // a collective when world_size > 1. With tensor or pipeline parallelism: this rank's part of
  // the model (gathered over its data-parallel group); checkpoints hold the whole tensors.
  Result<at::Tensor> GatherMaster();
  std::string device_name() const;
  // Model FLOPs utilisation of the whole job at `tokens_per_s` (all ranks together) against the
  // device's dense peak; nullopt where the peak is unknown (the CPU, an unlisted GPU).
  std::optional<double> mfu(double tokens_per_s) const;
  // Bytes and seconds in collectives since the trainer started (empty with one rank).
  std::map<std::string, CollectiveStats> comm_stats() const;
  // What this rank holds for parameters, gradients and optimizer state now.
  ModelStateBytes model_state() const;
  // The device's allocator counters (GPU) and the model state, as the progress line shows them.
  MemoryStats memory() const;

  struct Impl;

 private:
  explicit Trainer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ds::engine
