// The probes that feed StepMetrics: section timer, process memory, throughput and MFU.
#include <array>
#include <cstdlib>

#include "engine/monitor/monitor.h"

namespace ds::engine {

// ---- StepTimer

void StepTimer::Start(std::string_view section) {
  auto it = sections_.find(section);
  if (it == sections_.end()) it = sections_.emplace(std::string(section), Section{}).first;
  it->second.started_micros = env_->NowMicros();
}

void StepTimer::Stop(std::string_view section) {
  auto it = sections_.find(section);
  if (it == sections_.end() || !it->second.started_micros) return;
  const uint64_t now = env_->NowMicros();
  it->second.seconds += static_cast<double>(now - *it->second.started_micros) / 1e6;
  it->second.started_micros.reset();
}

double StepTimer::Seconds(std::string_view section) const {
  auto it = sections_.find(section);
  return it == sections_.end() ? 0 : it->second.seconds;
}

void StepTimer::TakeInto(StepMetrics* m) {
  const uint64_t now = env_->NowMicros();
  for (auto& [name, s] : sections_) {
    if (name == "forward") {
      m->forward_s = s.seconds;
    } else if (name == "backward") {
      m->backward_s = s.seconds;
    } else if (name == "optimizer") {
      m->optimizer_s = s.seconds;
    } else {
      m->extras[name + "_s"] = s.seconds;
    }
    s.seconds = 0;
    // A section still running (a step boundary inside it) counts from now on for the next step.
    if (s.started_micros) s.started_micros = now;
  }
}

// ---- process memory

Result<ProcessMemory> ParseProcStatus(std::string_view text) {
  // Lines look like "VmRSS:\t  123456 kB".
  auto field = [&](std::string_view name) -> std::optional<uint64_t> {
    for (size_t pos = 0; pos < text.size();) {
      size_t eol = text.find('\n', pos);
      if (eol == std::string_view::npos) eol = text.size();
      std::string_view line = text.substr(pos, eol - pos);
      pos = eol + 1;
      if (line.substr(0, name.size()) != name || line.size() <= name.size() ||
          line[name.size()] != ':') {
        continue;
      }
      const std::string rest(line.substr(name.size() + 1));
      char* end = nullptr;
      const unsigned long long kib = std::strtoull(rest.c_str(), &end, 10);
      if (end == rest.c_str() || std::string_view(end).find("kB") == std::string_view::npos) {
        return std::nullopt;
      }
      return static_cast<uint64_t>(kib) * 1024;
    }
    return std::nullopt;
  };
  std::optional<uint64_t> rss = field("VmRSS");
  std::optional<uint64_t> hwm = field("VmHWM");
  if (!rss || !hwm) {
    return Status::Corruption("process status has no VmRSS/VmHWM lines in kB");
  }
  return ProcessMemory{*rss, *hwm};
}

Result<ProcessMemory> ReadProcessMemory(io::Env* env) {
  const std::string path = "/proc/self/status";
  auto context = [&](const Status& s) {
    return s.WithContext(
        "reading process memory from " + path +
        (s.IsNotFound() ? " (no /proc here: not Linux, or an in-memory Env)" : ""));
  };
  Result<std::unique_ptr<io::File>> file = env->OpenFile(path, {io::OpenMode::kRead});
  if (!file.ok()) return context(file.status());
  // /proc files report size 0, so read until a short read rather than Size() bytes.
  std::string text;
  std::array<char, 4096> buf;
  for (;;) {
    Result<size_t> n = (*file)->ReadAt(text.size(), std::as_writable_bytes(std::span(buf)));
    if (!n.ok()) return context(n.status());
    text.append(buf.data(), *n);
    if (*n < buf.size()) break;
  }
  (void)(*file)->Close();
  Result<ProcessMemory> m = ParseProcStatus(text);
  if (!m.ok()) return context(m.status());
  return m;
}

Result<uint64_t> ProcessRssBytes(io::Env* env) {
  DS_ASSIGN_OR_RETURN(ProcessMemory m, ReadProcessMemory(env));
  return m.rss_bytes;
}

// ---- throughput and MFU

double TokensPerSecond(int64_t tokens, double seconds) {
  return seconds > 0 ? static_cast<double>(tokens) / seconds : 0;
}

namespace {

struct DevicePeak {
  const char* name_part;  // matched as a substring of the CUDA device name, first match wins
  double flops;           // dense bf16/fp16 tensor-core FLOP/s (NVIDIA data sheets, sparsity
                          // figures halved)
};
const DevicePeak kDevicePeaks[] = {
    {"H100 PCIe", 756e12},  // "NVIDIA H100 PCIe"
    {"H100 NVL", 835e12},   // "NVIDIA H100 NVL"
    {"H100", 989e12},       // "NVIDIA H100 80GB HBM3" (SXM)
    {"H200 NVL", 835e12},   // "NVIDIA H200 NVL"
    {"H200", 989e12},       // "NVIDIA H200", "NVIDIA GH200 480GB"
    {"A100", 312e12},       // "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe", ...
    {"L40S", 362e12},       // "NVIDIA L40S"
    {"L40", 181e12},        // "NVIDIA L40"
    {"L4", 121e12},         // "NVIDIA L4"
    {"V100", 125e12},       // "Tesla V100-SXM2-16GB" (fp16; no bf16)
};

}  // namespace

std::optional<double> PeakFlopsPerDevice(std::string_view device_name) {
  for (const DevicePeak& d : kDevicePeaks) {
    if (device_name.find(d.name_part) != std::string_view::npos) return d.flops;
  }
  return std::nullopt;
}

double TransformerFlopsPerToken(int64_t params, int64_t n_layer, int64_t d_model, int64_t seq_len) {
  return 6.0 * static_cast<double>(params) + 12.0 * static_cast<double>(n_layer) *
                                                 static_cast<double>(d_model) *
                                                 static_cast<double>(seq_len);
}

std::optional<double> ModelFlopsUtilization(double flops_per_token, double tokens_per_s,
                                            std::string_view device_name, int num_devices) {
  std::optional<double> peak = PeakFlopsPerDevice(device_name);
  if (!peak || num_devices <= 0) return std::nullopt;
  return flops_per_token * tokens_per_s / (*peak * num_devices);
}

}  // namespace ds::engine
