// Internal to engine/config: reads one JSON object of the config key by key, with a default for
// each, writing the resolved value of every key it is asked about, and remembering which keys it
// knows so that the rest can be reported as unknown (with the closest known key).
// Thread safety: one reader per thread; Diagnostics is not shared across threads.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "io/status.h"

namespace ds::engine::internal {

using nlohmann::json;

// What a parse found besides values. Every error is kept, so that a file that cannot run gets
// all its problems listed at once: `error` is the first, and the rest follow it in ParseConfig's
// message ("; also: ..."). Checks that depend on values an earlier error left unset stay quiet
// (they ask ok() first), so a message lists causes, not their consequences.
struct Diagnostics {
  std::string source;  // prefix of every message: the file name
  Status error;
  std::vector<std::string> more_errors;  // after the first, without the prefix
  std::vector<std::string> warnings;
  std::vector<std::string> not_implemented;  // key paths
  std::vector<std::string> auto_filled;      // "path = value (why)"
  struct Unknown {
    std::string path;                   // "zero_optimization.stage3_prefech_bucket_size"
    std::vector<std::string> siblings;  // the keys known in that section
  };
  std::vector<Unknown> unknown;
  // Every key path a reader knew, to suggest "zero_optimization.stage" for a misplaced "stage".
  std::vector<std::string> known_paths;

  bool ok() const { return error.ok(); }
  void Error(std::string_view message);
  void Warn(std::string_view message);
};

// Whether dstrain acts on a key. kIgnored keys are accepted (DeepSpeed has them) and listed in
// Diagnostics::not_implemented when set to something other than their default.
enum class Use : uint8_t { kImplemented, kIgnored };

// Levenshtein distance, ignoring ASCII case.
size_t EditDistance(std::string_view a, std::string_view b);
// The candidate closest to `key`, if one is close enough to be a plausible typo.
std::optional<std::string> ClosestKey(std::string_view key, const std::vector<std::string>& known);

// "5" for 5, "\"two\"" for a string, "[0.9,0.95]" for an array: a value as the user wrote it.
std::string Show(const json& value);
// Shortest decimal text that reads back as `v` ("0.0003", "1e-08", "500000000").
std::string ShowNumber(double v);
bool IsAuto(const json* value);
// An integer, or a float with an integral value (DeepSpeed configs write 5e8); nullopt otherwise.
std::optional<int64_t> AsInteger(const json& value);

class SectionReader {
 public:
  // `value` is the section as given (nullptr or null: absent, every key takes its default).
  // `path` is its key path ("" for the top level). A section that is not an object is an error.
  SectionReader(Diagnostics* diag, std::string path, const json* value);

  const std::string& path() const { return path_; }
  std::string KeyPath(std::string_view key) const;
  bool present() const { return present_; }
  // The raw value of `key`, or nullptr when absent or null.
  const json* Get(std::string_view key) const;
  bool Has(std::string_view key) const { return Get(key) != nullptr; }
  bool IsAutoValue(std::string_view key) const { return IsAuto(Get(key)); }
  // Replaces an "auto" value of `key` by `value`, noting why in Diagnostics::auto_filled.
  void FillAuto(std::string_view key, const json& value, std::string_view why);
  // Replaces the value of `key` as given (null: removes it); for DeepSpeed's deprecated forms.
  void Replace(std::string_view key, const json& value);
  // Marks `key` known without reading it (the caller reads it through Get).
  void Know(std::string_view key);
  // `alias` is another name of `key` (DeepSpeed's pydantic aliases, old names); a value under
  // the alias is moved to `key` (both given: an error).
  void Alias(std::string_view key, std::string_view alias);

  // Typed reads. "auto" takes the default (as DeepSpeed's own config classes do) and is noted.
  bool Bool(std::string_view key, bool def, Use use = Use::kImplemented);
  // Integers also accept integral floats (DeepSpeed configs write 5e8). Values below `min` are
  // errors naming the bound.
  int64_t Int(std::string_view key, int64_t def, int64_t min, Use use = Use::kImplemented);
  double Number(std::string_view key, double def, Use use = Use::kImplemented);
  std::string String(std::string_view key, std::string_view def, Use use = Use::kImplemented);
  // One of `allowed` (compared ignoring case when `ignore_case`); returns the allowed spelling.
  std::string Choice(std::string_view key, std::string_view def,
                     std::initializer_list<std::string_view> allowed, bool ignore_case,
                     Use use = Use::kImplemented);
  // Any JSON value, kept as given (null default: `def`).
  json Any(std::string_view key, const json& def, Use use = Use::kImplemented);
  // A key whose contents dstrain does not read (DeepSpeed's autotuning, compile, ...): kept in
  // the resolved config as given, listed as not implemented when present.
  void Opaque(std::string_view key);

  // A nested section. Call Finish() on it, which stores its resolved value here.
  SectionReader Child(std::string_view key);
  // Reports unknown keys and hands the resolved object to the parent (or to `out` at the top).
  void Finish(json* out = nullptr);

  json& resolved() { return resolved_; }
  Diagnostics* diag() const { return diag_; }

 private:
  const json* Lookup(std::string_view key);  // marks known, handles "auto" bookkeeping
  void NoteIgnored(std::string_view key, const json& value, const json& def, Use use);
  void TypeError(std::string_view key, std::string_view expected, const json& got);

  Diagnostics* diag_;
  std::string path_;
  json value_;  // a copy: FillAuto and Alias edit it
  bool present_ = false;
  std::vector<std::string> known_;
  json resolved_ = json::object();
  SectionReader* parent_ = nullptr;
  std::string key_in_parent_;
};

}  // namespace ds::engine::internal
