// The state behind ZeroOptimizer, shared by zero.cc (stages 0-2, the optimizer step) and
// stage3.cc (gathering parameters unit by unit). Not part of the public API.
// Thread safety: the training thread only (hooks run on it inside backward()).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>

#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/comm/comm.h"
#include "engine/model/model.h"
#include "engine/zero/internal/host_link.h"
#include "engine/zero/swap.h"
#include "engine/zero/zero.h"

namespace ds::engine {

// One parameter of the model and its place in the flat buffers.
struct ZeroTensor {
  std::string name;
  at::Tensor param;  // the model's tensor (stage 3: empty while released)
  std::vector<int64_t> shape;
  int64_t numel = 0;
  int64_t flat_offset = 0;  // stages 0-2: first element in the flat vector
  int64_t piece = 0;        // stage 3: elements per rank (padded), PartitionLength
  int64_t part_offset = 0;  // stage 3: where this rank's piece sits in the partition
  int unit = 0;             // stage 3: 0 outside the model's units, else unit index + 1
  bool persistent = false;  // stage 3: stays gathered between uses
  bool fresh = false;       // stage 3: `param` holds the current weights
};

// Stage 2: a range of the flat gradient inside one rank's partition, reduced to that rank once
// every element of it has arrived from the backward pass.
struct GradBucket {
  int64_t begin = 0, end = 0;  // flat elements
  int owner = 0;
  int64_t arrived = 0;  // elements copied in this micro step
  at::Tensor buffer;    // (end - begin) in the comm dtype; undefined when idle
};

// An issued gradient reduction whose result this rank adds into its partition's gradient.
struct PendingReduction {
  CommHandle handle;
  at::Tensor buffer;                             // what was sent (and, for a reduce, what arrives)
  at::Tensor out;                                // reduce-scatter: this rank's sum
  std::function<void(const at::Tensor&)> apply;  // adds the (post-scaled) sum where it belongs
};

// Stage 3: an issued all-gather of one unit's stale parameters.
struct PendingGather {
  int unit = 0;
  CommHandle handle;
  at::Tensor in, out;        // (U) and (W * U) in the training dtype on the device
  std::vector<int> tensors;  // in the order of their columns
  int64_t elements = 0;      // U: the tensors' pieces
  // The pieces' run of the partition: [first, next), one run when `adjacent`.
  int64_t first = 0, next = 0;
  bool adjacent = true;
  // Parameters on NVMe: the run, read into host memory by `reading` (valid while the read is in
  // flight; in and out come after it).
  at::Tensor read;
  std::future<Status> reading;
  // Offloaded parameters: `in` is uploaded on the side stream; the compute stream waits for
  // this before using the unit.
  std::optional<c10::Event> uploaded;
};

struct ZeroOptimizer::Impl : public UnitRunner {
  ZeroOptions o;
  ZeroStage stage;  // o.stage, checked once at Create: what this rank partitions
  std::shared_ptr<LanguageModel> model;
  std::vector<ZeroTensor> tensors;
  int64_t total = 0;       // parameters' elements
  int64_t part_len = 0;    // this rank's partition (stage 0: every element)
  int64_t part_begin = 0;  // stages 1-2: flat element where this rank's partition starts
  // Stages 0-2 with some parameters left out of the norm (ZeroOptions::in_norm): the runs of
  // `grad` that count, {offset, length}.
  std::vector<std::pair<int64_t, int64_t>> norm_runs;
  at::TensorOptions state_opts;            // fp32 where the optimizer state lives
  at::Tensor master, exp_avg, exp_avg_sq;  // (part_len) fp32
  at::Tensor grad;           // (part_len) fp32: this rank's gradient (a view of flat_acc at 0/1)
  at::Tensor flat_acc;       // stages 0/1: (total | W * part_len) fp32 on the device
  bool grad_in_acc = false;  // stages 0/1: `grad` is this rank's row of flat_acc
  at::Tensor adam_step;      // Adam's step count, a float32 scalar beside the state (AdamWStep)
  at::Tensor lr;             // the learning rate of the next step, likewise (SetLearningRate)
  // Stages 0-2: (total | W * part_len) in the training dtype on the device; the model's
  // parameters are views of it.
  at::Tensor flat_param;
  // Stages 0/1: the accumulator holds nothing of the current step yet (the next micro step
  // writes it rather than adding).
  bool acc_fresh = true;
  Status sticky;  // the first error raised inside backward()

  // Stage 2, and stage 1 with overlap_comm on several ranks (`stage1_buckets`: the last micro
  // step's backward fills the buckets, from the accumulator plus its own gradients).
  bool stage1_buckets = false;
  bool hooks_live = false;          // the current micro step's gradients go into buckets
  std::vector<bool> delivered;      // stage 1: per tensor, its gradient went into the buckets
  std::vector<GradBucket> buckets;  // in launch order: from the end of the flat vector
  size_t next_bucket = 0;           // buckets launch strictly in order, the same on every rank
  std::deque<PendingReduction> reductions;

  // stage 3
  // (part_len) training dtype, on the device or (offload) the host; undefined when the
  // parameters are on NVMe (param_swap)
  at::Tensor param_part;
  std::vector<std::vector<int>> units;  // tensors of each unit; units[0]: outside the units
  std::vector<std::function<at::Tensor(const at::Tensor&)>> unit_fns;
  std::vector<std::unique_ptr<PendingGather>> gathers;  // per unit, null when none in flight
  int64_t live_elements = 0;                            // gathered parameter elements
  std::optional<c10::Stream> upload_stream;  // offloaded parameters' uploads (a GPU's side stream)

  Comm* comm() const { return o.comm; }
  void FindNormRuns(const std::vector<ZeroPiece>& held);
  at::Tensor SquaredGradNorm() const;  // this rank's share, (1,) on the device
  bool distributed() const { return o.world_size > 1; }

  // Both: the DeepSpeed scaling around a sum over ranks (prescale or predivide, then after).
  void PreScale(at::Tensor& t) const;
  void PostScale(at::Tensor& t) const;
  Status LaunchReduction(PendingReduction r);  // queues; completes old ones past the window
  Status CompleteOldestReduction();
  Status DrainReductions();

  // Offloaded state on a GPU (stages 2-3): gradients stream into `grad` through grad_sink as
  // backward reduces them (the first micro step of a step writes, later ones add:
  // grad_fresh), and new weights go up through `uploader` (internal/host_link.h). Null without.
  std::unique_ptr<GradSink> grad_sink;
  std::unique_ptr<Uploader> uploader;
  bool grad_fresh = true;
  std::vector<bool> unit_reduced;  // stage 3 with grad_sink: per unit, reduced this micro step
  // `grad`'s [offset, offset + src.numel()) = src (the first micro step) or += src.
  void SendGrad(const at::Tensor& src, int64_t offset);
  // Copies host fp32 `src` into `dst` (the training dtype, on the device or the host).
  void CopyToModel(const at::Tensor& src, const at::Tensor& dst) const;

  // The model's values are still to come (a deferred model before Initialize or a load).
  bool values_pending = false;
  // offload_optimizer nvme: master, exp_avg and exp_avg_sq live here (the tensors undefined).
  std::unique_ptr<SwapSpace> swap;
  bool swapping() const { return !o.nvme_path.empty(); }
  Status OpenSwap();  // moves a built master (and zero moments) into the swap files
  // The master partition, read from the swap files when swapped (a host copy: tests, gathers).
  Result<at::Tensor> MasterNow() const;
  // Swapped: elements per chunk of the partition streamed through host memory.
  int64_t SwapChunk() const;
  // Stages 1-3 swapped: Adam over the partition chunk by chunk (read, update, write back), each
  // updated chunk of the master also copied into `publish` (PublishTarget()).
  Status SwappedAdamStep(const at::Tensor& skip, const at::Tensor& divisor,
                         std::optional<double> beta1, const at::Tensor& publish);
  // The master's chunks into `dst` (the partition in the training dtype, on the device).
  Status CopyMasterInto(const at::Tensor& dst) const;
  // offload_param nvme (stage 3): the parameter partition, in the training dtype, lives here.
  std::unique_ptr<SwapSpace> param_swap;
  bool params_swapped() const { return !o.param_nvme_path.empty(); }
  Status OpenParamSwap();
  // New weights `src` (fp32) for elements [begin, begin + src.numel()) of the partition: into
  // `target` (PublishTarget()), or converted and written to the swap file when it is there.
  Status PublishChunk(int64_t begin, const at::Tensor& src, const at::Tensor& target) const;
  // The same for the whole partition, chunk by chunk.
  Status PublishChunks(const at::Tensor& src, const at::Tensor& target) const;
  // Publishing new weights. The tensor this rank's partition goes into, in the training dtype:
  // stage 3's param_part (undefined on NVMe: PublishChunk writes there); at stages 0-2 its slot
  // of flat_param, or (several ranks, partitioned optimizer) a buffer that PublishFrom
  // all-gathers into flat_param.
  at::Tensor PublishTarget();
  Status PublishFrom(const at::Tensor& target);  // once `target` holds the new weights
  Status PublishMaster();                        // the master (in memory or swapped) into the model
  bool deferred() const { return model->deferred(); }

  // zero.cc
  Status ListTensors();        // `tensors` and `total` from the model's parameters, in order
  Status TakeBuiltModel();     // a model built whole: its weights (rank 0's) become the state
  Status TakeDeferredModel();  // placeholders: storage for this rank's part, values later
  void AllocateMoments();
  // fp32: every parameter's values (flat, on the device), or none for a deferred model.
  Status SetupFlat(const std::vector<at::Tensor>& fp32);
  void OnGradReady(size_t tensor);  // stage 2 hook; throws after recording `sticky`
  // Copies `flat` (tensor i's elements, (numel)) into the buckets it overlaps.
  void FillBuckets(const ZeroTensor& t, const at::Tensor& flat);
  Status LaunchReadyBuckets();
  Status FlushBuckets();  // the last micro step's end: what did not arrive, then every bucket
  Status ReduceFlatAccumulator();  // stages 0/1, last micro step
  // ZeroOptimizer::Step after the learning rate was set.
  Result<ZeroStepResult> StepWithLr(std::optional<double> beta1, double loss_scale, double clip,
                                    bool check_overflow, bool read_now);

  // stage3.cc
  Status SetupStage3(const std::vector<at::Tensor>& fp32);  // fp32 as for SetupFlat
  // Starts gathering `unit` (the read from NVMe first, when the parameters are there).
  Status IssueGather(int unit);
  // The upload and all-gather of `g`'s pieces of `part`: the partition, or g.read (which starts
  // at g.first).
  Status StartGather(PendingGather& g, const at::Tensor& part);
  // Parameters on NVMe: once g's read is in (waiting for it when `wait`), its StartGather.
  Status AdvanceRead(PendingGather& g, bool wait);
  // Waits for every gather in flight and forgets it: new weights are about to be published (a
  // gather in flight would hold the old ones, and a read could meet the write of its range).
  Status DropPendingGathers();
  Status EnsureGathered(int unit);
  void Release(int unit);
  Status ReduceUnitGrads(int unit);
  Result<at::Tensor> GatherStage3Master();
  at::Tensor Run(int unit, const at::Tensor& x,
                 std::function<at::Tensor(const at::Tensor&)> fn) override;
  // Issues the gathers of the units from `unit` on, stepping by `direction` (+1 forward, -1
  // backward), within stage3_prefetch_bucket_size and stage3_max_live_parameters.
  void Prefetch(int unit, int direction);
  [[noreturn]] void Throw(const Status& s);  // records `sticky` and throws into autograd
};

}  // namespace ds::engine
