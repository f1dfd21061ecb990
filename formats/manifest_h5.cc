// The HDF5 side of manifest.h5: building the file (HDF5 image, record, user block), reading it
// back (the record in format 2; the HDF5 image of format 1, in a child process), and the image's
// in-memory plumbing and user block in manifest_image.cc. All HDF5 calls run under one mutex
// (the library may be built without thread safety) and with HDF5's own error printing off;
// failures become Status values.
#include <hdf5.h>

#include <cmath>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>

#include "formats/internal/manifest_image.h"
#include "formats/manifest.h"
#include "io/env.h"
#include "io/isolated.h"

namespace ds::fmt {
namespace {

std::mutex& Hdf5Mutex() {
  static std::mutex* mu = new std::mutex();
  return *mu;
}

// The innermost HDF5 error message of the current error stack.
std::string Hdf5Error() {
  std::string msg;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_DOWNWARD,
      [](unsigned n, const H5E_error2_t* e, void* out) -> herr_t {
        if (n == 0 && e->desc != nullptr) *static_cast<std::string*>(out) = e->desc;
        return 0;
      },
      &msg);
  H5Eclear2(H5E_DEFAULT);
  return msg.empty() ? "HDF5 error" : msg;
}

// Owns one HDF5 identifier.
class Hid {
 public:
  Hid() = default;
  explicit Hid(hid_t id) : id_(id) {}
  Hid(Hid&& o) noexcept : id_(o.id_) { o.id_ = H5I_INVALID_HID; }
  Hid& operator=(Hid&& o) noexcept {
    std::swap(id_, o.id_);
    return *this;
  }
  ~Hid() {
    if (id_ >= 0) H5Idec_ref(id_);
  }
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }

 private:
  hid_t id_ = H5I_INVALID_HID;
};

#define H5_CHECK(expr, what)                                                        \
  do {                                                                              \
    if ((expr) < 0) return Status::IOError(std::string(what) + ": " + Hdf5Error()); \
  } while (0)

// ---- types

Hid VlenString() {
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, H5T_VARIABLE);
  H5Tset_cset(t, H5T_CSET_UTF8);
  return Hid(t);
}

Hid CodecEnum() {
  hid_t t = H5Tenum_create(H5T_NATIVE_UINT8);
  for (uint8_t v : {0, 1, 2}) {
    std::string name(CodecName(static_cast<Codec>(v)));
    for (char& c : name) c = c == '+' ? '_' : c;  // "bytegroup_zstd": a valid identifier
    H5Tenum_insert(t, name.c_str(), &v);
  }
  return Hid(t);
}

struct TensorRow {
  char* name;
  char* dtype;
  hvl_t shape;  // int64
};
struct SliceRow {
  uint32_t tensor;
  uint32_t rank;
  hvl_t box_offset;  // int64
  hvl_t box_length;  // int64
  uint64_t flat_begin, flat_end, first_chunk, offset_in_chunk;
};
struct FileRow {
  char* name;
  uint64_t size;
  uint32_t rank;
};
struct ChunkRow {
  uint32_t file;
  uint64_t offset, stored_len, raw_len;
  uint8_t codec, elem_size;
  uint64_t raw_xxh64, stored_xxh64;
};
struct BlobRow {
  char* name;
  hvl_t data;  // uint8
};

struct Types {
  Hid str = VlenString();
  Hid i64v = Hid(H5Tvlen_create(H5T_NATIVE_INT64));
  Hid u8v = Hid(H5Tvlen_create(H5T_NATIVE_UINT8));
  Hid codec = CodecEnum();
  Hid tensor, slice, file, chunk, blob;

  Types() {
    tensor = Hid(H5Tcreate(H5T_COMPOUND, sizeof(TensorRow)));
    H5Tinsert(tensor.get(), "name", HOFFSET(TensorRow, name), str.get());
    H5Tinsert(tensor.get(), "dtype", HOFFSET(TensorRow, dtype), str.get());
    H5Tinsert(tensor.get(), "shape", HOFFSET(TensorRow, shape), i64v.get());

    slice = Hid(H5Tcreate(H5T_COMPOUND, sizeof(SliceRow)));
    H5Tinsert(slice.get(), "tensor", HOFFSET(SliceRow, tensor), H5T_NATIVE_UINT32);
    H5Tinsert(slice.get(), "rank", HOFFSET(SliceRow, rank), H5T_NATIVE_UINT32);
    H5Tinsert(slice.get(), "box_offset", HOFFSET(SliceRow, box_offset), i64v.get());
    H5Tinsert(slice.get(), "box_length", HOFFSET(SliceRow, box_length), i64v.get());
    H5Tinsert(slice.get(), "flat_begin", HOFFSET(SliceRow, flat_begin), H5T_NATIVE_UINT64);
    H5Tinsert(slice.get(), "flat_end", HOFFSET(SliceRow, flat_end), H5T_NATIVE_UINT64);
    H5Tinsert(slice.get(), "first_chunk", HOFFSET(SliceRow, first_chunk), H5T_NATIVE_UINT64);
    H5Tinsert(slice.get(), "offset_in_chunk", HOFFSET(SliceRow, offset_in_chunk),
              H5T_NATIVE_UINT64);

    file = Hid(H5Tcreate(H5T_COMPOUND, sizeof(FileRow)));
    H5Tinsert(file.get(), "name", HOFFSET(FileRow, name), str.get());
    H5Tinsert(file.get(), "size", HOFFSET(FileRow, size), H5T_NATIVE_UINT64);
    H5Tinsert(file.get(), "rank", HOFFSET(FileRow, rank), H5T_NATIVE_UINT32);

    chunk = Hid(H5Tcreate(H5T_COMPOUND, sizeof(ChunkRow)));
    H5Tinsert(chunk.get(), "file", HOFFSET(ChunkRow, file), H5T_NATIVE_UINT32);
    H5Tinsert(chunk.get(), "offset", HOFFSET(ChunkRow, offset), H5T_NATIVE_UINT64);
    H5Tinsert(chunk.get(), "stored_len", HOFFSET(ChunkRow, stored_len), H5T_NATIVE_UINT64);
    H5Tinsert(chunk.get(), "raw_len", HOFFSET(ChunkRow, raw_len), H5T_NATIVE_UINT64);
    H5Tinsert(chunk.get(), "codec", HOFFSET(ChunkRow, codec), codec.get());
    H5Tinsert(chunk.get(), "elem_size", HOFFSET(ChunkRow, elem_size), H5T_NATIVE_UINT8);
    H5Tinsert(chunk.get(), "raw_xxh64", HOFFSET(ChunkRow, raw_xxh64), H5T_NATIVE_UINT64);
    H5Tinsert(chunk.get(), "stored_xxh64", HOFFSET(ChunkRow, stored_xxh64), H5T_NATIVE_UINT64);

    blob = Hid(H5Tcreate(H5T_COMPOUND, sizeof(BlobRow)));
    H5Tinsert(blob.get(), "name", HOFFSET(BlobRow, name), str.get());
    H5Tinsert(blob.get(), "data", HOFFSET(BlobRow, data), u8v.get());
  }
};

hvl_t Vlen(const void* p, size_t n) { return {n, const_cast<void*>(p)}; }

// ---- attributes

Status WriteAttr(hid_t obj, const char* name, hid_t type, const void* value) {
  Hid space(H5Screate(H5S_SCALAR));
  Hid attr(H5Acreate2(obj, name, type, space.get(), H5P_DEFAULT, H5P_DEFAULT));
  if (!attr.ok()) return Status::IOError(std::string("attribute ") + name + ": " + Hdf5Error());
  H5_CHECK(H5Awrite(attr.get(), type, value), std::string("attribute ") + name);
  return Status::OK();
}
Status WriteStrAttr(hid_t obj, const char* name, const std::string& v) {
  Hid t = VlenString();
  const char* p = v.c_str();
  return WriteAttr(obj, name, t.get(), &p);
}

Status ReadAttr(hid_t obj, const char* name, hid_t type, void* out, const std::string& w) {
  if (H5Aexists(obj, name) <= 0) {
    return Status::Corruption(w + ": attribute '" + std::string(name) + "' is missing");
  }
  Hid attr(H5Aopen(obj, name, H5P_DEFAULT));
  Hid space(H5Aget_space(attr.get()));
  if (!attr.ok() || !space.ok() || H5Sget_simple_extent_npoints(space.get()) != 1) {
    return Status::Corruption(w + ": attribute '" + std::string(name) + "' is not a scalar");
  }
  if (H5Aread(attr.get(), type, out) < 0) {
    return Status::Corruption(w + ": attribute '" + std::string(name) + "' has the wrong type (" +
                              Hdf5Error() + ")");
  }
  return Status::OK();
}
Status ReadStrAttr(hid_t obj, const char* name, std::string* out, const std::string& w) {
  Hid t = VlenString();
  char* p = nullptr;
  DS_RETURN_IF_ERROR(ReadAttr(obj, name, t.get(), &p, w));
  out->assign(p == nullptr ? "" : p);
  H5free_memory(p);
  return Status::OK();
}

// ---- datasets

template <typename Row>
Status WriteTable(hid_t file, const char* name, hid_t type, const std::vector<Row>& rows) {
  hsize_t dims[1] = {rows.size()};
  Hid space(H5Screate_simple(1, dims, nullptr));
  Hid ds(H5Dcreate2(file, name, type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  if (!ds.ok()) return Status::IOError(std::string("dataset ") + name + ": " + Hdf5Error());
  if (!rows.empty()) {
    H5_CHECK(H5Dwrite(ds.get(), type, H5S_ALL, H5S_ALL, H5P_DEFAULT, rows.data()),
             std::string("dataset ") + name);
  }
  return Status::OK();
}

// Reads a whole 1-D table into rows of our memory type. `max_rows` bounds the allocation by
// what the image could possibly hold. The caller reclaims variable-length memory.
template <typename Row>
Status ReadTable(hid_t file, const char* name, hid_t type, uint64_t max_rows,
                 std::vector<Row>* rows, Hid* space_out, const std::string& w) {
  if (H5Lexists(file, name, H5P_DEFAULT) <= 0) {
    return Status::Corruption(w + ": dataset '" + std::string(name) + "' is missing");
  }
  Hid ds(H5Dopen2(file, name, H5P_DEFAULT));
  Hid space(H5Dget_space(ds.get()));
  if (!ds.ok() || !space.ok() || H5Sget_simple_extent_ndims(space.get()) != 1) {
    return Status::Corruption(w + ": dataset '" + std::string(name) + "' is not a 1-D table");
  }
  hsize_t n = 0;
  H5Sget_simple_extent_dims(space.get(), &n, nullptr);
  if (n > max_rows) {
    return Status::Corruption(w + ": dataset '" + std::string(name) + "' claims " +
                              std::to_string(n) + " rows, more than the file can hold");
  }
  rows->assign(n, Row{});
  if (n > 0 && H5Dread(ds.get(), type, H5S_ALL, H5S_ALL, H5P_DEFAULT, rows->data()) < 0) {
    return Status::Corruption(w + ": dataset '" + std::string(name) +
                              "' does not have the expected columns (" + Hdf5Error() + ")");
  }
  *space_out = std::move(space);
  return Status::OK();
}

template <typename Row>
void Reclaim(hid_t type, const Hid& space, std::vector<Row>* rows) {
  if (rows->empty() || !space.ok()) return;
#if H5_VERSION_GE(1, 12, 0)
  H5Treclaim(type, space.get(), H5P_DEFAULT, rows->data());
#else
  H5Dvlen_reclaim(type, space.get(), H5P_DEFAULT, rows->data());
#endif
}

std::string Str(const char* p) { return p == nullptr ? std::string() : std::string(p); }
// A shape or box; sets *bad when it has too many dimensions or no data.
std::vector<int64_t> I64s(const hvl_t& v, bool* bad) {
  if (v.len > static_cast<size_t>(kMaxDims) || (v.len > 0 && v.p == nullptr)) {
    *bad = true;
    return {};
  }
  const auto* p = static_cast<const int64_t*>(v.p);
  return std::vector<int64_t>(p, p + v.len);
}

Status EncodeInto(hid_t f, const Manifest& m) {
  Types t;
  hid_t root = f;
  const ManifestInfo& i = m.info;
  uint32_t u32;
  int64_t i64;
  uint64_t u64;
  DS_RETURN_IF_ERROR(WriteAttr(root, "format_version", H5T_NATIVE_UINT32, &i.format_version));
  DS_RETURN_IF_ERROR(WriteStrAttr(root, "tag", i.tag));
  DS_RETURN_IF_ERROR(WriteAttr(root, "step", H5T_NATIVE_INT64, &(i64 = i.step)));
  DS_RETURN_IF_ERROR(WriteAttr(root, "world_size", H5T_NATIVE_UINT32, &(u32 = i.world_size)));
  DS_RETURN_IF_ERROR(WriteAttr(root, "zero_stage", H5T_NATIVE_UINT32, &(u32 = i.zero_stage)));
  DS_RETURN_IF_ERROR(WriteAttr(root, "tp_degree", H5T_NATIVE_UINT32, &(u32 = i.tp_degree)));
  DS_RETURN_IF_ERROR(WriteAttr(root, "pp_degree", H5T_NATIVE_UINT32, &(u32 = i.pp_degree)));
  DS_RETURN_IF_ERROR(
      WriteAttr(root, "partition_alignment", H5T_NATIVE_UINT64, &(u64 = i.partition_alignment)));
  DS_RETURN_IF_ERROR(
      WriteAttr(root, "created_micros", H5T_NATIVE_INT64, &(i64 = i.created_micros)));
  DS_RETURN_IF_ERROR(WriteStrAttr(root, "writer_version", i.writer_version));
  DS_RETURN_IF_ERROR(WriteStrAttr(root, "config_json", i.config_json));
  DS_RETURN_IF_ERROR(WriteStrAttr(root, "metrics_json", i.metrics_json));
  DS_RETURN_IF_ERROR(
      WriteAttr(root, "content_xxh64", H5T_NATIVE_UINT64, &(u64 = ManifestContentChecksum(m))));

  std::vector<std::string> dtype_names;
  for (const TensorMeta& x : m.tensors) dtype_names.emplace_back(DTypeName(x.dtype));
  std::vector<TensorRow> tensors;
  for (size_t k = 0; k < m.tensors.size(); ++k) {
    const TensorMeta& x = m.tensors[k];
    tensors.push_back({const_cast<char*>(x.name.c_str()), const_cast<char*>(dtype_names[k].c_str()),
                       Vlen(x.shape.data(), x.shape.size())});
  }
  DS_RETURN_IF_ERROR(WriteTable(f, "tensors", t.tensor.get(), tensors));
  std::vector<SliceRow> slices;
  for (const SliceMeta& s : m.slices) {
    slices.push_back({s.tensor, s.rank, Vlen(s.box_offset.data(), s.box_offset.size()),
                      Vlen(s.box_length.data(), s.box_length.size()), s.flat_begin, s.flat_end,
                      s.first_chunk, s.offset_in_chunk});
  }
  DS_RETURN_IF_ERROR(WriteTable(f, "slices", t.slice.get(), slices));
  std::vector<FileRow> files;
  for (const FileMeta& x : m.files) {
    files.push_back({const_cast<char*>(x.name.c_str()), x.size, x.rank});
  }
  DS_RETURN_IF_ERROR(WriteTable(f, "files", t.file.get(), files));
  std::vector<ChunkRow> chunks;
  for (const ChunkMeta& c : m.chunks) {
    chunks.push_back({c.file, c.offset, c.stored_len, c.raw_len, static_cast<uint8_t>(c.codec),
                      c.elem_size, c.raw_xxh64, c.stored_xxh64});
  }
  DS_RETURN_IF_ERROR(WriteTable(f, "chunks", t.chunk.get(), chunks));
  std::vector<BlobRow> blobs;
  for (const BlobMeta& b : m.blobs) {
    blobs.push_back({const_cast<char*>(b.name.c_str()), Vlen(b.data.data(), b.data.size())});
  }
  DS_RETURN_IF_ERROR(WriteTable(f, "blobs", t.blob.get(), blobs));
  return Status::OK();
}

Status DecodeFrom(hid_t f, uint64_t image_size, Manifest* m, const std::string& w) {
  Types t;
  ManifestInfo& i = m->info;
  DS_RETURN_IF_ERROR(ReadAttr(f, "format_version", H5T_NATIVE_UINT32, &i.format_version, w));
  if (i.format_version == 0 || i.format_version > kManifestFormatVersion) {
    return Status::Corruption(w + ": manifest format version " + std::to_string(i.format_version) +
                              " is not one this dstrain reads (it reads 1 to " +
                              std::to_string(kManifestFormatVersion) +
                              "); written by a newer dstrain? upgrade to read it");
  }
  DS_RETURN_IF_ERROR(ReadStrAttr(f, "tag", &i.tag, w));
  DS_RETURN_IF_ERROR(ReadAttr(f, "step", H5T_NATIVE_INT64, &i.step, w));
  DS_RETURN_IF_ERROR(ReadAttr(f, "world_size", H5T_NATIVE_UINT32, &i.world_size, w));
  DS_RETURN_IF_ERROR(ReadAttr(f, "zero_stage", H5T_NATIVE_UINT32, &i.zero_stage, w));
  DS_RETURN_IF_ERROR(ReadAttr(f, "tp_degree", H5T_NATIVE_UINT32, &i.tp_degree, w));
  DS_RETURN_IF_ERROR(ReadAttr(f, "pp_degree", H5T_NATIVE_UINT32, &i.pp_degree, w));
  DS_RETURN_IF_ERROR(
      ReadAttr(f, "partition_alignment", H5T_NATIVE_UINT64, &i.partition_alignment, w));
  DS_RETURN_IF_ERROR(ReadAttr(f, "created_micros", H5T_NATIVE_INT64, &i.created_micros, w));
  DS_RETURN_IF_ERROR(ReadStrAttr(f, "writer_version", &i.writer_version, w));
  DS_RETURN_IF_ERROR(ReadStrAttr(f, "config_json", &i.config_json, w));
  DS_RETURN_IF_ERROR(ReadStrAttr(f, "metrics_json", &i.metrics_json, w));
  uint64_t stored_checksum = 0;
  DS_RETURN_IF_ERROR(ReadAttr(f, "content_xxh64", H5T_NATIVE_UINT64, &stored_checksum, w));

  bool bad = false;
  {
    std::vector<TensorRow> rows;
    Hid space;
    Status s = ReadTable(f, "tensors", t.tensor.get(), image_size, &rows, &space, w);
    for (const TensorRow& r : rows) {
      std::optional<DType> d = DTypeFromName(Str(r.dtype));
      if (s.ok() && !d) {
        s = Status::Corruption(w + ": tensor '" + Str(r.name) + "' has unknown dtype '" +
                               Str(r.dtype) + "'");
      }
      m->tensors.push_back({Str(r.name), d.value_or(DType::kU8), I64s(r.shape, &bad)});
    }
    Reclaim(t.tensor.get(), space, &rows);
    DS_RETURN_IF_ERROR(s);
  }
  {
    std::vector<SliceRow> rows;
    Hid space;
    Status s = ReadTable(f, "slices", t.slice.get(), image_size, &rows, &space, w);
    for (const SliceRow& r : rows) {
      m->slices.push_back({r.tensor, r.rank, I64s(r.box_offset, &bad), I64s(r.box_length, &bad),
                           r.flat_begin, r.flat_end, r.first_chunk, r.offset_in_chunk});
    }
    Reclaim(t.slice.get(), space, &rows);
    DS_RETURN_IF_ERROR(s);
  }
  {
    std::vector<FileRow> rows;
    Hid space;
    Status s = ReadTable(f, "files", t.file.get(), image_size, &rows, &space, w);
    for (const FileRow& r : rows) m->files.push_back({Str(r.name), r.size, r.rank});
    Reclaim(t.file.get(), space, &rows);
    DS_RETURN_IF_ERROR(s);
  }
  {
    std::vector<ChunkRow> rows;
    Hid space;
    DS_RETURN_IF_ERROR(ReadTable(f, "chunks", t.chunk.get(), image_size, &rows, &space, w));
    for (const ChunkRow& r : rows) {
      m->chunks.push_back({r.file, r.offset, r.stored_len, r.raw_len, static_cast<Codec>(r.codec),
                           r.elem_size, r.raw_xxh64, r.stored_xxh64});
    }
  }
  {
    std::vector<BlobRow> rows;
    Hid space;
    Status s = ReadTable(f, "blobs", t.blob.get(), image_size, &rows, &space, w);
    for (const BlobRow& r : rows) {
      if (r.data.len > 0 && r.data.p == nullptr) bad = true;
      m->blobs.push_back(
          {Str(r.name), r.data.len == 0 || r.data.p == nullptr
                            ? std::string()
                            : std::string(static_cast<const char*>(r.data.p), r.data.len)});
    }
    Reclaim(t.blob.get(), space, &rows);
    DS_RETURN_IF_ERROR(s);
  }
  if (bad) {
    return Status::Corruption(w + ": a shape, box or blob is malformed (more than " +
                              std::to_string(kMaxDims) + " dimensions, or missing data)");
  }
  if (ManifestContentChecksum(*m) != stored_checksum) {
    return Status::Corruption(w +
                              ": the tables fail their checksum (content_xxh64): the "
                              "manifest is damaged; an older checkpoint may still be good");
  }
  return Status::OK();
}

void QuietHdf5() {
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
}

// The HDF5 image of `m` with a zeroed user block, cut at HDF5's end of file.
Result<std::string> BuildHdf5Image(const Manifest& m) {
  std::lock_guard<std::mutex> lock(Hdf5Mutex());
  QuietHdf5();
  ImageSink sink;
  {
    Hid fapl(H5Pcreate(H5P_FILE_ACCESS));
    // Format of HDF5 1.10 on both bounds: checksummed metadata, readable by 1.10 and later.
    H5_CHECK(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V110, H5F_LIBVER_V110), "HDF5 setup");
    H5_CHECK(H5Pset_fapl_core(fapl.get(), 1 << 20, 0), "HDF5 setup");  // in memory, no file
    H5FD_file_image_callbacks_t callbacks = ImageSinkCallbacks(&sink);
    H5_CHECK(H5Pset_file_image_callbacks(fapl.get(), &callbacks), "HDF5 setup");
    Hid fcpl(H5Pcreate(H5P_FILE_CREATE));
    H5_CHECK(H5Pset_userblock(fcpl.get(), kManifestUserBlockBytes), "HDF5 setup");
    hid_t id = H5Fcreate("manifest.h5", H5F_ACC_TRUNC, fcpl.get(), fapl.get());
    if (id < 0) return Status::IOError("creating the manifest image: " + Hdf5Error());
    Status s = EncodeInto(id, m);
    if (H5Fclose(id) < 0 && s.ok())
      s = Status::IOError("closing the manifest image: " + Hdf5Error());
    DS_RETURN_IF_ERROR(s);
  }
  DS_RETURN_IF_ERROR(TrimToEndOfFile(&sink.image));
  return std::move(sink.image);
}

// Parses a format-1 HDF5 image. The caller holds the HDF5 mutex, or is the isolated child (whose
// copy of the mutex is locked by the parent's thread and must not be touched).
Result<Manifest> ParseHdf5Image(std::span<const std::byte> image, const std::string& w) {
  Manifest m;
  Hid fapl(H5Pcreate(H5P_FILE_ACCESS));
  H5_CHECK(H5Pset_fapl_core(fapl.get(), 1 << 20, 0), "HDF5 setup");
  // HDF5 copies the image (no callbacks given), so `image` may be read-only memory.
  H5_CHECK(H5Pset_file_image(fapl.get(), const_cast<std::byte*>(image.data()), image.size()),
           "HDF5 setup");
  hid_t id = H5Fopen("manifest.h5", H5F_ACC_RDONLY, fapl.get());
  if (id < 0) {
    return Status::Corruption(w + ": HDF5 cannot open it (" + Hdf5Error() +
                              "); the manifest is damaged");
  }
  Hid file(id);
  DS_RETURN_IF_ERROR(DecodeFrom(file.get(), image.size(), &m, w));
  return m;
}

// DSTRAIN_MANIFEST_PARSE_TIMEOUT_S: how long a format-1 parse may take (seconds, default 30).
// DecodeManifest takes bytes, not an Env: the variable is read from the process's own.
Result<std::chrono::milliseconds> ParseTimeout() {
  const std::optional<std::string> text =
      io::Env::Default()->GetEnvVar("DSTRAIN_MANIFEST_PARSE_TIMEOUT_S");
  if (!text.has_value() || text->empty()) return std::chrono::milliseconds(30000);
  const char* v = text->c_str();
  char* end = nullptr;
  const double s = std::strtod(v, &end);
  if (end == v || *end != '\0' || !std::isfinite(s) || s <= 0 || s > 86400) {
    return Status::InvalidArgument("DSTRAIN_MANIFEST_PARSE_TIMEOUT_S='" + text->substr(0, 32) +
                                   "' is not a number of seconds in (0, 86400]");
  }
  return std::chrono::milliseconds(static_cast<int64_t>(std::ceil(s * 1000)));
}

// Format 1: libhdf5 parses the image in a child process (it crashes and hangs on crafted files),
// which answers with the record; the parent trusts nothing but what its own parser accepts.
Result<Manifest> DecodeFormat1(std::span<const std::byte> image, const std::string& w) {
  {
    // The library's global state is set up here, once, not in every child.
    std::lock_guard<std::mutex> lock(Hdf5Mutex());
    QuietHdf5();
  }
  io::IsolationLimits limits;
  DS_ASSIGN_OR_RETURN(limits.timeout, ParseTimeout());
  limits.memory_bytes = (uint64_t{1} << 30) + 256 * image.size();
  limits.max_answer_bytes = limits.memory_bytes;
  limits.hold_across_fork = &Hdf5Mutex();
  limits.on_failure = [&](const std::string& how) {
    const bool hang = how.rfind("did not finish", 0) == 0;
    return Status::Corruption(w + ": the HDF5 library " + how +
                              " parsing it: the manifest is damaged; an older checkpoint may "
                              "still be good" +
                              (hang ? " (DSTRAIN_MANIFEST_PARSE_TIMEOUT_S sets the limit)" : ""));
  };
  // Everything the child can fail at is the file's doing (the image is in memory): Corruption.
  auto parse = [&]() -> Result<std::string> {
    Result<Manifest> m = ParseHdf5Image(image, w);
    if (m.ok()) return EncodeManifestRecord(*m);
    if (m.status().IsCorruption()) return m.status();
    return Status::Corruption(w + ": HDF5 cannot parse it (" + m.status().message() +
                              "); the manifest is damaged");
  };
  DS_ASSIGN_OR_RETURN(std::string record, io::RunIsolated(parse, limits));
  return DecodeManifestRecord(std::as_bytes(std::span(record.data(), record.size())), w);
}

}  // namespace

Result<std::string> EncodeManifest(const Manifest& m) {
  DS_RETURN_IF_ERROR(ValidateManifest(m, "manifest to write"));
  Manifest v2 = m;
  v2.info.format_version = 2;
  DS_ASSIGN_OR_RETURN(std::string file, BuildHdf5Image(v2));
  const uint64_t record_offset = file.size();
  file += EncodeManifestRecord(v2);
  SealUserBlock(&file, 2, record_offset);
  return file;
}

Result<std::string> EncodeManifestV1(const Manifest& m) {
  DS_RETURN_IF_ERROR(ValidateManifest(m, "manifest to write"));
  Manifest v1 = m;
  v1.info.format_version = 1;
  DS_ASSIGN_OR_RETURN(std::string file, BuildHdf5Image(v1));
  SealUserBlock(&file, 1, 0);
  return file;
}

Result<Manifest> DecodeManifest(std::span<const std::byte> image, std::string_view what) {
  const std::string w(what);
  DS_ASSIGN_OR_RETURN(UserBlock ub, CheckUserBlock(image, w));
  Manifest m;
  if (ub.version == 1) {
    DS_ASSIGN_OR_RETURN(m, DecodeFormat1(image, w));
  } else {
    DS_ASSIGN_OR_RETURN(m, DecodeManifestRecord(image.subspan(ub.record_offset), w));
    if (m.info.format_version != ub.version) {
      return Status::Corruption(w + ": the manifest's record says format version " +
                                std::to_string(m.info.format_version) + " but its header says " +
                                std::to_string(ub.version));
    }
  }
  DS_RETURN_IF_ERROR(ValidateManifest(m, w));
  return m;
}

Status WriteManifest(io::Env* env, const std::string& path, const Manifest& m) {
  DS_ASSIGN_OR_RETURN(std::string image, EncodeManifest(m));
  return env->WriteFileSynced(path, image);
}

Result<Manifest> ReadManifest(io::Env* env, const std::string& path) {
  DS_ASSIGN_OR_RETURN(std::string image, env->ReadFileToString(path));
  return DecodeManifest(std::as_bytes(std::span(image.data(), image.size())), path);
}

}  // namespace ds::fmt
