#include "formats/manifest.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <set>

#include "formats/shard_file.h"

namespace ds::fmt {

// ---- names and shapes

std::optional<uint64_t> NumElements(std::span<const int64_t> shape) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (d != 0 && n > UINT64_MAX / static_cast<uint64_t>(d)) return std::nullopt;
    n *= static_cast<uint64_t>(d);
  }
  return n;
}

Status ValidateFileName(std::string_view name, std::string_view what) {
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string_view::npos ||
      name.find('\0') != std::string_view::npos) {
    return Status::Corruption(std::string(what) + ": file name '" + std::string(name) +
                              "' is not a plain name inside the checkpoint directory");
  }
  return Status::OK();
}

int64_t Manifest::FindTensor(std::string_view name) const {
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].name == name) return static_cast<int64_t>(i);
  }
  return -1;
}

int64_t Manifest::FindBlob(std::string_view name) const {
  for (size_t i = 0; i < blobs.size(); ++i) {
    if (blobs[i].name == name) return static_cast<int64_t>(i);
  }
  return -1;
}

// ---- validation

namespace {

std::string Join(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

Status ValidateInfo(const ManifestInfo& i, const std::string& w) {
  if (i.format_version == 0 || i.format_version > kManifestFormatVersion) {
    return Status::Corruption(w + ": manifest format version " + std::to_string(i.format_version) +
                              " is not one this dstrain reads (it reads 1 to " +
                              std::to_string(kManifestFormatVersion) +
                              "); written by a newer dstrain? upgrade to read it");
  }
  if (i.world_size == 0 || i.world_size > (1u << 20)) {
    return Status::Corruption(w + ": world size " + std::to_string(i.world_size) + " is invalid");
  }
  if (i.zero_stage > 3) {
    return Status::Corruption(w + ": ZeRO stage " + std::to_string(i.zero_stage) + " is invalid");
  }
  if (i.partition_alignment == 0) {
    return Status::Corruption(w + ": partition alignment 0 is invalid");
  }
  if (i.tp_degree == 0 || i.pp_degree == 0) {
    return Status::Corruption(w + ": tensor/pipeline-parallel degree 0 is invalid");
  }
  return Status::OK();
}

Status ValidateTensors(const Manifest& m, const std::string& w) {
  std::set<std::string_view> names;
  for (const TensorMeta& t : m.tensors) {
    if (t.name.empty()) return Status::Corruption(w + ": a tensor has an empty name");
    if (!names.insert(t.name).second) {
      return Status::Corruption(w + ": tensor '" + t.name + "' is listed twice");
    }
    if (t.shape.size() > static_cast<size_t>(kMaxDims)) {
      return Status::Corruption(w + ": tensor '" + t.name + "' has " +
                                std::to_string(t.shape.size()) + " dimensions (at most " +
                                std::to_string(kMaxDims) + ")");
    }
    std::optional<uint64_t> n = NumElements(t.shape);
    if (!n || *n > (UINT64_MAX >> 4)) {
      return Status::Corruption(w + ": tensor '" + t.name + "' has an invalid shape " +
                                Join(t.shape));
    }
  }
  return Status::OK();
}

Status ValidateFilesAndChunks(const Manifest& m, const std::string& w) {
  std::set<std::string_view> names;
  for (const FileMeta& f : m.files) {
    DS_RETURN_IF_ERROR(ValidateFileName(f.name, w));
    if (!names.insert(f.name).second) {
      return Status::Corruption(w + ": file '" + f.name + "' is listed twice");
    }
    if (f.rank >= m.info.world_size) {
      return Status::Corruption(w + ": file '" + f.name + "' belongs to rank " +
                                std::to_string(f.rank) + " but the world size is " +
                                std::to_string(m.info.world_size));
    }
  }
  // Chunks of one file must not overlap: sort (file, offset) and compare neighbours.
  std::vector<size_t> order(m.chunks.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  for (size_t i = 0; i < m.chunks.size(); ++i) {
    const ChunkMeta& c = m.chunks[i];
    if (c.file >= m.files.size()) {
      return Status::Corruption(w + ": chunk " + std::to_string(i) + " names file " +
                                std::to_string(c.file) + " of " + std::to_string(m.files.size()));
    }
    const FileMeta& f = m.files[c.file];
    std::string what = w + ": " + DescribeChunk(i, f.name);
    if (!IsKnownCodec(static_cast<uint8_t>(c.codec))) {
      return Status::Corruption(what + " has unknown codec " +
                                std::to_string(static_cast<int>(c.codec)));
    }
    if (c.elem_size != 1 && c.elem_size != 2 && c.elem_size != 4 && c.elem_size != 8) {
      return Status::Corruption(what + " has element size " + std::to_string(c.elem_size));
    }
    if (c.raw_len > kMaxChunkRawBytes) {
      return Status::Corruption(what + " claims " + std::to_string(c.raw_len) +
                                " raw bytes, more than the limit of " +
                                std::to_string(kMaxChunkRawBytes));
    }
    if (c.codec == Codec::kRaw && c.stored_len != c.raw_len) {
      return Status::Corruption(what + " is stored raw but its stored and raw lengths differ");
    }
    if (c.offset < kShardHeaderBytes || c.offset % kChunkAlignment != 0 || c.stored_len > f.size ||
        c.offset > f.size - c.stored_len) {
      return Status::Corruption(what + " at offset " + std::to_string(c.offset) + " (" +
                                std::to_string(c.stored_len) + " bytes) is not inside the " +
                                std::to_string(f.size) + "-byte file after its header");
    }
  }
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const ChunkMeta &x = m.chunks[a], &y = m.chunks[b];
    return x.file != y.file ? x.file < y.file : x.offset < y.offset;
  });
  for (size_t k = 1; k < order.size(); ++k) {
    const ChunkMeta &prev = m.chunks[order[k - 1]], &cur = m.chunks[order[k]];
    if (prev.file == cur.file && prev.offset + prev.stored_len > cur.offset) {
      return Status::Corruption(w + ": " + DescribeChunk(order[k], m.files[cur.file].name) +
                                " overlaps " + DescribeChunk(order[k - 1], m.files[cur.file].name));
    }
  }
  return Status::OK();
}

// A slice's bytes inside one chunk: [begin, end) of its raw bytes.
struct Segment {
  uint64_t chunk, begin, end;
  size_t slice;
};

// The chunks a slice's bytes run through must exist, sit in one file, and be long enough.
// Appends the slice's byte segments to `segments`.
Status ValidateSliceBytes(const Manifest& m, const SliceMeta& s, size_t slice_index,
                          uint64_t nbytes, const std::string& what,
                          std::vector<Segment>* segments) {
  if (nbytes == 0) {
    if (s.first_chunk > m.chunks.size()) {
      return Status::Corruption(what + " names chunk " + std::to_string(s.first_chunk) + " of " +
                                std::to_string(m.chunks.size()));
    }
    return Status::OK();
  }
  if (s.first_chunk >= m.chunks.size()) {
    return Status::Corruption(what + " names chunk " + std::to_string(s.first_chunk) + " of " +
                              std::to_string(m.chunks.size()));
  }
  const uint32_t file = m.chunks[s.first_chunk].file;
  if (m.files[file].rank != s.rank) {
    return Status::Corruption(what + " lives in " + m.files[file].name + " of rank " +
                              std::to_string(m.files[file].rank));
  }
  const uint64_t elem = DTypeSize(m.tensors[s.tensor].dtype);
  uint64_t offset = s.offset_in_chunk;
  uint64_t left = nbytes;
  for (uint64_t c = s.first_chunk; left > 0; ++c) {
    if (c >= m.chunks.size() || m.chunks[c].file != file) {
      return Status::Corruption(what + " needs " + std::to_string(nbytes) +
                                " bytes but its chunks end " + std::to_string(left) +
                                " bytes short");
    }
    const ChunkMeta& ch = m.chunks[c];
    if (ch.elem_size != elem && ch.codec == Codec::kByteGroupZstd) {
      return Status::Corruption(what + " has " + std::to_string(elem) + "-byte elements but " +
                                DescribeChunk(c, m.files[file].name) + " groups " +
                                std::to_string(ch.elem_size) + "-byte elements");
    }
    if (offset > ch.raw_len) {
      return Status::Corruption(what + " starts at byte " + std::to_string(offset) + " of " +
                                DescribeChunk(c, m.files[file].name) + ", which holds only " +
                                std::to_string(ch.raw_len));
    }
    const uint64_t take = std::min(left, ch.raw_len - offset);
    if (take > 0) segments->push_back({c, offset, offset + take, slice_index});
    left -= take;
    offset = 0;
  }
  return Status::OK();
}

// No byte of a chunk belongs to two slices.
Status ValidateSegmentsDisjoint(const Manifest& m, std::vector<Segment> segs,
                                const std::string& w) {
  std::sort(segs.begin(), segs.end(), [](const Segment& a, const Segment& b) {
    return a.chunk != b.chunk ? a.chunk < b.chunk : a.begin < b.begin;
  });
  for (size_t k = 1; k < segs.size(); ++k) {
    const Segment &a = segs[k - 1], &b = segs[k];
    if (a.chunk == b.chunk && a.end > b.begin) {
      auto name = [&](const Segment& x) {
        const SliceMeta& sl = m.slices[x.slice];
        return "'" + m.tensors[sl.tensor].name + "' (rank " + std::to_string(sl.rank) + ")";
      };
      return Status::Corruption(w + ": slices of " + name(a) + " and " + name(b) +
                                " claim the same bytes of " +
                                DescribeChunk(a.chunk, m.files[m.chunks[a.chunk].file].name));
    }
  }
  return Status::OK();
}

Status ValidateSlices(const Manifest& m, const std::string& w) {
  // Per tensor: the slices' boxes must be identical or disjoint, identical boxes need disjoint
  // flat ranges, and the elements must add up to the tensor's.
  std::vector<uint64_t> covered(m.tensors.size(), 0);
  std::vector<Segment> segments;
  std::map<std::pair<uint32_t, std::vector<int64_t>>, std::vector<size_t>> by_box;
  for (size_t i = 0; i < m.slices.size(); ++i) {
    const SliceMeta& s = m.slices[i];
    if (s.tensor >= m.tensors.size()) {
      return Status::Corruption(w + ": slice " + std::to_string(i) + " names tensor " +
                                std::to_string(s.tensor) + " of " +
                                std::to_string(m.tensors.size()));
    }
    const TensorMeta& t = m.tensors[s.tensor];
    std::string what = w + ": slice of '" + t.name + "' from rank " + std::to_string(s.rank);
    if (s.rank >= m.info.world_size) {
      return Status::Corruption(what + ": rank is not below the world size " +
                                std::to_string(m.info.world_size));
    }
    if (s.box_offset.size() != t.shape.size() || s.box_length.size() != t.shape.size()) {
      return Status::Corruption(what + ": box has " + std::to_string(s.box_offset.size()) +
                                " dimensions but the tensor has " + std::to_string(t.shape.size()));
    }
    for (size_t d = 0; d < t.shape.size(); ++d) {
      if (s.box_offset[d] < 0 || s.box_length[d] < 0 ||
          s.box_offset[d] > t.shape[d] - s.box_length[d]) {
        return Status::Corruption(what + ": box offset " + Join(s.box_offset) + " length " +
                                  Join(s.box_length) + " is outside the shape " + Join(t.shape));
      }
    }
    uint64_t box_numel = *NumElements(s.box_length);
    if (s.flat_begin > s.flat_end || s.flat_end > box_numel) {
      return Status::Corruption(what + ": flat range [" + std::to_string(s.flat_begin) + ", " +
                                std::to_string(s.flat_end) + ") is outside its box of " +
                                std::to_string(box_numel) + " elements");
    }
    uint64_t n = s.flat_end - s.flat_begin;
    DS_RETURN_IF_ERROR(ValidateSliceBytes(m, s, i, n * DTypeSize(t.dtype), what, &segments));
    covered[s.tensor] += n;
    std::vector<int64_t> key = s.box_offset;
    key.insert(key.end(), s.box_length.begin(), s.box_length.end());
    by_box[{s.tensor, key}].push_back(i);
  }
  // Identical boxes: flat ranges disjoint.
  std::map<uint32_t, std::vector<const std::vector<int64_t>*>> boxes_of;
  for (auto& [key, idx] : by_box) {
    std::sort(idx.begin(), idx.end(),
              [&](size_t a, size_t b) { return m.slices[a].flat_begin < m.slices[b].flat_begin; });
    for (size_t k = 1; k < idx.size(); ++k) {
      const SliceMeta &a = m.slices[idx[k - 1]], &b = m.slices[idx[k]];
      if (a.flat_end > b.flat_begin) {
        return Status::Corruption(w + ": tensor '" + m.tensors[key.first].name +
                                  "': slices of ranks " + std::to_string(a.rank) + " and " +
                                  std::to_string(b.rank) + " overlap in elements [" +
                                  std::to_string(b.flat_begin) + ", " +
                                  std::to_string(std::min(a.flat_end, b.flat_end)) + ")");
      }
    }
    boxes_of[key.first].push_back(&key.second);
  }
  // Different boxes of one tensor: disjoint (boxes intersect iff they overlap in every dim).
  for (auto& [tensor, boxes] : boxes_of) {
    const size_t nd = m.tensors[tensor].shape.size();
    for (size_t a = 0; a < boxes.size(); ++a) {
      for (size_t b = a + 1; b < boxes.size(); ++b) {
        const auto &x = *boxes[a], &y = *boxes[b];
        bool intersect = nd > 0;
        bool empty = false;
        for (size_t d = 0; d < nd; ++d) {
          if (x[nd + d] == 0 || y[nd + d] == 0) empty = true;
          if (x[d] + x[nd + d] <= y[d] || y[d] + y[nd + d] <= x[d]) intersect = false;
        }
        if (nd == 0) intersect = true;  // two distinct scalar boxes cannot exist
        if (intersect && !empty) {
          return Status::Corruption(
              w + ": tensor '" + m.tensors[tensor].name + "': boxes at " +
              Join(std::vector<int64_t>(x.begin(), x.begin() + nd)) + " and " +
              Join(std::vector<int64_t>(y.begin(), y.begin() + nd)) + " overlap");
        }
      }
    }
  }
  DS_RETURN_IF_ERROR(ValidateSegmentsDisjoint(m, std::move(segments), w));
  for (size_t t = 0; t < m.tensors.size(); ++t) {
    uint64_t numel = *NumElements(m.tensors[t].shape);
    if (covered[t] != numel) {
      return Status::Corruption(w + ": tensor '" + m.tensors[t].name + "': slices hold " +
                                std::to_string(covered[t]) + " of its " + std::to_string(numel) +
                                " elements");
    }
  }
  return Status::OK();
}

}  // namespace

Status ValidateManifest(const Manifest& m, std::string_view what) {
  const std::string w(what);
  DS_RETURN_IF_ERROR(ValidateInfo(m.info, w));
  DS_RETURN_IF_ERROR(ValidateTensors(m, w));
  DS_RETURN_IF_ERROR(ValidateFilesAndChunks(m, w));
  DS_RETURN_IF_ERROR(ValidateSlices(m, w));
  std::set<std::string_view> blobs;
  for (const BlobMeta& b : m.blobs) {
    if (b.name.empty() || !blobs.insert(b.name).second) {
      return Status::Corruption(w + ": blob '" + b.name + "' is empty-named or listed twice");
    }
  }
  return Status::OK();
}

}  // namespace ds::fmt
