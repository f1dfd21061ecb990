// dsckpt diff / export / import: the ckpt layer does the work (ckpt/diff.h, ckpt/export.h); this
// file parses flags, resolves checkpoint arguments and prints. docs/export.md is the manual.
#include "ckpt/export.h"

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>

#include "ckpt/catalog.h"
#include "ckpt/diff.h"
#include "ckpt/inspect.h"
#include "ckpt/reader.h"
#include "cli/dsckpt/commands.h"
#include "formats/safetensors.h"
#include "io/progress.h"
#include "io/units.h"

namespace ds::cli {
namespace {

using nlohmann::json;

// ---- arguments

// A checkpoint directory, or `<save_dir>/latest` / `<save_dir>/best` (the pointer files), to the
// checkpoint's directory. Errors say what the path is instead and what to pass.
Result<std::string> ResolveCheckpoint(const std::string& spec) {
  io::Env* env = io::Env::Default();
  Result<io::FileInfo> info = env->Stat(spec);
  if (!info.ok() && info.status().IsNotFound()) {
    return Status::NotFound(spec + " does not exist");
  }
  if (!info.ok()) return info.status();
  if (!info->is_dir) {
    const std::string base = io::BaseName(spec);
    if (base == ckpt::kLatestFile || base == ckpt::kBestFile) {
      return ckpt::Catalog(env, io::DirName(spec)).Resolve(base);
    }
    return Status::InvalidArgument(spec + " is a file, not a checkpoint directory");
  }
  DS_ASSIGN_OR_RETURN(bool is_ckpt, ckpt::IsCheckpointDir(env, spec));
  if (is_ckpt) return spec;
  DS_ASSIGN_OR_RETURN(bool is_save_dir, env->Exists(io::JoinPath(spec, ckpt::kLatestFile)));
  if (is_save_dir) {
    return Status::InvalidArgument(
        spec +
        " is a save directory, not a checkpoint: name one of its "
        "checkpoints (" +
        io::JoinPath(spec, "latest") + ", " + io::JoinPath(spec, "best") + " or " +
        io::JoinPath(spec, "<tag>") + "; 'dsckpt inspect " + spec + "' lists them)");
  }
  return Status::NotFound(spec + " is not a checkpoint: it has no " + fmt::kManifestFileName +
                          " (point at a checkpoint directory such as ckpts/step-00001000, or "
                          "at ckpts/latest)");
}

Result<uint64_t> ParseMemory(const std::string& text) {
  Result<uint64_t> bytes = io::ParseByteSize(text);
  if (!bytes.ok()) return bytes.status().WithContext("--memory");
  if (*bytes < (uint64_t{1} << 20)) {
    return Status::InvalidArgument("--memory " + text + " is too small (at least 1M)");
  }
  return bytes;
}

Result<fmt::DType> ParseExportDType(const std::string& text) {
  if (text == "fp32" || text == "float32") return fmt::DType::kF32;
  if (text == "bf16" || text == "bfloat16") return fmt::DType::kBF16;
  return Status::InvalidArgument("unknown --dtype '" + text + "' (use fp32 or bf16)");
}

// Draws a byte progress bar once the total is known (the first call says it).
class LazyProgress {
 public:
  explicit LazyProgress(std::string label) : label_(std::move(label)) {}
  void Add(uint64_t bytes, uint64_t total) {
    std::call_once(once_, [&] { bar_ = std::make_unique<io::Progress>(label_, total); });
    bar_->Add(bytes);
  }
  void Finish() {
    if (bar_) bar_->Finish();
  }

 private:
  std::string label_;
  std::once_flag once_;
  std::unique_ptr<io::Progress> bar_;
};

void PrintNotes(const std::vector<std::string>& notes) {
  for (const std::string& n : notes) std::fprintf(stderr, "dsckpt: note: %s\n", n.c_str());
}

std::string Num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.6g", v);
  return b;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// A flat element index as a multi-index of `shape`: 17 in [4, 5] -> "[3, 2]".
std::string IndexText(uint64_t flat, const std::vector<int64_t>& shape) {
  std::vector<int64_t> idx(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    const auto n = static_cast<uint64_t>(shape[d]);
    idx[d] = n == 0 ? 0 : static_cast<int64_t>(flat % n);
    flat = n == 0 ? 0 : flat / n;
  }
  return ShapeText(idx);
}

// ---- diff

struct DiffFlags {
  std::string a, b;
  double atol = 0, rtol = 0;
  bool json = false;
  bool ignore_blobs = false;
  std::string memory = "1G";
  unsigned threads = 0;
};

std::string Describe(const std::string& path, const fmt::ManifestInfo& i) {
  return path + " (" + i.tag + ", step " + std::to_string(i.step) + ", world size " +
         std::to_string(i.world_size) + ", ZeRO stage " + std::to_string(i.zero_stage) + ")";
}

json DiffJson(const ckpt::DiffReport& r, const ckpt::DiffOptions& o) {
  auto number = [](double v) { return std::isfinite(v) ? json(v) : json(nullptr); };
  json j = {{"a", r.a},
            {"b", r.b},
            {"equal", r.equal()},
            {"atol", o.atol},
            {"rtol", o.rtol},
            {"bytes_compared", r.bytes_compared},
            {"seconds", r.seconds},
            {"tensors", json::array()},
            {"blobs", json::array()}};
  for (const ckpt::TensorDiff& t : r.tensors) {
    json e = {{"name", t.name}, {"status", ckpt::TensorDiffKindName(t.kind)}};
    if (t.kind != ckpt::TensorDiffKind::kOnlyInB) {
      e["dtype_a"] = fmt::DTypeName(t.dtype_a);
      e["shape_a"] = t.shape_a;
    }
    if (t.kind != ckpt::TensorDiffKind::kOnlyInA) {
      e["dtype_b"] = fmt::DTypeName(t.dtype_b);
      e["shape_b"] = t.shape_b;
    }
    if (t.kind == ckpt::TensorDiffKind::kEqual || t.kind == ckpt::TensorDiffKind::kDiffers) {
      e["elements"] = t.elements;
      e["mismatched"] = t.mismatched;
      e["not_bit_exact"] = t.not_bit_exact;
      e["nan_mismatches"] = t.nan_mismatches;
      e["max_abs_diff"] = number(t.max_abs);
      e["max_rel_diff"] = number(t.max_rel);
      if (t.not_bit_exact > t.nan_mismatches) {
        e["max_abs_index"] = t.max_abs_index;
        e["a_at_max"] = number(t.a_at_max);
        e["b_at_max"] = number(t.b_at_max);
      }
      if (t.mismatched > 0) e["first_mismatch_index"] = t.first_mismatch;
    }
    j["tensors"].push_back(e);
  }
  const char* kinds[] = {"differs", "only_in_a", "only_in_b"};
  for (const ckpt::BlobDiff& b : r.blobs) {
    j["blobs"].push_back({{"name", b.name},
                          {"status", kinds[static_cast<int>(b.kind)]},
                          {"bytes_a", b.bytes_a},
                          {"bytes_b", b.bytes_b}});
  }
  return j;
}

void PrintDiff(const ckpt::DiffReport& r, const ckpt::DiffOptions& o) {
  std::printf("A: %s\nB: %s\n", Describe(r.a, r.info_a).c_str(), Describe(r.b, r.info_b).c_str());
  size_t differ = 0, within = 0;
  const ckpt::TensorDiff* loosest = nullptr;  // the largest difference within the tolerance
  for (const ckpt::TensorDiff& t : r.tensors) {
    switch (t.kind) {
      case ckpt::TensorDiffKind::kEqual:
        if (t.not_bit_exact > 0) {
          ++within;
          if (loosest == nullptr || t.max_abs > loosest->max_abs) loosest = &t;
        }
        continue;
      case ckpt::TensorDiffKind::kDiffers: {
        std::string line = "differs: " + t.name + ": " + std::to_string(t.mismatched) + " of " +
                           std::to_string(t.elements) + " elements";
        if (t.not_bit_exact > t.nan_mismatches) {
          line += ", max abs diff " + Num(t.max_abs) + " at " +
                  IndexText(t.max_abs_index, t.shape_a) + " (A " + Num(t.a_at_max) + ", B " +
                  Num(t.b_at_max) + "), max rel diff " + Num(t.max_rel);
        }
        if (t.nan_mismatches > 0) line += ", " + std::to_string(t.nan_mismatches) + " NaN";
        std::printf("%s\n", line.c_str());
        break;
      }
      case ckpt::TensorDiffKind::kOnlyInA:
        std::printf("only in A: %s %s %s\n", t.name.c_str(),
                    std::string(fmt::DTypeName(t.dtype_a)).c_str(), ShapeText(t.shape_a).c_str());
        break;
      case ckpt::TensorDiffKind::kOnlyInB:
        std::printf("only in B: %s %s %s\n", t.name.c_str(),
                    std::string(fmt::DTypeName(t.dtype_b)).c_str(), ShapeText(t.shape_b).c_str());
        break;
      case ckpt::TensorDiffKind::kDTypeMismatch:
        std::printf("dtype differs: %s: %s in A, %s in B\n", t.name.c_str(),
                    std::string(fmt::DTypeName(t.dtype_a)).c_str(),
                    std::string(fmt::DTypeName(t.dtype_b)).c_str());
        break;
      case ckpt::TensorDiffKind::kShapeMismatch:
        std::printf("shape differs: %s: %s in A, %s in B\n", t.name.c_str(),
                    ShapeText(t.shape_a).c_str(), ShapeText(t.shape_b).c_str());
        break;
    }
    ++differ;
  }
  const char* what[] = {"differs", "only in A", "only in B"};
  for (const ckpt::BlobDiff& b : r.blobs) {
    std::printf("blob %s: %s (%" PRIu64 " bytes in A, %" PRIu64 " in B)\n",
                what[static_cast<int>(b.kind)], b.name.c_str(), b.bytes_a, b.bytes_b);
  }
  if (loosest != nullptr) {
    std::printf(
        "%zu tensor(s) match within atol %s rtol %s but not bit-exactly (largest abs "
        "diff %s, in %s)\n",
        within, Num(o.atol).c_str(), Num(o.rtol).c_str(), Num(loosest->max_abs).c_str(),
        loosest->name.c_str());
  }
  if (r.equal()) {
    std::printf("equal: %zu tensors, %s compared%s\n", r.tensors.size(),
                io::FormatBytes(r.bytes_compared).c_str(),
                o.atol == 0 && o.rtol == 0 ? " (bit-exact)" : "");
  } else {
    std::printf("different: %zu of %zu tensors, %zu blob(s)\n", differ, r.tensors.size(),
                r.blobs.size());
  }
}

int RunDiff(const DiffFlags& f) {
  ckpt::DiffOptions o;
  o.atol = f.atol;
  o.rtol = f.rtol;
  o.compare_blobs = !f.ignore_blobs;
  o.threads = f.threads;
  Result<uint64_t> memory = ParseMemory(f.memory);
  if (!memory.ok()) return ReportError(memory.status());
  o.memory_bytes = *memory;
  Result<std::string> a = ResolveCheckpoint(f.a);
  if (!a.ok()) return ReportError(a.status());
  Result<std::string> b = ResolveCheckpoint(f.b);
  if (!b.ok()) return ReportError(b.status());
  Result<ckpt::DiffReport> r = ckpt::DiffCheckpoints(io::Env::Default(), *a, *b, o);
  if (!r.ok()) return ReportError(r.status());
  if (f.json) {
    std::printf("%s\n", DiffJson(*r, o).dump().c_str());
  } else {
    PrintDiff(*r, o);
  }
  return r->equal() ? kExitOk : kExitProblem;
}

// ---- export

struct ExportFlags {
  std::string checkpoint;
  std::string format = "safetensors";
  std::string out;
  std::string dtype = "fp32";
  std::string what = "weights";
  std::string memory = "1G";
  unsigned threads = 0;
  bool force = false;
  bool json = false;
  std::string max_shard_size;  // --format hf: "" for one model.safetensors
};

// --format hf: the checkpoint's saved config.json, its dtype set to the export's.
Result<std::string> HfConfigFor(const std::string& checkpoint, fmt::DType dtype) {
  io::Env* env = io::Env::Default();
  DS_ASSIGN_OR_RETURN(std::unique_ptr<ckpt::CheckpointReader> reader,
                      ckpt::CheckpointReader::Open(env, checkpoint));
  Result<std::string> config = reader->ReadBlob(ckpt::kHfConfigBlob);
  if (!config.ok()) {
    return Status::InvalidArgument(
        checkpoint + " was not trained from a Hugging Face folder (it holds no " +
        ckpt::kHfConfigBlob + "): use --format safetensors for its tensors as they are named");
  }
  json j = json::parse(*config, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Status::Corruption(checkpoint + ": its " + std::string(ckpt::kHfConfigBlob) +
                              " is not a JSON object");
  }
  j["dtype"] = dtype == fmt::DType::kBF16 ? "bfloat16" : "float32";
  return j.dump(2) + "\n";
}

// --format hf: `f.out` becomes a Hugging Face model folder: the weights under transformers'
// names (model.safetensors, or shards of at most --max-shard-size with their index), then
// config.json.
int RunHfExport(const ExportFlags& f, const std::string& checkpoint, ckpt::ExportOptions o) {
  io::Env* env = io::Env::Default();
  uint64_t max_shard = UINT64_MAX;
  if (!f.max_shard_size.empty()) {
    Result<uint64_t> size = io::ParseByteSize(f.max_shard_size);
    if (!size.ok() || *size == 0) {
      return ReportError(Status::InvalidArgument(
          "--max-shard-size '" + f.max_shard_size +
          "': give a size such as 5GB (10^9 bytes, transformers' unit) or 4GiB"));
    }
    max_shard = *size;
  }
  Result<std::string> config = HfConfigFor(checkpoint, o.dtype);
  if (!config.ok()) return ReportError(config.status());
  if (Status st = env->CreateDirs(f.out); !st.ok()) return ReportError(st);
  LazyProgress bar("export");
  o.progress = [&bar](uint64_t n, uint64_t total) { bar.Add(n, total); };
  Result<ckpt::ShardedExport> r = ckpt::ExportHfShards(env, checkpoint, f.out, o, max_shard);
  bar.Finish();
  if (!r.ok()) return ReportError(r.status());
  if (Status st = env->WriteFileSynced(io::JoinPath(f.out, "config.json"), *config); !st.ok()) {
    return ReportError(st);
  }
  size_t tensors = 0;
  double seconds = 0;
  for (const ckpt::ExportReport& e : r->files) {
    PrintNotes(e.selection.notes);
    tensors += e.selection.items.size();
    seconds += e.seconds;
  }
  const ckpt::ExportReport& first = r->files.front();
  if (f.json) {
    json files = json::array();
    for (const ckpt::ExportReport& e : r->files) files.push_back(e.path);
    const json j = {{"path", f.out},
                    {"files", files},
                    {"index", r->index},
                    {"checkpoint", checkpoint},
                    {"tag", first.tag},
                    {"step", first.step},
                    {"tensors", tensors},
                    {"dtype", fmt::DTypeName(o.dtype)},
                    {"bytes_written", r->total_bytes},
                    {"seconds", seconds}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("exported %zu tensors (%s, %s) of %s (step %" PRId64
                ") to the Hugging Face folder %s (%zu file%s) in %.1f s\n",
                tensors, io::FormatBytes(r->total_bytes).c_str(),
                std::string(fmt::DTypeName(o.dtype)).c_str(), first.tag.c_str(), first.step,
                f.out.c_str(), r->files.size(), r->files.size() == 1 ? "" : "s", seconds);
  }
  return kExitOk;
}

int RunExport(const ExportFlags& f) {
  if (f.format != "safetensors" && f.format != "hf") {
    return ReportError(Status::InvalidArgument("unknown --format '" + f.format +
                                               "' (supported: safetensors, hf)"));
  }
  if (f.format == "hf" && f.what != "weights") {
    return ReportError(
        Status::InvalidArgument("--format hf exports weights only (--what all "
                                "is for --format safetensors)"));
  }
  if (f.what != "weights" && f.what != "all") {
    return ReportError(
        Status::InvalidArgument("unknown --what '" + f.what + "' (use weights or all)"));
  }
  ckpt::ExportOptions o;
  Result<fmt::DType> dtype = ParseExportDType(f.dtype);
  if (!dtype.ok()) return ReportError(dtype.status());
  o.dtype = *dtype;
  o.with_optimizer = f.what == "all";
  Result<uint64_t> memory = ParseMemory(f.memory);
  if (!memory.ok()) return ReportError(memory.status());
  o.memory_bytes = *memory;
  o.overwrite = f.force;
  o.threads = f.threads;
  Result<std::string> dir = ResolveCheckpoint(f.checkpoint);
  if (!dir.ok()) return ReportError(dir.status());
  if (f.format == "hf") return RunHfExport(f, *dir, o);
  if (!f.max_shard_size.empty()) {
    return ReportError(Status::InvalidArgument(
        "--max-shard-size is for --format hf (a Hugging Face folder of shards with an index)"));
  }
  const std::string& out = f.out;
  LazyProgress bar("export");
  o.progress = [&bar](uint64_t n, uint64_t total) { bar.Add(n, total); };
  Result<ckpt::ExportReport> r = ckpt::ExportSafetensors(io::Env::Default(), *dir, out, o);
  bar.Finish();
  if (!r.ok()) return ReportError(r.status());
  PrintNotes(r->selection.notes);
  const double rate = r->seconds > 0 ? static_cast<double>(r->bytes_written) / r->seconds : 0;
  if (f.json) {
    json j = {{"path", r->path},
              {"checkpoint", *dir},
              {"tag", r->tag},
              {"step", r->step},
              {"tensors", r->selection.items.size()},
              {"from_master", r->selection.from_master},
              {"from_model", r->selection.from_model},
              {"optimizer", r->selection.optimizer},
              {"skipped", r->selection.skipped},
              {"dtype", fmt::DTypeName(o.dtype)},
              {"bytes_written", r->bytes_written},
              {"bytes_read", r->bytes_read},
              {"seconds", r->seconds},
              {"bytes_per_second", rate},
              {"notes", r->selection.notes}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("exported %zu tensors (%s, %s) of %s (step %" PRId64 ") to %s in %.1f s (%s)\n",
                r->selection.items.size(), io::FormatBytes(r->bytes_written).c_str(),
                std::string(fmt::DTypeName(o.dtype)).c_str(), r->tag.c_str(), r->step,
                r->path.c_str(), r->seconds, io::FormatRate(rate).c_str());
  }
  return kExitOk;
}

// ---- import

struct ImportFlags {
  std::string file;
  std::string out;
  uint32_t world = 1;
  uint32_t stage = 0;
  int64_t step = 0;
  std::string tag;
  std::string memory = "1G";
  std::string codec = "bytegroup+zstd";
  bool json = false;
};

// A Hugging Face folder's weight files: model.safetensors, or the files its
// model.safetensors.index.json maps tensors to, sorted (save_pretrained's model-00001-of-N
// first).
Result<std::vector<std::string>> HfShardFiles(io::Env* env, const std::string& dir) {
  const std::string index = io::JoinPath(dir, "model.safetensors.index.json");
  DS_ASSIGN_OR_RETURN(const bool sharded, env->Exists(index));
  if (!sharded) return std::vector<std::string>{io::JoinPath(dir, "model.safetensors")};
  DS_ASSIGN_OR_RETURN(const auto weight_map, fmt::ReadSafetensorsIndex(env, index));
  std::set<std::string> files;
  for (const auto& [name, file] : weight_map) files.insert(file);
  return std::vector<std::string>(files.begin(), files.end());
}

int RunImport(const ImportFlags& f) {
  ckpt::ImportOptions o;
  o.world_size = f.world;
  o.zero_stage = f.stage;
  o.step = f.step;
  o.tag = f.tag;
  Result<uint64_t> memory = ParseMemory(f.memory);
  if (!memory.ok()) return ReportError(memory.status());
  o.memory_bytes = *memory;
  Result<fmt::Codec> codec = fmt::CodecFromName(f.codec);
  if (!codec.ok()) return ReportError(codec.status().WithContext("--codec"));
  o.writer.codec = *codec;
  // A Hugging Face model folder: its model.safetensors, and its config.json kept for
  // `export --format hf`.
  std::string file = f.file;
  std::vector<std::string> files = {f.file};
  io::Env* env = io::Env::Default();
  if (Result<io::FileInfo> info = env->Stat(f.file); info.ok() && info->is_dir) {
    Result<std::string> config = env->ReadFileToString(io::JoinPath(f.file, "config.json"));
    if (!config.ok()) {
      return ReportError(Status::InvalidArgument(
          f.file +
          " is a directory without a config.json: name a safetensors file, or a "
          "Hugging Face model folder"));
    }
    Result<std::vector<std::string>> shards = HfShardFiles(env, f.file);
    if (!shards.ok()) return ReportError(shards.status());
    files = *shards;
    file = files.size() == 1 ? files.front() : f.file;
    o.blobs[ckpt::kHfConfigBlob] = *config;
  }
  LazyProgress bar("import");
  o.progress = [&bar](uint64_t n, uint64_t total) { bar.Add(n, total); };
  Result<ckpt::ImportReport> r = ckpt::ImportSafetensorsFiles(env, files, f.out, o);
  bar.Finish();
  if (!r.ok()) return ReportError(r.status());
  PrintNotes(r->notes);
  if (f.json) {
    json j = {{"path", r->path},   {"tag", r->tag},         {"tensors", r->tensors},
              {"bytes", r->bytes}, {"world_size", f.world}, {"zero_stage", f.stage},
              {"step", f.step},    {"seconds", r->seconds}, {"notes", r->notes}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("imported %" PRIu64
                " tensors (%s) from %s into %s (world size %u, ZeRO stage "
                "%u) in %.1f s; latest -> %s\n",
                r->tensors, io::FormatBytes(r->bytes).c_str(), file.c_str(), r->path.c_str(),
                f.world, f.stage, r->seconds, r->tag.c_str());
  }
  return kExitOk;
}

}  // namespace

void AddExportCommands(CLI::App& app, DsckptContext& ctx) {
  auto df = std::make_shared<DiffFlags>();
  CLI::App* diff = app.add_subcommand(
      "diff", "Compare two checkpoints tensor by tensor: exit 0 equal, 1 different");
  diff->add_option("a", df->a, "A checkpoint directory (or <save_dir>/latest, .../best)")
      ->required();
  diff->add_option("b", df->b, "The checkpoint to compare it with")->required();
  diff->add_option("--atol", df->atol, "Absolute tolerance for floating tensors (default 0)");
  diff->add_option("--rtol", df->rtol, "Relative tolerance, of B's value (default 0)");
  diff->add_flag("--ignore-blobs", df->ignore_blobs, "Compare tensors only, not small state");
  diff->add_flag("--json", df->json, "Print one JSON object");
  diff->add_option("--memory", df->memory, "Memory for both sides together (default 1G)");
  diff->add_option("--threads", df->threads, "Decoder threads per side (default: all cores)");
  diff->footer(
      "Layout-independent: checkpoints saved at different world sizes or ZeRO stages compare\n"
      "equal when they hold the same values. Default: bit-exact.\n"
      "Examples:\n  dsckpt diff ckpts/step-00001000 ckpts/step-00002000\n"
      "  dsckpt diff run1/latest run2/latest --atol 1e-6 --ignore-blobs");
  diff->callback([df, &ctx] { ctx.exit_code = RunDiff(*df); });

  auto ef = std::make_shared<ExportFlags>();
  CLI::App* exp = app.add_subcommand(
      "export", "Write a checkpoint's weights as one safetensors file (streaming, bounded memory)");
  exp->add_option("checkpoint", ef->checkpoint,
                  "A checkpoint directory (or <save_dir>/latest, .../best)")
      ->required();
  exp->add_option("--format", ef->format,
                  "Output format: safetensors (default), or hf: a Hugging Face model folder "
                  "(config.json and model.safetensors) of a model trained from one");
  exp->add_option("--out", ef->out, "The file to write (--format hf: the folder)")->required();
  exp->add_option("--dtype", ef->dtype, "fp32 (default) or bf16 (round to nearest even)");
  exp->add_option("--what", ef->what, "weights (default) or all (also optim/ state)");
  exp->add_option("--memory", ef->memory, "Memory bound (default 1G)");
  exp->add_option("--threads", ef->threads, "Decoder threads (default: all cores)");
  exp->add_option("--max-shard-size", ef->max_shard_size,
                  "--format hf: files of at most this much tensor data (5GB = 10^9 bytes, as "
                  "transformers counts; 4GiB) with model.safetensors.index.json (default: one "
                  "model.safetensors)");
  exp->add_flag("--force", ef->force, "Replace an existing output file");
  exp->add_flag("--json", ef->json, "Print one JSON object");
  exp->footer(
      "master/<param> is written as <param> (model/<param> where there is no master copy);\n"
      "with --what all, optim/<state>/<param> keeps its name. See docs/export.md.\n"
      "Example:\n  dsckpt export ckpts/best --format safetensors --out model.safetensors");
  exp->callback([ef, &ctx] { ctx.exit_code = RunExport(*ef); });

  auto imf = std::make_shared<ImportFlags>();
  CLI::App* imp = app.add_subcommand(
      "import", "Make a checkpoint to start training from a safetensors file's weights");
  imp->add_option("file", imf->file,
                  "The safetensors file, or a Hugging Face model folder (its model.safetensors "
                  "or the shards its index lists; its config.json kept for export --format hf)")
      ->required();
  imp->add_option("--out", imf->out, "The save directory to commit the checkpoint into")
      ->required();
  imp->add_option("--world", imf->world, "World size to lay the checkpoint out for (default 1)");
  imp->add_option("--stage", imf->stage, "ZeRO stage 0-3 (default 0)");
  imp->add_option("--step", imf->step, "Training step (default 0)");
  imp->add_option("--tag", imf->tag, "Tag (default step-<step, 8 digits>)");
  imp->add_option("--memory", imf->memory, "Staging memory of all ranks together (default 1G)");
  imp->add_option("--codec", imf->codec, "raw, zstd or bytegroup+zstd (default)");
  imp->add_flag("--json", imf->json, "Print one JSON object");
  imp->footer(
      "Floating tensors become fp32 master/<name>; optim/... names are kept; other dtypes\n"
      "become model/<name> unchanged. See docs/export.md.\n"
      "Example:\n  dsckpt import model.safetensors --out ckpts --world 8 --stage 2");
  imp->callback([imf, &ctx] { ctx.exit_code = RunImport(*imf); });
}

}  // namespace ds::cli
