// `dsrun bench --profile DIR`: a few more steps under LibTorch's profiler (Kineto, with CUPTI on
// a GPU), summarised as where the GPU's time goes: how long it was busy per step against the
// wall clock (a GPU idle between kernels is a step the host cannot launch fast enough), and
// the kernels that took the most of it. The Chrome trace beside it opens in chrome://tracing
// or Perfetto.
#include <torch/csrc/autograd/profiler_kineto.h>

#if DS_TORCH_HAS_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>
#include <cstdio>
#include <map>
#include <vector>

#include "cli/dsrun/internal.h"
#include "engine/train/trainer.h"

namespace ds::engine {
namespace {

namespace prof = torch::autograd::profiler;
namespace prof_impl = torch::profiler::impl;

struct KernelTime {
  uint64_t ns = 0;
  int64_t calls = 0;
};

std::string Summary(const std::vector<prof::KinetoEvent>& events, int64_t steps, double wall_s) {
  std::map<std::string, KernelTime> by_name;
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (const prof::KinetoEvent& e : events) {
    if (e.deviceType() != c10::DeviceType::CUDA || e.durationNs() == 0) continue;
    KernelTime& k = by_name[e.name()];
    k.ns += e.durationNs();
    ++k.calls;
    spans.emplace_back(e.startNs(), e.endNs());
  }
  const double per_step = 1.0 / static_cast<double>(steps);
  const double wall_ms = 1e3 * wall_s * per_step;
  const double busy_ms = 1e-6 * static_cast<double>(BusyNanos(spans)) * per_step;
  std::vector<std::pair<std::string, KernelTime>> top(by_name.begin(), by_name.end());
  std::sort(top.begin(), top.end(),
            [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line,
                "profile: %lld steps; per step: wall %.2f ms, GPU busy %.2f ms (%.0f%%), %lld "
                "device activities\n",
                static_cast<long long>(steps), wall_ms, busy_ms,
                wall_ms > 0 ? 100 * busy_ms / wall_ms : 0.0,
                static_cast<long long>(static_cast<double>(spans.size()) * per_step));
  out += line;
  if (spans.empty())
    return out + "no GPU activity recorded: the trace holds the host's operators\n";
  out += "   ms/step  calls/step  % of busy  kernel\n";
  for (size_t i = 0; i < top.size() && i < 30; ++i) {
    const double ms = 1e-6 * static_cast<double>(top[i].second.ns) * per_step;
    std::snprintf(line, sizeof line, "%10.3f %11.1f %10.1f  %.110s\n", ms,
                  static_cast<double>(top[i].second.calls) * per_step,
                  busy_ms > 0 ? 100 * ms / busy_ms : 0.0, top[i].first.c_str());
    out += line;
  }
  return out;
}

}  // namespace

uint64_t BusyNanos(std::vector<std::pair<uint64_t, uint64_t>> spans) {
  std::sort(spans.begin(), spans.end());
  uint64_t busy = 0, end = 0;
  for (const auto& [b, e] : spans) {
    if (e <= end) continue;  // inside what was counted
    busy += e - std::max(b, end);
    end = e;
  }
  return busy;
}

Status ProfileSteps(io::Env* env, Trainer& trainer, int64_t steps, const std::string& prefix) {
  if (prefix.empty()) {
    for (int64_t i = 0; i < steps; ++i) DS_RETURN_IF_ERROR(trainer.Step());
    return Status::OK();
  }
  const bool cuda = trainer.device_name().rfind("cuda", 0) == 0;
  auto sync = [&] {
#if DS_TORCH_HAS_CUDA
    if (cuda) c10::cuda::getCurrentCUDAStream().synchronize();
#endif
  };
  const prof_impl::ProfilerConfig config(prof_impl::ProfilerState::KINETO);
  std::set<prof_impl::ActivityType> activities{prof_impl::ActivityType::CPU};
  if (cuda) activities.insert(prof_impl::ActivityType::CUDA);
  std::unique_ptr<prof::ProfilerResult> result;
  uint64_t t0 = 0, t1 = 0;
  try {
    prof::prepareProfiler(config, activities);
    prof::enableProfiler(config, activities);
    sync();
    t0 = env->NowMicros();
    Status s;
    for (int64_t i = 0; i < steps && s.ok(); ++i) s = trainer.Step();
    sync();
    t1 = env->NowMicros();
    result = prof::disableProfiler();
    DS_RETURN_IF_ERROR(s);
    result->save(prefix + ".trace.json");
  } catch (const c10::Error& e) {
    return Status::IOError(std::string("profiling ") + std::to_string(steps) +
                           " steps: " + e.what_without_backtrace());
  }
  const std::string text = Summary(result->events(), steps, static_cast<double>(t1 - t0) / 1e6);
  return env->ReplaceFileAtomically(prefix + ".txt", text);
}

}  // namespace ds::engine
