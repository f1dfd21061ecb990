// The training loop of one rank: next batch, forward, backward, reduce, optimizer step, and
// (later issues) maybe a checkpoint. Parameters live in the model in the training precision
// (fp32, bf16 or fp16); the optimizer keeps one flat fp32 master buffer and Adam's moments
// beside it, and the gradients of each micro batch are accumulated into a flat fp32 buffer.
// Losses stay on the device and are read once per steps_per_print, so a GPU step has no host
// synchronisation except fp16's overflow check.
// Thread safety: one thread drives a Trainer.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/config/config.h"
#include "io/env.h"

namespace ds::engine {

struct TrainerOptions {
  std::string device;  // "cpu", "cuda", "cuda:N"; "": cuda when a GPU is visible, else cpu
  int rank = 0;
  int world_size = 1;
  // Where the default corpus is cached when data.path is "builtin" ("": <output_dir>/data).
  std::string corpus_cache_dir;
};

struct TrainSummary {
  int64_t steps = 0;            // optimizer steps done (skipped overflow steps included)
  int64_t skipped_steps = 0;    // fp16/bf16 overflow
  double first_loss = 0;        // the first step's training loss
  double last_loss = 0;         // mean of the last steps_per_print steps' losses
  std::optional<double> last_eval_loss;
  double seconds = 0;
  double tokens_per_s = 0;
  std::string device;
};

// One named parameter's place in the flat buffers.
struct ParamSlot {
  std::string name;        // "h0.attn_c_attn.weight"
  at::Tensor param;        // the model's tensor (training precision, on the device)
  int64_t offset = 0;      // elements into the flat buffers
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
  at::Tensor master() const;  // fp32 (numel), the optimizer's copy of the weights
  std::string device_name() const;

  struct Impl;

 private:
  explicit Trainer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ds::engine
