// ZeRO data parallelism for the trainer: the fp32 master weights, Adam's moments and the
// gradients of the model's parameters, partitioned over the ranks by stage (ckpt/partition.h's
// layout), the gradient reductions, and stage 3's gathering of parameters unit by unit.
// Thread safety: one training thread; every rank calls the same methods in the same order.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/config/config.h"
#include "engine/optim/adamw.h"
#include "engine/zero/piece.h"
#include "io/env.h"
#include "io/status.h"

namespace ds::engine {

class Comm;
class LanguageModel;

struct ZeroOptions {
  int stage = 0;
  int rank = 0;
  int world_size = 1;
  Comm* comm = nullptr;  // needed when world_size > 1
  at::Device device{at::kCPU};
  at::ScalarType dtype = at::kFloat;       // the parameters' (training) precision
  at::ScalarType comm_dtype = at::kFloat;  // what gradients travel in
  bool prescale_gradients = false;
  double gradient_predivide_factor = 1.0;
  int64_t reduce_bucket_size = 500'000'000;  // elements per gradient bucket
  // Stage 2: reduce buckets while backward runs. Stage 1 on several ranks (no pipeline): reduce
  // the step's gradients in buckets during the last micro batch's backward, as DeepSpeed does,
  // instead of one reduce-scatter after it.
  bool overlap_comm = false;
  bool pipelined = false;  // pipeline stages (1F1B interleaves micro batches' backward passes)
  bool offload_optimizer = false;  // master, moments and gradients on the CPU
  // offload_optimizer on NVMe (ZeRO-Infinity): the master and both moments live in swap files
  // under nvme_path (engine/zero/swap.h), streamed through host buffers of swap_chunk elements
  // for each optimizer step; the gradient partition stays on the host (offload_optimizer must
  // be true too). Empty: in memory.
  std::string nvme_path;
  std::string nvme_job;                   // SwapJobName of the job
  io::Env* env = nullptr;                 // the swap files' Env
  int64_t swap_chunk = int64_t{1} << 24;  // elements (64 MiB of fp32 per buffer)
  bool offload_param = false;             // stage 3: parameter partitions off the device
  // offload_param on NVMe: stage 3's parameter partition (in the training dtype) lives in a swap
  // file under param_nvme_path instead (job param_nvme_job), each unit's range read into host
  // memory on a thread from when its gather is issued and each updated chunk written back as
  // the step makes it. Empty: in memory (offload_param false: on the device).
  std::string param_nvme_path;
  std::string param_nvme_job;
  bool pin_memory = true;                     // page-locked CPU buffers (with a GPU)
  int64_t prefetch_elements = 50'000'000;     // stage 3: elements gathered ahead of use
  int64_t persistence_threshold = 100'000;    // stage 3: smaller parameters stay gathered
  int64_t max_live_elements = 1'000'000'000;  // stage 3: no prefetch beyond this many gathered
  uint64_t alignment = 16;                    // elements; partitions start at multiples of it
  AdamWOptions adam;
  // A deferred model (LanguageModel::deferred): leave the weights unmade until Initialize() or
  // a checkpoint's Publish() (a resumed run never draws initial values it would overwrite).
  bool defer_values = false;
  // Tensor and pipeline parallelism: rank and world_size above are the data-parallel ones, and
  // `comm` the data-parallel group. `model_comm` joins the ranks holding the other parts of
  // this replica (their squares add up to the global gradient norm); `in_norm` (per parameter,
  // empty: all) is false for copies another rank of model_comm counts (whole tensors on
  // tensor-parallel ranks > 0, the last stage's tied embedding). Stages 0-1: the accumulated
  // gradients of `tied` parameters are summed over `tied_comm` before the data-parallel
  // reduction (the token embedding shared by the first and last pipeline stages).
  Comm* model_comm = nullptr;
  std::vector<bool> in_norm;
  std::vector<int> tied;
  Comm* tied_comm = nullptr;
};

// What one optimizer step found. Without `read`, the host has not waited for the step: the
// norm and the overflow flag are in the device scalars, to be read later (with the losses).
struct ZeroStepResult {
  bool read = false;
  bool overflow = false;   // a non-finite gradient on some rank: the step was skipped
  double grad_norm = 0;    // global, before clipping (only read with clipping or overflow checks)
  at::Tensor grad_norm_t;  // float32 scalars on the device
  at::Tensor overflow_t;   // 1: skipped
};

// Bytes this rank holds for the model state right now, by kind.
struct ModelStateBytes {
  uint64_t params = 0;     // the model's parameter tensors (stage 3: partition + gathered)
  uint64_t grads = 0;      // gradient accumulators
  uint64_t optimizer = 0;  // fp32 master and both moments
  uint64_t on_host = 0;    // the part of the above in CPU memory while training on a GPU
  uint64_t on_nvme = 0;    // the optimizer state in NVMe swap files (not in `optimizer`)
  uint64_t total() const { return params + grads + optimizer; }
};

class ZeroOptimizer {
 public:
  // Takes over `model`'s parameters, still fp32 on the CPU as the factory made them: with
  // several ranks they become rank 0's (a broadcast), the fp32 master copy is taken, and the
  // model moves to `device` in `dtype`; stage 3 then frees all but this rank's partition.
  // A deferred model's placeholders instead get storage for this rank's part only, and (unless
  // options.defer_values) each rank draws the initial values of its part: no rank holds the
  // whole model at any time.
  static Result<std::unique_ptr<ZeroOptimizer>> Create(std::shared_ptr<LanguageModel> model,
                                                       const ZeroOptions& options);
  ~ZeroOptimizer();

  // A deferred model's initial values into this rank's part of the state, then published: a
  // collective at stages 1-3 on several ranks. Does nothing once the weights are there.
  Status Initialize();
  // The weights are still to come (a deferred model before Initialize or a load): the state
  // holds nothing worth keeping.
  bool values_pending() const;

  // Around each micro batch's forward and backward: stage 3 gathers the parameters outside the
  // model's units here and frees them in EndMicroStep, which also reduces this micro step's
  // gradients where the stage does (stage 2, 3; stages 0 and 1 on the last micro step).
  // `last_of_step` must be what EndMicroStep will be told (stage 1's buckets need it before
  // backward).
  Status BeginMicroStep(bool last_of_step = true);
  Status EndMicroStep(bool last_of_step);
  // Stages 0-1: forgets a micro step whose work never ran (a failed CUDA graph capture), so it
  // can run again: drops the parameters' gradients, and the accumulator is written afresh by the
  // next micro step if `first_of_step`.
  void RestartMicroStep(bool first_of_step);
  // Forward passes without gradients (evaluation), stage 3 gathering as for training.
  Status BeginEval();
  Status EndEval();

  // Unscales by `loss_scale`, finds the global norm and overflow, clips to `clip` (0: off),
  // and (unless overflow) runs Adam on this rank's partition and publishes the new weights to
  // the model. Gradients are zeroed either way. All of it is decided on the device: the host
  // waits for the norm only when `read_now` (fp16's loss scaler needs the overflow at once).
  // A host wait in every step would also wait behind a snapshot's device-to-host copies.
  Result<ZeroStepResult> Step(double lr, std::optional<double> beta1, double loss_scale,
                              double clip, bool check_overflow, bool read_now = true);
  // Step in two parts, for a step captured as a CUDA graph: the learning rate is written to the
  // device outside the graph (a captured fill would replay the captured value), the rest is
  // device work only (read_now false) that the graph replays.
  void SetLearningRate(double lr);
  Result<ZeroStepResult> DeviceStep(std::optional<double> beta1, double loss_scale, double clip,
                                    bool check_overflow);

  // The whole fp32 master vector in parameter order (all_numel elements), gathered from the
  // ranks: a collective. For tests and saving.
  Result<at::Tensor> GatherMaster();
  int64_t numel() const;  // parameters in the model

  // ---- for checkpoints
  // The parameters, in model order: names and shapes.
  std::vector<std::string> names() const;
  std::vector<std::vector<int64_t>> shapes() const;
  // What this rank holds (stage 0: everything) and what it saves (ckpt::PartitionForRank of the
  // stage: every element saved by exactly one rank).
  std::vector<ZeroPiece> HeldPieces() const;
  std::vector<ZeroPiece> SavePieces() const;
  // This rank's fp32 optimizer buffers (partition_numel elements each), read and written by
  // checkpoints; after writing them, Publish() makes the model's weights match.
  // Undefined while the state is swapped to NVMe (swapped()): use ReadState / WriteState.
  at::Tensor master() const;
  at::Tensor exp_avg() const;
  at::Tensor exp_avg_sq() const;
  // Where the three buffers (0 master, 1 exp_avg, 2 exp_avg_sq; state_numel() elements each)
  // live: in memory, or (offload_optimizer nvme) in swap files. Read and write ranges of them
  // either way; after writing the master, Publish().
  bool swapped() const;
  int64_t state_numel() const;
  Status ReadState(int buffer, int64_t begin, std::span<float> out) const;
  Status WriteState(int buffer, int64_t begin, std::span<const float> data);
  int64_t adam_steps() const;  // waits for the device's count
  void set_adam_steps(int64_t steps);
  Status Publish();
  uint64_t alignment() const;
  ModelStateBytes Memory() const;
  // The first error raised inside backward() (a failed collective), else OK.
  Status error() const;

  struct Impl;

 private:
  explicit ZeroOptimizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ds::engine
