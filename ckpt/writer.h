// CheckpointWriter: one rank's side of a save. The caller describes its state as slices (a
// box and flat range of a global tensor, with where its bytes come from) and blobs, then
//   Begin -> AddSlice / AddBlob ... -> Snapshot -> Commit -> (training goes on) -> handle.Wait
// Snapshot copies every byte into bounded staging buffers and is the only part training waits
// for; encoding, io_uring writes, fsync, the rank's record and (on rank 0) the manifest and the
// commit protocol of ckpt/commit.cc run in the background. A save that fails, on any rank,
// leaves every committed checkpoint and pointer as they were.
// Thread safety: one thread drives a writer; its SaveHandle may be waited on from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "ckpt/catalog.h"
#include "ckpt/kv_store.h"
#include "formats/chunk_codec.h"
#include "formats/dtype.h"
#include "io/buffer_pool.h"
#include "io/env.h"

namespace ds::ckpt {

struct SaveState;  // ckpt/writer_impl.h

struct WriterOptions {
  std::string save_dir;
  uint32_t rank = 0;
  uint32_t world_size = 1;
  // Coordination between ranks. Required when world_size > 1; a private in-process store is
  // used otherwise.
  KeyValueStore* store = nullptr;
  std::string run_id;  // distinguishes runs sharing a persistent store (e.g. a FileStore)

  fmt::Codec codec = fmt::Codec::kByteGroupZstd;
  int zstd_level = 1;
  uint64_t chunk_bytes = 4 << 20;  // raw bytes per chunk (4 MiB: see docs/benchmarks.md)
  uint64_t staging_bytes = uint64_t{4} << 30;  // snapshot memory: raw chunks awaiting encode
  unsigned encode_threads = 0;                 // 0: hardware threads
  // How much lower the encoders' CPU priority is than the caller's (Linux niceness, 0-19): a
  // save in the background then takes the CPU only where training leaves it.
  int encode_nice = 0;
  unsigned io_queue_depth = 32;
  bool direct_io = true;
  std::string io_backend;                 // "", "uring" or "pwrite" (see io/async_io.h)
  uint64_t timeout_micros = 600'000'000;  // how long a rank waits for the others
  // What Begin does while the previous save is still writing: wait for it, or skip this one.
  // Every rank must take the same decision: with kSkip, skip on all ranks or none (the engine
  // decides on one rank and tells the others).
  enum class WhenBusy { kWait, kSkip } when_busy = WhenBusy::kWait;

  RetentionPolicy retention;      // applied by rank 0 after each commit
  std::string best_metric;        // "eval_loss": `best` follows it; empty: no best pointer
  std::string best_mode = "min";  // or "max"
  bool update_latest = true;
  std::string writer_version = "dstrain";

  // Called once per staging block when it is allocated / freed (e.g. cudaHostRegister).
  std::function<void(std::byte*, size_t)> on_staging_allocate;
  std::function<void(std::byte*, size_t)> on_staging_release;
};

struct SaveRequest {
  std::string tag;  // empty: TagForStep(step)
  int64_t step = 0;
  uint32_t zero_stage = 0;
  uint32_t tp_degree = 1;
  uint32_t pp_degree = 1;
  uint64_t partition_alignment = 1;  // the ZeRO partition's alignment (ckpt/partition.h)
  std::string config_json = "{}";
  std::string metrics_json = "{}";
};

// Where a slice's bytes come from: host memory, valid until Snapshot returns, or a function that
// copies `dst.size()` bytes starting at byte `offset` of the slice into `dst`. A filler may
// only start the copy (e.g. an async device-to-host copy); Snapshot's `sync` must then make all
// started copies complete before it returns.
struct SliceSource {
  std::span<const std::byte> host;
  std::function<Status(uint64_t offset, std::span<std::byte> dst)> fill;
};

struct SaveSlice {
  std::string name;
  fmt::DType dtype = fmt::DType::kF32;
  std::vector<int64_t> shape;       // global
  std::vector<int64_t> box_offset;  // empty: the whole tensor
  std::vector<int64_t> box_length;
  uint64_t flat_begin = 0;  // elements of the box
  uint64_t flat_end = 0;
  SliceSource source;
};

struct SaveStats {
  std::string tag;
  std::string path;             // the committed checkpoint (rank 0 knows it; others too once done)
  uint64_t logical_bytes = 0;   // this rank's raw bytes
  uint64_t stored_bytes = 0;    // this rank's stored bytes
  double snapshot_seconds = 0;  // the stall: the Snapshot call (see SnapshotMode)
  double copies_done_seconds = 0;   // from the snapshot's start until every copy was done
  double staging_wait_seconds = 0;  // part of the stall spent waiting for staging memory
  double background_seconds = 0;    // from the end of the snapshot until the handle is done
  double total_seconds = 0;         // from Begin until the handle is done (retention included)
  // From Begin until the checkpoint and `latest`/`best` are durable (step 8); rank 0 leaves
  // out retention (step 9), which only frees space. Other ranks: until they learn the outcome.
  double durable_seconds = 0;
  // Where the background part's time went, to tell a disk kept busy from one left waiting.
  double write_seconds = 0;       // this rank's first chunk write queued until its last completed
  double shard_sync_seconds = 0;  // step 1's end: the shard file's trim, fsync and close
  double commit_seconds = 0;      // steps 2-8: records, manifest, renames, pointers (rank 0)
  double retention_seconds = 0;   // step 9 (rank 0)
  double encode_seconds = 0;      // encoding and checksumming, summed over encoder threads
  double encoder_buffer_wait_seconds = 0;  // encoders waiting for stored-bytes buffers, summed
  double encoder_queue_wait_seconds = 0;   // encoders waiting for a free write slot, summed
  // This save's writes: time with at least one in flight, mean number in flight then, and time
  // with the queue full (io_queue_depth in flight). io_busy_seconds well under write_seconds
  // means the disk waited for chunks; a full queue most of the time means the disk was the bound.
  double io_busy_seconds = 0;
  double io_mean_in_flight = 0;
  double io_full_seconds = 0;
  uint64_t io_writes = 0;
  bool skipped = false;
};

// The result of a save in the background.
class SaveHandle {
 public:
  Status Wait();  // blocks until the save is committed and durable, or failed
  bool Done() const;
  SaveStats stats() const;  // complete once Done()

 private:
  friend class CheckpointWriter;
  void Finish(Status s, SaveStats stats);
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  Status status_;
  SaveStats stats_;
};

class CheckpointWriter {
 public:
  static Result<std::unique_ptr<CheckpointWriter>> Create(io::Env* env, WriterOptions options);
  ~CheckpointWriter();  // waits for a save in flight

  // Starts a save. With WhenBusy::kSkip and a save still writing: FailedPrecondition saying it
  // was skipped, and nothing starts. Rank 0 creates the temp directory; the others learn its
  // name from the store (bounded wait).
  Status Begin(const SaveRequest& request);
  Status AddSlice(SaveSlice slice);
  // Blobs are written once: add rank-independent ones (step, scheduler) on rank 0 only.
  Status AddBlob(std::string name, std::string data);
  // Copies every slice into staging and hands the chunks to the background encoders; returns
  // when the caller may change its state again. `sync` is called before any filled chunk is
  // handed over (see SliceSource). The mode says how much of that Snapshot waits for:
  //   kNow                 every copy done (fillers' copies synced) before it returns.
  //   kFinishInBackground  every copy *started* (host slices copied); the background part
  //                        calls `sync`, on its own thread, before encoding the last chunks.
  //   kInBackground        nothing copied: the background part calls the fillers and `sync`.
  //                        Every slice needs a filler (host spans are only valid until
  //                        Snapshot returns); fillers and `sync` must work from any thread.
  // With the background modes the caller must keep the sources unchanged until its copies are
  // done, by its own means (on a GPU: make its next writes wait on an event recorded after the
  // copies, or copy from a private stage). This lets device-to-host copies overlap training.
  enum class SnapshotMode { kNow, kFinishInBackground, kInBackground };
  Result<SaveStats> Snapshot(std::function<Status()> sync = nullptr,
                             SnapshotMode mode = SnapshotMode::kNow);
  // Finishes in the background; Wait on the handle for durability.
  std::shared_ptr<SaveHandle> Commit();

  bool busy() const;  // the previous save is still writing
  const WriterOptions& options() const { return options_; }
  uint64_t staging_peak_bytes() const;

  struct Impl;  // ckpt/writer.cc and ckpt/commit.cc

 private:
  explicit CheckpointWriter(std::unique_ptr<Impl> impl, WriterOptions options);
  Status StartSave(SaveState& s);
  std::unique_ptr<Impl> impl_;
  WriterOptions options_;
};

}  // namespace ds::ckpt
