// Shard files (rank-NNNNN.dss): one rank's chunk data. A 4 KiB header (magic, format version,
// writer version, rank), then chunks, each starting on a 4 KiB boundary and zero-padded to the
// next one so the file can be written and read with O_DIRECT. The chunk index (offset, lengths,
// codec, checksums) lives in the manifest, not here; docs/format.md has the byte layout.
// Thread safety: ShardWriter::AddChunk may be called from several threads; Finish once, after
// the last AddChunk returned. ShardReader is safe for concurrent ReadChunk calls.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "formats/chunk_codec.h"
#include "io/async_io.h"
#include "io/buffer_pool.h"
#include "io/env.h"
#include "io/thread_pool.h"

namespace ds::fmt {

inline constexpr char kShardMagic[8] = {'D', 'S', 'T', 'R', 'S', 'H', 'R', 'D'};
inline constexpr uint32_t kShardFormatVersion = 1;
inline constexpr uint64_t kShardHeaderBytes = 4096;
inline constexpr uint64_t kChunkAlignment = 4096;

struct ShardHeader {
  uint32_t format_version = kShardFormatVersion;
  uint32_t rank = 0;
  int64_t created_micros = 0;  // wall clock
  std::string writer_version;  // at most 47 bytes, e.g. "dstrain 0.1.0"
};

// "rank-00003.dss"
std::string ShardFileName(uint32_t rank);
// Parses "rank-00003.dss"; false for any other name.
bool ParseShardFileName(std::string_view name, uint32_t* rank);

void EncodeShardHeader(const ShardHeader& header, std::span<std::byte> out);  // 4096 bytes
// Validates magic, version (a newer one is refused with both numbers), the header checksum and
// the fields. `file` names the file in messages.
Result<ShardHeader> DecodeShardHeader(std::span<const std::byte> bytes, std::string_view file);

// Where a chunk lives and what the reader must check; the manifest's `chunks` row minus the
// file index.
struct ChunkRecord {
  uint64_t offset = 0;      // bytes from the start of the shard file; a multiple of 4096
  uint64_t stored_len = 0;  // bytes on disk, before padding
  uint64_t raw_len = 0;     // bytes after decoding
  Codec codec = Codec::kRaw;
  uint8_t elem_size = 1;  // bytes per element (byte-group planes)
  uint64_t raw_xxh64 = 0;
  uint64_t stored_xxh64 = 0;

  ChunkDescriptor descriptor() const {
    return {codec, raw_len, stored_len, raw_xxh64, stored_xxh64, elem_size};
  }
};

// ---- packing slices into chunks (a pure function; the save pipeline and tests call it)

struct PieceSpec {
  uint64_t nbytes;    // raw bytes of one tensor slice
  uint8_t elem_size;  // bytes per element
};
struct PiecePart {
  size_t piece;    // index into the PieceSpec list
  uint64_t begin;  // byte range of that piece held by this chunk
  uint64_t end;
};
struct ChunkPlan {
  uint8_t elem_size;
  uint64_t raw_len;  // sum of the parts
  std::vector<PiecePart> parts;
};
struct PiecePlacement {
  uint64_t first_chunk;      // index of the chunk holding the piece's first byte
  uint64_t offset_in_chunk;  // byte offset of that first byte in the chunk's raw bytes
};

// Pieces are laid out in order. A piece that fits in the current chunk's remaining room (and has
// the same element size) is packed there; otherwise it starts a new chunk, and a piece larger
// than `chunk_bytes` fills consecutive chunks of its own. So a load of one large slice reads
// only its chunks. Empty pieces take no space and point at the next chunk boundary.
std::vector<ChunkPlan> PlanChunks(std::span<const PieceSpec> pieces, uint64_t chunk_bytes,
                                  std::vector<PiecePlacement>* placements);

// ---- writing

struct ShardWriterOptions {
  EncodeOptions encode;
  io::AsyncIo* io = nullptr;           // required
  io::ThreadPool* encoders = nullptr;  // required: chunks are encoded here
  io::BufferPool* staging = nullptr;   // required: stored bytes wait here for their write
  bool direct = true;                  // O_DIRECT where the filesystem allows it
  std::string writer_version = "dstrain";
  uint64_t preallocate_step = 64 << 20;  // bytes reserved ahead of the write position
};

// Where a shard writer's time went, to tell a disk that was kept busy from one that waited on
// the encoders. Microseconds; "summed" times add up over the encoder threads.
struct ShardWriteStats {
  uint64_t encode_micros = 0;       // summed: encoding and checksumming chunks
  uint64_t buffer_wait_micros = 0;  // summed: encoders waiting for stored-bytes staging
  uint64_t queue_wait_micros = 0;   // summed: encoders waiting for a free slot in the write queue
  uint64_t first_write_micros = 0;  // Env clock: the first chunk's write was queued
  uint64_t last_write_micros = 0;   // Env clock: the last chunk's write completed
  uint64_t sync_micros = 0;         // Finish: trimming the reserved tail, fsync and close
};

struct ShardSummary {
  std::vector<ChunkRecord> chunks;  // in the order they were added
  uint64_t file_size = 0;           // bytes, padding included
  uint64_t raw_bytes = 0;
  uint64_t stored_bytes = 0;  // without padding
  ShardWriteStats stats;
};

class ShardWriter {
 public:
  // Creates `path` (truncating) and writes its header.
  static Result<std::unique_ptr<ShardWriter>> Create(io::Env* env, const std::string& path,
                                                     uint32_t rank, ShardWriterOptions options);
  ~ShardWriter();

  // Queues one chunk: `raw` is encoded on the encoder pool and written at the next free
  // aligned offset (chunks land in completion order; the manifest records where). `raw` must
  // stay valid until `on_raw_done` runs (or until Finish returns when it is null). Blocks while
  // the staging pool is full. Returns the chunk's index.
  uint64_t AddChunk(std::span<const std::byte> raw, uint8_t elem_size,
                    std::function<void()> on_raw_done = nullptr);

  // Like AddChunk, for callers that own an aligned staging block: with the raw codec the block
  // itself is written (its tail up to the next 4 KiB is zeroed first), saving a copy. `block`
  // holds the raw bytes in its first `raw_len` bytes; `on_done` runs once the block is free.
  uint64_t AddChunkInPlace(std::span<std::byte> block, size_t raw_len, uint8_t elem_size,
                           std::function<void()> on_done);

  // Reserves disk space for `bytes` more of chunks at once (the caller's estimate: a save's raw
  // size). Without it the file grows by ShardWriterOptions::preallocate_step as chunks arrive,
  // and each growth (fallocate) first waits for every direct write in flight to finish (ext4's
  // inode_dio_wait), draining the queue every few chunks. Space left over is truncated by Finish.
  Status Reserve(uint64_t bytes);
  // Waits for every chunk, trims the preallocated tail, fsyncs and closes. The first error of
  // any chunk (encode, write) is returned, naming the file.
  Result<ShardSummary> Finish();

  const std::string& path() const { return path_; }

 private:
  ShardWriter(io::Env* env, std::string path, ShardWriterOptions options,
              std::unique_ptr<io::File> file);
  void EncodeAndWrite(uint64_t index, std::span<const std::byte> raw, uint8_t elem_size,
                      std::function<void()> on_raw_done);
  void ChecksumAndWrite(uint64_t index, std::span<std::byte> block, size_t raw_len,
                        uint8_t elem_size, std::function<void()> on_done);
  // Reserves the next aligned extent, records the chunk, and queues its write; `done` runs
  // with the write's status.
  void WriteChunk(uint64_t index, std::span<const std::byte> padded, const ChunkRecord& partial,
                  std::function<void(const Status&)> done);
  void Fail(const Status& s);
  void FinishOne();  // one chunk fewer pending
  Status EnsureAllocated(uint64_t end);
  // Queues a write on the AsyncIo, counting the time the caller waits for a free slot.
  void QueueWrite(uint64_t offset, std::span<const std::byte> padded,
                  std::function<void(const Status&)> done);

  io::Env* env_;
  std::string path_;
  ShardWriterOptions options_;
  std::unique_ptr<io::File> file_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<ChunkRecord> records_;
  uint64_t next_offset_ = kShardHeaderBytes;
  uint64_t allocated_ = 0;
  uint64_t pending_ = 0;  // chunks queued but not yet written, and calls inside QueueWrite
  Status error_;
  ShardWriteStats stats_;  // times under mu_; the summed ones in the atomics below
  std::atomic<uint64_t> encode_micros_{0};
  std::atomic<uint64_t> buffer_wait_micros_{0};
  std::atomic<uint64_t> queue_wait_micros_{0};
};

// ---- reading

class ShardReader {
 public:
  // Opens and validates the header. `expected_rank` is checked when non-negative.
  static Result<std::unique_ptr<ShardReader>> Open(io::Env* env, const std::string& path,
                                                   int64_t expected_rank = -1);

  const ShardHeader& header() const { return header_; }
  uint64_t file_size() const { return file_size_; }
  io::File* file() const { return file_.get(); }
  const std::string& path() const { return path_; }

  // Checks that the record lies inside this file (offset aligned, past the header, stored
  // bytes within the size); `what` names the chunk.
  Status CheckBounds(const ChunkRecord& record, std::string_view what) const;
  // Reads the stored bytes of one chunk and decodes them into `out` (record.raw_len bytes),
  // verifying both checksums. Synchronous; the load path batches reads with AsyncIo instead.
  Status ReadChunk(const ChunkRecord& record, std::span<std::byte> out, ChunkDecoder& decoder,
                   std::string_view what) const;

 private:
  ShardReader() = default;
  std::string path_;
  std::unique_ptr<io::File> file_;
  ShardHeader header_;
  uint64_t file_size_ = 0;
};

// "chunk 17 of rank-00003.dss"
std::string DescribeChunk(uint64_t index, std::string_view file);

inline uint64_t AlignUp(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

}  // namespace ds::fmt
