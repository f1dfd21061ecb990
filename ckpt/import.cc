// Import: safetensors file -> a committed checkpoint laid out for any world size and ZeRO stage,
// streaming (ckpt/export.h). Every rank's writer pulls its slices from the file through fill
// callbacks, so at most the writers' staging memory holds tensor bytes at any time.
#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "ckpt/catalog.h"
#include "ckpt/export.h"
#include "ckpt/internal/free_space.h"
#include "ckpt/kv_store.h"
#include "ckpt/partition.h"
#include "formats/dtype_convert.h"
#include "formats/safetensors.h"
#include "io/thread_pool.h"

namespace ds::ckpt {
namespace {

constexpr std::string_view kOptim = "optim/";
// Source bytes each rank's thread reads and converts at a time.
constexpr uint64_t kReadBlockBytes = uint64_t{1} << 20;
constexpr uint32_t kMaxImportWorld = 256;  // writers (threads, shard files) one import runs

// One tensor of the checkpoint and the file tensor it comes from.
struct ImportItem {
  size_t file = 0;    // which of the import's files
  size_t source = 0;  // index into that file's SafetensorsReader::tensors()
  std::string name;   // in the checkpoint
  fmt::DType source_dtype = fmt::DType::kF32;
  fmt::DType dtype = fmt::DType::kF32;
  std::vector<int64_t> shape;
  uint64_t numel = 0;
};

// Tensors partitioned together (one flat buffer at stages 0-2): those whose names share the part
// before the last '/', in file order, as the engine groups master weights and each optimizer
// moment.
struct Group {
  std::vector<size_t> items;
  std::vector<uint64_t> numels;
};

using Files = std::vector<std::unique_ptr<fmt::SafetensorsReader>>;

std::vector<ImportItem> NameItems(const Files& files, std::vector<std::string>* notes) {
  std::vector<ImportItem> items;
  uint64_t narrowed = 0, as_is = 0;
  for (size_t f = 0; f < files.size(); ++f) {
    const fmt::SafetensorsReader& file = *files[f];
    for (size_t i = 0; i < file.tensors().size(); ++i) {
      const fmt::SafetensorsTensor& t = file.tensors()[i];
      ImportItem it{f, i, t.name, t.dtype, t.dtype, t.shape, *fmt::NumElements(t.shape)};
      if (fmt::DTypeIsFloat(t.dtype)) {
        it.dtype = fmt::DType::kF32;
        if (t.name.rfind(kOptim, 0) != 0) it.name = "master/" + t.name;
        if (t.dtype == fmt::DType::kF64) narrowed++;
      } else {
        it.name = "model/" + t.name;
        as_is++;
      }
      items.push_back(std::move(it));
    }
  }
  if (narrowed > 0) {
    notes->push_back(std::to_string(narrowed) + " float64 tensor(s) rounded to float32");
  }
  if (as_is > 0) {
    notes->push_back(std::to_string(as_is) +
                     " non-floating tensor(s) imported unchanged under model/ (buffers such as "
                     "position ids; they are not trainable weights)");
  }
  return items;
}

std::vector<Group> GroupItems(const std::vector<ImportItem>& items) {
  std::vector<Group> groups;
  std::map<std::string, size_t> index;  // group name -> position in `groups`
  for (size_t i = 0; i < items.size(); ++i) {
    auto [it, fresh] = index.emplace(std::string(PartitionGroup(items[i].name)), groups.size());
    if (fresh) groups.emplace_back();
    groups[it->second].items.push_back(i);
    groups[it->second].numels.push_back(items[i].numel);
  }
  return groups;
}

// Copies bytes [offset, offset + dst.size()) of elements [begin, ...) of `it`, converted to
// its checkpoint dtype, into `dst`. The range may start or end inside an element (a chunk
// boundary): whole elements are converted and the requested bytes copied out.
Status ReadConverted(const Files& files, const ImportItem& it, uint64_t begin, uint64_t offset,
                     std::span<std::byte> dst) {
  const fmt::SafetensorsReader& file = *files[it.file];
  const uint64_t in_size = fmt::DTypeSize(it.source_dtype), out_size = fmt::DTypeSize(it.dtype);
  if (it.source_dtype == it.dtype) {
    return file.ReadTensorData(it.source, begin * in_size + offset, dst);
  }
  thread_local std::vector<std::byte> in, out;
  const uint64_t per_block = std::max<uint64_t>(1, kReadBlockBytes / in_size);  // elements
  uint64_t pos = offset;  // output bytes from element `begin`
  const uint64_t end = offset + dst.size();
  while (pos < end) {
    const uint64_t e0 = pos / out_size;
    const uint64_t e1 = std::min((end + out_size - 1) / out_size, e0 + per_block);
    in.resize((e1 - e0) * in_size);
    out.resize((e1 - e0) * out_size);
    DS_RETURN_IF_ERROR(file.ReadTensorData(it.source, (begin + e0) * in_size, in));
    DS_RETURN_IF_ERROR(fmt::ConvertElements(it.source_dtype, in, it.dtype, out));
    const uint64_t take = std::min(end, e1 * out_size) - pos;
    std::copy_n(out.begin() + static_cast<ptrdiff_t>(pos - e0 * out_size), take,
                dst.begin() + static_cast<ptrdiff_t>(pos - offset));
    pos += take;
  }
  return Status::OK();
}

struct RankOutcome {
  Status own;   // Begin, AddSlice, Snapshot: this rank's own failure
  Status wait;  // the commit, as this rank's handle reports it
  SaveStats stats;
};

// One rank of the import: its slices of every group (`ranges[g]`: group g's ranges of this
// rank), filled from the file.
RankOutcome SaveRank(io::Env* env, const Files& files, const std::vector<std::string>& paths,
                     const std::vector<ImportItem>& items, const std::vector<Group>& groups,
                     const std::vector<std::vector<FlatRange>>& ranges, const SaveRequest& request,
                     const WriterOptions& wo, const std::function<void(uint64_t)>& progress,
                     const std::map<std::string, std::string>* blobs) {
  RankOutcome out;
  Result<std::unique_ptr<CheckpointWriter>> w = CheckpointWriter::Create(env, wo);
  if (!w.ok()) {
    out.own = w.status();
    return out;
  }
  // Every slice was planned and checked before the ranks started, so AddSlice cannot refuse one
  // (a refusal after Begin would leave the other ranks waiting for this one).
  Status s = (*w)->Begin(request);
  for (size_t g = 0; s.ok() && g < groups.size(); ++g) {
    for (size_t k = 0; s.ok() && k < groups[g].items.size(); ++k) {
      // An empty tensor owns no range; rank 0 records it so that it exists in the checkpoint.
      const ImportItem& it = items[groups[g].items[k]];
      if (it.numel == 0 && wo.rank == 0) {
        s = (*w)->AddSlice({it.name, it.dtype, it.shape, {}, {}, 0, 0, {}});
      }
    }
    for (size_t r = 0; s.ok() && r < ranges[g].size(); ++r) {
      const FlatRange& fr = ranges[g][r];
      const ImportItem& it = items[groups[g].items[fr.tensor]];
      SaveSlice sl{it.name, it.dtype, it.shape, {}, {}, fr.begin, fr.end, {}};
      sl.source.fill = [&files, &it, &progress, begin = fr.begin](
                           uint64_t offset, std::span<std::byte> dst) -> Status {
        DS_RETURN_IF_ERROR(ReadConverted(files, it, begin, offset, dst));
        if (progress) progress(dst.size());
        return Status::OK();
      };
      s = (*w)->AddSlice(std::move(sl));
    }
  }
  if (s.ok() && wo.rank == 0) s = (*w)->AddBlob("step", std::to_string(request.step));
  if (s.ok() && wo.rank == 0) {
    nlohmann::json meta = nlohmann::json::object();
    for (const auto& [k, v] : files.front()->metadata()) meta[k] = v;
    nlohmann::json imported = {{"file", io::BaseName(paths.front())}, {"metadata", meta}};
    if (paths.size() > 1) {  // a sharded folder: every file, in order
      nlohmann::json names = nlohmann::json::array();
      for (const std::string& p : paths) names.push_back(io::BaseName(p));
      imported["files"] = names;
    }
    s = (*w)->AddBlob("import", imported.dump());
  }
  for (const auto& [name, data] : *blobs) {
    if (s.ok() && wo.rank == 0) s = (*w)->AddBlob(name, data);
  }
  if (s.ok()) s = (*w)->Snapshot().status();
  out.own = s;
  if (!s.ok()) return out;  // the writer told the other ranks and removes the temp directory
  std::shared_ptr<SaveHandle> h = (*w)->Commit();
  out.wait = h->Wait();
  out.stats = h->stats();
  return out;
}

}  // namespace

Result<ImportReport> ImportSafetensors(io::Env* env, const std::string& path,
                                       const std::string& save_dir, const ImportOptions& options) {
  return ImportSafetensorsFiles(env, {path}, save_dir, options);
}

Result<ImportReport> ImportSafetensorsFiles(io::Env* env, const std::vector<std::string>& paths,
                                            const std::string& save_dir,
                                            const ImportOptions& options) {
  if (paths.empty()) return Status::InvalidArgument("import: no safetensors file given");
  const std::string& path = paths.front();  // for messages: the first (or only) file
  const uint64_t t0 = env->NowMicros();
  const PartitionSpec spec{options.world_size, options.zero_stage, 1};
  DS_RETURN_IF_ERROR(ValidatePartitionSpec(spec));
  if (options.world_size > kMaxImportWorld) {
    return Status::InvalidArgument(
        "import writes every rank's shard from a thread of this process: world size " +
        std::to_string(options.world_size) + " is more than " + std::to_string(kMaxImportWorld) +
        "; import at a smaller world size (any world size loads any checkpoint)");
  }
  if (options.step < 0) {
    return Status::InvalidArgument("step " + std::to_string(options.step) + " is negative");
  }
  ImportReport report;
  report.tag = options.tag.empty() ? TagForStep(options.step) : options.tag;
  DS_RETURN_IF_ERROR(ValidateTag(report.tag));
  Files files;
  std::set<std::string> names;
  for (const std::string& p : paths) {
    DS_ASSIGN_OR_RETURN(std::unique_ptr<fmt::SafetensorsReader> file,
                        fmt::SafetensorsReader::Open(env, p));
    for (const fmt::SafetensorsTensor& t : file->tensors()) {
      if (!names.insert(t.name).second) {
        return Status::InvalidArgument(p + ": tensor " + t.name +
                                       " is also in an earlier file of the import; each tensor "
                                       "must be in one file");
      }
    }
    files.push_back(std::move(file));
  }
  if (names.empty()) {
    return Status::InvalidArgument(path + " holds no tensors; there is nothing to import");
  }
  const std::string target = io::JoinPath(save_dir, report.tag);
  DS_ASSIGN_OR_RETURN(bool exists, env->Exists(target));
  if (exists) {
    return Status::FailedPrecondition(
        target + " already exists (a checkpoint is never replaced); choose another --tag or " +
        "--step, or another --out");
  }
  const std::vector<ImportItem> items = NameItems(files, &report.notes);
  const std::vector<Group> groups = GroupItems(items);
  for (const ImportItem& it : items) report.bytes += it.numel * fmt::DTypeSize(it.dtype);
  report.tensors = items.size();
  // The stored size is at most the raw size plus each chunk's padding to 4 KiB.
  const uint64_t chunk = std::max<uint64_t>(options.writer.chunk_bytes, 4096);
  DS_RETURN_IF_ERROR(internal::CheckFreeSpace(
      env, save_dir, report.bytes + (report.bytes / chunk + items.size() + 2) * 4096 + (1 << 20),
      "importing " + path));

  WriterOptions base = options.writer;
  base.save_dir = save_dir;
  base.world_size = options.world_size;
  base.staging_bytes = std::max<uint64_t>(2 * chunk, options.memory_bytes / options.world_size);
  if (base.encode_threads == 0) {
    base.encode_threads =
        std::max<unsigned>(1, static_cast<unsigned>(io::HardwareThreads()) / options.world_size);
  }
  InProcessStore store;
  base.store = &store;
  SaveRequest request;
  request.tag = report.tag;
  request.step = options.step;
  request.zero_stage = options.zero_stage;

  // ranges[rank][group]: planned here, so that a bad layout fails before any rank starts.
  std::vector<std::vector<std::vector<FlatRange>>> ranges(options.world_size);
  for (uint32_t rank = 0; rank < options.world_size; ++rank) {
    for (const Group& g : groups) {
      DS_ASSIGN_OR_RETURN(std::vector<FlatRange> r, PartitionForRank(g.numels, spec, rank));
      ranges[rank].push_back(std::move(r));
    }
  }
  const std::function<void(uint64_t)> progress = [&](uint64_t n) {
    if (options.progress) options.progress(n, report.bytes);
  };
  std::vector<RankOutcome> outcomes(options.world_size);
  std::vector<std::thread> threads;
  for (uint32_t rank = 0; rank < options.world_size; ++rank) {
    threads.emplace_back([&, rank] {
      WriterOptions wo = base;
      wo.rank = rank;
      outcomes[rank] = SaveRank(env, files, paths, items, groups, ranges[rank], request, wo,
                                progress, &options.blobs);
    });
  }
  for (std::thread& t : threads) t.join();
  // A rank's own failure is the cause; the others only report that the save failed.
  for (const RankOutcome& o : outcomes) {
    if (!o.own.ok()) return o.own.WithContext("importing " + path);
  }
  for (const RankOutcome& o : outcomes) {
    if (!o.wait.ok()) return o.wait.WithContext("importing " + path);
  }
  report.path = outcomes[0].stats.path.empty() ? target : outcomes[0].stats.path;
  report.seconds = static_cast<double>(env->NowMicros() - t0) / 1e6;
  return report;
}

}  // namespace ds::ckpt
