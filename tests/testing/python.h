// The readers our users have (h5py, safetensors, TensorBoard, numpy, torch) in DSTRAIN_PYTHON:
// a test that checks our files with them skips where they are missing on a developer's machine,
// and fails in CI (CI=true), where a missing reader would otherwise pass for a checked file.
// Thread safety: each call runs its own Python.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "bench/fio.h"
#include "testing/paths.h"

namespace ds::testing {

// True in CI: the environment's CI is "true" or "1" (GitHub Actions, GitLab and most CI
// systems set CI=true; .ci/run exports it when the CI system did not).
inline bool InCi() {
  const char* v = std::getenv("CI");
  return v != nullptr && (std::string(v) == "true" || std::string(v) == "1");
}

// Empty when DSTRAIN_PYTHON imports every module of `modules` ("h5py, numpy"; "" for a plain
// Python); otherwise what is missing and how to get it.
inline std::string MissingPythonModules(const std::string& modules) {
  const std::string python = Python();
  const std::string what = modules.empty() ? "a Python" : "a Python with " + modules;
  if (python.empty()) {
    return "no DSTRAIN_PYTHON: the build found no .venv, and the test needs " + what +
           " (./build.sh build creates .venv from requirements.txt)";
  }
  int status = 0;
  const std::string import = modules.empty() ? "pass" : "import " + modules;
  if (!bench::RunCapture(
          bench::ShellQuote(python) + " -c " + bench::ShellQuote(import) + " >/dev/null 2>&1",
          &status)) {
    return python + " cannot '" + import + "' (exit status " + std::to_string(status) +
           "); the test needs " + what + ": pip install -r requirements.txt";
  }
  return "";
}

}  // namespace ds::testing

// Skips the test when DSTRAIN_PYTHON cannot import `modules` (a string: "h5py, numpy"), and
// fails it instead in CI, where the readers are part of the environment.
#define DS_SKIP_OR_FAIL_WITHOUT_PYTHON(modules)                                                   \
  do {                                                                                            \
    const std::string ds_missing_python_ = ::ds::testing::MissingPythonModules(modules);          \
    if (!ds_missing_python_.empty()) {                                                            \
      if (::ds::testing::InCi()) {                                                                \
        GTEST_FAIL() << ds_missing_python_                                                        \
                     << " (CI=true: in CI the readers our users have are required, not skipped)"; \
      }                                                                                           \
      GTEST_SKIP() << ds_missing_python_ << " (in CI, with CI=true, this fails)";                 \
    }                                                                                             \
  } while (0)
