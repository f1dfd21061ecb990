// Where ZeRO state offloaded to NVMe lives (ZeRO-Infinity's swap files): a rank's directory
// <nvme_path>/<job>/rank-<N> with one file per buffer (the fp32 master weights, exp_avg,
// exp_avg_sq; stage 3's parameter partition in the training precision), each a flat array of
// elements (float32, or 2-byte bf16/fp16 parameters) read and written by element range through
// io::Env (O_DIRECT where the filesystem allows), so that FaultEnv reaches every swap like any
// other write. No LibTorch.
//
// Swap files hold state only within the run that wrote them: the rank's directory is locked while
// in use (a second run on the same directory is refused), a set a killed run left behind is
// removed at Open and never read, and the directory is removed when the SwapSpace is destroyed.
// Every error names the rank, the file and the elements, and says that the checkpoints are
// untouched (a swap never writes outside its directory).
// Thread safety: Read and Write of different ranges may run at once; Open and destruction on one
// thread.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/env.h"

namespace ds::engine {

// One swap file: a name ("exp_avg"), its length in elements and their width in bytes.
struct SwapBuffer {
  std::string name;
  int64_t elements = 0;
  int element_bytes = 4;
};

struct SwapOptions {
  io::Env* env = nullptr;
  std::string nvme_path;  // offload_*.nvme_path: an existing directory
  std::string job;        // SwapJobName: the same for every restart of one job
  int rank = 0;
  std::vector<SwapBuffer> buffers;
  bool direct = true;                               // O_DIRECT where the filesystem allows it
  std::string key = "offload_optimizer.nvme_path";  // the config key errors tell the user to set
};

class SwapSpace {
 public:
  // Creates the rank's directory and its files at their full length (preallocated: a disk that
  // cannot hold them fails here, with NoSpace, not in the middle of a step).
  static Result<std::unique_ptr<SwapSpace>> Open(const SwapOptions& options);
  ~SwapSpace();  // removes the files and the directory (errors are logged)
  SwapSpace(const SwapSpace&) = delete;
  SwapSpace& operator=(const SwapSpace&) = delete;

  // Elements [begin, begin + out.size()) of float32 buffer `buffer`.
  Status Read(int buffer, int64_t begin, std::span<float> out) const;
  Status Write(int buffer, int64_t begin, std::span<const float> data);
  // The same for a buffer of any width: `out.size()` (`data.size()`) is a whole number of
  // elements' bytes, starting at element `begin`.
  Status ReadBytes(int buffer, int64_t begin, std::span<std::byte> out) const;
  Status WriteBytes(int buffer, int64_t begin, std::span<const std::byte> data);

  const std::string& dir() const { return dir_; }
  std::string FilePath(int buffer) const;
  // Open found (and removed) the swap files of a run that did not end cleanly.
  bool reclaimed_stale() const { return reclaimed_stale_; }
  uint64_t bytes() const;  // on disk, all buffers

 private:
  SwapSpace() = default;
  // `bytes` from element `begin` of `buffer`: inside it, whole elements.
  Status Check(int buffer, int64_t begin, size_t bytes, const char* what) const;
  Status Failed(const Status& s, const char* verb, int buffer, int64_t begin, size_t bytes) const;

  SwapOptions o_;
  std::string dir_;
  std::unique_ptr<io::FileLock> lock_;
  std::vector<std::unique_ptr<io::File>> files_;
  bool reclaimed_stale_ = false;
};

// "job-<16 hex digits>": a hash of `key` (the job's checkpoint directory, made absolute), so that
// a restarted job finds its own stale swap files and two jobs never share a directory.
std::string SwapJobName(const std::string& key);

}  // namespace ds::engine
