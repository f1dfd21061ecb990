// Element types of stored tensors, with the names used on disk (manifest.h5) and by
// safetensors. Thread safety: pure functions and constants.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ds::fmt {

// The numeric values are stored nowhere: on disk a dtype is always its name.
enum class DType : uint8_t {
  kF32,
  kF16,
  kBF16,
  kF64,
  kI64,
  kI32,
  kI16,
  kI8,
  kU8,
  kBool,
};

// Bytes per element.
size_t DTypeSize(DType dtype);
// dstrain's names, as in the manifest: "float32", "float16", "bfloat16", "float64", "int64",
// "int32", "int16", "int8", "uint8", "bool" (the names torch prints without "torch.").
std::string_view DTypeName(DType dtype);
std::optional<DType> DTypeFromName(std::string_view name);
// safetensors' names: "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL".
std::string_view DTypeSafetensorsName(DType dtype);
std::optional<DType> DTypeFromSafetensorsName(std::string_view name);
// Floating types are byte-grouped before compression; integers are not.
bool DTypeIsFloat(DType dtype);

inline constexpr int kMaxDims = 8;  // tensors of more dimensions are refused

}  // namespace ds::fmt
