// Fused cross-entropy on the GPU: the loss's two passes over the logits, written as CUDA
// kernels of our own because LibTorch has none that reads 16-bit logits and works in fp32 (its
// log-softmax converts bf16 first, and writes, then reads back, an fp32 copy of the logits
// forward and of their gradient backward: for GPT-2 124M at 8 x 1024 tokens, 1.6 GB each). These
// read the logits in their own type, do every sum in fp32, and write the gradient once, in the
// logits' type. No LibTorch or CUDA header here: FusedCrossEntropy in engine/model/gpt.cc wraps
// them.
// Thread safety: each call only queues work on `stream`.
#pragma once

#include <cstdint>
#include <string>

namespace ds::engine::cuda {

enum class LogitsType { kFloat32, kBFloat16, kFloat16 };

struct LogitsView {
  LogitsType type = LogitsType::kFloat32;
  const void* data = nullptr;  // rows x cols, row r at data + r * row_stride elements
  int64_t rows = 0, cols = 0, row_stride = 0;
};

// For each row r: lse[r] = log(sum_j exp(x[r][j])) and loss[r] = lse[r] - x[r][targets[r]], in
// fp32. Logits of -inf (padding) count for nothing. A target outside [0, cols) stops the kernel
// (a device-side trap, as LibTorch's own assertion does). Returns "" or CUDA's error.
std::string CrossEntropyForward(const LogitsView& logits, const int64_t* targets, float* lse,
                                float* loss, void* stream);

// grad[r][j] = (exp(x[r][j] - lse[r]) - (j == targets[r])) * *scale, written in the logits'
// type, rows of `grad_row_stride` elements (grad may be the logits themselves). `scale` is on
// the device (the loss's incoming gradient over the rows, for the mean), so no host read.
std::string CrossEntropyBackward(const LogitsView& logits, const int64_t* targets, const float* lse,
                                 const float* scale, void* grad, int64_t grad_row_stride,
                                 void* stream);

}  // namespace ds::engine::cuda
