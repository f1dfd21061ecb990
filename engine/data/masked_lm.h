// The masked-language-model objective (BERT's): a batch's inputs with 15% of their tokens chosen
// for prediction, of which 80% become the mask token, 10% a random token and 10% stay, and its
// targets the chosen tokens' ids (kIgnore elsewhere), as transformers'
// DataCollatorForLanguageModeling makes them (mlm_probability 0.15). Special tokens ([CLS],
// [SEP], [PAD], ...) are never chosen. The draws are a function of (seed, epoch, the row's
// offset) only, so a resumed run, another world size or micro batch mask a window exactly as an
// uninterrupted run does, and a window is masked afresh in every epoch (dynamic masking).
// Thread safety: pure functions of their arguments.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "io/status.h"

namespace ds::engine {

struct Batch;

struct MaskedLm {
  static constexpr int64_t kIgnore = -100;  // a target not predicted (PyTorch's ignore_index)
  int64_t mask_token_id = -1;               // [MASK]; -1: unknown (Check says what to do)
  int64_t vocab = 0;                        // random replacements are drawn from [0, vocab)
  double probability = 0.15;                // mlm_probability
  std::vector<int64_t> never_masked;        // special token ids
  std::string source;                       // where the ids came from, for messages

  // InvalidArgument naming `source` when the settings cannot mask (no mask token, a probability
  // outside (0, 1), no vocabulary).
  Status Check() const;
};

// Masks row r of `b` (inputs, T tokens at b->offsets[r]) in place, drawing from (seed,
// epochs[r], offsets[r]), and replaces its targets by the masked-LM labels of those inputs
// (the next-token targets the sampler read are not used). epochs.size() == b->B.
void ApplyMaskedLm(const MaskedLm& m, uint64_t seed, std::span<const uint64_t> epochs, Batch* b);

}  // namespace ds::engine
