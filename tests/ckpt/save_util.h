// Helpers for save/load tests: saving known tensors from N in-process ranks laid out by the
// ZeRO partition function (optionally split in tensor-parallel row blocks), and loading them
// back at any layout.
#pragma once

#include <algorithm>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "ckpt/partition.h"
#include "ckpt/reader.h"
#include "ckpt/writer.h"
#include "testing/checkpoint_builder.h"

namespace ds::ckpt {

struct Layout {
  uint32_t world = 1;
  uint32_t stage = 0;
  uint32_t tp = 1;  // row blocks of 2-D tensors; ranks r % tp own block r % tp
};

// The slices rank `rank` owns under `layout`, written here independently of ckpt/reshard.cc's
// LayoutSlices so that tests can compare the two: each partition group is partitioned over the
// data-parallel ranks; with TP, 2-D tensors are split into `tp` row blocks (tp must divide
// their rows) and other tensors are written by tensor-parallel rank 0.
inline std::vector<WantedSlice> SlicesOf(const std::vector<testing::TestTensor>& tensors,
                                         const Layout& l, uint32_t rank) {
  std::vector<WantedSlice> out;
  const uint32_t dp = l.world / l.tp, dp_rank = rank / l.tp, tp_rank = rank % l.tp;
  // Each partition group (the name before its last '/') is its own flat buffer.
  std::vector<std::string> groups;
  for (const auto& t : tensors) {
    const size_t slash = t.name.rfind('/');
    std::string g = slash == std::string::npos ? "" : t.name.substr(0, slash);
    if (std::find(groups.begin(), groups.end(), g) == groups.end()) groups.push_back(g);
  }
  for (const std::string& g : groups) {
    std::vector<size_t> members;
    std::vector<uint64_t> numels;
    std::vector<std::pair<std::vector<int64_t>, std::vector<int64_t>>> boxes;
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto& t = tensors[i];
      const size_t slash = t.name.rfind('/');
      if ((slash == std::string::npos ? "" : t.name.substr(0, slash)) != g) continue;
      std::vector<int64_t> off(t.shape.size(), 0), len = t.shape;
      if (l.tp > 1 && t.shape.size() == 2) {  // row blocks
        len[0] = t.shape[0] / l.tp;
        off[0] = len[0] * tp_rank;
      }
      members.push_back(i);
      boxes.push_back({off, len});
      numels.push_back(*fmt::NumElements(len));
    }
    auto ranges = PartitionForRank(numels, {dp, l.stage, 1}, dp_rank);
    for (const FlatRange& r : *ranges) {
      const auto& t = tensors[members[r.tensor]];
      if (l.tp > 1 && t.shape.size() != 2 && tp_rank != 0) continue;  // TP rank 0 writes these
      out.push_back({t.name, boxes[r.tensor].first, boxes[r.tensor].second, r.begin, r.end});
    }
  }
  return out;
}

// The bytes of `w` (a box + flat range of tensor `t`), gathered from the full tensor.
inline std::vector<std::byte> Gather(const testing::TestTensor& t, const WantedSlice& w) {
  const size_t es = fmt::DTypeSize(t.dtype), nd = t.shape.size();
  std::vector<std::byte> out;
  std::vector<int64_t> off = w.box_offset, len = w.box_length;
  if (off.empty()) {
    off.assign(nd, 0);
    len = t.shape;
  }
  if (len == t.shape) {  // the whole tensor: the flat range is contiguous
    return std::vector<std::byte>(t.data.begin() + w.flat_begin * es,
                                  t.data.begin() + w.flat_end * es);
  }
  for (uint64_t i = w.flat_begin; i < w.flat_end; ++i) {
    uint64_t rem = i, flat = 0, stride = 1;
    std::vector<int64_t> idx(nd);
    for (size_t d = nd; d-- > 0;) {
      idx[d] = static_cast<int64_t>(rem % static_cast<uint64_t>(len[d])) + off[d];
      rem /= static_cast<uint64_t>(len[d]);
    }
    for (size_t d = nd; d-- > 0;) {
      flat += static_cast<uint64_t>(idx[d]) * stride;
      stride *= static_cast<uint64_t>(t.shape[d]);
    }
    out.insert(out.end(), t.data.begin() + flat * es, t.data.begin() + (flat + 1) * es);
  }
  return out;
}

inline const testing::TestTensor& Find(const std::vector<testing::TestTensor>& ts,
                                       const std::string& name) {
  for (const auto& t : ts) {
    if (t.name == name) return t;
  }
  return ts.front();
}

struct SaveOutcome {
  std::vector<Status> status;  // per rank
  std::vector<SaveStats> stats;
};

// Saves `slices[rank]` of `tensors` from one thread per rank (sharing `store`), with `request`'s
// step and layout; rank 0 also adds `blobs` (name, data), and every rank its RNG blob.
inline SaveOutcome SaveRanks(io::Env* env, const std::vector<testing::TestTensor>& tensors,
                             const std::vector<std::vector<WantedSlice>>& slices,
                             const SaveRequest& request, WriterOptions base, KeyValueStore* store,
                             const std::vector<std::pair<std::string, std::string>>& blobs = {}) {
  const auto world = static_cast<uint32_t>(slices.size());
  SaveOutcome out;
  out.status.resize(world);
  out.stats.resize(world);
  std::vector<std::thread> threads;
  for (uint32_t rank = 0; rank < world; ++rank) {
    threads.emplace_back([&, rank] {
      WriterOptions o = base;
      o.rank = rank;
      o.world_size = world;
      o.store = store;
      auto w = CheckpointWriter::Create(env, o);
      if (!w.ok()) {
        out.status[rank] = w.status();
        return;
      }
      Status s = (*w)->Begin(request);
      for (const WantedSlice& ws : slices[rank]) {
        if (!s.ok()) break;
        const auto& t = Find(tensors, ws.tensor);
        auto bytes = std::make_shared<std::vector<std::byte>>(Gather(t, ws));
        SaveSlice sl{t.name,        t.dtype,       t.shape,     ws.box_offset,
                     ws.box_length, ws.flat_begin, ws.flat_end, {}};
        sl.source.fill = [bytes](uint64_t off, std::span<std::byte> dst) {
          std::memcpy(dst.data(), bytes->data() + off, dst.size());
          return Status::OK();
        };
        s = (*w)->AddSlice(std::move(sl));
      }
      if (s.ok() && rank == 0) s = (*w)->AddBlob("step", std::to_string(request.step));
      for (size_t b = 0; s.ok() && rank == 0 && b < blobs.size(); ++b) {
        s = (*w)->AddBlob(blobs[b].first, blobs[b].second);
      }
      if (s.ok()) {
        s = (*w)->AddBlob("rng/rank-" + std::to_string(rank), "rng" + std::to_string(rank));
      }
      if (s.ok()) s = (*w)->Snapshot().status();
      if (s.ok()) {
        auto h = (*w)->Commit();
        s = h->Wait();
        out.stats[rank] = h->stats();
      }
      out.status[rank] = s;
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

// Saves `tensors` at `layout` from world ranks in threads (sharing `store`).
inline SaveOutcome SaveAll(io::Env* env, const std::vector<testing::TestTensor>& tensors,
                           const Layout& layout, int64_t step, WriterOptions base,
                           KeyValueStore* store, std::string metrics = "{}") {
  std::vector<std::vector<WantedSlice>> slices;
  for (uint32_t rank = 0; rank < layout.world; ++rank) {
    slices.push_back(SlicesOf(tensors, layout, rank));
  }
  SaveRequest req;
  req.step = step;
  req.zero_stage = layout.stage;
  req.tp_degree = layout.tp;
  req.metrics_json = std::move(metrics);
  return SaveRanks(env, tensors, slices, req, std::move(base), store);
}

// Loads `slices[rank]` of every rank from `dir` and compares them with `tensors`; returns the
// first mismatch or error.
inline Status LoadSlicesAndCompare(io::Env* env, const std::string& dir,
                                   const std::vector<testing::TestTensor>& tensors,
                                   const std::vector<std::vector<WantedSlice>>& slices) {
  ReaderOptions ro;
  ro.io_backend = "pwrite";
  ro.threads = 2;
  DS_ASSIGN_OR_RETURN(auto reader, CheckpointReader::Open(env, dir, ro));
  for (uint32_t rank = 0; rank < slices.size(); ++rank) {
    const std::vector<WantedSlice>& want = slices[rank];
    std::vector<std::vector<std::byte>> bufs;
    std::vector<ReadRequest> reqs;
    for (const WantedSlice& w : want) {
      bufs.emplace_back(Gather(Find(tensors, w.tensor), w).size(), std::byte{0x5a});
    }
    for (size_t i = 0; i < want.size(); ++i) reqs.push_back({want[i], bufs[i], nullptr});
    DS_RETURN_IF_ERROR(reader->Read(reqs).status());
    for (size_t i = 0; i < want.size(); ++i) {
      if (bufs[i] != Gather(Find(tensors, want[i].tensor), want[i])) {
        return Status::Corruption("rank " + std::to_string(rank) + " got wrong bytes for " +
                                  want[i].tensor);
      }
    }
  }
  return Status::OK();
}

// Loads every rank's slices of `layout` from `dir` and compares them with `tensors`; returns
// the first mismatch or error.
inline Status LoadAndCompare(io::Env* env, const std::string& dir,
                             const std::vector<testing::TestTensor>& tensors,
                             const Layout& layout) {
  std::vector<std::vector<WantedSlice>> slices;
  for (uint32_t rank = 0; rank < layout.world; ++rank) {
    slices.push_back(SlicesOf(tensors, layout, rank));
  }
  return LoadSlicesAndCompare(env, dir, tensors, slices);
}

// One line per slice list, for comparing layouts: "name[begin,end):offset+length...".
inline std::string DescribeSlices(const std::vector<WantedSlice>& v) {
  std::string s;
  for (const auto& w : v) {
    s += w.tensor + "[" + std::to_string(w.flat_begin) + "," + std::to_string(w.flat_end) + ")";
    for (size_t d = 0; d < w.box_offset.size(); ++d) {
      s += ":" + std::to_string(w.box_offset[d]) + "+" + std::to_string(w.box_length[d]);
    }
    s += " ";
  }
  return s;
}

// The slices each rank holds in a committed checkpoint, in the order it wrote them.
inline std::vector<std::vector<WantedSlice>> SlicesByRank(const fmt::Manifest& m) {
  std::vector<std::vector<WantedSlice>> out(m.info.world_size);
  for (const fmt::SliceMeta& s : m.slices) {
    out[s.rank].push_back(
        {m.tensors[s.tensor].name, s.box_offset, s.box_length, s.flat_begin, s.flat_end});
  }
  return out;
}

inline std::vector<testing::TestTensor> SampleState() {
  return {testing::MakeTensor("master/wte", fmt::DType::kF32, {64, 48}, 1),
          testing::MakeTensor("master/ln.weight", fmt::DType::kF32, {48}, 2),
          testing::MakeTensor("optim/exp_avg/wte", fmt::DType::kF32, {64, 48}, 3),
          testing::MakeTensor("model/wte", fmt::DType::kBF16, {64, 48}, 4),
          testing::MakeTensor("model/h.0.attn", fmt::DType::kBF16, {30, 7}, 5),
          testing::MakeTensor("scalar", fmt::DType::kI64, {}, 6),
          testing::MakeTensor("empty", fmt::DType::kF32, {0, 5}, 7)};
}

inline WriterOptions TestWriterOptions(const std::string& save_dir) {
  WriterOptions o;
  o.save_dir = save_dir;
  o.chunk_bytes = 4096;
  o.staging_bytes = 8 << 20;
  o.encode_threads = 2;
  o.io_backend = "pwrite";
  o.io_queue_depth = 8;
  o.timeout_micros = 20'000'000;
  return o;
}

}  // namespace ds::ckpt

namespace ds::ckpt {

// The state the save loop writes at `step` (so a checker can rebuild it from the tag alone).
inline std::vector<testing::TestTensor> LoopState(int64_t step) {
  const auto seed = static_cast<uint64_t>(step) * 1000;
  return {testing::MakeTensor("master/w", fmt::DType::kF32, {128, 96}, seed),
          testing::MakeTensor("optim/exp_avg/w", fmt::DType::kF32, {128, 96}, seed + 1),
          testing::MakeTensor("model/w", fmt::DType::kBF16, {128, 96}, seed + 2)};
}

}  // namespace ds::ckpt
