#include "engine/data/dataset.h"

#include <fnmatch.h>

#include <cmath>
#include <string_view>
#include <vector>

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

namespace {

// data.path as a directory of shards or a glob ("data/train_*.bin"): the files, in name order,
// and (a directory only) its held-out shards, val_*.bin. Empty lists: `path` is one file.
struct ShardFiles {
  std::vector<std::string> train, val;
};

Result<ShardFiles> FindShards(io::Env* env, const std::string& path) {
  ShardFiles out;
  const bool glob = path.find_first_of("*?[") != std::string::npos;
  std::string dir = path, pattern;
  if (glob) {
    const size_t slash = path.rfind('/');
    dir = slash == std::string::npos ? "." : path.substr(0, slash);
    pattern = path.substr(slash == std::string::npos ? 0 : slash + 1);
  } else {
    Result<io::FileInfo> info = env->Stat(path);
    if (!info.ok() || !info->is_dir) return out;  // one file (or an error when opened)
  }
  DS_ASSIGN_OR_RETURN(std::vector<std::string> names, env->ListDir(dir));
  for (const std::string& name : names) {
    const std::string file = io::JoinPath(dir, name);
    if (glob) {
      if (fnmatch(pattern.c_str(), name.c_str(), 0) == 0) out.train.push_back(file);
    } else if (name.ends_with(".bin")) {
      (name.rfind("val_", 0) == 0 ? out.val : out.train).push_back(file);
    }
  }
  if (!glob) {  // train_*.bin when there are any (tools/prepare_data.py's names), else every .bin
    std::vector<std::string> named;
    for (const std::string& f : out.train) {
      if (f.rfind(io::JoinPath(dir, "train_"), 0) == 0) named.push_back(f);
    }
    if (!named.empty()) out.train = std::move(named);
  }
  if (out.train.empty()) {
    return Status::NotFound(
        "data.path " + path + (glob ? " matches no file" : " holds no .bin token files") +
        " (a directory of llm.c shards such as tools/prepare_data.py writes: train_000000.bin, "
        "..., val_000000.bin; or a glob like dir/train_*.bin)");
  }
  return out;
}

Result<TokenSource> OpenAll(io::Env* env, const std::vector<std::string>& files,
                            const TokenSourceOptions& options, const std::string& name) {
  std::vector<TokenSource> sources;
  for (const std::string& f : files) {
    DS_ASSIGN_OR_RETURN(TokenSource s, TokenSource::Open(env, f, options));
    sources.push_back(std::move(s));
  }
  return TokenSource::Concat(std::move(sources), name);
}

}  // namespace

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
  DS_ASSIGN_OR_RETURN(const ShardFiles shards, FindShards(env, path));
  TokenSource all;
  if (shards.train.empty()) {
    DS_ASSIGN_OR_RETURN(all, TokenSource::Open(env, path, source_options));
  } else {
    DS_ASSIGN_OR_RETURN(all, OpenAll(env, shards.train, source_options, path));
    if (config.val_path.empty() && !shards.val.empty()) {  // the directory's held-out shards
      Dataset data;
      DS_ASSIGN_OR_RETURN(data.eval, OpenAll(env, shards.val, source_options, path + " (val)"));
      data.train = std::move(all);
      return data;
    }
  }

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
