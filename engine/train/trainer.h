// The training loop of one rank: next batch, forward, backward, reduce, optimizer step, and
// (later issues) maybe a checkpoint. Parameters live in the model in the training precision
// (fp32, bf16 or fp16); the ZeRO optimizer (engine/zero) keeps the fp32 master weights, Adam's
// moments and the gradients, partitioned over the ranks as zero_optimization.stage says.
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
  // Where the default corpus is cached when data.path is "builtin" ("": <output_dir>/data).
  std::string corpus_cache_dir;
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

  int64_t step() const;
  const std::vector<ParamSlot>& slots() const;
  // The optimizer's fp32 copy of all the weights (numel, on the CPU), gathered from every rank:
  // a collective when world_size > 1.
  Result<at::Tensor> GatherMaster();
  std::string device_name() const;
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
