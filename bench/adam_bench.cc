#include "bench/adam_bench.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>

#include "engine/optim/adamw.h"
#include "io/env.h"

namespace ds::bench {
namespace {

// The hyper-parameters of a GPT run (nanoGPT's), the same for every row.
constexpr double kLr = 6e-4, kBeta1 = 0.9, kBeta2 = 0.95, kEps = 1e-8, kDecay = 0.1;

struct Buffers {
  at::Tensor param, grad, exp_avg, exp_avg_sq;  // (elements,) fp32 each
};

Buffers MakeBuffers(int64_t n) {
  at::manual_seed(11);
  return {at::randn({n}) * 0.02, at::randn({n}) * 1e-3, at::zeros({n}), at::zeros({n})};
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

template <typename Step>
double TimeSteps(int repeat, Step&& step) {
  step();  // untimed: first touch of the moments and LibTorch's thread pool start-up
  std::vector<double> t;
  for (int i = 0; i < std::max(1, repeat); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    step();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return Median(std::move(t));
}

// torch's CPU AdamW as a user gets it: the C++ frontend's AdamW (the same tensor ops as
// torch.optim.AdamW's default single-tensor path on the CPU).
std::unique_ptr<torch::optim::AdamW> TorchAdamW(const Buffers& b) {
  at::Tensor p = b.param;
  p.set_requires_grad(true);
  p.mutable_grad() = b.grad;
  return std::make_unique<torch::optim::AdamW>(
      std::vector<at::Tensor>{p},
      torch::optim::AdamWOptions(kLr).betas({kBeta1, kBeta2}).eps(kEps).weight_decay(kDecay));
}

void OurStep(const Buffers& b, int64_t step, bool fused) {
  engine::AdamWOptions o{
      kBeta1, kBeta2, kEps, kDecay, /*adam_w_mode=*/true, /*bias_correction=*/true};
  engine::AdamWStep(b.param, b.grad, b.exp_avg, b.exp_avg_sq, step, kLr, o, std::nan(""), fused);
}

std::string CpuModel() {
  Result<std::string> info = io::Env::Default()->ReadFileToString("/proc/cpuinfo");
  if (!info.ok()) return "unknown";
  const size_t at = info->find("model name");
  if (at == std::string::npos) return "unknown";
  const size_t colon = info->find(':', at), end = info->find('\n', at);
  return colon < end ? info->substr(colon + 2, end - colon - 2) : "unknown";
}

}  // namespace

Result<AdamBenchReport> RunAdamBench(const AdamBenchOptions& o) {
  if (o.elements < 1 || o.repeat < 1) {
    return Status::InvalidArgument("dsrun bench adam: --elements and --repeat must be at least 1");
  }
  AdamBenchReport r;
  r.elements = o.elements;
  r.cpu = CpuModel();
  r.capability = at::get_cpu_capability();
  const int all = o.threads > 0 ? o.threads : at::get_num_threads();
  try {
    torch::NoGradGuard no_grad;
    // Agreement first, on a small buffer: three steps of each from the same start.
    {
      Buffers a = MakeBuffers(1 << 20), b = MakeBuffers(1 << 20);
      auto torch_opt = TorchAdamW(a);
      for (int64_t s = 1; s <= 3; ++s) {
        torch_opt->step();
        OurStep(b, s, /*fused=*/true);
      }
      r.max_abs_diff = (a.param.detach() - b.param).abs().max().item<double>();
    }
    Buffers b = MakeBuffers(o.elements);
    for (int threads : {1, all}) {
      if (threads == 1 && all == 1 && !r.rows.empty()) break;
      at::set_num_threads(threads);
      auto torch_opt = TorchAdamW(b);
      const double torch_s = TimeSteps(o.repeat, [&] { torch_opt->step(); });
      int64_t step = 0;
      const double plain_s = TimeSteps(o.repeat, [&] { OurStep(b, ++step, false); });
      const double fused_s = TimeSteps(o.repeat, [&] { OurStep(b, ++step, true); });
      const double n = static_cast<double>(o.elements);
      r.rows.push_back({"torch AdamW (default)", threads, torch_s, n / torch_s, 1.0});
      r.rows.push_back({"dstrain plain ops", threads, plain_s, n / plain_s, torch_s / plain_s});
      r.rows.push_back({"dstrain fused", threads, fused_s, n / fused_s, torch_s / fused_s});
      if (all == 1) break;
    }
    at::set_num_threads(all);
  } catch (const c10::Error& e) {
    at::set_num_threads(all);
    return Status::IOError(std::string("dsrun bench adam: ") + e.what_without_backtrace());
  }
  return r;
}

std::string AdamBenchTable(const AdamBenchReport& r) {
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line,
                "CPU Adam: %lld fp32 elements (4 buffers, %.1f GB), %s, LibTorch CPU kernels: %s\n",
                static_cast<long long>(r.elements), 16.0 * static_cast<double>(r.elements) / 1e9,
                r.cpu.c_str(), r.capability.c_str());
  out += line;
  std::snprintf(line, sizeof line, "%-24s %7s %10s %14s %9s %12s\n", "optimizer", "threads",
                "step ms", "elements/s", "vs torch", "GB/s moved");
  out += line;
  for (const AdamBenchRow& row : r.rows) {
    // An AdamW step reads param, grad and both moments and writes param and both: 28 B/element.
    std::snprintf(line, sizeof line, "%-24s %7d %10.1f %13.0fM %8.2fx %12.1f\n", row.name.c_str(),
                  row.threads, row.seconds * 1e3, row.elements_per_s / 1e6, row.vs_torch,
                  row.elements_per_s * 28 / 1e9);
    out += line;
  }
  std::snprintf(line, sizeof line,
                "fused against torch's AdamW after 3 steps from the same start: max |diff| %.3g\n",
                r.max_abs_diff);
  out += line;
  return out;
}

std::string AdamBenchJson(const AdamBenchReport& r) {
  nlohmann::ordered_json j = {{"bench", "adam"},     {"elements", r.elements},
                              {"cpu", r.cpu},        {"capability", r.capability},
                              {"max_abs_diff", r.max_abs_diff}};
  for (const AdamBenchRow& row : r.rows) {
    j["rows"].push_back({{"name", row.name},
                         {"threads", row.threads},
                         {"step_s", row.seconds},
                         {"elements_per_s", row.elements_per_s},
                         {"vs_torch", row.vs_torch}});
  }
  return j.dump();
}

}  // namespace ds::bench
