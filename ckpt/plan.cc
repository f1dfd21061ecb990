#include "ckpt/plan.h"

#include <algorithm>
#include <map>
#include <unordered_map>

namespace ds::ckpt {
namespace {

std::string Box(std::span<const int64_t> off, std::span<const int64_t> len) {
  std::string s = "offset [";
  for (size_t i = 0; i < off.size(); ++i) s += (i ? ", " : "") + std::to_string(off[i]);
  s += "] length [";
  for (size_t i = 0; i < len.size(); ++i) s += (i ? ", " : "") + std::to_string(len[i]);
  return s + "]";
}

// Row-major strides (elements) of a box.
std::vector<uint64_t> Strides(std::span<const int64_t> len) {
  std::vector<uint64_t> st(len.size(), 1);
  for (size_t d = len.size(); d-- > 1;) st[d - 1] = st[d] * static_cast<uint64_t>(len[d]);
  return st;
}

void Push(std::vector<ElementRun>& runs, ElementRun r) {
  if (r.count == 0) return;
  if (!runs.empty()) {
    ElementRun& last = runs.back();
    if (last.src + last.count == r.src && last.dst + last.count == r.dst) {
      last.count += r.count;
      return;
    }
  }
  runs.push_back(r);
}

}  // namespace

std::vector<ElementRun> SharedRuns(std::span<const int64_t> so, std::span<const int64_t> sl,
                                   uint64_t sb, uint64_t se, std::span<const int64_t> dof,
                                   std::span<const int64_t> dl, uint64_t db, uint64_t de) {
  std::vector<ElementRun> runs;
  const size_t nd = so.size();
  // Identical boxes (always so for ZeRO partitions and scalars): one flat intersection.
  if (std::equal(so.begin(), so.end(), dof.begin()) && std::equal(sl.begin(), sl.end(), dl.begin())) {
    const uint64_t lo = std::max(sb, db), hi = std::min(se, de);
    if (lo < hi) Push(runs, {lo - sb, lo - db, hi - lo});
    return runs;
  }
  // The intersection box, walked row by row (the last dimension is contiguous in both).
  std::vector<int64_t> lo(nd), hi(nd);
  for (size_t d = 0; d < nd; ++d) {
    lo[d] = std::max(so[d], dof[d]);
    hi[d] = std::min(so[d] + sl[d], dof[d] + dl[d]);
    if (lo[d] >= hi[d]) return runs;
  }
  const std::vector<uint64_t> ss = Strides(sl), ds = Strides(dl);
  const uint64_t row = static_cast<uint64_t>(hi[nd - 1] - lo[nd - 1]);
  std::vector<int64_t> g(lo);  // the current row's first element, global coordinates
  while (true) {
    uint64_t si = 0, di = 0;  // flat indexes of g in each box
    for (size_t d = 0; d < nd; ++d) {
      si += static_cast<uint64_t>(g[d] - so[d]) * ss[d];
      di += static_cast<uint64_t>(g[d] - dof[d]) * ds[d];
    }
    // t in [0, row) is valid where si+t is in [sb, se) and di+t in [db, de).
    const uint64_t t0 = std::max({uint64_t{0}, sb > si ? sb - si : 0, db > di ? db - di : 0});
    const uint64_t t1 = std::min({row, se > si ? se - si : 0, de > di ? de - di : 0});
    if (t0 < t1) Push(runs, {si + t0 - sb, di + t0 - db, t1 - t0});
    // Next row: odometer over all dimensions but the last.
    size_t d = nd - 1;
    while (d-- > 0) {
      if (++g[d] < hi[d]) break;
      g[d] = lo[d];
    }
    if (d == static_cast<size_t>(-1)) break;
  }
  std::sort(runs.begin(), runs.end(), [](const ElementRun& a, const ElementRun& b) {
    return a.dst < b.dst;
  });
  return runs;
}

Result<LoadPlan> MakeLoadPlan(const fmt::Manifest& m, std::span<const WantedSlice> wanted) {
  // Source slices by tensor, and for each slice the stream offsets where its chunks start.
  std::unordered_map<std::string, uint32_t> tensor_index;
  for (size_t t = 0; t < m.tensors.size(); ++t) tensor_index[m.tensors[t].name] = t;
  std::vector<std::vector<size_t>> slices_of(m.tensors.size());
  for (size_t i = 0; i < m.slices.size(); ++i) slices_of[m.slices[i].tensor].push_back(i);

  LoadPlan plan;
  std::map<uint64_t, bool> chunks;
  for (uint32_t r = 0; r < wanted.size(); ++r) {
    WantedSlice w = wanted[r];
    auto it = tensor_index.find(w.tensor);
    if (it == tensor_index.end()) {
      return Status::NotFound("the checkpoint has no tensor '" + w.tensor + "'");
    }
    const fmt::TensorMeta& t = m.tensors[it->second];
    if (w.box_offset.empty() && w.box_length.empty()) {
      w.box_offset.assign(t.shape.size(), 0);
      w.box_length = t.shape;
    }
    if (w.box_offset.size() != t.shape.size() || w.box_length.size() != t.shape.size()) {
      return Status::InvalidArgument("tensor '" + t.name + "' has " +
                                     std::to_string(t.shape.size()) + " dimensions but the box " +
                                     Box(w.box_offset, w.box_length) + " asked for has " +
                                     std::to_string(w.box_offset.size()));
    }
    for (size_t d = 0; d < t.shape.size(); ++d) {
      if (w.box_offset[d] < 0 || w.box_length[d] < 0 ||
          w.box_offset[d] + w.box_length[d] > t.shape[d]) {
        return Status::InvalidArgument("tensor '" + t.name + "': the box " +
                                       Box(w.box_offset, w.box_length) +
                                       " is outside its shape " +
                                       Box(std::vector<int64_t>(t.shape.size(), 0), t.shape));
      }
    }
    const uint64_t box_numel = *fmt::NumElements(w.box_length);
    if (w.flat_end == UINT64_MAX) w.flat_end = box_numel;
    if (w.flat_begin > w.flat_end || w.flat_end > box_numel) {
      return Status::InvalidArgument("tensor '" + t.name + "': flat range [" +
                                     std::to_string(w.flat_begin) + ", " +
                                     std::to_string(w.flat_end) + ") is outside the box of " +
                                     std::to_string(box_numel) + " elements");
    }
    const uint64_t es = fmt::DTypeSize(t.dtype);
    plan.request_bytes.push_back((w.flat_end - w.flat_begin) * es);
    uint64_t covered = 0;
    for (size_t si : slices_of[it->second]) {
      const fmt::SliceMeta& s = m.slices[si];
      std::vector<ElementRun> runs =
          SharedRuns(s.box_offset, s.box_length, s.flat_begin, s.flat_end, w.box_offset,
                     w.box_length, w.flat_begin, w.flat_end);
      for (const ElementRun& run : runs) {
        // Map the source run's bytes onto the slice's chunks.
        uint64_t src = run.src * es + s.offset_in_chunk;  // bytes from the first chunk's start
        uint64_t dst = run.dst * es;
        uint64_t left = run.count * es;
        uint64_t c = s.first_chunk;
        while (src >= m.chunks[c].raw_len) {
          src -= m.chunks[c].raw_len;
          ++c;
        }
        while (left > 0) {
          const uint64_t take = std::min(left, m.chunks[c].raw_len - src);
          plan.copies.push_back({c, src, r, dst, take});
          chunks[c] = true;
          dst += take;
          left -= take;
          src = 0;
          ++c;
        }
        covered += run.count;
      }
    }
    if (covered != w.flat_end - w.flat_begin) {
      return Status::Corruption("tensor '" + t.name + "': the checkpoint's slices hold " +
                                std::to_string(covered) + " of the " +
                                std::to_string(w.flat_end - w.flat_begin) + " elements asked for");
    }
  }
  for (const auto& [c, _] : chunks) {
    plan.chunks.push_back(c);
    plan.raw_bytes_read += m.chunks[c].raw_len;
  }
  std::sort(plan.copies.begin(), plan.copies.end(), [](const PlannedCopy& a, const PlannedCopy& b) {
    return a.chunk != b.chunk ? a.chunk < b.chunk : a.chunk_offset < b.chunk_offset;
  });
  return plan;
}

}  // namespace ds::ckpt
