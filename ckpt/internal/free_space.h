// Refusing work up front when its target filesystem cannot hold the result, shared by export and
// import (ckpt/export.cc, ckpt/import.cc). Internal to ds_ckpt.
// Thread safety: pure functions over an Env.
#pragma once

#include <cstdint>
#include <string>

#include "io/env.h"
#include "io/units.h"

namespace ds::ckpt::internal {

// `path` itself when it is an existing directory, else its nearest existing ancestor: where a
// file or directory about to be created at `path` will live.
inline Result<std::string> ExistingDirFor(io::Env* env, std::string path) {
  for (int depth = 0; depth < 256; ++depth) {
    DS_ASSIGN_OR_RETURN(bool exists, env->Exists(path));
    if (exists) return path;
    const std::string parent = io::DirName(path);
    if (parent == path) break;
    path = parent;
  }
  return Status::NotFound("no existing directory above " + path);
}

// NoSpace, naming both numbers, when the filesystem that will hold `path` has less than
// `needed` bytes available. `what` says what needs them ("the export").
inline Status CheckFreeSpace(io::Env* env, const std::string& path, uint64_t needed,
                             const std::string& what) {
  DS_ASSIGN_OR_RETURN(std::string dir, ExistingDirFor(env, path));
  DS_ASSIGN_OR_RETURN(io::SpaceInfo space, env->StatFs(dir));
  if (space.available_bytes >= needed) return Status::OK();
  return Status::NoSpace(what + " needs " + io::FormatBytes(needed) + " (" +
                         std::to_string(needed) + " bytes) but the filesystem of " + dir +
                         " has only " + io::FormatBytes(space.available_bytes) + " (" +
                         std::to_string(space.available_bytes) +
                         " bytes) free; free some space or write elsewhere");
}

}  // namespace ds::ckpt::internal
