// metrics.jsonl as an append-only file of lines: each line is one write at a tracked offset (no
// buffer in the process), durable at Sync, and on open cut back to what a resumed run keeps.
// Thread safety: one thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "io/env.h"

namespace ds::engine::internal {

class JsonLinesFile {
 public:
  // Creates the directory and the file (both durably). resume_step 0 starts the file empty;
  // otherwise the file keeps its leading lines that are complete JSON objects with a "step" <=
  // resume_step, up to the first that is not (a torn tail, or a step the run will redo).
  static Result<std::unique_ptr<JsonLinesFile>> Open(io::Env* env, const std::string& path,
                                                     int64_t resume_step);
  ~JsonLinesFile();

  Status Append(std::string_view line);  // `line` holds no '\n'; written with one
  Status Sync();                         // fdatasync
  Status Close();

  const std::string& path() const { return path_; }
  uint64_t size() const { return offset_; }  // bytes of complete lines

 private:
  JsonLinesFile(std::string path, std::unique_ptr<io::File> file, uint64_t offset)
      : path_(std::move(path)), file_(std::move(file)), offset_(offset) {}

  std::string path_;
  std::unique_ptr<io::File> file_;
  uint64_t offset_;    // bytes: the end of the last complete line
  bool torn_ = false;  // a failed write may have left bytes after offset_
};

// The number of leading bytes of `text` (a metrics.jsonl) that a run resuming after
// `resume_step` keeps, and in `kept_lines` how many lines they hold.
uint64_t KeptPrefixBytes(std::string_view text, int64_t resume_step, int64_t* kept_lines);

}  // namespace ds::engine::internal
