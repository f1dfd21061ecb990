// The plumbing around manifest.h5's in-memory HDF5 image (manifest_image.cc), for
// manifest_h5.cc: catching the core driver's buffer as the file closes, trimming it to the file's
// end, and the DSTRMANF user block that seals the file with a checksum of the rest and (format
// 2) the place and checksum of the record, verified before any byte is parsed (docs/format.md,
// 4.0). Internal to ds_formats.
// Thread safety: the callbacks run inside HDF5 calls, which manifest_h5.cc serialises; the other
// functions are pure.
#pragma once

#include <hdf5.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>

#include "io/status.h"

namespace ds::fmt {

// Where the core driver's buffers are tracked while HDF5 builds the file, and where the final
// image lands when it closes.
struct ImageSink {
  std::string image;
  // Buffers the core driver holds (by address: a freed pointer is never used) and their sizes.
  std::map<uintptr_t, size_t> sizes;
};

// File image callbacks for H5Pset_file_image_callbacks that hand the image to `sink` (which must
// outlive the file).
H5FD_file_image_callbacks_t ImageSinkCallbacks(ImageSink* sink);

// Cuts the driver's buffer to the superblock's end-of-file address (IOError if it has none).
Status TrimToEndOfFile(std::string* image);

// The user block's fields (docs/format.md, 4.0), as byte offsets into the file.
inline constexpr size_t kUserBlockVersionAt = 8;          // u32
inline constexpr size_t kUserBlockLengthAt = 16;          // u64: bytes of the whole file
inline constexpr size_t kUserBlockChecksumAt = 24;        // u64: xxh64 of [512, length)
inline constexpr size_t kUserBlockRecordAt = 32;          // u64: where the record starts (format 2)
inline constexpr size_t kUserBlockRecordLengthAt = 40;    // u64: its bytes; it ends the file
inline constexpr size_t kUserBlockRecordChecksumAt = 48;  // u64: xxh64 of the record

// What a checked user block says.
struct UserBlock {
  uint32_t version = 0;
  uint64_t record_offset = 0;  // bytes; format 2 only
  uint64_t record_length = 0;  // bytes
};

// Writes the user block (kManifestUserBlockBytes) of `version` over the start of `file`: magic,
// version, length, xxh64 of the rest, and for version 2 the record, which starts at
// `record_offset` and runs to the end.
void SealUserBlock(std::string* file, uint32_t version, uint64_t record_offset);
// Corruption, naming `w`, unless the user block is ours, of a version we read, and matches the
// file's length and checksums (and, in format 2, the record's place and checksum).
Result<UserBlock> CheckUserBlock(std::span<const std::byte> file, const std::string& w);

}  // namespace ds::fmt
