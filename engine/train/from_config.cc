// The engine's parts' options as the config says them (from_config.h).
#include "engine/train/from_config.h"

#include <torch/cuda.h>
#include <torch/types.h>

#include <algorithm>

#include "engine/zero/swap.h"

namespace ds::engine {

LrScheduleParams ScheduleParamsOf(const SchedulerConfig& s) {
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

LossScalerOptions ScalerOptionsOf(const Config& c) {
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

ZeroOptions ZeroOptionsOf(const Config& c, const ParallelState& par, Comm* data_comm,
                          const std::vector<TensorPlace>& places, const torch::Device& device,
                          torch::Dtype dtype) {
  ZeroOptions z;
  z.stage = c.zero.stage;
  z.rank = par.dp_rank;
  z.world_size = par.dp;
  z.comm = data_comm;
  if (par.split()) {
    z.model_comm = par.model_comm.get();
    for (size_t i = 0; i < places.size(); ++i) {
      z.in_norm.push_back(places[i].owned);
      if (par.tied_comm != nullptr && places[i].name == par.parts->tied_embedding())
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
  z.offload_optimizer = c.zero.offload_optimizer.device != OffloadConfig::Device::kNone;
  if (c.zero.offload_optimizer.device == OffloadConfig::Device::kNvme) {
    z.nvme_path = c.zero.offload_optimizer.nvme_path;
    // One job's restarts share a swap directory (and reclaim a killed run's); jobs never do.
    z.nvme_job = SwapJobName(CheckpointDir(c));
  }
  // What each swap streams through host memory at a time (either swap; unused without one).
  z.swap_chunk = std::max<int64_t>(1, c.zero.aio_block_size * c.zero.aio_queue_depth / 4);
  z.offload_param = c.zero.offload_param.device != OffloadConfig::Device::kNone &&
                    c.zero.Stage().partitions_parameters();
  if (z.offload_param && c.zero.offload_param.device == OffloadConfig::Device::kNvme) {
    z.param_nvme_path = c.zero.offload_param.nvme_path;
    z.param_nvme_job = SwapJobName(CheckpointDir(c)) + "-params";  // its own lock and files
  }
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
  return z;
}

}  // namespace ds::engine
