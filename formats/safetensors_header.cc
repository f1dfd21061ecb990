// The safetensors header parser (ParseSafetensorsHeader in safetensors.h): the JSON is streamed
// through a SAX handler that checks each value as it arrives, then the entries are checked to tile
// the data section. Every byte it reads comes from disk (fuzzed by safetensors_header_fuzz).
#include "formats/internal/safetensors_header.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string_view>
#include <tuple>
#include <utility>

#include "formats/safetensors.h"

namespace ds::fmt {

// ---- message helpers

std::string TensorLabel(std::string_view name) { return "tensor '" + std::string(name) + "'"; }

std::string ShapeString(std::span<const int64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// A half-open byte range: "[begin, end)".
std::string BytesString(uint64_t begin, uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + ")";
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

namespace {

using Json = nlohmann::json;

constexpr std::string_view kSupportedDTypes = "F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL";

// As in the header: "[begin, end]".
std::string OffsetsString(uint64_t begin, uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + "]";
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

}  // namespace ds::fmt
