#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <utility>

#include "engine/model/cross_entropy_kernels.h"
#include "engine/model/internal/cuda_elements.cuh"

namespace ds::engine::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// 16 bytes of logits: one load or store instruction.
template <typename T>
struct alignas(16) Pack {
  static constexpr int kN = 16 / sizeof(T);
  T v[kN];
};

// A running log-sum-exp: the largest value seen and the sum of exp(x - max).
struct Lse {
  float max = -INFINITY, sum = 0.f;
  __device__ void Add(float m, float s) {  // merges another (m, s)
    if (m == -INFINITY) return;
    if (m > max) {
      sum = sum * expf(max - m) + s;  // expf(-inf) = 0 when max was -inf
      max = m;
    } else {
      sum += s * expf(m - max);
    }
  }
};

// Whether rows can be read 16 bytes at a time.
template <typename T>
__device__ __forceinline__ bool Packed(const void* p, int64_t cols, int64_t stride) {
  constexpr int n = Pack<T>::kN;
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && cols % n == 0 && stride % n == 0;
}

template <typename T>
__global__ void ForwardKernel(const T* __restrict__ logits, int64_t cols, int64_t stride,
                              const int64_t* __restrict__ targets, float* __restrict__ lse_out,
                              float* __restrict__ loss_out) {
  const int64_t row = blockIdx.x;
  const T* x = logits + row * stride;
  Lse acc;
  if (Packed<T>(logits, cols, stride)) {
    constexpr int n = Pack<T>::kN;
    const Pack<T>* p = reinterpret_cast<const Pack<T>*>(x);
    for (int64_t i = threadIdx.x; i < cols / n; i += kThreads) {
      const Pack<T> pk = p[i];
      float v[n], m = -INFINITY;
#pragma unroll
      for (int k = 0; k < n; ++k) m = fmaxf(m, v[k] = ToFloat(pk.v[k]));
      if (m == -INFINITY) continue;
      float s = 0.f;
#pragma unroll
      for (int k = 0; k < n; ++k) s += expf(v[k] - m);
      acc.Add(m, s);
    }
  } else {
    for (int64_t j = threadIdx.x; j < cols; j += kThreads) acc.Add(ToFloat(x[j]), 1.f);
  }
  // The block's threads merge: within each warp, then the warps' results.
  for (int o = 16; o > 0; o /= 2) {
    const float m = __shfl_xor_sync(0xffffffffu, acc.max, o);
    const float s = __shfl_xor_sync(0xffffffffu, acc.sum, o);
    acc.Add(m, s);
  }
  __shared__ float maxes[kWarps], sums[kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    maxes[warp] = acc.max;
    sums[warp] = acc.sum;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  Lse all;
  for (int w = 0; w < kWarps; ++w) all.Add(maxes[w], sums[w]);
  const int64_t t = targets[row];
  if (t < 0 || t >= cols) {
    printf("cross-entropy: row %lld has target %lld, outside the vocabulary [0, %lld)\n",
           static_cast<long long>(row), static_cast<long long>(t), static_cast<long long>(cols));
    __trap();
  }
  const float lse = all.max + logf(all.sum);
  lse_out[row] = lse;
  loss_out[row] = lse - ToFloat(x[t]);
}

template <typename T>
__global__ void BackwardKernel(const T* logits, int64_t cols, int64_t stride,
                               const int64_t* __restrict__ targets, const float* __restrict__ lse,
                               const float* __restrict__ scale_ptr, T* grad, int64_t grad_stride) {
  const int64_t row = blockIdx.x;
  const T* x = logits + row * stride;
  T* g = grad + row * grad_stride;
  const float l = lse[row], scale = *scale_ptr;
  const int64_t t = targets[row];
  if (Packed<T>(logits, cols, stride) && Packed<T>(grad, cols, grad_stride)) {
    constexpr int n = Pack<T>::kN;
    const Pack<T>* p = reinterpret_cast<const Pack<T>*>(x);
    Pack<T>* q = reinterpret_cast<Pack<T>*>(g);
    for (int64_t i = threadIdx.x; i < cols / n; i += kThreads) {
      const Pack<T> pk = p[i];
      Pack<T> out;
#pragma unroll
      for (int k = 0; k < n; ++k) {
        const float one = i * n + k == t ? 1.f : 0.f;
        out.v[k] = FromFloat<T>((expf(ToFloat(pk.v[k]) - l) - one) * scale);
      }
      q[i] = out;
    }
  } else {
    for (int64_t j = threadIdx.x; j < cols; j += kThreads) {
      g[j] = FromFloat<T>((expf(ToFloat(x[j]) - l) - (j == t ? 1.f : 0.f)) * scale);
    }
  }
}

// DispatchByType, for one block per row: CUDA's grid holds at most 2^31 - 1 blocks.
template <typename Launch>
std::string Dispatch(LogitsType type, int64_t rows, const char* what, Launch&& launch) {
  if (rows > 0x7fffffff)
    return std::string(what) + ": " + std::to_string(rows) +
           " rows (a block each) exceed CUDA's grid";
  return DispatchByType(type, what, std::forward<Launch>(launch));
}

}  // namespace

std::string CrossEntropyForward(const LogitsView& l, const int64_t* targets, float* lse,
                                float* loss, void* stream) {
  if (l.rows == 0) return "";
  return Dispatch(l.type, l.rows, "cross-entropy forward kernel", [&](auto tag) {
    using T = decltype(tag);
    ForwardKernel<<<static_cast<unsigned>(l.rows), kThreads, 0,
                    static_cast<cudaStream_t>(stream)>>>(static_cast<const T*>(l.data), l.cols,
                                                         l.row_stride, targets, lse, loss);
  });
}

std::string CrossEntropyBackward(const LogitsView& l, const int64_t* targets, const float* lse,
                                 const float* scale, void* grad, int64_t grad_row_stride,
                                 void* stream) {
  if (l.rows == 0) return "";
  return Dispatch(l.type, l.rows, "cross-entropy backward kernel", [&](auto tag) {
    using T = decltype(tag);
    BackwardKernel<<<static_cast<unsigned>(l.rows), kThreads, 0,
                     static_cast<cudaStream_t>(stream)>>>(static_cast<const T*>(l.data), l.cols,
                                                          l.row_stride, targets, lse, scale,
                                                          static_cast<T*>(grad), grad_row_stride);
  });
}

}  // namespace ds::engine::cuda
