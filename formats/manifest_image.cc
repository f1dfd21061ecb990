// The manifest's in-memory HDF5 image: the core driver's buffer caught as the file closes, trimmed
// to the file's end, and sealed by the DSTRMANF user block (docs/format.md, 4.0).
#include "formats/internal/manifest_image.h"

#include <cstdlib>
#include <cstring>

#include "formats/endian.h"
#include "formats/manifest.h"

namespace ds::fmt {
namespace {

// HDF5 1.10.8's H5Fget_file_image copies an open file's image whose superblock checksum does
// not match (h5py: "incorrect metadata checksum"). So the file is closed first and its final
// image caught as the core driver frees it: these callbacks own the driver's buffer.
void* ImageMalloc(size_t n, H5FD_file_image_op_t, void* udata) {
  void* p = std::malloc(n);
  if (p != nullptr) static_cast<ImageSink*>(udata)->sizes[reinterpret_cast<uintptr_t>(p)] = n;
  return p;
}
void* ImageMemcpy(void* dst, const void* src, size_t n, H5FD_file_image_op_t, void*) {
  return std::memcpy(dst, src, n);
}
void* ImageRealloc(void* p, size_t n, H5FD_file_image_op_t, void* udata) {
  auto* sink = static_cast<ImageSink*>(udata);
  const auto old_key = reinterpret_cast<uintptr_t>(p);
  void* q = std::realloc(p, n);
  if (q != nullptr) {
    sink->sizes.erase(old_key);
    sink->sizes[reinterpret_cast<uintptr_t>(q)] = n;
  }
  return q;
}
herr_t ImageFree(void* p, H5FD_file_image_op_t op, void* udata) {
  auto* sink = static_cast<ImageSink*>(udata);
  if (p != nullptr && op == H5FD_FILE_IMAGE_OP_FILE_CLOSE) {
    sink->image.assign(static_cast<const char*>(p), sink->sizes[reinterpret_cast<uintptr_t>(p)]);
  }
  sink->sizes.erase(reinterpret_cast<uintptr_t>(p));
  std::free(p);
  return 0;
}
void* UdataCopy(void* udata) { return udata; }
herr_t UdataFree(void*) { return 0; }

}  // namespace

H5FD_file_image_callbacks_t ImageSinkCallbacks(ImageSink* sink) {
  return {ImageMalloc, ImageMemcpy, ImageRealloc, ImageFree, UdataCopy, UdataFree, sink};
}

// The driver's buffer is longer than the file: keep the bytes up to the superblock's
// end-of-file address (superblock versions 2 and 3, after the user block: a u64 at byte 28).
Status TrimToEndOfFile(std::string* image) {
  const auto* sb = reinterpret_cast<const std::byte*>(image->data()) + kManifestUserBlockBytes;
  if (image->size() < kManifestUserBlockBytes + 48 ||
      (sb[8] != std::byte{2} && sb[8] != std::byte{3}) || sb[9] != std::byte{8}) {
    return Status::IOError("the manifest image has an unexpected superblock");
  }
  const uint64_t eof = GetU64(sb + 28);
  if (eof > image->size() || eof <= kManifestUserBlockBytes) {
    return Status::IOError("the manifest image's end-of-file address is out of range");
  }
  image->resize(eof);
  return Status::OK();
}

// The user block (which HDF5 leaves to applications) carries a checksum of everything after
// it, checked before a byte is parsed; in format 2 it also says where our record lies.
void SealUserBlock(std::string* file, uint32_t version, uint64_t record_offset) {
  auto* ub = reinterpret_cast<std::byte*>(file->data());
  const auto bytes = std::as_bytes(std::span(file->data(), file->size()));
  std::memset(ub, 0, kManifestUserBlockBytes);
  std::memcpy(ub, kManifestMagic, 8);
  PutU32(ub + kUserBlockVersionAt, version);
  PutU64(ub + kUserBlockLengthAt, file->size());
  if (version >= 2) {
    PutU64(ub + kUserBlockRecordAt, record_offset);
    PutU64(ub + kUserBlockRecordLengthAt, file->size() - record_offset);
    PutU64(ub + kUserBlockRecordChecksumAt, Xxh64(bytes.subspan(record_offset)));
  }
  PutU64(ub + kUserBlockChecksumAt, Xxh64(bytes.subspan(kManifestUserBlockBytes)));
}

Result<UserBlock> CheckUserBlock(std::span<const std::byte> file, const std::string& w) {
  if (file.size() < kManifestUserBlockBytes || std::memcmp(file.data(), kManifestMagic, 8) != 0) {
    return Status::Corruption(w + ": not a dstrain manifest (" + std::to_string(file.size()) +
                              " bytes, no DSTRMANF user block; truncated or overwritten?)");
  }
  UserBlock ub;
  ub.version = GetU32(file.data() + kUserBlockVersionAt);
  if (ub.version == 0 || ub.version > kManifestFormatVersion) {
    return Status::Corruption(w + ": manifest format version " + std::to_string(ub.version) +
                              " is not one this dstrain reads (it reads 1 to " +
                              std::to_string(kManifestFormatVersion) +
                              "); written by a newer dstrain? upgrade to read it");
  }
  const uint64_t length = GetU64(file.data() + kUserBlockLengthAt);
  if (length != file.size()) {
    return Status::Corruption(w + ": the manifest has " + std::to_string(file.size()) +
                              " bytes but its header says " + std::to_string(length) +
                              (file.size() < length ? " (truncated)" : " (appended to)"));
  }
  if (GetU64(file.data() + kUserBlockChecksumAt) != Xxh64(file.subspan(kManifestUserBlockBytes))) {
    return Status::Corruption(w +
                              ": the manifest fails its checksum (damaged); an older "
                              "checkpoint may still be good: 'dsckpt list'");
  }
  if (ub.version == 1) return ub;
  ub.record_offset = GetU64(file.data() + kUserBlockRecordAt);
  ub.record_length = GetU64(file.data() + kUserBlockRecordLengthAt);
  if (ub.record_offset < kManifestUserBlockBytes || ub.record_offset > file.size() ||
      ub.record_length != file.size() - ub.record_offset) {
    return Status::Corruption(w + ": the manifest's header places its record at byte " +
                              std::to_string(ub.record_offset) + " (" +
                              std::to_string(ub.record_length) +
                              " bytes), not between the 512-byte header and the end of the " +
                              std::to_string(file.size()) + "-byte file (damaged)");
  }
  if (GetU64(file.data() + kUserBlockRecordChecksumAt) != Xxh64(file.subspan(ub.record_offset))) {
    return Status::Corruption(w +
                              ": the manifest's record fails its checksum (damaged); an older "
                              "checkpoint may still be good: 'dsckpt list'");
  }
  return ub;
}

}  // namespace ds::fmt
