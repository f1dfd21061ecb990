// Saving and resuming the trainer through the checkpoint library (ckpt/writer.h, reader.h).
//
// What a checkpoint holds, per parameter <p> (fp32, the parameter's shape, each element written
// by exactly one rank as ckpt::PartitionForRank says for the stage):
//   master/<p>, optim/exp_avg/<p>, optim/exp_avg_sq/<p>
// The weights in the training precision are not stored: they are the master rounded. Blobs:
//   trainer/state         (rank 0) JSON, engine/train/state_blob.h: step, Adam's step count,
//                         skipped steps, the loss scaler, the sampler's position, the
//                         schedule's origin
//   rng/rank-<r>          (each rank) LibTorch's CPU generator state
// and the manifest carries the resolved config and {"loss", "eval_loss"} for `best`.
// Resuming reads the slices this rank holds in its *current* layout, whatever layout wrote them.
#include <ATen/ATen.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>

#include "ckpt/catalog.h"
#include "ckpt/gc.h"
#include "ckpt/reader.h"
#include "engine/runtime_info.h"
#include "engine/train/internal/trainer_state.h"
#include "engine/train/state_blob.h"
#include "io/log.h"
#include "io/units.h"

#if DS_TORCH_HAS_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

namespace ds::engine {
namespace {

using Json = nlohmann::ordered_json;

constexpr const char* kBuffers[] = {"master/", "optim/exp_avg/", "optim/exp_avg_sq/"};

std::string Shape(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

#if DS_TORCH_HAS_CUDA
// "cuda" without an index means the current device.
c10::DeviceIndex CudaIndex(const torch::Device& d) {
  return d.has_index() ? d.index() : c10::cuda::current_device();
}

// Starts the copy of bytes [offset, offset + dst.size()) of `src` (a flat fp32 slice on a GPU)
// into `dst` (page-locked staging) on `stream`, from any host thread. A snapshot makes
// thousands of these (one per chunk part), so they go straight to cudaMemcpyAsync.
Status StartDeviceCopy(const at::Tensor& src, uint64_t offset, std::span<std::byte> dst,
                       const c10::cuda::CUDAStream& stream) {
  c10::cuda::CUDAGuard on_device(stream.device_index());  // the writer's threads start on GPU 0
  const auto* from = static_cast<const std::byte*>(src.const_data_ptr()) + offset;
  const cudaError_t e =
      cudaMemcpyAsync(dst.data(), from, dst.size(), cudaMemcpyDeviceToHost, stream.stream());
  if (e != cudaSuccess) {
    return Status::IOError(std::string("copying a slice for the snapshot: ") +
                           cudaGetErrorString(e));
  }
  return Status::OK();
}
#endif

// A piece of a parameter (elements [begin, end) of this rank's part of it) as slices of the
// whole tensor: boxes of it with tensor parallelism, else flat ranges of it. `at` is where
// each slice's elements start, counted from the piece's first element.
struct PieceSlice {
  std::vector<int64_t> box_offset, box_length;  // empty: the whole tensor
  uint64_t flat_begin = 0, flat_end = 0;
  int64_t at = 0;
};

std::vector<PieceSlice> SlicesOf(const TensorPlace& place, const ParallelState& par,
                                 const ZeroPiece& p) {
  const uint32_t tp = static_cast<uint32_t>(par.tp);
  const std::vector<ckpt::TpBox> boxes =
      ckpt::TpBoxes(place.shape, place.split, tp, static_cast<uint32_t>(par.tp_rank));
  const bool cut = tp > 1 && place.split.dim >= 0;  // else one box, the whole tensor
  std::vector<PieceSlice> out;
  for (const ckpt::TpBoxRange& r :
       ckpt::TpLocalRange(boxes, static_cast<uint64_t>(p.begin), static_cast<uint64_t>(p.end))) {
    PieceSlice s;
    if (cut) {
      s.box_offset = boxes[r.box].offset;
      s.box_length = boxes[r.box].length;
    }
    s.flat_begin = r.flat_begin;
    s.flat_end = r.flat_end;
    s.at = static_cast<int64_t>(r.local_offset) - p.begin;
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace

// The side stream of a snapshot's device-to-host copies, the event recorded after them, and
// the optional GPU stage. The copies start after an event on the compute stream (the optimizer
// step that produced the state, or the copy into the stage) and run while the next steps do.
// Reading the live state, the next optimizer step waits for `done` on the device
// (WaitForSnapshotCopies); reading the stage, nothing waits. The host never waits for them;
// the writer's background thread does, before it encodes.
struct Trainer::Impl::SnapshotCopies {
#if DS_TORCH_HAS_CUDA
  explicit SnapshotCopies(const torch::Device& d)
      : stream(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, CudaIndex(d))) {}
  c10::cuda::CUDAStream stream;
  at::cuda::CUDAEvent done;
#endif
  bool pending = false;  // the next optimizer step must wait for `done`
  bool decided = false;  // whether to stage on the device was decided (at the first save)
  std::vector<at::Tensor> device_stage;  // checkpoint.device_staging: a GPU copy of the buffers
};

// The three buffers a snapshot reads: the live ones, or (checkpoint.device_staging) their copy
// in GPU memory, made now on the compute stream: training then waits only for a device-to-device
// copy, and the copy to the host reads the stage while later steps run.
std::vector<at::Tensor> Trainer::Impl::SnapshotSources() {
  std::vector<at::Tensor> live = {zero->master(), zero->exp_avg(), zero->exp_avg_sq()};
#if DS_TORCH_HAS_CUDA
  if (!live[0].is_cuda()) return live;  // offloaded: the state is on the host already
  SnapshotCopies& c = *snapshot_copies;
  if (!c.decided) {
    c.decided = true;
    const std::string& mode = config.checkpoint.device_staging;
    uint64_t need = 0;
    for (const at::Tensor& t : live) need += t.nbytes();
    size_t free = 0, total = 0;
    (void)cudaMemGetInfo(&free, &total);
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(CudaIndex(device));
    const auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    const uint64_t cached = static_cast<uint64_t>(stats.reserved_bytes[agg].current -
                                                  stats.allocated_bytes[agg].current);
    const uint64_t room = free + cached;
    const bool fits = room >= need + (uint64_t{1} << 30);
    if (mode == "true" || (mode == "auto" && fits)) {
      try {
        for (const at::Tensor& t : live) c.device_stage.push_back(at::empty_like(t));
      } catch (const c10::Error& e) {
        c.device_stage.clear();
        io::LogWarning("rank " + std::to_string(options.rank) +
                       ": checkpoint.device_staging: " + io::FormatBytes(need) +
                       " of GPU memory could not be had (" + e.what_without_backtrace() +
                       "); snapshots copy to the host directly (set it to false to not try)");
      }
    }
    if (options.rank == 0) {
      io::LogInfo("checkpoint.device_staging " + mode + ": " +
                  (c.device_stage.empty()
                       ? "snapshots copy to the host directly (" + io::FormatBytes(need) +
                             " needed, " + io::FormatBytes(room) + " free on the GPU)"
                       : "snapshots stage " + io::FormatBytes(need) + " on the GPU first"));
    }
  }
  if (c.device_stage.empty()) return live;
  for (size_t b = 0; b < live.size(); ++b) c.device_stage[b].copy_(live[b], /*non_blocking=*/true);
  return c.device_stage;
#else
  return live;
#endif
}

void Trainer::Impl::WaitForSnapshotCopies() {
#if DS_TORCH_HAS_CUDA
  if (snapshot_copies && snapshot_copies->pending) {
    snapshot_copies->done.block(c10::cuda::getCurrentCUDAStream(CudaIndex(device)));
    snapshot_copies->pending = false;
  }
#endif
}

// ---- saving

Status Trainer::Impl::SetupCheckpoints() {
  save_dir = CheckpointDir(config);
  last_save_us = env->NowMicros();
  if (options.rank == 0 && config.checkpoint.enabled) {
    // Saves that killed runs left half written (.tmp-*) are reclaimed now, before this run's
    // first save could be starting; a live save of another job holds its locks and stays.
    Result<ckpt::GcReport> r = ckpt::ReclaimAbandonedSaves(env, save_dir);
    if (!r.ok()) {
      io::LogWarning("not reclaiming abandoned saves in " + save_dir + ": " + r.status().message());
    } else if (!r->removed.empty()) {
      io::LogInfo("reclaimed " + std::to_string(r->removed.size()) +
                  " save(s) that killed runs "
                  "left in " +
                  save_dir + " (" + io::FormatBytes(r->freed_bytes) + ")");
    }
  }
  return Status::OK();
}

// checkpoint.staging_bytes "auto": room for this rank's whole snapshot (every piece of the
// three buffers, each chunk's block rounded up to the 4 KiB direct-I/O alignment, and two
// chunks spare), so a save stalls training only for the copy. At most half the host's memory:
// beyond that the snapshot waits for the disk instead (checkpoints.md, backpressure).
uint64_t Trainer::Impl::AutoStagingBytes(uint64_t chunk_bytes) const {
  uint64_t state = 0;
  for (const ZeroPiece& p : zero->SavePieces()) state += static_cast<uint64_t>(p.end - p.begin);
  state *= 3 * sizeof(float);
  const uint64_t chunks = state / chunk_bytes + 1;
  const uint64_t want = state + chunks * 4096 + 2 * chunk_bytes;
  const uint64_t host = PhysicalMemoryBytes();
  const uint64_t half = host > 0 ? host / 2 : want;
  return std::max<uint64_t>(2 * chunk_bytes, std::min(want, half));
}

Status Trainer::Impl::CreateWriter() {
  const CheckpointConfig& k = config.checkpoint;
  ckpt::WriterOptions w;
  w.save_dir = save_dir;
  w.rank = static_cast<uint32_t>(options.rank);
  w.world_size = static_cast<uint32_t>(options.world_size);
  if (comm != nullptr) {
    ckpt_store = comm->NewCheckpointStore();
    w.store = ckpt_store.get();
  }
  DS_ASSIGN_OR_RETURN(w.codec, fmt::CodecFromName(k.codec));
  w.zstd_level = k.zstd_level;
  w.chunk_bytes = k.chunk_bytes;
  w.encode_threads = k.encode_threads;
  w.encode_nice = k.background_nice;
  w.staging_bytes = k.staging_bytes != 0 ? k.staging_bytes : AutoStagingBytes(k.chunk_bytes);
  w.timeout_micros = static_cast<uint64_t>(config.comms.timeout_s) * 1'000'000;
  w.when_busy = k.when_busy == "skip" ? ckpt::WriterOptions::WhenBusy::kSkip
                                      : ckpt::WriterOptions::WhenBusy::kWait;
  w.retention.keep_last = k.keep_last;
  w.retention.keep_best = k.keep_best;
  w.retention.keep_every = k.keep_every;
  w.retention.max_bytes = k.max_bytes;
  w.retention.best_metric = k.best_metric;
  w.retention.best_mode = k.best_mode;
  if (options.rank == 0 && w.retention.any()) {
    // Checkpoints of later steps than this run started after were not written by it (an
    // older run's, or what --fresh-start began beside): its retention keeps them.
    ckpt::Catalog catalog(env, save_dir);
    Result<std::vector<ckpt::CheckpointEntry>> there = catalog.List();
    if (!there.ok() && !there.status().IsNotFound()) return there.status();
    for (const ckpt::CheckpointEntry& e :
         there.ok() ? *there : std::vector<ckpt::CheckpointEntry>()) {
      if (e.step > started_after_step) w.retention.protect_tags.push_back(e.tag);
    }
    if (!w.retention.protect_tags.empty()) {
      io::LogInfo("retention keeps the " + std::to_string(w.retention.protect_tags.size()) +
                  " checkpoint(s) of " + save_dir + " after step " +
                  std::to_string(started_after_step) + " that this run did not write (from " +
                  w.retention.protect_tags.front() + ")");
    }
  }
  w.best_metric = k.best_metric;
  w.best_mode = k.best_mode;
#if DS_TORCH_HAS_CUDA
  if (device.is_cuda()) {
    // Page-locked staging: the snapshot's device-to-host copies run at PCIe speed, async.
    w.on_staging_allocate = [](std::byte* p, size_t n) {
      (void)cudaHostRegister(p, n, cudaHostRegisterDefault);
    };
    w.on_staging_release = [](std::byte* p, size_t) { (void)cudaHostUnregister(p); };
  }
#endif
  DS_ASSIGN_OR_RETURN(writer, ckpt::CheckpointWriter::Create(env, w));
  return Status::OK();
}

std::string Trainer::Impl::StateJson() const {
  TrainerState s;
  s.step = step;
  s.adam_steps = zero->adam_steps();
  s.skipped = skipped;
  s.schedule_origin = schedule_origin;
  s.loss_scaler = scaler->state();
  s.sampler = sampler->state().Serialize();
  s.world_size = options.world_size;
  s.zero_stage = config.zero.stage;
  return s.ToJson();
}

// Every split tensor of the whole model (all stages: rank 0 writes it), for dsckpt reshard.
std::string Trainer::Impl::TpSplitsJson() const {
  ckpt::TpSplits splits;
  if (auto* gpt = dynamic_cast<GptImpl*>(model.get())) {
    for (const auto& [name, split] : gpt->tp_splits()) {
      for (const char* buffer : kBuffers) splits[buffer + name] = split;
    }
  }
  return ckpt::EncodeTpSplits(splits);
}

std::string Trainer::Impl::FreeSpace() const {
  Result<io::SpaceInfo> fs = env->StatFs(save_dir);
  return fs.ok() ? "; " + io::FormatBytes(fs->available_bytes) + " free on " + save_dir : "";
}

void Trainer::Impl::ReapSave(bool wait) {
  if (!in_flight || (!wait && !in_flight->Done())) return;
  Status s = in_flight->Wait();
  ckpt::SaveStats st = in_flight->stats();
  in_flight.reset();
  if (s.ok()) {
    ++saves;
    failed_in_a_row = 0;
    last_checkpoint = st.path;
    committed_path = st.path;
    committed_step = in_flight_step;
    last_save_stats = st;
    if (options.rank == 0) {
      // Retention (deleting what keep_last and the other rules drop) runs after the checkpoint
      // is durable, and only frees space: said apart.
      char line[320], retention[64] = "";
      if (st.retention_seconds >= 0.005) {
        std::snprintf(retention, sizeof retention, ", then %.2f s removing older checkpoints",
                      st.retention_seconds);
      }
      std::snprintf(line, sizeof line,
                    "checkpoint %s: %s stored, durable after %.2f s (training waited %.3f s)%s",
                    st.path.c_str(), io::FormatBytes(st.stored_bytes).c_str(), st.durable_seconds,
                    st.snapshot_seconds, retention);
      io::LogInfo(line);
    }
    return;
  }
  NoteFailedSave(in_flight_step, s);
}

void Trainer::Impl::NoteFailedSave(int64_t at_step, const Status& s) {
  ++failed_saves;
  ++failed_in_a_row;
  last_save_error = s.message();
  const int64_t max = config.checkpoint.max_failed_saves;
  io::LogWarning(
      "rank " + std::to_string(options.rank) + ": checkpoint of step " + std::to_string(at_step) +
      " failed: " + s.message() + FreeSpace() +
      ". Committed checkpoints are untouched; training goes on and the next save "
      "tries again (" +
      std::to_string(failed_in_a_row) + " failed in a row" +
      (max > 0 ? "; training stops at checkpoint.max_failed_saves = " + std::to_string(max) : "") +
      ")");
}

Status Trainer::Impl::CheckSavesFailing(bool final) const {
  const int64_t max = config.checkpoint.max_failed_saves;
  const bool final_failed = final && failed_in_a_row > 0;
  if (!final_failed && (max == 0 || failed_in_a_row < max)) return Status::OK();
  const std::string what =
      final_failed ? "the final checkpoint (step " + std::to_string(step) + ") failed"
                   : std::to_string(failed_in_a_row) +
                         " checkpoint saves in a row failed (checkpoint.max_failed_saves: " +
                         std::to_string(max) + ")";
  const std::string lost = committed_step >= 0
                               ? "the newest committed checkpoint is " + committed_path +
                                     " (step " + std::to_string(committed_step) + "): steps " +
                                     std::to_string(committed_step + 1) + "-" +
                                     std::to_string(step) + " are not saved"
                               : "no checkpoint holds this run's state: steps 1-" +
                                     std::to_string(step) + " are not saved";
  return Status::IOError(what + ", the last with: " + last_save_error + FreeSpace() + "; " + lost +
                         ". Fix the cause (free space on " + save_dir +
                         "?) and resume with --resume latest");
}

Status Trainer::Impl::Save(const std::string& reason) {
  DS_RETURN_IF_ERROR(Flush());
  if (config.checkpoint.when_busy == "skip" && in_flight) {
    // Skip on every rank or none: any rank still writing makes all skip.
    torch::Tensor busy =
        torch::tensor({in_flight->Done() ? 0.0f : 1.0f},
                      torch::TensorOptions().dtype(torch::kFloat32).device(device));
    if (comm != nullptr) DS_RETURN_IF_ERROR(comm->AllReduce(busy, "checkpoint busy flags"));
    if (busy.cpu().item<float>() > 0) {
      if (options.rank == 0) {
        io::LogInfo(
            "checkpoint of step " + std::to_string(step) + " (" + reason +
            ") skipped: the previous one is still being written (checkpoint.when_busy: skip)");
      }
      return Status::OK();
    }
  }
  ReapSave(/*wait=*/true);  // the previous save: the writer takes one at a time
  if (config.checkpoint.max_failed_saves > 0) {
    // Stop on every rank or none: any rank that has seen too many failures stops them all.
    const int64_t max = config.checkpoint.max_failed_saves;
    if (comm != nullptr) {
      torch::Tensor n = torch::tensor({failed_in_a_row >= max ? 1.0f : 0.0f},
                                      torch::TensorOptions().dtype(torch::kFloat32).device(device));
      DS_RETURN_IF_ERROR(comm->AllReduce(n, "failed save flags"));
      if (n.cpu().item<float>() > 0 && failed_in_a_row < max) {
        failed_in_a_row = max;
        if (last_save_error.empty()) last_save_error = "another rank's save failed";
      }
    }
    DS_RETURN_IF_ERROR(CheckSavesFailing(/*final=*/false));
  }
  auto failed = [&](const Status& s) {
    NoteFailedSave(step, Status(s.code(), "it did not start (" + reason + "): " + s.message()));
    return Status::OK();
  };
  if (writer == nullptr) {
    if (Status s = CreateWriter(); !s.ok()) return failed(s);
  }
  ckpt::SaveRequest r;
  r.step = step;
  r.zero_stage = static_cast<uint32_t>(config.zero.stage);
  r.partition_alignment = zero->alignment();
  r.tp_degree = static_cast<uint32_t>(par.tp);
  r.pp_degree = static_cast<uint32_t>(par.pp);
  r.config_json = config.resolved.dump();
  Json metrics = {{"loss", recent_loss}};
  if (last_eval && last_eval_step == step) metrics["eval_loss"] = *last_eval;  // never a stale one
  r.metrics_json = metrics.dump();
  if (Status s = writer->Begin(r); !s.ok()) return failed(s);
#if DS_TORCH_HAS_CUDA
  if (device.is_cuda() && !snapshot_copies)
    snapshot_copies = std::make_shared<SnapshotCopies>(device);
#endif
  std::vector<at::Tensor> buffers;
  try {
    buffers = SnapshotSources();
  } catch (const c10::Error& e) {
    return failed(Status::IOError(std::string("staging the state on the GPU: ") +
                                  e.what_without_backtrace()));
  }
  for (const ZeroPiece& p : zero->SavePieces()) {
    const TensorPlace& place = places[static_cast<size_t>(p.tensor)];
    if (!place.owned) continue;  // another rank saves its copy
    for (const PieceSlice& piece : SlicesOf(place, par, p)) {
      for (int b = 0; b < 3; ++b) {
        ckpt::SaveSlice s;
        s.name = kBuffers[b] + place.name;
        s.dtype = fmt::DType::kF32;
        s.shape = place.shape;
        s.box_offset = piece.box_offset;
        s.box_length = piece.box_length;
        s.flat_begin = piece.flat_begin;
        s.flat_end = piece.flat_end;
        at::Tensor src = buffers[b].narrow(0, p.offset + piece.at,
                                           static_cast<int64_t>(piece.flat_end - piece.flat_begin));
        if (src.is_cpu()) {
          s.source.host = std::span<const std::byte>(static_cast<const std::byte*>(src.data_ptr()),
                                                     src.nbytes());
        } else {
#if DS_TORCH_HAS_CUDA
          s.source.fill = [src, side = snapshot_copies->stream](uint64_t offset,
                                                                std::span<std::byte> dst) {
            return StartDeviceCopy(src, offset, dst, side);
          };
#else
          return failed(Status::InvalidArgument("no checkpoint from " + src.device().str()));
#endif
        }
        if (Status st = writer->AddSlice(std::move(s)); !st.ok()) return failed(st);
      }
    }
  }
  if (options.rank == 0) {
    if (Status st = writer->AddBlob(kTrainerStateBlob, StateJson()); !st.ok()) return failed(st);
    if (Status st = writer->AddBlob(ckpt::kTpSplitsBlob, TpSplitsJson()); !st.ok())
      return failed(st);
  }
  at::Tensor rng = at::detail::getDefaultCPUGenerator().get_state();
  std::string rng_bytes(static_cast<const char*>(rng.data_ptr()),
                        static_cast<size_t>(rng.nbytes()));
  if (Status st = writer->AddBlob("rng/rank-" + std::to_string(options.rank), rng_bytes);
      !st.ok()) {
    return failed(st);
  }
  // On a GPU: the copies wait for the state (an event after the last optimizer step, or after
  // the copy into the device stage), run on the side stream, and the writer's background
  // thread waits for them. From a device stage they are even started there (a stream takes
  // ~1000 copies in flight; beyond that starting one waits for an earlier to finish, which
  // would hold the training thread for most of the copy).
  std::function<Status()> sync;
  auto mode = ckpt::CheckpointWriter::SnapshotMode::kNow;
#if DS_TORCH_HAS_CUDA
  if (device.is_cuda()) {
    c10::cuda::CUDAStream side = snapshot_copies->stream;
    at::cuda::CUDAEvent state_ready;
    state_ready.record(c10::cuda::getCurrentCUDAStream(CudaIndex(device)));
    state_ready.block(side);
    sync = [side]() -> Status {
      try {
        side.synchronize();
        return Status::OK();
      } catch (const c10::Error& e) {
        return Status::IOError(std::string("device-to-host copy: ") + e.what_without_backtrace());
      }
    };
    const bool staged = !snapshot_copies->device_stage.empty();
    mode = staged ? ckpt::CheckpointWriter::SnapshotMode::kInBackground
                  : ckpt::CheckpointWriter::SnapshotMode::kFinishInBackground;
  }
#endif
  Result<ckpt::SaveStats> snap = writer->Snapshot(sync, mode);
#if DS_TORCH_HAS_CUDA
  if (device.is_cuda() && snapshot_copies->device_stage.empty()) {
    // The next optimizer step rewrites what these copies read: it waits for them (on the GPU).
    snapshot_copies->done.record(snapshot_copies->stream);
    snapshot_copies->pending = true;
  }
#endif
  if (!snap.ok()) return failed(snap.status());
  last_stall_s = snap->snapshot_seconds;
  in_flight = writer->Commit();
  in_flight_step = step;
  last_saved_step = step;
  last_save_us = env->NowMicros();
  if (options.rank == 0) {
    char line[160];
    std::snprintf(line, sizeof line,
                  "checkpoint of step %lld (%s): snapshot took %.3f s, writing in the background",
                  static_cast<long long>(step), reason.c_str(), snap->snapshot_seconds);
    io::LogInfo(line);
  }
  return Status::OK();
}

Status Trainer::SaveCheckpoint(const std::string& reason) { return impl_->Save(reason); }

void Trainer::WaitForSaves() { impl_->ReapSave(/*wait=*/true); }
std::optional<ckpt::SaveStats> Trainer::last_save() const { return impl_->last_save_stats; }

// ---- resuming

Result<std::string> Trainer::Resume(const ResumeOptions& r) {
  Impl& t = *impl_;
  ckpt::Catalog catalog(t.env, t.save_dir);
  std::string note;
  Result<std::string> path = catalog.Resolve(r.from, &note);
  if (!note.empty() && t.options.rank == 0) io::LogWarning("--resume " + r.from + ": " + note);
  if (!path.ok()) {
    if (r.if_any && path.status().code() == StatusCode::kNotFound) {
      return std::string("no checkpoint in " + t.save_dir + " yet: starting fresh");
    }
    return Status(path.status().code(), "--resume " + r.from + ": " + path.status().message());
  }
  Result<std::string> loaded = t.Load(*path, r);
  if (loaded.ok() || !r.fallback || loaded.status().code() != StatusCode::kCorruption)
    return loaded;
  // --fallback: the newest older checkpoint that loads.
  io::LogWarning(loaded.status().message() + "; --fallback: trying older checkpoints");
  DS_ASSIGN_OR_RETURN(std::vector<ckpt::CheckpointEntry> all, catalog.List());
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    if (it->path == *path || !it->problem.empty()) continue;
    Result<std::string> older = t.Load(it->path, r);
    if (older.ok()) return *older + " (fell back from the damaged " + *path + ")";
    io::LogWarning(older.status().message());
  }
  return Status(loaded.status().code(), loaded.status().message() + "; no older checkpoint in " +
                                            t.save_dir + " loads either");
}

Result<std::string> Trainer::Impl::Load(const std::string& path, const ResumeOptions& r) {
  WaitForSnapshotCopies();  // loading rewrites the state a snapshot may still be copying
  ckpt::ReaderOptions ro;
  DS_ASSIGN_OR_RETURN(std::unique_ptr<ckpt::CheckpointReader> reader,
                      ckpt::CheckpointReader::Open(env, path, ro));
  const fmt::Manifest& m = reader->manifest();
  const bool optimizer = r.load_optimizer && !r.module_only;
  // The model must match: every parameter present with its (whole) shape.
  for (size_t i = 0; i < places.size(); ++i) {
    const std::vector<int64_t>& shape = places[i].shape;
    for (int b = 0; b < (optimizer ? 3 : 1); ++b) {
      const std::string name = kBuffers[b] + places[i].name;
      const int64_t at = m.FindTensor(name);
      if (at < 0) {
        return Status::InvalidArgument(
            path + " does not match the model: it has no tensor " + name +
            (b > 0 ? " (resume with --no-load-optimizer to start Adam afresh)" : "") +
            " (the model's parameter " + std::to_string(i) + " of " +
            std::to_string(places.size()) + ")");
      }
      if (m.tensors[static_cast<size_t>(at)].shape != shape) {
        return Status::InvalidArgument(path + " does not match the model: tensor " + name + " is " +
                                       Shape(m.tensors[static_cast<size_t>(at)].shape) +
                                       " there, " + Shape(shape) +
                                       " in the model (check model.* against the config the "
                                       "checkpoint was saved with: dsckpt inspect " +
                                       path + ")");
      }
    }
  }
  // This rank's slices, in its current layout, into host buffers first, so that a read that
  // fails half way (a damaged chunk) leaves the trainer's state as it was.
  const std::vector<ZeroPiece> pieces = zero->HeldPieces();
  const at::Tensor targets[] = {zero->master(), zero->exp_avg(), zero->exp_avg_sq()};
  std::vector<at::Tensor> host;
  std::vector<ckpt::ReadRequest> requests;
  for (int b = 0; b < (optimizer ? 3 : 1); ++b) {
    at::Tensor h = at::zeros({targets[b].numel()}, at::kFloat);
    for (const ZeroPiece& p : pieces) {
      const TensorPlace& place = places[static_cast<size_t>(p.tensor)];
      for (const PieceSlice& piece : SlicesOf(place, par, p)) {
        ckpt::ReadRequest q;
        q.slice.tensor = kBuffers[b] + place.name;
        q.slice.box_offset = piece.box_offset;
        q.slice.box_length = piece.box_length;
        q.slice.flat_begin = piece.flat_begin;
        q.slice.flat_end = piece.flat_end;
        q.dst = std::span<std::byte>(
            reinterpret_cast<std::byte*>(h.data_ptr<float>() + p.offset + piece.at),
            static_cast<size_t>(piece.flat_end - piece.flat_begin) * sizeof(float));
        requests.push_back(std::move(q));
      }
    }
    host.push_back(h);
  }
  DS_ASSIGN_OR_RETURN(ckpt::ReadStats rs, reader->Read(requests));
  // Everything read is checked before anything is changed: a damaged blob leaves the trainer
  // as it was (and --fallback can go on to an older checkpoint).
  TrainerState state;
  SamplerState sampler_state;
  std::optional<at::Tensor> rng_state;
  if (!r.module_only) {
    DS_ASSIGN_OR_RETURN(std::string blob, reader->ReadBlob(kTrainerStateBlob));
    DS_ASSIGN_OR_RETURN(state, TrainerState::FromJson(blob, path));
    DS_ASSIGN_OR_RETURN(sampler_state, SamplerState::Deserialize(state.sampler));
    if (Result<std::string> rng = reader->ReadBlob("rng/rank-" + std::to_string(options.rank));
        rng.ok()) {
      rng_state = at::empty({static_cast<int64_t>(rng->size())}, at::kByte);
      std::memcpy(rng_state->data_ptr(), rng->data(), rng->size());
    }
  }
  try {
    torch::NoGradGuard no_grad;
    for (size_t b = 0; b < host.size(); ++b) targets[b].copy_(host[b]);
    if (!optimizer) {
      zero->exp_avg().zero_();
      zero->exp_avg_sq().zero_();
    }
  } catch (const c10::Error& e) {
    return Status::IOError(std::string("placing the loaded state on ") + device.str() + ": " +
                           e.what_without_backtrace());
  }
  DS_RETURN_IF_ERROR(zero->Publish());
  if (!r.module_only) {
    DS_RETURN_IF_ERROR(sampler->Restore(sampler_state)) << "while resuming from " << path;
    step = state.step;
    skipped = state.skipped;
    zero->set_adam_steps(optimizer ? state.adam_steps : 0);
    schedule_origin = r.load_scheduler ? state.schedule_origin : step;
    scaler->Restore(state.loss_scaler);
    if (rng_state) {
      at::Generator gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      try {
        gen.set_state(*rng_state);
      } catch (const c10::Error& e) {
        return Status::Corruption(path + ": blob rng/rank-" + std::to_string(options.rank) +
                                  " is not a generator state (" + e.what_without_backtrace() + ")");
      }
    }
  }
  last_saved_step = step;
  if (!r.module_only) {
    started_after_step = step;
    committed_step = step;
    committed_path = path;
  }
  first_loss.reset();
  const fmt::ManifestInfo& info = m.info;
  std::string line = "resumed from " + path + " at step " + std::to_string(step);
  if (info.world_size != static_cast<uint32_t>(options.world_size) ||
      info.zero_stage != static_cast<uint32_t>(config.zero.stage) ||
      info.tp_degree != static_cast<uint32_t>(par.tp) ||
      info.pp_degree != static_cast<uint32_t>(par.pp)) {
    auto parallel = [](uint32_t tp, uint32_t pp) {
      return tp * pp > 1 ? ", TP " + std::to_string(tp) + " x PP " + std::to_string(pp) : "";
    };
    line += " (saved by " + std::to_string(info.world_size) + " rank(s) at ZeRO stage " +
            std::to_string(info.zero_stage) + parallel(info.tp_degree, info.pp_degree) +
            ", loaded into " + std::to_string(options.world_size) + " at stage " +
            std::to_string(config.zero.stage) +
            parallel(static_cast<uint32_t>(par.tp), static_cast<uint32_t>(par.pp)) +
            ": each rank read its own slices, no reshard needed)";
  }
  if (r.module_only)
    line += "; weights only (--load-module-only): a fresh run from them";
  else if (!optimizer)
    line += "; Adam starts afresh (--no-load-optimizer)";
  if (!r.load_scheduler && !r.module_only)
    line += "; the LR schedule restarts (--no-load-scheduler)";
  char secs[32];
  std::snprintf(secs, sizeof(secs), "%.2f s", rs.seconds);
  line += "; read " + io::FormatBytes(rs.stored_bytes) + " in " + secs + " (" +
          io::FormatRate(rs.seconds > 0 ? static_cast<double>(rs.copied_bytes) / rs.seconds : 0) +
          " of state), every chunk checksummed";
  return line;
}

}  // namespace ds::engine
