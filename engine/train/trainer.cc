#include "engine/train/trainer.h"

#include <torch/cuda.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "engine/core/loss_scaler.h"
#include "engine/core/lr_schedule.h"
#include "engine/data/dataset.h"
#include "engine/data/sampler.h"
#include "engine/model/model.h"
#include "engine/monitor/monitor.h"
#include "engine/optim/adamw.h"
#include "engine/torch_compat.h"
#include "engine/train/internal/trainer_state.h"
#include "engine/zero/zero.h"
#include "io/log.h"

#if DS_TORCH_HAS_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace ds::engine {

// ---- configuration mapped onto the engine's parts

namespace {

LrScheduleParams ScheduleParams(const SchedulerConfig& s) {
  LrScheduleParams p;
  p.type = s.type == SchedulerConfig::Type::kNone ? "" : std::string(SchedulerTypeName(s.type));
  p.warmup_min_lr = s.warmup_min_lr;
  p.warmup_max_lr = s.warmup_max_lr;
  p.warmup_num_steps = s.warmup_num_steps;
  p.warmup_type = s.warmup_type == SchedulerConfig::WarmupType::kLinear ? "linear" : "log";
  p.total_num_steps = s.total_num_steps;
  p.warmup_min_ratio = s.warmup_min_ratio;
  p.cos_min_ratio = s.cos_min_ratio;
  p.cycle_min_lr = s.cycle_min_lr;
  p.cycle_max_lr = s.cycle_max_lr;
  p.decay_lr_rate = s.decay_lr_rate;
  p.cycle_first_step_size = s.cycle_first_step_size;
  p.cycle_second_step_size = s.cycle_second_step_size;
  p.cycle_first_stair_count = s.cycle_first_stair_count;
  p.cycle_second_stair_count = s.cycle_second_stair_count;
  p.decay_step_size = s.decay_step_size;
  p.cycle_momentum = s.cycle_momentum;
  p.cycle_min_mom = s.cycle_min_mom;
  p.cycle_max_mom = s.cycle_max_mom;
  p.decay_mom_rate = s.decay_mom_rate;
  p.lr_range_test_min_lr = s.lr_range_test_min_lr;
  p.lr_range_test_step_size = s.lr_range_test_step_size;
  p.lr_range_test_step_rate = s.lr_range_test_step_rate;
  p.lr_range_test_staircase = s.lr_range_test_staircase;
  return p;
}

LossScalerOptions ScalerOptions(const Config& c) {
  LossScalerOptions o;
  if (c.precision() != Precision::kFp16) {
    o.dynamic = false;  // bf16 and fp32 train unscaled
    o.static_scale = 1.0;
    return o;
  }
  o.dynamic = c.fp16.dynamic();
  o.static_scale = c.fp16.loss_scale;
  o.initial_scale_power = static_cast<int>(c.fp16.initial_scale_power);
  o.scale_window = c.fp16.loss_scale_window;
  o.hysteresis = c.fp16.hysteresis;
  o.consecutive_hysteresis = c.fp16.consecutive_hysteresis;
  o.min_scale = static_cast<double>(c.fp16.min_loss_scale);
  return o;
}

torch::Dtype TrainingDtype(Precision p) {
  switch (p) {
    case Precision::kBf16: return torch::kBFloat16;
    case Precision::kFp16: return torch::kFloat16;
    case Precision::kFp32: return torch::kFloat32;
  }
  return torch::kFloat32;
}

Result<torch::Device> PickDevice(const std::string& wanted) {
  if (wanted.empty())
    return torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  try {
    torch::Device d(wanted);
    if (d.is_cuda() && !torch::cuda::is_available()) {
      return Status::FailedPrecondition(
          "device '" + wanted +
          "' was asked for but no GPU is visible (check "
          "CUDA_VISIBLE_DEVICES and nvidia-smi), or use --device cpu");
    }
    return d;
  } catch (const c10::Error&) {
    return Status::InvalidArgument("device '" + wanted +
                                   "' is not a device (use cpu, cuda or cuda:N)");
  }
}

}  // namespace

Trainer::Trainer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Trainer::~Trainer() {
  impl_->ReapSave(/*wait=*/true);
  if (impl_->monitor != nullptr) {
    Status s = impl_->failed ? Status::OK() : impl_->Flush(/*across_ranks=*/false);
    if (s.ok()) s = impl_->monitor->Close();
    if (!s.ok()) io::LogWarning("closing the monitor: " + s.ToString());
  }
  impl_->zero.reset();  // detaches from the model before the model goes
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
  return ModelFlopsUtilization(impl_->flops_per_token, tokens_per_s, impl_->device_name,
                               impl_->options.world_size);
}

Result<std::unique_ptr<Trainer>> Trainer::Create(io::Env* env, const Config& config,
                                                 const TrainerOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->env = env;
  impl->config = config;
  impl->options = options;
  DS_RETURN_IF_ERROR(impl->Setup());
  return std::unique_ptr<Trainer>(new Trainer(std::move(impl)));
}

Status Trainer::Impl::Setup() {
  const Config& c = config;
  DS_ASSIGN_OR_RETURN(device, PickDevice(options.device));
  dtype = TrainingDtype(c.precision());
  if (dtype == torch::kFloat16 && device.is_cpu()) {
    io::LogWarning("fp16 on the CPU is slow and not what fp16 is for; use bf16 or fp32 there");
  }

  // The model, in the training precision, and the optimizer that owns its weights.
  DS_RETURN_IF_ERROR(Connect());
  DS_RETURN_IF_ERROR(SetupParallel());
  if (model == nullptr) {  // a model split across ranks is made by SetupParallel
    DS_ASSIGN_OR_RETURN(model, MakeModel(c.model, c.trainer.seed));
  }
  DS_RETURN_IF_ERROR(SetupZero());
  DS_RETURN_IF_ERROR(SetupCheckpoints());
  flops_per_token = model->flops_per_token();
  device_name = "cpu";
#if DS_TORCH_HAS_CUDA
  if (device.is_cuda()) {
    device_name = at::cuda::getDeviceProperties(device.index() < 0 ? 0 : device.index())->name;
  }
#endif
  DS_ASSIGN_OR_RETURN(schedule, MakeLrSchedule(ScheduleParams(c.scheduler), c.optimizer.lr));
  scaler = std::make_unique<LossScaler>(ScalerOptions(c));
  DS_RETURN_IF_ERROR(SetupGraphs());

  // Data.
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
  if (data.eval.size() > 0 && c.trainer.eval_interval > 0) {
    Result<EvalBatches> e = EvalBatches::Create(data.eval.size(), shape, c.trainer.eval_iters);
    if (e.ok()) {
      eval.emplace(std::move(*e));
    } else {
      io::LogWarning("no evaluation: " + e.status().message());
    }
  }

  timer = std::make_unique<StepTimer>(env);
  if (options.rank == 0) {
    const ModelConfig& g = c.model;
    io::LogInfo("model: " + g.arch + " " + std::to_string(g.n_layer) + " layers, " +
                std::to_string(g.n_head) + " heads, d_model " + std::to_string(g.d_model) +
                ", seq " + std::to_string(g.seq_len) + ", vocab " + std::to_string(g.vocab) + ": " +
                std::to_string(par.gpt ? par.gpt->parameter_count() : zero->numel()) +
                " parameters" +
                (par.split() ? " (" + std::to_string(zero->numel()) + " on this rank)" : "") +
                ", " + std::string(PrecisionName(c.precision())) + " on " + device.str() +
                ", ZeRO stage " + std::to_string(c.zero.stage) + " over " + std::to_string(par.dp) +
                (par.dp == 1 ? " rank" : " ranks") +
                (par.split() ? " (x " + std::to_string(par.tp) + "-way tensor parallel x " +
                                   std::to_string(par.pp) + " pipeline stages)"
                             : ""));
    io::LogInfo(data.Describe());
  }
  return Status::OK();
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
  const Config& c = config;
  ZeroOptions z;
  z.stage = c.zero.stage;
  z.rank = par.dp_rank;
  z.world_size = par.dp;
  z.comm = DataComm();
  FindPlaces();
  if (par.split()) {
    z.model_comm = par.model_comm.get();
    for (size_t i = 0; i < places.size(); ++i) {
      z.in_norm.push_back(places[i].owned);
      if (par.tied_comm != nullptr && places[i].name == kGptTiedEmbedding)
        z.tied.push_back(static_cast<int>(i));
    }
    z.tied_comm = par.tied_comm.get();
  }
  z.device = device;
  z.dtype = dtype;
  z.comm_dtype =
      c.comms.communication_data_type ? TrainingDtype(*c.comms.communication_data_type) : dtype;
  z.prescale_gradients = c.comms.prescale_gradients;
  z.gradient_predivide_factor = c.comms.gradient_predivide_factor;
  z.reduce_bucket_size = c.zero.reduce_bucket_size;
  z.overlap_comm = c.zero.overlap_comm;
  z.pipelined = par.pp > 1;
  z.offload_optimizer = c.zero.offload_optimizer.device == OffloadConfig::Device::kCpu;
  z.offload_param = c.zero.offload_param.device == OffloadConfig::Device::kCpu && c.zero.stage == 3;
  z.pin_memory = c.zero.offload_optimizer.pin_memory;
  z.prefetch_elements = c.zero.stage3_prefetch_bucket_size;
  z.persistence_threshold = c.zero.stage3_param_persistence_threshold;
  z.max_live_elements = c.zero.stage3_max_live_parameters;
  z.adam.beta1 = c.optimizer.beta1;
  z.adam.beta2 = c.optimizer.beta2;
  z.adam.eps = c.optimizer.eps;
  z.adam.weight_decay = c.optimizer.weight_decay;
  z.adam.adam_w_mode = c.optimizer.adam_w_mode;
  z.adam.bias_correction = c.optimizer.bias_correction;
  DS_ASSIGN_OR_RETURN(zero, ZeroOptimizer::Create(model, z));
  int64_t offset = 0;
  for (const auto& p : model->named_parameters()) {
    slots.push_back({p.key(), p.value(), offset, p.value().numel()});
    offset += p.value().numel();
  }
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
  return s;
}

Status Trainer::Impl::Step() {
  Impl& t = *this;
  DS_RETURN_IF_ERROR(EnsureMonitor());
  const Config& c = t.config;
  const int64_t gas = c.batch.gradient_accumulation_steps;
  const bool breakdown = c.monitor.wall_clock_breakdown;
  const uint64_t t0 = t.env->NowMicros();
  const double scale = t.scaler->scale();
  const Precision p = c.precision();
  const bool check = t.ChecksOverflow();
  const int64_t sched_step = t.step - t.schedule_origin;
  const double lr = t.schedule->LrForStep(sched_step);
  try {
    ZeroStepResult r;
    torch::Tensor loss_sum;  // of the step's micro batches, on the device
    if (t.ReplaysGraphs()) {
      DS_RETURN_IF_ERROR(t.GraphStep(scale, lr, &r, &loss_sum));
    } else {
      loss_sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat32).device(t.device));
      if (t.par.pp > 1) DS_RETURN_IF_ERROR(t.PipelineMicroSteps(scale, loss_sum));
      for (int64_t micro = 0; micro < (t.par.pp > 1 ? 0 : gas); ++micro) {
        DS_RETURN_IF_ERROR(t.sampler->Next(t.data.train, &t.batch));
        auto [x, y] = t.OnDevice(t.batch);
        DS_RETURN_IF_ERROR(t.MicroStep(x, y, scale, micro == gas - 1, loss_sum));
      }
      // The optimizer: unscale, check for overflow (16-bit), clip, Adam, publish the weights.
      if (breakdown) t.timer->Start("optimizer");
      t.WaitForSnapshotCopies();  // Adam rewrites what a snapshot may still be copying
      // fp16's dynamic loss scale needs the overflow before the next step; otherwise the norm
      // and the overflow are read with the losses (Flush), and the step never waits for the GPU.
      DS_ASSIGN_OR_RETURN(r, t.zero->Step(lr, t.schedule->Beta1At(sched_step - 1), scale,
                                          c.gradient_clipping, check, p == Precision::kFp16));
      if (breakdown) {
        if (t.device.is_cuda()) torch::cuda::synchronize();
        t.timer->Stop("optimizer");
      }
    }
    const bool overflow = r.overflow;
    if (r.read) DS_RETURN_IF_ERROR(t.RecordOverflow(t.step + 1, overflow));

    ++t.step;
    StepMetrics m;
    m.step = t.step;
    m.samples = t.step * c.batch.train_batch_size;
    m.lr = lr;
    if (p == Precision::kFp16) m.loss_scale = scale;
    m.tokens = c.batch.train_batch_size * c.model.seq_len;
    m.skipped = overflow;
    if (r.read && (check || c.gradient_clipping > 0)) m.grad_norm = r.grad_norm;
    if (t.last_stall_s >= 0) {  // the last checkpoint's snapshot, which this step waited for
      m.extras["save_stall_s"] = t.last_stall_s;
      t.last_stall_s = -1;
    }
    if (breakdown) t.timer->TakeInto(&m);
    m.step_time_s = static_cast<double>(t.env->NowMicros() - t0) / 1e6;
    t.pending.push_back(m);
    t.pending_loss.push_back(loss_sum / static_cast<double>(gas));
    t.pending_unread.push_back(r.read ? torch::Tensor()
                                      : torch::stack({r.grad_norm_t, r.overflow_t}));
  } catch (const std::exception& e) {
    // A collective that failed inside backward() is reported as the Status it was.
    if (!t.zero->error().ok()) return t.zero->error();
    const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
    return Status::IOError("training step " + std::to_string(t.step + 1) + " on " + t.device.str() +
                           ": " + (c10_error ? c10_error->what_without_backtrace() : e.what()));
  }
  const int64_t every = std::max<int64_t>(1, c.monitor.steps_per_print);
  if (t.step % every == 0 || t.step == c.trainer.max_steps) DS_RETURN_IF_ERROR(t.Flush());
  return Status::OK();
}

Status Trainer::Impl::MicroStep(const torch::Tensor& x, const torch::Tensor& y, double scale,
                                bool last_of_step, torch::Tensor& loss_sum) {
  const bool breakdown = config.monitor.wall_clock_breakdown;
  DS_RETURN_IF_ERROR(zero->BeginMicroStep(last_of_step));
  if (breakdown) timer->Start("forward");
  torch::Tensor loss = model->loss(x, y);
  if (breakdown) {
    if (device.is_cuda()) torch::cuda::synchronize();
    timer->Stop("forward");
    timer->Start("backward");
  }
  // DeepSpeed scales the loss by 1/accumulation (and by the fp16 loss scale).
  const auto gas = static_cast<double>(config.batch.gradient_accumulation_steps);
  (loss * (scale / gas)).backward();
  DS_RETURN_IF_ERROR(zero->EndMicroStep(last_of_step));
  if (breakdown) {
    if (device.is_cuda()) torch::cuda::synchronize();
    timer->Stop("backward");
  }
  loss_sum.add_(loss.detach());
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

// The norms and overflow flags the pending steps left on the device (one copy for all).
Status Trainer::Impl::ReadDeferredSteps() {
  std::vector<torch::Tensor> unread;
  for (const torch::Tensor& u : pending_unread) {
    if (u.defined()) unread.push_back(u);
  }
  if (unread.empty()) {
    pending_unread.clear();
    return Status::OK();
  }
  torch::Tensor values = torch::stack(unread).to(torch::kCPU, torch::kFloat64);
  const double* v = values.data_ptr<double>();
  const bool norm_known = config.gradient_clipping > 0 || ChecksOverflow();
  size_t k = 0;
  for (size_t i = 0; i < pending_unread.size() && i < pending.size(); ++i) {
    if (!pending_unread[i].defined()) continue;
    StepMetrics& m = pending[i];
    m.skipped = v[2 * k + 1] > 0;
    if (norm_known) m.grad_norm = v[2 * k];
    DS_RETURN_IF_ERROR(RecordOverflow(m.step, m.skipped));
    ++k;
  }
  pending_unread.clear();
  return Status::OK();
}

Status Trainer::Impl::Flush(bool across_ranks) {
  DS_RETURN_IF_ERROR(EnsureMonitor());
  if (pending.empty()) return Status::OK();
  DS_RETURN_IF_ERROR(ReadDeferredSteps());
  if (!across_ranks && !par.last_stage()) {
    // Only the last pipeline stage computes losses: without a collective there is none to record.
    pending.clear();
    pending_loss.clear();
    return Status::OK();
  }
  torch::Tensor losses = torch::stack(pending_loss);
  if (comm != nullptr && across_ranks) {  // the step's loss: the mean over every rank's batches
    DS_RETURN_IF_ERROR(comm->AllReduce(losses, "training losses"));
    losses.div_(LossRanks());  // other pipeline stages add zeros
  }
  losses = losses.to(torch::kCPU, torch::kFloat64);
  const double* l = losses.data_ptr<double>();
  const uint64_t now = env->NowMicros();
  if (!device.is_cpu() && window_start_us > 0) {
    const double each =
        static_cast<double>(now - window_start_us) / 1e6 / static_cast<double>(pending.size());
    for (StepMetrics& m : pending) m.step_time_s = each;
  }
  window_start_us = now;
  double sum = 0;
  MemoryStats mem = Memory();
  for (size_t i = 0; i < pending.size(); ++i) {
    StepMetrics& m = pending[i];
    m.loss = l[i];
    sum += l[i];
    if (!first_loss) first_loss = l[i];
    m.memory = mem;
    const double tps = m.step_time_s > 0 ? static_cast<double>(m.tokens) / m.step_time_s : 0;
    if (auto mfu = ModelFlopsUtilization(flops_per_token, tps, device_name, options.world_size)) {
      m.mfu = *mfu;
    }
    DS_RETURN_IF_ERROR(monitor->RecordStep(m));
  }
  recent_loss = sum / static_cast<double>(pending.size());
  pending.clear();
  pending_loss.clear();
  return Status::OK();
}

Result<std::optional<double>> Trainer::Evaluate() {
  Impl& t = *impl_;
  if (!t.eval) return std::optional<double>();
  torch::NoGradGuard no_grad;
  DS_RETURN_IF_ERROR(t.zero->BeginEval());
  t.model->eval();
  torch::Tensor sum =
      torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(t.device));
  Batch b;
  try {
    if (t.par.pp > 1) {
      Result<torch::Tensor> s = t.PipelineEval(t.eval->num_batches());
      if (!s.ok()) {
        t.model->train();
        return s.status();
      }
      sum = *s;
    }
    for (int64_t i = 0; i < (t.par.pp > 1 ? 0 : t.eval->num_batches()); ++i) {
      DS_RETURN_IF_ERROR(t.eval->Read(t.data.eval, i, &b));
      auto [x, y] = t.OnDevice(b);
      sum.add_(t.model->loss(x, y).to(torch::kFloat64));
    }
  } catch (const c10::Error& e) {
    t.model->train();
    return Status::IOError(std::string("evaluation on ") + t.device.str() + ": " +
                           e.what_without_backtrace());
  }
  t.model->train();
  DS_RETURN_IF_ERROR(t.zero->EndEval());
  if (t.comm != nullptr) {  // every rank evaluated its share of the batches
    torch::Tensor f32 = sum.to(torch::kFloat32).reshape({1});
    DS_RETURN_IF_ERROR(t.comm->AllReduce(f32, "evaluation loss"));
    sum = f32.to(torch::kFloat64).reshape({}) / static_cast<double>(t.LossRanks());
  }
  const double loss = sum.item<double>() / static_cast<double>(t.eval->num_batches());
  t.last_eval = loss;
  t.last_eval_step = t.step;
  t.window_start_us = t.env->NowMicros();  // evaluation time is not a training step's
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

Result<std::pair<bool, bool>> Trainer::Impl::SaveOrStopNow() {
  const CheckpointConfig& k = config.checkpoint;
  const bool by_steps = k.save_interval_steps > 0 && step % k.save_interval_steps == 0;
  const bool by_time = k.save_interval_minutes > 0 &&
                       env->NowMicros() - last_save_us >=
                           static_cast<uint64_t>(k.save_interval_minutes) * 60'000'000;
  bool stop = options.stop_requested && options.stop_requested();
  bool save = k.enabled && (by_steps || by_time);
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

Result<TrainSummary> Trainer::Run() {
  Impl& t = *impl_;
  const Config& c = t.config;
  TrainSummary s;
  s.device = t.device.str();
  const uint64_t t0 = t.env->NowMicros();
  const int64_t start = t.step;
  t.window_start_us = t0;
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
  if (!s.preempted && c.checkpoint.enabled && t.last_saved_step != t.step)
    DS_RETURN_IF_ERROR(t.Save("final"));
  t.ReapSave(/*wait=*/true);
  // Rank 0 hosts the store the other ranks learn a save's outcome from: it may not exit first.
  if (t.comm != nullptr) DS_RETURN_IF_ERROR(t.comm->Barrier("end of training"));
  DS_RETURN_IF_ERROR(t.monitor->Sync());
  // A run whose last state is not on disk has not succeeded (a stop request's save is the
  // preemption's business: dsrun says what was saved).
  if (!s.preempted && c.checkpoint.enabled) DS_RETURN_IF_ERROR(t.CheckSavesFailing(/*final=*/true));
  s.steps = t.step;
  s.skipped_steps = t.skipped;
  s.first_loss = t.first_loss.value_or(0);
  s.last_loss = t.recent_loss;
  s.saves = t.saves;
  s.failed_saves = t.failed_saves;
  s.last_checkpoint = t.last_checkpoint;
  s.seconds = static_cast<double>(t.env->NowMicros() - t0) / 1e6;
  s.tokens_per_s =
      s.seconds > 0
          ? static_cast<double>((t.step - start) * c.batch.train_batch_size * c.model.seq_len) /
                s.seconds
          : 0;
  return s;
}

}  // namespace ds::engine
