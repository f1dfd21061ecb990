// The byte-group transform (formats/bytegroup.cc) on planes given one pointer each, so that the
// decoder can join planes that lie in different buffers (raw planes straight from the stored
// bytes, zstd planes from scratch). Internal to ds_formats; ByteGroupSplit and ByteGroupJoin in
// chunk_codec.h are the same transform on one flat buffer of planes.
// Thread safety: pure functions.
#pragma once

#include <cstddef>

namespace ds::fmt {

// bytegroup+zstd elements are 1..kMaxElemSize bytes: the plane table has one entry per byte.
inline constexpr size_t kMaxElemSize = 8;

// raw: n elements of e bytes (n * e bytes); planes[k] points at n bytes, byte k of each element.
// SSE2 fast paths for e = 2, 4, 8; a plain loop (the reference) for the rest and for tails.
void SplitPlanes(const std::byte* raw, size_t e, size_t n, std::byte* const* planes);
void JoinPlanes(const std::byte* const* planes, size_t e, size_t n, std::byte* raw);

}  // namespace ds::fmt
