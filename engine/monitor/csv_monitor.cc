#include "engine/monitor/internal/csv_monitor.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace ds::engine::internal {

std::string PythonFloatRepr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  // The shortest round-trip digits, as "d.ddde±XX"; Python takes the same digits (dtoa mode 0).
  char buf[64];
  const std::to_chars_result r =
      std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string_view sci(buf, static_cast<size_t>(r.ptr - buf));
  std::string out;
  if (sci.front() == '-') {
    out.push_back('-');
    sci.remove_prefix(1);
  }
  const size_t e = sci.find('e');
  std::string digits;
  for (char c : sci.substr(0, e)) {
    if (c != '.') digits.push_back(c);
  }
  const int exponent = std::atoi(std::string(sci.substr(e + 1)).c_str());
  const int decpt = exponent + 1;  // digits[0:decpt] come before the decimal point
  const int n = static_cast<int>(digits.size());
  if (decpt <= -4 || decpt > 16) {  // Python's float_repr switch to exponent notation
    out += digits[0];
    if (n > 1) out += "." + digits.substr(1);
    char ebuf[16];
    std::snprintf(ebuf, sizeof ebuf, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    return out + ebuf;
  }
  if (decpt <= 0) return out + "0." + std::string(-decpt, '0') + digits;
  if (decpt < n) return out + digits.substr(0, decpt) + "." + digits.substr(decpt);
  return out + digits + std::string(decpt - n, '0') + ".0";
}

std::string CsvFileName(std::string_view tag) {
  std::string name(tag);
  for (char& c : name) {
    if (c == '/' || c == ' ') c = '_';
  }
  return name + ".csv";
}

Result<std::unique_ptr<CsvMonitor>> CsvMonitor::Open(io::Env* env, std::string dir) {
  DS_RETURN_IF_ERROR(env->CreateDirs(dir)) << "creating the csv_monitor directory " << dir;
  return std::unique_ptr<CsvMonitor>(new CsvMonitor(env, std::move(dir)));
}

CsvMonitor::~CsvMonitor() { (void)Close(); }

Status CsvMonitor::Write(const ScalarEvent& event) {
  auto it = files_.find(event.tag);
  if (it == files_.end()) {
    const std::string path = io::JoinPath(dir_, CsvFileName(event.tag));
    DS_ASSIGN_OR_RETURN(std::unique_ptr<io::File> file,
                        env_->OpenFile(path, {io::OpenMode::kUpdate}));
    DS_ASSIGN_OR_RETURN(const uint64_t size, file->Size());
    it = files_.emplace(event.tag, CsvFile{std::move(file), size}).first;
  }
  CsvFile& f = it->second;
  std::string rows;
  // DeepSpeed writes the header the first time its process writes a tag (so a resumed run
  // repeats it mid-file); here it starts the file and only that.
  if (f.offset == 0) {
    const size_t slash = event.tag.rfind('/');
    rows = "step," + event.tag.substr(slash == std::string::npos ? 0 : slash + 1) + "\r\n";
  }
  rows += std::to_string(event.step) + "," + PythonFloatRepr(event.value) + "\r\n";
  DS_RETURN_IF_ERROR(f.file->WriteAt(f.offset, std::as_bytes(std::span(rows.data(), rows.size()))))
      << "writing " << f.file->path();
  f.offset += rows.size();
  return Status::OK();
}

Status CsvMonitor::Close() {
  Status first;
  for (auto& [tag, f] : files_) {
    Status s = f.file->Close();
    if (!s.ok() && first.ok()) first = s.WithContext("closing " + f.file->path());
  }
  files_.clear();
  return first;
}

}  // namespace ds::engine::internal
