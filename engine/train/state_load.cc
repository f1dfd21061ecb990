#include "engine/train/state_load.h"

#include <algorithm>
#include <span>

#include "engine/zero/zero.h"

namespace ds::engine {

void AppendStateRequests(const StatePlan& plan, int b, const std::vector<StateSlice>& slices,
                         int64_t lo, int64_t hi, float* dst, std::vector<ckpt::ReadRequest>* out) {
  for (const StateSlice& slice : slices) {
    const int64_t s = std::max(lo, slice.buffer_offset);
    const int64_t e = std::min(hi, slice.buffer_offset + slice.numel());
    if (s >= e) continue;
    ckpt::ReadRequest q;
    q.slice.tensor = plan.TensorName(b, slice.tensor);
    q.slice.box_offset = slice.box_offset;
    q.slice.box_length = slice.box_length;
    q.slice.flat_begin = slice.flat_begin + static_cast<uint64_t>(s - slice.buffer_offset);
    q.slice.flat_end = slice.flat_begin + static_cast<uint64_t>(e - slice.buffer_offset);
    q.dst = std::span<std::byte>(reinterpret_cast<std::byte*>(dst + (s - lo)),
                                 static_cast<size_t>(e - s) * sizeof(float));
    out->push_back(std::move(q));
  }
}

void ZeroWhereNoSlice(at::Tensor& buffer, std::vector<StateSlice> slices) {
  std::sort(slices.begin(), slices.end(), [](const StateSlice& a, const StateSlice& b) {
    return a.buffer_offset < b.buffer_offset;
  });
  int64_t covered = 0;  // elements [0, covered) are covered or zeroed
  for (const StateSlice& s : slices) {
    if (s.buffer_offset > covered) buffer.narrow(0, covered, s.buffer_offset - covered).zero_();
    covered = std::max(covered, s.buffer_offset + s.numel());
  }
  if (covered < buffer.numel()) buffer.narrow(0, covered, buffer.numel() - covered).zero_();
}

Result<ckpt::ReadStats> StreamIntoSwap(ckpt::CheckpointReader& reader, const StatePlan& plan,
                                       const std::vector<StateSlice>& slices, int buffers,
                                       ZeroOptimizer* zero) {
  const int64_t n = zero->state_numel();
  const int64_t window = std::max<int64_t>(1, std::min<int64_t>(n, int64_t{1} << 22));
  std::vector<float> buf(static_cast<size_t>(window));
  ckpt::ReadStats total;
  for (int b = 0; b < buffers; ++b) {
    for (int64_t lo = 0; lo < n; lo += window) {
      const int64_t hi = std::min(n, lo + window);
      std::fill(buf.begin(), buf.begin() + (hi - lo), 0.0f);  // padding no slice covers
      std::vector<ckpt::ReadRequest> requests;
      AppendStateRequests(plan, b, slices, lo, hi, buf.data(), &requests);
      if (!requests.empty()) {
        DS_ASSIGN_OR_RETURN(ckpt::ReadStats rs, reader.Read(requests));
        total.chunks_read += rs.chunks_read;
        total.stored_bytes += rs.stored_bytes;
        total.raw_bytes += rs.raw_bytes;
        total.copied_bytes += rs.copied_bytes;
        total.seconds += rs.seconds;
      }
      DS_RETURN_IF_ERROR(zero->WriteState(
          b, lo, std::span<const float>(buf.data(), static_cast<size_t>(hi - lo))));
    }
  }
  return total;
}

Status ZeroSwappedMoments(ZeroOptimizer* zero) {
  const int64_t n = zero->state_numel();
  const std::vector<float> zeros(static_cast<size_t>(std::min<int64_t>(n, 1 << 22)), 0.0f);
  for (int b = 1; b < 3; ++b) {
    for (int64_t at = 0; at < n; at += static_cast<int64_t>(zeros.size())) {
      const size_t len = static_cast<size_t>(std::min<int64_t>(zeros.size(), n - at));
      DS_RETURN_IF_ERROR(zero->WriteState(b, at, std::span<const float>(zeros.data(), len)));
    }
  }
  return Status::OK();
}

}  // namespace ds::engine
