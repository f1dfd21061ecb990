#include "engine/train/state_plan.h"

#include <utility>

namespace ds::engine {
namespace {

std::string ShapeString(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

StatePlan::StatePlan(std::vector<TensorPlace> places, int tp, int tp_rank)
    : places_(std::move(places)), tp_(tp), tp_rank_(tp_rank) {}

std::vector<StateSlice> StatePlan::SaveSlices(const std::vector<ZeroPiece>& save_pieces) const {
  return SlicesOf(save_pieces, /*owned_only=*/true);
}

std::vector<StateSlice> StatePlan::LoadSlices(const std::vector<ZeroPiece>& held_pieces) const {
  return SlicesOf(held_pieces, /*owned_only=*/false);
}

std::vector<StateSlice> StatePlan::SlicesOf(const std::vector<ZeroPiece>& pieces,
                                            bool owned_only) const {
  const auto tp = static_cast<uint32_t>(tp_);
  std::vector<StateSlice> out;
  for (const ZeroPiece& p : pieces) {
    const TensorPlace& place = places_[static_cast<size_t>(p.tensor)];
    if (owned_only && !place.owned) continue;  // another rank saves its copy
    const std::vector<ckpt::TpBox> boxes =
        ckpt::TpBoxes(place.shape, place.split, tp, static_cast<uint32_t>(tp_rank_));
    const bool cut = tp > 1 && place.split.dim >= 0;  // else one box: the whole tensor
    for (const ckpt::TpBoxRange& r : ckpt::TpLocalRange(boxes, static_cast<uint64_t>(p.begin),
                                                        static_cast<uint64_t>(p.end))) {
      StateSlice s;
      s.tensor = p.tensor;
      if (cut) {
        s.box_offset = boxes[r.box].offset;
        s.box_length = boxes[r.box].length;
      }
      s.flat_begin = r.flat_begin;
      s.flat_end = r.flat_end;
      s.buffer_offset = p.offset + static_cast<int64_t>(r.local_offset) - p.begin;
      out.push_back(std::move(s));
    }
  }
  return out;
}

std::string StatePlan::TensorName(int buffer, int tensor) const {
  return kStateBufferPrefix[buffer] + places_[static_cast<size_t>(tensor)].name;
}

Status StatePlan::CheckMatches(const fmt::Manifest& m, int buffers, const std::string& path) const {
  for (size_t i = 0; i < places_.size(); ++i) {
    const std::vector<int64_t>& shape = places_[i].shape;
    for (int b = 0; b < buffers; ++b) {
      const std::string name = TensorName(b, static_cast<int>(i));
      const int64_t at = m.FindTensor(name);
      if (at < 0) {
        return Status::InvalidArgument(
            path + " does not match the model: it has no tensor " + name +
            (b > 0 ? " (resume with --no-load-optimizer to start Adam afresh)" : "") +
            " (the model's parameter " + std::to_string(i) + " of " +
            std::to_string(places_.size()) + ")");
      }
      const std::vector<int64_t>& there = m.tensors[static_cast<size_t>(at)].shape;
      if (there != shape) {
        return Status::InvalidArgument(
            path + " does not match the model: tensor " + name + " is " + ShapeString(there) +
            " there, " + ShapeString(shape) +
            " in the model (check model.* against the config the checkpoint was saved with: "
            "dsckpt inspect " +
            path + ")");
      }
    }
  }
  return Status::OK();
}

ckpt::TpSplits StatePlan::BufferSplits(const std::map<std::string, ckpt::TpSplit>& splits) {
  ckpt::TpSplits out;
  for (const auto& [name, split] : splits) {
    for (const char* prefix : kStateBufferPrefix) out[prefix + name] = split;
  }
  return out;
}

}  // namespace ds::engine
