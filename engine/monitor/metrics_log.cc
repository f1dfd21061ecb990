#include "engine/monitor/internal/metrics_log.h"

#include <nlohmann/json.hpp>

#include "io/log.h"
#include "io/units.h"

namespace ds::engine::internal {

uint64_t KeptPrefixBytes(std::string_view text, int64_t resume_step, int64_t* kept_lines) {
  uint64_t kept = 0;
  *kept_lines = 0;
  while (kept < text.size()) {
    const size_t eol = text.find('\n', kept);
    if (eol == std::string_view::npos) break;  // no newline: the write was cut short
    const nlohmann::json j =
        nlohmann::json::parse(text.substr(kept, eol - kept), nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer() ||
        j["step"].get<int64_t>() > resume_step) {
      break;
    }
    kept = eol + 1;
    ++*kept_lines;
  }
  return kept;
}

Result<std::unique_ptr<JsonLinesFile>> JsonLinesFile::Open(io::Env* env, const std::string& path,
                                                           int64_t resume_step) {
  const std::string dir = io::DirName(path);
  DS_RETURN_IF_ERROR(env->CreateDirsDurably(dir)) << "creating " << dir;
  DS_ASSIGN_OR_RETURN(std::unique_ptr<io::File> file, env->OpenFile(path, {io::OpenMode::kUpdate}));
  DS_ASSIGN_OR_RETURN(const uint64_t size, file->Size());
  uint64_t keep = 0;
  int64_t kept_lines = 0;
  if (resume_step > 0 && size > 0) {
    std::string text(size, '\0');
    DS_ASSIGN_OR_RETURN(size_t n, file->ReadAt(0, std::as_writable_bytes(std::span(text))));
    text.resize(n);
    keep = KeptPrefixBytes(text, resume_step, &kept_lines);
  }
  if (keep < size) {
    DS_RETURN_IF_ERROR(file->Truncate(keep)) << "cutting " << path;
    DS_RETURN_IF_ERROR(file->Sync()) << "syncing " << path;
    if (resume_step > 0) {
      io::LogInfo(path + ": resuming after step " + std::to_string(resume_step) + ": kept " +
                  std::to_string(kept_lines) + " lines, cut " + io::FormatBytes(size - keep) +
                  " of later steps or a line torn by a crash");
    } else {
      io::LogWarning(path + ": a fresh run starts it empty: removed " + io::FormatBytes(size) +
                     " from an earlier run (resume to keep them)");
    }
  }
  DS_RETURN_IF_ERROR(env->SyncDir(dir)) << "syncing " << dir;  // the file's entry survives
  return std::unique_ptr<JsonLinesFile>(new JsonLinesFile(path, std::move(file), keep));
}

JsonLinesFile::~JsonLinesFile() {
  if (file_ != nullptr) (void)file_->Close();
}

Status JsonLinesFile::Append(std::string_view line) {
  if (file_ == nullptr) return Status::FailedPrecondition(path_ + " is closed");
  if (torn_) {
    DS_RETURN_IF_ERROR(file_->Truncate(offset_)) << "cutting a half-written line of " << path_;
    torn_ = false;
  }
  std::string bytes;
  bytes.reserve(line.size() + 1);
  bytes.append(line);
  bytes.push_back('\n');
  Status s = file_->WriteAt(offset_, std::as_bytes(std::span(bytes.data(), bytes.size())));
  if (!s.ok()) {
    torn_ = true;
    return s.WithContext("appending to " + path_);
  }
  offset_ += bytes.size();
  return Status::OK();
}

Status JsonLinesFile::Sync() {
  if (file_ == nullptr) return Status::OK();
  DS_RETURN_IF_ERROR(file_->DataSync()) << "syncing " << path_;
  return Status::OK();
}

Status JsonLinesFile::Close() {
  if (file_ == nullptr) return Status::OK();
  Status s = Sync();
  Status c = file_->Close();
  file_.reset();
  if (!s.ok()) return s;
  if (!c.ok()) return c.WithContext("closing " + path_);
  return Status::OK();
}

}  // namespace ds::engine::internal
