// For export, import and diff tests: safetensors files of TestTensors, written and read back
// whole (test sizes only), and reference dtype conversions written independently of
// formats/dtype_convert.h (plain arithmetic on doubles, no bit tricks).
#pragma once

#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "formats/safetensors.h"
#include "testing/checkpoint_builder.h"

namespace ds::ckpt {

inline Status WriteSafetensorsFile(io::Env* env, const std::string& path,
                                   const std::vector<testing::TestTensor>& tensors) {
  std::vector<fmt::SafetensorsTensor> layout;
  for (const testing::TestTensor& t : tensors) layout.push_back({t.name, t.dtype, t.shape, 0, 0});
  DS_ASSIGN_OR_RETURN(auto w, fmt::SafetensorsWriter::Create(env, path, layout,
                                                             {{"format", "pt"}, {"who", "test"}}));
  for (size_t i = 0; i < tensors.size(); ++i) {
    DS_RETURN_IF_ERROR(w->WriteTensorData(i, 0, tensors[i].data));
  }
  return w->Finish();
}

// Every tensor of a safetensors file, by name.
inline Result<std::map<std::string, testing::TestTensor>> ReadSafetensorsFile(
    io::Env* env, const std::string& path) {
  DS_ASSIGN_OR_RETURN(auto r, fmt::SafetensorsReader::Open(env, path));
  std::map<std::string, testing::TestTensor> out;
  for (size_t i = 0; i < r->tensors().size(); ++i) {
    const fmt::SafetensorsTensor& t = r->tensors()[i];
    testing::TestTensor tt{t.name, t.dtype, t.shape, std::vector<std::byte>(t.nbytes())};
    DS_RETURN_IF_ERROR(r->ReadTensorData(i, 0, tt.data));
    out[t.name] = std::move(tt);
  }
  return out;
}

inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline double BF16Value(uint16_t h) {
  const int exp = (h >> 7) & 0xff, man = h & 0x7f;
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  if (exp == 0xff) return man == 0 ? sign * INFINITY : NAN;
  if (exp == 0) return sign * std::ldexp(man, -133);  // 2^-126 * man / 128
  return sign * std::ldexp(128 + man, exp - 134);     // 2^(exp-127) * (128 + man) / 128
}

// float32 -> bfloat16, round to nearest, ties to even: pick the nearer of the two bfloat16
// values around x by exact arithmetic in double.
inline uint16_t ReferenceBF16(float x) {
  const uint32_t u = FloatBits(x);
  if (std::isnan(x)) return static_cast<uint16_t>((u >> 16) | 0x40);
  const auto lo = static_cast<uint16_t>(u >> 16);  // toward zero
  if ((u & 0xffff) == 0) return lo;
  const auto hi = static_cast<uint16_t>(lo + 1);  // away from zero
  const double dlo = BF16Value(lo);
  // Past the largest finite bfloat16 the next value up is infinity; rounding treats it as 2^128.
  const double dhi =
      ((hi >> 7) & 0xff) == 0xff ? std::copysign(std::ldexp(1.0, 128), x) : BF16Value(hi);
  const double to_lo = std::fabs(x - dlo), to_hi = std::fabs(dhi - x);
  if (to_lo != to_hi) return to_lo < to_hi ? lo : hi;
  return (lo & 1) == 0 ? lo : hi;
}

inline double F16Value(uint16_t h) {
  const int exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  if (exp == 0x1f) return man == 0 ? sign * INFINITY : NAN;
  if (exp == 0) return sign * std::ldexp(man, -24);  // 2^-14 * man / 1024
  return sign * std::ldexp(1024 + man, exp - 25);    // 2^(exp-15) * (1024 + man) / 1024
}

// The bytes of `t` converted element by element with the reference functions: floats to
// `to` (float32 or bfloat16), anything else unchanged.
inline std::vector<std::byte> ReferenceConvert(const testing::TestTensor& t, fmt::DType to) {
  if (!fmt::DTypeIsFloat(t.dtype) || t.dtype == to) return t.data;
  const uint64_t n = t.data.size() / fmt::DTypeSize(t.dtype);
  std::vector<std::byte> out(n * fmt::DTypeSize(to));
  for (uint64_t i = 0; i < n; ++i) {
    double v = 0;
    if (t.dtype == fmt::DType::kF32) {
      float f;
      std::memcpy(&f, t.data.data() + 4 * i, 4);
      v = f;
    } else if (t.dtype == fmt::DType::kF64) {
      std::memcpy(&v, t.data.data() + 8 * i, 8);
    } else {
      uint16_t h;
      std::memcpy(&h, t.data.data() + 2 * i, 2);
      v = t.dtype == fmt::DType::kBF16 ? BF16Value(h) : F16Value(h);
    }
    if (to == fmt::DType::kF32) {
      const auto f = static_cast<float>(v);
      std::memcpy(out.data() + 4 * i, &f, 4);
    } else {
      const uint16_t h = ReferenceBF16(static_cast<float>(v));
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

// `bytes` of a floating `dtype` with every NaN replaced by one canonical NaN, so that buffers
// can be compared whatever NaN payloads the conversions chose.
inline std::vector<std::byte> CanonicalNaNs(fmt::DType dtype, std::vector<std::byte> bytes) {
  const size_t es = fmt::DTypeSize(dtype);
  if (!fmt::DTypeIsFloat(dtype)) return bytes;
  for (size_t i = 0; i + es <= bytes.size(); i += es) {
    bool nan = false;
    if (dtype == fmt::DType::kF32) {
      float f;
      std::memcpy(&f, bytes.data() + i, 4);
      nan = std::isnan(f);
    } else if (dtype == fmt::DType::kF64) {
      double d;
      std::memcpy(&d, bytes.data() + i, 8);
      nan = std::isnan(d);
    } else {
      uint16_t h;
      std::memcpy(&h, bytes.data() + i, 2);
      nan = std::isnan(dtype == fmt::DType::kBF16 ? BF16Value(h) : F16Value(h));
    }
    if (nan) std::fill(bytes.begin() + i, bytes.begin() + i + es, std::byte{0xff});
  }
  return bytes;
}

}  // namespace ds::ckpt
