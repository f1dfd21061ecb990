// CheckpointWriter: Begin, slices and blobs, and the snapshot (the part training waits for).
// The background part is in ckpt/commit.cc.
#include <cstring>
#include <nlohmann/json.hpp>

#include "ckpt/writer_impl.h"
#include "io/log.h"

namespace ds::ckpt {

// ---- SaveHandle

Status SaveHandle::Wait() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return done_; });
  return status_;
}

bool SaveHandle::Done() const {
  std::lock_guard<std::mutex> lock(mu_);
  return done_;
}

SaveStats SaveHandle::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void SaveHandle::Finish(Status s, SaveStats stats) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = std::move(s);
    stats_ = std::move(stats);
    done_ = true;
  }
  cv_.notify_all();
}

// ---- construction

namespace {

Status ValidateOptions(const WriterOptions& o) {
  if (o.save_dir.empty()) return Status::InvalidArgument("checkpoint save_dir is empty");
  if (o.world_size == 0 || o.rank >= o.world_size) {
    return Status::InvalidArgument("rank " + std::to_string(o.rank) + " of world size " +
                                   std::to_string(o.world_size) + " is not a valid rank");
  }
  if (o.world_size > 1 && o.store == nullptr) {
    return Status::InvalidArgument("a save with " + std::to_string(o.world_size) +
                                   " ranks needs a KeyValueStore to coordinate them");
  }
  if (o.chunk_bytes < 4096 || o.chunk_bytes > fmt::kMaxChunkRawBytes) {
    return Status::InvalidArgument("checkpoint chunk size " + io::FormatBytes(o.chunk_bytes) +
                                   " must be between 4 KiB and 256 MiB");
  }
  if (o.staging_bytes < 2 * o.chunk_bytes) {
    return Status::InvalidArgument("checkpoint staging memory " + io::FormatBytes(o.staging_bytes) +
                                   " must hold at least two chunks (" +
                                   io::FormatBytes(2 * o.chunk_bytes) + ")");
  }
  if (!o.best_metric.empty() && o.best_mode != "min" && o.best_mode != "max") {
    return Status::InvalidArgument("best mode '" + o.best_mode + "' must be min or max");
  }
  return Status::OK();
}

}  // namespace

CheckpointWriter::CheckpointWriter(std::unique_ptr<Impl> impl, WriterOptions options)
    : impl_(std::move(impl)), options_(std::move(options)) {}

CheckpointWriter::~CheckpointWriter() { impl_->WaitForBackground(); }

Result<std::unique_ptr<CheckpointWriter>> CheckpointWriter::Create(io::Env* env, WriterOptions o) {
  DS_RETURN_IF_ERROR(ValidateOptions(o));
  auto impl = std::make_unique<Impl>();
  impl->env = env;
  impl->options = o;
  if (o.store == nullptr) {
    impl->own_store = std::make_unique<InProcessStore>();
    impl->store = impl->own_store.get();
  } else {
    impl->store = o.store;
  }
  io::AsyncIoOptions aio;
  aio.backend = o.io_backend;
  aio.queue_depth = o.io_queue_depth;
  aio.env = env;
  DS_ASSIGN_OR_RETURN(impl->aio, io::OpenAsyncIo(aio));
  const unsigned threads = o.encode_threads == 0 ? io::HardwareThreads() : o.encode_threads;
  impl->encoders = std::make_unique<io::ThreadPool>(threads, o.encode_nice);
  impl->staging = std::make_unique<io::BufferPool>(io::BufferPoolOptions{
      o.staging_bytes, io::kDirectAlignment, o.on_staging_allocate, o.on_staging_release});
  const uint64_t stored_block =
      fmt::AlignUp(fmt::ChunkEncoder::MaxStoredLen(o.chunk_bytes), fmt::kChunkAlignment);
  impl->encoded = std::make_unique<io::BufferPool>(
      io::BufferPoolOptions{stored_block * (2 * threads + 8), io::kDirectAlignment});
  return std::unique_ptr<CheckpointWriter>(new CheckpointWriter(std::move(impl), std::move(o)));
}

bool CheckpointWriter::busy() const {
  return impl_->in_flight != nullptr && !impl_->in_flight->Done();
}

uint64_t CheckpointWriter::staging_peak_bytes() const {
  return impl_->staging->peak_in_use_bytes();
}

void CheckpointWriter::Impl::WaitForBackground() {
  if (background.joinable()) background.join();
}

// ---- Begin

Status CheckpointWriter::Begin(const SaveRequest& request) {
  Impl& w = *impl_;
  if (w.current != nullptr) {
    return Status::FailedPrecondition("Begin called twice without Commit (save " + w.current->tag +
                                      " is open)");
  }
  if (busy()) {
    if (options_.when_busy == WriterOptions::WhenBusy::kSkip) {
      return Status::FailedPrecondition("save of step " + std::to_string(request.step) +
                                        " skipped: the previous save is still writing");
    }
    io::LogInfo("save of step " + std::to_string(request.step) +
                " waits for the previous save to finish writing");
  }
  w.WaitForBackground();

  auto s = std::make_unique<SaveState>();
  s->begin_micros = w.env->NowMicros();
  s->request = request;
  s->tag = request.tag.empty() ? TagForStep(request.step) : request.tag;
  DS_RETURN_IF_ERROR(ValidateTag(s->tag));
  s->stats.tag = s->tag;
  const uint64_t seq = w.saves_of_tag[s->tag]++;
  s->key_prefix =
      "dstrain/ckpt/" + options_.run_id + "/" + s->tag + "/" + std::to_string(seq) + "/";

  Status st = StartSave(*s);
  if (!st.ok()) {
    // Tell the other ranks at once rather than letting them time out.
    if (options_.rank == 0) {
      (void)w.store->Set(s->key_prefix + "tmpdir", "");
      nlohmann::json out = {{"ok", false}, {"error", st.message()}};
      (void)w.store->Set(s->key_prefix + "outcome", out.dump());
      if (!s->temp_dir.empty()) (void)w.env->RemoveAll(s->temp_dir);
    } else {
      RankRecord failed;
      failed.rank = options_.rank;
      failed.ok = false;
      failed.code = st.code();
      failed.error = st.message();
      (void)w.store->Set(s->key_prefix + "rank/" + std::to_string(options_.rank),
                         EncodeRankRecord(failed));
    }
    return st;
  }
  w.current = std::move(s);
  return Status::OK();
}

// Rank 0 makes the temp directory and tells the others its name; each rank then locks its part
// of it and opens its shard file.
Status CheckpointWriter::StartSave(SaveState& s) {
  Impl& w = *impl_;
  const std::string tmp_key = s.key_prefix + "tmpdir";
  std::string tmp_name;
  if (options_.rank == 0) {
    DS_RETURN_IF_ERROR(w.env->CreateDirsDurably(options_.save_dir))
        << "creating the checkpoint directory " << options_.save_dir;
    tmp_name = kTempPrefix + s.tag + "-" + w.env->NewNonce();
    s.temp_dir = io::JoinPath(options_.save_dir, tmp_name);
    DS_RETURN_IF_ERROR(w.env->CreateDir(s.temp_dir)) << "starting save " << s.tag;
    DS_RETURN_IF_ERROR(w.store->Set(tmp_key, tmp_name));
  } else {
    Status st = w.store->Wait(std::vector<std::string>{tmp_key}, options_.timeout_micros);
    if (!st.ok()) {
      return Status::Unavailable("save " + s.tag + ": rank 0 did not start it (" + st.message() +
                                 "); is rank 0 alive?");
    }
    DS_ASSIGN_OR_RETURN(std::optional<std::string> name, w.store->Get(tmp_key));
    tmp_name = name.value_or("");
    if (tmp_name.empty()) {
      return Status::IOError("save " + s.tag + ": rank 0 could not start it (see its log)");
    }
    s.temp_dir = io::JoinPath(options_.save_dir, tmp_name);
  }
  DS_ASSIGN_OR_RETURN(s.writer_lock,
                      w.env->TryLockFile(io::JoinPath(
                          s.temp_dir, ".writer-" + std::to_string(options_.rank) + ".lock")));
  fmt::ShardWriterOptions so;
  so.encode.codec = options_.codec;
  so.encode.zstd_level = options_.zstd_level;
  so.io = w.aio.get();
  so.encoders = w.encoders.get();
  so.staging = w.encoded.get();
  so.direct = options_.direct_io;
  so.writer_version = options_.writer_version;
  const std::string shard_name = fmt::ShardFileName(options_.rank);
  DS_ASSIGN_OR_RETURN(s.shard, fmt::ShardWriter::Create(w.env, io::JoinPath(s.temp_dir, shard_name),
                                                        options_.rank, so));
  s.record.rank = options_.rank;
  s.record.file = {shard_name, 0, options_.rank};
  s.io_before = w.aio->stats();
  return Status::OK();
}

// ---- slices and blobs

Status CheckpointWriter::AddSlice(SaveSlice slice) {
  if (impl_->current == nullptr) return Status::FailedPrecondition("AddSlice before Begin");
  if (slice.box_offset.empty() && slice.box_length.empty()) {
    slice.box_offset.assign(slice.shape.size(), 0);
    slice.box_length = slice.shape;
  }
  // The manifest's rules, checked now so a bad slice fails the caller, not the background.
  const std::string what = "slice of '" + slice.name + "'";
  if (slice.name.empty()) return Status::InvalidArgument("a slice needs a tensor name");
  if (slice.shape.size() > static_cast<size_t>(fmt::kMaxDims) || !fmt::NumElements(slice.shape)) {
    return Status::InvalidArgument(what + ": shape is invalid");
  }
  if (slice.box_offset.size() != slice.shape.size() ||
      slice.box_length.size() != slice.shape.size()) {
    return Status::InvalidArgument(what + ": the box needs one offset and length per dimension");
  }
  for (size_t d = 0; d < slice.shape.size(); ++d) {
    if (slice.box_offset[d] < 0 || slice.box_length[d] < 0 ||
        slice.box_offset[d] + slice.box_length[d] > slice.shape[d]) {
      return Status::InvalidArgument(what + ": the box is outside the shape");
    }
  }
  const uint64_t box_numel = *fmt::NumElements(slice.box_length);
  if (slice.flat_begin > slice.flat_end || slice.flat_end > box_numel) {
    return Status::InvalidArgument(what + ": flat range [" + std::to_string(slice.flat_begin) +
                                   ", " + std::to_string(slice.flat_end) +
                                   ") is outside its box of " + std::to_string(box_numel));
  }
  const uint64_t nbytes = (slice.flat_end - slice.flat_begin) * fmt::DTypeSize(slice.dtype);
  if (!slice.source.fill && slice.source.host.size() != nbytes) {
    return Status::InvalidArgument(what + ": " + std::to_string(slice.source.host.size()) +
                                   " bytes given for a slice of " + std::to_string(nbytes));
  }
  impl_->current->slices.push_back(std::move(slice));
  return Status::OK();
}

Status CheckpointWriter::AddBlob(std::string name, std::string data) {
  if (impl_->current == nullptr) return Status::FailedPrecondition("AddBlob before Begin");
  if (name.empty()) return Status::InvalidArgument("a blob needs a name");
  impl_->current->blobs.push_back({std::move(name), std::move(data)});
  return Status::OK();
}

// ---- the snapshot

Result<SaveStats> CheckpointWriter::Snapshot(std::function<Status()> sync, SnapshotMode mode) {
  Impl& w = *impl_;
  if (w.current == nullptr) return Status::FailedPrecondition("Snapshot before Begin");
  SaveState& s = *w.current;
  if (s.snapshotted) return Status::FailedPrecondition("Snapshot called twice");
  s.snapshot_begin_micros = w.env->NowMicros();
  if (mode == SnapshotMode::kInBackground) {
    for (const SaveSlice& sl : s.slices) {
      if (!sl.source.fill) {
        return Status::FailedPrecondition("slice " + sl.name +
                                          " is host memory, which a snapshot copied in the "
                                          "background cannot read: use SnapshotMode::kNow");
      }
      s.stats.logical_bytes += (sl.flat_end - sl.flat_begin) * fmt::DTypeSize(sl.dtype);
    }
    s.fill_in_background = true;
    s.deferred_sync = std::move(sync);
    s.snapshotted = true;
    s.snapshot_end_micros = w.env->NowMicros();
    s.stats.snapshot_seconds =
        static_cast<double>(s.snapshot_end_micros - s.snapshot_begin_micros) / 1e6;
    return s.stats;
  }
  Status st = w.FillStaging(s, sync, mode == SnapshotMode::kFinishInBackground,
                            /*in_background=*/false);
  if (!st.ok()) {
    // Abandon this save: the background part tells the other ranks and removes the temp dir.
    s.aborted = st;
    s.snapshotted = true;
    Commit();
    return st;
  }
  return s.stats;
}

Status CheckpointWriter::Impl::FillStaging(SaveState& s, const std::function<Status()>& sync,
                                           bool defer_sync, bool in_background) {
  const uint64_t t0 = s.snapshot_begin_micros;

  // Lay the slices out in chunks (the manifest records where each begins).
  std::vector<fmt::PieceSpec> pieces;
  std::map<std::string, uint32_t> tensor_of;
  for (const SaveSlice& sl : s.slices) {
    const auto es = static_cast<uint8_t>(fmt::DTypeSize(sl.dtype));
    pieces.push_back({(sl.flat_end - sl.flat_begin) * es, es});
  }
  std::vector<fmt::PiecePlacement> at;
  std::vector<fmt::ChunkPlan> plan = fmt::PlanChunks(pieces, options.chunk_bytes, &at);
  for (size_t i = 0; i < s.slices.size(); ++i) {
    const SaveSlice& sl = s.slices[i];
    auto [it, fresh] = tensor_of.emplace(sl.name, static_cast<uint32_t>(s.record.tensors.size()));
    if (fresh) s.record.tensors.push_back({sl.name, sl.dtype, sl.shape});
    s.record.slices.push_back({it->second, options.rank, sl.box_offset, sl.box_length,
                               sl.flat_begin, sl.flat_end, at[i].first_chunk,
                               at[i].offset_in_chunk});
  }
  s.record.blobs = s.blobs;
  {
    // The whole save's space at once (chunks are stored at most a header larger than raw, and
    // most are smaller): growing the file as chunks arrive would drain the write queue.
    uint64_t raw = 0;
    for (const fmt::ChunkPlan& c : plan) raw += fmt::AlignUp(c.raw_len, fmt::kChunkAlignment);
    DS_RETURN_IF_ERROR(s.shard->Reserve(raw));
  }

  // Fill staging chunk by chunk. Filled chunks go to the encoders only after `sync` (fillers
  // may copy asynchronously); when staging runs out, the chunks filled so far are synced and
  // handed over so their buffers come back. Copies out of host memory are collected and run on
  // the encoder threads (idle until the hand-over) and this one together: one thread copies at
  // a few GB/s, well under the memory's bandwidth (an offloaded optimizer's state is on the host).
  struct HostCopy {
    std::byte* dst;
    const std::byte* src;
    size_t bytes;
  };
  std::vector<HostCopy> host_copies;
  auto copy_host = [&] {
    encoders->ParallelFor(host_copies.size(), [&](size_t i) {
      std::memcpy(host_copies[i].dst, host_copies[i].src, host_copies[i].bytes);
    });
    host_copies.clear();
  };
  std::vector<FilledChunk> filled;
  auto hand_over = [&]() -> Status {
    if (filled.empty()) return Status::OK();
    copy_host();
    if (sync) DS_RETURN_IF_ERROR(sync()) << "finishing the snapshot's copies";
    HandOver(s, filled);
    return Status::OK();
  };
  double waited = 0;
  for (const fmt::ChunkPlan& c : plan) {
    Result<io::Buffer> buf = staging->Acquire(c.raw_len, 0);
    if (!buf.ok() && buf.status().code() == StatusCode::kUnavailable) {
      DS_RETURN_IF_ERROR(hand_over());
      const uint64_t tw = env->NowMicros();
      buf = staging->Acquire(c.raw_len, options.timeout_micros);
      waited += static_cast<double>(env->NowMicros() - tw) / 1e6;
    }
    if (!buf.ok()) return buf.status().WithContext("staging the snapshot");
    uint64_t pos = 0;
    for (const fmt::PiecePart& p : c.parts) {
      const SaveSlice& sl = s.slices[p.piece];
      std::span<std::byte> dst(buf->data() + pos, p.end - p.begin);
      if (sl.source.fill) {
        DS_RETURN_IF_ERROR(sl.source.fill(p.begin, dst)) << "copying " << sl.name;
      } else {
        host_copies.push_back({dst.data(), sl.source.host.data() + p.begin, dst.size()});
      }
      pos += dst.size();
    }
    // Chunks are handed over at the end (or when staging runs out), not one by one: encoders
    // running beside the copy would slow the copy, and the copy is what training waits for.
    filled.push_back({std::make_shared<io::Buffer>(std::move(*buf)), c.elem_size});
  }
  if (!in_background && defer_sync && sync && !filled.empty()) {
    // The last chunks wait in the background for their copies (HandOverDeferred).
    copy_host();
    s.deferred = std::move(filled);
    s.deferred_sync = sync;
  } else {
    DS_RETURN_IF_ERROR(hand_over());
    s.stats.copies_done_seconds = static_cast<double>(env->NowMicros() - t0) / 1e6;
  }
  s.stats.staging_wait_seconds = waited;
  if (in_background) return Status::OK();  // Snapshot has set the rest
  s.snapshotted = true;
  s.snapshot_end_micros = env->NowMicros();
  s.stats.snapshot_seconds = static_cast<double>(s.snapshot_end_micros - t0) / 1e6;
  for (const fmt::ChunkPlan& c : plan) s.stats.logical_bytes += c.raw_len;
  return Status::OK();
}

Status CheckpointWriter::Impl::HandOverDeferred(SaveState& s) {
  if (s.deferred.empty()) return Status::OK();
  Status st = s.deferred_sync().WithContext("finishing the snapshot's copies");
  s.stats.copies_done_seconds =
      static_cast<double>(env->NowMicros() - s.snapshot_begin_micros) / 1e6;
  if (st.ok()) HandOver(s, s.deferred);
  s.deferred.clear();  // after a failed sync the buffers return to staging unwritten
  s.deferred_sync = nullptr;
  return st;
}

void CheckpointWriter::Impl::HandOver(SaveState& s, std::vector<FilledChunk>& filled) {
  for (auto& [buf, elem] : filled) {
    s.shard->AddChunkInPlace({buf->data(), buf->capacity()}, buf->size(), elem,
                             [buf] { buf->Release(); });
  }
  filled.clear();
}

std::shared_ptr<SaveHandle> CheckpointWriter::Commit() {
  Impl& w = *impl_;
  auto handle = std::make_shared<SaveHandle>();
  if (w.current == nullptr || !w.current->snapshotted) {
    handle->Finish(Status::FailedPrecondition("Commit needs Begin and Snapshot first"), {});
    return handle;
  }
  std::shared_ptr<SaveState> s(std::move(w.current));
  handle->stats_.tag = s->tag;  // readable while in flight
  w.in_flight = handle;
  w.background = std::thread([&w, s, handle] {
    if (s->fill_in_background && s->aborted.ok()) {
      // SnapshotMode::kInBackground: the whole copy into staging happens here.
      s->aborted = w.FillStaging(*s, s->deferred_sync, /*defer_sync=*/false,
                                 /*in_background=*/true);
    }
    if (Status d = w.HandOverDeferred(*s); !d.ok() && s->aborted.ok()) s->aborted = d;
    Status st = w.RunBackground(*s);
    const uint64_t now = w.env->NowMicros();
    s->stats.background_seconds = static_cast<double>(now - s->snapshot_end_micros) / 1e6;
    s->stats.total_seconds = static_cast<double>(now - s->begin_micros) / 1e6;
    if (s->stats.durable_seconds == 0 && st.ok()) s->stats.durable_seconds = s->stats.total_seconds;
    handle->Finish(std::move(st), s->stats);
  });
  return handle;
}

}  // namespace ds::ckpt
