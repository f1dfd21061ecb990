#include <cuda_runtime.h>

#include "engine/model/internal/cuda_elements.cuh"
#include "engine/model/llama_kernels.h"

namespace ds::engine::cuda {
namespace {

constexpr int kThreads = 256;

// One thread per pair (j, j + h) of one head of one row.
template <typename T>
__global__ void RotaryKernel(const T* x, T* out, int64_t pairs, int64_t heads, int64_t half,
                             int64_t seq, const float* __restrict__ cos,
                             const float* __restrict__ sin, float sign) {
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

template <typename T>
__global__ void SwiGluKernel(const T* __restrict__ gate, const T* __restrict__ up,
                             T* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = ToFloat(gate[i]);
    out[i] = FromFloat<T>(g / (1.f + expf(-g)) * ToFloat(up[i]));
  }
}

template <typename T>
__global__ void SwiGluBackwardKernel(const T* __restrict__ gate, const T* __restrict__ up,
                                     const T* __restrict__ grad, T* __restrict__ grad_gate,
                                     T* __restrict__ grad_up, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = ToFloat(gate[i]), u = ToFloat(up[i]), go = ToFloat(grad[i]);
    const float s = 1.f / (1.f + expf(-g));  // sigmoid
    grad_gate[i] = FromFloat<T>(go * u * s * (1.f + g * (1.f - s)));
    grad_up[i] = FromFloat<T>(go * g * s);
  }
}

unsigned GridFor(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 * 32 ? blocks : 65535 * 32);
}

}  // namespace

std::string RotaryEmbedding(LogitsType type, const void* x, void* out, int64_t rows, int64_t heads,
                            int64_t head_dim, int64_t seq, const float* cos, const float* sin,
                            bool backward, void* stream) {
  const int64_t half = head_dim / 2;
  const int64_t pairs = rows * heads * half;
  if (pairs == 0) return "";
  if (head_dim % 2 != 0 || seq <= 0) return "rotary kernel: head_dim must be even and seq > 0";
  const float sign = backward ? -1.f : 1.f;
  auto* st = static_cast<cudaStream_t>(stream);
  return DispatchByType(type, "rotary kernel", [&](auto tag) {
    using T = decltype(tag);
    RotaryKernel<T><<<GridFor(pairs), kThreads, 0, st>>>(
        static_cast<const T*>(x), static_cast<T*>(out), pairs, heads, half, seq, cos, sin, sign);
  });
}

std::string SwiGlu(LogitsType type, const void* gate, const void* up, void* out, int64_t n,
                   void* stream) {
  if (n == 0) return "";
  return DispatchByType(type, "SwiGLU kernel", [&](auto tag) {
    using T = decltype(tag);
    SwiGluKernel<T><<<GridFor(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(gate), static_cast<const T*>(up), static_cast<T*>(out), n);
  });
}

std::string SwiGluBackward(LogitsType type, const void* gate, const void* up, const void* grad,
                           void* grad_gate, void* grad_up, int64_t n, void* stream) {
  if (n == 0) return "";
  return DispatchByType(type, "SwiGLU backward kernel", [&](auto tag) {
    using T = decltype(tag);
    SwiGluBackwardKernel<T><<<GridFor(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(gate), static_cast<const T*>(up), static_cast<const T*>(grad),
        static_cast<T*>(grad_gate), static_cast<T*>(grad_up), n);
  });
}

}  // namespace ds::engine::cuda
