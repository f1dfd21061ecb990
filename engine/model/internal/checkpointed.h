// Activation checkpointing of one block whose forward takes the hidden states alone (the built-in
// GPT's and GPT2LMHeadModel's): runs it without keeping its activations and runs it again in the
// backward pass. The blocks have no randomness (no dropout), so the recomputation is exact. The
// block travels as an address (autograd saves no C++ object).
// Thread safety: as the block's.
#pragma once

#include <torch/autograd.h>

namespace ds::engine::internal {

template <class Block>
struct CheckpointedBlock : public torch::autograd::Function<CheckpointedBlock<Block>> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x,
                               int64_t block_ptr) {
    ctx->save_for_backward({x});
    ctx->saved_data["block"] = block_ptr;
    torch::NoGradGuard no_grad;
    return reinterpret_cast<Block*>(block_ptr)->forward(x);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto* block = reinterpret_cast<Block*>(ctx->saved_data["block"].toInt());
    torch::Tensor x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    torch::Tensor y;
    {
      torch::AutoGradMode enable(true);
      y = block->forward(x);
    }
    torch::autograd::backward({y}, {grad_out[0]});
    return {x.grad(), torch::Tensor()};
  }
};

}  // namespace ds::engine::internal
