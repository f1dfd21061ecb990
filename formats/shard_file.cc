#include "formats/shard_file.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "formats/endian.h"

namespace ds::fmt {

// ---- header
//
// offset  size  field
//      0     8  magic "DSTRSHRD"
//      8     4  format version (u32)
//     12     4  header size in bytes (u32, 4096)
//     16     4  rank (u32)
//     20     4  flags (u32, 0)
//     24     8  creation time, microseconds since the Unix epoch (i64)
//     32    48  writer version, UTF-8, NUL-padded (at most 47 bytes)
//     80  4008  zero
//   4088     8  xxh64 of bytes [0, 4088)

namespace {
constexpr size_t kVersionField = 32;
constexpr size_t kVersionFieldLen = 48;
constexpr size_t kChecksumAt = kShardHeaderBytes - 8;
}  // namespace

std::string ShardFileName(uint32_t rank) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "rank-%05" PRIu32 ".dss", rank);
  return buf;
}

bool ParseShardFileName(std::string_view name, uint32_t* rank) {
  if (name.size() < 14 || name.substr(0, 5) != "rank-" || name.substr(name.size() - 4) != ".dss") {
    return false;
  }
  std::string_view digits = name.substr(5, name.size() - 9);
  if (digits.size() < 5 || digits.size() > 10) return false;
  uint64_t v = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  if (v > UINT32_MAX || ShardFileName(static_cast<uint32_t>(v)) != name) return false;
  *rank = static_cast<uint32_t>(v);
  return true;
}

void EncodeShardHeader(const ShardHeader& h, std::span<std::byte> out) {
  std::memset(out.data(), 0, kShardHeaderBytes);
  std::memcpy(out.data(), kShardMagic, sizeof kShardMagic);
  PutU32(out.data() + 8, h.format_version);
  PutU32(out.data() + 12, static_cast<uint32_t>(kShardHeaderBytes));
  PutU32(out.data() + 16, h.rank);
  PutU32(out.data() + 20, 0);
  PutU64(out.data() + 24, static_cast<uint64_t>(h.created_micros));
  std::memcpy(out.data() + kVersionField, h.writer_version.data(),
              std::min(h.writer_version.size(), kVersionFieldLen - 1));
  PutU64(out.data() + kChecksumAt, Xxh64(out.first(kChecksumAt)));
}

Result<ShardHeader> DecodeShardHeader(std::span<const std::byte> b, std::string_view file) {
  const std::string f(file);
  if (b.size() < kShardHeaderBytes) {
    return Status::Corruption(f + ": " + std::to_string(b.size()) +
                              " bytes is too short for a shard header (4096); the file is "
                              "truncated or not a dstrain shard");
  }
  if (std::memcmp(b.data(), kShardMagic, sizeof kShardMagic) != 0) {
    return Status::Corruption(f + ": not a dstrain shard file (bad magic)");
  }
  ShardHeader h;
  h.format_version = GetU32(b.data() + 8);
  if (h.format_version > kShardFormatVersion || h.format_version == 0) {
    return Status::Corruption(f + ": shard format version " + std::to_string(h.format_version) +
                              " is not one this dstrain reads (it reads 1 to " +
                              std::to_string(kShardFormatVersion) +
                              "); written by a newer dstrain? upgrade to read it");
  }
  if (GetU64(b.data() + kChecksumAt) != Xxh64(b.first(kChecksumAt))) {
    return Status::Corruption(f + ": shard header fails its checksum (file damaged)");
  }
  if (GetU32(b.data() + 12) != kShardHeaderBytes || GetU32(b.data() + 20) != 0) {
    return Status::Corruption(f + ": shard header has an unknown size or flags");
  }
  h.rank = GetU32(b.data() + 16);
  h.created_micros = static_cast<int64_t>(GetU64(b.data() + 24));
  const char* v = reinterpret_cast<const char*>(b.data() + kVersionField);
  size_t len = strnlen(v, kVersionFieldLen);
  if (len == kVersionFieldLen) {
    return Status::Corruption(f + ": shard header's writer version is not terminated");
  }
  h.writer_version.assign(v, len);
  return h;
}

std::string DescribeChunk(uint64_t index, std::string_view file) {
  return "chunk " + std::to_string(index) + " of " + std::string(file);
}

// ---- packing

std::vector<ChunkPlan> PlanChunks(std::span<const PieceSpec> pieces, uint64_t chunk_bytes,
                                  std::vector<PiecePlacement>* placements) {
  std::vector<ChunkPlan> chunks;
  placements->assign(pieces.size(), {});
  auto room = [&] { return chunks.empty() ? 0 : chunk_bytes - chunks.back().raw_len; };
  for (size_t i = 0; i < pieces.size(); ++i) {
    const PieceSpec& p = pieces[i];
    bool fits = !chunks.empty() && chunks.back().elem_size == p.elem_size && p.nbytes <= room();
    if (p.nbytes == 0) {
      // Points at the end of the current chunk (or the start of the next one).
      (*placements)[i] = chunks.empty() ? PiecePlacement{0, 0}
                                        : PiecePlacement{chunks.size() - 1, chunks.back().raw_len};
      continue;
    }
    if (!fits) chunks.push_back({p.elem_size, 0, {}});
    (*placements)[i] = {chunks.size() - 1, chunks.back().raw_len};
    uint64_t done = 0;
    while (done < p.nbytes) {
      if (chunks.back().raw_len == chunk_bytes) chunks.push_back({p.elem_size, 0, {}});
      ChunkPlan& c = chunks.back();
      uint64_t take = std::min(p.nbytes - done, chunk_bytes - c.raw_len);
      c.parts.push_back({i, done, done + take});
      c.raw_len += take;
      done += take;
    }
  }
  return chunks;
}

// ---- writing

ShardWriter::ShardWriter(io::Env* env, std::string path, ShardWriterOptions options,
                         std::unique_ptr<io::File> file)
    : env_(env), path_(std::move(path)), options_(std::move(options)), file_(std::move(file)) {}

ShardWriter::~ShardWriter() {
  // A writer abandoned before Finish must not leave tasks that point at it.
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return pending_ == 0; });
}

Result<std::unique_ptr<ShardWriter>> ShardWriter::Create(io::Env* env, const std::string& path,
                                                         uint32_t rank,
                                                         ShardWriterOptions options) {
  if (options.io == nullptr || options.encoders == nullptr || options.staging == nullptr) {
    return Status::InvalidArgument("ShardWriter needs an AsyncIo, an encoder pool and staging");
  }
  DS_ASSIGN_OR_RETURN(std::unique_ptr<io::File> file,
                      env->OpenFile(path, {io::OpenMode::kTruncate, options.direct}));
  ShardHeader h;
  h.rank = rank;
  h.created_micros = env->WallTimeMicros();
  h.writer_version = options.writer_version;
  DS_ASSIGN_OR_RETURN(io::Buffer header, options.staging->Acquire(kShardHeaderBytes));
  EncodeShardHeader(h, header.span());
  DS_RETURN_IF_ERROR(file->WriteAt(0, header.span())) << "writing the header of " << path;
  return std::unique_ptr<ShardWriter>(
      new ShardWriter(env, path, std::move(options), std::move(file)));
}

uint64_t ShardWriter::AddChunk(std::span<const std::byte> raw, uint8_t elem_size,
                               std::function<void()> on_raw_done) {
  uint64_t index;
  {
    std::lock_guard<std::mutex> lock(mu_);
    index = records_.size();
    records_.push_back({});
    ++pending_;
  }
  options_.encoders->Submit([this, index, raw, elem_size, done = std::move(on_raw_done)] {
    EncodeAndWrite(index, raw, elem_size, done);
  });
  return index;
}

void ShardWriter::Fail(const Status& s) {
  std::lock_guard<std::mutex> lock(mu_);
  if (error_.ok()) error_ = s;
}

Status ShardWriter::Reserve(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t end = AlignUp(next_offset_ + bytes, kChunkAlignment);
  if (end <= allocated_) return Status::OK();
  DS_RETURN_IF_ERROR(file_->Preallocate(end)) << "reserving space in " << path_;
  allocated_ = end;
  return Status::OK();
}

Status ShardWriter::EnsureAllocated(uint64_t end) {
  if (end <= allocated_) return Status::OK();
  uint64_t target = AlignUp(end + options_.preallocate_step, kChunkAlignment);
  DS_RETURN_IF_ERROR(file_->Preallocate(target));
  allocated_ = target;
  return Status::OK();
}

uint64_t ShardWriter::AddChunkInPlace(std::span<std::byte> block, size_t raw_len, uint8_t elem_size,
                                      std::function<void()> on_done) {
  const bool in_place = options_.encode.codec == Codec::kRaw &&
                        block.size() >= AlignUp(raw_len, kChunkAlignment) &&
                        reinterpret_cast<uintptr_t>(block.data()) % kChunkAlignment == 0;
  if (!in_place) return AddChunk(block.first(raw_len), elem_size, std::move(on_done));
  uint64_t index;
  {
    std::lock_guard<std::mutex> lock(mu_);
    index = records_.size();
    records_.push_back({});
    ++pending_;
  }
  options_.encoders->Submit([this, index, block, raw_len, elem_size, done = std::move(on_done)] {
    ChecksumAndWrite(index, block, raw_len, elem_size, done);
  });
  return index;
}

void ShardWriter::WriteChunk(uint64_t index, std::span<const std::byte> padded,
                             const ChunkRecord& partial, std::function<void(const Status&)> done) {
  uint64_t offset;
  {
    std::lock_guard<std::mutex> lock(mu_);
    offset = next_offset_;
    next_offset_ += padded.size();
    Status s = EnsureAllocated(next_offset_);
    if (!s.ok() && error_.ok()) error_ = s;
    records_[index] = partial;
    records_[index].offset = offset;
  }
  QueueWrite(offset, padded, std::move(done));
}

// The write may complete, and Finish return, before Write does: this call counts as pending
// itself until it has recorded its wait, so the writer outlives it.
void ShardWriter::QueueWrite(uint64_t offset, std::span<const std::byte> padded,
                             std::function<void(const Status&)> done) {
  const uint64_t t0 = env_->NowMicros();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stats_.first_write_micros == 0) stats_.first_write_micros = t0;
    ++pending_;
  }
  options_.io->Write(file_.get(), offset, padded,
                     std::move(done));  // blocks while the queue is full
  queue_wait_micros_ += env_->NowMicros() - t0;
  std::lock_guard<std::mutex> lock(mu_);
  --pending_;
  cv_.notify_all();
}

void ShardWriter::FinishOne() {
  const uint64_t now = env_->NowMicros();
  std::lock_guard<std::mutex> lock(mu_);
  stats_.last_write_micros = std::max(stats_.last_write_micros, now);
  --pending_;
  cv_.notify_all();
}

void ShardWriter::EncodeAndWrite(uint64_t index, std::span<const std::byte> raw, uint8_t elem_size,
                                 std::function<void()> on_raw_done) {
  const std::string what = DescribeChunk(index, io::BaseName(path_));
  // Stored bytes wait in staging until their write completes (bounded: backpressure).
  const uint64_t t0 = env_->NowMicros();
  Result<io::Buffer> buf =
      options_.staging->Acquire(AlignUp(ChunkEncoder::MaxStoredLen(raw.size()), kChunkAlignment));
  const uint64_t t1 = env_->NowMicros();
  buffer_wait_micros_ += t1 - t0;
  if (!buf.ok()) {
    if (on_raw_done) on_raw_done();
    Fail(buf.status().WithContext("encoding " + what));
    FinishOne();
    return;
  }
  thread_local ChunkEncoder encoder;
  Result<EncodedChunk> enc = encoder.Encode(raw, elem_size, options_.encode, buf->span());
  if (on_raw_done) on_raw_done();  // the stored bytes no longer need the raw ones
  if (!enc.ok()) {
    Fail(enc.status().WithContext("encoding " + what));
    FinishOne();
    return;
  }
  const uint64_t padded = AlignUp(enc->stored_len, kChunkAlignment);
  std::memset(buf->data() + enc->stored_len, 0, padded - enc->stored_len);
  encode_micros_ += env_->NowMicros() - t1;
  auto owned = std::make_shared<io::Buffer>(std::move(*buf));
  WriteChunk(
      index, {owned->data(), padded},
      {0, enc->stored_len, enc->raw_len, enc->codec, elem_size, enc->raw_xxh64, enc->stored_xxh64},
      [this, owned, what](const Status& s) {
        if (!s.ok()) Fail(s.WithContext("writing " + what));
        owned->Release();
        FinishOne();
      });
}

void ShardWriter::ChecksumAndWrite(uint64_t index, std::span<std::byte> block, size_t raw_len,
                                   uint8_t elem_size, std::function<void()> on_done) {
  const std::string what = DescribeChunk(index, io::BaseName(path_));
  const uint64_t t0 = env_->NowMicros();
  const uint64_t padded = AlignUp(raw_len, kChunkAlignment);
  std::span<const std::byte> raw = block.first(raw_len);
  ChunkRecord rec{
      0, raw_len, raw_len, Codec::kRaw, elem_size, Xxh64(raw), StoredChecksum(Codec::kRaw, raw)};
  std::memset(block.data() + raw_len, 0, padded - raw_len);
  encode_micros_ += env_->NowMicros() - t0;
  WriteChunk(index, block.first(padded), rec,
             [this, on_done = std::move(on_done), what](const Status& s) {
               if (!s.ok()) Fail(s.WithContext("writing " + what));
               if (on_done) on_done();
               FinishOne();
             });
}

Result<ShardSummary> ShardWriter::Finish() {
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return pending_ == 0; });
    if (!error_.ok()) return error_;
  }
  // The preallocated tail beyond the last chunk is not part of the file.
  const uint64_t t0 = env_->NowMicros();
  DS_RETURN_IF_ERROR(file_->Truncate(next_offset_)) << "finishing " << path_;
  DS_RETURN_IF_ERROR(file_->Sync()) << "finishing " << path_;
  DS_RETURN_IF_ERROR(file_->Close()) << "finishing " << path_;
  ShardSummary summary;
  summary.stats = stats_;
  summary.stats.sync_micros = env_->NowMicros() - t0;
  summary.stats.encode_micros = encode_micros_;
  summary.stats.buffer_wait_micros = buffer_wait_micros_;
  summary.stats.queue_wait_micros = queue_wait_micros_;
  summary.chunks = records_;
  summary.file_size = next_offset_;
  for (const ChunkRecord& r : records_) {
    summary.raw_bytes += r.raw_len;
    summary.stored_bytes += r.stored_len;
  }
  return summary;
}

// ---- reading

Result<std::unique_ptr<ShardReader>> ShardReader::Open(io::Env* env, const std::string& path,
                                                       int64_t expected_rank) {
  std::unique_ptr<ShardReader> r(new ShardReader());
  r->path_ = path;
  // Only a regular file, opened without blocking: a FIFO or device in a shard's place would
  // hang the reader. Such a thing where a shard should be is damage, not an I/O error.
  io::OpenOptions options;
  options.regular_only = true;
  Result<std::unique_ptr<io::File>> file = env->OpenFile(path, options);
  if (!file.ok() && file.status().code() == StatusCode::kFailedPrecondition) {
    return Status::Corruption(file.status().message());
  }
  DS_ASSIGN_OR_RETURN(r->file_, std::move(file));
  DS_ASSIGN_OR_RETURN(r->file_size_, r->file_->Size());
  std::vector<std::byte> header(kShardHeaderBytes);
  DS_ASSIGN_OR_RETURN(size_t n, r->file_->ReadAt(0, header));
  DS_ASSIGN_OR_RETURN(r->header_,
                      DecodeShardHeader(std::span(header).first(n), io::BaseName(path)));
  if (expected_rank >= 0 && r->header_.rank != static_cast<uint64_t>(expected_rank)) {
    return Status::Corruption(io::BaseName(path) + ": header says rank " +
                              std::to_string(r->header_.rank) + " but the manifest expects rank " +
                              std::to_string(expected_rank) + " (files mixed up between saves?)");
  }
  return r;
}

Status ShardReader::CheckBounds(const ChunkRecord& rec, std::string_view what) const {
  if (rec.offset < kShardHeaderBytes || rec.offset % kChunkAlignment != 0) {
    return Status::Corruption(std::string(what) + ": offset " + std::to_string(rec.offset) +
                              " is not a chunk boundary after the header");
  }
  if (rec.stored_len > file_size_ || rec.offset > file_size_ - rec.stored_len) {
    return Status::Corruption(std::string(what) + ": stored bytes [" + std::to_string(rec.offset) +
                              ", " + std::to_string(rec.offset + rec.stored_len) +
                              ") run past the end of the file (" + std::to_string(file_size_) +
                              " bytes; truncated file?)");
  }
  return Status::OK();
}

Status ShardReader::ReadChunk(const ChunkRecord& rec, std::span<std::byte> out,
                              ChunkDecoder& decoder, std::string_view what) const {
  DS_RETURN_IF_ERROR(CheckBounds(rec, what));
  std::vector<std::byte> stored(rec.stored_len);
  DS_ASSIGN_OR_RETURN(size_t n, file_->ReadAt(rec.offset, stored));
  if (n != stored.size()) return io::ShortReadStatus(*file_, rec.offset, stored.size(), n);
  return decoder.Decode(rec.descriptor(), stored, out, what);
}

}  // namespace ds::fmt
