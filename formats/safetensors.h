// safetensors files (Hugging Face's format): an 8-byte little-endian header length N, N bytes
// of JSON {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
// "__metadata__": {"key": "value"}}, then the data. Used by `dsckpt export` (streaming: the
// writer lays out every tensor first, then takes bytes in any order) and `dsckpt import`.
// Thread safety: a SafetensorsWriter or SafetensorsReader may be used from several threads for
// WriteTensorData / ReadTensorData on distinct ranges; Finish is single-threaded.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "io/env.h"
#include "io/status.h"

namespace ds::fmt {

struct SafetensorsTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t data_begin = 0;  // bytes, relative to the start of the data section
  uint64_t data_end = 0;
  uint64_t nbytes() const { return data_end - data_begin; }
};

// Readers refuse headers larger than this (the format's reference implementation uses 100 MB).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

class SafetensorsWriter {
 public:
  // Creates `path` (through `env`) laid out for `tensors` in the given order; their
  // data_begin/data_end are assigned here. Names must be unique and non-empty.
  static Result<std::unique_ptr<SafetensorsWriter>> Create(
      io::Env* env, const std::string& path, std::vector<SafetensorsTensor> tensors,
      const std::map<std::string, std::string>& metadata);
  ~SafetensorsWriter();

  const std::vector<SafetensorsTensor>& tensors() const;
  // Writes `bytes` at byte `offset` of tensor `index`'s data.
  Status WriteTensorData(size_t index, uint64_t offset, std::span<const std::byte> bytes);
  // Checks every byte of every tensor was written (FailedPrecondition naming the first gap;
  // write it and call Finish again), fsyncs, closes, renames `path.partial` onto `path` and
  // syncs the directory. A writer destroyed before that removes its `.partial` file.
  Status Finish();

 private:
  struct Impl;
  explicit SafetensorsWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class SafetensorsReader {
 public:
  // Reads and validates the header: JSON well-formed, known dtypes, shapes x dtype size ==
  // byte ranges, ranges inside the file, no overlaps, no gaps (the format requires the data
  // section to be fully covered), unique names. Errors name the file and the tensor.
  static Result<std::unique_ptr<SafetensorsReader>> Open(io::Env* env, const std::string& path);
  ~SafetensorsReader();

  const std::vector<SafetensorsTensor>& tensors() const;  // in data order
  const std::map<std::string, std::string>& metadata() const;
  // Index of a tensor by name, or NotFound.
  Result<size_t> Find(const std::string& name) const;
  // Reads `out.size()` bytes at byte `offset` of tensor `index`'s data.
  Status ReadTensorData(size_t index, uint64_t offset, std::span<std::byte> out) const;

 private:
  struct Impl;
  explicit SafetensorsReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Parses and validates a header alone (the fuzz target's entry point). `data_size` is the size
// of the data section, which the offsets must tile exactly; `json` is the header text (without
// the 8-byte length).
Result<std::vector<SafetensorsTensor>> ParseSafetensorsHeader(
    std::string_view json, uint64_t data_size, std::map<std::string, std::string>* metadata);

// A sharded Hugging Face folder's model.safetensors.index.json (save_pretrained's layout): its
// "weight_map", tensor name -> a file in the same folder, as full paths under `dir`.
// InvalidArgument naming the index for anything else (not JSON, no weight_map, an empty one, a
// file that is not a plain name in the folder).
Result<std::map<std::string, std::string>> ReadSafetensorsIndex(io::Env* env,
                                                                const std::string& index);

}  // namespace ds::fmt
