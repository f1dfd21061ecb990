#include "io/log.h"

#include <cstdio>
#include <mutex>
#include <optional>
#include <string>

#include "io/env.h"

namespace ds::io {
namespace {

struct LogState {
  std::mutex mu;
  LogLevel level = LevelFromEnvironment();
  std::function<void(LogLevel, std::string_view)> sink;
  std::string prefix;

  // The process's one log has no Env of its own to ask: the real environment's DSTRAIN_LOG.
  static LogLevel LevelFromEnvironment() {
    const std::optional<std::string> v = Env::Default()->GetEnvVar("DSTRAIN_LOG");
    if (v == "debug") return LogLevel::kDebug;
    if (v == "warning") return LogLevel::kWarning;
    if (v == "error") return LogLevel::kError;
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
