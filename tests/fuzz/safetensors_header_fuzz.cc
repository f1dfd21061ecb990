// libFuzzer target for the safetensors header parser: any bytes must parse or fail with
// Corruption (never crash, leak, hang or throw), and whatever parses must satisfy the format's
// invariants (tensors tile the data section in order, sizes match shapes).
//
// Build and run (from the repository root; needs clang with libFuzzer):
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -I. \
//     tests/fuzz/safetensors_header_fuzz.cc formats/safetensors_header.cc formats/dtype.cc \
//     io/status.cc -o safetensors_header_fuzz
//   ./safetensors_header_fuzz -max_total_time=30 tests/fuzz/corpus/safetensors_header
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "formats/safetensors.h"

namespace {

using ds::fmt::SafetensorsTensor;

void Require(bool condition) {
  if (!condition) std::abort();
}

// The largest JSON number token in `text` (saturating; digits inside names such as "F32" do not
// count): for a valid header it is usually where the last tensor ends, i.e. the data size under
// which the header is valid.
uint64_t LargestInteger(std::string_view text) {
  uint64_t largest = 0, current = 0;
  bool in_number = false;
  char prev = ' ';
  for (char c : text) {
    const bool digit = c >= '0' && c <= '9';
    if (digit && (in_number || std::string_view("[,: -").find(prev) != std::string_view::npos)) {
      const auto d = static_cast<uint64_t>(c - '0');
      current = !in_number ? d : current > (UINT64_MAX - d) / 10 ? UINT64_MAX : current * 10 + d;
      largest = std::max(largest, current);
      in_number = true;
    } else {
      in_number = false;
    }
    prev = c;
  }
  return largest;
}

// What ParseSafetensorsHeader promises about a header it accepts.
void CheckAccepted(const std::vector<SafetensorsTensor>& tensors, uint64_t data_size) {
  uint64_t covered = 0;  // bytes: [0, covered) of the data section belongs to earlier tensors
  for (const SafetensorsTensor& t : tensors) {
    Require(t.data_begin == covered && t.data_end >= t.data_begin);
    Require(t.shape.size() <= static_cast<size_t>(ds::fmt::kMaxDims));
    using Wide = unsigned __int128;
    constexpr Wide kTooMany = Wide{UINT64_MAX} + 1;  // 2^64: products saturate here
    Wide bytes = ds::fmt::DTypeSize(t.dtype);
    for (int64_t dim : t.shape) {
      Require(dim >= 0);
      bytes = std::min(bytes * static_cast<uint64_t>(dim), kTooMany);
    }
    Require(bytes == t.nbytes());
    covered = t.data_end;
  }
  Require(covered == data_size);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view json(reinterpret_cast<const char*>(data), size);
  const uint64_t largest = LargestInteger(json);
  for (uint64_t data_size : {uint64_t{0}, uint64_t{size}, largest, largest + 1, UINT64_MAX}) {
    std::map<std::string, std::string> metadata = {{"stale", "entry"}};
    ds::Result<std::vector<SafetensorsTensor>> parsed =
        ds::fmt::ParseSafetensorsHeader(json, data_size, &metadata);
    if (parsed.ok()) {
      CheckAccepted(*parsed, data_size);
      Require(metadata.count("stale") == 0 || json.find("stale") != std::string_view::npos);
    } else {
      Require(parsed.status().code() == ds::StatusCode::kCorruption);
      Require(!parsed.status().message().empty());
    }
  }
  // Callers that do not want the metadata pass nullptr.
  (void)ds::fmt::ParseSafetensorsHeader(json, largest, nullptr);
  return 0;
}
