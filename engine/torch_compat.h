// The one place where differences between LibTorch versions are handled. dstrain targets the
// 2.x API of PyTorch's own wheel (2.11 on every machine we build on); code elsewhere uses the
// names below instead of testing versions itself.
// Thread safety: constants and macros only.
#pragma once

#include <torch/version.h>

#define DS_TORCH_VERSION_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||             \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

static_assert(DS_TORCH_VERSION_AT_LEAST(2, 0),
              "dstrain needs LibTorch 2.x (PyTorch's wheel); Debian's libtorch-dev 1.13 is too old");
