// Initial values of parameters that do not depend on where they are made: the elements
// [begin, end) of a parameter are a function of (seed, the parameter's name, the range) only, so
// a ZeRO-3 rank makes just its partition, a tensor-parallel rank just its slice, and a resumed
// run nothing at all, and all of them equal the whole model's values bit for bit. This is what
// makes partitioned construction (DeepSpeed's zero.Init) possible without ever building the
// whole model.
// Thread safety: pure functions; InitRange draws from its own generators, never the global one.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ds::engine {

// How a parameter starts: N(mean, std), or filled with a constant.
struct InitSpec {
  enum class Kind { kNormal, kConstant };
  Kind kind = Kind::kConstant;
  double mean = 0;   // kNormal
  double std = 0;    // kNormal
  double value = 0;  // kConstant
  static InitSpec Normal(double mean, double std) { return {Kind::kNormal, mean, std, 0}; }
  static InitSpec Constant(double value) { return {Kind::kConstant, 0, 0, value}; }
};

// Elements per block of a normal parameter: block k of parameter `name` is drawn from its own
// CPU generator, seeded from (seed, name, k). A range costs the blocks it overlaps, and blocks
// are drawn in parallel.
inline constexpr int64_t kInitBlockElements = int64_t{1} << 20;

// Elements [begin, end) of the flattened parameter `name` of `numel` elements, initialised by
// `spec` from `seed`: a (end - begin) fp32 tensor on the CPU. Normal values are drawn in fp64
// (scalar code: the same bits on every x86 machine, where LibTorch's fp32 draw takes an AVX2
// path or not by the CPU) and rounded to fp32.
at::Tensor InitRange(const InitSpec& spec, uint64_t seed, const std::string& name, int64_t numel,
                     int64_t begin, int64_t end);

// A parameter whose values are not made yet: `shape`'s sizes over one element of storage (all
// strides 0), which set_data later replaces with real storage on any device. (A meta tensor
// would be the obvious choice, but set_data refuses to move a variable off the meta device.)
at::Tensor ShapeOnly(const std::vector<int64_t>& shape);

}  // namespace ds::engine
