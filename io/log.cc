#include "io/log.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace ds::io {
namespace {

struct LogState {
  std::mutex mu;
  LogLevel level = LevelFromEnvironment();
  std::function<void(LogLevel, std::string_view)> sink;
  std::string prefix;

  static LogLevel LevelFromEnvironment() {
    const char* v = std::getenv("DSTRAIN_LOG");
    if (v == nullptr) return LogLevel::kInfo;
    if (std::strcmp(v, "debug") == 0) return LogLevel::kDebug;
    if (std::strcmp(v, "warning") == 0) return LogLevel::kWarning;
    if (std::strcmp(v, "error") == 0) return LogLevel::kError;
    return LogLevel::kInfo;
  }
};

LogState& State() {
  static LogState* state = new LogState();  // outlives every static that may log on exit
  return *state;
}

const char* LevelTag(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug: ";
    case LogLevel::kInfo: return "";
    case LogLevel::kWarning: return "warning: ";
    case LogLevel::kError: return "error: ";
  }
  return "";
}

}  // namespace

bool LogEnabled(LogLevel level) {
  LogState& s = State();
  std::lock_guard<std::mutex> lock(s.mu);
  return level >= s.level;
}

void Log(LogLevel level, std::string_view message) {
  LogState& s = State();
  std::lock_guard<std::mutex> lock(s.mu);
  if (level < s.level) return;
  if (s.sink) {
    s.sink(level, message);
    return;
  }
  std::fprintf(stderr, "%s%s%.*s\n", s.prefix.c_str(), LevelTag(level),
               static_cast<int>(message.size()), message.data());
}

void SetLogLevel(LogLevel level) {
  LogState& s = State();
  std::lock_guard<std::mutex> lock(s.mu);
  s.level = level;
}

void SetLogSink(std::function<void(LogLevel, std::string_view)> sink) {
  LogState& s = State();
  std::lock_guard<std::mutex> lock(s.mu);
  s.sink = std::move(sink);
}

void SetLogPrefix(std::string prefix) {
  LogState& s = State();
  std::lock_guard<std::mutex> lock(s.mu);
  s.prefix = std::move(prefix);
}

std::string QuoteForMessage(std::string_view bytes, size_t max_bytes) {
  std::string out = "'";
  for (char c : bytes.substr(0, max_bytes)) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\\' || c == '\'') {
      out += '\\';
      out += c;
    } else if (u >= 0x20 && u < 0x7f) {
      out += c;
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", u);
      out += hex;
    }
  }
  out += "'";
  if (bytes.size() > max_bytes) out += "... (" + std::to_string(bytes.size()) + " bytes)";
  return out;
}

}  // namespace ds::io
