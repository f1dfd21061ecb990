// Where the step happens: one optimizer step's micro batches (forward, backward, the gradient
// into ZeRO) and its optimizer step, by one of three runners behind one interface:
//   eager     every kernel launched from the host, micro batch after micro batch
//             (step_runner.cc)
//   graphs    the same step captured once as CUDA graphs and replayed (trainer.cuda_graphs;
//             step_graphs.cc)
//   pipeline  the micro batches through this rank's pipeline stage in 1F1B order
//             (step_pipeline.cc)
// The trainer (trainer.cc) chooses one at set-up and calls Run once per optimizer step; it keeps
// the metrics, the schedule and the checkpoints.
// Thread safety: the training thread only.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>

#include "engine/config/config.h"
#include "engine/data/dataset.h"
#include "engine/data/sampler.h"
#include "engine/model/model.h"
#include "engine/monitor/monitor.h"
#include "engine/train/parallel.h"
#include "engine/zero/zero.h"

namespace ds::engine {

class CheckpointAgent;

// The trainer's parts a runner works with; all outlive it.
struct StepContext {
  const Config* config = nullptr;
  int rank = 0;
  at::Device device{at::kCPU};
  at::ScalarType dtype = at::kFloat;  // the parameters' and activations' precision
  LanguageModel* model = nullptr;
  ZeroOptimizer* zero = nullptr;
  Sampler* sampler = nullptr;
  const Dataset* data = nullptr;
  StepTimer* timer = nullptr;          // times forward, backward and optimizer with
                                       // monitor.wall_clock_breakdown
  const ParallelState* par = nullptr;
  CheckpointAgent* checkpoints = nullptr;  // a snapshot's copies finish before the optimizer
};

// What one step is asked to do.
struct StepParams {
  int64_t step = 1;           // the step this is (1: the first), for messages
  int64_t micro_batches = 1;  // gradient_accumulation_steps
  // The loss scale of fp16 (1 otherwise); each micro batch's loss is multiplied by
  // loss_scale / micro_batches before backward, as DeepSpeed does.
  double loss_scale = 1;
  double lr = 0;
  std::optional<double> beta1;  // the schedule's momentum, when it cycles it
  double clip = 0;              // gradient_clipping (0: off)
  bool check_overflow = false;  // 16-bit: a non-finite gradient skips the step
  bool read_now = false;        // the host waits for the norm and overflow (fp16's loss scaler)
};

// What one step did: the optimizer's result and the sum of the micro batches' losses (a float32
// scalar on the device; zero on pipeline stages other than the last).
struct StepOutcome {
  ZeroStepResult result;
  at::Tensor loss_sum;
};

class StepRunner {
 public:
  virtual ~StepRunner() = default;
  // One optimizer step: params.micro_batches micro batches from the sampler, then the
  // optimizer.
  virtual Status Run(const StepParams& params, StepOutcome* out) = 0;
  // The sum of the first `batches` evaluation batches' losses (a float64 scalar on the device;
  // zero on pipeline stages other than the last), forward only.
  virtual Result<at::Tensor> EvalSum(const EvalBatches& eval, int64_t batches) = 0;
  // "eager", "graphs" or "pipeline", for the log and tests.
  virtual const char* kind() const = 0;
};

// The runner this job's step takes: pipeline with pipeline stages; graphs per
// trainer.cuda_graphs where the step can be captured (an error when it is "true" and cannot);
// else eager. `momentum_cycles`: the schedule sets Adam's beta1 per step (not captured).
Result<std::unique_ptr<StepRunner>> MakeStepRunner(const StepContext& context,
                                                   bool momentum_cycles);

}  // namespace ds::engine
