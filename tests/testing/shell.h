// Running a command-line tool from a test: its exit status and everything it printed (stdout and
// stderr together). Thread safety: each call runs its own shell.
#pragma once

#include <optional>
#include <string>

#include "bench/fio.h"

namespace ds::testing {

struct ShellResult {
  int status = 0;   // the command's exit status; -1 when the shell did not report one
  std::string out;  // stdout and stderr, interleaved
};

inline ShellResult Sh(const std::string& cmd) {
  ShellResult r;
  std::optional<std::string> out = bench::RunCapture(cmd + " 2>&1; echo \"rc=$?\"", &r.status);
  r.out = out.value_or("");
  size_t at = r.out.rfind("rc=");
  r.status = at == std::string::npos ? -1 : std::stoi(r.out.substr(at + 3));
  r.out.resize(at == std::string::npos ? r.out.size() : at);
  return r;
}

}  // namespace ds::testing
