// Internal: the state a CheckpointWriter shares between ckpt/writer.cc (Begin, the snapshot)
// and ckpt/commit.cc (the background part). Not part of the public API.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ckpt/rank_record.h"
#include "ckpt/writer.h"
#include "formats/shard_file.h"
#include "io/async_io.h"
#include "io/buffer_pool.h"
#include "io/thread_pool.h"

namespace ds::ckpt {

// A staging block holding a chunk's raw bytes, and the chunk's element size.
using FilledChunk = std::pair<std::shared_ptr<io::Buffer>, uint8_t>;

// One save, from Begin to the end of its background part.
struct SaveState {
  SaveRequest request;
  std::string tag;
  std::string key_prefix;  // store keys of this save: "<prefix>tmpdir", "<prefix>rank/3", ...
  std::string temp_dir;    // <save_dir>/.tmp-<tag>-<nonce>
  std::unique_ptr<io::FileLock> writer_lock;  // tells gc this temp dir is live
  std::unique_ptr<fmt::ShardWriter> shard;
  std::vector<SaveSlice> slices;
  std::vector<fmt::BlobMeta> blobs;
  RankRecord record;  // filled by the snapshot (tensors, slices), completed in the background
  SaveStats stats;
  uint64_t begin_micros = 0;
  uint64_t snapshot_end_micros = 0;
  bool snapshotted = false;
  bool committed = false;          // rank 0: the temp directory was renamed to its tag
  bool outcome_published = false;  // rank 0: the other ranks were told
  Status aborted;                  // set when the snapshot failed: the background only reports
  // Snapshot(sync_in_background): chunks whose copies were started, handed over by the
  // background part after `deferred_sync` returns there.
  std::vector<FilledChunk> deferred;
  std::function<Status()> deferred_sync;
  bool fill_in_background = false;  // SnapshotMode::kInBackground
  uint64_t snapshot_begin_micros = 0;
  io::IoStats io_before;             // the writer's AsyncIo counters when this save started
  uint64_t record_begin_micros = 0;  // step 2 began
};

struct CheckpointWriter::Impl {
  io::Env* env = nullptr;
  WriterOptions options;
  std::unique_ptr<KeyValueStore> own_store;  // when the caller gave none
  KeyValueStore* store = nullptr;
  std::unique_ptr<io::AsyncIo> aio;
  std::unique_ptr<io::ThreadPool> encoders;
  std::unique_ptr<io::BufferPool> staging;  // raw chunk bytes captured by Snapshot
  std::unique_ptr<io::BufferPool> encoded;  // stored bytes waiting for their write
  std::map<std::string, uint64_t> saves_of_tag;

  std::unique_ptr<SaveState> current;  // between Begin and Commit
  std::thread background;              // the previous save's background part
  std::shared_ptr<SaveHandle> in_flight;

  // Lays the slices out in chunks, copies them into staging and hands the chunks to the
  // encoders after `sync` (all but the last ones with `defer_sync`: HandOverDeferred does
  // those). On the caller's thread from Snapshot, or `in_background` (SnapshotMode).
  Status FillStaging(SaveState& s, const std::function<Status()>& sync, bool defer_sync,
                     bool in_background);
  // Gives filled chunks to the shard writer (encode, write); each block returns when written.
  void HandOver(SaveState& s, std::vector<FilledChunk>& filled);
  // The chunks a deferred snapshot left: waits for their copies, then hands them over.
  Status HandOverDeferred(SaveState& s);
  // ckpt/commit.cc: the background part of a save, run on `background`.
  Status RunBackground(SaveState& s);
  Status PublishRecord(SaveState& s);
  Status Coordinate(SaveState& s);   // rank 0: steps 3-10 of the commit protocol
  Status AwaitCommit(SaveState& s);  // other ranks: the outcome rank 0 published
  void WaitForAllRecords(SaveState& s, uint64_t deadline);  // rank 0, before removing a failed save
  void WaitForBackground();
};

}  // namespace ds::ckpt
