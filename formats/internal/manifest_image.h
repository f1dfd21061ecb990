// The plumbing around manifest.h5's in-memory HDF5 image (manifest_image.cc), for
// manifest_h5.cc: catching the core driver's buffer as the file closes, trimming it to the file's
// end, and the DSTRMANF user block that seals the image with a checksum of the rest, verified
// before HDF5 parses a byte (docs/format.md, 4.0). Internal to ds_formats.
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
// Writes the user block (kManifestUserBlockBytes): magic, version, length, xxh64 of the rest.
void SealUserBlock(std::string* image);
// Corruption, naming `w`, unless the user block is ours, of a version we read, and matches the
// image's length and checksum.
Status CheckUserBlock(std::span<const std::byte> image, const std::string& w);

}  // namespace ds::fmt
