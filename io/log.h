// Diagnostics for operators: one line per message on stderr (or a sink the program installs),
// with a level. The level comes from DSTRAIN_LOG=debug|info|warning|error (default info).
// Thread safety: all functions may be called from any thread; lines never interleave.
#pragma once

#include <functional>
#include <string>
#include <string_view>

namespace ds::io {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void Log(LogLevel level, std::string_view message);
inline void LogDebug(std::string_view m) { Log(LogLevel::kDebug, m); }
inline void LogInfo(std::string_view m) { Log(LogLevel::kInfo, m); }
inline void LogWarning(std::string_view m) { Log(LogLevel::kWarning, m); }
inline void LogError(std::string_view m) { Log(LogLevel::kError, m); }

bool LogEnabled(LogLevel level);
void SetLogLevel(LogLevel level);
// Replaces where lines go (tests capture them); nullptr restores stderr.
void SetLogSink(std::function<void(LogLevel, std::string_view)> sink);
// Text put in front of every line, e.g. "[rank 3] ".
void SetLogPrefix(std::string prefix);

// Bytes read from a file, made safe to put in a message: at most `max_bytes` of them, in single
// quotes, with \\, \' and every byte that is not printable ASCII written \xNN, then, when
// cut, "... (N bytes)" with N the whole length: 'step-\x00\x01', or 'aaaa'... (52428800 bytes)
// with max_bytes 4. A NUL cannot end the message early and a huge file is not echoed whole.
std::string QuoteForMessage(std::string_view bytes, size_t max_bytes = 64);

}  // namespace ds::io
