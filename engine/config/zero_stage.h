// What a ZeRO stage partitions over the data-parallel ranks, decided once from
// zero_optimization.stage and then asked by name (the optimizer, the memory estimate, the
// trainer's checks) instead of compared as a number in each place:
//   stage 0  nothing: every rank holds everything (plain data parallelism)
//   stage 1  + the fp32 master weights and Adam's moments
//   stage 2  + the gradients (each rank keeps its partition's, reduced as backward runs)
//   stage 3  + the parameters (gathered unit by unit around forward and backward)
// Thread safety: a value.
#pragma once

#include <cstdint>
#include <string>

#include "io/status.h"

namespace ds::engine {

class ZeroStage {
 public:
  // The one place a stage number is checked: InvalidArgument outside 0-3.
  static Result<ZeroStage> Of(int64_t stage) {
    if (stage < 0 || stage > 3) {
      return Status::InvalidArgument("zero_optimization.stage must be 0, 1, 2 or 3, got " +
                                     std::to_string(stage));
    }
    return ZeroStage(static_cast<int>(stage));
  }
  constexpr ZeroStage() = default;  // stage 0

  constexpr int number() const { return n_; }
  constexpr bool partitions_optimizer() const { return n_ >= 1; }
  constexpr bool partitions_gradients() const { return n_ >= 2; }
  constexpr bool partitions_parameters() const { return n_ >= 3; }
  constexpr bool operator==(const ZeroStage&) const = default;

 private:
  constexpr explicit ZeroStage(int n) : n_(n) {}
  int n_ = 0;
};

}  // namespace ds::engine
