// DeepSpeed's csv_monitor layout (deepspeed/monitor/csv_monitor.py, 0.19.8): in one directory,
// a file per tag named after the tag with '/' and ' ' replaced by '_' plus ".csv", starting
// with the row "step,<last component of the tag>", then one "step,value" row per event. Rows
// end in "\r\n" and floats are written as Python's repr(), as Python's csv module does.
// Thread safety: one thread.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "engine/core/tensorboard.h"
#include "io/env.h"

namespace ds::engine::internal {

class CsvMonitor {
 public:
  static Result<std::unique_ptr<CsvMonitor>> Open(io::Env* env, std::string dir);
  ~CsvMonitor();

  // Appends a row to the tag's file, creating it (with its header row) when missing or empty.
  Status Write(const ScalarEvent& event);
  Status Close();

 private:
  struct CsvFile {
    std::unique_ptr<io::File> file;
    uint64_t offset = 0;  // bytes: end of the last row
  };
  CsvMonitor(io::Env* env, std::string dir) : env_(env), dir_(std::move(dir)) {}

  io::Env* env_;
  std::string dir_;
  std::map<std::string, CsvFile> files_;  // by tag
};

std::string CsvFileName(std::string_view tag);  // "Train/Samples/lr" -> "Train_Samples_lr.csv"
// Python's repr(float): the shortest digits that read back as `v`, fixed notation for
// exponents -5 < e < 16 (with ".0" when integral), else "1.5e-05" / "1e+16"; "nan", "inf".
std::string PythonFloatRepr(double v);

}  // namespace ds::engine::internal
