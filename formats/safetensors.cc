// safetensors writer and reader (safetensors.h); the header parser is in safetensors_header.cc.
#include "formats/safetensors.h"

#include <algorithm>
#include <array>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "formats/internal/safetensors_header.h"

namespace ds::fmt {
namespace {

constexpr uint64_t kLengthBytes = 8;    // the little-endian u64 header length before the JSON
constexpr uint64_t kDataAlignment = 8;  // bytes: the writer starts the data section at a multiple

// ---- message helpers

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

}  // namespace

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

Result<std::map<std::string, std::string>> ReadSafetensorsIndex(io::Env* env,
                                                                const std::string& index) {
  DS_ASSIGN_OR_RETURN(std::string text, env->ReadFileToString(index));
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") ||
      !j["weight_map"].is_object() || j["weight_map"].empty()) {
    return Status::InvalidArgument(index +
                                   ": not a safetensors index (a JSON object with a "
                                   "\"weight_map\" of tensor name -> file)");
  }
  const std::string dir = io::DirName(index);
  std::map<std::string, std::string> files;
  for (const auto& [name, file] : j["weight_map"].items()) {
    if (!file.is_string() || file.get<std::string>().empty() ||
        file.get<std::string>().find('/') != std::string::npos) {
      return Status::InvalidArgument(index + ": weight_map[\"" + name +
                                     "\"] must name a file in the folder, not " + file.dump());
    }
    files[name] = io::JoinPath(dir, file.get<std::string>());
  }
  return files;
}

}  // namespace ds::fmt
