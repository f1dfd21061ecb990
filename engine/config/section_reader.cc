#include "engine/config/section_reader.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <utility>

namespace ds::engine::internal {

namespace {

char Lower(char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); }

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(),
                                            [](char x, char y) { return Lower(x) == Lower(y); });
}

bool Contains(const std::vector<std::string>& v, std::string_view s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

}  // namespace

// ---- Diagnostics and helpers

void Diagnostics::Error(std::string_view message) {
  if (error.ok()) {
    error = Status::InvalidArgument(source + ": " + std::string(message));
  } else if (error.message() != source + ": " + std::string(message) &&
             std::find(more_errors.begin(), more_errors.end(), message) == more_errors.end()) {
    more_errors.emplace_back(message);
  }
}

void Diagnostics::Warn(std::string_view message) {
  warnings.push_back(source + ": " + std::string(message));
}

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];  // row[i-1][j-1]
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      size_t substitute = diagonal + (Lower(a[i - 1]) == Lower(b[j - 1]) ? 0 : 1);
      row[j] = std::min({above + 1, row[j - 1] + 1, substitute});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::optional<std::string> ClosestKey(std::string_view key, const std::vector<std::string>& known) {
  std::optional<std::string> best;
  size_t best_distance = std::numeric_limits<size_t>::max();
  for (const std::string& candidate : known) {
    size_t d = EditDistance(key, candidate);
    // A typo: a few edits, relative to the length. Or a shortened / lengthened name
    // ("vocab_size" for vocab), which edits alone would call far.
    bool plausible = d <= std::max<size_t>(2, key.size() / 3);
    std::string lower_key(key.size(), ' '), lower_candidate(candidate.size(), ' ');
    std::transform(key.begin(), key.end(), lower_key.begin(), Lower);
    std::transform(candidate.begin(), candidate.end(), lower_candidate.begin(), Lower);
    if (!plausible && std::min(key.size(), candidate.size()) >= 4) {
      plausible = lower_candidate.find(lower_key) != std::string::npos ||
                  lower_key.find(lower_candidate) != std::string::npos;
    }
    if (plausible && d < best_distance) {
      best = candidate;
      best_distance = d;
    }
  }
  return best;
}

std::string Show(const json& value) { return value.dump(); }

std::string ShowNumber(double v) { return json(v).dump(); }

bool IsAuto(const json* value) {
  return value != nullptr && value->is_string() && value->get_ref<const std::string&>() == "auto";
}

std::optional<int64_t> AsInteger(const json& value) {
  if (value.is_number_unsigned()) {
    if (value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return std::nullopt;
    }
    return static_cast<int64_t>(value.get<uint64_t>());
  }
  if (value.is_number_integer()) return value.get<int64_t>();
  if (value.is_number_float()) {
    double d = value.get<double>();
    if (std::isfinite(d) && std::trunc(d) == d && std::fabs(d) < 9.2e18) {
      return static_cast<int64_t>(d);
    }
  }
  return std::nullopt;
}

// ---- SectionReader

SectionReader::SectionReader(Diagnostics* diag, std::string path, const json* value)
    : diag_(diag), path_(std::move(path)) {
  if (value == nullptr || value->is_null()) {
    value_ = json::object();
    return;
  }
  if (!value->is_object()) {
    diag_->Error(path_ + " must be a section ({...}), got " + Show(*value));
    value_ = json::object();
    return;
  }
  value_ = *value;
  present_ = true;
}

std::string SectionReader::KeyPath(std::string_view key) const {
  return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
}

const json* SectionReader::Get(std::string_view key) const {
  auto it = value_.find(key);
  if (it == value_.end() || it->is_null()) return nullptr;
  return &*it;
}

void SectionReader::Know(std::string_view key) {
  if (!Contains(known_, key)) {
    known_.emplace_back(key);
    diag_->known_paths.push_back(KeyPath(key));
  }
}

void SectionReader::FillAuto(std::string_view key, const json& value, std::string_view why) {
  if (!IsAutoValue(key)) return;
  value_[std::string(key)] = value;
  diag_->auto_filled.push_back(KeyPath(key) + " = " + Show(value) + " (" + std::string(why) + ")");
}

void SectionReader::Replace(std::string_view key, const json& value) {
  if (value.is_null()) {
    value_.erase(std::string(key));
  } else {
    value_[std::string(key)] = value;
  }
}

void SectionReader::Alias(std::string_view key, std::string_view alias) {
  Know(alias);
  if (!Has(alias)) return;
  if (Has(key)) {
    diag_->Error("give " + KeyPath(key) + " or " + KeyPath(alias) + ", not both (" +
                 std::string(alias) + " is another name of " + std::string(key) + ")");
    return;
  }
  value_[std::string(key)] = value_[std::string(alias)];
  value_.erase(std::string(alias));
}

const json* SectionReader::Lookup(std::string_view key) {
  Know(key);
  return Get(key);
}

void SectionReader::NoteIgnored(std::string_view key, const json& value, const json& def, Use use) {
  if (use == Use::kIgnored && Has(key) && !IsAutoValue(key) && value != def) {
    diag_->not_implemented.push_back(KeyPath(key));
  }
}

void SectionReader::TypeError(std::string_view key, std::string_view expected, const json& got) {
  diag_->Error(KeyPath(key) + " must be " + std::string(expected) + ", got " + Show(got));
}

bool SectionReader::Bool(std::string_view key, bool def, Use use) {
  const json* v = Lookup(key);
  bool out = def;
  if (v == nullptr || IsAuto(v)) {
    if (IsAuto(v)) FillAuto(key, def, "default");
  } else if (v->is_boolean()) {
    out = v->get<bool>();
  } else if (v->is_number_integer() && (v->get<int64_t>() == 0 || v->get<int64_t>() == 1)) {
    out = v->get<int64_t>() == 1;  // Python's truthiness of 0 / 1, as DeepSpeed reads them
  } else {
    TypeError(key, "true or false", *v);
  }
  NoteIgnored(key, out, def, use);
  resolved_[std::string(key)] = out;
  return out;
}

int64_t SectionReader::Int(std::string_view key, int64_t def, int64_t min, Use use) {
  const json* v = Lookup(key);
  int64_t out = def;
  if (v == nullptr || IsAuto(v)) {
    if (IsAuto(v)) FillAuto(key, def, "default");
  } else if (std::optional<int64_t> i = AsInteger(*v)) {
    out = *i;
  } else {
    TypeError(key, "an integer", *v);
  }
  if (diag_->ok() && out < min) {
    diag_->Error(KeyPath(key) + " must be >= " + std::to_string(min) + ", got " +
                 std::to_string(out));
  }
  NoteIgnored(key, out, def, use);
  resolved_[std::string(key)] = out;
  return out;
}

double SectionReader::Number(std::string_view key, double def, Use use) {
  const json* v = Lookup(key);
  double out = def;
  if (v == nullptr || IsAuto(v)) {
    if (IsAuto(v)) FillAuto(key, def, "default");
  } else if (v->is_number()) {
    out = v->get<double>();
  } else {
    TypeError(key, "a number", *v);
  }
  NoteIgnored(key, out, def, use);
  resolved_[std::string(key)] = out;
  return out;
}

std::string SectionReader::String(std::string_view key, std::string_view def, Use use) {
  const json* v = Lookup(key);
  std::string out(def);
  if (v == nullptr || IsAuto(v)) {
    if (IsAuto(v) && def != "auto") FillAuto(key, out, "default");  // "auto" may be a value
  } else if (v->is_string()) {
    out = v->get<std::string>();
  } else {
    TypeError(key, "a string", *v);
  }
  NoteIgnored(key, out, std::string(def), use);
  resolved_[std::string(key)] = out;
  return out;
}

std::string SectionReader::Choice(std::string_view key, std::string_view def,
                                  std::initializer_list<std::string_view> allowed, bool ignore_case,
                                  Use use) {
  std::string given = String(key, def, Use::kImplemented);
  std::string out(def);
  bool found = false;
  for (std::string_view a : allowed) {
    if (ignore_case ? EqualsIgnoreCase(given, a) : given == a) {
      out = a;
      found = true;
    }
  }
  if (!found && diag_->ok()) {
    std::string list;
    for (std::string_view a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
    diag_->Error(KeyPath(key) + " '" + given + "' is not one of: " + list);
  }
  NoteIgnored(key, out, std::string(def), use);
  resolved_[std::string(key)] = out;
  return out;
}

json SectionReader::Any(std::string_view key, const json& def, Use use) {
  const json* v = Lookup(key);
  json out = v == nullptr || IsAuto(v) ? def : *v;
  NoteIgnored(key, out, def, use);
  resolved_[std::string(key)] = out;
  return out;
}

void SectionReader::Opaque(std::string_view key) {
  const json* v = Lookup(key);
  if (v == nullptr) return;
  diag_->not_implemented.push_back(KeyPath(key));
  resolved_[std::string(key)] = *v;
}

SectionReader SectionReader::Child(std::string_view key) {
  const json* v = Lookup(key);
  SectionReader child(diag_, KeyPath(key), IsAuto(v) ? nullptr : v);
  child.parent_ = this;
  child.key_in_parent_ = key;
  return child;
}

void SectionReader::Finish(json* out) {
  for (auto it = value_.begin(); it != value_.end(); ++it) {
    if (!Contains(known_, it.key())) diag_->unknown.push_back({KeyPath(it.key()), known_});
  }
  if (parent_ != nullptr) parent_->resolved_[key_in_parent_] = resolved_;
  if (out != nullptr) *out = resolved_;
}

}  // namespace ds::engine::internal
