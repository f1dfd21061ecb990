#include "engine/data/dataset.h"

#include <cmath>

namespace ds::engine {

std::string Dataset::Describe() const {
  if (eval.size() > 0 && eval.first_token() == 0) {
    return "data: train " + train.Describe() + ", eval " + eval.Describe();
  }
  std::string out = "data: " + train.path() + " (" + std::string(DataFormatName(train.format())) +
                    ", " + std::to_string(train.size() + eval.size()) + " tokens): train " +
                    std::to_string(train.size());
  if (eval.size() == 0) return out + ", no eval split";
  return out + ", eval " + std::to_string(eval.size()) + " held out from its end";
}

Result<Dataset> OpenDataset(io::Env* env, const DataConfig& config, const DatasetOptions& options) {
  TokenSourceOptions source_options{.format = config.format, .vocab = options.vocab};
  std::string path = config.path;
  if (path.empty() || path == "builtin") {
    if (options.default_corpus_path.empty()) {
      return Status::InvalidArgument(
          "data.path is empty (the default corpus), but no place to build it was given");
    }
    DS_ASSIGN_OR_RETURN(path,
                        BuildDefaultCorpus(env, options.default_corpus_path, options.licenses_dir));
    source_options.format = DataConfig::Format::kText;
  }
  DS_ASSIGN_OR_RETURN(TokenSource all, TokenSource::Open(env, path, source_options));

  Dataset data;
  if (!config.val_path.empty()) {
    source_options.format = config.format;
    DS_ASSIGN_OR_RETURN(data.eval, TokenSource::Open(env, config.val_path, source_options));
    data.train = std::move(all);
    return data;
  }
  if (!(config.val_fraction >= 0 && config.val_fraction < 1)) {
    return Status::InvalidArgument("data.val_fraction must be in [0, 1), got " +
                                   std::to_string(config.val_fraction));
  }
  const uint64_t n = all.size();
  const auto held_out =  // < n
      static_cast<uint64_t>(std::floor(static_cast<double>(n) * config.val_fraction));
  data.train = all.Slice(0, n - held_out);
  data.eval = all.Slice(n - held_out, n);
  return data;
}

}  // namespace ds::engine
