// The training data of a run: the `data` section of the config turned into a training split and
// a held-out evaluation split that the training split never reads.
// Thread safety: a Dataset is an immutable value (its token sources share read-only mappings).
#pragma once

#include <cstdint>
#include <string>

#include "engine/config/config.h"
#include "engine/data/default_corpus.h"
#include "engine/data/token_source.h"
#include "io/env.h"
#include "io/status.h"

namespace ds::engine {

struct DatasetOptions {
  int64_t vocab = 0;  // model.vocab: every token read must be below it (0: not checked)
  // Where the default corpus is built when data.path is "" or "builtin" (e.g. a cache
  // directory, or the run's output directory); required then.
  std::string default_corpus_path;
  std::string licenses_dir = std::string(kCommonLicensesDir);
};

struct Dataset {
  TokenSource train;
  TokenSource eval;  // empty when data.val_fraction is 0 and there is no data.val_path
  // "data: <file> (text, 237334 tokens): train 213601, eval 23733 held out from its end".
  std::string Describe() const;
};

// Opens data.path (or builds and opens the default corpus, always text) and splits it: with
// data.val_path the eval split is that whole file; otherwise it is the last
// floor(N * data.val_fraction) tokens of data.path and the training split is the rest.
Result<Dataset> OpenDataset(io::Env* env, const DataConfig& config, const DatasetOptions& options);

}  // namespace ds::engine
