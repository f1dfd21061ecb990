#include "engine/model/split.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/linear.h>
#include <torch/autograd.h>

#include <algorithm>
#include <vector>

namespace ds::engine {
namespace {

// The place travels as an address: autograd saves no C++ object.
const ModelPlace* PlaceAt(int64_t address) { return reinterpret_cast<const ModelPlace*>(address); }

struct ColumnParallelInput : public torch::autograd::Function<ColumnParallelInput> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::Tensor x,
                            int64_t place_ptr) {
    ctx->saved_data["place"] = place_ptr;
    return x;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    at::Tensor g = grad_out[0].contiguous().clone();
    PlaceAt(ctx->saved_data["place"].toInt())->tp_all_reduce(g);
    return {g, at::Tensor()};
  }
};

struct RowParallelSum : public torch::autograd::Function<RowParallelSum> {
  static at::Tensor forward(torch::autograd::AutogradContext* /*ctx*/, at::Tensor x,
                            int64_t place_ptr) {
    at::Tensor y = x.contiguous().clone();
    PlaceAt(place_ptr)->tp_all_reduce(y);
    return y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* /*ctx*/,
                                                 torch::autograd::variable_list grad_out) {
    return {grad_out[0], at::Tensor()};
  }
};

}  // namespace

at::Tensor TpPartRange(const std::vector<int64_t>& shape, ckpt::TpSplit split,
                       const ModelPlace& place, int64_t begin, int64_t end,
                       const WholeValues& whole) {
  if (split.dim < 0 || place.tp == 1) return whole(shape, begin, end);
  std::vector<int64_t> whole_shape = shape;
  whole_shape[static_cast<size_t>(split.dim)] *= place.tp;
  int64_t n = 1;
  for (int64_t d : whole_shape) n *= d;
  const at::Tensor values = whole(whole_shape, 0, n).view(whole_shape);
  std::vector<at::Tensor> pieces;
  for (const ckpt::TpBox& box : ckpt::TpBoxes(whole_shape, split, static_cast<uint32_t>(place.tp),
                                              static_cast<uint32_t>(place.tp_rank))) {
    at::Tensor t = values;
    for (size_t d = 0; d < whole_shape.size(); ++d)
      t = t.narrow(static_cast<int64_t>(d), box.offset[d], box.length[d]);
    pieces.push_back(t);
  }
  return at::cat(pieces, split.dim).reshape({-1}).narrow(0, begin, end - begin).contiguous();
}

at::Tensor TpColumnInput(const ModelPlace* place, const at::Tensor& x) {
  return place->tp == 1 ? x : ColumnParallelInput::apply(x, reinterpret_cast<int64_t>(place));
}

at::Tensor TpSum(const ModelPlace* place, const at::Tensor& partial) {
  return place->tp == 1 ? partial
                        : RowParallelSum::apply(partial, reinterpret_cast<int64_t>(place));
}

at::Tensor TpRowLinear(const ModelPlace* place, const at::Tensor& x, const at::Tensor& weight,
                       const at::Tensor& bias) {
  // One GEMM with the bias in its epilogue when nothing is summed.
  if (place->tp == 1) return at::linear(x, weight, bias);
  const at::Tensor y = TpSum(place, at::linear(x, weight));
  return bias.defined() ? y + bias : y;
}

}  // namespace ds::engine
