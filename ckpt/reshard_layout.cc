// LayoutSlices: which slices each rank of a target layout owns, as that layout's writers would
// add them. Pure geometry over the manifest (ckpt/partition.h, ckpt/tp_layout.h); Reshard
// (ckpt/reshard.cc) writes what it returns.
#include <map>
#include <string>

#include "ckpt/partition.h"
#include "ckpt/reshard.h"
#include "ckpt/tp_layout.h"

namespace ds::ckpt {
namespace {

Status ValidateTarget(const fmt::Manifest& m, const TpSplits& splits, const TargetLayout& l) {
  if (l.tp_degree == 0 || l.world_size == 0 || l.world_size % l.tp_degree != 0) {
    return Status::InvalidArgument("tensor-parallel degree " + std::to_string(l.tp_degree) +
                                   " does not divide the world size " +
                                   std::to_string(l.world_size));
  }
  DS_RETURN_IF_ERROR(ValidatePartitionSpec({l.world_size, l.zero_stage, l.alignment}));
  // Without the blob, a checkpoint saved at TP 1 has only whole boxes: nothing says which
  // tensors a tensor-parallel run would split, nor how.
  if (l.tp_degree > 1 && m.info.tp_degree == 1 && m.FindBlob(kTpSplitsBlob) < 0) {
    return Status::InvalidArgument(
        "this checkpoint was saved without tensor parallelism and has no '" +
        std::string(kTpSplitsBlob) +
        "' blob, so it does not say which tensors split and along which dimension; resharding "
        "to tensor-parallel degree " +
        std::to_string(l.tp_degree) +
        " needs a checkpoint saved with TP > 1, or one saved by a dstrain that writes the blob "
        "(every checkpoint dstrain saves from now on carries it)");
  }
  for (const fmt::TensorMeta& t : m.tensors) {
    auto it = splits.find(t.name);
    if (it == splits.end()) continue;
    DS_RETURN_IF_ERROR(ValidateTpSplit(t.name, t.shape, it->second, l.tp_degree));
  }
  return Status::OK();
}

// The manifest's tensors by partition group, groups in order of first appearance.
std::vector<std::vector<uint32_t>> GroupsInOrder(const fmt::Manifest& m) {
  std::vector<std::vector<uint32_t>> groups;
  std::map<std::string, size_t> index;
  for (uint32_t t = 0; t < m.tensors.size(); ++t) {
    auto [it, fresh] = index.emplace(std::string(PartitionGroup(m.tensors[t].name)), groups.size());
    if (fresh) groups.emplace_back();
    groups[it->second].push_back(t);
  }
  return groups;
}

}  // namespace

Result<std::vector<std::vector<WantedSlice>>> LayoutSlices(const fmt::Manifest& m,
                                                           const TargetLayout& l) {
  DS_ASSIGN_OR_RETURN(TpSplits splits, ReadTpSplits(m));
  DS_RETURN_IF_ERROR(ValidateTarget(m, splits, l));
  std::vector<TpSplit> split(m.tensors.size());
  for (uint32_t t = 0; t < m.tensors.size(); ++t) {
    auto it = splits.find(m.tensors[t].name);
    if (it != splits.end()) split[t] = it->second;
  }
  const std::vector<std::vector<uint32_t>> groups = GroupsInOrder(m);
  const uint32_t tp = l.tp_degree, dp = l.world_size / tp;
  std::vector<std::vector<WantedSlice>> out(l.world_size);
  for (uint32_t rank = 0; rank < l.world_size; ++rank) {
    const uint32_t tp_rank = rank % tp, dp_rank = rank / tp;
    for (const std::vector<uint32_t>& members : groups) {
      // The data-parallel partition runs over the local tensors (this TP rank's boxes).
      std::vector<std::vector<TpBox>> boxes;
      std::vector<uint64_t> numels;
      for (uint32_t t : members) {
        boxes.push_back(TpBoxes(m.tensors[t].shape, split[t], tp, tp_rank));
        numels.push_back(*fmt::NumElements(TpLocalShape(m.tensors[t].shape, split[t], tp)));
      }
      DS_ASSIGN_OR_RETURN(std::vector<FlatRange> ranges,
                          PartitionForRank(numels, {dp, l.zero_stage, l.alignment}, dp_rank));
      for (const FlatRange& r : ranges) {
        const uint32_t t = members[r.tensor];
        if (split[t].dim < 0 && tp_rank != 0) continue;  // written by TP rank 0 only
        const std::vector<TpBox>& b = boxes[r.tensor];
        for (const TpBoxRange& br : TpLocalRange(b, r.begin, r.end)) {
          out[rank].push_back(
              {m.tensors[t].name, b[br.box].offset, b[br.box].length, br.flat_begin, br.flat_end});
        }
      }
    }
  }
  return out;
}

}  // namespace ds::ckpt
