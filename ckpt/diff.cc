#include "ckpt/diff.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>

#include "ckpt/internal/windows.h"
#include "ckpt/reader.h"
#include "formats/dtype_convert.h"

namespace ds::ckpt {

std::string_view TensorDiffKindName(TensorDiffKind kind) {
  switch (kind) {
    case TensorDiffKind::kEqual: return "equal";
    case TensorDiffKind::kDiffers: return "differs";
    case TensorDiffKind::kOnlyInA: return "only_in_a";
    case TensorDiffKind::kOnlyInB: return "only_in_b";
    case TensorDiffKind::kDTypeMismatch: return "dtype_mismatch";
    case TensorDiffKind::kShapeMismatch: return "shape_mismatch";
  }
  return "?";
}

bool DiffReport::equal() const {
  return blobs.empty() && std::all_of(tensors.begin(), tensors.end(), [](const TensorDiff& t) {
           return t.kind == TensorDiffKind::kEqual;
         });
}

namespace {

// ---- comparing one window of elements

template <typename T>
T Load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Element `i` of a buffer of floating `kType`, as a double (exactly).
template <fmt::DType kType>
double FloatAt(const std::byte* base, uint64_t i) {
  using fmt::DType;
  if constexpr (kType == DType::kF32) return Load<float>(base + 4 * i);
  if constexpr (kType == DType::kF64) return Load<double>(base + 8 * i);
  if constexpr (kType == DType::kBF16) return fmt::BF16ToF32(Load<uint16_t>(base + 2 * i));
  if constexpr (kType == DType::kF16) return fmt::F16ToF32(Load<uint16_t>(base + 2 * i));
}

// Element `i` of a buffer of integer (or bool) `kType`, widened exactly.
template <fmt::DType kType>
int64_t IntAt(const std::byte* base, uint64_t i) {
  using fmt::DType;
  if constexpr (kType == DType::kI64) return Load<int64_t>(base + 8 * i);
  if constexpr (kType == DType::kI32) return Load<int32_t>(base + 4 * i);
  if constexpr (kType == DType::kI16) return Load<int16_t>(base + 2 * i);
  if constexpr (kType == DType::kI8) return Load<int8_t>(base + i);
  if constexpr (kType == DType::kU8 || kType == DType::kBool) return Load<uint8_t>(base + i);
}

struct Tolerance {
  double atol = 0, rtol = 0;
  bool exact() const { return atol == 0 && rtol == 0; }
};

// Compares `n` elements of a and b (raw bytes of one dtype), the first being element `first` of
// the tensor, and accumulates into `d`. Plain loop: the bytes are compared first, and only
// elements whose bytes differ are decoded.
template <fmt::DType kType>
void CompareWindow(const std::byte* a, const std::byte* b, uint64_t n, uint64_t first,
                   const Tolerance& tol, TensorDiff& d) {
  constexpr size_t es =
      kType == fmt::DType::kF64 || kType == fmt::DType::kI64                                 ? 8
      : kType == fmt::DType::kF32 || kType == fmt::DType::kI32                               ? 4
      : kType == fmt::DType::kBF16 || kType == fmt::DType::kF16 || kType == fmt::DType::kI16 ? 2
                                                                                             : 1;
  constexpr bool is_float = kType == fmt::DType::kF32 || kType == fmt::DType::kF64 ||
                            kType == fmt::DType::kBF16 || kType == fmt::DType::kF16;
  for (uint64_t i = 0; i < n; ++i) {
    if (std::memcmp(a + es * i, b + es * i, es) == 0) continue;
    const bool first_numeric = d.not_bit_exact++ == d.nan_mismatches;  // no difference seen yet
    double x, y, abs;
    bool mismatch = true;  // integers and bools compare exactly
    if constexpr (is_float) {
      x = FloatAt<kType>(a, i);
      y = FloatAt<kType>(b, i);
      if (std::isnan(x) || std::isnan(y)) {
        d.nan_mismatches++;
        if (d.mismatched++ == 0) d.first_mismatch = first + i;
        continue;
      }
      abs = std::fabs(x - y);
      mismatch = tol.exact() || !(abs <= tol.atol + tol.rtol * std::fabs(y));
    } else {
      // The difference in integers: int64 values past 2^53 are not exact as doubles.
      const int64_t p = IntAt<kType>(a, i), q = IntAt<kType>(b, i);
      const uint64_t delta = p > q ? static_cast<uint64_t>(p) - static_cast<uint64_t>(q)
                                   : static_cast<uint64_t>(q) - static_cast<uint64_t>(p);
      x = static_cast<double>(p);
      y = static_cast<double>(q);
      abs = static_cast<double>(delta);
    }
    // The first difference is recorded even when it is 0 (-0.0 against +0.0).
    if (abs > d.max_abs || first_numeric) {
      d.max_abs = abs;
      d.max_abs_index = first + i;
      d.a_at_max = x;
      d.b_at_max = y;
    }
    d.max_rel =
        std::max(d.max_rel, y == 0 ? std::numeric_limits<double>::infinity() : abs / std::fabs(y));
    if (mismatch && d.mismatched++ == 0) d.first_mismatch = first + i;
  }
}

void Compare(fmt::DType dtype, const std::byte* a, const std::byte* b, uint64_t n, uint64_t first,
             const Tolerance& tol, TensorDiff& d) {
  using fmt::DType;
  switch (dtype) {
    case DType::kF32: return CompareWindow<DType::kF32>(a, b, n, first, tol, d);
    case DType::kF16: return CompareWindow<DType::kF16>(a, b, n, first, tol, d);
    case DType::kBF16: return CompareWindow<DType::kBF16>(a, b, n, first, tol, d);
    case DType::kF64: return CompareWindow<DType::kF64>(a, b, n, first, tol, d);
    case DType::kI64: return CompareWindow<DType::kI64>(a, b, n, first, tol, d);
    case DType::kI32: return CompareWindow<DType::kI32>(a, b, n, first, tol, d);
    case DType::kI16: return CompareWindow<DType::kI16>(a, b, n, first, tol, d);
    case DType::kI8: return CompareWindow<DType::kI8>(a, b, n, first, tol, d);
    case DType::kU8: return CompareWindow<DType::kU8>(a, b, n, first, tol, d);
    case DType::kBool: return CompareWindow<DType::kBool>(a, b, n, first, tol, d);
  }
}

// ---- matching

// Matches the tensors of both manifests by name; those present in both with equal dtype and
// shape are kEqual until compared.
std::vector<TensorDiff> MatchTensors(const fmt::Manifest& a, const fmt::Manifest& b) {
  std::vector<TensorDiff> out;
  for (const fmt::TensorMeta& t : a.tensors) {
    TensorDiff d;
    d.name = t.name;
    d.dtype_a = t.dtype;
    d.shape_a = t.shape;
    const int64_t j = b.FindTensor(t.name);
    if (j < 0) {
      d.kind = TensorDiffKind::kOnlyInA;
    } else {
      const fmt::TensorMeta& u = b.tensors[static_cast<size_t>(j)];
      d.dtype_b = u.dtype;
      d.shape_b = u.shape;
      if (u.dtype != t.dtype) {
        d.kind = TensorDiffKind::kDTypeMismatch;
      } else if (u.shape != t.shape) {
        d.kind = TensorDiffKind::kShapeMismatch;
      }
    }
    out.push_back(std::move(d));
  }
  for (const fmt::TensorMeta& u : b.tensors) {
    if (a.FindTensor(u.name) >= 0) continue;
    TensorDiff d;
    d.name = u.name;
    d.kind = TensorDiffKind::kOnlyInB;
    d.dtype_b = u.dtype;
    d.shape_b = u.shape;
    out.push_back(std::move(d));
  }
  return out;
}

std::vector<BlobDiff> CompareBlobs(const fmt::Manifest& a, const fmt::Manifest& b) {
  std::vector<BlobDiff> out;
  for (const fmt::BlobMeta& x : a.blobs) {
    const int64_t j = b.FindBlob(x.name);
    if (j < 0) {
      out.push_back({x.name, BlobDiffKind::kOnlyInA, x.data.size(), 0});
    } else if (b.blobs[static_cast<size_t>(j)].data != x.data) {
      out.push_back({x.name, BlobDiffKind::kDiffers, x.data.size(),
                     b.blobs[static_cast<size_t>(j)].data.size()});
    }
  }
  for (const fmt::BlobMeta& y : b.blobs) {
    if (a.FindBlob(y.name) < 0) out.push_back({y.name, BlobDiffKind::kOnlyInB, 0, y.data.size()});
  }
  return out;
}

// Reads one window of pieces from `reader` into `buf` (the pieces back to back).
Status ReadWindow(CheckpointReader& reader, const std::vector<TensorDiff>& diffs,
                  const std::vector<internal::WindowPiece>& window, std::vector<std::byte>& buf) {
  std::vector<ReadRequest> requests;
  uint64_t at = 0;  // bytes into buf
  for (const internal::WindowPiece& p : window) {
    const uint64_t bytes = (p.end - p.begin) * fmt::DTypeSize(diffs[p.tensor].dtype_a);
    ReadRequest q;
    q.slice = {diffs[p.tensor].name, {}, {}, p.begin, p.end};
    q.dst = std::span<std::byte>(buf.data() + at, bytes);
    requests.push_back(std::move(q));
    at += bytes;
  }
  return reader.Read(requests).status();
}

}  // namespace

Result<DiffReport> DiffCheckpoints(io::Env* env, const std::string& a, const std::string& b,
                                   const DiffOptions& options) {
  const uint64_t t0 = env->NowMicros();
  if (!(options.atol >= 0) || !(options.rtol >= 0)) {
    return Status::InvalidArgument("tolerances must be >= 0 (atol " + std::to_string(options.atol) +
                                   ", rtol " + std::to_string(options.rtol) + ")");
  }
  // A quarter of the budget for each side's window, a quarter for each reader's chunks.
  const uint64_t window_bytes = std::max<uint64_t>(options.memory_bytes / 4, 4096);
  ReaderOptions ro;
  ro.memory_bytes = options.memory_bytes / 4;
  ro.threads = options.threads;
  ro.io_backend = options.io_backend;
  DS_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> ra, CheckpointReader::Open(env, a, ro));
  DS_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> rb, CheckpointReader::Open(env, b, ro));
  DiffReport report;
  report.a = a;
  report.b = b;
  report.info_a = ra->manifest().info;
  report.info_b = rb->manifest().info;
  report.tensors = MatchTensors(ra->manifest(), rb->manifest());
  if (options.compare_blobs) report.blobs = CompareBlobs(ra->manifest(), rb->manifest());

  const Tolerance tol{options.atol, options.rtol};
  // Tensors with the same dtype and shape on both sides are compared; the others have no
  // elements to read.
  std::vector<uint64_t> numels;
  std::vector<size_t> elem_sizes;
  for (const TensorDiff& d : report.tensors) {
    numels.push_back(d.kind == TensorDiffKind::kEqual ? *fmt::NumElements(d.shape_a) : 0);
    elem_sizes.push_back(fmt::DTypeSize(d.dtype_a));
  }
  std::vector<std::byte> buf_a, buf_b;
  for (const auto& window : internal::CutIntoWindows(numels, elem_sizes, window_bytes)) {
    uint64_t bytes = 0;
    for (const internal::WindowPiece& p : window) {
      bytes += (p.end - p.begin) * fmt::DTypeSize(report.tensors[p.tensor].dtype_a);
    }
    buf_a.resize(bytes);
    buf_b.resize(bytes);
    // Both sides at once: each reader has its own I/O queue and decoders.
    Status sa;
    std::thread side_a([&] { sa = ReadWindow(*ra, report.tensors, window, buf_a); });
    Status sb = ReadWindow(*rb, report.tensors, window, buf_b);
    side_a.join();
    DS_RETURN_IF_ERROR(sa) << "while reading " << a;
    DS_RETURN_IF_ERROR(sb) << "while reading " << b;
    uint64_t at = 0;
    for (const internal::WindowPiece& p : window) {
      TensorDiff& d = report.tensors[p.tensor];
      const uint64_t n = p.end - p.begin;
      Compare(d.dtype_a, buf_a.data() + at, buf_b.data() + at, n, p.begin, tol, d);
      d.elements += n;
      at += n * fmt::DTypeSize(d.dtype_a);
    }
    report.bytes_compared += bytes;
  }
  for (TensorDiff& d : report.tensors) {
    if (d.kind == TensorDiffKind::kEqual && d.mismatched > 0) d.kind = TensorDiffKind::kDiffers;
  }
  report.seconds = static_cast<double>(env->NowMicros() - t0) / 1e6;
  return report;
}

}  // namespace ds::ckpt
