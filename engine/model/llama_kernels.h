// The Llama's elementwise work on the GPU as CUDA kernels of our own, each one pass over its
// tensors where the written-out form is several LibTorch kernels that each read and write them:
// - rotary position embeddings, x * cos + rotate_half(x) * sin and its gradient (written out: a
//   negation, a cat, two products and a sum, as many again backward; profiled at ~9% of a
//   Llama-3.2-1B-shaped step on an H100);
// - the SwiGLU gate, silu(gate) * up and both gradients (written out: silu, a product, and
//   backward silu's gradient and two products).
// Every result is formed in fp32 and rounded once to the tensors' type. No LibTorch or CUDA
// header here: engine/model/llama.cc wraps them.
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

// out[i] = silu(gate[i]) * up[i] over `n` contiguous elements of `type`. Returns "" or CUDA's
// error.
std::string SwiGlu(LogitsType type, const void* gate, const void* up, void* out, int64_t n,
                   void* stream);
// Its gradient: grad_gate[i] = grad[i] * up[i] * silu'(gate[i]), grad_up[i] = grad[i] *
// silu(gate[i]).
std::string SwiGluBackward(LogitsType type, const void* gate, const void* up, const void* grad,
                           void* grad_gate, void* grad_up, int64_t n, void* stream);

}  // namespace ds::engine::cuda
