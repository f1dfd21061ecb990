// The embedded default corpus: real English text that every Debian system already has, the
// license texts of the essential package base-files (/usr/share/common-licenses), concatenated
// into a byte-level text file so a run trains on real text with no download.
// Thread safety: stateless; concurrent builds of the same file are safe (each replaces the file
// atomically with identical bytes).
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "io/env.h"
#include "io/status.h"

namespace ds::engine {

inline constexpr std::string_view kCommonLicensesDir = "/usr/share/common-licenses";

// The files read, in this order (sorted by name): base-files' license texts without the
// symlinks (GPL -> GPL-3, ...). Those missing on a system are left out and said so in the
// composition file.
std::span<const std::string_view> DefaultCorpusFiles();

// Builds the corpus at `out_path` when it is missing or its bytes differ from what the files in
// `licenses_dir` give now: each listed file's bytes followed by one "\n", in list order,
// written with Env::ReplaceFileAtomically. Beside it, `out_path` + ".json" records the
// composition (each file's name, size and xxh64, what was missing, the total size and xxh64).
// Returns `out_path`. FailedPrecondition when none of the files exists.
Result<std::string> BuildDefaultCorpus(io::Env* env, const std::string& out_path,
                                       std::string_view licenses_dir = kCommonLicensesDir);

}  // namespace ds::engine
