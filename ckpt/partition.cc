#include "ckpt/partition.h"

#include <algorithm>
#include <string>

namespace ds::ckpt {

Status ValidatePartitionSpec(const PartitionSpec& s) {
  if (s.world_size == 0) return Status::InvalidArgument("world size must be at least 1");
  if (s.stage > 3) {
    return Status::InvalidArgument("ZeRO stage " + std::to_string(s.stage) +
                                   " does not exist (use 0, 1, 2 or 3)");
  }
  if (s.alignment == 0) return Status::InvalidArgument("partition alignment must be at least 1");
  return Status::OK();
}

std::string_view PartitionGroup(std::string_view name) {
  const size_t slash = name.rfind('/');
  return slash == std::string_view::npos ? std::string_view() : name.substr(0, slash);
}

uint64_t PartitionLength(uint64_t numel, uint32_t world_size, uint64_t alignment) {
  const uint64_t unit = static_cast<uint64_t>(world_size) * alignment;
  const uint64_t padded = (numel + unit - 1) / unit * unit;
  return padded / world_size;
}

Result<std::vector<FlatRange>> PartitionForRank(std::span<const uint64_t> numels,
                                                const PartitionSpec& spec, uint32_t rank) {
  DS_RETURN_IF_ERROR(ValidatePartitionSpec(spec));
  if (rank >= spec.world_size) {
    return Status::InvalidArgument("rank " + std::to_string(rank) + " is not below the world size " +
                                   std::to_string(spec.world_size));
  }
  std::vector<FlatRange> out;
  if (spec.stage == 3) {
    for (size_t t = 0; t < numels.size(); ++t) {
      const uint64_t len = PartitionLength(numels[t], spec.world_size, spec.alignment);
      const uint64_t b = std::min<uint64_t>(numels[t], len * rank);
      const uint64_t e = std::min<uint64_t>(numels[t], len * (rank + 1));
      if (b < e) out.push_back({static_cast<uint32_t>(t), b, e});
    }
    return out;
  }
  uint64_t total = 0;
  for (uint64_t n : numels) total += n;
  const uint64_t len = PartitionLength(total, spec.world_size, spec.alignment);
  const uint64_t lo = len * rank, hi = len * (rank + 1);  // of the flat buffer
  uint64_t start = 0;                                    // the tensor's first flat element
  for (size_t t = 0; t < numels.size(); ++t) {
    const uint64_t b = std::max(lo, start), e = std::min(hi, start + numels[t]);
    if (b < e) out.push_back({static_cast<uint32_t>(t), b - start, e - start});
    start += numels[t];
  }
  return out;
}

}  // namespace ds::ckpt
