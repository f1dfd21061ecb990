#include "ckpt/reshard.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <span>

#include "ckpt/commit.h"
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

// One chunk of the output: which rank's file, and its plan.
struct TargetChunk {
  uint32_t rank = 0;
  uint64_t raw_len = 0;  // bytes
  uint8_t elem_size = 1;
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

// ----------------------------------------------------------------------------------------------
// Reshard's six phases, in order; each takes what the earlier ones made.

// Phase 1: the source, and the slices each target rank owns of it.
struct Source {
  std::unique_ptr<CheckpointReader> reader;
  std::vector<std::vector<WantedSlice>> layout;  // per target rank (LayoutSlices)
  std::vector<fmt::BlobMeta> blobs;              // the target's (TargetBlobs)
};

Result<Source> OpenSource(io::Env* env, const std::string& src, const ReshardOptions& o) {
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
  Source s;
  DS_ASSIGN_OR_RETURN(s.reader, CheckpointReader::Open(env, src, ro));
  DS_ASSIGN_OR_RETURN(s.layout, LayoutSlices(s.reader->manifest(), o.layout));
  DS_ASSIGN_OR_RETURN(s.blobs, TargetBlobs(s.reader->manifest()));
  return s;
}

// Phase 2: where the result goes, in which codec, and that there is room for it.
struct Destination {
  std::string save_dir;
  std::string tag;
  fmt::Codec codec = fmt::Codec::kRaw;
  uint64_t raw_total = 0;  // bytes: the source's chunks decoded
};

Result<Destination> ChooseDestination(io::Env* env, const std::string& src, const fmt::Manifest& m,
                                      const ReshardOptions& o) {
  const TargetLayout& l = o.layout;
  Destination d;
  d.save_dir = io::DirName(src);
  if (o.out.empty()) {
    d.tag = m.info.tag + "-w" + std::to_string(l.world_size) + "s" + std::to_string(l.zero_stage) +
            (l.tp_degree > 1 ? "t" + std::to_string(l.tp_degree) : "");
  } else {
    d.save_dir = io::DirName(o.out);
    d.tag = io::BaseName(o.out);
    DS_ASSIGN_OR_RETURN(bool exists, env->Exists(o.out));
    if (exists) {
      return Status::FailedPrecondition(o.out +
                                        " already exists; choose another --out (nothing "
                                        "committed is ever overwritten)");
    }
  }
  DS_RETURN_IF_ERROR(ValidateTag(d.tag)) << "--out";
  d.codec = o.codec.value_or(MostCommonCodec(m));
  uint64_t stored_total = 0;  // bytes
  for (const fmt::ChunkMeta& c : m.chunks) {
    d.raw_total += c.raw_len;
    stored_total += c.stored_len;
  }
  DS_RETURN_IF_ERROR(env->CreateDirsDurably(d.save_dir));
  DS_ASSIGN_OR_RETURN(io::SpaceInfo space, env->StatFs(d.save_dir));
  const uint64_t need =
      (d.codec == fmt::Codec::kRaw ? d.raw_total : stored_total) * 21 / 20 + (64 << 20);
  if (space.available_bytes < need) {
    return Status::NoSpace("resharding " + src + " needs about " + io::FormatBytes(need) + " in " +
                           d.save_dir + " but only " + io::FormatBytes(space.available_bytes) +
                           " is free; free space or pass --out on another filesystem");
  }
  return d;
}

// Phase 3: every target chunk, the source bytes each of its parts needs, and the batches the
// chunks are gathered in. Immutable once made.
struct CopyPlan {
  std::vector<TargetChunk> targets;  // rank by rank, each rank's in its writer's order
  std::vector<size_t> first_target;  // per rank: the index of its first chunk in `targets`
  std::vector<std::vector<fmt::PiecePlacement>> placements;  // per rank, per slice of its layout
  std::vector<PartTarget> request_target;                    // per request of `load`
  LoadPlan load;
  uint64_t batch_budget = 0;     // bytes of target chunks gathered at once
  std::vector<size_t> batch_of;  // per target chunk
  std::vector<std::map<uint64_t, std::vector<size_t>>> copies;  // batch -> chunk -> copies
  std::map<uint64_t, size_t> last_batch;  // source chunk -> the last batch that needs it
};

// Plan every target chunk, and the source bytes each of its parts needs.
Status PlanTargetChunks(const fmt::Manifest& m, const std::vector<std::vector<WantedSlice>>& layout,
                        uint64_t chunk_bytes, CopyPlan* p) {
  const uint32_t world_size = static_cast<uint32_t>(layout.size());
  p->placements.resize(world_size);
  p->first_target.resize(world_size);
  std::vector<WantedSlice> requests;
  for (uint32_t r = 0; r < world_size; ++r) {
    std::vector<fmt::PieceSpec> pieces;
    for (const WantedSlice& w : layout[r]) {
      const auto es = static_cast<uint8_t>(fmt::DTypeSize(m.tensors[m.FindTensor(w.tensor)].dtype));
      pieces.push_back({(w.flat_end - w.flat_begin) * es, es});
    }
    std::vector<fmt::ChunkPlan> plans = fmt::PlanChunks(pieces, chunk_bytes, &p->placements[r]);
    p->first_target[r] = p->targets.size();
    for (const fmt::ChunkPlan& plan : plans) {
      uint64_t at = 0;
      for (const fmt::PiecePart& part : plan.parts) {
        const WantedSlice& w = layout[r][part.piece];
        const uint64_t es = pieces[part.piece].elem_size;
        requests.push_back({w.tensor, w.box_offset, w.box_length, w.flat_begin + part.begin / es,
                            w.flat_begin + part.end / es});
        p->request_target.push_back({p->targets.size(), at});
        at += part.end - part.begin;
      }
      p->targets.push_back({r, plan.raw_len, plan.elem_size});
    }
  }
  DS_ASSIGN_OR_RETURN(p->load, MakeLoadPlan(m, requests));
  return Status::OK();
}

// Batches of consecutive target chunks that fit the budget; per source chunk, the copies it
// feeds and the last batch that needs it.
void PlanBatches(uint64_t batch_budget, CopyPlan* p) {
  p->batch_budget = batch_budget;
  p->batch_of.resize(p->targets.size());
  size_t batches = 0;
  for (size_t t = 0, used = 0; t < p->targets.size(); ++t) {
    const uint64_t cap = fmt::AlignUp(p->targets[t].raw_len, fmt::kChunkAlignment);
    if (used > 0 && used + cap > batch_budget) {
      ++batches;
      used = 0;
    }
    p->batch_of[t] = batches;
    used += cap;
  }
  if (!p->targets.empty()) ++batches;
  p->copies.resize(batches);
  for (size_t i = 0; i < p->load.copies.size(); ++i) {
    const PlannedCopy& c = p->load.copies[i];
    const size_t b = p->batch_of[p->request_target[c.request].chunk];
    p->copies[b][c.chunk].push_back(i);
    p->last_batch[c.chunk] = std::max(p->last_batch[c.chunk], b);
  }
}

Result<CopyPlan> PlanCopies(const fmt::Manifest& m, const Source& s, const ReshardOptions& o) {
  CopyPlan p;
  DS_RETURN_IF_ERROR(PlanTargetChunks(m, s.layout, o.chunk_bytes, &p));
  PlanBatches(o.memory_bytes * 3 / 8, &p);
  return p;
}

// Phase 4: one shard writer per target rank, in a temp dir that gc can tell is live (its writer
// lock is held until the rename). Until `committed`, destroying this removes the temp dir, first
// thing, while the writers still hold their files.
struct Output {
  explicit Output(io::Env* e) : env(e) {}
  ~Output() {
    if (!temp.empty() && !committed) (void)env->RemoveAll(temp);
  }
  Output(const Output&) = delete;
  Output& operator=(const Output&) = delete;

  io::Env* env;
  std::string temp;  // empty until it is created
  bool committed = false;
  // Destroyed bottom up: the writers before the pools, threads and queue they use.
  std::unique_ptr<io::FileLock> lock;
  std::unique_ptr<io::AsyncIo> aio;
  std::unique_ptr<io::ThreadPool> encoders;
  std::unique_ptr<io::BufferPool> encoded;   // encoded chunks waiting for their write
  std::unique_ptr<io::BufferPool> gathered;  // target chunks of the batch being gathered
  std::vector<std::unique_ptr<fmt::ShardWriter>> writers;  // per target rank
};

Status OpenOutput(io::Env* env, const Destination& d, const CopyPlan& p, const ReshardOptions& o,
                  Output* out) {
  const std::string temp = io::JoinPath(d.save_dir, kTempPrefix + d.tag + "-" + env->NewNonce());
  DS_RETURN_IF_ERROR(env->CreateDir(temp));
  out->temp = temp;
  DS_ASSIGN_OR_RETURN(out->lock, env->TryLockFile(io::JoinPath(temp, ".writer-0.lock")));
  io::AsyncIoOptions aio_opts;
  aio_opts.backend = o.io_backend;
  aio_opts.env = env;
  DS_ASSIGN_OR_RETURN(out->aio, io::OpenAsyncIo(aio_opts));
  out->encoders =
      std::make_unique<io::ThreadPool>(o.threads == 0 ? io::HardwareThreads() : o.threads);
  const uint64_t stored_block =
      fmt::AlignUp(fmt::ChunkEncoder::MaxStoredLen(o.chunk_bytes), fmt::kChunkAlignment);
  out->encoded = std::make_unique<io::BufferPool>(
      io::BufferPoolOptions{std::max(2 * stored_block, o.memory_bytes / 8), io::kDirectAlignment});
  out->gathered = std::make_unique<io::BufferPool>(
      io::BufferPoolOptions{p.batch_budget + o.chunk_bytes, io::kDirectAlignment});
  out->writers.resize(o.layout.world_size);
  for (uint32_t r = 0; r < o.layout.world_size; ++r) {
    fmt::ShardWriterOptions so;
    so.encode.codec = d.codec;
    so.io = out->aio.get();
    so.encoders = out->encoders.get();
    so.staging = out->encoded.get();
    so.writer_version = "dstrain reshard";
    DS_ASSIGN_OR_RETURN(
        out->writers[r],
        fmt::ShardWriter::Create(env, io::JoinPath(temp, fmt::ShardFileName(r)), r, so));
  }
  return Status::OK();
}

// Phase 5: the target chunks gathered batch by batch and handed to their writers, then each
// rank's record of what its shard holds.
struct WrittenShards {
  std::vector<RankRecord> records;  // per target rank
  uint64_t source_chunks_read = 0;
};

// Gathers batch `b`, target chunks [t_begin, t_begin + buffers.size()), into `buffers`: from the
// cache what it kept, the rest read from the source (each read chunk is kept while a later
// batch needs it).
Status GatherBatch(size_t b, size_t t_begin, std::span<const std::shared_ptr<io::Buffer>> buffers,
                   const Source& s, const CopyPlan& p, SourceCache* cache, ReadStats* rs) {
  auto apply = [&](uint64_t c, std::span<const std::byte> raw) -> Status {
    for (size_t i : p.copies[b].at(c)) {
      const PlannedCopy& copy = p.load.copies[i];
      const PartTarget& pt = p.request_target[copy.request];
      std::memcpy(buffers[pt.chunk - t_begin]->data() + pt.offset + copy.dst_offset,
                  raw.data() + copy.chunk_offset, copy.bytes);
    }
    if (p.last_batch.at(c) > b) cache->MaybeKeep(c, raw);
    return Status::OK();
  };
  std::vector<uint64_t> to_read;
  for (const auto& [c, _] : p.copies[b]) {
    if (auto kept = cache->Find(c)) {
      DS_RETURN_IF_ERROR(apply(c, *kept));
    } else {
      to_read.push_back(c);
    }
  }
  DS_RETURN_IF_ERROR(s.reader->ForEachChunk(to_read, apply, rs));
  for (const auto& [c, _] : p.copies[b]) {
    if (p.last_batch.at(c) == b) cache->Drop(c);
  }
  return Status::OK();
}

// Rank r's record: its tensors and slices (placed as the plan placed them) and its chunks as
// its writer wrote them.
RankRecord RecordFor(uint32_t r, const fmt::Manifest& m, const Source& s, const CopyPlan& p,
                     const std::vector<uint64_t>& writer_index, const fmt::ShardSummary& sum) {
  RankRecord rec;
  rec.rank = r;
  rec.file = {fmt::ShardFileName(r), sum.file_size, r};
  std::map<std::string, uint32_t> local;
  for (size_t i = 0; i < s.layout[r].size(); ++i) {
    const WantedSlice& w = s.layout[r][i];
    const fmt::TensorMeta& tm = m.tensors[m.FindTensor(w.tensor)];
    auto [it, fresh] = local.emplace(w.tensor, static_cast<uint32_t>(rec.tensors.size()));
    if (fresh) rec.tensors.push_back(tm);
    rec.slices.push_back({it->second, r, w.box_offset, w.box_length, w.flat_begin, w.flat_end,
                          p.placements[r][i].first_chunk, p.placements[r][i].offset_in_chunk});
  }
  // The slices count chunks in plan order; the writer numbered them as they were added.
  rec.chunks.resize(sum.chunks.size());
  for (size_t k = 0; k < sum.chunks.size(); ++k) {
    const fmt::ChunkRecord& c = sum.chunks[writer_index[p.first_target[r] + k]];
    rec.chunks[k] = {0,       c.offset,    c.stored_len, c.raw_len,
                     c.codec, c.elem_size, c.raw_xxh64,  c.stored_xxh64};
  }
  return rec;
}

Result<WrittenShards> WriteShards(const std::string& src, const fmt::Manifest& m, const Source& s,
                                  const CopyPlan& p, const ReshardOptions& o, Output* out) {
  SourceCache cache(o.memory_bytes / 8);
  ReadStats rs;
  std::vector<uint64_t> writer_index(p.targets.size());  // per target chunk: its writer's number
  Status st;
  for (size_t b = 0, t = 0; b < p.copies.size() && st.ok(); ++b) {
    const size_t t_begin = t;
    std::vector<std::shared_ptr<io::Buffer>> buffers;  // per target chunk of the batch
    for (; t < p.targets.size() && p.batch_of[t] == b; ++t) {
      // Waits for the previous batch's chunks to be encoded and written.
      DS_ASSIGN_OR_RETURN(io::Buffer buf,
                          out->gathered->Acquire(p.targets[t].raw_len, 600'000'000));
      buffers.push_back(std::make_shared<io::Buffer>(std::move(buf)));
    }
    st = GatherBatch(b, t_begin, buffers, s, p, &cache, &rs);
    if (!st.ok()) break;
    // The batch is complete: hand its chunks to their writers (the gathered buffers return to
    // the pool as they are written).
    for (size_t k = t_begin; k < t; ++k) {
      const TargetChunk& tc = p.targets[k];
      std::shared_ptr<io::Buffer> buf = std::move(buffers[k - t_begin]);
      writer_index[k] = out->writers[tc.rank]->AddChunkInPlace(
          {buf->data(), buf->capacity()}, tc.raw_len, tc.elem_size, [buf] { buf->Release(); });
      if (o.progress) o.progress(tc.raw_len);
    }
  }
  WrittenShards w;
  w.records.resize(o.layout.world_size);
  for (uint32_t r = 0; r < o.layout.world_size; ++r) {
    Result<fmt::ShardSummary> sum = out->writers[r]->Finish();
    if (st.ok() && !sum.ok()) st = sum.status();
    if (st.ok()) w.records[r] = RecordFor(r, m, s, p, writer_index, *sum);
  }
  if (!st.ok()) return st.WithContext("resharding " + src);
  w.source_chunks_read = rs.chunks_read;
  return w;
}

// Phase 6: the manifest of the new layout, and the commit (the temp dir renamed to the tag).
Result<CommitResult> CommitResharded(io::Env* env, const fmt::Manifest& m, const Destination& d,
                                     std::vector<fmt::BlobMeta> blobs,
                                     const std::vector<RankRecord>& records,
                                     const ReshardOptions& o, Output* out) {
  const TargetLayout& l = o.layout;
  fmt::Manifest target;
  target.info = m.info;
  target.info.world_size = l.world_size;
  target.info.zero_stage = l.zero_stage;
  target.info.tp_degree = l.tp_degree;
  // Every target rank holds every stage's tensors: a pipeline-parallel source reshards to PP 1.
  target.info.pp_degree = 1;
  target.info.partition_alignment = l.alignment;
  target.info.created_micros = env->WallTimeMicros();
  target.info.writer_version = "dstrain reshard";
  DS_RETURN_IF_ERROR(MergeRankRecords(records, &target));
  target.blobs = std::move(blobs);
  // The writer lock is held until the rename: gc must see this temp dir as live until then.
  CommitOptions co;
  co.update_latest = o.set_latest;
  co.writer_locks = 1;
  Status error;
  CommitResult c =
      CommitCheckpointDir(env, d.save_dir, out->temp, d.tag, std::move(target), co, &error);
  out->committed = c.committed;
  out->lock.reset();
  DS_RETURN_IF_ERROR(error);
  DS_RETURN_IF_ERROR(c.after);
  return c;
}

}  // namespace

Result<ReshardResult> Reshard(io::Env* env, const std::string& src, const ReshardOptions& o) {
  const uint64_t t0 = env->NowMicros();
  DS_ASSIGN_OR_RETURN(Source source, OpenSource(env, src, o));
  const fmt::Manifest& m = source.reader->manifest();
  DS_ASSIGN_OR_RETURN(Destination dest, ChooseDestination(env, src, m, o));
  DS_ASSIGN_OR_RETURN(CopyPlan plan, PlanCopies(m, source, o));
  Output out(env);  // from here until the commit, a failure removes the temp dir
  DS_RETURN_IF_ERROR(OpenOutput(env, dest, plan, o, &out));
  DS_ASSIGN_OR_RETURN(WrittenShards shards, WriteShards(src, m, source, plan, o, &out));
  DS_ASSIGN_OR_RETURN(CommitResult c, CommitResharded(env, m, dest, std::move(source.blobs),
                                                      shards.records, o, &out));
  ReshardResult res;
  res.tag = c.tag;
  res.path = c.path;
  res.source_chunks_read = shards.source_chunks_read;
  res.source_chunks = m.chunks.size();
  res.logical_bytes = dest.raw_total;
  for (const RankRecord& r : shards.records) {
    for (const fmt::ChunkMeta& ch : r.chunks) res.stored_bytes += ch.stored_len;
  }
  res.seconds = static_cast<double>(env->NowMicros() - t0) / 1e6;
  return res;
}

}  // namespace ds::ckpt
