#include "engine/train/metrics_window.h"

#include <torch/torch.h>

#include "engine/comm/comm.h"

namespace ds::engine {

void MetricsWindow::Add(StepMetrics m, at::Tensor loss, at::Tensor unread) {
  pending_.push_back(std::move(m));
  losses_.push_back(std::move(loss));
  unread_.push_back(std::move(unread));
}

// The norms and overflow flags the pending steps left on the device (one copy for all).
Status MetricsWindow::ReadDeferred(const std::function<Status(int64_t, bool)>& on_read) {
  std::vector<torch::Tensor> unread;
  for (const torch::Tensor& u : unread_) {
    if (u.defined()) unread.push_back(u);
  }
  if (unread.empty()) {
    unread_.clear();
    return Status::OK();
  }
  torch::Tensor values = torch::stack(unread).to(torch::kCPU, torch::kFloat64);
  const double* v = values.data_ptr<double>();
  size_t k = 0;
  for (size_t i = 0; i < unread_.size() && i < pending_.size(); ++i) {
    if (!unread_[i].defined()) continue;
    StepMetrics& m = pending_[i];
    m.skipped = v[2 * k + 1] > 0;
    if (o_.norm_known) m.grad_norm = v[2 * k];
    DS_RETURN_IF_ERROR(on_read(m.step, m.skipped));
    ++k;
  }
  unread_.clear();
  return Status::OK();
}

Status MetricsWindow::Flush(Monitor& monitor, Comm* across, bool record_losses,
                            const MemoryStats& memory,
                            const std::function<Status(int64_t, bool)>& on_read) {
  if (pending_.empty()) return Status::OK();
  DS_RETURN_IF_ERROR(ReadDeferred(on_read));
  if (!record_losses) {
    pending_.clear();
    losses_.clear();
    return Status::OK();
  }
  torch::Tensor losses = torch::stack(losses_);
  if (across != nullptr) {  // the step's loss: the mean over every rank's batches
    DS_RETURN_IF_ERROR(across->AllReduce(losses, "training losses"));
    losses.div_(o_.loss_ranks);  // other pipeline stages add zeros
  }
  losses = losses.to(torch::kCPU, torch::kFloat64);
  const double* l = losses.data_ptr<double>();
  const uint64_t now = o_.env->NowMicros();
  if (o_.on_gpu && window_start_us_ > 0) {
    const double each =
        static_cast<double>(now - window_start_us_) / 1e6 / static_cast<double>(pending_.size());
    for (StepMetrics& m : pending_) m.step_time_s = each;
  }
  window_start_us_ = now;
  double sum = 0;
  for (size_t i = 0; i < pending_.size(); ++i) {
    StepMetrics& m = pending_[i];
    m.loss = l[i];
    sum += l[i];
    if (!first_loss_) first_loss_ = l[i];
    m.memory = memory;
    const double tps = m.step_time_s > 0 ? static_cast<double>(m.tokens) / m.step_time_s : 0;
    if (auto mfu =
            ModelFlopsUtilization(o_.flops_per_token, tps, o_.device_name, o_.world_size)) {
      m.mfu = *mfu;
    }
    DS_RETURN_IF_ERROR(monitor.RecordStep(m));
  }
  recent_loss_ = sum / static_cast<double>(pending_.size());
  pending_.clear();
  losses_.clear();
  return Status::OK();
}

}  // namespace ds::engine
