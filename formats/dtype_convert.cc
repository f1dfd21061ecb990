#include "formats/dtype_convert.h"

#include <string>

namespace ds::fmt {
namespace {

// Element i of a little-endian buffer as float (widening exactly, or float64 rounded).
template <DType kFrom>
float LoadAsF32(const std::byte* p) {
  if constexpr (kFrom == DType::kF32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  } else if constexpr (kFrom == DType::kF64) {
    double d;
    std::memcpy(&d, p, 8);
    return static_cast<float>(d);
  } else {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return kFrom == DType::kBF16 ? BF16ToF32(h) : F16ToF32(h);
  }
}

template <DType kFrom>
void ToF32(std::span<const std::byte> src, std::span<std::byte> dst, uint64_t n) {
  constexpr size_t es = kFrom == DType::kF64 ? 8 : kFrom == DType::kF32 ? 4 : 2;
  for (uint64_t i = 0; i < n; ++i) {
    const float f = LoadAsF32<kFrom>(src.data() + es * i);
    std::memcpy(dst.data() + 4 * i, &f, 4);
  }
}

template <DType kFrom>
void ToBF16(std::span<const std::byte> src, std::span<std::byte> dst, uint64_t n) {
  constexpr size_t es = kFrom == DType::kF64 ? 8 : kFrom == DType::kF32 ? 4 : 2;
  for (uint64_t i = 0; i < n; ++i) {
    const uint16_t h = F32ToBF16(LoadAsF32<kFrom>(src.data() + es * i));
    std::memcpy(dst.data() + 2 * i, &h, 2);
  }
}

template <DType kFrom>
void ToF64(std::span<const std::byte> src, std::span<std::byte> dst, uint64_t n) {
  constexpr size_t es = kFrom == DType::kF32 ? 4 : 2;
  for (uint64_t i = 0; i < n; ++i) {
    const double d = LoadAsF32<kFrom>(src.data() + es * i);
    std::memcpy(dst.data() + 8 * i, &d, 8);
  }
}

}  // namespace

bool CanConvert(DType from, DType to) {
  return from == to || (DTypeIsFloat(from) && DTypeIsFloat(to) && to != DType::kF16);
}

Status ConvertElements(DType from, std::span<const std::byte> src, DType to,
                       std::span<std::byte> dst) {
  const auto what = [&] {
    return "converting " + std::string(DTypeName(from)) + " to " + std::string(DTypeName(to));
  };
  if (!CanConvert(from, to)) return Status::InvalidArgument(what() + " is not supported");
  const uint64_t n = src.size() / DTypeSize(from);
  if (src.size() % DTypeSize(from) != 0 || dst.size() != n * DTypeSize(to)) {
    return Status::InvalidArgument(what() + ": " + std::to_string(src.size()) + " bytes in, " +
                                   std::to_string(dst.size()) + " bytes out do not match");
  }
  if (from == to) {
    if (!src.empty()) std::memcpy(dst.data(), src.data(), src.size());
    return Status::OK();
  }
  switch (to) {
    case DType::kF32:
      if (from == DType::kBF16) ToF32<DType::kBF16>(src, dst, n);
      if (from == DType::kF16) ToF32<DType::kF16>(src, dst, n);
      if (from == DType::kF64) ToF32<DType::kF64>(src, dst, n);
      break;
    case DType::kBF16:
      if (from == DType::kF32) ToBF16<DType::kF32>(src, dst, n);
      if (from == DType::kF16) ToBF16<DType::kF16>(src, dst, n);
      if (from == DType::kF64) ToBF16<DType::kF64>(src, dst, n);
      break;
    case DType::kF64:
      if (from == DType::kF32) ToF64<DType::kF32>(src, dst, n);
      if (from == DType::kBF16) ToF64<DType::kBF16>(src, dst, n);
      if (from == DType::kF16) ToF64<DType::kF16>(src, dst, n);
      break;
    default: break;
  }
  return Status::OK();
}

}  // namespace ds::fmt
