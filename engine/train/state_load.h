// Reading a rank's optimizer state (ZeroOptimizer's master, exp_avg, exp_avg_sq buffers) out of a
// checkpoint: the read requests of a window of a buffer, the padding no slice covers, and the
// NVMe case, where the state is streamed into the swap files a window at a time.
// Thread safety: functions of their arguments; one caller per ZeroOptimizer.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "ckpt/reader.h"
#include "engine/train/state_plan.h"
#include "io/status.h"

namespace ds::engine {

class ZeroOptimizer;

// Requests for the elements [lo, hi) of buffer `b` (in the partition's order) that `slices`
// cover, landing at dst[element - lo].
void AppendStateRequests(const StatePlan& plan, int b, const std::vector<StateSlice>& slices,
                         int64_t lo, int64_t hi, float* dst, std::vector<ckpt::ReadRequest>* out);

// Zeroes the elements of `buffer` that none of `slices` covers (padding).
void ZeroWhereNoSlice(at::Tensor& buffer, std::vector<StateSlice> slices);

// The checkpoint's slices of the first `buffers` buffers into `zero`'s NVMe swap files, a window
// of the partition at a time (host memory: one window, not the partition).
Result<ckpt::ReadStats> StreamIntoSwap(ckpt::CheckpointReader& reader, const StatePlan& plan,
                                       const std::vector<StateSlice>& slices, int buffers,
                                       ZeroOptimizer* zero);

// Without the optimizer's state: zero moments in the NVMe swap files.
Status ZeroSwappedMoments(ZeroOptimizer* zero);

}  // namespace ds::engine
