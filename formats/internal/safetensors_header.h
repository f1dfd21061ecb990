// What the safetensors header parser (safetensors_header.cc) shares with the writer and reader
// (safetensors.cc): the reserved metadata key, the bytes a shape takes, and how messages name
// tensors, shapes and byte ranges. Internal to ds_formats.
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "formats/dtype.h"

namespace ds::fmt {

// The root key of the header that holds file metadata (string to string), not a tensor.
inline constexpr std::string_view kMetadataKey = "__metadata__";

// "tensor 'name'".
std::string TensorLabel(std::string_view name);
// "[2, 3]".
std::string ShapeString(std::span<const int64_t> shape);
// A half-open byte range: "[begin, end)".
std::string BytesString(uint64_t begin, uint64_t end);
// Bytes that `shape` of `dtype` occupies, or nullopt past 2^64-1. Dimensions are >= 0.
std::optional<uint64_t> TensorBytes(std::span<const int64_t> shape, DType dtype);

}  // namespace ds::fmt
