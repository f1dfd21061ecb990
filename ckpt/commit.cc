// The background part of a save, and the commit protocol.
//
// The commit protocol. A crash at any instant leaves every committed checkpoint and both
// pointers as they were, and at most one .tmp-* directory (which `dsckpt gc` removes):
//   step 1  each rank writes its chunks into <save_dir>/.tmp-<tag>-<nonce>/rank-R.dss and
//           fsyncs the file (fmt::ShardWriter::Finish);
//   step 2  each rank publishes its record (tensors, slices, chunks, file size, blobs), or its
//           failure, to the KeyValueStore, and drops its .writer-R.lock;
//   step 3  rank 0 waits, bounded, for every record; a rank that reports a failure, or none in
//           time, fails the save by its number;
//   step 4  rank 0 takes the catalog lock, picks the final tag (never replacing a committed
//           checkpoint), merges and validates the manifest, writes manifest.h5 and fsyncs it;
//   step 5  rank 0 removes the writer lock files and fsyncs the temp directory;
//   step 6  rank 0 renames the temp directory to <save_dir>/<tag>;
//   step 7  rank 0 fsyncs <save_dir>: from here the checkpoint exists;
//   step 8  `latest` is replaced (temp file, fsync, rename, fsync dir), and `best` if the
//           metric improved;
//   step 9  retention runs, after the commit and never before;
//   step 10 rank 0 releases the lock and publishes the outcome; the other ranks' handles end.
// Nothing is deleted before the rename of what replaces it, and nothing outside the temp
// directory changes before step 6. A save that fails removes its temp directory.
#include "ckpt/commit.h"

#include <nlohmann/json.hpp>

#include "ckpt/writer_impl.h"
#include "io/log.h"

namespace ds::ckpt {
namespace {

std::string RecordKey(const SaveState& s, uint32_t rank) {
  return s.key_prefix + "rank/" + std::to_string(rank);
}

std::string OutcomeKey(const SaveState& s) { return s.key_prefix + "outcome"; }

// A tag of save_dir that no committed checkpoint uses: `tag`, else `tag.1`, `tag.2`, ...
Result<std::string> FreeTag(io::Env* env, const std::string& dir, const std::string& tag) {
  for (int n = 0;; ++n) {
    std::string t = n == 0 ? tag : tag + "." + std::to_string(n);
    DS_ASSIGN_OR_RETURN(bool taken, env->Exists(io::JoinPath(dir, t)));
    if (!taken) return t;
  }
}

double Seconds(uint64_t micros) { return static_cast<double>(micros) / 1e6; }

// The shard writer's and the write queue's account of step 1.
void AddWriteStats(SaveState& s, const fmt::ShardWriteStats& w, const io::IoStats& io) {
  if (w.last_write_micros > w.first_write_micros) {
    s.stats.write_seconds = Seconds(w.last_write_micros - w.first_write_micros);
  }
  s.stats.shard_sync_seconds = Seconds(w.sync_micros);
  s.stats.encode_seconds = Seconds(w.encode_micros);
  s.stats.encoder_buffer_wait_seconds = Seconds(w.buffer_wait_micros);
  s.stats.encoder_queue_wait_seconds = Seconds(w.queue_wait_micros);
  s.stats.io_busy_seconds = Seconds(io.busy_micros);
  s.stats.io_mean_in_flight = io.mean_in_flight();
  s.stats.io_full_seconds = Seconds(io.full_micros);
  s.stats.io_writes = io.requests;
}

}  // namespace

// A failed save's temp directory is removed only once every rank has reported (or the wait for
// them has run out): a rank still starting or writing may create files in it, and removing the
// directory under it fails (not empty) and leaves it behind.
void CheckpointWriter::Impl::WaitForAllRecords(SaveState& s, uint64_t deadline) {
  uint64_t sleep = 500;
  for (uint32_t r = 0; r < options.world_size;) {
    Result<std::optional<std::string>> v = store->Get(RecordKey(s, r));
    if (!v.ok()) return;
    if (v->has_value()) {
      ++r;
      continue;
    }
    if (env->NowMicros() >= deadline) return;
    env->SleepForMicros(sleep);
    sleep = std::min<uint64_t>(sleep * 2, 20000);
  }
}

Status CheckpointWriter::Impl::RunBackground(SaveState& s) {
  Status st = PublishRecord(s);  // steps 1-2
  if (options.rank == 0) {
    const uint64_t deadline = env->NowMicros() + options.timeout_micros;
    Status failure = st.ok() ? Coordinate(s) : st;  // steps 3-10
    if (!failure.ok() && !s.committed) {
      WaitForAllRecords(s, deadline);
      (void)env->RemoveAll(s.temp_dir);  // best effort; `dsckpt gc` removes what remains
    }
    s.writer_lock.reset();
    if (failure.ok()) return failure;
    if (!s.outcome_published) {
      nlohmann::json out = {{"ok", false}, {"error", failure.message()}};
      (void)store->Set(OutcomeKey(s), out.dump());
    }
    return failure;
  }
  if (!st.ok()) return st;
  return AwaitCommit(s);
}

// Steps 1 and 2.
Status CheckpointWriter::Impl::PublishRecord(SaveState& s) {
  Status st = s.aborted;
  Result<fmt::ShardSummary> summary = s.shard->Finish();  // step 1
  if (!st.ok()) {
    s.record.ok = false;
    s.record.code = st.code();
    s.record.error = st.message();
  } else if (summary.ok()) {
    s.record.file.size = summary->file_size;
    for (const fmt::ChunkRecord& c : summary->chunks) {
      s.record.chunks.push_back({0, c.offset, c.stored_len, c.raw_len, c.codec, c.elem_size,
                                 c.raw_xxh64, c.stored_xxh64});
    }
    s.stats.stored_bytes = summary->stored_bytes;
    AddWriteStats(s, summary->stats, aio->stats() - s.io_before);
  } else {
    st = summary.status();
    s.record.ok = false;
    s.record.code = st.code();
    s.record.error = st.message();
  }
  s.shard.reset();
  s.record_begin_micros = env->NowMicros();
  Status pub = store->Set(RecordKey(s, options.rank), EncodeRankRecord(s.record));  // step 2
  // Rank 0 keeps its lock until the temp dir is renamed or removed: between step 2 and the
  // catalog lock of step 4 it is the only sign for gc that the save is live.
  if (options.rank != 0) s.writer_lock.reset();
  if (st.ok() && !pub.ok()) st = pub.WithContext("publishing the save record");
  return st;
}

// Steps 3 to 10, on rank 0.
Status CheckpointWriter::Impl::Coordinate(SaveState& s) {
  const std::string& dir = options.save_dir;
  // step 3: every rank's record, failing fast on a reported failure.
  std::vector<RankRecord> records(options.world_size);
  std::vector<bool> have(options.world_size, false);
  const uint64_t deadline = env->NowMicros() + options.timeout_micros;
  uint64_t sleep = 500;
  for (size_t got = 0; got < options.world_size;) {
    for (uint32_t r = 0; r < options.world_size; ++r) {
      if (have[r]) continue;
      DS_ASSIGN_OR_RETURN(std::optional<std::string> v, store->Get(RecordKey(s, r)));
      if (!v) continue;
      DS_ASSIGN_OR_RETURN(records[r], DecodeRankRecord(*v, r));
      if (!records[r].ok) {
        const StatusCode code =
            records[r].code == StatusCode::kOk ? StatusCode::kIOError : records[r].code;
        return Status(code, "save " + s.tag + " failed on rank " + std::to_string(r) + ": " +
                                records[r].error);
      }
      have[r] = true;
      ++got;
    }
    if (got == options.world_size) break;
    if (env->NowMicros() >= deadline) {
      std::string missing;
      for (uint32_t r = 0; r < options.world_size; ++r) {
        if (!have[r]) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
      }
      return Status::Unavailable(
          "save " + s.tag + ": rank(s) " + missing + " never reported their part within " +
          std::to_string(options.timeout_micros / 1000000) + " s (dead or hung?)");
    }
    env->SleepForMicros(sleep);
    sleep = std::min<uint64_t>(sleep * 2, 20000);
  }

  fmt::Manifest m;
  m.info.step = s.request.step;
  m.info.world_size = options.world_size;
  m.info.zero_stage = s.request.zero_stage;
  m.info.tp_degree = s.request.tp_degree;
  m.info.pp_degree = s.request.pp_degree;
  m.info.partition_alignment = s.request.partition_alignment;
  m.info.created_micros = env->WallTimeMicros();
  m.info.writer_version = options.writer_version;
  m.info.config_json = s.request.config_json;
  m.info.metrics_json = s.request.metrics_json;
  DS_RETURN_IF_ERROR(MergeRankRecords(records, &m)) << "save " << s.tag;
  CommitOptions co;
  co.update_latest = options.update_latest;
  co.best_metric = options.best_metric;
  co.best_mode = options.best_mode;
  co.retention = options.retention;
  co.lock_timeout_micros = options.timeout_micros;
  co.writer_locks = options.world_size;
  Status error;
  CommitResult c = CommitCheckpointDir(env, dir, s.temp_dir, s.tag, std::move(m), co, &error);
  s.committed = c.committed;
  DS_RETURN_IF_ERROR(error);
  s.stats.durable_seconds = Seconds(c.durable_micros - s.begin_micros);
  s.stats.commit_seconds = Seconds(c.durable_micros - s.record_begin_micros);
  s.stats.retention_seconds = Seconds(c.retention_micros);
  s.stats.tag = c.tag;
  s.stats.path = c.path;
  // step 10
  nlohmann::json out = {{"ok", true}, {"tag", c.tag}, {"path", c.path}};
  DS_RETURN_IF_ERROR(store->Set(OutcomeKey(s), out.dump()));
  s.outcome_published = true;
  if (!c.after.ok()) {
    // The checkpoint is committed; only the pointers or retention failed.
    return c.after.WithContext("checkpoint " + c.tag + " is committed, but afterwards");
  }
  return Status::OK();
}

CommitResult CommitCheckpointDir(io::Env* env, const std::string& dir, const std::string& temp_dir,
                                 const std::string& wanted_tag, fmt::Manifest m,
                                 const CommitOptions& options, Status* error) {
  CommitResult c;
  auto fail = [&](Status s) {
    *error = std::move(s);
    return c;
  };
  // step 4
  Catalog catalog(env, dir);
  Result<std::unique_ptr<io::FileLock>> lock = catalog.Lock(options.lock_timeout_micros);
  if (!lock.ok()) return fail(lock.status());
  Result<std::string> tag = FreeTag(env, dir, wanted_tag);
  if (!tag.ok()) return fail(tag.status());
  if (*tag != wanted_tag) {
    io::LogWarning("checkpoint " + wanted_tag + " already exists in " + dir +
                   "; this one becomes " + *tag + " (nothing committed is ever replaced)");
  }
  c.tag = *tag;
  m.info.tag = c.tag;
  Status st = fmt::ValidateManifest(m, "checkpoint " + c.tag);
  if (st.ok()) st = fmt::WriteManifest(env, io::JoinPath(temp_dir, fmt::kManifestFileName), m);
  if (!st.ok()) return fail(st);
  // step 5
  for (uint32_t r = 0; r < options.writer_locks; ++r) {
    Status rm = env->RemoveFile(io::JoinPath(temp_dir, ".writer-" + std::to_string(r) + ".lock"));
    if (!rm.ok() && !rm.IsNotFound()) return fail(rm);
  }
  st = env->SyncDir(temp_dir);
  if (!st.ok()) return fail(st);
  // step 6
  c.path = io::JoinPath(dir, c.tag);
  st = env->Rename(temp_dir, c.path);
  if (!st.ok()) return fail(st.WithContext("committing " + c.tag));
  c.committed = true;  // a failure from here on must not remove it
  // step 7
  st = env->SyncDir(dir);
  if (!st.ok()) return fail(st.WithContext("committing " + c.tag));
  // step 8
  if (options.update_latest) c.after = catalog.SetLatest(c.tag);
  if (c.after.ok() && !options.best_metric.empty()) {
    if (auto v = MetricValue(m.info.metrics_json, options.best_metric)) {
      Result<bool> moved = catalog.OfferBest(c.tag, options.best_metric, *v, options.best_mode);
      if (!moved.ok()) c.after = moved.status();
    }
  }
  c.durable_micros = env->NowMicros();
  // step 9
  if (c.after.ok() && options.retention.any()) {
    RetentionPolicy p = options.retention;
    if (p.best_metric.empty()) p.best_metric = options.best_metric;
    Result<RetentionResult> r = catalog.ApplyRetention(p, false);
    if (!r.ok()) c.after = r.status();
  }
  c.retention_micros = env->NowMicros() - c.durable_micros;
  return c;
}

Status CheckpointWriter::Impl::AwaitCommit(SaveState& s) {
  const std::string key = OutcomeKey(s);
  // Rank 0 may itself wait a full timeout for a missing rank before it reports: wait longer.
  Status st = store->Wait(std::vector<std::string>{key}, 2 * options.timeout_micros);
  if (!st.ok()) {
    return Status::Unavailable("save " + s.tag + ": rank 0 did not commit it (" + st.message() +
                               "); is rank 0 alive?");
  }
  DS_ASSIGN_OR_RETURN(std::optional<std::string> v, store->Get(key));
  nlohmann::json out = nlohmann::json::parse(v.value_or(""), nullptr, false);
  if (out.is_discarded() || !out.is_object()) {
    return Status::Corruption("save " + s.tag + ": unreadable outcome from rank 0");
  }
  if (!out.value("ok", false)) {
    return Status::IOError("save " + s.tag + " failed: " + out.value("error", std::string()));
  }
  s.stats.tag = out.value("tag", s.tag);
  s.stats.path = out.value("path", std::string());
  return Status::OK();
}

}  // namespace ds::ckpt
