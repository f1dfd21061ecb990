// Where the tests find the build, the sources and the Python with the readers our users have.
// Each comes from the build (compile definitions) unless an environment variable of the same
// name overrides it.
#pragma once

#include <cstdlib>
#include <string>

namespace ds::testing {

inline std::string PathSetting(const char* name, const char* built_in) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : std::string(built_in);
}

inline std::string BuildDir() { return PathSetting("DSTRAIN_BUILD_DIR", DSTRAIN_BUILD_DIR); }
inline std::string SourceDir() { return PathSetting("DSTRAIN_SOURCE_DIR", DSTRAIN_SOURCE_DIR); }
// Empty when the build found no .venv.
inline std::string Python() { return PathSetting("DSTRAIN_PYTHON", DSTRAIN_PYTHON); }

}  // namespace ds::testing
