// What our CUDA kernels (cross_entropy_kernels.cu, llama_kernels.cu) share: fp32, bf16 and
// fp16 to and from float (rounding to nearest even), and the launch of a kernel by element type.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "engine/model/cross_entropy_kernels.h"  // LogitsType

namespace ds::engine::cuda {

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }
template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) {
  return __float2half_rn(v);
}

// Runs `launch(T{})` with T the element type of `type`; returns "" or CUDA's error for `what`.
template <typename Launch>
std::string DispatchByType(LogitsType type, const char* what, Launch&& launch) {
  switch (type) {
    case LogitsType::kFloat32: launch(float{}); break;
    case LogitsType::kBFloat16: launch(__nv_bfloat16{}); break;
    case LogitsType::kFloat16: launch(__half{}); break;
  }
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : std::string(what) + ": " + cudaGetErrorString(e);
}

}  // namespace ds::engine::cuda
