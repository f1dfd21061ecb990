#include "engine/data/default_corpus.h"

#include <xxhash.h>

#include <cstdio>
#include <nlohmann/json.hpp>

namespace ds::engine {
namespace {

// base-files 12.4 (Debian 12) ships all of these; other releases may lack some.
constexpr std::string_view kFiles[] = {
    "Apache-2.0", "Artistic", "BSD",    "CC0-1.0",  "GFDL-1.2", "GFDL-1.3", "GPL-1",
    "GPL-2",      "GPL-3",    "LGPL-2", "LGPL-2.1", "LGPL-3",   "MPL-1.1",  "MPL-2.0",
};

std::string Hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

uint64_t Xxh64(std::string_view bytes) { return XXH64(bytes.data(), bytes.size(), 0); }

std::string FileList() {
  std::string out;
  for (std::string_view f : kFiles) (out += out.empty() ? "" : ", ") += f;
  return out;
}

// Writes `path` when its current bytes differ from `data`.
Status WriteIfChanged(io::Env* env, const std::string& path, std::string_view data) {
  Result<std::string> current = env->ReadFileToString(path);
  if (current.ok() && *current == data) return Status::OK();
  if (!current.ok() && !current.status().IsNotFound()) return current.status();
  return env->ReplaceFileAtomically(path, data);
}

}  // namespace

std::span<const std::string_view> DefaultCorpusFiles() { return kFiles; }

Result<std::string> BuildDefaultCorpus(io::Env* env, const std::string& out_path,
                                       std::string_view licenses_dir) {
  std::string corpus;
  nlohmann::json files = nlohmann::json::array();
  nlohmann::json missing = nlohmann::json::array();
  for (std::string_view name : kFiles) {
    const std::string path = io::JoinPath(licenses_dir, name);
    Result<std::string> text = env->ReadFileToString(path);
    if (!text.ok() && text.status().IsNotFound()) {
      missing.push_back(name);
      continue;
    }
    DS_RETURN_IF_ERROR(text.status()) << "default corpus";
    files.push_back({{"name", name}, {"bytes", text->size()}, {"xxh64", Hex64(Xxh64(*text))}});
    corpus += *text;
    corpus += '\n';
  }
  if (files.empty()) {
    return Status::FailedPrecondition(
        "default corpus: none of its license texts (" + FileList() + ") is in " +
        std::string(licenses_dir) +
        " (Debian's base-files package ships them; elsewhere set data.path to a token or text "
        "file)");
  }
  const nlohmann::json composition = {
      {"what",
       "dstrain default corpus: license texts of Debian's base-files package, each "
       "followed by one newline, read one byte per token (vocab 256)"},
      {"source_dir", licenses_dir},
      {"files", files},
      {"missing", missing},
      {"bytes", corpus.size()},
      {"xxh64", Hex64(Xxh64(corpus))},
  };
  DS_RETURN_IF_ERROR(env->CreateDirs(io::DirName(out_path))) << "default corpus";
  DS_RETURN_IF_ERROR(WriteIfChanged(env, out_path, corpus)) << "default corpus";
  DS_RETURN_IF_ERROR(WriteIfChanged(env, out_path + ".json", composition.dump(2) + "\n"))
      << "default corpus";
  return out_path;
}

}  // namespace ds::engine
