// libFuzzer target for the manifest validator: a Manifest built from the input's bytes (small
// tables, values near the boundaries) must validate or fail with Corruption, never crash; one
// that validates must survive an encode / decode round trip unchanged (but for the format
// version: writers write the current one). Whole files, checksums fixed up so that the record
// parser and libhdf5 see the damage: manifest_file_fuzz.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdlib>

#include "formats/manifest.h"

namespace {

using namespace ds::fmt;

std::vector<int64_t> Dims(FuzzedDataProvider& p) {
  std::vector<int64_t> v(p.ConsumeIntegralInRange<size_t>(0, 3));
  for (auto& x : v) x = p.ConsumeIntegralInRange<int64_t>(-1, 6);
  return v;
}

Manifest Build(FuzzedDataProvider& p) {
  Manifest m;
  m.info.world_size = p.ConsumeIntegralInRange<uint32_t>(0, 3);
  m.info.zero_stage = p.ConsumeIntegralInRange<uint32_t>(0, 4);
  m.info.format_version = p.ConsumeIntegralInRange<uint32_t>(0, 2);
  const char* names[] = {"a", "b", "a", "", "c"};
  for (size_t i = p.ConsumeIntegralInRange<size_t>(0, 3); i > 0; --i) {
    m.tensors.push_back({names[p.ConsumeIntegralInRange<size_t>(0, 4)],
                         static_cast<DType>(p.ConsumeIntegralInRange<int>(0, 9)), Dims(p)});
  }
  const char* files[] = {"rank-00000.dss", "rank-00001.dss", "..", "a/b", "rank-00000.dss"};
  for (size_t i = p.ConsumeIntegralInRange<size_t>(0, 2); i > 0; --i) {
    m.files.push_back({files[p.ConsumeIntegralInRange<size_t>(0, 4)],
                       p.ConsumeIntegralInRange<uint64_t>(0, 3) * 4096,
                       p.ConsumeIntegralInRange<uint32_t>(0, 2)});
  }
  for (size_t i = p.ConsumeIntegralInRange<size_t>(0, 4); i > 0; --i) {
    ChunkMeta c;
    c.file = p.ConsumeIntegralInRange<uint32_t>(0, 2);
    c.offset = p.ConsumeIntegralInRange<uint64_t>(0, 3) * 4096 + p.ConsumeIntegralInRange(0, 1);
    c.raw_len = p.ConsumeIntegralInRange<uint64_t>(0, 64);
    c.stored_len = p.ConsumeBool() ? c.raw_len : p.ConsumeIntegralInRange<uint64_t>(0, 64);
    c.codec = static_cast<Codec>(p.ConsumeIntegralInRange<int>(0, 3));
    c.elem_size = p.ConsumeIntegralInRange<uint8_t>(0, 8);
    m.chunks.push_back(c);
  }
  for (size_t i = p.ConsumeIntegralInRange<size_t>(0, 4); i > 0; --i) {
    SliceMeta s;
    s.tensor = p.ConsumeIntegralInRange<uint32_t>(0, 3);
    s.rank = p.ConsumeIntegralInRange<uint32_t>(0, 2);
    s.box_offset = Dims(p);
    s.box_length = Dims(p);
    s.flat_begin = p.ConsumeIntegralInRange<uint64_t>(0, 40);
    s.flat_end = p.ConsumeIntegralInRange<uint64_t>(0, 40);
    s.first_chunk = p.ConsumeIntegralInRange<uint64_t>(0, 4);
    s.offset_in_chunk = p.ConsumeIntegralInRange<uint64_t>(0, 64);
    m.slices.push_back(s);
  }
  if (p.ConsumeBool()) m.blobs.push_back({names[p.ConsumeIntegralInRange<size_t>(0, 4)], "x"});
  return m;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider p(data, size);
  Manifest m = Build(p);
  ds::Status s = ValidateManifest(m, "fuzz");
  if (!s.ok() && s.code() != ds::StatusCode::kCorruption) std::abort();
  if (s.ok()) {
    auto image = EncodeManifest(m);
    if (!image.ok()) std::abort();
    auto back = DecodeManifest(std::as_bytes(std::span(image->data(), image->size())), "fuzz");
    Manifest written = m;
    written.info.format_version = kManifestFormatVersion;
    if (!back.ok() || EncodeManifestRecord(*back) != EncodeManifestRecord(written)) std::abort();
  }
  return 0;
}
