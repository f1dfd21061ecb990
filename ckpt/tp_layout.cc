#include "ckpt/tp_layout.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <set>

namespace ds::ckpt {

using nlohmann::json;

// ---- boxes

Status ValidateTpSplit(std::string_view tensor, std::span<const int64_t> shape, TpSplit split,
                       uint32_t tp) {
  const std::string what = "tensor '" + std::string(tensor) + "'";
  if (tp == 0) return Status::InvalidArgument("tensor-parallel degree must be at least 1");
  if (split.parts == 0) return Status::InvalidArgument(what + ": a split needs at least 1 part");
  if (split.dim < -1 || split.dim >= static_cast<int>(shape.size())) {
    std::string dims;
    for (int64_t d : shape) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
    return Status::InvalidArgument(what + " of shape [" + dims + "] has no dimension " +
                                   std::to_string(split.dim) + " to split along");
  }
  if (split.parts > 1 && split.dim != 0) {
    return Status::InvalidArgument(what + ": fused parts (" + std::to_string(split.parts) +
                                   ") are only supported along dimension 0, not " +
                                   std::to_string(split.dim));
  }
  if (split.dim < 0) return Status::OK();
  const int64_t size = shape[static_cast<size_t>(split.dim)];
  const uint64_t pieces = uint64_t{split.parts} * tp;
  if (size % static_cast<int64_t>(pieces) == 0) return Status::OK();
  const std::string into = split.parts > 1 ? std::to_string(split.parts) + " parts x " +
                                                 std::to_string(tp) + " tensor-parallel pieces"
                                           : std::to_string(tp) + " tensor-parallel pieces";
  return Status::InvalidArgument(what + ": dimension " + std::to_string(split.dim) + " of size " +
                                 std::to_string(size) + " does not split into " + into +
                                 "; choose a tensor-parallel degree that divides it");
}

std::vector<int64_t> TpLocalShape(std::span<const int64_t> shape, TpSplit split, uint32_t tp) {
  std::vector<int64_t> local(shape.begin(), shape.end());
  if (split.dim >= 0) local[static_cast<size_t>(split.dim)] /= tp;
  return local;
}

std::vector<TpBox> TpBoxes(std::span<const int64_t> shape, TpSplit split, uint32_t tp,
                           uint32_t tp_rank) {
  std::vector<int64_t> offset(shape.size(), 0), length(shape.begin(), shape.end());
  if (tp == 1 || split.dim < 0) {
    const uint64_t numel = *fmt::NumElements(length);
    return {TpBox{offset, length, 0, numel}};
  }
  const auto dim = static_cast<size_t>(split.dim);
  const int64_t part = shape[dim] / split.parts;  // rows (or columns) of one part
  const int64_t piece = part / tp;                // of one part, on one rank
  length[dim] = piece;
  const uint64_t numel = *fmt::NumElements(length);
  // Parts only exist along dimension 0, so each part's piece is a contiguous run of the local
  // tensor, the parts' pieces one after another.
  std::vector<TpBox> boxes;
  for (uint32_t k = 0; k < split.parts; ++k) {
    offset[dim] = k * part + tp_rank * piece;
    boxes.push_back({offset, length, k * numel, numel});
  }
  return boxes;
}

std::vector<TpBoxRange> TpLocalRange(std::span<const TpBox> boxes, uint64_t begin, uint64_t end) {
  std::vector<TpBoxRange> out;
  for (size_t b = 0; b < boxes.size(); ++b) {
    const uint64_t lo = std::max(begin, boxes[b].local_begin);
    const uint64_t hi = std::min(end, boxes[b].local_begin + boxes[b].numel);
    if (lo < hi) out.push_back({b, lo - boxes[b].local_begin, hi - boxes[b].local_begin, lo});
  }
  return out;
}

// ---- the blob

std::string EncodeTpSplits(const TpSplits& splits) {
  json j = json::object();
  for (const auto& [name, s] : splits) j[name] = {{"dim", s.dim}, {"parts", s.parts}};
  return j.dump();
}

Result<TpSplits> DecodeTpSplits(std::string_view text) {
  const std::string what = std::string("blob '") + kTpSplitsBlob + "'";
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return Status::Corruption(what +
                              " is not a JSON object of tensor name -> {\"dim\", \"parts\"}");
  }
  TpSplits out;
  for (const auto& [name, v] : j.items()) {
    const bool dim_ok = v.is_object() && v.contains("dim") && v["dim"].is_number_integer() &&
                        v["dim"].get<int64_t>() >= -1 && v["dim"].get<int64_t>() <= fmt::kMaxDims;
    const json parts = v.is_object() ? v.value("parts", json(1)) : json();
    const bool parts_ok = parts.is_number_integer() && parts.get<int64_t>() >= 1 &&
                          parts.get<int64_t>() <= UINT32_MAX;
    if (!dim_ok || !parts_ok) {
      return Status::Corruption(what + ": the entry of tensor '" + name + "' is " + v.dump() +
                                ", not {\"dim\": -1 or a dimension, \"parts\": 1 or more}");
    }
    out[name] = {v["dim"].get<int>(), parts.get<uint32_t>()};
  }
  return out;
}

// ---- the splits of a checkpoint

namespace {

// The split that tensor `t`'s boxes show: the one dimension they cut, and parts = the number
// of equal boxes along it per tensor-parallel rank of the checkpoint.
Result<TpSplit> InferTpSplit(const fmt::Manifest& m, uint32_t t, std::span<const size_t> slices) {
  const fmt::TensorMeta& tensor = m.tensors[t];
  const std::string what = "tensor '" + tensor.name + "'";
  int dim = -1;
  for (size_t i : slices) {
    for (size_t d = 0; d < tensor.shape.size(); ++d) {
      if (m.slices[i].box_length[d] == tensor.shape[d]) continue;
      if (dim >= 0 && dim != static_cast<int>(d)) {
        return Status::InvalidArgument(what +
                                       " is split along more than one dimension; reshard "
                                       "handles tensor-parallel splits along one");
      }
      dim = static_cast<int>(d);
    }
  }
  if (dim < 0) return TpSplit{};
  std::set<int64_t> offsets;  // distinct box offsets along dim
  const int64_t length = m.slices[slices.front()].box_length[static_cast<size_t>(dim)];
  for (size_t i : slices) {
    const fmt::SliceMeta& s = m.slices[i];
    if (s.box_length[static_cast<size_t>(dim)] != length) {
      return Status::InvalidArgument(
          what + " is cut into boxes of different lengths (" + std::to_string(length) + " and " +
          std::to_string(s.box_length[static_cast<size_t>(dim)]) + ") along dimension " +
          std::to_string(dim) + ", which no tensor-parallel layout does; reshard needs the '" +
          kTpSplitsBlob + "' blob to know how to cut it");
    }
    offsets.insert(s.box_offset[static_cast<size_t>(dim)]);
  }
  const uint32_t tp = m.info.tp_degree;
  if (offsets.size() % tp != 0) {
    return Status::InvalidArgument(what + " is cut into " + std::to_string(offsets.size()) +
                                   " boxes along dimension " + std::to_string(dim) +
                                   ", not a multiple of the checkpoint's tensor-parallel degree " +
                                   std::to_string(tp) + "; reshard needs the '" + kTpSplitsBlob +
                                   "' blob to know how to cut it");
  }
  const TpSplit split{dim, static_cast<uint32_t>(offsets.size() / tp)};
  DS_RETURN_IF_ERROR(ValidateTpSplit(tensor.name, tensor.shape, split, tp));
  return split;
}

Result<TpSplits> InferTpSplits(const fmt::Manifest& m) {
  std::vector<std::vector<size_t>> slices_of(m.tensors.size());
  for (size_t i = 0; i < m.slices.size(); ++i) slices_of[m.slices[i].tensor].push_back(i);
  TpSplits out;
  for (uint32_t t = 0; t < m.tensors.size(); ++t) {
    if (slices_of[t].empty()) continue;  // no elements: nothing to cut
    DS_ASSIGN_OR_RETURN(TpSplit split, InferTpSplit(m, t, slices_of[t]));
    if (split.dim >= 0) out[m.tensors[t].name] = split;
  }
  return out;
}

}  // namespace

Result<TpSplits> ReadTpSplits(const fmt::Manifest& m) {
  const int64_t blob = m.FindBlob(kTpSplitsBlob);
  if (blob < 0) return InferTpSplits(m);
  const std::string what = "checkpoint " + m.info.tag;
  Result<TpSplits> recorded = DecodeTpSplits(m.blobs[static_cast<size_t>(blob)].data);
  if (!recorded.ok()) return recorded.status().WithContext(what);
  TpSplits out;
  for (const auto& [name, split] : *recorded) {
    // The engine records the split of every parameter's state, also of state this checkpoint
    // does not hold (e.g. model/ weights derivable from master/).
    const int64_t t = m.FindTensor(name);
    if (t < 0 || split.dim < 0) continue;
    const fmt::TensorMeta& tensor = m.tensors[static_cast<size_t>(t)];
    DS_RETURN_IF_ERROR(ValidateTpSplit(name, tensor.shape, split, m.info.tp_degree))
        << what << ": blob '" << kTpSplitsBlob << "'";
    out[name] = split;
  }
  return out;
}

}  // namespace ds::ckpt
