#include "bench/codec_bench.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <numbers>

#include "bench/io_bench.h"  // Median
#include "bench/synthetic.h"
#include "formats/chunk_codec.h"

namespace ds::bench {
namespace {

// ---- timing -------------------------------------------------------------------------------------

struct CodecConfig {
  fmt::Codec codec;
  int level;
};
constexpr CodecConfig kCodecs[] = {{fmt::Codec::kRaw, 0},
                                   {fmt::Codec::kZstd, 1},
                                   {fmt::Codec::kZstd, 3},
                                   {fmt::Codec::kByteGroupZstd, 1}};

struct Pass {
  double encode_seconds = 0, decode_seconds = 0;
  uint64_t stored_bytes = 0, chunks = 0, chunks_raw = 0;
};

// Encodes every chunk of `data`, then decodes them all, timing each loop, and checks that the
// bytes came back.
Result<Pass> TimeOnePass(io::Env* env, std::span<const std::byte> data, size_t elem_size,
                         const fmt::EncodeOptions& eo, uint64_t chunk_bytes, fmt::ChunkEncoder& enc,
                         fmt::ChunkDecoder& dec, std::vector<std::byte>& stored,
                         std::vector<std::byte>& back) {
  const size_t n = (data.size() + chunk_bytes - 1) / chunk_bytes;
  const size_t slot = fmt::ChunkEncoder::MaxStoredLen(chunk_bytes);
  stored.resize(n * slot);
  back.resize(data.size());
  std::vector<fmt::EncodedChunk> chunks;
  chunks.reserve(n);
  Pass p;
  uint64_t t0 = env->NowMicros();
  for (size_t i = 0; i < n; ++i) {
    std::span<const std::byte> raw =
        data.subspan(i * chunk_bytes)
            .first(std::min<uint64_t>(chunk_bytes, data.size() - i * chunk_bytes));
    DS_ASSIGN_OR_RETURN(fmt::EncodedChunk c,
                        enc.Encode(raw, elem_size, eo, {stored.data() + i * slot, slot}));
    chunks.push_back(c);
  }
  uint64_t t1 = env->NowMicros();
  for (size_t i = 0; i < n; ++i) {
    const fmt::EncodedChunk& c = chunks[i];
    fmt::ChunkDescriptor desc{c.codec,     c.raw_len,      c.stored_len,
                              c.raw_xxh64, c.stored_xxh64, static_cast<uint8_t>(elem_size)};
    DS_RETURN_IF_ERROR(dec.Decode(desc, {stored.data() + i * slot, c.stored_len},
                                  {back.data() + i * chunk_bytes, c.raw_len},
                                  "benchmark chunk " + std::to_string(i)));
  }
  uint64_t t2 = env->NowMicros();
  if (std::memcmp(back.data(), data.data(), data.size()) != 0) {
    return Status::Corruption("codec bench: decoded bytes differ from the input (a codec bug)");
  }
  p.encode_seconds = std::max<double>(1, static_cast<double>(t1 - t0)) / 1e6;
  p.decode_seconds = std::max<double>(1, static_cast<double>(t2 - t1)) / 1e6;
  p.chunks = n;
  for (const fmt::EncodedChunk& c : chunks) {
    p.stored_bytes += c.stored_len;
    p.chunks_raw += c.codec == fmt::Codec::kRaw ? 1 : 0;
  }
  return p;
}

}  // namespace

// ---- the benchmark ------------------------------------------------------------------------------

Result<CodecBenchReport> RunCodecBench(io::Env* env, const CodecBenchOptions& o) {
  if (o.chunk_bytes == 0 || o.chunk_bytes % 8 != 0 || o.chunk_bytes > fmt::kMaxChunkRawBytes) {
    return Status::InvalidArgument("--chunk must be a multiple of 8 bytes, at most 256 MiB");
  }
  const uint64_t size = o.size_bytes / 8 * 8;
  if (size == 0) return Status::InvalidArgument("--size must be at least 8 bytes");
  CodecBenchReport report;
  fmt::ChunkEncoder enc;
  fmt::ChunkDecoder dec;
  std::vector<std::byte> stored, back;
  for (const DataSet& d : DataSets()) {
    std::vector<std::byte> data = Generate(d, size, o.seed);
    const size_t elem_size = d.bf16 ? 2 : 4;
    for (const CodecConfig& cc : kCodecs) {
      fmt::EncodeOptions eo{.codec = cc.codec, .zstd_level = cc.level};
      std::vector<double> enc_bps, dec_bps;
      Pass last;
      // One untimed pass first: contexts and buffers are allocated once, as in a writer.
      for (unsigned rep = 0; rep <= std::max(1u, o.repeat); ++rep) {
        DS_ASSIGN_OR_RETURN(
            last, TimeOnePass(env, data, elem_size, eo, o.chunk_bytes, enc, dec, stored, back));
        if (rep == 0) continue;
        enc_bps.push_back(static_cast<double>(size) / last.encode_seconds);
        dec_bps.push_back(static_cast<double>(size) / last.decode_seconds);
      }
      report.rows.push_back({.data = d.name,
                             .dtype = d.bf16 ? "bfloat16" : "float32",
                             .codec = std::string(fmt::CodecName(cc.codec)),
                             .zstd_level = cc.level,
                             .ratio = static_cast<double>(size) / last.stored_bytes,
                             .encode_bps_per_core = Median(enc_bps),
                             .decode_bps_per_core = Median(dec_bps),
                             .chunks = last.chunks,
                             .chunks_stored_raw = last.chunks_raw});
    }
  }
  return report;
}

namespace {
std::string CodecLabel(const CodecBenchRow& r) {
  return r.codec == "zstd" ? "zstd-" + std::to_string(r.zstd_level) : r.codec;
}
// The ratio of plain zstd level 1 on the same data (0 when it was not measured).
double Zstd1Ratio(const CodecBenchReport& rep, const std::string& data) {
  for (const CodecBenchRow& r : rep.rows) {
    if (r.data == data && r.codec == "zstd" && r.zstd_level == 1) return r.ratio;
  }
  return 0;
}
}  // namespace

std::string CodecBenchTable(const CodecBenchOptions& o, const CodecBenchReport& rep) {
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line,
                "codec bench: %s per data set in %s chunks, one thread, median of %u runs\n",
                io::FormatBytes(o.size_bytes / 8 * 8).c_str(),
                io::FormatBytes(o.chunk_bytes).c_str(), std::max(1u, o.repeat));
  out += line;
  std::snprintf(line, sizeof line, "%-16s %-9s %-15s %7s %9s %13s %13s %10s\n", "data", "dtype",
                "codec", "ratio", "vs zstd-1", "encode/core", "decode/core", "raw chunks");
  out += line;
  for (const CodecBenchRow& r : rep.rows) {
    double base = Zstd1Ratio(rep, r.data);
    char vs[16] = "-";
    if (base > 0) std::snprintf(vs, sizeof vs, "%+.1f%%", 100.0 * (r.ratio / base - 1));
    std::string raw_chunks = std::to_string(r.chunks_stored_raw) + "/" + std::to_string(r.chunks);
    std::snprintf(line, sizeof line, "%-16s %-9s %-15s %7.3f %9s %13s %13s %10s\n", r.data.c_str(),
                  r.dtype.c_str(), CodecLabel(r).c_str(), r.ratio, vs,
                  io::FormatRate(r.encode_bps_per_core).c_str(),
                  io::FormatRate(r.decode_bps_per_core).c_str(), raw_chunks.c_str());
    out += line;
  }
  out += "bytegroup+zstd planes: zstd's fastest search, Huffman literals, any level\n";
  return out;
}

std::string CodecBenchJson(const CodecBenchOptions& o, const CodecBenchReport& rep) {
  std::string out;
  for (const CodecBenchRow& r : rep.rows) {
    nlohmann::json j;
    j["bench"] = "codec";
    j["data"] = r.data;
    j["dtype"] = r.dtype;
    j["codec"] = r.codec;
    j["zstd_level"] = r.codec == "raw" ? nlohmann::json() : nlohmann::json(r.zstd_level);
    j["ratio"] = r.ratio;
    j["encode_bps_per_core"] = r.encode_bps_per_core;
    j["decode_bps_per_core"] = r.decode_bps_per_core;
    j["chunks"] = r.chunks;
    j["chunks_stored_raw"] = r.chunks_stored_raw;
    j["size_bytes"] = o.size_bytes / 8 * 8;
    j["chunk_bytes"] = o.chunk_bytes;
    j["repeat"] = std::max(1u, o.repeat);
    j["seed"] = o.seed;
    out += j.dump() + "\n";
  }
  return out;
}

}  // namespace ds::bench
