// Export: checkpoint -> one safetensors file, streaming. Import is in ckpt/import.cc.
#include "ckpt/export.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>

#include "ckpt/internal/free_space.h"
#include "ckpt/internal/windows.h"
#include "ckpt/reader.h"
#include "formats/dtype_convert.h"
#include "formats/safetensors.h"
#include "io/thread_pool.h"

namespace ds::ckpt {
namespace {

constexpr std::string_view kMaster = "master/";
constexpr std::string_view kModel = "model/";
constexpr std::string_view kOptim = "optim/";
// Source bytes planned per CheckpointReader::Read: large enough that chunks shared by two
// windows are rare, small enough that a plan stays a few MiB.
constexpr uint64_t kWindowBytes = uint64_t{256} << 20;
// Output bytes each reader thread converts at a time (its scratch buffer).
constexpr size_t kConvertBlockBytes = size_t{256} << 10;

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

std::string ListNames(const fmt::Manifest& m, size_t at_most) {
  std::string s;
  for (size_t i = 0; i < m.tensors.size() && i < at_most; ++i) {
    s += (i ? ", " : "") + m.tensors[i].name;
  }
  if (m.tensors.size() > at_most) s += ", ...";
  return s.empty() ? "no tensors" : s;
}

}  // namespace

// ---- selection

Result<ExportSelection> SelectForExport(const fmt::Manifest& m, const ExportOptions& options) {
  if (options.dtype != fmt::DType::kF32 && options.dtype != fmt::DType::kBF16) {
    return Status::InvalidArgument("cannot export as " +
                                   std::string(fmt::DTypeName(options.dtype)) +
                                   ": the export dtype is float32 or bfloat16");
  }
  ExportSelection sel;
  for (const fmt::TensorMeta& t : m.tensors) {
    ExportItem item{t.name, "", t.dtype, t.dtype, t.shape};
    const std::string_view name = t.name;
    if (StartsWith(name, kMaster)) {
      item.name = name.substr(kMaster.size());
      sel.from_master++;
    } else if (StartsWith(name, kModel) &&
               m.FindTensor(std::string(kMaster) + std::string(name.substr(kModel.size()))) < 0) {
      item.name = name.substr(kModel.size());
      sel.from_model++;
    } else if (options.with_optimizer && StartsWith(name, kOptim)) {
      item.name = t.name;
      sel.optimizer++;
    } else {
      sel.skipped++;
      continue;
    }
    if (fmt::DTypeIsFloat(t.dtype)) item.dtype = options.dtype;
    sel.data_bytes += *fmt::NumElements(t.shape) * fmt::DTypeSize(item.dtype);
    sel.items.push_back(std::move(item));
  }
  if (sel.from_master + sel.from_model == 0) {
    return Status::FailedPrecondition("checkpoint " + m.info.tag +
                                      " has no weights to export: no master/ or model/ tensors (it "
                                      "holds " +
                                      ListNames(m, 5) + "; 'dsckpt inspect' shows more)");
  }
  if (sel.from_master == 0) {
    sel.notes.push_back("the checkpoint has no master/ (fp32 master) tensors: exported the " +
                        std::to_string(sel.from_model) + " model/ weights instead");
  } else if (sel.from_model > 0) {
    sel.notes.push_back(std::to_string(sel.from_model) +
                        " weight(s) have no master/ copy: exported from model/");
  }
  return sel;
}

// ---- streaming one window into the file

namespace {

// Takes the pieces of one window (elements [first, ...) of one tensor) as the reader delivers
// them (any order, any thread), converts them and writes them into the output. A chunk boundary
// may cut an element in two (chunk sizes need not be multiples of 8); the bytes of such an
// element are collected here until all have arrived, then converted.
class WindowWriter {
 public:
  WindowWriter(fmt::SafetensorsWriter* out, size_t index, const ExportItem& item, uint64_t first,
               const std::function<void(uint64_t)>* progress)
      : out_(out),
        index_(index),
        from_(item.source_dtype),
        to_(item.dtype),
        in_size_(fmt::DTypeSize(item.source_dtype)),
        out_size_(fmt::DTypeSize(item.dtype)),
        first_(first),
        progress_(progress) {}

  // `bytes` start at byte `offset` of the window's source bytes.
  Status Put(uint64_t offset, std::span<const std::byte> bytes) {
    if (from_ == to_) return Write(first_ * out_size_ + offset, bytes);
    // A head cut from its element, whole elements, and a tail cut from its element.
    const uint64_t head =
        std::min<uint64_t>((in_size_ - offset % in_size_) % in_size_, bytes.size());
    if (head > 0) {
      DS_RETURN_IF_ERROR(AddPart(offset / in_size_, offset % in_size_, bytes.first(head)));
    }
    const uint64_t whole = (bytes.size() - head) / in_size_ * in_size_;
    DS_RETURN_IF_ERROR(Convert((offset + head) / in_size_, bytes.subspan(head, whole)));
    const uint64_t tail = bytes.size() - head - whole;
    if (tail > 0) {
      DS_RETURN_IF_ERROR(AddPart((offset + head + whole) / in_size_, 0, bytes.last(tail)));
    }
    return Status::OK();
  }

 private:
  struct Partial {
    std::array<std::byte, 8> bytes{};
    size_t have = 0;
  };

  Status Write(uint64_t out_offset, std::span<const std::byte> bytes) {
    DS_RETURN_IF_ERROR(out_->WriteTensorData(index_, out_offset, bytes));
    if (*progress_) (*progress_)(bytes.size());
    return Status::OK();
  }

  // Converts whole elements starting at element `elem` of the window, a block at a time.
  Status Convert(uint64_t elem, std::span<const std::byte> src) {
    thread_local std::vector<std::byte> scratch;
    scratch.resize(kConvertBlockBytes);
    const uint64_t per_block = kConvertBlockBytes / out_size_;  // elements
    for (uint64_t done = 0; done < src.size() / in_size_;) {
      const uint64_t n = std::min(per_block, src.size() / in_size_ - done);
      std::span<std::byte> dst(scratch.data(), n * out_size_);
      DS_RETURN_IF_ERROR(
          fmt::ConvertElements(from_, src.subspan(done * in_size_, n * in_size_), to_, dst));
      DS_RETURN_IF_ERROR(Write((first_ + elem + done) * out_size_, dst));
      done += n;
    }
    return Status::OK();
  }

  // Bytes [pos, pos + part.size()) of element `elem`; converts it once all its bytes are here.
  Status AddPart(uint64_t elem, size_t pos, std::span<const std::byte> part) {
    std::array<std::byte, 8> whole;
    {
      std::lock_guard<std::mutex> lock(mu_);
      Partial& p = partial_[elem];
      std::copy(part.begin(), part.end(), p.bytes.begin() + pos);
      p.have += part.size();
      if (p.have < in_size_) return Status::OK();
      whole = p.bytes;
      partial_.erase(elem);
    }
    return Convert(elem, std::span<const std::byte>(whole).first(in_size_));
  }

  fmt::SafetensorsWriter* out_;
  size_t index_;
  fmt::DType from_, to_;
  size_t in_size_, out_size_;  // bytes per element
  uint64_t first_;             // the window's first element in the tensor
  const std::function<void(uint64_t)>* progress_;
  std::mutex mu_;
  std::map<uint64_t, Partial> partial_;  // guarded by mu_
};

Status CheckOutput(io::Env* env, const std::string& out_path, bool overwrite) {
  DS_ASSIGN_OR_RETURN(bool exists, env->Exists(out_path));
  if (!exists) {
    const std::string dir = io::DirName(out_path);
    DS_ASSIGN_OR_RETURN(bool dir_exists, env->Exists(dir));
    if (dir_exists) return Status::OK();
    return Status::NotFound("cannot write " + out_path + ": the directory " + dir +
                            " does not exist (create it first)");
  }
  DS_ASSIGN_OR_RETURN(io::FileInfo info, env->Stat(out_path));
  if (info.is_dir) {
    return Status::InvalidArgument(out_path + " is a directory; name the file to write (e.g. " +
                                   io::JoinPath(out_path, "model.safetensors") + ")");
  }
  if (!overwrite) {
    return Status::FailedPrecondition(out_path + " already exists; pass --force to replace it");
  }
  return Status::OK();
}

}  // namespace

// ---- export

Result<ExportReport> ExportSafetensors(io::Env* env, const std::string& checkpoint_dir,
                                       const std::string& out_path, const ExportOptions& options) {
  const uint64_t t0 = env->NowMicros();
  DS_RETURN_IF_ERROR(CheckOutput(env, out_path, options.overwrite));
  ReaderOptions ro;
  ro.threads = options.threads == 0 ? io::HardwareThreads() : options.threads;
  ro.io_backend = options.io_backend;
  // The threads' conversion scratch comes out of the budget; the reader takes the rest.
  const uint64_t scratch = uint64_t{ro.threads} * kConvertBlockBytes;
  ro.memory_bytes = options.memory_bytes > 2 * scratch ? options.memory_bytes - scratch
                                                       : options.memory_bytes / 2;
  DS_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader,
                      CheckpointReader::Open(env, checkpoint_dir, ro));
  const fmt::Manifest& m = reader->manifest();
  ExportReport report;
  report.path = out_path;
  report.tag = m.info.tag;
  report.step = m.info.step;
  Result<ExportSelection> sel = SelectForExport(m, options);
  if (!sel.ok()) return sel.status().WithContext("exporting " + checkpoint_dir);
  report.selection = std::move(sel).value();
  if (!options.only.empty()) {  // one shard of ExportHfShards: its names, in checkpoint order
    const std::set<std::string> wanted(options.only.begin(), options.only.end());
    std::vector<ExportItem> kept;
    report.selection.data_bytes = 0;
    for (ExportItem& it : report.selection.items) {
      if (!wanted.contains(it.name)) continue;
      report.selection.data_bytes += *fmt::NumElements(it.shape) * fmt::DTypeSize(it.dtype);
      kept.push_back(std::move(it));
    }
    if (kept.size() != wanted.size()) {
      return Status::InvalidArgument("exporting " + checkpoint_dir + ": " +
                                     std::to_string(wanted.size() - kept.size()) +
                                     " of the tensors asked for are not in the selection");
    }
    report.selection.items = std::move(kept);
  }
  const std::vector<ExportItem>& items = report.selection.items;

  std::vector<fmt::SafetensorsTensor> layout;
  uint64_t header_guess = 4096;  // bytes: JSON per tensor, rounded up generously
  for (const ExportItem& it : items) {
    layout.push_back({it.name, it.dtype, it.shape, 0, 0});
    header_guess += 128 + 2 * it.name.size();
  }
  DS_RETURN_IF_ERROR(internal::CheckFreeSpace(
      env, out_path, report.selection.data_bytes + header_guess, "exporting to " + out_path));
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"},
      {"tag", m.info.tag},
      {"step", std::to_string(m.info.step)},
      {"dtype", std::string(fmt::DTypeName(options.dtype))},
      {"weights_from", report.selection.from_master == 0  ? "model"
                       : report.selection.from_model == 0 ? "master"
                                                          : "master+model"}};
  // From here a failure destroys the writer, which removes the partial file.
  DS_ASSIGN_OR_RETURN(std::unique_ptr<fmt::SafetensorsWriter> out,
                      fmt::SafetensorsWriter::Create(env, out_path, std::move(layout), metadata));

  std::atomic<uint64_t> written{0};
  const std::function<void(uint64_t)> progress = [&](uint64_t n) {
    written += n;
    if (options.progress) options.progress(n, report.selection.data_bytes);
  };
  std::vector<uint64_t> numels;
  std::vector<size_t> elem_sizes;
  for (const ExportItem& it : items) {
    numels.push_back(*fmt::NumElements(it.shape));
    elem_sizes.push_back(fmt::DTypeSize(it.source_dtype));
  }
  for (const auto& window : internal::CutIntoWindows(numels, elem_sizes, kWindowBytes)) {
    std::vector<std::unique_ptr<WindowWriter>> writers;
    std::vector<ReadRequest> requests;
    for (const internal::WindowPiece& p : window) {
      const ExportItem& it = items[p.tensor];
      writers.push_back(
          std::make_unique<WindowWriter>(out.get(), p.tensor, it, p.begin, &progress));
      ReadRequest q;
      q.slice = {it.source, {}, {}, p.begin, p.end};
      q.sink = [w = writers.back().get()](uint64_t offset, std::span<const std::byte> bytes) {
        return w->Put(offset, bytes);
      };
      requests.push_back(std::move(q));
    }
    Result<ReadStats> st = reader->Read(requests);
    if (!st.ok()) return st.status().WithContext("exporting " + checkpoint_dir);
    report.bytes_read += st->raw_bytes;
  }
  DS_RETURN_IF_ERROR(out->Finish());
  report.bytes_written = written;
  report.seconds = static_cast<double>(env->NowMicros() - t0) / 1e6;
  return report;
}

Result<ShardedExport> ExportHfShards(io::Env* env, const std::string& checkpoint_dir,
                                     const std::string& out_dir, const ExportOptions& options,
                                     uint64_t max_shard_bytes) {
  if (max_shard_bytes == 0) return Status::InvalidArgument("the shard size must be positive");
  std::vector<std::vector<std::string>> shards;  // output names per file
  uint64_t total = 0;                            // tensor bytes of all files
  {
    DS_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader,
                        CheckpointReader::Open(env, checkpoint_dir));
    DS_ASSIGN_OR_RETURN(ExportSelection sel, SelectForExport(reader->manifest(), options));
    uint64_t in_shard = 0;
    total = sel.data_bytes;
    for (const ExportItem& it : sel.items) {
      const uint64_t bytes = *fmt::NumElements(it.shape) * fmt::DTypeSize(it.dtype);
      if (shards.empty() || (in_shard > 0 && in_shard + bytes > max_shard_bytes)) {
        shards.emplace_back();
        in_shard = 0;
      }
      shards.back().push_back(it.name);
      in_shard += bytes;
    }
  }
  const std::string index = io::JoinPath(out_dir, "model.safetensors.index.json");
  auto file_name = [&](size_t k) {
    if (shards.size() == 1) return std::string("model.safetensors");
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", k + 1, shards.size());
    return std::string(name);
  };
  // An earlier export's files (replaced with `overwrite`, else refused by the first write).
  DS_ASSIGN_OR_RETURN(std::vector<std::string> present, env->ListDir(out_dir));
  for (const std::string& f : present) {
    const bool ours = f == "model.safetensors" || f == "model.safetensors.index.json" ||
                      (f.starts_with("model-") && f.ends_with(".safetensors") &&
                       f.find("-of-") != std::string::npos);
    if (!ours) continue;
    if (!options.overwrite) {
      return Status::FailedPrecondition(io::JoinPath(out_dir, f) +
                                        " exists (an earlier export); pass --force to replace it");
    }
    DS_RETURN_IF_ERROR(env->RemoveFile(io::JoinPath(out_dir, f)));
  }
  ShardedExport out;
  nlohmann::json weight_map = nlohmann::json::object();
  auto remove_written = [&] {
    for (const ExportReport& r : out.files) (void)env->RemoveFile(r.path);
  };
  for (size_t k = 0; k < shards.size(); ++k) {
    ExportOptions o = options;
    o.only = shards[k];
    if (options.progress) {  // the bar counts toward every file's bytes, not this file's
      o.progress = [&options, total](uint64_t n, uint64_t) { options.progress(n, total); };
    }
    Result<ExportReport> r =
        ExportSafetensors(env, checkpoint_dir, io::JoinPath(out_dir, file_name(k)), o);
    if (!r.ok()) {
      remove_written();
      return r.status();
    }
    out.total_bytes += r->selection.data_bytes;
    for (const std::string& name : shards[k]) weight_map[name] = file_name(k);
    out.files.push_back(std::move(*r));
  }
  if (shards.size() > 1) {
    const nlohmann::json j = {{"metadata", {{"total_size", out.total_bytes}}},
                              {"weight_map", weight_map}};
    Status st = env->WriteFileSynced(index, j.dump(2) + "\n");
    if (!st.ok()) {
      remove_written();
      return st.WithContext("writing " + index);
    }
    out.index = index;
  }
  return out;
}

}  // namespace ds::ckpt
