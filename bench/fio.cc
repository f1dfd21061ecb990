#include "bench/fio.h"

#include <sys/wait.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "io/env.h"

namespace ds::bench {

std::string ShellQuote(const std::string& arg) {
  std::string out = "'";
  for (char c : arg) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

std::optional<std::string> RunCapture(const std::string& command, int* exit_status) {
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) {
    *exit_status = -1;
    return std::nullopt;
  }
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  int rc = ::pclose(pipe);
  *exit_status = WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
  if (*exit_status != 0) return std::nullopt;
  return out;
}

namespace {

// One fio job; returns bytes/s of the direction asked for, or a reason.
std::optional<double> FioJob(const std::string& file, const char* rw, const char* engine,
                             uint64_t size, uint64_t block, unsigned depth, std::string* why) {
  std::string cmd = "fio --name=dstrain --filename=" + ShellQuote(file) + " --rw=" + rw +
                    " --bs=" + std::to_string(block) + " --iodepth=" + std::to_string(depth) +
                    " --ioengine=" + engine + " --direct=1 --size=" + std::to_string(size) +
                    " --end_fsync=1 --output-format=json 2>&1";
  int status = 0;
  std::optional<std::string> out = RunCapture(cmd, &status);
  if (!out) {
    *why = std::string("fio --ioengine=") + engine + " --rw=" + rw + " exited with status " +
           std::to_string(status);
    return std::nullopt;
  }
  // fio may print warnings before the JSON document.
  size_t start = out->find('{');
  nlohmann::json doc = nlohmann::json::parse(
      start == std::string::npos ? std::string() : out->substr(start), nullptr, false);
  if (doc.is_discarded() || !doc.contains("jobs") || doc["jobs"].empty()) {
    *why = "could not parse fio's JSON output";
    return std::nullopt;
  }
  const auto& job = doc["jobs"][0];
  if (job.value("error", 0) != 0) {
    *why = std::string("fio reported error ") + std::to_string(job.value("error", 0));
    return std::nullopt;
  }
  const char* dir = std::string_view(rw) == "write" ? "write" : "read";
  return job[dir].value("bw_bytes", 0.0);
}

}  // namespace

FioResult RunFio(const std::string& dir, uint64_t size, uint64_t block, unsigned depth) {
  FioResult r;
  int status = 0;
  if (!RunCapture("command -v fio >/dev/null 2>&1", &status)) {
    r.why_not = "fio is not installed";
    return r;
  }
  std::string file = dir + "/dstrain-fio.dat";
  for (const char* engine : {"io_uring", "libaio", "psync"}) {
    std::string why;
    std::optional<double> w = FioJob(file, "write", engine, size, block, depth, &why);
    std::optional<double> rd;
    if (w) rd = FioJob(file, "read", engine, size, block, depth, &why);
    (void)io::Env::Default()->RemoveFile(file);  // scratch file; a failure here changes nothing
    if (w && rd) {
      r.ran = true;
      r.write_bps = *w;
      r.read_bps = *rd;
      r.engine = engine;
      return r;
    }
    r.why_not = why;
  }
  return r;
}

}  // namespace ds::bench
