#include "ckpt/reader.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>

#include "formats/shard_file.h"
#include "io/async_io.h"
#include "io/buffer_pool.h"
#include "io/thread_pool.h"

namespace ds::ckpt {

struct CheckpointReader::Impl {
  io::Env* env;
  std::string dir;
  ReaderOptions options;
  fmt::Manifest manifest;
  std::unique_ptr<io::AsyncIo> aio;
  std::unique_ptr<io::ThreadPool> decoders;
  std::vector<std::unique_ptr<fmt::ShardReader>> shards;  // by file index, opened on demand
  std::vector<std::unique_ptr<io::File>> direct_files;     // O_DIRECT handles for the same
  // Stored bytes and decoded bytes come from separate pools: a decoder holding a stored chunk
  // waits only for other decoders, never for the read loop, so the two cannot deadlock. They
  // live as long as the reader, so blocks are reused (and stay faulted in) across reads.
  std::unique_ptr<io::BufferPool> stored_pool;
  std::unique_ptr<io::BufferPool> raw_pool;

  Status OpenShard(uint32_t file) {
    if (shards[file] != nullptr) return Status::OK();
    const fmt::FileMeta& f = manifest.files[file];
    const std::string path = io::JoinPath(dir, f.name);
    // A shard the manifest lists that is missing, or not a regular file, is damage of the
    // checkpoint (Corruption: --fallback goes back to an earlier one), not an I/O error.
    Result<std::unique_ptr<fmt::ShardReader>> opened = fmt::ShardReader::Open(env, path, f.rank);
    if (!opened.ok() && opened.status().IsNotFound()) {
      const std::string verify = "'dsckpt verify " + dir + "'";
      return Status::Corruption(
          "checkpoint " + dir + ": " + f.name + " (rank " + std::to_string(f.rank) +
          ") is missing, though its manifest lists it (removed by hand? " + verify +
          " tells what else is damaged; an earlier checkpoint "
          "may be intact)");
    }
    if (!opened.ok()) return opened.status().WithContext("checkpoint " + dir);
    shards[file] = std::move(*opened);
    if (shards[file]->file_size() < f.size) {
      return Status::Corruption(f.name + " has " + std::to_string(shards[file]->file_size()) +
                                " bytes but the manifest says " + std::to_string(f.size) +
                                " (truncated; run 'dsckpt verify " + dir + "')");
    }
    io::OpenOptions direct;
    direct.direct = options.direct_io;
    direct.regular_only = true;
    DS_ASSIGN_OR_RETURN(direct_files[file], env->OpenFile(path, direct));
    return Status::OK();
  }
};

CheckpointReader::CheckpointReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CheckpointReader::~CheckpointReader() = default;

const fmt::Manifest& CheckpointReader::manifest() const { return impl_->manifest; }
const std::string& CheckpointReader::dir() const { return impl_->dir; }

Result<std::unique_ptr<CheckpointReader>> CheckpointReader::Open(io::Env* env,
                                                                 const std::string& dir,
                                                                 ReaderOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->env = env;
  impl->dir = dir;
  impl->options = options;
  DS_ASSIGN_OR_RETURN(impl->manifest,
                      fmt::ReadManifest(env, io::JoinPath(dir, fmt::kManifestFileName)));
  io::AsyncIoOptions aio;
  aio.backend = options.io_backend;
  aio.queue_depth = options.io_queue_depth;
  aio.env = env;
  DS_ASSIGN_OR_RETURN(impl->aio, io::OpenAsyncIo(aio));
  impl->decoders = std::make_unique<io::ThreadPool>(
      options.threads == 0 ? io::HardwareThreads() : options.threads);
  impl->shards.resize(impl->manifest.files.size());
  impl->direct_files.resize(impl->manifest.files.size());
  uint64_t largest = 0;
  for (const fmt::ChunkMeta& c : impl->manifest.chunks) {
    largest = std::max({largest, c.raw_len, fmt::AlignUp(c.stored_len, fmt::kChunkAlignment)});
  }
  const uint64_t each = std::max<uint64_t>(options.memory_bytes / 2, 2 * largest + 8192);
  impl->stored_pool = std::make_unique<io::BufferPool>(io::BufferPoolOptions{each, io::kDirectAlignment});
  impl->raw_pool = std::make_unique<io::BufferPool>(io::BufferPoolOptions{each, io::kDirectAlignment});
  return std::unique_ptr<CheckpointReader>(new CheckpointReader(std::move(impl)));
}

Result<std::string> CheckpointReader::ReadBlob(const std::string& name) const {
  int64_t i = impl_->manifest.FindBlob(name);
  if (i < 0) {
    return Status::NotFound("checkpoint " + impl_->dir + " has no blob '" + name + "'");
  }
  return impl_->manifest.blobs[static_cast<size_t>(i)].data;
}

Result<ReadStats> CheckpointReader::Read(std::span<const ReadRequest> requests) {
  Impl& r = *impl_;
  const uint64_t t0 = r.env->NowMicros();
  std::vector<WantedSlice> wanted;
  for (const ReadRequest& q : requests) wanted.push_back(q.slice);
  DS_ASSIGN_OR_RETURN(LoadPlan plan, MakeLoadPlan(r.manifest, wanted));
  for (size_t i = 0; i < requests.size(); ++i) {
    if (!requests[i].sink && requests[i].dst.size() != plan.request_bytes[i]) {
      return Status::InvalidArgument("reading '" + requests[i].slice.tensor + "': the buffer has " +
                                     std::to_string(requests[i].dst.size()) +
                                     " bytes but the slice has " +
                                     std::to_string(plan.request_bytes[i]));
    }
  }
  // Copies grouped by chunk (the plan sorts them so).
  std::map<uint64_t, std::pair<size_t, size_t>> copies_of;  // chunk -> [first, last)
  for (size_t i = 0; i < plan.copies.size();) {
    size_t j = i;
    while (j < plan.copies.size() && plan.copies[j].chunk == plan.copies[i].chunk) ++j;
    copies_of[plan.copies[i].chunk] = {i, j};
    i = j;
  }
  std::atomic<uint64_t> copied{0};
  ReadStats stats;
  DS_RETURN_IF_ERROR(ForEachChunk(
      plan.chunks,
      [&](uint64_t c, std::span<const std::byte> raw) -> Status {
        auto [b, e] = copies_of.at(c);
        for (size_t i = b; i < e; ++i) {
          const PlannedCopy& p = plan.copies[i];
          const ReadRequest& q = requests[p.request];
          std::span<const std::byte> src = raw.subspan(p.chunk_offset, p.bytes);
          if (q.sink) {
            DS_RETURN_IF_ERROR(q.sink(p.dst_offset, src));
          } else {
            std::memcpy(q.dst.data() + p.dst_offset, src.data(), p.bytes);
          }
          copied += p.bytes;
        }
        return Status::OK();
      },
      &stats));
  stats.copied_bytes = copied;
  stats.seconds = static_cast<double>(r.env->NowMicros() - t0) / 1e6;
  return stats;
}

Status CheckpointReader::ForEachChunk(
    std::span<const uint64_t> chunks,
    const std::function<Status(uint64_t chunk, std::span<const std::byte> raw)>& fn,
    ReadStats* stats) {
  Impl& r = *impl_;
  for (uint64_t c : chunks) {
    if (c >= r.manifest.chunks.size()) {
      return Status::InvalidArgument("chunk " + std::to_string(c) + " is not in the checkpoint");
    }
    DS_RETURN_IF_ERROR(r.OpenShard(r.manifest.chunks[c].file));
  }
  io::BufferPool& stored_pool = *r.stored_pool;
  io::BufferPool& raw_pool = *r.raw_pool;
  std::mutex mu;
  Status first_error;
  auto fail = [&](const Status& s) {
    std::lock_guard<std::mutex> lock(mu);
    if (first_error.ok()) first_error = s;
  };
  // The tensors a chunk holds, for messages about damage.
  auto tensors_of = [&](uint64_t c) {
    std::string names;
    for (const fmt::SliceMeta& s : r.manifest.slices) {
      const fmt::TensorMeta& t = r.manifest.tensors[s.tensor];
      uint64_t left = (s.flat_end - s.flat_begin) * fmt::DTypeSize(t.dtype);
      uint64_t off = s.offset_in_chunk;
      for (uint64_t k = s.first_chunk; left > 0 && k < r.manifest.chunks.size(); ++k) {
        if (k == c && names.find("'" + t.name + "'") == std::string::npos) {
          names += (names.empty() ? "'" : ", '") + t.name + "'";
        }
        left -= std::min(left, r.manifest.chunks[k].raw_len - off);
        off = 0;
      }
    }
    return names;
  };

  for (uint64_t c : chunks) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!first_error.ok()) break;
    }
    const fmt::ChunkMeta& ch = r.manifest.chunks[c];
    const fmt::FileMeta& f = r.manifest.files[ch.file];
    const std::string what = fmt::DescribeChunk(c, f.name);
    fmt::ChunkRecord rec{ch.offset, ch.stored_len, ch.raw_len, ch.codec,
                         ch.elem_size, ch.raw_xxh64, ch.stored_xxh64};
    Status bounds = r.shards[ch.file]->CheckBounds(rec, what);
    if (!bounds.ok()) {
      fail(bounds);
      break;
    }
    // Read the padded extent when it is inside the file: aligned, so O_DIRECT applies.
    const uint64_t padded = fmt::AlignUp(ch.stored_len, fmt::kChunkAlignment);
    const uint64_t len =
        ch.offset + padded <= r.shards[ch.file]->file_size() ? padded : ch.stored_len;
    Result<io::Buffer> stored = stored_pool.Acquire(len);
    if (!stored.ok()) {
      fail(stored.status());
      break;
    }
    auto buf = std::make_shared<io::Buffer>(std::move(*stored));
    r.aio->Read(r.direct_files[ch.file].get(), ch.offset, {buf->data(), len},
                [&, c, buf, rec, what](const Status& s) {
                  if (!s.ok()) {
                    fail(s.WithContext(what));
                    return;
                  }
                  r.decoders->Submit([&, c, buf, rec, what] {
                    thread_local fmt::ChunkDecoder decoder;
                    Result<io::Buffer> raw = raw_pool.Acquire(rec.raw_len);
                    if (!raw.ok()) {
                      fail(raw.status());
                      return;
                    }
                    Status d = decoder.Decode(rec.descriptor(), {buf->data(), rec.stored_len},
                                              raw->span(), what);
                    buf->Release();
                    if (!d.ok()) {
                      fail(Status(d.code(), d.message() + " (tensors " + tensors_of(c) +
                                                "; an earlier checkpoint may be intact)"));
                      return;
                    }
                    Status st = fn(c, raw->span());
                    if (!st.ok()) {
                      fail(st);
                      return;
                    }
                    std::lock_guard<std::mutex> lock(mu);
                    if (stats != nullptr) {
                      stats->chunks_read++;
                      stats->stored_bytes += rec.stored_len;
                      stats->raw_bytes += rec.raw_len;
                    }
                  });
                });
  }
  Status io_status = r.aio->Drain();
  r.decoders->Wait();
  if (!first_error.ok()) return first_error;
  return io_status;
}

}  // namespace ds::ckpt
