// manifest.h5: the description of one checkpoint, written last by rank 0 (its presence is the
// commit marker). An HDF5 file (file format of HDF5 1.10) with root attributes (format version,
// tag, step, world size, ZeRO stage, TP/PP degrees, creation time, writer version, the training
// config and metrics as JSON, and `content_xxh64`) and five compound datasets: tensors, slices,
// files, chunks, blobs; it opens in h5dump and h5py. From format 2 our own record of the same
// fields follows the HDF5 end of file, and dstrain reads only that record, with a parser written
// for damaged input: libhdf5 is not hardened and never sees a byte of a file dstrain reads,
// except a format-1 file, which it parses in a child process (io/isolated.h).
// docs/format.md gives the layout. All I/O goes through io::Env.
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

inline constexpr uint32_t kManifestFormatVersion = 2;  // reads 1 and 2, writes 2
inline constexpr char kManifestFileName[] = "manifest.h5";
// The HDF5 user block at the start of the file: magic, version, length, a checksum of the rest
// and (format 2) where the record lies and its checksum, verified first (docs/format.md, 4.0).
inline constexpr size_t kManifestUserBlockBytes = 512;
inline constexpr char kManifestMagic[8] = {'D', 'S', 'T', 'R', 'M', 'A', 'N', 'F'};

struct ManifestInfo {
  uint32_t format_version = kManifestFormatVersion;
  std::string tag;  // "step-00001000"
  int64_t step = 0;
  uint32_t world_size = 1;           // ranks that wrote it
  uint32_t zero_stage = 0;           // 0-3
  uint32_t tp_degree = 1;            // tensor-parallel degree
  uint32_t pp_degree = 1;            // pipeline-parallel degree
  uint64_t partition_alignment = 1;  // elements: the ZeRO partition's alignment
  int64_t created_micros = 0;        // wall clock
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
  std::string name;   // "rank-00003.dss": a plain name inside the checkpoint directory
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

// The whole file: [user block][HDF5 image][record] in format 2, sealed by the user block.
Result<std::string> EncodeManifest(const Manifest& m);
// Checks the user block, then parses the record (format 2) or, for format 1, the HDF5 image in
// a child process with limits and a timeout (DSTRAIN_MANIFEST_PARSE_TIMEOUT_S, default 30 s),
// then validates. Every damaged file is a Corruption naming `what`, never a crash or a hang; a
// newer format version is refused with both numbers.
Result<Manifest> DecodeManifest(std::span<const std::byte> image, std::string_view what);
// The format-1 file (user block and HDF5 image, no record) as dstrain wrote it before format 2:
// for tests of old checkpoints and the fuzz corpus. Writers use EncodeManifest.
Result<std::string> EncodeManifestV1(const Manifest& m);

// Writes the image to `path` and fsyncs it (the directory is the commit protocol's business).
Status WriteManifest(io::Env* env, const std::string& path, const Manifest& m);
Result<Manifest> ReadManifest(io::Env* env, const std::string& path);

// The manifest record (docs/format.md, 4.3): every field, in table order, integers as u64
// little-endian, strings as a u64 length and their bytes. Encoding never fails; decoding checks
// every length, count, dimension, dtype and codec before it allocates and refuses trailing bytes
// (Corruption naming `what` and the field), but leaves the rules of ValidateManifest to it.
std::string EncodeManifestRecord(const Manifest& m);
Result<Manifest> DecodeManifestRecord(std::span<const std::byte> record, std::string_view what);

// The checksum stored in the `content_xxh64` attribute: xxh64 of EncodeManifestRecord(m).
uint64_t ManifestContentChecksum(const Manifest& m);

// Checks that a name can be used as a file inside a checkpoint directory: not empty, no '/',
// no "." or "..", no NUL.
Status ValidateFileName(std::string_view name, std::string_view what);

// Number of elements of a shape (or box), or nullopt on overflow / negative dimensions.
std::optional<uint64_t> NumElements(std::span<const int64_t> shape);

}  // namespace ds::fmt
