// A rank's record: what it wrote into its shard file (tensors, slices, chunks, the file's size)
// and its blobs, published through the KeyValueStore for rank 0 to merge into the manifest.
// Encoded as CBOR (binary-safe, exact 64-bit integers). Thread safety: pure functions.
#pragma once

#include <string>
#include <vector>

#include "formats/manifest.h"

namespace ds::ckpt {

struct RankRecord {
  uint32_t rank = 0;
  bool ok = true;
  StatusCode code = StatusCode::kOk;  // when !ok
  std::string error;                  // when !ok: why this rank's part failed
  fmt::FileMeta file;  // its shard file
  std::vector<fmt::TensorMeta> tensors;  // those its slices belong to
  std::vector<fmt::SliceMeta> slices;    // tensor: index into `tensors`; chunks: into `chunks`
  std::vector<fmt::ChunkMeta> chunks;    // file: 0
  std::vector<fmt::BlobMeta> blobs;
};

std::string EncodeRankRecord(const RankRecord& r);
Result<RankRecord> DecodeRankRecord(const std::string& bytes, uint32_t expected_rank);

// Merges the records of ranks 0..N-1 (in rank order) into `m`'s tables: tensors by name (the
// same name must have the same dtype and shape on every rank), files, chunk indexes shifted.
Status MergeRankRecords(const std::vector<RankRecord>& records, fmt::Manifest* m);

}  // namespace ds::ckpt
