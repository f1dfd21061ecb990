#include "engine/train/checkpoint_agent.h"

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>

#include "ckpt/catalog.h"
#include "ckpt/export.h"
#include "ckpt/gc.h"
#include "ckpt/reader.h"
#include "engine/comm/comm.h"
#include "engine/runtime_info.h"
#include "engine/torch_status.h"
#include "engine/train/state_load.h"
#include "engine/zero/zero.h"
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

#if DS_TORCH_HAS_CUDA
// "cuda" without an index means the current device.
c10::DeviceIndex CudaIndex(const c10::Device& d) {
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

// A flag every rank contributes to (as 0 or 1) and that is true when any rank's is: a small
// all-reduce when there are several ranks.
Result<bool> AnyRank(Comm* comm, const c10::Device& device, bool mine, const std::string& what) {
  if (comm == nullptr) return mine;
  torch::Tensor flag = torch::tensor({mine ? 1.0f : 0.0f},
                                     torch::TensorOptions().dtype(torch::kFloat32).device(device));
  DS_RETURN_IF_ERROR(comm->AllReduce(flag, what));
  return flag.cpu().item<float>() > 0;
}

// What a resume loaded, for the log: where from, at which step, from which layout into which,
// what was left out, and how fast it read.
std::string ResumeLine(const std::string& path, int64_t step, const fmt::ManifestInfo& info,
                       const ckpt::ReadStats& rs, const ResumeOptions& r, int world_size,
                       int zero_stage, int tp, int pp) {
  const bool optimizer = r.load_optimizer && !r.module_only;
  std::string line = "resumed from " + path + " at step " + std::to_string(step);
  if (info.world_size != static_cast<uint32_t>(world_size) ||
      info.zero_stage != static_cast<uint32_t>(zero_stage) ||
      info.tp_degree != static_cast<uint32_t>(tp) || info.pp_degree != static_cast<uint32_t>(pp)) {
    auto parallel = [](uint32_t t, uint32_t p) {
      return t * p > 1 ? ", TP " + std::to_string(t) + " x PP " + std::to_string(p) : "";
    };
    line += " (saved by " + std::to_string(info.world_size) + " rank(s) at ZeRO stage " +
            std::to_string(info.zero_stage) + parallel(info.tp_degree, info.pp_degree) +
            ", loaded into " + std::to_string(world_size) + " at stage " +
            std::to_string(zero_stage) +
            parallel(static_cast<uint32_t>(tp), static_cast<uint32_t>(pp)) +
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

}  // namespace

// The side stream of a snapshot's device-to-host copies, the event recorded after them, and
// the optional GPU stage. The copies start after an event on the compute stream (the optimizer
// step that produced the state, or the copy into the stage) and run while the next steps do.
// Reading the live state, the next optimizer step waits for `done` on the device
// (WaitForSnapshotCopies); reading the stage, nothing waits. The host never waits for them;
// the writer's background thread does, before it encodes.
struct SnapshotCopies {
#if DS_TORCH_HAS_CUDA
  explicit SnapshotCopies(const c10::Device& d)
      : stream(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, CudaIndex(d))) {}
  c10::cuda::CUDAStream stream;
  at::cuda::CUDAEvent done;
#endif
  bool pending = false;  // the next optimizer step must wait for `done`
  bool decided = false;  // whether to stage on the device was decided (at the first save)
  std::vector<at::Tensor> device_stage;  // checkpoint.device_staging: a GPU copy of the buffers
};

struct CheckpointAgent::Impl {
  CheckpointAgentOptions o;
  const Config& config;
  std::string save_dir;  // config's, or <output_dir>/checkpoints

  std::unique_ptr<ckpt::KeyValueStore> store;      // several ranks: over the rendezvous store
  std::unique_ptr<ckpt::CheckpointWriter> writer;  // made at the first save
  std::shared_ptr<ckpt::SaveHandle> in_flight;
  int64_t in_flight_step = 0;
  int64_t last_saved_step = -1;
  uint64_t last_save_us = 0;
  double last_stall_s = -1;  // the last snapshot's stall, for the next step's metrics
  int64_t saves = 0, failed_saves = 0;
  int64_t failed_in_a_row = 0;  // checkpoint.max_failed_saves stops training after so many
  std::string last_save_error;  // the newest failure's message
  std::string last_checkpoint;  // the newest checkpoint this run committed
  // The newest checkpoint this run's state is in: the one it resumed from, then each it
  // committed (-1 and empty: none yet). What a failure loses is the steps after it.
  int64_t committed_step = -1;
  std::string committed_path;
  // The step this run resumed from, -1 when it started fresh: retention never deletes a
  // checkpoint of a later step that was there before this run (ckpt::RetentionPolicy).
  int64_t started_after_step = -1;
  std::optional<ckpt::SaveStats> last_save_stats;
  // On a GPU a snapshot's device-to-host copies run on a side stream and overlap the next
  // forward and backward; the next optimizer step waits for them.
  std::unique_ptr<SnapshotCopies> copies;

  explicit Impl(CheckpointAgentOptions options)
      : o(std::move(options)), config(*o.config), save_dir(CheckpointDir(config)) {}

  std::string FreeSpace() const;
  uint64_t AutoStagingBytes(uint64_t chunk_bytes) const;
  Status CreateWriter();
  void NoteFailed(int64_t at_step, const Status& s);
  Status Failing(int64_t step, bool final) const;  // CheckFailing
  Result<bool> SkipBecauseBusy(int64_t step, const std::string& reason);
  Status StopIfFailing(int64_t step);
  std::vector<at::Tensor> SnapshotSources();
  void WaitForCopies();  // WaitForSnapshotCopies
  Status AddState(const std::vector<at::Tensor>& buffers);
  Status AddBlobs(const TrainerState& state);
  Result<ckpt::SaveStats> Snapshot();
  Status SaveNow(const SavePoint& point, const std::string& reason);
  Result<Restored> Load(const std::string& path, const ResumeOptions& r, int64_t step);
};

CheckpointAgent::CheckpointAgent(CheckpointAgentOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {
  impl_->last_save_us = impl_->o.env->NowMicros();
}

CheckpointAgent::~CheckpointAgent() { Reap(/*wait=*/true); }

const std::string& CheckpointAgent::save_dir() const { return impl_->save_dir; }
int64_t CheckpointAgent::last_saved_step() const { return impl_->last_saved_step; }
int64_t CheckpointAgent::saves() const { return impl_->saves; }
int64_t CheckpointAgent::failed_saves() const { return impl_->failed_saves; }
const std::string& CheckpointAgent::last_checkpoint() const { return impl_->last_checkpoint; }
std::optional<ckpt::SaveStats> CheckpointAgent::last_save_stats() const {
  return impl_->last_save_stats;
}
double CheckpointAgent::TakeStall() { return std::exchange(impl_->last_stall_s, -1.0); }

void CheckpointAgent::ReclaimAbandonedSaves() {
  const Impl& a = *impl_;
  if (a.o.rank != 0 || !a.config.checkpoint.enabled) return;
  // Saves that killed runs left half written (.tmp-*) are reclaimed now, before this run's
  // first save could be starting; a live save of another job holds its locks and stays.
  Result<ckpt::GcReport> r = ckpt::ReclaimAbandonedSaves(a.o.env, a.save_dir);
  if (!r.ok()) {
    io::LogWarning("not reclaiming abandoned saves in " + a.save_dir + ": " + r.status().message());
  } else if (!r->removed.empty()) {
    io::LogInfo("reclaimed " + std::to_string(r->removed.size()) +
                " save(s) that killed runs left in " + a.save_dir + " (" +
                io::FormatBytes(r->freed_bytes) + ")");
  }
}

bool CheckpointAgent::Due(int64_t step) const {
  const CheckpointConfig& k = impl_->config.checkpoint;
  const bool by_steps = k.save_interval_steps > 0 && step % k.save_interval_steps == 0;
  const bool by_time = k.save_interval_minutes > 0 &&
                       impl_->o.env->NowMicros() - impl_->last_save_us >=
                           static_cast<uint64_t>(k.save_interval_minutes) * 60'000'000;
  return k.enabled && (by_steps || by_time);
}

// ---- saving

std::string CheckpointAgent::Impl::FreeSpace() const {
  Result<io::SpaceInfo> fs = o.env->StatFs(save_dir);
  return fs.ok() ? "; " + io::FormatBytes(fs->available_bytes) + " free on " + save_dir : "";
}

// checkpoint.staging_bytes "auto": room for this rank's whole snapshot (every piece of the
// three buffers, each chunk's block rounded up to the 4 KiB direct-I/O alignment, and two
// chunks spare), so a save stalls training only for the copy. At most half the host's memory:
// beyond that the snapshot waits for the disk instead (checkpoints.md, backpressure).
uint64_t CheckpointAgent::Impl::AutoStagingBytes(uint64_t chunk_bytes) const {
  uint64_t state = 0;
  for (const ZeroPiece& p : o.zero->SavePieces()) state += static_cast<uint64_t>(p.end - p.begin);
  state *= kStateBuffers * sizeof(float);
  const uint64_t chunks = state / chunk_bytes + 1;
  const uint64_t want = state + chunks * 4096 + 2 * chunk_bytes;
  const uint64_t host = PhysicalMemoryBytes();
  const uint64_t half = host > 0 ? host / 2 : want;
  return std::max<uint64_t>(2 * chunk_bytes, std::min(want, half));
}

Status CheckpointAgent::Impl::CreateWriter() {
  const CheckpointConfig& k = config.checkpoint;
  ckpt::WriterOptions w;
  w.save_dir = save_dir;
  w.rank = static_cast<uint32_t>(o.rank);
  w.world_size = static_cast<uint32_t>(o.world_size);
  if (o.comm != nullptr) {
    store = o.comm->NewCheckpointStore();
    w.store = store.get();
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
  if (o.rank == 0 && w.retention.any()) {
    // Checkpoints of later steps than this run started after were not written by it (an
    // older run's, or what --fresh-start began beside): its retention keeps them.
    ckpt::Catalog catalog(o.env, save_dir);
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
  if (o.device.is_cuda()) {
    // Page-locked staging: the snapshot's device-to-host copies run at PCIe speed, async.
    w.on_staging_allocate = [](std::byte* p, size_t n) {
      (void)cudaHostRegister(p, n, cudaHostRegisterDefault);
    };
    w.on_staging_release = [](std::byte* p, size_t) { (void)cudaHostUnregister(p); };
  }
#endif
  DS_ASSIGN_OR_RETURN(writer, ckpt::CheckpointWriter::Create(o.env, w));
  return Status::OK();
}

void CheckpointAgent::Reap(bool wait) {
  Impl& a = *impl_;
  if (!a.in_flight || (!wait && !a.in_flight->Done())) return;
  Status s = a.in_flight->Wait();
  ckpt::SaveStats st = a.in_flight->stats();
  a.in_flight.reset();
  if (!s.ok()) {
    a.NoteFailed(a.in_flight_step, s);
    return;
  }
  ++a.saves;
  a.failed_in_a_row = 0;
  a.last_checkpoint = st.path;
  a.committed_path = st.path;
  a.committed_step = a.in_flight_step;
  a.last_save_stats = st;
  if (a.o.rank == 0) {
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
}

void CheckpointAgent::Impl::NoteFailed(int64_t at_step, const Status& s) {
  ++failed_saves;
  ++failed_in_a_row;
  last_save_error = s.message();
  const int64_t max = config.checkpoint.max_failed_saves;
  io::LogWarning(
      "rank " + std::to_string(o.rank) + ": checkpoint of step " + std::to_string(at_step) +
      " failed: " + s.message() + FreeSpace() +
      ". Committed checkpoints are untouched; training goes on and the next save "
      "tries again (" +
      std::to_string(failed_in_a_row) + " failed in a row" +
      (max > 0 ? "; training stops at checkpoint.max_failed_saves = " + std::to_string(max) : "") +
      ")");
}

Status CheckpointAgent::CheckFailing(int64_t step, bool final) const {
  return impl_->Failing(step, final);
}

Status CheckpointAgent::Impl::Failing(int64_t step, bool final) const {
  const Impl& a = *this;
  const int64_t max = a.config.checkpoint.max_failed_saves;
  const bool final_failed = final && a.failed_in_a_row > 0;
  if (!final_failed && (max == 0 || a.failed_in_a_row < max)) return Status::OK();
  const std::string what =
      final_failed ? "the final checkpoint (step " + std::to_string(step) + ") failed"
                   : std::to_string(a.failed_in_a_row) +
                         " checkpoint saves in a row failed (checkpoint.max_failed_saves: " +
                         std::to_string(max) + ")";
  const std::string lost = a.committed_step >= 0
                               ? "the newest committed checkpoint is " + a.committed_path +
                                     " (step " + std::to_string(a.committed_step) + "): steps " +
                                     std::to_string(a.committed_step + 1) + "-" +
                                     std::to_string(step) + " are not saved"
                               : "no checkpoint holds this run's state: steps 1-" +
                                     std::to_string(step) + " are not saved";
  return Status::IOError(what + ", the last with: " + a.last_save_error + a.FreeSpace() + "; " +
                         lost + ". Fix the cause (free space on " + a.save_dir +
                         "?) and resume with --resume latest");
}

// checkpoint.when_busy "skip": skip on every rank or none (any rank still writing makes all
// skip).
Result<bool> CheckpointAgent::Impl::SkipBecauseBusy(int64_t step, const std::string& reason) {
  if (config.checkpoint.when_busy != "skip" || !in_flight) return false;
  DS_ASSIGN_OR_RETURN(bool busy,
                      AnyRank(o.comm, o.device, !in_flight->Done(), "checkpoint busy flags"));
  if (busy && o.rank == 0) {
    io::LogInfo("checkpoint of step " + std::to_string(step) + " (" + reason +
                ") skipped: the previous one is still being written (checkpoint.when_busy: skip)");
  }
  return busy;
}

// checkpoint.max_failed_saves: stop on every rank or none (any rank that has seen too many
// failures stops them all).
Status CheckpointAgent::Impl::StopIfFailing(int64_t step) {
  const int64_t max = config.checkpoint.max_failed_saves;
  if (max <= 0) return Status::OK();
  DS_ASSIGN_OR_RETURN(bool any,
                      AnyRank(o.comm, o.device, failed_in_a_row >= max, "failed save flags"));
  if (any && failed_in_a_row < max) {
    failed_in_a_row = max;
    if (last_save_error.empty()) last_save_error = "another rank's save failed";
  }
  return Failing(step, /*final=*/false);
}

Status CheckpointAgent::Save(const SavePoint& point, const std::string& reason) {
  Impl& a = *impl_;
  DS_ASSIGN_OR_RETURN(bool skip, a.SkipBecauseBusy(point.step, reason));
  if (skip) return Status::OK();
  Reap(/*wait=*/true);  // the previous save: the writer takes one at a time
  DS_RETURN_IF_ERROR(a.StopIfFailing(point.step));
  if (Status s = a.SaveNow(point, reason); !s.ok()) {
    a.NoteFailed(point.step, Status(s.code(), "it did not start (" + reason + "): " + s.message()));
  }
  return Status::OK();
}

// The three buffers a snapshot reads: the live ones, or (checkpoint.device_staging) their copy
// in GPU memory, made now on the compute stream: training then waits only for a device-to-device
// copy, and the copy to the host reads the stage while later steps run.
std::vector<at::Tensor> CheckpointAgent::Impl::SnapshotSources() {
  if (o.zero->swapped()) return {};  // AddState reads the swap files
  std::vector<at::Tensor> live = {o.zero->master(), o.zero->exp_avg(), o.zero->exp_avg_sq()};
#if DS_TORCH_HAS_CUDA
  if (!live[0].is_cuda()) return live;  // offloaded: the state is on the host already
  SnapshotCopies& c = *copies;
  if (!c.decided) {
    c.decided = true;
    const std::string& mode = config.checkpoint.device_staging;
    uint64_t need = 0;
    for (const at::Tensor& t : live) need += t.nbytes();
    size_t free = 0, total = 0;
    (void)cudaMemGetInfo(&free, &total);
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(CudaIndex(o.device));
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
        io::LogWarning("rank " + std::to_string(o.rank) +
                       ": checkpoint.device_staging: " + io::FormatBytes(need) +
                       " of GPU memory could not be had (" + TorchMessage(e) +
                       "); snapshots copy to the host directly (set it to false to not try)");
      }
    }
    if (o.rank == 0) {
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

void CheckpointAgent::WaitForSnapshotCopies() { impl_->WaitForCopies(); }

void CheckpointAgent::Impl::WaitForCopies() {
#if DS_TORCH_HAS_CUDA
  if (copies && copies->pending) {
    copies->done.block(c10::cuda::getCurrentCUDAStream(CudaIndex(o.device)));
    copies->pending = false;
  }
#endif
}

// Every slice of the plan of each buffer, read from `buffers` (on the host: directly; on a GPU:
// copied on the side stream as the writer asks for each part).
Status CheckpointAgent::Impl::AddState(const std::vector<at::Tensor>& buffers) {
  const std::vector<TensorPlace>& places = o.plan.places();
  for (const StateSlice& slice : o.plan.SaveSlices(o.zero->SavePieces())) {
    for (int b = 0; b < kStateBuffers; ++b) {
      ckpt::SaveSlice s;
      s.name = o.plan.TensorName(b, slice.tensor);
      s.dtype = fmt::DType::kF32;
      s.shape = places[static_cast<size_t>(slice.tensor)].shape;
      s.box_offset = slice.box_offset;
      s.box_length = slice.box_length;
      s.flat_begin = slice.flat_begin;
      s.flat_end = slice.flat_end;
      if (o.zero->swapped()) {
        // From the NVMe swap files, read as the writer asks for each part (during Snapshot,
        // which returns before the next optimizer step rewrites them).
        s.source.fill = [zero = o.zero, b, at = slice.buffer_offset](uint64_t offset,
                                                                     std::span<std::byte> dst) {
          if (offset % sizeof(float) != 0 || dst.size() % sizeof(float) != 0) {
            return Status::InvalidArgument("a swapped slice is read by whole floats");
          }
          return zero->ReadState(
              b, at + static_cast<int64_t>(offset / sizeof(float)),
              std::span<float>(reinterpret_cast<float*>(dst.data()), dst.size() / sizeof(float)));
        };
        DS_RETURN_IF_ERROR(writer->AddSlice(std::move(s)));
        continue;
      }
      at::Tensor src =
          buffers[static_cast<size_t>(b)].narrow(0, slice.buffer_offset, slice.numel());
      if (src.is_cpu()) {
        s.source.host =
            std::span<const std::byte>(static_cast<const std::byte*>(src.data_ptr()), src.nbytes());
      } else {
#if DS_TORCH_HAS_CUDA
        s.source.fill = [src, side = copies->stream](uint64_t offset, std::span<std::byte> dst) {
          return StartDeviceCopy(src, offset, dst, side);
        };
#else
        return Status::InvalidArgument("no checkpoint from " + src.device().str());
#endif
      }
      DS_RETURN_IF_ERROR(writer->AddSlice(std::move(s)));
    }
  }
  return Status::OK();
}

Status CheckpointAgent::Impl::AddBlobs(const TrainerState& state) {
  if (o.rank == 0) {
    DS_RETURN_IF_ERROR(writer->AddBlob(kTrainerStateBlob, state.ToJson()));
    DS_RETURN_IF_ERROR(writer->AddBlob(ckpt::kTpSplitsBlob, ckpt::EncodeTpSplits(o.tp_splits)));
    if (!config.model.hf_config_json.empty()) {
      // The Hugging Face folder's config.json, as read at start (the folder may change or go
      // away while training): `dsckpt export --format hf` writes it back beside the weights,
      // which carry transformers' names.
      DS_RETURN_IF_ERROR(writer->AddBlob(ckpt::kHfConfigBlob, config.model.hf_config_json));
    }
  }
  at::Tensor rng = at::detail::getDefaultCPUGenerator().get_state();
  std::string rng_bytes(static_cast<const char*>(rng.data_ptr()),
                        static_cast<size_t>(rng.nbytes()));
  return writer->AddBlob("rng/rank-" + std::to_string(o.rank), rng_bytes);
}

// On a GPU: the copies wait for the state (an event after the last optimizer step, or after the
// copy into the device stage), run on the side stream, and the writer's background thread waits
// for them. From a device stage they are even started there (a stream takes ~1000 copies in
// flight; beyond that starting one waits for an earlier to finish, which would hold the
// training thread for most of the copy).
Result<ckpt::SaveStats> CheckpointAgent::Impl::Snapshot() {
  std::function<Status()> sync;
  auto mode = ckpt::CheckpointWriter::SnapshotMode::kNow;
#if DS_TORCH_HAS_CUDA
  if (o.device.is_cuda()) {
    c10::cuda::CUDAStream side = copies->stream;
    at::cuda::CUDAEvent state_ready;
    state_ready.record(c10::cuda::getCurrentCUDAStream(CudaIndex(o.device)));
    state_ready.block(side);
    sync = [side]() -> Status {
      return TorchCall("device-to-host copy", [&] { side.synchronize(); });
    };
    const bool staged = !copies->device_stage.empty();
    mode = staged ? ckpt::CheckpointWriter::SnapshotMode::kInBackground
                  : ckpt::CheckpointWriter::SnapshotMode::kFinishInBackground;
  }
#endif
  Result<ckpt::SaveStats> snap = writer->Snapshot(sync, mode);
#if DS_TORCH_HAS_CUDA
  if (o.device.is_cuda() && copies->device_stage.empty()) {
    // The next optimizer step rewrites what these copies read: it waits for them (on the GPU).
    copies->done.record(copies->stream);
    copies->pending = true;
  }
#endif
  return snap;
}

// One save: begin, the state's slices and the blobs, the snapshot, and the commit in the
// background. An error here is a save that did not start (the caller counts it).
Status CheckpointAgent::Impl::SaveNow(const SavePoint& point, const std::string& reason) {
  if (writer == nullptr) DS_RETURN_IF_ERROR(CreateWriter());
  ckpt::SaveRequest r;
  r.step = point.step;
  r.zero_stage = static_cast<uint32_t>(config.zero.stage);
  r.partition_alignment = o.zero->alignment();
  r.tp_degree = static_cast<uint32_t>(o.tp);
  r.pp_degree = static_cast<uint32_t>(o.pp);
  r.config_json = config.resolved.dump();
  Json metrics = {{"loss", point.loss}};
  if (point.eval_loss) metrics["eval_loss"] = *point.eval_loss;
  r.metrics_json = metrics.dump();
  DS_RETURN_IF_ERROR(writer->Begin(r));
#if DS_TORCH_HAS_CUDA
  if (o.device.is_cuda() && !copies) copies = std::make_unique<SnapshotCopies>(o.device);
#endif
  std::vector<at::Tensor> buffers;
  DS_RETURN_IF_ERROR(
      TorchCall("staging the state on the GPU", [&] { buffers = SnapshotSources(); }));
  DS_RETURN_IF_ERROR(AddState(buffers));
  DS_RETURN_IF_ERROR(AddBlobs(point.state));
  DS_ASSIGN_OR_RETURN(ckpt::SaveStats snap, Snapshot());
  last_stall_s = snap.snapshot_seconds;
  in_flight = writer->Commit();
  in_flight_step = point.step;
  last_saved_step = point.step;
  last_save_us = o.env->NowMicros();
  if (o.rank == 0) {
    char line[160];
    std::snprintf(line, sizeof line,
                  "checkpoint of step %lld (%s): snapshot took %.3f s, writing in the background",
                  static_cast<long long>(point.step), reason.c_str(), snap.snapshot_seconds);
    io::LogInfo(line);
  }
  return Status::OK();
}

// ---- resuming

Result<Restored> CheckpointAgent::Resume(const ResumeOptions& r, int64_t step) {
  Impl& a = *impl_;
  ckpt::Catalog catalog(a.o.env, a.save_dir);
  std::string note;
  Result<std::string> path = catalog.Resolve(r.from, &note);
  if (!note.empty() && a.o.rank == 0) io::LogWarning("--resume " + r.from + ": " + note);
  if (!path.ok()) {
    if (r.if_any && path.status().code() == StatusCode::kNotFound) {
      Restored none;
      none.line = "no checkpoint in " + a.save_dir + " yet: starting fresh";
      return none;
    }
    return Status(path.status().code(), "--resume " + r.from + ": " + path.status().message());
  }
  Result<Restored> loaded = a.Load(*path, r, step);
  if (loaded.ok() || !r.fallback || loaded.status().code() != StatusCode::kCorruption)
    return loaded;
  // --fallback: the newest older checkpoint that loads.
  io::LogWarning(loaded.status().message() + "; --fallback: trying older checkpoints");
  DS_ASSIGN_OR_RETURN(std::vector<ckpt::CheckpointEntry> all, catalog.List());
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    if (it->path == *path || !it->problem.empty()) continue;
    Result<Restored> older = a.Load(it->path, r, step);
    if (older.ok()) {
      older->line += " (fell back from the damaged " + *path + ")";
      return older;
    }
    io::LogWarning(older.status().message());
  }
  return Status(loaded.status().code(), loaded.status().message() + "; no older checkpoint in " +
                                            a.save_dir + " loads either");
}

Result<Restored> CheckpointAgent::Impl::Load(const std::string& path, const ResumeOptions& r,
                                             int64_t step) {
  WaitForCopies();  // loading rewrites the state a snapshot may still be copying
  DS_ASSIGN_OR_RETURN(std::unique_ptr<ckpt::CheckpointReader> reader,
                      ckpt::CheckpointReader::Open(o.env, path, ckpt::ReaderOptions()));
  const fmt::Manifest& m = reader->manifest();
  const bool optimizer = r.load_optimizer && !r.module_only;
  const int buffers = optimizer ? kStateBuffers : 1;
  DS_RETURN_IF_ERROR(o.plan.CheckMatches(m, buffers, path));
  // This rank's slices, in its current layout, into host buffers first, so that a read that
  // fails half way (a damaged chunk) leaves the trainer's state as it was.
  // (Swapped to NVMe: streamed into the swap files window by window instead; the files hold no
  // state worth keeping across a failed load, which ends the run or falls back to another.)
  const at::Tensor targets[] = {o.zero->master(), o.zero->exp_avg(), o.zero->exp_avg_sq()};
  const std::vector<StateSlice> slices = o.plan.LoadSlices(o.zero->HeldPieces());
  const bool direct = !o.zero->swapped() && o.zero->values_pending() && targets[0].is_cpu();
  std::vector<at::Tensor> host;
  ckpt::ReadStats rs;
  if (o.zero->swapped()) {
    DS_ASSIGN_OR_RETURN(rs, StreamIntoSwap(*reader, o.plan, slices, buffers, o.zero));
  } else {
    std::vector<ckpt::ReadRequest> requests;
    for (int b = 0; b < buffers; ++b) {
      // Not zero-filled first (1.3B: 15.6 GB of writes): the reads fill every slice, and only
      // the partition padding no slice covers is zeroed. State offloaded to host memory that
      // holds nothing yet (a resumed run's first load) is read into directly: a second copy
      // of it would double the host memory a large offloaded model needs.
      at::Tensor h = direct ? targets[b] : at::empty({o.zero->state_numel()}, at::kFloat);
      ZeroWhereNoSlice(h, slices);
      AppendStateRequests(o.plan, b, slices, 0, h.numel(), h.data_ptr<float>(), &requests);
      host.push_back(h);
    }
    DS_ASSIGN_OR_RETURN(rs, reader->Read(requests));
  }
  // Everything read is checked before anything is changed: a damaged blob leaves the trainer
  // as it was (and --fallback can go on to an older checkpoint).
  Restored out;
  out.path = path;
  std::optional<at::Tensor> rng_state;
  if (!r.module_only) {
    DS_ASSIGN_OR_RETURN(std::string blob, reader->ReadBlob(kTrainerStateBlob));
    DS_ASSIGN_OR_RETURN(out.state, TrainerState::FromJson(blob, path));
    DS_ASSIGN_OR_RETURN(out.sampler, SamplerState::Deserialize(out.state->sampler));
    if (Result<std::string> rng = reader->ReadBlob("rng/rank-" + std::to_string(o.rank));
        rng.ok()) {
      rng_state = at::empty({static_cast<int64_t>(rng->size())}, at::kByte);
      std::memcpy(rng_state->data_ptr(), rng->data(), rng->size());
    }
  }
  if (o.zero->swapped()) {
    if (!optimizer) DS_RETURN_IF_ERROR(ZeroSwappedMoments(o.zero));
  } else {
    DS_RETURN_IF_ERROR(TorchCall("placing the loaded state on " + o.device.str(), [&] {
      torch::NoGradGuard no_grad;
      for (size_t b = 0; b < host.size() && !direct; ++b) targets[b].copy_(host[b]);
      if (!optimizer) {
        o.zero->exp_avg().zero_();
        o.zero->exp_avg_sq().zero_();
      }
    }));
  }
  DS_RETURN_IF_ERROR(o.zero->Publish());
  if (out.state) {
    o.zero->set_adam_steps(optimizer ? out.state->adam_steps : 0);
    step = out.state->step;
    if (rng_state) {
      at::Generator gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      try {
        gen.set_state(*rng_state);
      } catch (const c10::Error& e) {
        return Status::Corruption(path + ": blob rng/rank-" + std::to_string(o.rank) +
                                  " is not a generator state (" + TorchMessage(e) + ")");
      }
    }
    started_after_step = step;
    committed_step = step;
    committed_path = path;
  }
  last_saved_step = step;

  out.line = ResumeLine(path, step, m.info, rs, r, o.world_size, config.zero.stage, o.tp, o.pp);
  return out;
}

}  // namespace ds::engine
