// Rotary position embeddings on the GPU in one pass: x * cos + rotate_half(x) * sin (and its
// gradient) as one CUDA kernel of our own, where the written-out form is six LibTorch kernels
// (two narrows, a negation, a cat, two products and a sum; as many again backward) that each
// read and write the whole of q or k: profiled at ~9% of a Llama-3.2-1B-shaped step on an H100.
// The sum is formed in fp32 and rounded once to the tensor's type. No LibTorch or CUDA header
// here: engine/model/llama.cc wraps it.
// Thread safety: each call only queues work on `stream`.
#pragma once

#include <cstdint>
#include <string>

#include "engine/model/cross_entropy_kernels.h"  // LogitsType: the element types

namespace ds::engine::cuda {

// x: rows x heads x head_dim elements, contiguous, of `type`; row r is position r % seq. cos and
// sin: seq x head_dim fp32, each row the concatenation of two equal halves (the rotary tables).
// out (may be x): for each head, with h = head_dim / 2 and j < h,
//   forward:  out[j] = x[j] cos[j] - x[j+h] sin[j],  out[j+h] = x[j+h] cos[j] + x[j] sin[j]
//   backward: the same with sin negated (the rotation's transpose), x being the gradient.
// Returns "" or CUDA's error.
std::string RotaryEmbedding(LogitsType type, const void* x, void* out, int64_t rows, int64_t heads,
                            int64_t head_dim, int64_t seq, const float* cos, const float* sin,
                            bool backward, void* stream);

}  // namespace ds::engine::cuda
