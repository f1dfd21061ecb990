// Synthetic training state for storage benchmarks: bf16 and fp32 weights as initialised and as
// trained, and Adam moments, generated deterministically (the same bytes on every platform) so
// that compression ratios are comparable between runs and machines.
// Thread safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace ds::bench {

// One kind of state, as a stream of floats.
struct DataSet {
  const char* name;
  bool bf16;
  std::function<float(size_t)> (*make)(uint64_t seed);
  uint64_t seed_offset;  // bf16 weights are the fp32 master weights rounded, as in training
};

// bf16-init, bf16-trained, fp32-init, fp32-trained, adam-exp_avg, adam-exp_avg_sq.
const std::vector<DataSet>& DataSets();
const DataSet& FindDataSet(const char* name);  // aborts on an unknown name (bench code only)

// `bytes` (a multiple of 4) of little-endian bf16 or fp32 values of `d`.
std::vector<std::byte> Generate(const DataSet& d, uint64_t bytes, uint64_t seed);

}  // namespace ds::bench
