#include <cuda_runtime.h>

#include "engine/model/internal/cuda_elements.cuh"
#include "engine/model/rope_kernels.h"

namespace ds::engine::cuda {
namespace {

constexpr int kThreads = 256;

// One thread per pair (j, j + h) of one head of one row.
template <typename T>
__global__ void RotaryKernel(const T* x, T* out, int64_t pairs,
                             int64_t heads, int64_t half, int64_t seq,
                             const float* __restrict__ cos, const float* __restrict__ sin,
                             float sign) {
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < pairs;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = p % half;
    const int64_t head = p / half;  // over rows x heads
    const int64_t pos = (head / heads) % seq;
    const int64_t at = head * 2 * half + j;
    const float c = cos[pos * 2 * half + j];
    const float s = sign * sin[pos * 2 * half + j];
    const float a = ToFloat(x[at]), b = ToFloat(x[at + half]);
    out[at] = FromFloat<T>(a * c - b * s);
    out[at + half] = FromFloat<T>(b * c + a * s);
  }
}

}  // namespace

std::string RotaryEmbedding(LogitsType type, const void* x, void* out, int64_t rows, int64_t heads,
                            int64_t head_dim, int64_t seq, const float* cos, const float* sin,
                            bool backward, void* stream) {
  const int64_t half = head_dim / 2;
  const int64_t pairs = rows * heads * half;
  if (pairs == 0) return "";
  if (head_dim % 2 != 0 || seq <= 0) return "rotary kernel: head_dim must be even and seq > 0";
  const int64_t blocks = (pairs + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < 65535 * 32 ? blocks : 65535 * 32);
  const float sign = backward ? -1.f : 1.f;
  auto* st = static_cast<cudaStream_t>(stream);
  switch (type) {
    case LogitsType::kFloat32:
      RotaryKernel<float><<<grid, kThreads, 0, st>>>(static_cast<const float*>(x),
                                                      static_cast<float*>(out), pairs, heads, half,
                                                      seq, cos, sin, sign);
      break;
    case LogitsType::kBFloat16:
      RotaryKernel<__nv_bfloat16><<<grid, kThreads, 0, st>>>(
          static_cast<const __nv_bfloat16*>(x), static_cast<__nv_bfloat16*>(out), pairs, heads,
          half, seq, cos, sin, sign);
      break;
    case LogitsType::kFloat16:
      RotaryKernel<__half><<<grid, kThreads, 0, st>>>(static_cast<const __half*>(x),
                                                       static_cast<__half*>(out), pairs, heads,
                                                       half, seq, cos, sin, sign);
      break;
  }
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : std::string("rotary kernel: ") + cudaGetErrorString(e);
}

}  // namespace ds::engine::cuda
