// What this process's LibTorch can use: its version, CUDA, GPUs, NCCL, Gloo. Printed by
// `dsrun --version` and checked by `dsrun doctor`.
// Thread safety: QueryRuntime may be called from any thread.
#pragma once

#include <cstdint>
#include <string>

namespace ds::engine {

struct RuntimeInfo {
  std::string torch_version;  // "2.11.0"
  bool cuda_built = false;    // LibTorch was built with CUDA
  bool cuda_available = false;
  int gpu_count = 0;
  std::string cuda_version;  // the CUDA runtime LibTorch was built against, e.g. "13.0"
  std::string nccl_version;  // empty without NCCL
  bool gloo_built = false;
};

RuntimeInfo QueryRuntime();
std::string DescribeRuntime(const RuntimeInfo& info);  // one line per item
// This host's physical memory in bytes; 0 where the system does not say. The real host's
// (io::Env::Default()); code holding an Env asks it: env->PhysicalMemoryBytes().
uint64_t PhysicalMemoryBytes();
// Total memory of GPU `index` in bytes; 0 without CUDA or without that GPU.
uint64_t GpuMemoryBytes(int index);

}  // namespace ds::engine
