// manifest.h5: the description of one checkpoint, written last by rank 0 (its presence is the
// commit marker). HDF5 (file format of HDF5 1.10, whose metadata is checksummed) with root
// attributes (format version, tag, step, world size, ZeRO stage, TP/PP degrees, creation time,
// writer version, the training config and metrics as JSON, and `content_xxh64`, a checksum of
// every table's contents) and five compound datasets: tensors, slices, files, chunks, blobs.
// It opens in h5dump and h5py; docs/format.md gives the schemas.
// All I/O goes through io::Env: the HDF5 file is built and parsed as an in-memory image.
// Thread safety: all functions may be called from any thread (HDF5 calls are serialised).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "formats/chunk_codec.h"
#include "formats/dtype.h"
#include "io/env.h"
#include "io/status.h"

namespace ds::fmt {

inline constexpr uint32_t kManifestFormatVersion = 1;
inline constexpr char kManifestFileName[] = "manifest.h5";
// The HDF5 user block at the start of the file: magic, version, length and a checksum of the
// rest, verified before HDF5 parses anything (docs/format.md, 4.0).
inline constexpr size_t kManifestUserBlockBytes = 512;
inline constexpr char kManifestMagic[8] = {'D', 'S', 'T', 'R', 'M', 'A', 'N', 'F'};

struct ManifestInfo {
  uint32_t format_version = kManifestFormatVersion;
  std::string tag;           // "step-00001000"
  int64_t step = 0;
  uint32_t world_size = 1;   // ranks that wrote it
  uint32_t zero_stage = 0;   // 0-3
  uint32_t tp_degree = 1;    // tensor-parallel degree
  uint32_t pp_degree = 1;    // pipeline-parallel degree
  uint64_t partition_alignment = 1;  // elements: the ZeRO partition's alignment
  int64_t created_micros = 0;  // wall clock
  std::string writer_version;
  std::string config_json = "{}";   // the training config used
  std::string metrics_json = "{}";  // e.g. {"loss": 2.31, "eval_loss": 2.40}
};

struct TensorMeta {
  std::string name;  // "master/h.0.attn.c_attn.weight"
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // global shape, at most kMaxDims dimensions
};

// A box of a tensor (offset and length per dimension) and a range of that box's flattened
// elements; its bytes start at byte `offset_in_chunk` of chunk `first_chunk` and continue
// through the following chunks (all in one file).
struct SliceMeta {
  uint32_t tensor = 0;  // index into tensors
  uint32_t rank = 0;    // the rank that wrote it
  std::vector<int64_t> box_offset;
  std::vector<int64_t> box_length;
  uint64_t flat_begin = 0;  // elements, within the box, row-major
  uint64_t flat_end = 0;
  uint64_t first_chunk = 0;      // index into chunks
  uint64_t offset_in_chunk = 0;  // bytes into that chunk's raw bytes
};

struct FileMeta {
  std::string name;  // "rank-00003.dss": a plain name inside the checkpoint directory
  uint64_t size = 0;  // bytes
  uint32_t rank = 0;
};

struct ChunkMeta {
  uint32_t file = 0;  // index into files
  uint64_t offset = 0;
  uint64_t stored_len = 0;
  uint64_t raw_len = 0;
  Codec codec = Codec::kRaw;
  uint8_t elem_size = 1;
  uint64_t raw_xxh64 = 0;
  uint64_t stored_xxh64 = 0;
};

// Small state: step, scheduler, loss scaler, data position, RNG states, ...
struct BlobMeta {
  std::string name;  // "rng/rank-00003", "scheduler", ...
  std::string data;  // bytes
};

struct Manifest {
  ManifestInfo info;
  std::vector<TensorMeta> tensors;
  std::vector<SliceMeta> slices;
  std::vector<FileMeta> files;
  std::vector<ChunkMeta> chunks;
  std::vector<BlobMeta> blobs;

  // Index of a tensor / blob by name, or -1.
  int64_t FindTensor(std::string_view name) const;
  int64_t FindBlob(std::string_view name) const;
};

// Every consistency rule a reader relies on (docs/format.md, "Invariants"): names, dtypes,
// shapes, boxes inside shapes, flat ranges inside boxes, slices of a tensor disjoint and covering
// it exactly, chunk spans long enough and in one file, chunk fields sane. Errors name the
// tensor, rank, file or chunk; `what` names the manifest.
Status ValidateManifest(const Manifest& m, std::string_view what);

// The HDF5 file image.
Result<std::string> EncodeManifest(const Manifest& m);
// Parses and validates an image; a newer format version is refused with both numbers.
Result<Manifest> DecodeManifest(std::span<const std::byte> image, std::string_view what);

// Writes the image to `path` and fsyncs it (the directory is the commit protocol's business).
Status WriteManifest(io::Env* env, const std::string& path, const Manifest& m);
Result<Manifest> ReadManifest(io::Env* env, const std::string& path);

// The checksum stored in the `content_xxh64` attribute: xxh64 over a canonical serialisation of
// every table row and attribute (docs/format.md defines it).
uint64_t ManifestContentChecksum(const Manifest& m);

// Checks that a name can be used as a file inside a checkpoint directory: not empty, no '/',
// no "." or "..", no NUL.
Status ValidateFileName(std::string_view name, std::string_view what);

// Number of elements of a shape (or box), or nullopt on overflow / negative dimensions.
std::optional<uint64_t> NumElements(std::span<const int64_t> shape);

}  // namespace ds::fmt
