// TensorBoard event files written by hand: TFRecord framing (length, masked CRC-32C of the
// length, the record, masked CRC-32C of the record) around protobuf `Event` messages holding
// scalar summaries. TensorBoard's own reader (and tf.summary_iterator) reads them; no
// TensorFlow or protobuf library is needed. Files go through io::Env.
// Thread safety: one thread writes; Flush/Close from the same thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/env.h"

namespace ds::engine {

// CRC-32C (Castagnoli) and TFRecord's mask of it.
uint32_t Crc32c(std::string_view data);
uint32_t MaskedCrc32c(std::string_view data);

class TensorBoardWriter {
 public:
  // Creates `dir` and a file events.out.tfevents.<seconds>.<host>.<pid>.dstrain in it, starting
  // with the file_version event TensorBoard expects.
  static Result<std::unique_ptr<TensorBoardWriter>> Open(io::Env* env, const std::string& dir);
  ~TensorBoardWriter();

  Status AddScalar(const std::string& tag, double value, int64_t step);
  // A SessionLog START event at `step`: TensorBoard's reader then drops every event it read
  // before with a step >= `step` (a restarted run's points replace the crashed run's), as
  // torch's SummaryWriter(purge_step=step) does.
  Status AddSessionStart(int64_t step);
  Status Flush();  // writes buffered records (not fsync: logs are not checkpoints)
  const std::string& path() const { return path_; }

 private:
  TensorBoardWriter(io::Env* env, std::string path, std::unique_ptr<io::File> file);
  Status WriteRecord(const std::string& event);
  io::Env* env_;
  std::string path_;
  std::unique_ptr<io::File> file_;
  uint64_t offset_ = 0;
  std::string pending_;
};

// What a reader gets back from an event file: (tag, step, value) of every scalar, in order.
struct ScalarEvent {
  std::string tag;
  int64_t step;
  double value;
};
// Parses and checks an event file (every CRC); used by tests and `dsrun` tools.
Result<std::vector<ScalarEvent>> ReadTensorBoardScalars(io::Env* env, const std::string& path);

}  // namespace ds::engine
