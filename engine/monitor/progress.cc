#include "engine/monitor/internal/progress.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "io/units.h"

namespace ds::engine::internal {
namespace {

std::string Printf(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

// 65536 rather than 6.5536e+04: a loss scale is a power of two.
std::string FormatScale(double s) {
  if (s == std::floor(s) && std::fabs(s) < 1e15) return Printf("%.0f", s);
  return Printf("%g", s);
}

}  // namespace

std::string FormatCount(double v) {
  if (v >= 1e6) return Printf("%.2fM", v / 1e6);
  if (v >= 1e3) return Printf("%.1fk", v / 1e3);
  return Printf("%.0f", v);
}

std::string FormatBytesPair(uint64_t a, uint64_t b) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double scale = 1;
  int unit = 0;
  while (static_cast<double>(std::max(a, b)) / scale >= 1024.0 && unit < 4) {
    scale *= 1024.0;
    ++unit;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, unit == 0 ? "%.0f/%.0f %s" : "%.1f/%.1f %s",
                static_cast<double>(a) / scale, static_cast<double>(b) / scale, kUnits[unit]);
  return buf;
}

void ProgressWindow::Add(const StepMetrics& m) {
  last_ = m;
  ++steps_;
  if (m.skipped) ++skipped_;
  if (std::isfinite(m.loss)) loss_.Add(m.loss);
  tokens_ += m.tokens;
  seconds_ += m.step_time_s;
  if (m.mfu) {
    mfu_seconds_ += *m.mfu * m.step_time_s;
    seconds_with_mfu_ += m.step_time_s;
  }
  if (m.forward_s) forward_.Add(*m.forward_s);
  if (m.backward_s) backward_.Add(*m.backward_s);
  if (m.optimizer_s) optimizer_.Add(*m.optimizer_s);
  if (m.grad_norm) grad_norm_.Add(*m.grad_norm);
  for (const auto& [name, v] : m.extras) extras_[name].Add(v);
}

std::string ProgressWindow::Line(int64_t max_steps) const {
  std::string line = "step " + std::to_string(last_.step);
  if (max_steps > 0) line += "/" + std::to_string(max_steps);
  line += loss_.n > 0 ? Printf(" | loss %.4f", loss_.value()) : " | loss nan";
  line += Printf(" | lr %.2e", last_.lr);
  if (last_.loss_scale) line += " | scale " + FormatScale(*last_.loss_scale);
  if (grad_norm_.n > 0) line += Printf(" | grad norm %.3f", grad_norm_.value());
  if (seconds_ > 0) {
    line += " | " + FormatCount(static_cast<double>(tokens_) / seconds_) + " tok/s";
  }
  line += Printf(" | %.3f s/step", seconds_ / static_cast<double>(steps_));
  if (forward_.n > 0 || backward_.n > 0 || optimizer_.n > 0) {
    line += " | fwd/bwd/opt " + Printf("%.3f", forward_.value()) + "/" +
            Printf("%.3f", backward_.value()) + "/" + Printf("%.3f s", optimizer_.value());
  }
  if (seconds_with_mfu_ > 0)
    line += Printf(" | MFU %.1f%%", 100 * mfu_seconds_ / seconds_with_mfu_);
  const MemoryStats& mem = last_.memory;
  std::string memory;
  if (mem.model_state_bytes) memory = io::FormatBytes(*mem.model_state_bytes) + " model state";
  if (mem.rss_bytes) memory += (memory.empty() ? "" : ", ") + io::FormatBytes(*mem.rss_bytes) + " RSS";
  if (mem.gpu_allocated_bytes) {
    if (!memory.empty()) memory += ", ";
    memory += mem.gpu_reserved_bytes
                  ? FormatBytesPair(*mem.gpu_allocated_bytes, *mem.gpu_reserved_bytes)
                  : io::FormatBytes(*mem.gpu_allocated_bytes);
    memory += " GPU";
    if (mem.gpu_peak_bytes) memory += " (peak " + io::FormatBytes(*mem.gpu_peak_bytes) + ")";
  }
  if (!memory.empty()) line += " | mem " + memory;
  for (const auto& [name, mean] : extras_) line += " | " + name + Printf(" %.4g", mean.value());
  if (skipped_ > 0) {
    line += " | " + std::to_string(skipped_) + (skipped_ == 1 ? " step" : " steps") +
            " skipped (fp16 overflow)";
  }
  return line;
}

std::string EvalLine(const EvalMetrics& m) {
  std::string line = "eval step " + std::to_string(m.step) + Printf(" | loss %.4f", m.eval_loss);
  if (std::isfinite(m.eval_loss) && m.eval_loss < 50) {
    line += Printf(" | ppl %.2f", std::exp(m.eval_loss));
  }
  line += " | " + FormatCount(static_cast<double>(m.eval_tokens)) + " tokens";
  for (const auto& [name, v] : m.extras) line += " | " + name + Printf(" %.4g", v);
  return line;
}

}  // namespace ds::engine::internal
