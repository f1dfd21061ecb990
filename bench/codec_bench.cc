#include "bench/codec_bench.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <numbers>

#include "bench/io_bench.h"  // Median
#include "formats/chunk_codec.h"

namespace ds::bench {
namespace {

// ---- synthetic training state -------------------------------------------------------------------

// splitmix64 and Box-Muller: the same bytes on every platform (std::normal_distribution is
// implementation-defined).
class Normal {
 public:
  explicit Normal(uint64_t seed) : state_(seed) {}
  uint64_t NextU64() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double Uniform() { return (static_cast<double>(NextU64() >> 11) + 0.5) * 0x1.0p-53; }  // (0,1)
  double Next() {                                                                        // N(0, 1)
    if (have_spare_) {
      have_spare_ = false;
      return spare_;
    }
    double r = std::sqrt(-2.0 * std::log(Uniform())), t = 2.0 * std::numbers::pi * Uniform();
    spare_ = r * std::sin(t);
    have_spare_ = true;
    return r * std::cos(t);
  }

 private:
  uint64_t state_;
  double spare_ = 0;
  bool have_spare_ = false;
};

constexpr size_t kRowElements = 4096;  // a row of a (rows, 4096) weight matrix

// Init: N(0, 0.02), as GPT-2-style initialisation.
std::function<float(size_t)> InitWeights(uint64_t seed) {
  return [n = Normal(seed)](size_t) mutable { return static_cast<float>(0.02 * n.Next()); };
}

// Trained: our stand-in for weights after training. Rows drift apart in scale (sigma_row =
// 0.02 * exp(0.25 z), lognormal), and 1 element in 64 is an outlier drawn from a Laplace
// distribution of scale 4 sigma_row: the heavier tails trained LLM weights show.
std::function<float(size_t)> TrainedWeights(uint64_t seed) {
  return [n = Normal(seed), sigma = 0.0](size_t i) mutable {
    if (i % kRowElements == 0) sigma = 0.02 * std::exp(0.25 * n.Next());
    if (n.NextU64() % 64 == 0) {
      double u = n.Uniform() - 0.5;
      return static_cast<float>(-4.0 * sigma * std::copysign(std::log(1 - 2 * std::abs(u)), u));
    }
    return static_cast<float>(sigma * n.Next());
  };
}

// Adam exp_avg: N(0, 1e-4).
std::function<float(size_t)> ExpAvg(uint64_t seed) {
  return [n = Normal(seed)](size_t) mutable { return static_cast<float>(1e-4 * n.Next()); };
}

// Adam exp_avg_sq: gradients of a per-parameter scale sigma = 1e-3 * exp(0.5 z) squared and
// averaged as beta2 = 0.999 does over t = 1000 steps: (1 - 0.999^1000) * sigma^2 * (mean of 4
// squares of N(0, 1)); positive, spanning a few decades.
std::function<float(size_t)> ExpAvgSq(uint64_t seed) {
  const double bias = 1.0 - std::pow(0.999, 1000);
  return [n = Normal(seed), bias](size_t) mutable {
    double sigma = 1e-3 * std::exp(0.5 * n.Next()), sum = 0;
    for (int k = 0; k < 4; ++k) sum += n.Next() * n.Next();
    return static_cast<float>(bias * sigma * sigma * sum / 4);
  };
}

uint16_t ToBf16(float f) {  // round to nearest even, as torch does (no NaNs here)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

struct DataSet {
  const char* name;
  bool bf16;
  std::function<float(size_t)> (*make)(uint64_t seed);
  uint64_t seed_offset;  // bf16 weights are the fp32 master weights rounded, as in training
};

constexpr DataSet kDataSets[] = {
    {"bf16-init", true, InitWeights, 0},  {"bf16-trained", true, TrainedWeights, 1},
    {"fp32-init", false, InitWeights, 0}, {"fp32-trained", false, TrainedWeights, 1},
    {"adam-exp_avg", false, ExpAvg, 2},   {"adam-exp_avg_sq", false, ExpAvgSq, 3},
};

// `bytes` (a multiple of 4) of little-endian bf16 or fp32 values.
std::vector<std::byte> Generate(const DataSet& d, uint64_t bytes, uint64_t seed) {
  std::vector<std::byte> out(bytes);
  std::function<float(size_t)> next = d.make(seed + d.seed_offset);
  const size_t width = d.bf16 ? 2 : 4;
  for (size_t i = 0; i < bytes / width; ++i) {
    float f = next(i);
    if (d.bf16) {
      uint16_t h = ToBf16(f);
      std::memcpy(out.data() + 2 * i, &h, 2);
    } else {
      std::memcpy(out.data() + 4 * i, &f, 4);
    }
  }
  return out;
}

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
  for (const DataSet& d : kDataSets) {
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
