// TokenSource: a file of token ids read in place through a read-only memory map: nanoGPT's raw
// uint16 .bin, llm.c's headered .bin (uint16 or uint32 tokens), or text with one token per byte.
// Thread safety: const methods may run concurrently; copies share the mapping (immutable).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/config/config.h"
#include "io/env.h"
#include "io/status.h"

namespace ds::engine {

// llm.c's dev/data/data_common.py: a header of 256 little-endian int32 values, then the tokens.
// header[0] = magic, header[1] = version, header[2] = number of tokens; the rest are zero.
inline constexpr size_t kLlmcHeaderBytes = 256 * 4;
inline constexpr int32_t kLlmcMagicGpt2 = 20240520;  // with version 1: uint16 tokens
inline constexpr int32_t kLlmcVersionGpt2 = 1;
inline constexpr int32_t kLlmcMagicLlama3 = 20240801;  // with version 7: uint32 tokens
inline constexpr int32_t kLlmcVersionLlama3 = 7;

struct TokenSourceOptions {
  DataConfig::Format format = DataConfig::Format::kAuto;
  // Every token read must be below this (model.vocab), checked as windows are read; 0 checks
  // nothing. At most 2^31, so every accepted id fits an int32 as well as the int64 we hand out.
  int64_t vocab = 0;
};

class TokenSource {
 public:
  TokenSource() = default;  // empty: size() == 0

  // Maps `path` and checks its layout (llm.c: magic, version, token count against the file
  // size; nanoGPT: a whole number of uint16). kAuto picks llm.c for a .bin that starts with an
  // llm.c magic, nanoGPT for any other .bin, text for everything else. A file with no tokens is
  // an error. Errors name the file and say what to change.
  static Result<TokenSource> Open(io::Env* env, const std::string& path,
                                  const TokenSourceOptions& options);

  // The sources one after the other as one stream (llm.c's shards of a directory), named
  // `name`; a window may cross from one into the next. Each keeps its own vocab check and
  // names its own file in errors. At least one source, each non-empty.
  static Result<TokenSource> Concat(std::vector<TokenSource> sources, std::string name);

  const std::string& path() const { return path_; }
  DataConfig::Format format() const { return format_; }  // resolved: never kAuto
  uint64_t size() const { return count_; }               // tokens in this view
  uint64_t first_token() const { return first_; }        // index of token 0 in the file

  // Token i of this view (i < size()), without the vocab check.
  uint32_t Token(uint64_t i) const;

  // The view of tokens [begin, end) of this one, sharing the mapping (begin <= end <= size()).
  TokenSource Slice(uint64_t begin, uint64_t end) const;

  // Reads the T + 1 tokens at `offset` (T = inputs.size() = targets.size()): inputs = tokens
  // [offset, offset + T), targets = tokens [offset + 1, offset + T + 1). Fails when the window
  // runs past the end, or with a token >= vocab (naming the file and the token's index in it).
  Status ReadWindow(uint64_t offset, std::span<int64_t> inputs, std::span<int64_t> targets) const;

  // "path (format, N tokens)" for logs.
  std::string Describe() const;

 private:
  Status VocabError(uint64_t offset, uint64_t length) const;

  // Concat's sources and where each starts in the stream; null for one file.
  struct Parts {
    std::vector<TokenSource> sources;
    std::vector<uint64_t> starts;
  };
  // The part holding stream token `g` (first_ + an index of this view).
  size_t PartOf(uint64_t g) const;

  std::shared_ptr<const Parts> parts_;
  std::shared_ptr<const io::MappedFile> map_;
  std::string path_;
  DataConfig::Format format_ = DataConfig::Format::kText;
  int64_t vocab_ = 0;
  const std::byte* tokens_ = nullptr;  // token 0 of this view
  uint32_t width_ = 1;                 // bytes per token: 1 (text), 2 or 4
  uint64_t first_ = 0;                 // tokens before this view in the file
  uint64_t count_ = 0;                 // tokens in this view
};

}  // namespace ds::engine
