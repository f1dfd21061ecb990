// Sizes and durations as people write them: "4G", "512MiB", "1.5 GiB", "90s", "1h".
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "io/status.h"

namespace ds::io {

// 1536 -> "1.5 KiB"; 12 -> "12 B".
std::string FormatBytes(uint64_t bytes);
// "1.23 GB/s" (decimal, as disks are sold and fio prints).
std::string FormatRate(double bytes_per_second);
// "2026-11-25 09:21:51 UTC" for microseconds since the Unix epoch.
std::string FormatTimeUtc(int64_t micros);
// Accepts a number with an optional unit K, M, G, T (powers of 1024, as "4G" means to dd and
// fio), KiB/MiB/GiB/TiB, or KB/MB/GB/TB (powers of 1000); case-insensitive.
Result<uint64_t> ParseByteSize(std::string_view text);
// Accepts a number with s, m, h or d (seconds when bare): "90s", "30m", "1h".
Result<uint64_t> ParseDurationSeconds(std::string_view text);

}  // namespace ds::io
