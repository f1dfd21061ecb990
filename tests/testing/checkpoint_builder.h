// Writes small checkpoints straight through the formats layer (shard files + manifest), for
// tests of readers and tools. Tensors are split over `world` ranks in contiguous flat ranges,
// as a ZeRO partition would be.
#pragma once

#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "formats/manifest.h"
#include "formats/shard_file.h"
#include "io/async_io.h"

namespace ds::testing {

struct TestTensor {
  std::string name;
  fmt::DType dtype = fmt::DType::kF32;
  std::vector<int64_t> shape;
  std::vector<std::byte> data;  // numel * dtype size bytes, row-major
};

// Float-like random contents (normal, std 0.02) for float dtypes, random bytes otherwise.
inline TestTensor MakeTensor(std::string name, fmt::DType dtype, std::vector<int64_t> shape,
                             uint64_t seed) {
  TestTensor t{std::move(name), dtype, std::move(shape), {}};
  uint64_t n = *fmt::NumElements(t.shape) * fmt::DTypeSize(dtype);
  t.data.resize(n);
  std::mt19937_64 rng(seed);
  if (dtype == fmt::DType::kF32) {
    std::normal_distribution<float> d(0, 0.02f);
    for (uint64_t i = 0; i < n / 4; ++i) {
      float v = d(rng);
      std::memcpy(t.data.data() + 4 * i, &v, 4);
    }
  } else {
    for (auto& b : t.data) b = static_cast<std::byte>(rng());
  }
  return t;
}

inline Result<fmt::Manifest> WriteTestCheckpoint(io::Env* env, const std::string& dir,
                                                 const std::vector<TestTensor>& tensors,
                                                 uint32_t world, fmt::Codec codec,
                                                 uint64_t chunk_bytes = 64 << 10) {
  DS_RETURN_IF_ERROR(env->CreateDirs(dir));
  io::AsyncIoOptions aopts;
  aopts.backend = "pwrite";
  DS_ASSIGN_OR_RETURN(std::unique_ptr<io::AsyncIo> aio, io::OpenAsyncIo(aopts));
  io::ThreadPool encoders(2);
  io::BufferPool staging({.capacity_bytes = 64 << 20});
  fmt::Manifest m;
  m.info.tag = io::BaseName(dir);
  m.info.step = 7;
  m.info.world_size = world;
  m.info.zero_stage = world > 1 ? 1 : 0;
  m.info.created_micros = env->WallTimeMicros();
  m.info.writer_version = "dstrain test";
  for (const TestTensor& t : tensors) m.tensors.push_back({t.name, t.dtype, t.shape});
  for (uint32_t rank = 0; rank < world; ++rank) {
    std::vector<fmt::PieceSpec> pieces;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;  // elements
    for (const TestTensor& t : tensors) {
      uint64_t numel = *fmt::NumElements(t.shape);
      uint64_t b = numel * rank / world, e = numel * (rank + 1) / world;
      ranges.push_back({b, e});
      uint8_t es = static_cast<uint8_t>(fmt::DTypeSize(t.dtype));
      pieces.push_back({(e - b) * es, es});
    }
    std::vector<fmt::PiecePlacement> at;
    std::vector<fmt::ChunkPlan> plan = fmt::PlanChunks(pieces, chunk_bytes, &at);
    std::vector<std::vector<std::byte>> raw(plan.size());
    fmt::ShardWriterOptions o;
    o.encode.codec = codec;
    o.io = aio.get();
    o.encoders = &encoders;
    o.staging = &staging;
    const std::string file = fmt::ShardFileName(rank);
    DS_ASSIGN_OR_RETURN(auto writer,
                        fmt::ShardWriter::Create(env, io::JoinPath(dir, file), rank, o));
    for (size_t c = 0; c < plan.size(); ++c) {
      for (const fmt::PiecePart& p : plan[c].parts) {
        const TestTensor& t = tensors[p.piece];
        const std::byte* src = t.data.data() + ranges[p.piece].first * fmt::DTypeSize(t.dtype);
        raw[c].insert(raw[c].end(), src + p.begin, src + p.end);
      }
      writer->AddChunk(raw[c], plan[c].elem_size);
    }
    DS_ASSIGN_OR_RETURN(fmt::ShardSummary sum, writer->Finish());
    const uint64_t first = m.chunks.size();
    const uint32_t file_index = static_cast<uint32_t>(m.files.size());
    m.files.push_back({file, sum.file_size, rank});
    for (const fmt::ChunkRecord& r : sum.chunks) {
      m.chunks.push_back({file_index, r.offset, r.stored_len, r.raw_len, r.codec, r.elem_size,
                          r.raw_xxh64, r.stored_xxh64});
    }
    for (size_t i = 0; i < tensors.size(); ++i) {
      std::vector<int64_t> zeros(tensors[i].shape.size(), 0);
      m.slices.push_back({static_cast<uint32_t>(i), rank, zeros, tensors[i].shape,
                          ranges[i].first, ranges[i].second, first + at[i].first_chunk,
                          at[i].offset_in_chunk});
    }
  }
  m.blobs.push_back({"step", "7"});
  DS_RETURN_IF_ERROR(fmt::WriteManifest(env, io::JoinPath(dir, fmt::kManifestFileName), m));
  return m;
}

}  // namespace ds::testing
