// Manifests for tests: the one the format tests share, which the checked-in format-1 file
// tests/formats/data/v1_sample.h5 holds (as the format-1 writer wrote it: keep the two in step),
// and files crafted from that one to crash or hang libhdf5.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "formats/chunk_codec.h"
#include "formats/endian.h"
#include "formats/manifest.h"
#include "io/env.h"
#include "testing/paths.h"

namespace ds::testing {

// Two ranks: a ZeRO-partitioned fp32 tensor, a bf16 tensor split in row blocks (tensor
// parallel), and an int64 scalar, each in its own chunk.
inline fmt::Manifest SampleManifest() {
  using namespace ds::fmt;
  Manifest m;
  m.info.tag = "step-00000100";
  m.info.step = 100;
  m.info.world_size = 2;
  m.info.zero_stage = 2;
  m.info.tp_degree = 2;
  m.info.created_micros = 1700000000000000;
  m.info.writer_version = "dstrain test";
  m.info.config_json = R"({"train_batch_size": 8})";
  m.info.metrics_json = R"({"loss": 2.5})";
  m.tensors = {{"master/w", DType::kF32, {4, 6}},
               {"model/emb", DType::kBF16, {8, 3}},
               {"step", DType::kI64, {}}};
  m.files = {{"rank-00000.dss", 16384, 0}, {"rank-00001.dss", 12288, 1}};
  m.chunks = {{0, 4096, 52, 52, Codec::kRaw, 4, 1, 2},
              {0, 8192, 24, 24, Codec::kRaw, 2, 3, 4},
              {0, 12288, 8, 8, Codec::kRaw, 8, 5, 6},
              {1, 4096, 44, 44, Codec::kRaw, 4, 7, 8},
              {1, 8192, 20, 24, Codec::kZstd, 2, 9, 10}};
  m.slices = {{0, 0, {0, 0}, {4, 6}, 0, 13, 0, 0},
              {0, 1, {0, 0}, {4, 6}, 13, 24, 3, 0},
              {1, 0, {0, 0}, {4, 3}, 0, 12, 1, 0},
              {1, 1, {4, 0}, {4, 3}, 0, 12, 4, 0},
              {2, 0, {}, {}, 0, 1, 2, 0}};
  m.blobs = {{"scheduler", R"({"last_lr": 0.0003})"}, {"rng/rank-00000", std::string("\0\1\2", 3)}};
  return m;
}

// Recomputes the user block's length and checksums after an edit (docs/format.md, 4.0), as a
// crafted file would: the damage then reaches the parsers behind them.
inline void ResealManifest(std::string* file) {
  auto* b = reinterpret_cast<std::byte*>(file->data());
  auto rest = [&](uint64_t from) {
    return std::as_bytes(std::span(file->data(), file->size())).subspan(from);
  };
  fmt::PutU64(b + 16, file->size());
  if (fmt::GetU32(b + 8) >= 2) {
    const uint64_t at = fmt::GetU64(b + 32);
    fmt::PutU64(b + 40, file->size() - at);
    fmt::PutU64(b + 48, fmt::Xxh64(rest(at)));
  }
  fmt::PutU64(b + 24, fmt::Xxh64(rest(512)));
}

// tests/formats/data/v1_sample.h5: SampleManifest() as the format-1 writer wrote it.
inline std::string V1SampleFile() {
  Result<std::string> f =
      io::Env::Default()->ReadFileToString(SourceDir() + "/tests/formats/data/v1_sample.h5");
  return f.ok() ? *f : std::string();
}

// The format-1 sample with byte `at` set to `value` and the checksum fixed up. Two that libhdf5
// 1.10.8 (h5dump too) cannot survive: byte 3066 = 0xff segfaults it, byte 3256 = 0x63 loops.
inline std::string CraftedV1(size_t at, char value) {
  std::string f = V1SampleFile();
  if (at >= f.size()) return f;
  f[at] = value;
  ResealManifest(&f);
  return f;
}
inline std::string V1ThatCrashesLibhdf5() { return CraftedV1(3066, '\xff'); }
inline std::string V1ThatHangsLibhdf5() { return CraftedV1(3256, '\x63'); }

}  // namespace ds::testing
