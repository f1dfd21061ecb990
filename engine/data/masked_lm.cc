#include "engine/data/masked_lm.h"

#include <algorithm>
#include <cassert>

#include "engine/data/internal/splitmix.h"
#include "engine/data/sampler.h"

namespace ds::engine {
namespace {

// Draws of one row: splitmix64's stream from the row's key.
class Stream {
 public:
  explicit Stream(uint64_t key) : s_(key) {}
  uint64_t Next() { return s_.Next(); }
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }  // [0, 1)
  uint64_t Below(uint64_t n) { return Next() % n; }  // bias under 2^-40 for any vocabulary

 private:
  internal::SplitMixStream s_;
};

uint64_t RowKey(uint64_t seed, uint64_t epoch, uint64_t offset) {
  using internal::SplitMix64;  // the salt, "masked-l", keeps these apart from the sampler's draws
  return SplitMix64(SplitMix64(SplitMix64(seed ^ 0x6d61736b65642d6cULL) ^ epoch) ^ offset);
}

}  // namespace

Status MaskedLm::Check() const {
  const std::string where = source.empty() ? "the masked-LM objective" : source;
  if (mask_token_id < 0) {
    return Status::InvalidArgument(
        where +
        ": no mask token: the masked-LM objective replaces tokens by [MASK]; put the model's "
        "tokenizer.json (with its [MASK] or <mask> token) in the model folder");
  }
  if (vocab < 1 || mask_token_id >= vocab) {
    return Status::InvalidArgument(where + ": the mask token " + std::to_string(mask_token_id) +
                                   " is outside the vocabulary of " + std::to_string(vocab));
  }
  if (!(probability > 0 && probability < 1)) {
    return Status::InvalidArgument(where + ": the masking probability must be in (0, 1), not " +
                                   std::to_string(probability));
  }
  return Status::OK();
}

void ApplyMaskedLm(const MaskedLm& m, uint64_t seed, std::span<const uint64_t> epochs, Batch* b) {
  assert(epochs.size() == static_cast<size_t>(b->B));
  std::vector<int64_t> special = m.never_masked;
  std::sort(special.begin(), special.end());
  const size_t t = static_cast<size_t>(b->T);
  for (size_t r = 0; r < static_cast<size_t>(b->B); ++r) {
    Stream draw(RowKey(seed, epochs[r], b->offsets[r]));
    int64_t* inputs = b->inputs.data() + r * t;
    int64_t* labels = b->targets.data() + r * t;
    for (size_t i = 0; i < t; ++i) {
      const int64_t token = inputs[i];
      // Three draws per position, chosen or not, so a position's fate does not depend on the
      // ones before it.
      const double chosen = draw.Uniform(), how = draw.Uniform();
      const uint64_t random = draw.Below(static_cast<uint64_t>(m.vocab));
      if (chosen >= m.probability || std::binary_search(special.begin(), special.end(), token)) {
        labels[i] = MaskedLm::kIgnore;
        continue;
      }
      labels[i] = token;
      if (how < 0.8) {
        inputs[i] = m.mask_token_id;
      } else if (how < 0.9) {
        inputs[i] = static_cast<int64_t>(random);
      }  // else: the token stays, and is still predicted
    }
  }
}

}  // namespace ds::engine
