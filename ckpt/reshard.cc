#include "ckpt/reshard.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>

#include "ckpt/commit.h"
#include "ckpt/partition.h"
#include "ckpt/rank_record.h"
#include "ckpt/reader.h"
#include "ckpt/tp_layout.h"
#include "formats/shard_file.h"
#include "io/async_io.h"
#include "io/buffer_pool.h"
#include "io/thread_pool.h"

namespace ds::ckpt {
namespace {

fmt::Codec MostCommonCodec(const fmt::Manifest& m) {
  std::map<fmt::Codec, uint64_t> bytes;
  for (const fmt::ChunkMeta& c : m.chunks) bytes[c.codec] += c.raw_len;
  fmt::Codec best = fmt::Codec::kByteGroupZstd;
  uint64_t most = 0;
  for (const auto& [codec, n] : bytes) {
    if (n > most && codec != fmt::Codec::kRaw) {  // raw also appears as compression's fallback
      best = codec;
      most = n;
    }
  }
  return most == 0 && !bytes.empty() ? fmt::Codec::kRaw : best;
}

// The source's blobs, plus the splits inferred from its boxes where it has no splits blob: a
// target at TP 1 has only whole boxes, and a later reshard must still cut the same way. A source
// saved at TP 1 without the blob gets none (an empty one would claim that nothing splits).
Result<std::vector<fmt::BlobMeta>> TargetBlobs(const fmt::Manifest& m) {
  std::vector<fmt::BlobMeta> blobs = m.blobs;
  if (m.FindBlob(kTpSplitsBlob) >= 0 || m.info.tp_degree == 1) return blobs;
  DS_ASSIGN_OR_RETURN(TpSplits splits, ReadTpSplits(m));
  blobs.push_back({kTpSplitsBlob, EncodeTpSplits(splits)});
  return blobs;
}

Status ValidateTarget(const fmt::Manifest& m, const TpSplits& splits, const TargetLayout& l) {
  if (l.tp_degree == 0 || l.world_size == 0 || l.world_size % l.tp_degree != 0) {
    return Status::InvalidArgument("tensor-parallel degree " + std::to_string(l.tp_degree) +
                                   " does not divide the world size " +
                                   std::to_string(l.world_size));
  }
  DS_RETURN_IF_ERROR(ValidatePartitionSpec({l.world_size, l.zero_stage, l.alignment}));
  // Without the blob, a checkpoint saved at TP 1 has only whole boxes: nothing says which
  // tensors a tensor-parallel run would split, nor how.
  if (l.tp_degree > 1 && m.info.tp_degree == 1 && m.FindBlob(kTpSplitsBlob) < 0) {
    return Status::InvalidArgument(
        "this checkpoint was saved without tensor parallelism and has no '" +
        std::string(kTpSplitsBlob) +
        "' blob, so it does not say which tensors split and along which dimension; resharding "
        "to tensor-parallel degree " +
        std::to_string(l.tp_degree) +
        " needs a checkpoint saved with TP > 1, or one saved by a dstrain that writes the blob "
        "(every checkpoint dstrain saves from now on carries it)");
  }
  for (const fmt::TensorMeta& t : m.tensors) {
    auto it = splits.find(t.name);
    if (it == splits.end()) continue;
    DS_RETURN_IF_ERROR(ValidateTpSplit(t.name, t.shape, it->second, l.tp_degree));
  }
  return Status::OK();
}

// The manifest's tensors by partition group, groups in order of first appearance.
std::vector<std::vector<uint32_t>> GroupsInOrder(const fmt::Manifest& m) {
  std::vector<std::vector<uint32_t>> groups;
  std::map<std::string, size_t> index;
  for (uint32_t t = 0; t < m.tensors.size(); ++t) {
    auto [it, fresh] = index.emplace(std::string(PartitionGroup(m.tensors[t].name)), groups.size());
    if (fresh) groups.emplace_back();
    groups[it->second].push_back(t);
  }
  return groups;
}

}  // namespace

Result<std::vector<std::vector<WantedSlice>>> LayoutSlices(const fmt::Manifest& m,
                                                           const TargetLayout& l) {
  DS_ASSIGN_OR_RETURN(TpSplits splits, ReadTpSplits(m));
  DS_RETURN_IF_ERROR(ValidateTarget(m, splits, l));
  std::vector<TpSplit> split(m.tensors.size());
  for (uint32_t t = 0; t < m.tensors.size(); ++t) {
    auto it = splits.find(m.tensors[t].name);
    if (it != splits.end()) split[t] = it->second;
  }
  const std::vector<std::vector<uint32_t>> groups = GroupsInOrder(m);
  const uint32_t tp = l.tp_degree, dp = l.world_size / tp;
  std::vector<std::vector<WantedSlice>> out(l.world_size);
  for (uint32_t rank = 0; rank < l.world_size; ++rank) {
    const uint32_t tp_rank = rank % tp, dp_rank = rank / tp;
    for (const std::vector<uint32_t>& members : groups) {
      // The data-parallel partition runs over the local tensors (this TP rank's boxes).
      std::vector<std::vector<TpBox>> boxes;
      std::vector<uint64_t> numels;
      for (uint32_t t : members) {
        boxes.push_back(TpBoxes(m.tensors[t].shape, split[t], tp, tp_rank));
        numels.push_back(*fmt::NumElements(TpLocalShape(m.tensors[t].shape, split[t], tp)));
      }
      DS_ASSIGN_OR_RETURN(std::vector<FlatRange> ranges,
                          PartitionForRank(numels, {dp, l.zero_stage, l.alignment}, dp_rank));
      for (const FlatRange& r : ranges) {
        const uint32_t t = members[r.tensor];
        if (split[t].dim < 0 && tp_rank != 0) continue;  // written by TP rank 0 only
        const std::vector<TpBox>& b = boxes[r.tensor];
        for (const TpBoxRange& br : TpLocalRange(b, r.begin, r.end)) {
          out[rank].push_back(
              {m.tensors[t].name, b[br.box].offset, b[br.box].length, br.flat_begin, br.flat_end});
        }
      }
    }
  }
  return out;
}

namespace {

// One chunk of the output: which rank's file, its plan, and where its bytes are gathered.
struct TargetChunk {
  uint32_t rank = 0;
  uint64_t raw_len = 0;
  uint8_t elem_size = 1;
  std::shared_ptr<io::Buffer> buffer;
  uint64_t writer_index = 0;  // the shard writer's number for it (writes land in any order)
};

// Where a planned request's bytes go: a target chunk and an offset in it.
struct PartTarget {
  size_t chunk;     // index into the target chunks
  uint64_t offset;  // bytes into that chunk
};

// Decoded source chunks that later batches still need, within a byte budget.
class SourceCache {
 public:
  explicit SourceCache(uint64_t budget) : budget_(budget) {}
  std::shared_ptr<const std::vector<std::byte>> Find(uint64_t c) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = chunks_.find(c);
    return it == chunks_.end() ? nullptr : it->second;
  }
  // Keeps a copy if it fits; a chunk that does not fit is read again when needed.
  void MaybeKeep(uint64_t c, std::span<const std::byte> raw) {
    std::lock_guard<std::mutex> lock(mu_);
    if (used_ + raw.size() > budget_ || chunks_.count(c)) return;
    chunks_[c] = std::make_shared<const std::vector<std::byte>>(raw.begin(), raw.end());
    used_ += raw.size();
  }
  void Drop(uint64_t c) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = chunks_.find(c);
    if (it == chunks_.end()) return;
    used_ -= it->second->size();
    chunks_.erase(it);
  }

 private:
  std::mutex mu_;
  uint64_t budget_;
  uint64_t used_ = 0;
  std::map<uint64_t, std::shared_ptr<const std::vector<std::byte>>> chunks_;
};

}  // namespace

Result<ReshardResult> Reshard(io::Env* env, const std::string& src, const ReshardOptions& o) {
  const uint64_t t0 = env->NowMicros();
  if (o.chunk_bytes < 4096 || o.chunk_bytes % 8 != 0 || o.chunk_bytes > fmt::kMaxChunkRawBytes) {
    return Status::InvalidArgument("chunk size must be a multiple of 8 between 4 KiB and 256 MiB");
  }
  if (o.memory_bytes < 16 * o.chunk_bytes) {
    return Status::InvalidArgument("--memory " + io::FormatBytes(o.memory_bytes) +
                                   " is too small: reshard needs at least 16 chunks (" +
                                   io::FormatBytes(16 * o.chunk_bytes) + ")");
  }
  // The memory budget: source chunks being read and decoded (1/4), the batch of target chunks
  // being gathered (3/8), decoded source chunks kept for later batches (1/8), encoded chunks
  // waiting for their write (1/8).
  ReaderOptions ro;
  ro.memory_bytes = o.memory_bytes / 4;
  ro.threads = o.threads;
  ro.io_backend = o.io_backend;
  DS_ASSIGN_OR_RETURN(auto reader, CheckpointReader::Open(env, src, ro));
  const fmt::Manifest& m = reader->manifest();
  const TargetLayout& l = o.layout;
  DS_ASSIGN_OR_RETURN(auto layout, LayoutSlices(m, l));
  DS_ASSIGN_OR_RETURN(std::vector<fmt::BlobMeta> blobs, TargetBlobs(m));

  // Where the result goes.
  std::string save_dir = io::DirName(src), tag;
  if (o.out.empty()) {
    tag = m.info.tag + "-w" + std::to_string(l.world_size) + "s" + std::to_string(l.zero_stage) +
          (l.tp_degree > 1 ? "t" + std::to_string(l.tp_degree) : "");
  } else {
    save_dir = io::DirName(o.out);
    tag = io::BaseName(o.out);
    DS_ASSIGN_OR_RETURN(bool exists, env->Exists(o.out));
    if (exists) {
      return Status::FailedPrecondition(o.out +
                                        " already exists; choose another --out (nothing "
                                        "committed is ever overwritten)");
    }
  }
  DS_RETURN_IF_ERROR(ValidateTag(tag)) << "--out";
  const fmt::Codec codec = o.codec.value_or(MostCommonCodec(m));
  uint64_t raw_total = 0, stored_total = 0;
  for (const fmt::ChunkMeta& c : m.chunks) {
    raw_total += c.raw_len;
    stored_total += c.stored_len;
  }
  DS_RETURN_IF_ERROR(env->CreateDirsDurably(save_dir));
  DS_ASSIGN_OR_RETURN(io::SpaceInfo space, env->StatFs(save_dir));
  const uint64_t need =
      (codec == fmt::Codec::kRaw ? raw_total : stored_total) * 21 / 20 + (64 << 20);
  if (space.available_bytes < need) {
    return Status::NoSpace("resharding " + src + " needs about " + io::FormatBytes(need) + " in " +
                           save_dir + " but only " + io::FormatBytes(space.available_bytes) +
                           " is free; free space or pass --out on another filesystem");
  }

  // Plan every target chunk, and the source bytes each of its parts needs.
  std::vector<TargetChunk> targets;
  std::vector<std::vector<fmt::PiecePlacement>> placements(l.world_size);
  std::vector<WantedSlice> requests;
  std::vector<PartTarget> request_target;
  std::vector<size_t> first_target(l.world_size);
  for (uint32_t r = 0; r < l.world_size; ++r) {
    std::vector<fmt::PieceSpec> pieces;
    for (const WantedSlice& w : layout[r]) {
      const auto es = static_cast<uint8_t>(fmt::DTypeSize(m.tensors[m.FindTensor(w.tensor)].dtype));
      pieces.push_back({(w.flat_end - w.flat_begin) * es, es});
    }
    std::vector<fmt::ChunkPlan> plans = fmt::PlanChunks(pieces, o.chunk_bytes, &placements[r]);
    first_target[r] = targets.size();
    for (const fmt::ChunkPlan& p : plans) {
      uint64_t at = 0;
      for (const fmt::PiecePart& part : p.parts) {
        const WantedSlice& w = layout[r][part.piece];
        const uint64_t es = pieces[part.piece].elem_size;
        requests.push_back({w.tensor, w.box_offset, w.box_length, w.flat_begin + part.begin / es,
                            w.flat_begin + part.end / es});
        request_target.push_back({targets.size(), at});
        at += part.end - part.begin;
      }
      targets.push_back({r, p.raw_len, p.elem_size, nullptr, 0});
    }
  }
  DS_ASSIGN_OR_RETURN(LoadPlan plan, MakeLoadPlan(m, requests));

  // Batches of consecutive target chunks that fit 3/8 of the memory; per source chunk, the
  // copies it feeds and the last batch that needs it.
  const uint64_t batch_budget = o.memory_bytes * 3 / 8;
  std::vector<size_t> batch_of(targets.size());
  size_t batches = 0;
  for (size_t t = 0, used = 0; t < targets.size(); ++t) {
    const uint64_t cap = fmt::AlignUp(targets[t].raw_len, fmt::kChunkAlignment);
    if (used > 0 && used + cap > batch_budget) {
      ++batches;
      used = 0;
    }
    batch_of[t] = batches;
    used += cap;
  }
  if (!targets.empty()) ++batches;
  std::vector<std::map<uint64_t, std::vector<size_t>>> copies(batches);  // batch -> chunk -> copies
  std::map<uint64_t, size_t> last_batch;
  for (size_t i = 0; i < plan.copies.size(); ++i) {
    const PlannedCopy& c = plan.copies[i];
    const size_t b = batch_of[request_target[c.request].chunk];
    copies[b][c.chunk].push_back(i);
    last_batch[c.chunk] = std::max(last_batch[c.chunk], b);
  }

  // Output: one shard writer per target rank, in a temp dir that gc can tell is live.
  const std::string temp = io::JoinPath(save_dir, kTempPrefix + tag + "-" + env->NewNonce());
  DS_RETURN_IF_ERROR(env->CreateDir(temp));
  bool committed = false;
  auto cleanup = [&](Status s) {
    if (!committed) (void)env->RemoveAll(temp);
    return s;
  };
  Result<std::unique_ptr<io::FileLock>> lock =
      env->TryLockFile(io::JoinPath(temp, ".writer-0.lock"));
  if (!lock.ok()) return cleanup(lock.status());
  io::AsyncIoOptions aio_opts;
  aio_opts.backend = o.io_backend;
  Result<std::unique_ptr<io::AsyncIo>> aio = io::OpenAsyncIo(aio_opts);
  if (!aio.ok()) return cleanup(aio.status());
  const unsigned threads = o.threads == 0 ? io::HardwareThreads() : o.threads;
  io::ThreadPool encoders(threads);
  const uint64_t stored_block =
      fmt::AlignUp(fmt::ChunkEncoder::MaxStoredLen(o.chunk_bytes), fmt::kChunkAlignment);
  io::BufferPool encoded({std::max(2 * stored_block, o.memory_bytes / 8), io::kDirectAlignment});
  io::BufferPool gathered({batch_budget + o.chunk_bytes, io::kDirectAlignment});
  std::vector<std::unique_ptr<fmt::ShardWriter>> writers(l.world_size);
  for (uint32_t r = 0; r < l.world_size; ++r) {
    fmt::ShardWriterOptions so;
    so.encode.codec = codec;
    so.io = aio->get();
    so.encoders = &encoders;
    so.staging = &encoded;
    so.writer_version = "dstrain reshard";
    Result<std::unique_ptr<fmt::ShardWriter>> w =
        fmt::ShardWriter::Create(env, io::JoinPath(temp, fmt::ShardFileName(r)), r, so);
    if (!w.ok()) return cleanup(w.status());
    writers[r] = std::move(*w);
  }

  SourceCache cache(o.memory_bytes / 8);
  ReadStats rs;
  Status st;
  for (size_t b = 0, t = 0; b < batches && st.ok(); ++b) {
    const size_t t_begin = t;
    for (; t < targets.size() && batch_of[t] == b; ++t) {
      // Waits for the previous batch's chunks to be encoded and written.
      Result<io::Buffer> buf = gathered.Acquire(targets[t].raw_len, 600'000'000);
      if (!buf.ok()) return cleanup(buf.status());
      targets[t].buffer = std::make_shared<io::Buffer>(std::move(*buf));
    }
    auto apply = [&](uint64_t c, std::span<const std::byte> raw) -> Status {
      for (size_t i : copies[b].at(c)) {
        const PlannedCopy& p = plan.copies[i];
        const PartTarget& pt = request_target[p.request];
        std::memcpy(targets[pt.chunk].buffer->data() + pt.offset + p.dst_offset,
                    raw.data() + p.chunk_offset, p.bytes);
      }
      if (last_batch.at(c) > b) cache.MaybeKeep(c, raw);
      return Status::OK();
    };
    std::vector<uint64_t> to_read;
    for (const auto& [c, _] : copies[b]) {
      if (auto kept = cache.Find(c)) {
        DS_RETURN_IF_ERROR(apply(c, *kept));
      } else {
        to_read.push_back(c);
      }
    }
    st = reader->ForEachChunk(to_read, apply, &rs);
    if (!st.ok()) break;
    for (const auto& [c, _] : copies[b]) {
      if (last_batch.at(c) == b) cache.Drop(c);
    }
    // The batch is complete: hand its chunks to their writers (the gathered buffers return to
    // the pool as they are written).
    for (size_t k = t_begin; k < t; ++k) {
      TargetChunk& tc = targets[k];
      std::shared_ptr<io::Buffer> buf = std::move(tc.buffer);
      tc.writer_index = writers[tc.rank]->AddChunkInPlace(
          {buf->data(), buf->capacity()}, tc.raw_len, tc.elem_size, [buf] { buf->Release(); });
      if (o.progress) o.progress(tc.raw_len);
    }
  }
  std::vector<RankRecord> records(l.world_size);
  for (uint32_t r = 0; r < l.world_size; ++r) {
    Result<fmt::ShardSummary> sum = writers[r]->Finish();
    if (st.ok() && !sum.ok()) st = sum.status();
    if (!st.ok()) continue;
    RankRecord& rec = records[r];
    rec.rank = r;
    rec.file = {fmt::ShardFileName(r), sum->file_size, r};
    std::map<std::string, uint32_t> local;
    for (size_t i = 0; i < layout[r].size(); ++i) {
      const WantedSlice& w = layout[r][i];
      const fmt::TensorMeta& tm = m.tensors[m.FindTensor(w.tensor)];
      auto [it, fresh] = local.emplace(w.tensor, static_cast<uint32_t>(rec.tensors.size()));
      if (fresh) rec.tensors.push_back(tm);
      rec.slices.push_back({it->second, r, w.box_offset, w.box_length, w.flat_begin, w.flat_end,
                            placements[r][i].first_chunk, placements[r][i].offset_in_chunk});
    }
    // The slices count chunks in plan order; the writer numbered them as they were added.
    rec.chunks.resize(sum->chunks.size());
    for (size_t k = 0; k < sum->chunks.size(); ++k) {
      const fmt::ChunkRecord& c = sum->chunks[targets[first_target[r] + k].writer_index];
      rec.chunks[k] = {0,       c.offset,    c.stored_len, c.raw_len,
                       c.codec, c.elem_size, c.raw_xxh64,  c.stored_xxh64};
    }
  }
  if (!st.ok()) return cleanup(st.WithContext("resharding " + src));
  fmt::Manifest out;
  out.info = m.info;
  out.info.world_size = l.world_size;
  out.info.zero_stage = l.zero_stage;
  out.info.tp_degree = l.tp_degree;
  // Every target rank holds every stage's tensors: a pipeline-parallel source reshards to PP 1.
  out.info.pp_degree = 1;
  out.info.partition_alignment = l.alignment;
  out.info.created_micros = env->WallTimeMicros();
  out.info.writer_version = "dstrain reshard";
  Status merged = MergeRankRecords(records, &out);
  if (!merged.ok()) return cleanup(merged);
  out.blobs = std::move(blobs);
  // The writer lock is held until the rename: gc must see this temp dir as live until then.
  CommitOptions co;
  co.update_latest = o.set_latest;
  co.writer_locks = 1;
  Status error;
  CommitResult c = CommitCheckpointDir(env, save_dir, temp, tag, std::move(out), co, &error);
  committed = c.committed;
  lock->reset();
  if (!error.ok()) return cleanup(error);
  if (!c.after.ok()) return c.after;
  ReshardResult res;
  res.tag = c.tag;
  res.path = c.path;
  res.source_chunks_read = rs.chunks_read;
  res.source_chunks = m.chunks.size();
  res.logical_bytes = raw_total;
  for (const RankRecord& r : records) {
    for (const fmt::ChunkMeta& ch : r.chunks) res.stored_bytes += ch.stored_len;
  }
  res.seconds = static_cast<double>(env->NowMicros() - t0) / 1e6;
  return res;
}

}  // namespace ds::ckpt
