// The manifest record (docs/format.md, 4.3): every field of a Manifest, in table order, integers
// as u64 little-endian and strings as their u64 length then their bytes. Format 2 stores it after
// the HDF5 image and readers parse only it; `content_xxh64` is its xxh64 in every format.
//
// The decoder reads bytes that passed a checksum but may still have been crafted: every length
// is checked against the bytes left before anything is allocated, and every count against the
// least a row can take, so a record of n bytes never allocates much more than n.
#include <limits>
#include <optional>

#include "formats/endian.h"
#include "formats/manifest.h"

namespace ds::fmt {

// ---- encoding

namespace {

class RecordWriter {
 public:
  void U(uint64_t v) {
    char b[8];
    for (int i = 0; i < 8; ++i) b[i] = static_cast<char>(v >> (8 * i));
    bytes_.append(b, 8);
  }
  void S(std::string_view s) {
    U(s.size());
    bytes_.append(s);
  }
  void V(const std::vector<int64_t>& v) {
    U(v.size());
    for (int64_t x : v) U(static_cast<uint64_t>(x));
  }
  std::string Take() { return std::move(bytes_); }

 private:
  std::string bytes_;
};

}  // namespace

std::string EncodeManifestRecord(const Manifest& m) {
  RecordWriter c;
  const ManifestInfo& i = m.info;
  c.U(i.format_version);
  c.S(i.tag);
  c.U(static_cast<uint64_t>(i.step));
  c.U(i.world_size);
  c.U(i.zero_stage);
  c.U(i.tp_degree);
  c.U(i.pp_degree);
  c.U(i.partition_alignment);
  c.U(static_cast<uint64_t>(i.created_micros));
  c.S(i.writer_version);
  c.S(i.config_json);
  c.S(i.metrics_json);
  c.U(m.tensors.size());
  for (const TensorMeta& t : m.tensors) {
    c.S(t.name);
    c.S(DTypeName(t.dtype));
    c.V(t.shape);
  }
  c.U(m.slices.size());
  for (const SliceMeta& s : m.slices) {
    c.U(s.tensor);
    c.U(s.rank);
    c.V(s.box_offset);
    c.V(s.box_length);
    c.U(s.flat_begin);
    c.U(s.flat_end);
    c.U(s.first_chunk);
    c.U(s.offset_in_chunk);
  }
  c.U(m.files.size());
  for (const FileMeta& f : m.files) {
    c.S(f.name);
    c.U(f.size);
    c.U(f.rank);
  }
  c.U(m.chunks.size());
  for (const ChunkMeta& k : m.chunks) {
    c.U(k.file);
    c.U(k.offset);
    c.U(k.stored_len);
    c.U(k.raw_len);
    c.U(static_cast<uint64_t>(k.codec));
    c.U(k.elem_size);
    c.U(k.raw_xxh64);
    c.U(k.stored_xxh64);
  }
  c.U(m.blobs.size());
  for (const BlobMeta& b : m.blobs) {
    c.S(b.name);
    c.S(b.data);
  }
  return c.Take();
}

uint64_t ManifestContentChecksum(const Manifest& m) {
  const std::string record = EncodeManifestRecord(m);
  return Xxh64(std::as_bytes(std::span(record.data(), record.size())));
}

// ---- decoding

namespace {

// Names a field only when it is wrong: "world_size", "tensors[3].shape".
struct Field {
  const char* table;  // nullptr for a root field
  uint64_t row;
  const char* column;

  std::string Name() const {
    if (table == nullptr) return column;
    return std::string(table) + "[" + std::to_string(row) + "]." + column;
  }
};
Field Root(const char* column) { return {nullptr, 0, column}; }

// The least bytes one row of each table takes (its strings and vectors empty).
constexpr uint64_t kMinTensorRow = 3 * 8;  // name, dtype, shape
constexpr uint64_t kMinSliceRow = 8 * 8;   // tensor, rank, 2 boxes, 4 integers
constexpr uint64_t kMinFileRow = 3 * 8;    // name, size, rank
constexpr uint64_t kMinChunkRow = 8 * 8;   // 8 integers
constexpr uint64_t kMinBlobRow = 2 * 8;    // name, data

class RecordReader {
 public:
  RecordReader(std::span<const std::byte> bytes, const std::string& w) : b_(bytes), w_(w) {}

  Status U64(Field f, uint64_t* v) {
    if (left() < 8) {
      return Status::Corruption(w_ + ": the manifest record ends inside " + f.Name() + " (it has " +
                                std::to_string(b_.size()) + " bytes)");
    }
    *v = GetU64(b_.data() + pos_);
    pos_ += 8;
    return Status::OK();
  }
  Status I64(Field f, int64_t* v) {
    uint64_t x = 0;
    DS_RETURN_IF_ERROR(U64(f, &x));
    *v = static_cast<int64_t>(x);  // two's complement
    return Status::OK();
  }
  template <typename T>
  Status Narrow(Field f, T* v) {
    uint64_t x = 0;
    DS_RETURN_IF_ERROR(U64(f, &x));
    if (x > std::numeric_limits<T>::max()) {
      return Status::Corruption(w_ + ": the manifest record's " + f.Name() + " is " +
                                std::to_string(x) + ", more than " + std::to_string(8 * sizeof(T)) +
                                " bits hold");
    }
    *v = static_cast<T>(x);
    return Status::OK();
  }
  Status Str(Field f, std::string* s) {
    uint64_t n = 0;
    DS_RETURN_IF_ERROR(U64(f, &n));
    if (n > left()) {
      return Status::Corruption(w_ + ": the manifest record's " + f.Name() + " claims " +
                                std::to_string(n) + " bytes but only " + std::to_string(left()) +
                                " are left");
    }
    s->assign(reinterpret_cast<const char*>(b_.data()) + pos_, n);
    pos_ += n;
    return Status::OK();
  }
  Status Dims(Field f, std::vector<int64_t>* v) {
    uint64_t n = 0;
    DS_RETURN_IF_ERROR(U64(f, &n));
    if (n > static_cast<uint64_t>(kMaxDims)) {
      return Status::Corruption(w_ + ": the manifest record's " + f.Name() + " has " +
                                std::to_string(n) + " dimensions (at most " +
                                std::to_string(kMaxDims) + ")");
    }
    v->resize(n);
    for (int64_t& x : *v) DS_RETURN_IF_ERROR(I64(f, &x));
    return Status::OK();
  }
  // A table's row count, bounded by the rows the bytes left could hold.
  Status Count(const char* table, uint64_t min_row_bytes, uint64_t* n) {
    DS_RETURN_IF_ERROR(U64({nullptr, 0, table}, n));
    if (*n > left() / min_row_bytes) {
      return Status::Corruption(w_ + ": the manifest record claims " + std::to_string(*n) + " " +
                                table + " but only " + std::to_string(left()) +
                                " bytes are left (each takes at least " +
                                std::to_string(min_row_bytes) + ")");
    }
    return Status::OK();
  }
  Status Finish() const {
    if (left() != 0) {
      return Status::Corruption(w_ + ": the manifest record has " + std::to_string(left()) +
                                " bytes after its last blob");
    }
    return Status::OK();
  }
  const std::string& what() const { return w_; }

 private:
  uint64_t left() const { return b_.size() - pos_; }

  std::span<const std::byte> b_;
  const std::string& w_;
  uint64_t pos_ = 0;
};

Status DecodeInfo(RecordReader& r, ManifestInfo* i) {
  DS_RETURN_IF_ERROR(r.Narrow(Root("format_version"), &i->format_version));
  DS_RETURN_IF_ERROR(r.Str(Root("tag"), &i->tag));
  DS_RETURN_IF_ERROR(r.I64(Root("step"), &i->step));
  DS_RETURN_IF_ERROR(r.Narrow(Root("world_size"), &i->world_size));
  DS_RETURN_IF_ERROR(r.Narrow(Root("zero_stage"), &i->zero_stage));
  DS_RETURN_IF_ERROR(r.Narrow(Root("tp_degree"), &i->tp_degree));
  DS_RETURN_IF_ERROR(r.Narrow(Root("pp_degree"), &i->pp_degree));
  DS_RETURN_IF_ERROR(r.U64(Root("partition_alignment"), &i->partition_alignment));
  DS_RETURN_IF_ERROR(r.I64(Root("created_micros"), &i->created_micros));
  DS_RETURN_IF_ERROR(r.Str(Root("writer_version"), &i->writer_version));
  DS_RETURN_IF_ERROR(r.Str(Root("config_json"), &i->config_json));
  return r.Str(Root("metrics_json"), &i->metrics_json);
}

Status DecodeTensors(RecordReader& r, std::vector<TensorMeta>* tensors) {
  uint64_t n = 0;
  DS_RETURN_IF_ERROR(r.Count("tensors", kMinTensorRow, &n));
  tensors->resize(n);
  for (uint64_t k = 0; k < n; ++k) {
    TensorMeta& t = (*tensors)[k];
    DS_RETURN_IF_ERROR(r.Str({"tensors", k, "name"}, &t.name));
    std::string dtype;
    DS_RETURN_IF_ERROR(r.Str({"tensors", k, "dtype"}, &dtype));
    std::optional<DType> d = DTypeFromName(dtype);
    if (!d) {
      return Status::Corruption(r.what() + ": the manifest record's tensors[" + std::to_string(k) +
                                "].dtype '" + dtype.substr(0, 32) + "' is not a known dtype");
    }
    t.dtype = *d;
    DS_RETURN_IF_ERROR(r.Dims({"tensors", k, "shape"}, &t.shape));
  }
  return Status::OK();
}

Status DecodeSlices(RecordReader& r, std::vector<SliceMeta>* slices) {
  uint64_t n = 0;
  DS_RETURN_IF_ERROR(r.Count("slices", kMinSliceRow, &n));
  slices->resize(n);
  for (uint64_t k = 0; k < n; ++k) {
    SliceMeta& s = (*slices)[k];
    DS_RETURN_IF_ERROR(r.Narrow({"slices", k, "tensor"}, &s.tensor));
    DS_RETURN_IF_ERROR(r.Narrow({"slices", k, "rank"}, &s.rank));
    DS_RETURN_IF_ERROR(r.Dims({"slices", k, "box_offset"}, &s.box_offset));
    DS_RETURN_IF_ERROR(r.Dims({"slices", k, "box_length"}, &s.box_length));
    DS_RETURN_IF_ERROR(r.U64({"slices", k, "flat_begin"}, &s.flat_begin));
    DS_RETURN_IF_ERROR(r.U64({"slices", k, "flat_end"}, &s.flat_end));
    DS_RETURN_IF_ERROR(r.U64({"slices", k, "first_chunk"}, &s.first_chunk));
    DS_RETURN_IF_ERROR(r.U64({"slices", k, "offset_in_chunk"}, &s.offset_in_chunk));
  }
  return Status::OK();
}

Status DecodeFiles(RecordReader& r, std::vector<FileMeta>* files) {
  uint64_t n = 0;
  DS_RETURN_IF_ERROR(r.Count("files", kMinFileRow, &n));
  files->resize(n);
  for (uint64_t k = 0; k < n; ++k) {
    FileMeta& f = (*files)[k];
    DS_RETURN_IF_ERROR(r.Str({"files", k, "name"}, &f.name));
    DS_RETURN_IF_ERROR(r.U64({"files", k, "size"}, &f.size));
    DS_RETURN_IF_ERROR(r.Narrow({"files", k, "rank"}, &f.rank));
  }
  return Status::OK();
}

Status DecodeChunks(RecordReader& r, std::vector<ChunkMeta>* chunks) {
  uint64_t n = 0;
  DS_RETURN_IF_ERROR(r.Count("chunks", kMinChunkRow, &n));
  chunks->resize(n);
  for (uint64_t k = 0; k < n; ++k) {
    ChunkMeta& c = (*chunks)[k];
    uint8_t codec = 0;
    DS_RETURN_IF_ERROR(r.Narrow({"chunks", k, "file"}, &c.file));
    DS_RETURN_IF_ERROR(r.U64({"chunks", k, "offset"}, &c.offset));
    DS_RETURN_IF_ERROR(r.U64({"chunks", k, "stored_len"}, &c.stored_len));
    DS_RETURN_IF_ERROR(r.U64({"chunks", k, "raw_len"}, &c.raw_len));
    DS_RETURN_IF_ERROR(r.Narrow({"chunks", k, "codec"}, &codec));
    if (!IsKnownCodec(codec)) {
      return Status::Corruption(r.what() + ": the manifest record's chunks[" + std::to_string(k) +
                                "].codec " + std::to_string(codec) + " is not a known codec");
    }
    c.codec = static_cast<Codec>(codec);
    DS_RETURN_IF_ERROR(r.Narrow({"chunks", k, "elem_size"}, &c.elem_size));
    DS_RETURN_IF_ERROR(r.U64({"chunks", k, "raw_xxh64"}, &c.raw_xxh64));
    DS_RETURN_IF_ERROR(r.U64({"chunks", k, "stored_xxh64"}, &c.stored_xxh64));
  }
  return Status::OK();
}

Status DecodeBlobs(RecordReader& r, std::vector<BlobMeta>* blobs) {
  uint64_t n = 0;
  DS_RETURN_IF_ERROR(r.Count("blobs", kMinBlobRow, &n));
  blobs->resize(n);
  for (uint64_t k = 0; k < n; ++k) {
    DS_RETURN_IF_ERROR(r.Str({"blobs", k, "name"}, &(*blobs)[k].name));
    DS_RETURN_IF_ERROR(r.Str({"blobs", k, "data"}, &(*blobs)[k].data));
  }
  return Status::OK();
}

}  // namespace

Result<Manifest> DecodeManifestRecord(std::span<const std::byte> record, std::string_view what) {
  const std::string w(what);
  RecordReader r(record, w);
  Manifest m;
  DS_RETURN_IF_ERROR(DecodeInfo(r, &m.info));
  DS_RETURN_IF_ERROR(DecodeTensors(r, &m.tensors));
  DS_RETURN_IF_ERROR(DecodeSlices(r, &m.slices));
  DS_RETURN_IF_ERROR(DecodeFiles(r, &m.files));
  DS_RETURN_IF_ERROR(DecodeChunks(r, &m.chunks));
  DS_RETURN_IF_ERROR(DecodeBlobs(r, &m.blobs));
  DS_RETURN_IF_ERROR(r.Finish());
  return m;
}

}  // namespace ds::fmt
