#include "engine/model/hf_weights.h"

#include <c10/util/Exception.h>
#include <torch/torch.h>

#include <span>

#include "formats/dtype_convert.h"
#include "formats/safetensors.h"
#include "io/env.h"

namespace ds::engine {

HfWeights::HfWeights(const HfModelSpec& spec, uint64_t seed) : spec_(spec), seed_(seed) {}
HfWeights::~HfWeights() = default;

const fmt::SafetensorsReader* HfWeights::ReaderFor(const std::string& name) const {
  auto it = spec_.weight_files.find(name);
  if (it == spec_.weight_files.end()) it = spec_.weight_files.find("*");
  if (it == spec_.weight_files.end()) return nullptr;
  std::lock_guard<std::mutex> lock(mu_);
  auto& reader = readers_[it->second];
  if (!reader) {
    Result<std::unique_ptr<fmt::SafetensorsReader>> r =
        fmt::SafetensorsReader::Open(io::Env::Default(), it->second);
    TORCH_CHECK_VALUE(r.ok(), r.status().message());
    reader = std::move(*r);
  }
  return reader.get();
}

at::Tensor HfWeights::Read(const std::string& name, const std::vector<int64_t>& shape,
                           int64_t begin, int64_t end, const InitSpec& init) const {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  if (spec_.weight_files.empty()) return InitRange(init, seed_, name, numel, begin, end);
  const fmt::SafetensorsReader* reader = ReaderFor(name);
  const std::string where = spec_.dir + " (" + name + ")";
  TORCH_CHECK_VALUE(reader != nullptr, where, ": no safetensors file of the folder holds it");
  Result<size_t> index = reader->Find(name);
  TORCH_CHECK_VALUE(index.ok(), where, ": the weights file lacks it (", index.status().message(),
                    ")");
  const fmt::SafetensorsTensor& t = reader->tensors()[*index];
  TORCH_CHECK_VALUE(t.shape == shape, where, ": shape ", c10::IntArrayRef(t.shape),
                    " in the file, ", c10::IntArrayRef(shape), " from config.json");
  const size_t width = fmt::DTypeSize(t.dtype);
  at::Tensor out = torch::empty({end - begin}, torch::kFloat);
  const std::span<std::byte> dst(reinterpret_cast<std::byte*>(out.data_ptr<float>()),
                                 static_cast<size_t>(out.numel()) * sizeof(float));
  const uint64_t at = static_cast<uint64_t>(begin) * width;
  if (t.dtype == fmt::DType::kF32) {  // straight into place
    Status st = reader->ReadTensorData(*index, at, dst);
    TORCH_CHECK_VALUE(st.ok(), st.message());
    return out;
  }
  std::vector<std::byte> bytes(static_cast<size_t>(end - begin) * width);
  Status st = reader->ReadTensorData(*index, at, bytes);
  TORCH_CHECK_VALUE(st.ok(), st.message());
  st = fmt::ConvertElements(t.dtype, bytes, fmt::DType::kF32, dst);
  TORCH_CHECK_VALUE(st.ok(), where, ": ", st.message());
  return out;
}

std::shared_ptr<torch::nn::Module> HolderModule(torch::nn::Module& parent,
                                                const std::string& name) {
  return parent.register_module(name, std::make_shared<torch::nn::Module>());
}

HfModel::HfModel(HfModelOptions o)
    : o_(std::move(o)), weights_(std::make_unique<HfWeights>(o_.spec, o_.seed)) {}

HfModel::~HfModel() = default;

at::Tensor HfModel::MakeParam(const std::string& name, std::vector<int64_t> shape) {
  shapes_[name] = shape;
  if (o_.deferred) return ShapeOnly(shape);
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  // A tensor of its own (a view would stay one, as far as autograd knows, after set_data).
  return at::empty(shape, at::kFloat).copy_(InitialValues(name, 0, n).view(shape));
}

at::Tensor HfModel::Values(const std::string& name, int64_t begin, int64_t end,
                           const InitSpec& init) const {
  auto shape = shapes_.find(name);
  TORCH_CHECK_VALUE(shape != shapes_.end(), "the ", o_.spec.architecture,
                    " model has no parameter ", name);
  return TpPartRange(shape->second, TpSplitOf(name), o_.place, begin, end,
                     [&](const std::vector<int64_t>& whole_shape, int64_t b, int64_t e) {
                       return weights_->Read(name, whole_shape, b, e, init);
                     });
}

ckpt::TpSplit HfModel::TpSplitOf(const std::string& /*name*/) const { return {}; }

void HfModel::MakeUntiedHead(const ParamMaker& make) {
  if (o_.spec.tie_embeddings || !o_.place.last_stage()) return;
  lm_head_ = register_module(
      "lm_head", Params(make("lm_head.weight", {o_.spec.vocab, o_.spec.hidden}), at::Tensor()));
}

const at::Tensor& HfModel::Head(const at::Tensor& tied) const {
  return o_.spec.tie_embeddings ? tied : lm_head_->weight;
}

}  // namespace ds::engine
