// The order in which training and evaluation read windows of T + 1 tokens: Sampler, a seeded
// shuffle per epoch that is resumable from a small state (a checkpoint blob) and independent of
// the world size, and EvalBatches, the same sequential windows of the eval split every time.
// Thread safety: a Sampler is used by one thread; EvalBatches and WindowPermutation are values.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/data/masked_lm.h"
#include "engine/data/token_source.h"
#include "io/status.h"

namespace ds::engine {

// One micro batch of this rank: B windows of T + 1 tokens, split into what the model reads and
// what it predicts. The trainer wraps the arrays with torch::from_blob (kLong).
struct Batch {
  int64_t B = 0;                  // rows: windows
  int64_t T = 0;                  // tokens per row
  std::vector<int64_t> inputs;    // (B, T) token ids, row-major: tokens [offset, offset + T)
  std::vector<int64_t> targets;   // (B, T): tokens [offset + 1, offset + T + 1)
  std::vector<uint64_t> offsets;  // (B) first token of each row, an index into the split
};

// What one rank reads per micro step. Windows start at multiples of T and overlap by one token
// (a window's last target is the next window's first input), so every token but the first of
// the split is predicted once per epoch; a split of N tokens has (N - 1) / T windows.
struct BatchShape {
  int64_t micro_batch = 1;  // B: windows per rank per micro step
  int64_t seq_len = 0;      // T
  int64_t rank = 0;         // data-parallel rank in [0, world_size)
  int64_t world_size = 1;
};

// A bijection of [0, n) chosen by (seed, epoch): a balanced Feistel network over the smallest
// even number of bits that covers n, whose round keys and round function are splitmix64, made a
// permutation of [0, n) by cycle walking (at most 4 rounds of walking on average). Plain integer
// arithmetic, so it is the same on every platform and compiler; O(1) memory and time per index.
class WindowPermutation {
 public:
  WindowPermutation(uint64_t n, uint64_t seed, uint64_t epoch);
  uint64_t operator()(uint64_t i) const;  // i < n

 private:
  static constexpr int kRounds = 6;
  uint64_t Encrypt(uint64_t x) const;

  uint64_t n_;
  uint32_t half_bits_;
  uint64_t half_mask_;
  uint64_t keys_[kRounds];
};

// The sampler's position, stored in checkpoints. `position` counts global windows (over all
// ranks) consumed in `epoch`; `windows` and `seed` identify the stream it is a position in.
struct SamplerState {
  uint64_t epoch = 0;
  uint64_t position = 0;  // in [0, windows)
  uint64_t windows = 0;   // windows per epoch of the training split
  uint64_t seed = 0;

  // "sampler-v1 epoch=E position=P windows=W seed=S", and back (Corruption on anything else).
  std::string Serialize() const;
  static Result<SamplerState> Deserialize(std::string_view text);
  bool operator==(const SamplerState&) const = default;
};

// The training order. The global stream is the concatenation of epochs; epoch e visits every
// window once, in the order WindowPermutation(windows, seed, e). Each micro step consumes the
// next G = B * world_size windows of the stream (crossing into the next epoch when one runs
// out), and rank r takes the stream's windows k * world_size + r of those G, k in [0, B). The
// stream does not depend on B or the world size, so a run resumed with other values continues
// the same stream from the same global position.
class Sampler {
 public:
  // `num_tokens`: tokens in the training split; it needs at least seq_len + 1.
  static Result<Sampler> Create(uint64_t num_tokens, const BatchShape& shape, uint64_t seed);

  uint64_t num_windows() const { return windows_; }
  SamplerState state() const { return {epoch_, position_, windows_, seed_}; }
  // Continues from `state`. FailedPrecondition when it belongs to another stream (the data,
  // data.val_fraction, model.seq_len or the seed changed since it was saved).
  Status Restore(const SamplerState& state);

  // Batches for the masked-LM objective from now on (masked_lm.h): Next masks each row by
  // (seed, its epoch, its offset) and gives labels as targets. Check() it first.
  void set_masked_lm(MaskedLm m) { masked_lm_ = std::move(m); }

  // This rank's next B window offsets (tokens into the split); advances by one micro step.
  // `epochs` (when given, B entries): the epoch each window belongs to.
  void NextOffsets(std::span<uint64_t> out, std::span<uint64_t> epochs = {});
  // The next micro batch of this rank from `train`, into `out` (its buffers are reused).
  Status Next(const TokenSource& train, Batch* out);

 private:
  Sampler(const BatchShape& shape, uint64_t seed, uint64_t windows)
      : shape_(shape), seed_(seed), windows_(windows) {}

  BatchShape shape_;
  uint64_t seed_;
  uint64_t windows_;
  uint64_t epoch_ = 0;
  uint64_t position_ = 0;
  std::optional<MaskedLm> masked_lm_;
  std::vector<uint64_t> row_epochs_;
};

// Evaluation: batch i of rank r holds the split's windows (i * B + k) * world_size + r, k in
// [0, B), for i < num_batches = min(max_batches, windows / (B * world_size)); no window is
// read twice, every evaluation reads the same windows, and the ranks read disjoint ones.
class EvalBatches {
 public:
  // `num_tokens`: tokens in the eval split; it needs at least one batch of B * world windows.
  static Result<EvalBatches> Create(uint64_t num_tokens, const BatchShape& shape,
                                    int64_t max_batches);

  int64_t num_batches() const { return num_batches_; }
  // Masked-LM batches (masked_lm.h), masked as epoch 0 of `seed`: the same masks every time.
  void set_masked_lm(MaskedLm m, uint64_t seed) {
    masked_lm_ = std::move(m);
    seed_ = seed;
  }
  void Offsets(int64_t batch, std::span<uint64_t> out) const;  // out.size() == B
  Status Read(const TokenSource& eval, int64_t batch, Batch* out) const;

 private:
  EvalBatches(const BatchShape& shape, int64_t num_batches)
      : shape_(shape), num_batches_(num_batches) {}

  BatchShape shape_;
  int64_t num_batches_;
  std::optional<MaskedLm> masked_lm_;
  uint64_t seed_ = 0;
};

}  // namespace ds::engine
