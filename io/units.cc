#include "io/units.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>

namespace ds::io {
namespace {

std::string Lower(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (!std::isspace(static_cast<unsigned char>(c))) {
      out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
  }
  return out;
}

// Splits "1.5gib" into 1.5 and "gib"; false when there is no leading number.
bool SplitNumber(const std::string& s, double* value, std::string* unit) {
  char* end = nullptr;
  *value = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || !std::isfinite(*value) || *value < 0) return false;
  *unit = std::string(end);
  return true;
}

}  // namespace

std::string FormatBytes(uint64_t bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes);
  int unit = 0;
  while (v >= 1024.0 && unit < 5) {
    v /= 1024.0;
    ++unit;
  }
  char buf[32];
  if (unit == 0) {
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  } else {
    std::snprintf(buf, sizeof buf, "%.1f %s", v, kUnits[unit]);
  }
  return buf;
}

std::string FormatRate(double bps) {
  char buf[32];
  if (bps >= 1e9) {
    std::snprintf(buf, sizeof buf, "%.2f GB/s", bps / 1e9);
  } else {
    std::snprintf(buf, sizeof buf, "%.1f MB/s", bps / 1e6);
  }
  return buf;
}

std::string FormatTimeUtc(int64_t micros) {
  std::time_t secs = static_cast<std::time_t>(micros / 1000000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

Result<uint64_t> ParseByteSize(std::string_view text) {
  std::string s = Lower(text);
  double v;
  std::string unit;
  if (!SplitNumber(s, &v, &unit)) {
    return Status::InvalidArgument("'" + std::string(text) +
                                   "' is not a size (write it like 4G, 512M or 1.5GiB)");
  }
  double mult;
  if (unit.empty() || unit == "b") {
    mult = 1;
  } else if (unit == "k" || unit == "kib") {
    mult = 1024.0;
  } else if (unit == "m" || unit == "mib") {
    mult = 1024.0 * 1024;
  } else if (unit == "g" || unit == "gib") {
    mult = 1024.0 * 1024 * 1024;
  } else if (unit == "t" || unit == "tib") {
    mult = 1024.0 * 1024 * 1024 * 1024;
  } else if (unit == "kb") {
    mult = 1e3;
  } else if (unit == "mb") {
    mult = 1e6;
  } else if (unit == "gb") {
    mult = 1e9;
  } else if (unit == "tb") {
    mult = 1e12;
  } else {
    return Status::InvalidArgument("unknown size unit '" + unit + "' in '" + std::string(text) +
                                   "' (use K, M, G, T, KiB..TiB or KB..TB)");
  }
  double bytes = v * mult;
  if (bytes > 1.8e19) return Status::InvalidArgument("size '" + std::string(text) + "' is too large");
  return static_cast<uint64_t>(std::llround(bytes));
}

Result<uint64_t> ParseDurationSeconds(std::string_view text) {
  std::string s = Lower(text);
  double v;
  std::string unit;
  if (!SplitNumber(s, &v, &unit)) {
    return Status::InvalidArgument("'" + std::string(text) +
                                   "' is not a duration (write it like 90s, 30m, 1h or 2d)");
  }
  double mult;
  if (unit.empty() || unit == "s") {
    mult = 1;
  } else if (unit == "m" || unit == "min") {
    mult = 60;
  } else if (unit == "h") {
    mult = 3600;
  } else if (unit == "d") {
    mult = 86400;
  } else {
    return Status::InvalidArgument("unknown duration unit '" + unit + "' in '" +
                                   std::string(text) + "' (use s, m, h or d)");
  }
  return static_cast<uint64_t>(std::llround(v * mult));
}

}  // namespace ds::io
