#include "bench/synthetic.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numbers>
#include <string_view>

namespace ds::bench {
namespace {


// splitmix64 and Box-Muller: the same bytes on every platform (std::normal_distribution is
// implementation-defined).
class Normal {
 public:
  explicit Normal(uint64_t seed) : state_(seed) {}
  uint64_t NextU64() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double Uniform() { return (static_cast<double>(NextU64() >> 11) + 0.5) * 0x1.0p-53; }  // (0,1)
  double Next() {                                                                        // N(0, 1)
    if (have_spare_) {
      have_spare_ = false;
      return spare_;
    }
    double r = std::sqrt(-2.0 * std::log(Uniform())), t = 2.0 * std::numbers::pi * Uniform();
    spare_ = r * std::sin(t);
    have_spare_ = true;
    return r * std::cos(t);
  }

 private:
  uint64_t state_;
  double spare_ = 0;
  bool have_spare_ = false;
};

constexpr size_t kRowElements = 4096;  // a row of a (rows, 4096) weight matrix

// Init: N(0, 0.02), as GPT-2-style initialisation.
std::function<float(size_t)> InitWeights(uint64_t seed) {
  return [n = Normal(seed)](size_t) mutable { return static_cast<float>(0.02 * n.Next()); };
}

// Trained: our stand-in for weights after training. Rows drift apart in scale (sigma_row =
// 0.02 * exp(0.25 z), lognormal), and 1 element in 64 is an outlier drawn from a Laplace
// distribution of scale 4 sigma_row: the heavier tails trained LLM weights show.
std::function<float(size_t)> TrainedWeights(uint64_t seed) {
  return [n = Normal(seed), sigma = 0.0](size_t i) mutable {
    if (i % kRowElements == 0) sigma = 0.02 * std::exp(0.25 * n.Next());
    if (n.NextU64() % 64 == 0) {
      double u = n.Uniform() - 0.5;
      return static_cast<float>(-4.0 * sigma * std::copysign(std::log(1 - 2 * std::abs(u)), u));
    }
    return static_cast<float>(sigma * n.Next());
  };
}

// Adam exp_avg: N(0, 1e-4).
std::function<float(size_t)> ExpAvg(uint64_t seed) {
  return [n = Normal(seed)](size_t) mutable { return static_cast<float>(1e-4 * n.Next()); };
}

// Adam exp_avg_sq: gradients of a per-parameter scale sigma = 1e-3 * exp(0.5 z) squared and
// averaged as beta2 = 0.999 does over t = 1000 steps: (1 - 0.999^1000) * sigma^2 * (mean of 4
// squares of N(0, 1)); positive, spanning a few decades.
std::function<float(size_t)> ExpAvgSq(uint64_t seed) {
  const double bias = 1.0 - std::pow(0.999, 1000);
  return [n = Normal(seed), bias](size_t) mutable {
    double sigma = 1e-3 * std::exp(0.5 * n.Next()), sum = 0;
    for (int k = 0; k < 4; ++k) sum += n.Next() * n.Next();
    return static_cast<float>(bias * sigma * sigma * sum / 4);
  };
}

uint16_t ToBf16(float f) {  // round to nearest even, as torch does (no NaNs here)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

}  // namespace

const std::vector<DataSet>& DataSets() {
  static const std::vector<DataSet> sets = {
      {"bf16-init", true, InitWeights, 0},  {"bf16-trained", true, TrainedWeights, 1},
      {"fp32-init", false, InitWeights, 0}, {"fp32-trained", false, TrainedWeights, 1},
      {"adam-exp_avg", false, ExpAvg, 2},   {"adam-exp_avg_sq", false, ExpAvgSq, 3},
  };
  return sets;
}

const DataSet& FindDataSet(const char* name) {
  for (const DataSet& d : DataSets()) {
    if (std::string_view(d.name) == name) return d;
  }
  std::abort();
}

// `bytes` (a multiple of 4) of little-endian bf16 or fp32 values.
std::vector<std::byte> Generate(const DataSet& d, uint64_t bytes, uint64_t seed) {
  std::vector<std::byte> out(bytes);
  std::function<float(size_t)> next = d.make(seed + d.seed_offset);
  const size_t width = d.bf16 ? 2 : 4;
  for (size_t i = 0; i < bytes / width; ++i) {
    float f = next(i);
    if (d.bf16) {
      uint16_t h = ToBf16(f);
      std::memcpy(out.data() + 2 * i, &h, 2);
    } else {
      std::memcpy(out.data() + 4 * i, &f, 4);
    }
  }
  return out;
}

}  // namespace ds::bench
