// Export and import: one consolidated safetensors file from a checkpoint's weights (and, on
// request, its optimizer state), and a checkpoint at any world size and ZeRO stage from a
// safetensors file. Both stream through bounded memory: export lays the file out first and
// fills each tensor from CheckpointReader windows, converting dtypes on the way; import feeds
// CheckpointWriters from fill callbacks that read the file on demand. Naming and dtype rules
// are in docs/export.md.
// Thread safety: functions over an Env; concurrent calls with different outputs are fine.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "ckpt/writer.h"
#include "formats/dtype.h"
#include "formats/manifest.h"
#include "io/env.h"

namespace ds::ckpt {

// ---- export

struct ExportOptions {
  fmt::DType dtype = fmt::DType::kF32;        // floating tensors are written as this: kF32 or kBF16
  bool with_optimizer = false;                // also optim/... tensors (`--what all`)
  uint64_t memory_bytes = uint64_t{1} << 30;  // chunks read, decoded and converted at once
  bool overwrite = false;                     // replace an existing output file
  unsigned threads = 0;                       // decoders; 0: hardware threads
  std::string io_backend;                     // "", "uring" or "pwrite"
  // Called as output bytes are written (from reader threads): bytes just written, and the
  // total the file's data will take.
  std::function<void(uint64_t bytes, uint64_t total)> progress;
  // Not empty: only the selected tensors of these output names (a shard of ExportHfShards).
  std::vector<std::string> only;
};

// One tensor of the output file and the checkpoint tensor it comes from.
struct ExportItem {
  std::string source;  // "master/h.0.attn.weight"
  std::string name;    // "h.0.attn.weight"
  fmt::DType source_dtype = fmt::DType::kF32;
  fmt::DType dtype = fmt::DType::kF32;  // in the file
  std::vector<int64_t> shape;
};

struct ExportSelection {
  std::vector<ExportItem> items;   // in checkpoint order
  uint64_t from_master = 0;        // weights from master/ (fp32 master copy)
  uint64_t from_model = 0;         // weights from model/ (no master copy of them)
  uint64_t optimizer = 0;          // optim/ tensors
  uint64_t skipped = 0;            // checkpoint tensors not exported
  uint64_t data_bytes = 0;         // the output's data section
  std::vector<std::string> notes;  // what the user should know, one sentence each
};

// Which tensors an export writes, and their names and dtypes: `master/<p>` becomes `<p>`;
// `model/<p>` becomes `<p>` when there is no `master/<p>`; with `with_optimizer`, `optim/...`
// tensors keep their names. Floating tensors take `options.dtype`, others keep theirs.
// FailedPrecondition when the checkpoint has no weights to export.
Result<ExportSelection> SelectForExport(const fmt::Manifest& manifest,
                                        const ExportOptions& options);

struct ExportReport {
  std::string path;  // the file written
  std::string tag;   // of the checkpoint
  int64_t step = 0;
  ExportSelection selection;
  uint64_t bytes_written = 0;  // tensor data
  uint64_t bytes_read = 0;     // raw checkpoint bytes decoded
  double seconds = 0;
};

// A Hugging Face model's config.json, saved by the trainer with a model from a folder
// (model.hf_path): ExportHfFolder writes it back.
inline constexpr char kHfConfigBlob[] = "hf/config.json";

// Writes `out_path` (via `out_path`.partial, renamed when complete: a failure leaves no file).
// Refuses an existing file unless `overwrite`, and a target filesystem with less free space
// than the file needs (NoSpace naming both numbers).
Result<ExportReport> ExportSafetensors(io::Env* env, const std::string& checkpoint_dir,
                                       const std::string& out_path, const ExportOptions& options);

// Hugging Face's sharded layout, as save_pretrained(max_shard_size=...) writes it, in the folder
// `out_dir`: the selected tensors in checkpoint order, cut greedily into files of at most
// `max_shard_bytes` of tensor data (a larger tensor alone in its file), named
// model-00001-of-0000N.safetensors, and model.safetensors.index.json ({"metadata":
// {"total_size": bytes}, "weight_map": {name: file}}) written last; a single file is
// model.safetensors with no index, as transformers does. Each file streams through
// ExportSafetensors. With `overwrite`, files of an earlier export in that layout are removed
// first; on failure the files written so far are removed.
struct ShardedExport {
  std::vector<ExportReport> files;
  std::string index;  // the index written, or "" for one file
  uint64_t total_bytes = 0;
};
Result<ShardedExport> ExportHfShards(io::Env* env, const std::string& checkpoint_dir,
                                     const std::string& out_dir, const ExportOptions& options,
                                     uint64_t max_shard_bytes);

// ---- import

struct ImportOptions {
  uint32_t world_size = 1;  // ranks the checkpoint is laid out for
  uint32_t zero_stage = 0;
  int64_t step = 0;
  std::string tag;                            // empty: TagForStep(step)
  uint64_t memory_bytes = uint64_t{1} << 30;  // staging memory of all ranks together
  // Codec, chunk size, encoder threads (0: the cores shared among ranks), I/O backend.
  // save_dir, rank, world_size, store and staging_bytes are set by the import.
  WriterOptions writer;
  // Called as checkpoint bytes are staged (from the ranks' threads): bytes just staged, and
  // the total the checkpoint's tensors take.
  std::function<void(uint64_t bytes, uint64_t total)> progress;
  // More blobs for the checkpoint, by name (a Hugging Face folder's config.json under
  // kHfConfigBlob); "step" and "import" are the import's own.
  std::map<std::string, std::string> blobs;
};

struct ImportReport {
  std::string path;  // the committed checkpoint
  std::string tag;
  uint64_t tensors = 0;
  uint64_t bytes = 0;  // logical checkpoint bytes
  std::vector<std::string> notes;
  double seconds = 0;
};

// Makes a checkpoint in save directory `save_dir` from the safetensors file `path`: floating
// tensors become fp32 `master/<name>` (names starting with `optim/` keep their name), other
// dtypes become `model/<name>` unchanged. Partitioned for `world_size` ranks at `zero_stage`
// by PartitionForRank, written by that many CheckpointWriters, committed, `latest` set.
Result<ImportReport> ImportSafetensors(io::Env* env, const std::string& path,
                                       const std::string& save_dir, const ImportOptions& options);
// The same from several files, their tensors in file order (a sharded Hugging Face folder's
// files in its index's order); a tensor name in two files is refused.
Result<ImportReport> ImportSafetensorsFiles(io::Env* env, const std::vector<std::string>& paths,
                                            const std::string& save_dir,
                                            const ImportOptions& options);

}  // namespace ds::ckpt
