// The training loop of one rank (trainer.h), as owned parts: the step runner (where the step
// happens: step_runner.h), the ZeRO optimizer (engine/zero), the checkpoint agent (where a tensor
// leaves for disk: checkpoint_agent.h), and the metrics window (metrics_window.h). This file sets
// them up from the config and runs the loop: micro batches and optimizer step, metrics, maybe an
// evaluation, maybe a save.
#include "engine/train/trainer.h"

#include <torch/cuda.h>
#include <torch/torch.h>

#include "engine/config/memory.h"
#include "engine/core/loss_scaler.h"
#include "engine/core/lr_schedule.h"
#include "engine/data/dataset.h"
#include "engine/data/sampler.h"
#include "engine/model/model.h"
#include "engine/monitor/monitor.h"
#include "engine/runtime_info.h"
#include "engine/torch_compat.h"
#include "engine/torch_status.h"
#include "engine/train/checkpoint_agent.h"
#include "engine/train/from_config.h"
#include "engine/train/metrics_window.h"
#include "engine/train/parallel.h"
#include "engine/train/state_plan.h"
#include "engine/train/step_runner.h"
#include "engine/zero/zero.h"
#include "io/log.h"

#if DS_TORCH_HAS_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace ds::engine {

// ---- configuration mapped onto the engine's parts

struct Trainer::Impl {
  io::Env* env = nullptr;
  Config config;
  TrainerOptions options;
  torch::Device device{torch::kCPU};
  torch::Dtype dtype = torch::kFloat32;
  std::string device_name;  // "cpu", or what CUDA calls the GPU ("NVIDIA H100 80GB HBM3")

  // The parts, in the order they are made (and the reverse of the order they go).
  std::unique_ptr<Comm> comm;  // with world_size > 1
  ParallelState par;
  std::shared_ptr<LanguageModel> model;
  std::vector<TensorPlace> places;  // per parameter, in ZeRO's order
  std::unique_ptr<ZeroOptimizer> zero;
  std::vector<ParamSlot> slots;
  std::unique_ptr<CheckpointAgent> checkpoints;
  std::unique_ptr<LrSchedule> schedule;
  std::unique_ptr<LossScaler> scaler;
  Dataset data;
  std::optional<Sampler> sampler;
  std::optional<EvalBatches> eval;
  std::unique_ptr<StepTimer> timer;
  std::unique_ptr<StepRunner> runner;
  std::optional<MetricsWindow> metrics;
  std::unique_ptr<Monitor> monitor;  // opened at the first step (EnsureMonitor)

  int64_t step = 0;  // optimizer steps done
  int64_t skipped = 0;
  int64_t schedule_origin = 0;      // the LR schedule runs at step - schedule_origin
  std::optional<double> last_eval;  // at last_eval_step
  int64_t last_eval_step = -1;
  bool failed = false;  // a step failed: its peers may be gone, and pending steps are moot

  Status Setup();
  Status Connect();  // the world's communicator
  Status SetupZero();
  Status SetupCheckpoints();
  Status SetupData();
  Status SetupRunner();
  void LogModel() const;
  Status EnsureMonitor();

  Status Step();
  StepParams ParamsFor(int64_t next_step) const;
  // Reads the window's losses (averaged over the ranks when `across_ranks`: a collective) and
  // records its steps.
  Status Flush(bool across_ranks = true);
  // Counts a skipped step and tells the loss scaler.
  Status RecordOverflow(int64_t at_step, bool overflow);
  bool ChecksOverflow() const;  // fp16, or bf16 with check_grad_overflow: overflows skip steps
  MemoryStats Memory() const;
  Comm* DataComm() const { return par.split() ? par.dp_comm.get() : comm.get(); }
  // Ranks whose losses are the job's: the last stage's (all of them without pipelining).
  int LossRanks() const { return options.world_size / par.pp; }

  // Whether to save now (interval or minutes) and whether to stop (stop_requested): every rank
  // gets the same answer (one small all-reduce when a rank could disagree).
  Result<std::pair<bool, bool>> SaveOrStopNow();
  Status Save(const std::string& reason);
  TrainerState StateNow() const;
  Status Apply(const Restored& restored, const ResumeOptions& r);
};

Trainer::Trainer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Trainer::~Trainer() {
  Impl& t = *impl_;
  if (t.checkpoints != nullptr) t.checkpoints->Reap(/*wait=*/true);
  if (t.monitor != nullptr) {
    Status s = t.failed ? Status::OK() : t.Flush(/*across_ranks=*/false);
    if (s.ok()) s = t.monitor->Close();
    if (!s.ok()) io::LogWarning("closing the monitor: " + s.ToString());
  }
  t.runner.reset();
  t.checkpoints.reset();
  t.zero.reset();  // detaches from the model before the model goes
}

int64_t Trainer::step() const { return impl_->step; }
const std::vector<ParamSlot>& Trainer::slots() const { return impl_->slots; }
Result<at::Tensor> Trainer::GatherMaster() { return impl_->zero->GatherMaster(); }
ModelStateBytes Trainer::model_state() const { return impl_->zero->Memory(); }
MemoryStats Trainer::memory() const { return impl_->Memory(); }
std::map<std::string, CollectiveStats> Trainer::comm_stats() const {
  std::map<std::string, CollectiveStats> out;
  const ParallelState& p = impl_->par;
  // The world's collectives by kind; a split model's groups' as "<group>:<kind>" ("tp:all_reduce").
  const std::pair<const char*, const Comm*> comms[] = {
      {"", impl_->comm.get()},        {"tp:", p.tp_comm.get()},     {"dp:", p.dp_comm.get()},
      {"model:", p.model_comm.get()}, {"pipe:", p.pipe_comm.get()}, {"tied:", p.tied_comm.get()}};
  for (const auto& [prefix, c] : comms) {
    if (c == nullptr) continue;
    for (const auto& [op, st] : c->stats()) out[prefix + op] = st;
  }
  return out;
}
std::string Trainer::device_name() const { return impl_->device.str(); }
std::optional<double> Trainer::mfu(double tokens_per_s) const {
  return ModelFlopsUtilization(impl_->model->flops_per_token(), tokens_per_s, impl_->device_name,
                               impl_->options.world_size);
}
Status Trainer::SaveCheckpoint(const std::string& reason) { return impl_->Save(reason); }
void Trainer::WaitForSaves() { impl_->checkpoints->Reap(/*wait=*/true); }
std::optional<ckpt::SaveStats> Trainer::last_save() const {
  return impl_->checkpoints->last_save_stats();
}

namespace {

// An out-of-memory error, with what a rank needs at each ZeRO setting against this machine and
// the cheapest setting that fits (as dsrun --dry-run prints it); any other status as it is.
Status WithMemoryAdvice(io::Env* env, const Config& config, const TrainerOptions& options,
                        const torch::Device& device, const Status& s) {
  if (!IsOutOfMemory(s)) return s;
  MachineMemory m;
  m.host_bytes = env->PhysicalMemoryBytes();
  m.ranks_per_host = options.ranks_per_host;
  if (device.is_cuda()) {
    const int index = device.index() < 0 ? 0 : device.index();
    m.device_bytes = GpuMemoryBytes(index);
    m.device_name = device.str();
  }
  return Status(s.code(), s.message() + "\n" + FormatMemoryTable(config) + MemoryAdvice(config, m));
}

}  // namespace

Result<std::unique_ptr<Trainer>> Trainer::Create(io::Env* env, const Config& config,
                                                 const TrainerOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->env = env;
  impl->config = config;
  impl->options = options;
  Status s = impl->Setup();
  DS_RETURN_IF_ERROR(WithMemoryAdvice(env, config, options, impl->device, s));
  return std::unique_ptr<Trainer>(new Trainer(std::move(impl)));
}

// ---- set-up

Status Trainer::Impl::Setup() {
  const Config& c = config;
  DS_ASSIGN_OR_RETURN(device, PickDevice(options.device));
  dtype = TrainingDtype(c.precision());
  if (dtype == torch::kFloat16 && device.is_cpu()) {
    io::LogWarning("fp16 on the CPU is slow and not what fp16 is for; use bf16 or fp32 there");
  }
  device_name = "cpu";
#if DS_TORCH_HAS_CUDA
  if (device.is_cuda()) {
    device_name = at::cuda::getDeviceProperties(device.index() < 0 ? 0 : device.index())->name;
  }
#endif
  // The model, in the training precision, and the optimizer that owns its weights.
  DS_RETURN_IF_ERROR(Connect());
  {
    // Partitioned construction: a model that can defer its values holds none until ZeRO gives
    // each rank its part (engine/model/model.h).
    DeferredInit deferred;
    DS_RETURN_IF_ERROR(SetupParallel(c, options.rank, options.world_size, comm.get(), &par));
    if (par.model != nullptr) {
      model = par.model;  // this rank's part of a model split across ranks
    } else {
      DS_ASSIGN_OR_RETURN(model, MakeModel(c.model, c.trainer.seed));
    }
  }
  DS_RETURN_IF_ERROR(SetupZero());
  DS_RETURN_IF_ERROR(SetupCheckpoints());
  DS_RETURN_IF_ERROR(SetupData());  // first: a length in epochs needs the data counted
  DS_ASSIGN_OR_RETURN(schedule, MakeLrSchedule(ScheduleParamsOf(c.scheduler), c.optimizer.lr));
  scaler = std::make_unique<LossScaler>(ScalerOptionsOf(c));
  timer = std::make_unique<StepTimer>(env);
  DS_RETURN_IF_ERROR(SetupRunner());
  MetricsWindowOptions mo;
  mo.env = env;
  mo.on_gpu = !device.is_cpu();
  mo.flops_per_token = model->flops_per_token();
  mo.device_name = device_name;
  mo.world_size = options.world_size;
  mo.loss_ranks = LossRanks();
  mo.norm_known = c.gradient_clipping > 0 || ChecksOverflow();
  metrics.emplace(std::move(mo));
  if (options.rank == 0) LogModel();
  return Status::OK();
}

Status Trainer::Impl::Connect() {
  const Config& c = config;
  if (options.world_size > 1) {
    CommOptions co;
    co.rank = options.rank;
    co.world_size = options.world_size;
    co.master_addr = options.master_addr;
    co.master_port = options.master_port;
    co.backend = options.backend;
    co.cuda = device.is_cuda();
    co.timeout_s = static_cast<double>(c.comms.timeout_s);
    co.time_collectives = c.monitor.wall_clock_breakdown;
    DS_ASSIGN_OR_RETURN(comm, Comm::Connect(co));
  }
  return Status::OK();
}

Status Trainer::Impl::SetupZero() {
  places = FindPlaces(*model, par);
  ZeroOptions zo = ZeroOptionsOf(config, par, DataComm(), places, device, dtype);
  zo.defer_values = options.will_resume;  // Resume draws them only if nothing is loaded
  zo.env = env;                           // NVMe offload's swap files
  DS_ASSIGN_OR_RETURN(zero, ZeroOptimizer::Create(model, zo));
  int64_t offset = 0;
  for (const auto& p : model->named_parameters()) {
    slots.push_back({p.key(), p.value(), offset, p.value().numel()});
    offset += p.value().numel();
  }
  return Status::OK();
}

Status Trainer::Impl::SetupCheckpoints() {
  CheckpointAgentOptions a;
  a.env = env;
  a.config = &config;
  a.rank = options.rank;
  a.world_size = options.world_size;
  a.tp = par.tp;
  a.pp = par.pp;
  a.comm = comm.get();
  a.device = device;
  a.zero = zero.get();
  a.plan = StatePlan(places, par.tp, par.tp_rank);
  // Every split tensor of the whole model (all stages: rank 0 writes it), for dsckpt reshard.
  if (auto* split = dynamic_cast<SplitModel*>(model.get()))
    a.tp_splits = StatePlan::BufferSplits(split->tp_splits());
  checkpoints = std::make_unique<CheckpointAgent>(std::move(a));
  checkpoints->ReclaimAbandonedSaves();
  return Status::OK();
}

Status Trainer::Impl::SetupData() {
  const Config& c = config;
  DatasetOptions dopts;
  dopts.vocab = c.model.vocab;
  const std::string cache = options.corpus_cache_dir.empty()
                                ? io::JoinPath(c.trainer.output_dir, "data")
                                : options.corpus_cache_dir;
  dopts.default_corpus_path = io::JoinPath(cache, "default-corpus.txt");
  DS_RETURN_IF_ERROR(env->CreateDirs(cache));
  DS_ASSIGN_OR_RETURN(data, OpenDataset(env, c.data, dopts));
  // Tensor-parallel ranks and pipeline stages of a replica read the same batches.
  BatchShape shape{c.batch.micro_batch_per_gpu, c.model.seq_len, par.dp_rank, par.dp};
  DS_ASSIGN_OR_RETURN(Sampler s, Sampler::Create(data.train.size(), shape, c.trainer.seed));
  sampler.emplace(std::move(s));
  // The masked-LM objective (BERT): batches are masked as they are read, train and eval alike.
  std::optional<MaskedLm> masked_lm = model->masked_lm();
  if (masked_lm && c.data.mlm_probability) masked_lm->probability = *c.data.mlm_probability;
  if (!masked_lm && c.data.mlm_probability && options.rank == 0) {
    io::LogWarning("data.mlm_probability has no effect: this model predicts the next token "
                   "(the masked-LM objective is BERT's)");
  }
  if (masked_lm) {
    DS_RETURN_IF_ERROR(masked_lm->Check());
    sampler->set_masked_lm(*masked_lm);
  }
  if (config.trainer.max_steps == 0) {
    // The length in epochs (trainer.epochs; no max_steps given): the training split's windows
    // over the samples of one optimizer step, rounded down (at least one step), as Hugging Face
    // Trainer counts update steps per epoch.
    const uint64_t per_step = static_cast<uint64_t>(c.batch.micro_batch_per_gpu) *
                              static_cast<uint64_t>(c.batch.gradient_accumulation_steps) *
                              static_cast<uint64_t>(par.dp);
    const int64_t per_epoch =
        std::max<int64_t>(1, static_cast<int64_t>(sampler->num_windows() / per_step));
    config.trainer.max_steps = per_epoch * config.trainer.epochs;
    if (config.scheduler.total_num_steps == 0)
      config.scheduler.total_num_steps = config.trainer.max_steps;  // "auto": the run's length
    if (options.rank == 0) {
      io::LogInfo("length: " + std::to_string(config.trainer.max_steps) + " steps (" +
                  std::to_string(config.trainer.epochs) + " epoch(s) of " +
                  std::to_string(per_epoch) + " steps: " + std::to_string(sampler->num_windows()) +
                  " windows of " + std::to_string(c.model.seq_len) + " tokens, " +
                  std::to_string(per_step) + " a step); --max-steps N to choose");
    }
  }
  if (data.eval.size() > 0 && c.trainer.eval_interval > 0) {
    Result<EvalBatches> e = EvalBatches::Create(data.eval.size(), shape, c.trainer.eval_iters);
    if (e.ok()) {
      if (masked_lm) e->set_masked_lm(*masked_lm, c.trainer.seed);
      eval.emplace(std::move(*e));
    } else {
      io::LogWarning("no evaluation: " + e.status().message());
    }
  }
  return Status::OK();
}

Status Trainer::Impl::SetupRunner() {
  StepContext sc;
  sc.config = &config;
  sc.rank = options.rank;
  sc.device = device;
  sc.dtype = dtype;
  sc.model = model.get();
  sc.zero = zero.get();
  sc.sampler = &*sampler;
  sc.data = &data;
  sc.timer = timer.get();
  sc.par = &par;
  sc.checkpoints = checkpoints.get();
  DS_ASSIGN_OR_RETURN(runner, MakeStepRunner(sc, schedule->Beta1At(0).has_value()));
  return Status::OK();
}

void Trainer::Impl::LogModel() const {
  const Config& c = config;
  const ModelConfig& g = c.model;
  io::LogInfo("model: " + g.arch + " " + std::to_string(g.n_layer) + " layers, " +
              std::to_string(g.n_head) + " heads, d_model " + std::to_string(g.d_model) + ", seq " +
              std::to_string(g.seq_len) + ", vocab " + std::to_string(g.vocab) + ": " +
              std::to_string(par.parts ? par.parts->parameter_count() : zero->numel()) + " parameters" +
              (par.split() ? " (" + std::to_string(zero->numel()) + " on this rank)" : "") + ", " +
              std::string(PrecisionName(c.precision())) + " on " + device.str() + ", ZeRO stage " +
              std::to_string(c.zero.stage) + " over " + std::to_string(par.dp) +
              (par.dp == 1 ? " rank" : " ranks") +
              (par.split() ? " (x " + std::to_string(par.tp) + "-way tensor parallel x " +
                                 std::to_string(par.pp) + " pipeline stages)"
                           : ""));
  io::LogInfo(data.Describe());
}

// Opened at the first step, evaluation or flush, not at set-up: a resumed run keeps the metrics
// of the steps before the one it resumes from.
Status Trainer::Impl::EnsureMonitor() {
  if (monitor != nullptr) return Status::OK();
  MonitorOptions mo;
  mo.config = config.monitor;
  mo.output_dir = config.trainer.output_dir;
  mo.rank = options.rank;
  mo.max_steps = config.trainer.max_steps;
  mo.resume_step = step;
  DS_ASSIGN_OR_RETURN(monitor, Monitor::Open(env, mo));
  return Status::OK();
}

MemoryStats Trainer::Impl::Memory() const {
  MemoryStats m;
  if (zero != nullptr) m.model_state_bytes = zero->Memory().total();
#if DS_TORCH_HAS_CUDA
  if (device.is_cuda()) {
    auto stats =
        c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
    using c10::CachingAllocator::StatType;
    const auto agg = static_cast<size_t>(StatType::AGGREGATE);
    m.gpu_allocated_bytes = static_cast<uint64_t>(stats.allocated_bytes[agg].current);
    m.gpu_reserved_bytes = static_cast<uint64_t>(stats.reserved_bytes[agg].current);
    m.gpu_peak_bytes = static_cast<uint64_t>(stats.allocated_bytes[agg].peak);
  }
#endif
  return m;
}

// ---- one step

Status Trainer::Step() {
  Status s = impl_->Step();
  if (!s.ok()) impl_->failed = true;
  return WithMemoryAdvice(impl_->env, impl_->config, impl_->options, impl_->device, s);
}

StepParams Trainer::Impl::ParamsFor(int64_t next_step) const {
  const Config& c = config;
  const int64_t sched_step = next_step - 1 - schedule_origin;
  StepParams p;
  p.step = next_step;
  p.micro_batches = c.batch.gradient_accumulation_steps;
  p.loss_scale = scaler->scale();
  p.lr = schedule->LrForStep(sched_step);
  p.beta1 = schedule->Beta1At(sched_step - 1);
  p.clip = c.gradient_clipping;
  p.check_overflow = ChecksOverflow();
  p.read_now = c.precision() == Precision::kFp16;
  return p;
}

// The loop's body: micro batches and the optimizer step (the runner), then the step's metrics,
// kept on the device until the window is flushed.
Status Trainer::Impl::Step() {
  DS_RETURN_IF_ERROR(zero->Initialize());  // will_resume without a Resume(): draw them now
  DS_RETURN_IF_ERROR(EnsureMonitor());
  const Config& c = config;
  const uint64_t t0 = env->NowMicros();
  const StepParams p = ParamsFor(step + 1);
  StepOutcome out;
  try {
    DS_RETURN_IF_ERROR(runner->Run(p, &out));
  } catch (const std::exception& e) {
    // A collective that failed inside backward() is reported as the Status it was.
    if (!zero->error().ok()) return zero->error();
    return TorchError(e, "training step " + std::to_string(p.step) + " on " + device.str());
  }
  const ZeroStepResult& r = out.result;
  if (r.read) DS_RETURN_IF_ERROR(RecordOverflow(p.step, r.overflow));
  ++step;

  StepMetrics m;
  m.step = step;
  m.samples = step * c.batch.train_batch_size;
  m.lr = p.lr;
  if (c.precision() == Precision::kFp16) m.loss_scale = p.loss_scale;
  m.tokens = c.batch.train_batch_size * c.model.seq_len;
  m.skipped = r.overflow;
  if (r.read && (p.check_overflow || p.clip > 0)) m.grad_norm = r.grad_norm;
  // The last checkpoint's snapshot, which this step waited for.
  if (const double stall = checkpoints->TakeStall(); stall >= 0) m.extras["save_stall_s"] = stall;
  if (c.monitor.wall_clock_breakdown) timer->TakeInto(&m);
  m.step_time_s = static_cast<double>(env->NowMicros() - t0) / 1e6;
  DS_RETURN_IF_ERROR(TorchCall("recording step " + std::to_string(step), [&] {
    metrics->Add(m, out.loss_sum / static_cast<double>(p.micro_batches),
                 r.read ? torch::Tensor() : torch::stack({r.grad_norm_t, r.overflow_t}));
  }));
  const int64_t every = std::max<int64_t>(1, c.monitor.steps_per_print);
  if (step % every == 0 || step == c.trainer.max_steps) DS_RETURN_IF_ERROR(Flush());
  return Status::OK();
}

bool Trainer::Impl::ChecksOverflow() const {
  const Precision p = config.precision();
  return p == Precision::kFp16 || (p == Precision::kBf16 && config.bf16.check_grad_overflow);
}

Status Trainer::Impl::RecordOverflow(int64_t at_step, bool overflow) {
  DS_ASSIGN_OR_RETURN(LossScaler::Update u, scaler->Record(overflow));
  if (!u.message.empty() && options.rank == 0)
    io::LogInfo("step " + std::to_string(at_step) + ": " + u.message);
  if (overflow) ++skipped;
  return Status::OK();
}

Status Trainer::Impl::Flush(bool across_ranks) {
  DS_RETURN_IF_ERROR(EnsureMonitor());
  // Only the last pipeline stage computes losses: without a collective there is none to record.
  return metrics->Flush(*monitor, across_ranks ? comm.get() : nullptr,
                        across_ranks || par.last_stage(), Memory(),
                        [this](int64_t at, bool overflow) { return RecordOverflow(at, overflow); });
}

// ---- evaluation

Result<std::optional<double>> Trainer::Evaluate() {
  Impl& t = *impl_;
  if (!t.eval) return std::optional<double>();
  DS_RETURN_IF_ERROR(t.zero->Initialize());
  torch::NoGradGuard no_grad;
  DS_RETURN_IF_ERROR(t.zero->BeginEval());
  t.model->eval();
  torch::Tensor sum;
  Status s = TorchCall("evaluation on " + t.device.str(), [&]() -> Status {
    DS_ASSIGN_OR_RETURN(sum, t.runner->EvalSum(*t.eval, t.eval->num_batches()));
    return Status::OK();
  });
  t.model->train();
  DS_RETURN_IF_ERROR(s);
  DS_RETURN_IF_ERROR(t.zero->EndEval());
  if (t.comm != nullptr) {  // every rank evaluated its share of the batches
    torch::Tensor f32 = sum.to(torch::kFloat32).reshape({1});
    DS_RETURN_IF_ERROR(t.comm->AllReduce(f32, "evaluation loss"));
    sum = f32.to(torch::kFloat64).reshape({}) / static_cast<double>(t.LossRanks());
  }
  const double loss = sum.item<double>() / static_cast<double>(t.eval->num_batches());
  t.last_eval = loss;
  t.last_eval_step = t.step;
  t.metrics->RestartClock();  // evaluation time is not a training step's
  EvalMetrics m;
  m.step = t.step;
  m.samples = t.step * t.config.batch.train_batch_size;
  m.eval_loss = loss;
  m.eval_tokens = t.eval->num_batches() * t.config.batch.micro_batch_per_gpu *
                  t.config.model.seq_len * t.par.dp;
  DS_RETURN_IF_ERROR(t.Flush());
  DS_RETURN_IF_ERROR(t.monitor->RecordEval(m));
  return std::optional<double>(loss);
}

// ---- checkpoints (checkpoint_agent.h saves and loads)

Result<std::pair<bool, bool>> Trainer::Impl::SaveOrStopNow() {
  const CheckpointConfig& k = config.checkpoint;
  bool stop = options.stop_requested && options.stop_requested();
  bool save = checkpoints->Due(step);
  // Clocks and signals differ between ranks: agree (any rank's yes is everyone's).
  if (comm != nullptr && (options.stop_requested || (k.enabled && k.save_interval_minutes > 0))) {
    torch::Tensor flags =
        torch::tensor({static_cast<float>(save), static_cast<float>(stop)},
                      torch::TensorOptions().dtype(torch::kFloat32).device(device));
    DS_RETURN_IF_ERROR(comm->AllReduce(flags, "save and stop flags"));
    flags = flags.cpu();
    save = flags[0].item<float>() > 0;
    stop = flags[1].item<float>() > 0;
  }
  return std::make_pair(save || (stop && k.enabled), stop);
}

TrainerState Trainer::Impl::StateNow() const {
  TrainerState s;
  s.step = step;
  s.adam_steps = zero->adam_steps();
  s.skipped = skipped;
  s.schedule_origin = schedule_origin;
  s.loss_scaler = scaler->state();
  s.sampler = sampler->state().Serialize();
  s.world_size = options.world_size;
  s.zero_stage = config.zero.stage;
  return s;
}

Status Trainer::Impl::Save(const std::string& reason) {
  DS_RETURN_IF_ERROR(zero->Initialize());
  DS_RETURN_IF_ERROR(Flush());  // the checkpoint's loss is this step's
  SavePoint point;
  point.step = step;
  point.state = StateNow();
  point.loss = metrics->recent_loss();
  if (last_eval && last_eval_step == step) point.eval_loss = last_eval;  // never a stale one
  return checkpoints->Save(point, reason);
}

Result<std::string> Trainer::Resume(const ResumeOptions& r) {
  Impl& t = *impl_;
  DS_ASSIGN_OR_RETURN(Restored restored, t.checkpoints->Resume(r, t.step));
  DS_RETURN_IF_ERROR(t.Apply(restored, r));
  DS_RETURN_IF_ERROR(t.zero->Initialize());  // nothing was loaded: the initial weights now
  return restored.line;
}

Status Trainer::Impl::Apply(const Restored& restored, const ResumeOptions& r) {
  if (restored.path.empty()) return Status::OK();  // nothing to resume from (--resume-if-any)
  if (restored.state) {
    const TrainerState& s = *restored.state;
    DS_RETURN_IF_ERROR(sampler->Restore(restored.sampler))
        << "while resuming from " << restored.path;
    step = s.step;
    skipped = s.skipped;
    schedule_origin = r.load_scheduler ? s.schedule_origin : step;
    scaler->Restore(s.loss_scaler);
  }
  metrics->ForgetFirstLoss();
  return Status::OK();
}

// ---- the loop

Result<TrainSummary> Trainer::Run() {
  Impl& t = *impl_;
  const Config& c = t.config;
  TrainSummary s;
  s.device = t.device.str();
  const uint64_t t0 = t.env->NowMicros();
  const int64_t start = t.step;
  t.metrics->RestartClock();
  while (t.step < c.trainer.max_steps) {
    DS_RETURN_IF_ERROR(Step());
    // Evaluate before a save of the same step, so the checkpoint's metrics (and `best`) are
    // this step's.
    if ((c.trainer.eval_interval > 0 && t.step % c.trainer.eval_interval == 0) ||
        t.step == c.trainer.max_steps) {
      DS_ASSIGN_OR_RETURN(std::optional<double> e, Evaluate());
      if (e) s.last_eval_loss = e;
    }
    DS_ASSIGN_OR_RETURN(auto save_stop, t.SaveOrStopNow());
    if (save_stop.first)
      DS_RETURN_IF_ERROR(t.Save(save_stop.second ? "stop requested" : "interval"));
    if (save_stop.second) {
      s.preempted = true;
      break;
    }
  }
  DS_RETURN_IF_ERROR(t.Flush());
  CheckpointAgent& k = *t.checkpoints;
  if (!s.preempted && c.checkpoint.enabled && k.last_saved_step() != t.step)
    DS_RETURN_IF_ERROR(t.Save("final"));
  k.Reap(/*wait=*/true);
  // Rank 0 hosts the store the other ranks learn a save's outcome from: it may not exit first.
  if (t.comm != nullptr) DS_RETURN_IF_ERROR(t.comm->Barrier("end of training"));
  DS_RETURN_IF_ERROR(t.monitor->Sync());
  // A run whose last state is not on disk has not succeeded (a stop request's save is the
  // preemption's business: dsrun says what was saved).
  if (!s.preempted && c.checkpoint.enabled)
    DS_RETURN_IF_ERROR(k.CheckFailing(t.step, /*final=*/true));
  s.steps = t.step;
  s.skipped_steps = t.skipped;
  s.first_loss = t.metrics->first_loss().value_or(0);
  s.last_loss = t.metrics->recent_loss();
  s.saves = k.saves();
  s.failed_saves = k.failed_saves();
  s.last_checkpoint = k.last_checkpoint();
  s.seconds = static_cast<double>(t.env->NowMicros() - t0) / 1e6;
  s.tokens_per_s =
      s.seconds > 0
          ? static_cast<double>((t.step - start) * c.batch.train_batch_size * c.model.seq_len) /
                s.seconds
          : 0;
  return s;
}

}  // namespace ds::engine
