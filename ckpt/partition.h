// The ZeRO partition function: which flat ranges of which tensors a rank owns, for a world
// size, a stage and an alignment. The engine lays out its flat buffers with it and `dsckpt
// reshard` writes target layouts with it, so the two cannot disagree.
//
// Stages 0, 1 and 2 (as DeepSpeed's stage 1/2 optimizer): all tensors, in order, form one flat
// buffer whose length is padded up to a multiple of world_size * alignment; rank r owns the
// r-th of world_size equal, contiguous partitions. A partition may cut a tensor anywhere.
// (Stage 0 replicates state; a save still writes each element once, rank r writing partition r.)
// Stage 3 (as DeepSpeed's stage 3): every tensor is partitioned on its own: its element count
// is padded up to a multiple of world_size * alignment and rank r owns the r-th equal part.
// Padding is never stored: ranges are clipped to the tensors' real elements.
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "io/status.h"

namespace ds::ckpt {

struct PartitionSpec {
  uint32_t world_size = 1;
  uint32_t stage = 0;          // 0-3
  uint64_t alignment = 1;      // elements; partitions start at multiples of it
};

struct FlatRange {
  uint32_t tensor = 0;  // index into the list of tensors
  uint64_t begin = 0;   // elements of that tensor, [begin, end)
  uint64_t end = 0;
  bool operator==(const FlatRange&) const = default;
};

// Ranges owned by `rank`, in tensor order; empty ranges are omitted.
Result<std::vector<FlatRange>> PartitionForRank(std::span<const uint64_t> numels,
                                                const PartitionSpec& spec, uint32_t rank);

// The partition length in elements (stages 0-2: of the flat buffer; stage 3: of one tensor).
uint64_t PartitionLength(uint64_t numel, uint32_t world_size, uint64_t alignment);

Status ValidatePartitionSpec(const PartitionSpec& spec);

// Tensors are partitioned in groups, each group its own flat buffer: a tensor's group is its
// name up to the last '/' ("master/h.0.attn.weight" -> "master", "optim/exp_avg/h.0.mlp.w" ->
// "optim/exp_avg", "step" -> ""). Master weights and both Adam moments then get identical
// ranges on every rank, as in DeepSpeed's optimizer partitions.
std::string_view PartitionGroup(std::string_view tensor_name);

}  // namespace ds::ckpt
