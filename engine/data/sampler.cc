#include "engine/data/sampler.h"

#include <algorithm>
#include <cassert>
#include <charconv>

#include "engine/data/internal/splitmix.h"

namespace ds::engine {
namespace {

using internal::SplitMix64;

Status CheckShape(const BatchShape& s) {
  if (s.micro_batch < 1) {
    return Status::InvalidArgument("data: the micro batch must be at least 1 window, got " +
                                   std::to_string(s.micro_batch));
  }
  if (s.seq_len < 1) {
    return Status::InvalidArgument("data: model.seq_len must be at least 1, got " +
                                   std::to_string(s.seq_len));
  }
  if (s.world_size < 1 || s.rank < 0 || s.rank >= s.world_size) {
    return Status::InvalidArgument("data: rank " + std::to_string(s.rank) +
                                   " is outside a world of " + std::to_string(s.world_size));
  }
  return Status::OK();
}

// Windows of T + 1 tokens at multiples of T in a split of `num_tokens`.
uint64_t WindowCount(uint64_t num_tokens, int64_t seq_len) {
  const uint64_t t = static_cast<uint64_t>(seq_len);
  return num_tokens > t ? (num_tokens - 1) / t : 0;
}

// Sizes `out` for `shape` (no allocation once it has held a batch of this shape).
void ShapeBatch(const BatchShape& shape, Batch* out) {
  out->B = shape.micro_batch;
  out->T = shape.seq_len;
  const size_t cells = static_cast<size_t>(shape.micro_batch * shape.seq_len);
  out->inputs.resize(cells);
  out->targets.resize(cells);
  out->offsets.resize(static_cast<size_t>(shape.micro_batch));
}

// Reads the windows at out->offsets into out->inputs and out->targets.
Status ReadRows(const TokenSource& source, Batch* out) {
  const size_t t = static_cast<size_t>(out->T);
  std::span<int64_t> inputs(out->inputs);
  std::span<int64_t> targets(out->targets);
  for (size_t b = 0; b < out->offsets.size(); ++b) {
    DS_RETURN_IF_ERROR(
        source.ReadWindow(out->offsets[b], inputs.subspan(b * t, t), targets.subspan(b * t, t)));
  }
  return Status::OK();
}

bool ParseField(std::string_view token, std::string_view key, uint64_t* value) {
  if (token.size() <= key.size() + 1 || token.substr(0, key.size()) != key ||
      token[key.size()] != '=') {
    return false;
  }
  const char* begin = token.data() + key.size() + 1;
  const char* end = token.data() + token.size();
  auto [ptr, ec] = std::from_chars(begin, end, *value);
  return ec == std::errc() && ptr == end;
}

}  // namespace

// ---- WindowPermutation

WindowPermutation::WindowPermutation(uint64_t n, uint64_t seed, uint64_t epoch) : n_(n) {
  uint32_t bits = 2;
  while (bits < 64 && (uint64_t{1} << bits) < n) bits += 2;
  half_bits_ = bits / 2;
  half_mask_ = (uint64_t{1} << half_bits_) - 1;
  const uint64_t base = SplitMix64(seed) ^ SplitMix64(~epoch);
  for (int k = 0; k < kRounds; ++k) keys_[k] = SplitMix64(base + static_cast<uint64_t>(k));
}

uint64_t WindowPermutation::Encrypt(uint64_t x) const {
  uint64_t left = x >> half_bits_;
  uint64_t right = x & half_mask_;
  for (uint64_t key : keys_) {
    const uint64_t next_right = left ^ (SplitMix64(right ^ key) & half_mask_);
    left = right;
    right = next_right;
  }
  return left << half_bits_ | right;
}

uint64_t WindowPermutation::operator()(uint64_t i) const {
  assert(i < n_);
  // Cycle walking: Encrypt permutes [0, 2^bits) and 2^bits <= 4n, so following i's cycle until
  // it re-enters [0, n) takes under 4 steps on average and maps [0, n) onto itself.
  uint64_t x = Encrypt(i);
  while (x >= n_) x = Encrypt(x);
  return x;
}

// ---- SamplerState

std::string SamplerState::Serialize() const {
  return "sampler-v1 epoch=" + std::to_string(epoch) + " position=" + std::to_string(position) +
         " windows=" + std::to_string(windows) + " seed=" + std::to_string(seed);
}

Result<SamplerState> SamplerState::Deserialize(std::string_view text) {
  std::vector<std::string_view> tokens;
  for (size_t begin = 0; begin <= text.size();) {
    size_t end = std::min(text.find(' ', begin), text.size());
    tokens.push_back(text.substr(begin, end - begin));
    begin = end + 1;
  }
  SamplerState s;
  if (tokens.size() != 5 || tokens[0] != "sampler-v1" ||
      !ParseField(tokens[1], "epoch", &s.epoch) ||
      !ParseField(tokens[2], "position", &s.position) ||
      !ParseField(tokens[3], "windows", &s.windows) || !ParseField(tokens[4], "seed", &s.seed) ||
      s.position >= s.windows) {
    return Status::Corruption("data sampler state '" + std::string(text) +
                              "' is not 'sampler-v1 epoch=E position=P windows=W seed=S' with "
                              "P < W (checkpoint damaged, or written by another version?)");
  }
  return s;
}

// ---- Sampler

Result<Sampler> Sampler::Create(uint64_t num_tokens, const BatchShape& shape, uint64_t seed) {
  DS_RETURN_IF_ERROR(CheckShape(shape));
  const uint64_t windows = WindowCount(num_tokens, shape.seq_len);
  if (windows == 0) {
    return Status::FailedPrecondition("data: the training split has " + std::to_string(num_tokens) +
                                      " tokens, fewer than one window of model.seq_len + 1 = " +
                                      std::to_string(shape.seq_len + 1) +
                                      " (use more data, or a smaller model.seq_len)");
  }
  return Sampler(shape, seed, windows);
}

Status Sampler::Restore(const SamplerState& state) {
  if (state.windows != windows_ || state.seed != seed_) {
    return Status::FailedPrecondition(
        "data sampler: the checkpoint's position is in a stream of " +
        std::to_string(state.windows) + " windows with seed " + std::to_string(state.seed) +
        ", but this run has " + std::to_string(windows_) + " windows with seed " +
        std::to_string(seed_) +
        " (the data, data.val_fraction, model.seq_len or the seed changed since the checkpoint; "
        "restore them to continue the same stream)");
  }
  if (state.position >= windows_) {
    return Status::Corruption("data sampler: position " + std::to_string(state.position) +
                              " is past the " + std::to_string(windows_) +
                              " windows of an epoch (checkpoint damaged?)");
  }
  epoch_ = state.epoch;
  position_ = state.position;
  return Status::OK();
}

void Sampler::NextOffsets(std::span<uint64_t> out, std::span<uint64_t> epochs) {
  assert(out.size() == static_cast<size_t>(shape_.micro_batch));
  assert(epochs.empty() || epochs.size() == out.size());
  const uint64_t world = static_cast<uint64_t>(shape_.world_size);
  const uint64_t rank = static_cast<uint64_t>(shape_.rank);
  const uint64_t t = static_cast<uint64_t>(shape_.seq_len);
  const WindowPermutation order(windows_, seed_, epoch_);
  for (size_t k = 0; k < out.size(); ++k) {
    const uint64_t g = position_ + k * world + rank;  // in the stream, from (epoch_, 0)
    const uint64_t later = g / windows_;              // epochs past epoch_
    const uint64_t index = g % windows_;
    const uint64_t window =
        later == 0 ? order(index) : WindowPermutation(windows_, seed_, epoch_ + later)(index);
    out[k] = window * t;
    if (!epochs.empty()) epochs[k] = epoch_ + later;
  }
  position_ += out.size() * world;
  epoch_ += position_ / windows_;
  position_ %= windows_;
}

Status Sampler::Next(const TokenSource& train, Batch* out) {
  if (WindowCount(train.size(), shape_.seq_len) != windows_) {
    return Status::InvalidArgument("data sampler: made for " + std::to_string(windows_) +
                                   " windows, but " + train.Describe() + " has " +
                                   std::to_string(WindowCount(train.size(), shape_.seq_len)));
  }
  ShapeBatch(shape_, out);
  row_epochs_.resize(out->offsets.size());
  NextOffsets(out->offsets, row_epochs_);
  DS_RETURN_IF_ERROR(ReadRows(train, out));
  if (masked_lm_) ApplyMaskedLm(*masked_lm_, seed_, row_epochs_, out);
  return Status::OK();
}

// ---- EvalBatches

Result<EvalBatches> EvalBatches::Create(uint64_t num_tokens, const BatchShape& shape,
                                        int64_t max_batches) {
  DS_RETURN_IF_ERROR(CheckShape(shape));
  if (max_batches < 1) {
    return Status::InvalidArgument("data: trainer.eval_iters must be at least 1, got " +
                                   std::to_string(max_batches));
  }
  const uint64_t windows = WindowCount(num_tokens, shape.seq_len);
  const uint64_t per_batch = static_cast<uint64_t>(shape.micro_batch * shape.world_size);
  if (windows < per_batch) {
    return Status::FailedPrecondition(
        "data: the eval split has " + std::to_string(num_tokens) + " tokens, " +
        std::to_string(windows) +
        " windows of model.seq_len + 1 = " + std::to_string(shape.seq_len + 1) +
        ", fewer than one eval batch of " + std::to_string(per_batch) +
        " (micro batch x world size) (raise data.val_fraction, or give data.val_path)");
  }
  return EvalBatches(shape, static_cast<int64_t>(std::min<uint64_t>(
                                static_cast<uint64_t>(max_batches), windows / per_batch)));
}

void EvalBatches::Offsets(int64_t batch, std::span<uint64_t> out) const {
  assert(batch >= 0 && batch < num_batches_);
  assert(out.size() == static_cast<size_t>(shape_.micro_batch));
  const uint64_t world = static_cast<uint64_t>(shape_.world_size);
  const uint64_t b = static_cast<uint64_t>(shape_.micro_batch);
  for (uint64_t k = 0; k < out.size(); ++k) {
    const uint64_t window =
        (static_cast<uint64_t>(batch) * b + k) * world + static_cast<uint64_t>(shape_.rank);
    out[k] = window * static_cast<uint64_t>(shape_.seq_len);
  }
}

Status EvalBatches::Read(const TokenSource& eval, int64_t batch, Batch* out) const {
  if (batch < 0 || batch >= num_batches_) {
    return Status::InvalidArgument("data: eval batch " + std::to_string(batch) +
                                   " is outside [0, " + std::to_string(num_batches_) + ")");
  }
  ShapeBatch(shape_, out);
  Offsets(batch, out->offsets);
  DS_RETURN_IF_ERROR(ReadRows(eval, out));
  if (masked_lm_) {
    const std::vector<uint64_t> epochs(out->offsets.size(), 0);
    ApplyMaskedLm(*masked_lm_, seed_, epochs, out);
  }
  return Status::OK();
}

}  // namespace ds::engine
