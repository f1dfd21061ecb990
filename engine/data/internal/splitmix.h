// splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", 2014):
// plain integer arithmetic, so the sampler's order and the masked-LM draws are the same on every
// platform and compiler.
// Thread safety: pure functions; a SplitMixStream is used by one thread.
#pragma once

#include <cstdint>

namespace ds::engine::internal {

inline constexpr uint64_t kSplitMixGamma = 0x9e3779b97f4a7c15ULL;

// The generator's output for state x: a bijective 64-bit mixer with full avalanche.
inline uint64_t SplitMix64(uint64_t x) {
  x += kSplitMixGamma;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The generator itself: outputs for states key, key + gamma, key + 2 gamma, ...
class SplitMixStream {
 public:
  explicit SplitMixStream(uint64_t key) : state_(key) {}
  uint64_t Next() {
    const uint64_t out = SplitMix64(state_);
    state_ += kSplitMixGamma;
    return out;
  }

 private:
  uint64_t state_;
};

}  // namespace ds::engine::internal
