// The byte-group transform of bytegroup+zstd chunks (chunk_codec.h): elements of E bytes to
// E planes (plane k holds byte k of every element) and back. Hot path: plain loops over the
// caller's buffers, no allocation.
#include "formats/internal/bytegroup.h"

#include <array>

#include "formats/chunk_codec.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace ds::fmt {
namespace {

// ---- byte-group transform -----------------------------------------------------------------------
// planes[k] points at n bytes: byte k of each of the n elements. The plain loops are the
// reference (and the only path for element sizes 3, 5, 6, 7); the SSE2 paths for 2, 4 and 8 do
// the same as repeated even/odd byte splits, and finish their tails with the plain loop.

void SplitPlain(const std::byte* raw, size_t e, size_t begin, size_t n, std::byte* const* planes) {
  for (size_t i = begin; i < n; ++i) {
    for (size_t k = 0; k < e; ++k) planes[k][i] = raw[i * e + k];
  }
}

void JoinPlain(const std::byte* const* planes, size_t e, size_t begin, size_t n, std::byte* raw) {
  for (size_t i = begin; i < n; ++i) {
    for (size_t k = 0; k < e; ++k) raw[i * e + k] = planes[k][i];
  }
}

#if defined(__SSE2__)
// x, y: 32 bytes; even gets bytes 0, 2, 4, ... and odd bytes 1, 3, 5, ... in order.
inline void Deinterleave(__m128i x, __m128i y, __m128i* even, __m128i* odd) {
  const __m128i low = _mm_set1_epi16(0x00ff);
  *even = _mm_packus_epi16(_mm_and_si128(x, low), _mm_and_si128(y, low));
  *odd = _mm_packus_epi16(_mm_srli_epi16(x, 8), _mm_srli_epi16(y, 8));
}
// The inverse: lo, hi = even[0] odd[0] even[1] odd[1] ...
inline void Interleave(__m128i even, __m128i odd, __m128i* lo, __m128i* hi) {
  *lo = _mm_unpacklo_epi8(even, odd);
  *hi = _mm_unpackhi_epi8(even, odd);
}

// The plane that stream s holds after the byte splits of an E-byte element (E = 2^bits): the
// first split sends even bytes to the low half of the streams, so plane k ends up in the stream
// whose index is k with its bits reversed.
template <size_t E>
constexpr size_t PlaneOfStream(size_t s) {
  size_t k = 0;
  for (size_t bit = 1; bit < E; bit *= 2) k = (k << 1) | ((s & bit) ? 1 : 0);
  return k;
}

// One round of the split: each of `Streams` streams (E / Streams vectors each) becomes its even
// bytes followed by its odd bytes. The 16 elements start as one stream; after log2(E) rounds
// each vector is a plane.
template <size_t E, size_t Streams>
inline void SplitRound(__m128i* v) {
  constexpr size_t len = E / Streams;  // vectors per stream
  __m128i t[E];
  for (size_t s = 0; s < Streams; ++s) {
    for (size_t j = 0; j < len / 2; ++j) {
      Deinterleave(v[s * len + 2 * j], v[s * len + 2 * j + 1], &t[s * len + j],
                   &t[s * len + len / 2 + j]);
    }
  }
  for (size_t j = 0; j < E; ++j) v[j] = t[j];
  if constexpr (2 * Streams < E) SplitRound<E, 2 * Streams>(v);
}

// The inverse of SplitRound<E, Streams>; runs the rounds backwards.
template <size_t E, size_t Streams>
inline void JoinRound(__m128i* v) {
  constexpr size_t len = E / Streams;
  __m128i t[E];
  for (size_t s = 0; s < Streams; ++s) {
    for (size_t j = 0; j < len / 2; ++j) {
      Interleave(v[s * len + j], v[s * len + len / 2 + j], &t[s * len + 2 * j],
                 &t[s * len + 2 * j + 1]);
    }
  }
  for (size_t j = 0; j < E; ++j) v[j] = t[j];
  if constexpr (Streams > 1) JoinRound<E, Streams / 2>(v);
}

// 16 elements of E bytes at a time; each returns how many elements it did.
template <size_t E>
size_t SplitBlocks(const std::byte* raw, size_t n, std::byte* const* planes) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m128i v[E];
    for (size_t j = 0; j < E; ++j)
      v[j] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(raw + i * E) + j);
    SplitRound<E, 1>(v);
    for (size_t s = 0; s < E; ++s) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(planes[PlaneOfStream<E>(s)] + i), v[s]);
    }
  }
  return i;
}
template <size_t E>
size_t JoinBlocks(const std::byte* const* planes, size_t n, std::byte* raw) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m128i v[E];
    for (size_t s = 0; s < E; ++s) {
      v[s] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(planes[PlaneOfStream<E>(s)] + i));
    }
    JoinRound<E, E / 2>(v);
    for (size_t j = 0; j < E; ++j)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(raw + i * E) + j, v[j]);
  }
  return i;
}

// The plain loop does the elements these leave (fewer than 16, or all for other sizes).
size_t SplitFast(const std::byte* raw, size_t e, size_t n, std::byte* const* planes) {
  switch (e) {
    case 2: return SplitBlocks<2>(raw, n, planes);
    case 4: return SplitBlocks<4>(raw, n, planes);
    case 8: return SplitBlocks<8>(raw, n, planes);
    default: return 0;
  }
}
size_t JoinFast(const std::byte* const* planes, size_t e, size_t n, std::byte* raw) {
  switch (e) {
    case 2: return JoinBlocks<2>(planes, n, raw);
    case 4: return JoinBlocks<4>(planes, n, raw);
    case 8: return JoinBlocks<8>(planes, n, raw);
    default: return 0;
  }
}
#else
size_t SplitFast(const std::byte*, size_t, size_t, std::byte* const*) { return 0; }
size_t JoinFast(const std::byte* const*, size_t, size_t, std::byte*) { return 0; }
#endif

}  // namespace

void SplitPlanes(const std::byte* raw, size_t e, size_t n, std::byte* const* planes) {
  SplitPlain(raw, e, SplitFast(raw, e, n, planes), n, planes);
}

void JoinPlanes(const std::byte* const* planes, size_t e, size_t n, std::byte* raw) {
  JoinPlain(planes, e, JoinFast(planes, e, n, raw), n, raw);
}

// ---- flat planes (chunk_codec.h) ----------------------------------------------------------------

void ByteGroupSplit(std::span<const std::byte> raw, size_t elem_size, std::span<std::byte> planes) {
  const size_t n = raw.size() / elem_size;
  if (elem_size > kMaxElemSize) {  // no codec uses these; the plain loop over the flat planes
    for (size_t i = 0; i < n; ++i) {
      for (size_t k = 0; k < elem_size; ++k) planes[k * n + i] = raw[i * elem_size + k];
    }
    return;
  }
  std::array<std::byte*, kMaxElemSize> p{};
  for (size_t k = 0; k < elem_size; ++k) p[k] = planes.data() + k * n;
  SplitPlanes(raw.data(), elem_size, n, p.data());
}

void ByteGroupJoin(std::span<const std::byte> planes, size_t elem_size, std::span<std::byte> raw) {
  const size_t n = raw.size() / elem_size;
  if (elem_size > kMaxElemSize) {
    for (size_t i = 0; i < n; ++i) {
      for (size_t k = 0; k < elem_size; ++k) raw[i * elem_size + k] = planes[k * n + i];
    }
    return;
  }
  std::array<const std::byte*, kMaxElemSize> p{};
  for (size_t k = 0; k < elem_size; ++k) p[k] = planes.data() + k * n;
  JoinPlanes(p.data(), elem_size, n, raw.data());
}

}  // namespace ds::fmt
