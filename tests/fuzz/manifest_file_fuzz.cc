// libFuzzer target for whole manifest files: the input is a manifest.h5 whose user block gets
// its length and checksums fixed up (docs/format.md, 4.0), so mutations reach the parsers behind
// them: the record parser for a user block of version 2, libhdf5 (in a child process) for
// version 1. DecodeManifest must return a manifest or a Corruption, never crash or hang; a
// format-2 manifest it returns re-encodes to the very record it came from.
//
// libhdf5 crashing in the child is the expected outcome of many inputs (a Corruption). The
// child gives no coverage feedback (its counters die with it), and a sanitizer report in it
// (libhdf5 freeing a bad pointer, caught by ASan's allocator) also ends in a Corruption, though
// libFuzzer's death callback may still write a crash- artifact from the child.
#include <cstdlib>
#include <cstring>
#include <string>

#include "formats/chunk_codec.h"
#include "formats/endian.h"
#include "formats/manifest.h"

namespace {

using namespace ds::fmt;

// The user block's fields (docs/format.md, 4.0).
constexpr size_t kUserBlock = 512, kVersionAt = 8, kLengthAt = 16, kChecksumAt = 24, kRecordAt = 32,
                 kRecordLengthAt = 40, kRecordChecksumAt = 48;

void FixUp(std::string* f) {
  auto* b = reinterpret_cast<std::byte*>(f->data());
  const auto bytes = std::as_bytes(std::span(f->data(), f->size()));
  std::memcpy(b, kManifestMagic, 8);
  PutU64(b + kLengthAt, f->size());
  if (GetU32(b + kVersionAt) == 2) {
    const uint64_t at = GetU64(b + kRecordAt);
    if (at >= kUserBlock && at <= f->size()) {
      PutU64(b + kRecordLengthAt, f->size() - at);
      PutU64(b + kRecordChecksumAt, Xxh64(bytes.subspan(at)));
    }
  }
  PutU64(b + kChecksumAt, Xxh64(bytes.subspan(kUserBlock)));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // A libhdf5 hang costs this long, not libFuzzer's -timeout.
  setenv("DSTRAIN_MANIFEST_PARSE_TIMEOUT_S", "2", 0);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < kUserBlock || size > (1 << 20)) return 0;
  std::string f(reinterpret_cast<const char*>(data), size);
  FixUp(&f);
  const auto bytes = std::as_bytes(std::span(f.data(), f.size()));
  ds::Result<Manifest> m = DecodeManifest(bytes, "fuzz");
  if (!m.ok()) {
    if (m.status().code() != ds::StatusCode::kCorruption) std::abort();
    return 0;
  }
  if (GetU32(bytes.data() + kVersionAt) == 2) {
    const uint64_t at = GetU64(bytes.data() + kRecordAt);
    if (EncodeManifestRecord(*m) != f.substr(at)) std::abort();
  }
  return 0;
}
