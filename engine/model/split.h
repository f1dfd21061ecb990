// A model split across ranks, Megatron-style: what tensor and pipeline parallelism need from a
// model (engine/train/parallel.h), whichever family it is. The built-in GPT (gpt.h) and the
// Llama family (llama.h) split both ways; transformers' GPT-2 (hf_gpt2.h) into pipeline stages
// only (its Conv1D fuses q, k and v along the columns, which a checkpoint's tensor-parallel
// boxes cannot cut).
//
// Tensor parallelism: each rank holds whole attention heads (the rows of q, k and v for them: a
// column-parallel projection) and a column-parallel slice of the MLP's input projections; the
// output projections are row-parallel, their partial products summed over the tensor-parallel
// group; embeddings, norms and the output head are whole on every rank. Pipeline parallelism: a
// rank holds a contiguous run of layers; the first stage the embeddings, the last the final norm
// and the head (with a tied head, a copy of the token embedding whose gradient the two stages
// sum). A split model starts from exactly the weights of the whole one.
// Thread safety: a model is used by one training thread.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "ckpt/tp_layout.h"
#include "engine/config/config.h"
#include "engine/config/memory.h"  // StageLayers
#include "engine/model/model.h"
#include "io/status.h"

namespace ds::engine {

// This rank's part of the model (the defaults: the whole model).
struct ModelPlace {
  int64_t tp = 1, tp_rank = 0;  // tensor-parallel degree and this rank's place
  int64_t pp = 1, stage = 0;    // pipeline stages and this rank's stage
  // Sums `t` in place over the tensor-parallel group; throws (a c10::Error) on failure. Called
  // in the forward and backward passes; needed when tp > 1.
  std::function<void(at::Tensor&)> tp_all_reduce;
  bool whole() const { return tp == 1 && pp == 1; }
  bool first_stage() const { return stage == 0; }
  bool last_stage() const { return stage == pp - 1; }
};

class SplitModel {
 public:
  virtual ~SplitModel() = default;
  // This pipeline stage's part: `in` is token ids (B, T) on the first stage, the previous
  // stage's output (B, T, hidden) otherwise. Returns the output (B, T, hidden) for the next
  // stage, or on the last stage the mean loss against `targets`.
  virtual at::Tensor stage_forward(const at::Tensor& in, const at::Tensor& targets) = 0;
  virtual const ModelPlace& place() const = 0;
  // How tensor parallelism cuts parameter `name` (of the whole model).
  virtual ckpt::TpSplit TpSplitOf(const std::string& name) const = 0;
  // Every parameter of the whole model (all stages) that tensor parallelism cuts, by name.
  virtual std::map<std::string, ckpt::TpSplit> tp_splits() const = 0;
  // The token embedding that the last stage's head shares (a copy there), or "" when untied.
  virtual std::string tied_embedding() const = 0;
  // Parameters in the whole model (all ranks' parts).
  virtual int64_t parameter_count() const = 0;
};

// This rank's part of the model of `config` at `place` (built one model at a time, as MakeModel
// does): the built-in GPT ("gpt"), or a Llama or GPT-2 folder ("hf"); the result is also a
// SplitModel. Other models are refused, naming model.arch.
Result<std::shared_ptr<LanguageModel>> MakeModelPart(const ModelConfig& config, uint64_t seed,
                                                     ModelPlace place);

// Elements [begin, end) of the whole parameter of `whole_shape`, flat fp32 on the CPU (the
// folder's values, or values drawn per name).
using WholeValues =
    std::function<at::Tensor(const std::vector<int64_t>& whole_shape, int64_t begin, int64_t end)>;
// Elements [begin, end) of this rank's part (of shape `shape`) of a parameter that `split` cuts
// over the place's tensor-parallel ranks, flat and contiguous in the layout the rank holds it.
// Unsplit: `whole`'s range itself; split: the whole parameter (one tensor, not the model), then
// this rank's boxes of it.
at::Tensor TpPartRange(const std::vector<int64_t>& shape, ckpt::TpSplit split,
                       const ModelPlace& place, int64_t begin, int64_t end,
                       const WholeValues& whole);

// Megatron's f: the input of a column-parallel layer passes forward unchanged and its gradient is
// summed over the tensor-parallel group. `place` must outlive the backward pass.
at::Tensor TpColumnInput(const ModelPlace* place, const at::Tensor& x);
// Megatron's g: a row-parallel layer's partial products summed over the group; the gradient
// passes back unchanged.
at::Tensor TpSum(const ModelPlace* place, const at::Tensor& partial);
// A row-parallel projection, x W^T + b: this rank's partial product summed over the group, then
// the bias (whole on every rank; may be undefined) added once.
at::Tensor TpRowLinear(const ModelPlace* place, const at::Tensor& x, const at::Tensor& weight,
                       const at::Tensor& bias);

}  // namespace ds::engine
