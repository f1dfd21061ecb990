#include "engine/model/gpt.h"

#include <ATen/ops/_log_softmax.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <torch/autograd.h>
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/loss.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string_view>

#include "engine/config/memory.h"
#include "engine/model/internal/checkpointed.h"
#include "engine/model/param_init.h"

#if DS_CUDA_KERNELS
#include <c10/cuda/CUDAStream.h>

#include "engine/model/cross_entropy_kernels.h"
#endif

namespace ds::engine {
namespace {

namespace F = torch::nn::functional;

bool EndsWith(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The parameters tensor parallelism cuts, by the end of their names. Column-parallel: output
// rows (c_attn's are q, k and v: three parts). Row-parallel: input columns; their bias is added
// once, after the sum, so it is whole everywhere.
struct SplitRule {
  const char* suffix;
  ckpt::TpSplit split;
};
constexpr SplitRule kSplitRules[] = {{"attn_c_attn.weight", {0, 3}}, {"attn_c_attn.bias", {0, 3}},
                                     {"mlp_c_fc.weight", {0, 1}},    {"mlp_c_fc.bias", {0, 1}},
                                     {"attn_c_proj.weight", {1, 1}}, {"mlp_c_proj.weight", {1, 1}}};

// cuBLAS runs a product whose rows are not a multiple of 16 bytes with its slowest kernels
// ("align1": on the H100, sm75 CUTLASS kernels), and GPT-2's vocabulary of 50257 makes every
// row of the logits, and of their gradient, odd: the head's three products took 15.4 ms of a
// 41.5 ms GPT-2 124M step (profiled, micro-batch 8). The loss's logits are computed against the
// tied embedding padded with zero rows to a multiple of 64 and a bias of -inf on the padding, so
// the padded columns add nothing to the softmax and get no gradient; the model is unchanged.
constexpr int64_t kLogitsAlign = 64;

torch::Tensor AlignedLogits(const torch::Tensor& h, const torch::Tensor& wte) {
  const int64_t v = wte.size(0);
  const int64_t padded = (v + kLogitsAlign - 1) / kLogitsAlign * kLogitsAlign;
  if (padded == v || !h.is_cuda()) return torch::matmul(h, wte.t());
  torch::Tensor bias = at::full({padded}, -std::numeric_limits<double>::infinity(), h.options());
  bias.narrow(0, 0, v).zero_();
  return at::addmm(bias, h, at::constant_pad_nd(wte, {0, 0, 0, padded - v}).t());
}

#if DS_CUDA_KERNELS
// The mean cross-entropy through our kernels (cross_entropy_kernels.h): the logits are read in
// their own type and never copied to fp32; backward writes their gradient in one pass.
struct FusedCrossEntropy : public torch::autograd::Function<FusedCrossEntropy> {
  static cuda::LogitsView View(const torch::Tensor& logits) {
    cuda::LogitsView v;
    v.type = logits.scalar_type() == torch::kBFloat16  ? cuda::LogitsType::kBFloat16
             : logits.scalar_type() == torch::kFloat16 ? cuda::LogitsType::kFloat16
                                                       : cuda::LogitsType::kFloat32;
    v.data = logits.data_ptr();
    v.rows = logits.size(0);
    v.cols = logits.size(1);
    v.row_stride = logits.stride(0);
    return v;
  }
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor logits,
                               torch::Tensor targets) {
    TORCH_CHECK(targets.device() == logits.device() && targets.dim() == 1 &&
                    targets.size(0) == logits.size(0),
                "cross-entropy: ", targets.size(0), " targets on ", targets.device(), " for ",
                logits.size(0), " rows of logits on ", logits.device());
    if (logits.stride(1) != 1) logits = logits.contiguous();
    targets = targets.contiguous();
    auto f32 = logits.options().dtype(torch::kFloat32);
    torch::Tensor lse = torch::empty({logits.size(0)}, f32);
    torch::Tensor loss = torch::empty({logits.size(0)}, f32);
    const std::string err = cuda::CrossEntropyForward(View(logits), targets.data_ptr<int64_t>(),
                                                      lse.data_ptr<float>(), loss.data_ptr<float>(),
                                                      c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err.empty(), err);
    ctx->save_for_backward({logits, targets, lse});
    return loss.mean();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const torch::Tensor& logits = saved[0];
    // d(mean)/d(loss[r]) = 1 / rows, times the incoming gradient: kept on the device.
    torch::Tensor scale =
        (grad_out[0].to(torch::kFloat32) / static_cast<double>(logits.size(0))).contiguous();
    torch::Tensor grad = torch::empty_like(logits, torch::MemoryFormat::Contiguous);
    const std::string err = cuda::CrossEntropyBackward(
        View(logits), saved[1].data_ptr<int64_t>(), saved[2].data_ptr<float>(),
        scale.data_ptr<float>(), grad.data_ptr(), grad.stride(0),
        c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err.empty(), err);
    return {grad, torch::Tensor()};
  }
};
#endif

// GPT-2's initialisation, by parameter name.
InitSpec GptInitSpec(const GptOptions& o, const std::string& name) {
  if (EndsWith(name, ".bias")) return InitSpec::Constant(0);
  if (name.rfind("ln_f.", 0) == 0 || name.find(".ln_") != std::string::npos)
    return InitSpec::Constant(1);  // layer norms' weights
  if (name == "wpe.weight") return InitSpec::Normal(0, 0.01);
  if (EndsWith(name, "c_proj.weight"))  // residual projections: 1/sqrt(2L)
    return InitSpec::Normal(0, 0.02 / std::sqrt(2.0 * static_cast<double>(o.n_layer)));
  return InitSpec::Normal(0, 0.02);
}

}  // namespace

ckpt::TpSplit GptTpSplit(const std::string& name) {
  for (const SplitRule& r : kSplitRules) {
    if (EndsWith(name, r.suffix)) return r.split;
  }
  return {};
}

ParamsImpl::ParamsImpl(torch::Tensor w, torch::Tensor b) {
  weight = register_parameter("weight", std::move(w));
  if (b.defined()) bias = register_parameter("bias", std::move(b));
}

BlockImpl::BlockImpl(const GptOptions& o, int64_t layer, const GptPlace* place,
                     const ParamMaker& make)
    : place_(place), n_head_(o.n_head / place->tp) {
  const int64_t c = o.d_model, tp = place->tp;
  const std::string h = "h" + std::to_string(layer) + ".";
  auto layer_params = [&](const char* name, std::vector<int64_t> weight, int64_t bias) {
    return register_module(name, Params(make(h + name + ".weight", std::move(weight)),
                                        make(h + name + ".bias", {bias})));
  };
  ln_1_ = layer_params("ln_1", {c}, c);
  c_attn_ = layer_params("attn_c_attn", {3 * c / tp, c}, 3 * c / tp);
  attn_proj_ = layer_params("attn_c_proj", {c, c / tp}, c);
  ln_2_ = layer_params("ln_2", {c}, c);
  c_fc_ = layer_params("mlp_c_fc", {4 * c / tp, c}, 4 * c / tp);
  mlp_proj_ = layer_params("mlp_c_proj", {c, 4 * c / tp}, c);
}

// x W^T + b through ATen's linear, not the C++ frontend's Linear module: the module's
// functional form multiplies, then adds the bias to a 3-D product as a separate broadcast kernel
// (on the H100, 4 per layer and 5% of GPT-2 124M's step), where ATen flattens to one addmm that
// adds the bias in the GEMM's epilogue.
static torch::Tensor Affine(const Params& lin, const torch::Tensor& x) {
  return at::linear(x, lin->weight, lin->bias);
}

static torch::Tensor Norm(const Params& ln, const torch::Tensor& x) {
  return at::layer_norm(x, {x.size(-1)}, ln->weight, ln->bias, /*eps=*/1e-5);
}

// A row-parallel projection (split.h).
static torch::Tensor RowParallel(const GptPlace* place, const Params& lin,
                                 const torch::Tensor& in) {
  return TpRowLinear(place, in, lin->weight, lin->bias);
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x) {
  // This rank's heads: C_local = n_head_ * hs channels of q, k and v.
  const int64_t B = x.size(0), T = x.size(1), hs = x.size(2) / (n_head_ * place_->tp);
  const int64_t C = n_head_ * hs;
  // Attention: q, k, v each (B, nh, T, hs).
  auto qkv = Affine(c_attn_, TpColumnInput(place_, Norm(ln_1_, x))).split(C, 2);
  auto heads = [&](const torch::Tensor& t) { return t.view({B, T, n_head_, hs}).transpose(1, 2); };
  torch::Tensor y = at::scaled_dot_product_attention(heads(qkv[0]), heads(qkv[1]), heads(qkv[2]),
                                                     /*attn_mask=*/{}, /*dropout_p=*/0.0,
                                                     /*is_causal=*/true);
  torch::Tensor h =
      x + RowParallel(place_, attn_proj_, y.transpose(1, 2).contiguous().view({B, T, C}));
  // MLP with GPT-2's tanh-approximated GELU.
  return h + RowParallel(place_, mlp_proj_,
                         F::gelu(Affine(c_fc_, TpColumnInput(place_, Norm(ln_2_, h))),
                                 F::GELUFuncOptions().approximate("tanh")));
}

GptImpl::GptImpl(const GptOptions& o, GptPlace place) : o_(o), place_(std::move(place)) {
  TORCH_CHECK(place_.tp >= 1 && o.n_head % place_.tp == 0 && place_.pp >= 1 &&
                  place_.pp <= o.n_layer && place_.stage >= 0 && place_.stage < place_.pp,
              "GPT of ", o.n_layer, " layers and ", o.n_head, " heads cannot be split ", place_.tp,
              "-way tensor-parallel over ", place_.pp, " pipeline stages");
  TORCH_CHECK(place_.tp == 1 || place_.tp_all_reduce, "tensor parallelism needs tp_all_reduce");
  const ParamMaker make = [this](const std::string& name, std::vector<int64_t> shape) {
    return MakeParam(name, std::move(shape));
  };
  const int64_t c = o.d_model;
  if (first_stage() || last_stage())
    wte_ = register_module("wte", Params(make("wte.weight", {o.vocab, c}), torch::Tensor()));
  if (first_stage())
    wpe_ = register_module("wpe", Params(make("wpe.weight", {o.seq_len, c}), torch::Tensor()));
  const auto [first, last] = StageLayers(o.n_layer, place_.pp, place_.stage);
  first_block_ = first;
  for (int64_t l = first; l < last; ++l) {
    blocks_.push_back(register_module("h" + std::to_string(l), Block(o, l, &place_, make)));
  }
  if (last_stage())
    ln_f_ = register_module("ln_f", Params(make("ln_f.weight", {c}), make("ln_f.bias", {c})));
  ModelConfig whole;  // the config's formula: the whole model, whatever this rank holds
  whole.n_layer = o.n_layer;
  whole.d_model = o.d_model;
  whole.seq_len = o.seq_len;
  whole.vocab = o.vocab;
  whole_parameters_ = ModelParameterCount(whole);
}

// ---- initial values

torch::Tensor GptImpl::MakeParam(const std::string& name, std::vector<int64_t> shape) {
  shapes_[name] = shape;
  if (o_.deferred) return ShapeOnly(shape);
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  // A tensor of its own (a view would stay one, as far as autograd knows, after set_data).
  return at::empty(shape, at::kFloat).copy_(PartOfWhole(name, shape, 0, n).view(shape));
}

torch::Tensor GptImpl::InitialValues(const std::string& name, int64_t begin, int64_t end) const {
  auto it = shapes_.find(name);
  TORCH_CHECK(it != shapes_.end(), "the GPT has no parameter ", name);
  return PartOfWhole(name, it->second, begin, end);
}

// Elements [begin, end) of this rank's part (of `shape`) of the whole model's parameter `name`.
torch::Tensor GptImpl::PartOfWhole(const std::string& name, const std::vector<int64_t>& shape,
                                   int64_t begin, int64_t end) const {
  const InitSpec spec = GptInitSpec(o_, name);
  return TpPartRange(shape, GptTpSplit(name), place_, begin, end,
                     [&](const std::vector<int64_t>& whole_shape, int64_t b, int64_t e) {
                       int64_t n = 1;
                       for (int64_t d : whole_shape) n *= d;
                       return InitRange(spec, o_.seed, name, n, b, e);
                     });
}

torch::Tensor GptImpl::Embed(const torch::Tensor& idx) {
  const int64_t T = idx.size(1);
  TORCH_CHECK(T <= o_.seq_len, "sequence of ", T, " tokens is longer than the model's ",
              o_.seq_len);
  torch::Tensor pos =
      torch::arange(T, torch::TensorOptions().dtype(torch::kLong).device(idx.device()));
  return at::embedding(wte_->weight, idx) + at::embedding(wpe_->weight, pos);  // (B, T, C)
}

torch::Tensor GptImpl::Blocks(torch::Tensor x) {
  for (size_t l = 0; l < blocks_.size(); ++l) {
    BlockImpl* b = blocks_[l].get();
    x = RunUnit(static_cast<int>(l), x, [this, b](const torch::Tensor& in) {
      return o_.activation_checkpointing && !units_recomputed() && is_training() &&
                     torch::GradMode::is_enabled()
                 ? internal::CheckpointedBlock<BlockImpl>::apply(in, reinterpret_cast<int64_t>(b))
                 : b->forward(in);
    });
  }
  return x;
}

torch::Tensor GptImpl::forward(const torch::Tensor& idx) {
  TORCH_CHECK(place_.pp == 1, "forward() runs the whole model: use stage_forward with stages");
  // Tied output embedding: (B, T, V).
  return torch::matmul(Norm(ln_f_, Blocks(Embed(idx))), wte_->weight.t());
}

torch::Tensor GptImpl::loss(const torch::Tensor& idx, const torch::Tensor& targets) {
  return stage_forward(idx, targets);
}

torch::Tensor GptImpl::stage_forward(const torch::Tensor& in, const torch::Tensor& targets) {
  torch::Tensor x = Blocks(first_stage() ? Embed(in) : in);
  if (!last_stage()) return x;
  // (B * T, V), or (B * T, V rounded up) with -inf in the added columns on a GPU.
  torch::Tensor logits = AlignedLogits(Norm(ln_f_, x).reshape({-1, x.size(-1)}), wte_->weight);
  return CrossEntropyInFp32(logits, targets.reshape({-1}));
}

torch::Tensor CrossEntropyInFp32(const torch::Tensor& logits, const torch::Tensor& targets) {
#if DS_CUDA_KERNELS
  const auto t = logits.scalar_type();
  if (logits.is_cuda() && logits.dim() == 2 && targets.scalar_type() == torch::kLong &&
      (t == torch::kFloat32 || t == torch::kBFloat16 || t == torch::kFloat16)) {
    return FusedCrossEntropy::apply(logits, targets);
  }
#endif
  if (logits.is_cuda() && logits.scalar_type() == torch::kFloat16) {
    // The log-softmax reads the fp16 logits and writes fp32: the same values as converting
    // first, without an fp32 copy of the logits (B * T * V * 4 bytes) written and read forward
    // and backward. LibTorch's CUDA kernel does this for fp16 only ("conversion is supported for
    // Half type only"), its CPU kernel not at all: bf16 converts first.
    return F::nll_loss(at::_log_softmax(logits, 1, /*half_to_float=*/true), targets);
  }
  return F::cross_entropy(logits.to(torch::kFloat32), targets);
}

std::map<std::string, ckpt::TpSplit> GptImpl::tp_splits() const {
  std::map<std::string, ckpt::TpSplit> out;
  for (int64_t l = 0; l < o_.n_layer; ++l) {
    for (const SplitRule& r : kSplitRules) out["h" + std::to_string(l) + "." + r.suffix] = r.split;
  }
  return out;
}

std::vector<std::string> GptImpl::unit_prefixes() const {
  std::vector<std::string> out;
  for (size_t l = 0; l < blocks_.size(); ++l)
    out.push_back("h" + std::to_string(first_block_ + static_cast<int64_t>(l)) + ".");
  return out;
}

int64_t GptImpl::parameter_count() const { return whole_parameters_; }

double GptImpl::flops_per_token() const {
  const double n = static_cast<double>(whole_parameters_ - o_.seq_len * o_.d_model);
  return 6.0 * n + 12.0 * static_cast<double>(o_.n_layer * o_.d_model * o_.seq_len);
}

}  // namespace ds::engine
