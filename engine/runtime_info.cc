#include "engine/runtime_info.h"

#include <ATen/Context.h>
#include <torch/cuda.h>

#include "engine/torch_compat.h"
#include "io/env.h"

#if DS_TORCH_HAS_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/NCCLUtils.hpp>
#endif

namespace ds::engine {

RuntimeInfo QueryRuntime() {
  RuntimeInfo info;
  info.torch_version = TORCH_VERSION;
  info.cuda_built = at::hasCUDA() || at::globalContext().hasCUDA();
#ifdef USE_C10D_NCCL
  info.cuda_built = true;
  info.nccl_version = c10d::getNcclVersion();
#endif
#ifdef DS_TORCH_CUDA_VERSION
  info.cuda_version = DS_TORCH_CUDA_VERSION;
#endif
#ifdef USE_C10D_GLOO
  info.gloo_built = true;
#endif
  info.cuda_available = torch::cuda::is_available();
  info.gpu_count = info.cuda_available ? static_cast<int>(torch::cuda::device_count()) : 0;
  return info;
}

uint64_t PhysicalMemoryBytes() { return io::Env::Default()->PhysicalMemoryBytes(); }

uint64_t GpuMemoryBytes(int index) {
#if DS_TORCH_HAS_CUDA
  if (!torch::cuda::is_available() || index < 0 ||
      index >= static_cast<int>(torch::cuda::device_count())) {
    return 0;
  }
  return static_cast<uint64_t>(at::cuda::getDeviceProperties(index)->totalGlobalMem);
#else
  (void)index;
  return 0;
#endif
}

std::string DescribeRuntime(const RuntimeInfo& i) {
  std::string out = "LibTorch " + i.torch_version + "\n";
  out += "CUDA: " + std::string(i.cuda_built ? "built" : "not built");
  if (!i.cuda_version.empty()) out += " (" + i.cuda_version + ")";
  out += i.cuda_available ? ", " + std::to_string(i.gpu_count) + " GPU(s) visible\n"
                          : ", no GPU visible\n";
  out += "NCCL: " + (i.nccl_version.empty() ? std::string("not built") : i.nccl_version) + "\n";
  out += "Gloo: " + std::string(i.gloo_built ? "built" : "not built") + "\n";
  return out;
}

}  // namespace ds::engine
