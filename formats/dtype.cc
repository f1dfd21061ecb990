#include "formats/dtype.h"

#include <array>

namespace ds::fmt {
namespace {

struct DTypeInfo {
  DType dtype;
  size_t size;
  std::string_view name;
  std::string_view safetensors;
  bool is_float;
};

constexpr std::array<DTypeInfo, 10> kInfo = {{
    {DType::kF32, 4, "float32", "F32", true},
    {DType::kF16, 2, "float16", "F16", true},
    {DType::kBF16, 2, "bfloat16", "BF16", true},
    {DType::kF64, 8, "float64", "F64", true},
    {DType::kI64, 8, "int64", "I64", false},
    {DType::kI32, 4, "int32", "I32", false},
    {DType::kI16, 2, "int16", "I16", false},
    {DType::kI8, 1, "int8", "I8", false},
    {DType::kU8, 1, "uint8", "U8", false},
    {DType::kBool, 1, "bool", "BOOL", false},
}};

const DTypeInfo& Info(DType d) { return kInfo[static_cast<size_t>(d)]; }

}  // namespace

size_t DTypeSize(DType d) { return Info(d).size; }
std::string_view DTypeName(DType d) { return Info(d).name; }
std::string_view DTypeSafetensorsName(DType d) { return Info(d).safetensors; }
bool DTypeIsFloat(DType d) { return Info(d).is_float; }

std::optional<DType> DTypeFromName(std::string_view name) {
  for (const DTypeInfo& i : kInfo) {
    if (i.name == name) return i.dtype;
  }
  return std::nullopt;
}

std::optional<DType> DTypeFromSafetensorsName(std::string_view name) {
  for (const DTypeInfo& i : kInfo) {
    if (i.safetensors == name) return i.dtype;
  }
  return std::nullopt;
}

}  // namespace ds::fmt
