#include "engine/data/token_source.h"

#include <algorithm>
#include <cctype>

namespace ds::engine {
namespace {

using Format = DataConfig::Format;

uint32_t LoadLe(const std::byte* p, uint32_t width) {
  switch (width) {
    case 1: return static_cast<uint32_t>(p[0]);
    case 2: return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8;
    default:
      return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
             static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
  }
}

int32_t HeaderInt(std::span<const std::byte> bytes, size_t index) {
  return static_cast<int32_t>(LoadLe(bytes.data() + 4 * index, 4));
}

bool EndsWithBin(std::string_view path) {
  if (path.size() < 4) return false;
  std::string ext(path.substr(path.size() - 4));
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext == ".bin";
}

// The llm.c headers dstrain reads: each magic goes with one version and one token width.
struct LlmcKind {
  int32_t magic;
  int32_t version;
  uint32_t width;  // bytes per token
  const char* type;
};
constexpr LlmcKind kLlmcKinds[] = {
    {kLlmcMagicGpt2, kLlmcVersionGpt2, 2, "uint16"},
    {kLlmcMagicLlama3, kLlmcVersionLlama3, 4, "uint32"},
};

const LlmcKind* FindLlmcKind(std::span<const std::byte> bytes) {
  if (bytes.size() < kLlmcHeaderBytes) return nullptr;
  const int32_t magic = HeaderInt(bytes, 0);
  for (const LlmcKind& kind : kLlmcKinds) {
    if (kind.magic == magic) return &kind;
  }
  return nullptr;
}

// The layout of the tokens inside the file.
struct Layout {
  uint64_t header_bytes = 0;
  uint32_t width = 1;  // bytes per token
  uint64_t count = 0;  // tokens
};

Result<Layout> LlmcLayout(std::span<const std::byte> bytes) {
  const std::string hint = " (not an llm.c file? set data.format)";
  if (bytes.size() < kLlmcHeaderBytes) {
    return Status::Corruption(std::to_string(bytes.size()) + " bytes is shorter than llm.c's " +
                              std::to_string(kLlmcHeaderBytes) + "-byte header" + hint);
  }
  const int32_t magic = HeaderInt(bytes, 0);
  const int32_t version = HeaderInt(bytes, 1);
  const int32_t count = HeaderInt(bytes, 2);
  const LlmcKind* kind = FindLlmcKind(bytes);
  if (kind == nullptr) {
    std::string expected;
    for (const LlmcKind& k : kLlmcKinds) {
      expected +=
          (expected.empty() ? "" : " or ") + std::to_string(k.magic) + " (" + k.type + " tokens)";
    }
    return Status::Corruption("llm.c header has magic " + std::to_string(magic) + ", expected " +
                              expected + hint);
  }
  if (version != kind->version) {
    return Status::Corruption("llm.c header has version " + std::to_string(version) +
                              " with magic " + std::to_string(magic) + "; dstrain reads version " +
                              std::to_string(kind->version) + " (" + kind->type +
                              " tokens) for it (written by a newer llm.c?)");
  }
  const uint64_t body = bytes.size() - kLlmcHeaderBytes;  // bytes
  if (count < 0 || static_cast<uint64_t>(count) * kind->width != body) {
    return Status::Corruption("llm.c header says " + std::to_string(count) + " tokens (" +
                              std::to_string(int64_t{count} * kind->width) +
                              " bytes after the header) but the file has " + std::to_string(body) +
                              " bytes after it (truncated, or still being written?)");
  }
  return Layout{.header_bytes = kLlmcHeaderBytes,
                .width = kind->width,
                .count = static_cast<uint64_t>(count)};
}

Result<Layout> NanoGptLayout(std::span<const std::byte> bytes) {
  if (bytes.size() % 2 != 0) {
    return Status::Corruption(std::to_string(bytes.size()) +
                              " bytes is not a whole number of uint16 tokens (nanoGPT .bin files "
                              "hold 2 bytes per token; truncated?)");
  }
  return Layout{.width = 2, .count = bytes.size() / 2};
}

Result<Layout> ParseLayout(std::span<const std::byte> bytes, Format format) {
  switch (format) {
    case Format::kLlmc: return LlmcLayout(bytes);
    case Format::kNanoGpt: return NanoGptLayout(bytes);
    default: return Layout{.count = bytes.size()};  // text
  }
}

}  // namespace

Result<TokenSource> TokenSource::Open(io::Env* env, const std::string& path,
                                      const TokenSourceOptions& options) {
  const std::string what = "data file " + path;
  if (options.vocab < 0 || options.vocab > (int64_t{1} << 31)) {
    return Status::InvalidArgument(what + ": model.vocab " + std::to_string(options.vocab) +
                                   " is negative or above 2^31");
  }
  Result<std::unique_ptr<io::MappedFile>> mapped = env->MapFile(path);
  if (!mapped.ok()) {
    return mapped.status().WithContext(
        what +
        " (set data.path to a token or text file, or leave it empty for the built-in "
        "corpus)");
  }
  TokenSource source;
  source.map_ = std::move(mapped).value();
  source.path_ = path;
  source.vocab_ = options.vocab;
  const std::span<const std::byte> bytes = source.map_->data();

  Format format = options.format;
  const bool auto_detected = format == Format::kAuto;
  if (auto_detected) {
    format = !EndsWithBin(path)               ? Format::kText
             : FindLlmcKind(bytes) != nullptr ? Format::kLlmc
                                              : Format::kNanoGpt;
  }
  Result<Layout> layout = ParseLayout(bytes, format);
  if (!layout.ok()) {
    // A nanoGPT file whose first two tokens happen to spell an llm.c magic lands here.
    const std::string hint = auto_detected && format == Format::kLlmc
                                 ? " (if it is a nanoGPT file, set data.format to \"nanogpt\")"
                                 : "";
    return Status(layout.status().code(), what + " (format " + std::string(DataFormatName(format)) +
                                              "): " + layout.status().message() + hint);
  }
  if (layout->count == 0) {
    return Status::InvalidArgument(what + " (format " + std::string(DataFormatName(format)) +
                                   ") holds no tokens");
  }
  source.format_ = format;
  source.width_ = layout->width;
  source.tokens_ = bytes.data() + layout->header_bytes;
  source.count_ = layout->count;
  return source;
}

Result<TokenSource> TokenSource::Concat(std::vector<TokenSource> sources, std::string name) {
  if (sources.empty()) return Status::InvalidArgument(name + ": no token files");
  auto parts = std::make_shared<Parts>();
  TokenSource out;
  out.path_ = std::move(name);
  out.format_ = sources.front().format();
  for (TokenSource& s : sources) {
    parts->starts.push_back(out.count_);
    out.count_ += s.size();
    parts->sources.push_back(std::move(s));
  }
  out.parts_ = std::move(parts);
  return out;
}

size_t TokenSource::PartOf(uint64_t g) const {
  const std::vector<uint64_t>& starts = parts_->starts;
  return static_cast<size_t>(std::upper_bound(starts.begin(), starts.end(), g) - starts.begin()) -
         1;
}

uint32_t TokenSource::Token(uint64_t i) const {
  if (parts_ != nullptr) {
    const uint64_t g = first_ + i;
    const size_t k = PartOf(g);
    return parts_->sources[k].Token(g - parts_->starts[k]);
  }
  return LoadLe(tokens_ + i * width_, width_);
}

TokenSource TokenSource::Slice(uint64_t begin, uint64_t end) const {
  end = std::min(end, count_);
  begin = std::min(begin, end);
  TokenSource view = *this;
  if (parts_ == nullptr) view.tokens_ = tokens_ + begin * width_;
  view.first_ = first_ + begin;
  view.count_ = end - begin;
  return view;
}

Status TokenSource::ReadWindow(uint64_t offset, std::span<int64_t> inputs,
                               std::span<int64_t> targets) const {
  const uint64_t t = inputs.size();
  if (t == 0 || targets.size() != t || offset > count_ || count_ - offset < t + 1) {
    return Status::InvalidArgument("data file " + path_ + ": window of " + std::to_string(t + 1) +
                                   " tokens at " + std::to_string(offset) + " does not fit " +
                                   std::to_string(count_) + " tokens");
  }
  if (parts_ != nullptr) {
    const uint64_t g = first_ + offset;
    const size_t k = PartOf(g);
    const TokenSource& part = parts_->sources[k];
    const uint64_t at = g - parts_->starts[k];
    if (part.size() - at >= t + 1) return part.ReadWindow(at, inputs, targets);
    // A window across two shards: token by token, each checked against its own file's vocab.
    for (uint64_t i = 0; i <= t; ++i) {
      const uint64_t gi = g + i;
      const size_t ki = PartOf(gi);
      const TokenSource& p = parts_->sources[ki];
      const uint32_t token = p.Token(gi - parts_->starts[ki]);
      if (p.vocab_ > 0 && token >= static_cast<uint64_t>(p.vocab_)) {
        return p.VocabError(gi - parts_->starts[ki], 1);
      }
      if (i < t) inputs[i] = token;
      if (i > 0) targets[i - 1] = token;
    }
    return Status::OK();
  }
  // A plain loop over the window; the vocab check rides along as a running maximum, so the
  // common case costs one compare per window.
  const std::byte* p = tokens_ + offset * width_;
  uint32_t current = LoadLe(p, width_);
  uint32_t max_token = current;
  for (uint64_t i = 0; i < t; ++i) {
    const uint32_t next = LoadLe(p + (i + 1) * width_, width_);
    inputs[i] = current;
    targets[i] = next;
    max_token = std::max(max_token, next);
    current = next;
  }
  if (vocab_ > 0 && max_token >= static_cast<uint64_t>(vocab_)) return VocabError(offset, t + 1);
  return Status::OK();
}

Status TokenSource::VocabError(uint64_t offset, uint64_t length) const {
  for (uint64_t i = offset; i < offset + length; ++i) {
    const uint32_t token = Token(i);
    if (token < static_cast<uint64_t>(vocab_)) continue;
    const std::string hint =
        format_ == Format::kText
            ? "text files use one token per byte, so model.vocab must be at least 256"
            : "the file was tokenized for a larger vocabulary: raise model.vocab above " +
                  std::to_string(token) + " or re-tokenize";
    return Status::InvalidArgument("data file " + path_ + ": token " + std::to_string(first_ + i) +
                                   " is " + std::to_string(token) + ", not below model.vocab " +
                                   std::to_string(vocab_) + " (" + hint + ")");
  }
  return Status::OK();
}

std::string TokenSource::Describe() const {
  const size_t n = parts_ != nullptr ? parts_->sources.size() : 0;
  const std::string shards = n > 0 ? std::to_string(n) + (n == 1 ? " file, " : " files, ") : "";
  return path_ + " (" + std::string(DataFormatName(format_)) + ", " + shards +
         std::to_string(count_) + " tokens)";
}

}  // namespace ds::engine
