#include "engine/model/split.h"

#include <ATen/ops/cat.h>
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

at::Tensor TpPartOf(const at::Tensor& whole, ckpt::TpSplit split, const ModelPlace& place) {
  if (split.dim < 0 || place.tp == 1) return whole.contiguous();
  const std::vector<int64_t> shape = whole.sizes().vec();
  std::vector<at::Tensor> pieces;
  for (const ckpt::TpBox& box : ckpt::TpBoxes(shape, split, static_cast<uint32_t>(place.tp),
                                              static_cast<uint32_t>(place.tp_rank))) {
    at::Tensor t = whole;
    for (size_t d = 0; d < shape.size(); ++d)
      t = t.narrow(static_cast<int64_t>(d), box.offset[d], box.length[d]);
    pieces.push_back(t);
  }
  return at::cat(pieces, split.dim).contiguous();
}

at::Tensor TpColumnInput(const ModelPlace* place, const at::Tensor& x) {
  return place->tp == 1 ? x : ColumnParallelInput::apply(x, reinterpret_cast<int64_t>(place));
}

at::Tensor TpSum(const ModelPlace* place, const at::Tensor& partial) {
  return place->tp == 1 ? partial : RowParallelSum::apply(partial, reinterpret_cast<int64_t>(place));
}

}  // namespace ds::engine
