#include "formats/safetensors.h"

#include <algorithm>
#include <array>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <utility>

namespace ds::fmt {
namespace {

using Json = nlohmann::json;

constexpr uint64_t kLengthBytes = 8;    // the little-endian u64 header length before the JSON
constexpr uint64_t kDataAlignment = 8;  // bytes: the writer starts the data section at a multiple
constexpr std::string_view kMetadataKey = "__metadata__";
constexpr std::string_view kSupportedDTypes = "F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL";

// ---- message helpers

std::string TensorLabel(std::string_view name) { return "tensor '" + std::string(name) + "'"; }

std::string ShapeString(std::span<const int64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// As in the header: "[begin, end]".
std::string OffsetsString(uint64_t begin, uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + "]";
}

// A half-open byte range: "[begin, end)".
std::string BytesString(uint64_t begin, uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + ")";
}

// InvalidArgument unless `length` bytes at byte `offset` lie inside tensor `index`'s data.
Status CheckAccess(const std::string& path, const std::vector<SafetensorsTensor>& tensors,
                   size_t index, uint64_t offset, uint64_t length, std::string_view verb) {
  if (index >= tensors.size()) {
    return Status::InvalidArgument(path + ": tensor index " + std::to_string(index) +
                                   " out of range (" + std::to_string(tensors.size()) +
                                   " tensors)");
  }
  const SafetensorsTensor& t = tensors[index];
  if (offset > t.nbytes() || length > t.nbytes() - offset) {
    return Status::InvalidArgument(path + ": " + TensorLabel(t.name) + " holds " +
                                   std::to_string(t.nbytes()) + " bytes; cannot " +
                                   std::string(verb) + " " + std::to_string(length) +
                                   " at offset " + std::to_string(offset));
  }
  return Status::OK();
}

// Bytes that `shape` of `dtype` occupies, or nullopt past 2^64-1. Dimensions are >= 0.
std::optional<uint64_t> TensorBytes(std::span<const int64_t> shape, DType dtype) {
  uint64_t bytes = DTypeSize(dtype);
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
  for (int64_t dim : shape) {
    if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(dim), &bytes)) return std::nullopt;
  }
  return bytes;
}

// True when `s` is well-formed UTF-8 (no overlong forms, surrogates or code points past
// U+10FFFF). JSON text must be, and nlohmann's dump() throws on anything else.
bool IsValidUtf8(std::string_view s) {
  static constexpr std::array<uint32_t, 5> kMinCodePoint = {0, 0, 0x80, 0x800, 0x10000};
  size_t i = 0;
  while (i < s.size()) {
    const auto lead = static_cast<unsigned char>(s[i]);
    size_t len = 0;
    uint32_t cp = 0;
    if (lead < 0x80) {
      ++i;
      continue;
    } else if ((lead & 0xE0) == 0xC0) {
      len = 2, cp = lead & 0x1F;
    } else if ((lead & 0xF0) == 0xE0) {
      len = 3, cp = lead & 0x0F;
    } else if ((lead & 0xF8) == 0xF0) {
      len = 4, cp = lead & 0x07;
    } else {
      return false;
    }
    if (s.size() - i < len) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto cont = static_cast<unsigned char>(s[i + k]);
      if ((cont & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cont & 0x3F);
    }
    if (cp < kMinCodePoint[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

// ---- parsing the header

// Streams the header's JSON into tensors and metadata, checking each value as it arrives. There
// is no document tree, so memory follows the number of tensors, not the length of the text: a
// hostile header cannot nest or repeat its way into gigabytes. Keys of a tensor entry other than
// dtype, shape and data_offsets are skipped, as the reference does; repeated keys are refused
// (a JSON object that repeats a tensor name would otherwise hide one of the two).
class HeaderParser final : public nlohmann::json_sax<Json> {
 public:
  explicit HeaderParser(uint64_t data_size) : data_size_(data_size) {}

  const Status& status() const { return status_; }
  std::vector<SafetensorsTensor>& tensors() { return tensors_; }
  std::map<std::string, std::string>& metadata() { return metadata_; }

  bool null() override { return OnValue({Value::kLiteral, std::nullopt, "null"}); }
  bool boolean(bool b) override {
    return OnValue({Value::kLiteral, std::nullopt, b ? "true" : "false"});
  }
  bool number_integer(number_integer_t v) override {
    if (v >= 0) return OnValue({Value::kNumber, static_cast<uint64_t>(v), {}});  // "-0"
    number_text_ = std::to_string(v);
    return OnValue({Value::kNumber, std::nullopt, number_text_});
  }
  bool number_unsigned(number_unsigned_t v) override { return OnValue({Value::kNumber, v, {}}); }
  bool number_float(number_float_t, const string_t& text) override {
    return OnValue({Value::kNumber, std::nullopt, text});
  }
  bool string(string_t& s) override { return OnValue({Value::kString, std::nullopt, s}); }
  bool binary(binary_t&) override { return Fail("header holds binary data"); }  // not in JSON
  bool start_object(std::size_t) override { return OnValue({Value::kObject, std::nullopt, {}}); }
  bool start_array(std::size_t) override { return OnValue({Value::kArray, std::nullopt, {}}); }
  bool key(string_t& key) override;
  bool end_object() override;
  bool end_array() override;
  bool parse_error(std::size_t, const std::string&,
                   const nlohmann::detail::exception& ex) override {
    // "[json.exception.parse_error.101] parse error at line 1, column 2: ..." minus the tag.
    std::string what = ex.what();
    if (size_t tag_end = what.find("] "); tag_end != std::string::npos) what.erase(0, tag_end + 2);
    return Fail("header is not JSON: " + what);
  }

 private:
  struct Value {
    enum Kind : uint8_t { kLiteral, kNumber, kString, kArray, kObject } kind;
    std::optional<uint64_t> count;  // the value, when it is an integer >= 0
    std::string_view text;          // a literal or other number as written; a string's contents
  };
  // The containers that can be open around a value (skipped values are only counted).
  enum class In : uint8_t { kRoot, kTensor, kMetadata, kShape, kOffsets };

  // A value as messages show it: numbers and literals as written, the rest by their type.
  static std::string Describe(const Value& v) {
    switch (v.kind) {
      case Value::kString: return "a string";
      case Value::kArray: return "an array";
      case Value::kObject: return "an object";
      default: return v.count ? std::to_string(*v.count) : std::string(v.text);
    }
  }
  bool Fail(std::string message) {
    status_ = Status::Corruption(std::move(message));
    return false;  // stops the parser
  }
  std::string Label() const { return TensorLabel(tensor_.name); }
  bool OnValue(const Value& v);
  bool OnTensorField(const Value& v);
  bool OnDimension(const Value& v);
  bool EndTensor();

  const uint64_t data_size_;  // bytes in the data section
  Status status_;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, std::string> metadata_;
  std::vector<In> open_;          // containers around the next value, outermost first
  uint64_t skipped_depth_ = 0;    // containers open inside a skipped value
  std::set<std::string> names_;   // keys of the root object so far
  std::set<std::string> fields_;  // keys so far of the tensor entry or metadata being parsed
  std::string key_;               // the root key whose value comes next
  std::string field_;             // the tensor entry's or metadata's key whose value comes next
  SafetensorsTensor tensor_;      // the entry being parsed
  size_t offsets_seen_ = 0;       // numbers in its data_offsets so far
  std::string number_text_;       // backs Value::text for negative integers
};

bool HeaderParser::OnValue(const Value& v) {
  const bool container = v.kind == Value::kArray || v.kind == Value::kObject;
  if (skipped_depth_ > 0) {
    skipped_depth_ += container ? 1 : 0;
    return true;
  }
  if (open_.empty()) {
    if (v.kind != Value::kObject) {
      return Fail("header is " + Describe(v) + ", not a JSON object of tensors");
    }
    open_.push_back(In::kRoot);
    return true;
  }
  switch (open_.back()) {
    case In::kRoot:
      if (key_ == kMetadataKey) {
        if (v.kind == Value::kLiteral && v.text == "null") return true;  // as the reference
        if (v.kind != Value::kObject) {
          return Fail("__metadata__ is " + Describe(v) + ", not an object of strings");
        }
        fields_.clear();
        open_.push_back(In::kMetadata);
        return true;
      }
      if (v.kind != Value::kObject) {
        return Fail(TensorLabel(key_) + ": entry is " + Describe(v) +
                    ", not an object with dtype, shape and data_offsets");
      }
      tensor_ = SafetensorsTensor{.name = key_};
      fields_.clear();
      open_.push_back(In::kTensor);
      return true;
    case In::kMetadata:
      if (v.kind != Value::kString) {
        return Fail("__metadata__ key '" + field_ + "' is " + Describe(v) + ", not a string");
      }
      metadata_[field_] = std::string(v.text);
      return true;
    case In::kTensor: return OnTensorField(v);
    case In::kShape: return OnDimension(v);
    case In::kOffsets:
      if (offsets_seen_ == 2) {
        return Fail(Label() + ": data_offsets has more than 2 entries; expected [begin, end]");
      }
      if (!v.count) {
        return Fail(Label() + ": data_offsets[" + std::to_string(offsets_seen_) + "] is " +
                    Describe(v) + ", not an integer >= 0");
      }
      (offsets_seen_++ == 0 ? tensor_.data_begin : tensor_.data_end) = *v.count;
      return true;
  }
  return true;
}

bool HeaderParser::OnTensorField(const Value& v) {
  if (field_ == "dtype") {
    if (v.kind != Value::kString) {
      return Fail(Label() + ": dtype is " + Describe(v) + ", not a string such as \"F32\"");
    }
    std::optional<DType> dtype = DTypeFromSafetensorsName(v.text);
    if (!dtype) {
      return Fail(Label() + ": dtype '" + std::string(v.text) + "' is not supported (dstrain " +
                  "reads " + std::string(kSupportedDTypes) + ")");
    }
    tensor_.dtype = *dtype;
  } else if (field_ == "shape") {
    if (v.kind != Value::kArray) {
      return Fail(Label() + ": shape is " + Describe(v) + ", not an array of dimensions");
    }
    open_.push_back(In::kShape);
  } else if (field_ == "data_offsets") {
    if (v.kind != Value::kArray) {
      return Fail(Label() + ": data_offsets is " + Describe(v) + ", not [begin, end]");
    }
    offsets_seen_ = 0;
    open_.push_back(In::kOffsets);
  } else if (v.kind == Value::kArray || v.kind == Value::kObject) {
    skipped_depth_ = 1;  // an unknown key's value: skipped, as the reference does
  }
  return true;
}

bool HeaderParser::OnDimension(const Value& v) {
  if (tensor_.shape.size() == static_cast<size_t>(kMaxDims)) {
    return Fail(Label() + ": shape has more than " + std::to_string(kMaxDims) +
                " dimensions (dstrain supports at most " + std::to_string(kMaxDims) + ")");
  }
  const std::string where = Label() + ": shape[" + std::to_string(tensor_.shape.size()) + "] is ";
  if (!v.count) return Fail(where + Describe(v) + ", not an integer >= 0");
  if (*v.count > static_cast<uint64_t>(INT64_MAX)) {
    return Fail(where + std::to_string(*v.count) + ", more than 2^63-1");
  }
  tensor_.shape.push_back(static_cast<int64_t>(*v.count));
  return true;
}

bool HeaderParser::key(string_t& key) {
  if (skipped_depth_ > 0) return true;
  if (open_.back() == In::kRoot) {
    if (!names_.insert(key).second) {
      return Fail(key == kMetadataKey
                      ? "'__metadata__' appears twice in the header"
                      : TensorLabel(key) + " appears twice in the header (names must be unique)");
    }
    key_ = key;
    return true;
  }
  // Otherwise a tensor entry or the metadata: the only other objects that are opened.
  if (!fields_.insert(key).second) {
    return Fail((open_.back() == In::kMetadata ? std::string(kMetadataKey) : Label()) + ": key '" +
                key + "' appears twice");
  }
  field_ = key;
  return true;
}

bool HeaderParser::end_object() {
  if (skipped_depth_ > 0) {
    --skipped_depth_;
    return true;
  }
  const In closing = open_.back();
  open_.pop_back();
  return closing == In::kTensor ? EndTensor() : true;
}

bool HeaderParser::end_array() {
  if (skipped_depth_ > 0) {
    --skipped_depth_;
    return true;
  }
  if (open_.back() == In::kOffsets && offsets_seen_ != 2) {
    return Fail(Label() + ": data_offsets has " + std::to_string(offsets_seen_) +
                (offsets_seen_ == 1 ? " entry" : " entries") + "; expected [begin, end]");
  }
  open_.pop_back();
  return true;
}

// Checks the entry just closed on its own: fields present, shape x dtype size == byte range,
// the range inside the data section. How entries fit together is CheckTiling's job.
bool HeaderParser::EndTensor() {
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (fields_.count(field) == 0) return Fail(Label() + ": \"" + field + "\" is missing");
  }
  const SafetensorsTensor& t = tensor_;
  const std::string offsets = "data_offsets " + OffsetsString(t.data_begin, t.data_end);
  if (t.data_end < t.data_begin) return Fail(Label() + ": " + offsets + " end before they begin");
  const std::string shape =
      "shape " + ShapeString(t.shape) + " of " + std::string(DTypeSafetensorsName(t.dtype));
  std::optional<uint64_t> need = TensorBytes(t.shape, t.dtype);
  if (!need) return Fail(Label() + ": " + shape + " needs more than 2^64 bytes");
  if (*need != t.nbytes()) {
    return Fail(Label() + ": " + offsets + " hold " + std::to_string(t.nbytes()) + " bytes but " +
                shape + " needs " + std::to_string(*need));
  }
  if (t.data_end > data_size_) {
    return Fail(Label() + ": " + offsets + " reach past the end of the data section (" +
                std::to_string(data_size_) + " bytes; file truncated?)");
  }
  tensors_.push_back(std::move(tensor_));
  return true;
}

// Sorts `tensors` into data order and checks they tile [0, data_size) exactly, as the format
// requires: no overlaps, no gaps, no trailing bytes. Offsets are already within data_size.
Status CheckTiling(std::vector<SafetensorsTensor>& tensors, uint64_t data_size) {
  std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) {
    return std::tie(a.data_begin, a.data_end, a.name) < std::tie(b.data_begin, b.data_end, b.name);
  });
  uint64_t covered = 0;  // bytes: [0, covered) of the data section belongs to tensors seen so far
  const SafetensorsTensor* prev = nullptr;
  for (const SafetensorsTensor& t : tensors) {
    if (t.data_begin < covered) {
      return Status::Corruption("tensors '" + prev->name + "' (data_offsets " +
                                OffsetsString(prev->data_begin, prev->data_end) + ") and '" +
                                t.name + "' (data_offsets " +
                                OffsetsString(t.data_begin, t.data_end) + ") overlap");
    }
    if (t.data_begin > covered) {
      return Status::Corruption("bytes " + BytesString(covered, t.data_begin) +
                                " of the data section belong to no tensor (" +
                                (prev ? "between '" + prev->name + "' and '" : "before '") +
                                t.name + "')");
    }
    covered = t.data_end;
    prev = &t;
  }
  if (covered < data_size) {
    return Status::Corruption("bytes " + BytesString(covered, data_size) +
                              " of the data section belong to no tensor (trailing data" +
                              (prev ? " after '" + prev->name + "')" : "; no tensors listed)"));
  }
  return Status::OK();
}

}  // namespace

Result<std::vector<SafetensorsTensor>> ParseSafetensorsHeader(
    std::string_view json, uint64_t data_size, std::map<std::string, std::string>* metadata) {
  if (metadata != nullptr) metadata->clear();  // also on error: never half a map
  HeaderParser parser(data_size);
  if (!Json::sax_parse(json, &parser)) {
    return parser.status().ok() ? Status::Corruption("header is not JSON") : parser.status();
  }
  std::vector<SafetensorsTensor>& tensors = parser.tensors();
  DS_RETURN_IF_ERROR(CheckTiling(tensors, data_size));
  if (metadata != nullptr) *metadata = std::move(parser.metadata());
  return std::move(tensors);
}

// ---- writer

namespace {

// Checks what the writer is asked to lay out; the messages name the tensor by position too,
// since a bad name cannot be printed usefully.
Status ValidateLayout(const std::vector<SafetensorsTensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::set<std::string_view> names;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const SafetensorsTensor& t = tensors[i];
    const std::string label = "tensor #" + std::to_string(i) + " ('" + t.name + "')";
    if (t.name.empty()) return Status::InvalidArgument(label + " has an empty name");
    if (t.name == kMetadataKey) {
      return Status::InvalidArgument(label + ": the name is reserved for file metadata");
    }
    if (!IsValidUtf8(t.name)) return Status::InvalidArgument(label + ": name is not UTF-8");
    if (!names.insert(t.name).second) {
      return Status::InvalidArgument(label + " appears twice (names must be unique)");
    }
    if (t.shape.size() > static_cast<size_t>(kMaxDims)) {
      return Status::InvalidArgument(label + ": shape " + ShapeString(t.shape) + " has more than " +
                                     std::to_string(kMaxDims) + " dimensions");
    }
    if (std::any_of(t.shape.begin(), t.shape.end(), [](int64_t d) { return d < 0; })) {
      return Status::InvalidArgument(label + ": shape " + ShapeString(t.shape) +
                                     " has a negative dimension");
    }
  }
  for (const auto& [key, value] : metadata) {
    if (!IsValidUtf8(key) || !IsValidUtf8(value)) {
      return Status::InvalidArgument("metadata key '" + key + "': key or value is not UTF-8");
    }
  }
  return Status::OK();
}

// Assigns data_begin/data_end back to back in the given order.
Status AssignOffsets(std::vector<SafetensorsTensor>& tensors) {
  uint64_t next = 0;  // bytes into the data section
  for (SafetensorsTensor& t : tensors) {
    std::optional<uint64_t> bytes = TensorBytes(t.shape, t.dtype);
    if (!bytes || __builtin_add_overflow(next, *bytes, &t.data_end)) {
      return Status::InvalidArgument(TensorLabel(t.name) + ": shape " + ShapeString(t.shape) +
                                     " takes the file past 2^64 bytes");
    }
    t.data_begin = next;
    next = t.data_end;
  }
  return Status::OK();
}

// The 8-byte length and the JSON, padded with spaces so that the data starts at a multiple of
// kDataAlignment, as the reference writer does. Tensors appear in data order, metadata first.
std::string EncodeHeader(const std::vector<SafetensorsTensor>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[std::string(kMetadataKey)] = metadata;
  for (const SafetensorsTensor& t : tensors) {
    header[t.name] = nlohmann::ordered_json::object(
        {{"dtype", std::string(DTypeSafetensorsName(t.dtype))},
         {"shape", t.shape},
         {"data_offsets", nlohmann::ordered_json::array({t.data_begin, t.data_end})}});
  }
  std::string json = header.dump();
  json.append((kDataAlignment - (kLengthBytes + json.size()) % kDataAlignment) % kDataAlignment,
              ' ');
  std::string out(kLengthBytes, '\0');
  for (size_t i = 0; i < kLengthBytes; ++i) {
    out[i] = static_cast<char>((static_cast<uint64_t>(json.size()) >> (8 * i)) & 0xFF);
  }
  return out + json;
}

// Merges [begin, end) into `ranges` (begin -> end, disjoint, non-adjacent).
void AddRange(std::map<uint64_t, uint64_t>& ranges, uint64_t begin, uint64_t end) {
  auto it = ranges.upper_bound(begin);
  if (it != ranges.begin() && std::prev(it)->second >= begin) {
    --it;
    begin = it->first;
    end = std::max(end, it->second);
    it = ranges.erase(it);
  }
  while (it != ranges.end() && it->first <= end) {
    end = std::max(end, it->second);
    it = ranges.erase(it);
  }
  ranges.emplace(begin, end);
}

// The first byte range of [0, size) that `ranges` (from AddRange) misses, if any.
std::optional<std::pair<uint64_t, uint64_t>> FirstGap(const std::map<uint64_t, uint64_t>& ranges,
                                                      uint64_t size) {
  uint64_t covered = 0;  // bytes: [0, covered) is written
  for (const auto& [begin, end] : ranges) {
    if (begin > covered) return std::pair(covered, begin);
    covered = end;
  }
  if (covered < size) return std::pair(covered, size);
  return std::nullopt;
}

}  // namespace

// The writer never leaves a file at `path` that looks complete but is not:
//   1. Create writes the header to `path`.partial;
//   2. WriteTensorData fills the data section in any order, recording which bytes arrived;
//   3. Finish refuses while any byte is missing, then fsyncs and closes the partial file,
//   4. renames it onto `path` (replacing any older file atomically),
//   5. and fsyncs the directory, so that the new name survives a crash.
// A writer destroyed before step 4 removes its partial file.
struct SafetensorsWriter::Impl {
  enum class State : uint8_t { kWriting, kFinished, kFailed };

  io::Env* env = nullptr;
  std::string path;          // where Finish puts the file
  std::string partial_path;  // path + ".partial": the file until it is complete and synced
  std::vector<SafetensorsTensor> tensors;
  uint64_t data_start = 0;  // bytes: file offset of the data section
  std::unique_ptr<io::File> file;
  bool renamed = false;  // the file is at `path`: nothing is left to clean up

  std::mutex mu;
  std::vector<std::map<uint64_t, uint64_t>> written;  // guarded by mu; per tensor, bytes written
  State state = State::kWriting;                      // guarded by mu
};

SafetensorsWriter::SafetensorsWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

SafetensorsWriter::~SafetensorsWriter() {
  if (impl_->file) (void)impl_->file->Close();
  if (!impl_->renamed) (void)impl_->env->RemoveFile(impl_->partial_path);
}

Result<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    io::Env* env, const std::string& path, std::vector<SafetensorsTensor> tensors,
    const std::map<std::string, std::string>& metadata) {
  DS_RETURN_IF_ERROR(ValidateLayout(tensors, metadata)) << path;
  DS_RETURN_IF_ERROR(AssignOffsets(tensors)) << path;
  const std::string header = EncodeHeader(tensors, metadata);
  if (header.size() - kLengthBytes > kMaxSafetensorsHeaderBytes) {
    return Status::InvalidArgument(
        path + ": the header would take " + std::to_string(header.size() - kLengthBytes) +
        " bytes, more than readers accept (" + std::to_string(kMaxSafetensorsHeaderBytes) + ")");
  }
  auto impl = std::make_unique<Impl>();
  impl->env = env;
  impl->path = path;
  impl->partial_path = path + ".partial";
  impl->written.resize(tensors.size());
  impl->tensors = std::move(tensors);
  impl->data_start = header.size();
  DS_ASSIGN_OR_RETURN(impl->file,
                      env->OpenFile(impl->partial_path, {.mode = io::OpenMode::kTruncate}));
  std::unique_ptr<SafetensorsWriter> writer(new SafetensorsWriter(std::move(impl)));
  DS_RETURN_IF_ERROR(writer->impl_->file->WriteAt(0, std::as_bytes(std::span(header))))
      << "while writing the header of " << path;
  return writer;
}

const std::vector<SafetensorsTensor>& SafetensorsWriter::tensors() const { return impl_->tensors; }

Status SafetensorsWriter::WriteTensorData(size_t index, uint64_t offset,
                                          std::span<const std::byte> bytes) {
  DS_RETURN_IF_ERROR(
      CheckAccess(impl_->path, impl_->tensors, index, offset, bytes.size(), "write"));
  const SafetensorsTensor& t = impl_->tensors[index];
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->state != Impl::State::kWriting) {
      return Status::FailedPrecondition(impl_->path + ": WriteTensorData after Finish");
    }
  }
  if (bytes.empty()) return Status::OK();
  DS_RETURN_IF_ERROR(impl_->file->WriteAt(impl_->data_start + t.data_begin + offset, bytes))
      << "while writing " << TensorLabel(t.name) << " to " << impl_->partial_path;
  std::lock_guard<std::mutex> lock(impl_->mu);
  AddRange(impl_->written[index], offset, offset + bytes.size());
  return Status::OK();
}

Status SafetensorsWriter::Finish() {
  Impl& w = *impl_;
  {
    std::lock_guard<std::mutex> lock(w.mu);
    if (w.state == Impl::State::kFinished) {
      return Status::FailedPrecondition(w.path + ": Finish called again");
    }
    if (w.state == Impl::State::kFailed) {
      return Status::FailedPrecondition(w.path + ": an earlier Finish failed; write the file anew");
    }
    // Every byte must have been written: a hole would read back as zeros, silently.
    for (size_t i = 0; i < w.tensors.size(); ++i) {
      const SafetensorsTensor& t = w.tensors[i];
      std::optional<std::pair<uint64_t, uint64_t>> gap = FirstGap(w.written[i], t.nbytes());
      if (!gap) continue;
      uint64_t done = 0;  // bytes
      for (const auto& [begin, end] : w.written[i]) done += end - begin;
      return Status::FailedPrecondition(
          w.path + ": " + TensorLabel(t.name) + " is incomplete: bytes " +
          BytesString(gap->first, gap->second) + " were never written (" + std::to_string(done) +
          " of " + std::to_string(t.nbytes()) + " bytes written); call WriteTensorData for " +
          "every byte before Finish");
    }
    w.state = Impl::State::kFailed;  // until the steps below all succeed
  }
  // step 3: durable before visible, so the name `path` only ever shows a complete file
  DS_RETURN_IF_ERROR(w.file->Sync()) << "while finishing " << w.path;
  Status closed = w.file->Close();
  w.file.reset();
  DS_RETURN_IF_ERROR(closed) << "while finishing " << w.path;
  // step 4
  DS_RETURN_IF_ERROR(w.env->Rename(w.partial_path, w.path)) << "while finishing " << w.path;
  w.renamed = true;
  // step 5
  DS_RETURN_IF_ERROR(w.env->SyncDir(io::DirName(w.path))) << "while finishing " << w.path;
  std::lock_guard<std::mutex> lock(w.mu);
  w.state = Impl::State::kFinished;
  return Status::OK();
}

// ---- reader

struct SafetensorsReader::Impl {
  std::string path;
  std::unique_ptr<io::File> file;
  uint64_t data_start = 0;                 // bytes: file offset of the data section
  std::vector<SafetensorsTensor> tensors;  // in data order
  std::map<std::string, std::string> metadata;
  std::unordered_map<std::string, size_t> index;  // name -> position in `tensors`
};

SafetensorsReader::SafetensorsReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

SafetensorsReader::~SafetensorsReader() { (void)impl_->file->Close(); }

namespace {

// Reads exactly out.size() bytes at `offset`; a short read is Corruption naming `what`.
Status ReadExactly(const io::File& file, uint64_t offset, std::span<std::byte> out,
                   const std::string& what) {
  DS_ASSIGN_OR_RETURN(size_t n, file.ReadAt(offset, out));
  if (n == out.size()) return Status::OK();
  return Status::Corruption(file.path() + ": " + what + ": the file ends at byte " +
                            std::to_string(offset + n) + ", inside file bytes " +
                            BytesString(offset, offset + out.size()) + " (truncated?)");
}

}  // namespace

Result<std::unique_ptr<SafetensorsReader>> SafetensorsReader::Open(io::Env* env,
                                                                   const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  DS_ASSIGN_OR_RETURN(impl->file, env->OpenFile(path, {.mode = io::OpenMode::kRead}));
  std::unique_ptr<SafetensorsReader> reader(new SafetensorsReader(std::move(impl)));
  const io::File& file = *reader->impl_->file;
  DS_ASSIGN_OR_RETURN(uint64_t file_size, file.Size());
  if (file_size < kLengthBytes) {
    return Status::Corruption(path + ": the file is " + std::to_string(file_size) +
                              " bytes, too short for the 8-byte header length (not a " +
                              "safetensors file?)");
  }
  std::array<std::byte, kLengthBytes> prefix;
  DS_RETURN_IF_ERROR(ReadExactly(file, 0, prefix, "header length"));
  uint64_t header_bytes = 0;
  for (size_t i = 0; i < kLengthBytes; ++i) {
    header_bytes |= static_cast<uint64_t>(prefix[i]) << (8 * i);
  }
  if (header_bytes > kMaxSafetensorsHeaderBytes) {
    return Status::Corruption(path + ": header length " + std::to_string(header_bytes) +
                              " bytes exceeds the " + std::to_string(kMaxSafetensorsHeaderBytes) +
                              "-byte limit (not a safetensors file?)");
  }
  if (header_bytes > file_size - kLengthBytes) {
    return Status::Corruption(path + ": header length " + std::to_string(header_bytes) +
                              " bytes runs past the end of the file (" + std::to_string(file_size) +
                              " bytes; truncated?)");
  }
  std::string header(header_bytes, '\0');
  DS_RETURN_IF_ERROR(
      ReadExactly(file, kLengthBytes, std::as_writable_bytes(std::span(header)), "header"));
  Impl& r = *reader->impl_;
  r.data_start = kLengthBytes + header_bytes;
  Result<std::vector<SafetensorsTensor>> tensors =
      ParseSafetensorsHeader(header, file_size - r.data_start, &r.metadata);
  if (!tensors.ok()) return tensors.status().WithContext(path);
  r.tensors = std::move(tensors).value();
  for (size_t i = 0; i < r.tensors.size(); ++i) r.index.emplace(r.tensors[i].name, i);
  return reader;
}

const std::vector<SafetensorsTensor>& SafetensorsReader::tensors() const { return impl_->tensors; }

const std::map<std::string, std::string>& SafetensorsReader::metadata() const {
  return impl_->metadata;
}

Result<size_t> SafetensorsReader::Find(const std::string& name) const {
  auto it = impl_->index.find(name);
  if (it == impl_->index.end()) {
    return Status::NotFound(impl_->path + ": no tensor named '" + name + "' (the file has " +
                            std::to_string(impl_->tensors.size()) + ")");
  }
  return it->second;
}

Status SafetensorsReader::ReadTensorData(size_t index, uint64_t offset,
                                         std::span<std::byte> out) const {
  DS_RETURN_IF_ERROR(CheckAccess(impl_->path, impl_->tensors, index, offset, out.size(), "read"));
  const SafetensorsTensor& t = impl_->tensors[index];
  if (out.empty()) return Status::OK();
  return ReadExactly(*impl_->file, impl_->data_start + t.data_begin + offset, out,
                     TensorLabel(t.name));
}

}  // namespace ds::fmt
