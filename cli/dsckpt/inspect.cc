// dsckpt inspect / verify.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "ckpt/inspect.h"
#include "ckpt/verify.h"
#include "cli/dsckpt/commands.h"
#include "io/units.h"

namespace ds::cli {
namespace {

using nlohmann::json;

std::string Ratio(uint64_t raw, uint64_t stored) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2fx", stored == 0 ? 1.0 : static_cast<double>(raw) / stored);
  return b;
}

// What inspect looks at, and what not: it must not claim what it did not check.
constexpr char kInspectChecks[] =
    "manifest, shard headers and file sizes; chunks not read (run 'dsckpt verify')";

json SummaryJson(const ckpt::CheckpointSummary& s) {
  json j = {{"path", s.path},
            {"healthy", s.healthy},  // no problem in what was checked: see "checked"
            {"verified", false},
            {"checked", kInspectChecks},
            {"problems", s.problems},
            {"tag", s.info.tag},
            {"step", s.info.step},
            {"world_size", s.info.world_size},
            {"zero_stage", s.info.zero_stage},
            {"tp_degree", s.info.tp_degree},
            {"pp_degree", s.info.pp_degree},
            {"created_micros", s.info.created_micros},
            {"writer_version", s.info.writer_version},
            {"tensors", s.tensors},
            {"slices", s.slices},
            {"chunks", s.chunks},
            {"blobs", s.blobs},
            {"raw_bytes", s.raw_bytes},
            {"stored_bytes", s.stored_bytes},
            {"file_bytes", s.file_bytes},
            {"compression_ratio",
             s.stored_bytes == 0 ? 1.0 : static_cast<double>(s.raw_bytes) / s.stored_bytes},
            {"largest_tensor", s.largest_tensor},
            {"largest_tensor_bytes", s.largest_tensor_bytes},
            {"chunks_by_codec", s.chunks_by_codec}};
  json metrics = json::parse(s.info.metrics_json, nullptr, false);
  j["metrics"] = metrics.is_discarded() ? json(s.info.metrics_json) : metrics;
  return j;
}

void PrintCheckpoint(const ckpt::CheckpointSummary& s) {
  if (s.healthy) {
    std::printf(
        "checkpoint %s: not verified: manifest, shard headers and sizes ok; chunks not "
        "read (run 'dsckpt verify %s')\n",
        s.path.c_str(), s.path.c_str());
  } else {
    std::printf("checkpoint %s: DAMAGED\n", s.path.c_str());
  }
  for (const std::string& p : s.problems) std::printf("  problem: %s\n", p.c_str());
  if (s.info.tag.empty()) return;  // the manifest could not be read
  const fmt::ManifestInfo& i = s.info;
  std::printf("  tag %s, step %lld, world size %u, ZeRO stage %u, TP %u, PP %u\n", i.tag.c_str(),
              static_cast<long long>(i.step), i.world_size, i.zero_stage, i.tp_degree,
              i.pp_degree);
  std::printf("  written %s by %s\n", io::FormatTimeUtc(i.created_micros).c_str(),
              i.writer_version.c_str());
  std::printf("  tensors %zu (largest %s, %s), slices %zu, chunks %zu, blobs %zu\n", s.tensors,
              s.largest_tensor.c_str(), io::FormatBytes(s.largest_tensor_bytes).c_str(), s.slices,
              s.chunks, s.blobs);
  std::printf("  size: raw %s, stored %s (ratio %s), on disk %s\n",
              io::FormatBytes(s.raw_bytes).c_str(), io::FormatBytes(s.stored_bytes).c_str(),
              Ratio(s.raw_bytes, s.stored_bytes).c_str(), io::FormatBytes(s.file_bytes).c_str());
  std::string codecs;
  for (const auto& [name, n] : s.chunks_by_codec) {
    codecs += (codecs.empty() ? "" : ", ") + name + " " + std::to_string(n);
  }
  if (!codecs.empty()) std::printf("  chunks by codec: %s\n", codecs.c_str());
  if (i.metrics_json != "{}") std::printf("  metrics: %s\n", i.metrics_json.c_str());
}

void PrintSaveDir(const ckpt::SaveDirSummary& s) {
  std::printf("save directory %s: %zu checkpoint(s), latest %s\n", s.path.c_str(),
              s.checkpoints.size(), s.latest.empty() ? "(none)" : s.latest.c_str());
  if (!s.best_json.empty()) std::printf("  best: %s\n", s.best_json.c_str());
  for (const std::string& p : s.problems) std::printf("  problem: %s\n", p.c_str());
  if (!s.checkpoints.empty()) {
    std::printf("  %-24s %10s %6s %6s %11s %11s %7s  %s\n", "TAG", "STEP", "WORLD", "STAGE",
                "RAW", "STORED", "RATIO", "HEALTH");
  }
  for (const ckpt::CheckpointSummary& c : s.checkpoints) {
    std::string tag = c.info.tag.empty() ? io::BaseName(c.path) : c.info.tag;
    std::printf("  %-24s %10lld %6u %6u %11s %11s %7s  %s\n", tag.c_str(),
                static_cast<long long>(c.info.step), c.info.world_size, c.info.zero_stage,
                io::FormatBytes(c.raw_bytes).c_str(), io::FormatBytes(c.stored_bytes).c_str(),
                Ratio(c.raw_bytes, c.stored_bytes).c_str(),
                c.healthy ? "not verified" : ("DAMAGED: " + c.problems.front()).c_str());
  }
  if (!s.checkpoints.empty()) {
    std::printf(
        "  (health from the manifest, shard headers and sizes; chunks not read: 'dsckpt "
        "verify <checkpoint>' reads every byte)\n");
  }
  for (const std::string& t : s.in_progress) {
    std::printf("  in progress or torn: %s ('dsckpt gc' removes abandoned ones)\n", t.c_str());
  }
  for (const std::string& t : s.not_checkpoints) {
    std::printf("  not a checkpoint (no manifest.h5): %s\n", t.c_str());
  }
}

int RunInspect(const std::string& path, bool as_json) {
  Result<bool> is_ckpt = ckpt::IsCheckpointDir(io::Env::Default(), path);
  if (!is_ckpt.ok()) return ReportError(is_ckpt.status());
  if (*is_ckpt) {
    Result<ckpt::CheckpointSummary> s = ckpt::InspectCheckpoint(io::Env::Default(), path);
    if (!s.ok()) return ReportError(s.status());
    if (as_json) {
      std::printf("%s\n", SummaryJson(*s).dump().c_str());
    } else {
      PrintCheckpoint(*s);
    }
    return s->healthy ? kExitOk : kExitProblem;
  }
  Result<ckpt::SaveDirSummary> s = ckpt::InspectSaveDir(io::Env::Default(), path);
  if (!s.ok()) return ReportError(s.status());
  if (s->checkpoints.empty() && s->in_progress.empty() && s->latest.empty() &&
      s->problems.empty()) {
    return ReportError(Status::NotFound(
        path + " is neither a checkpoint (no manifest.h5) nor a save directory (no checkpoints, "
               "no 'latest'); point at a save_dir or one of its step-* directories"));
  }
  bool healthy = s->problems.empty();
  for (const auto& c : s->checkpoints) healthy = healthy && c.healthy;
  if (as_json) {
    json j = {{"path", s->path},
              {"latest", s->latest},
              {"best", s->best_json},
              {"problems", s->problems},
              {"in_progress", s->in_progress},
              {"not_checkpoints", s->not_checkpoints},
              {"checkpoints", json::array()}};
    for (const auto& c : s->checkpoints) j["checkpoints"].push_back(SummaryJson(c));
    std::printf("%s\n", j.dump().c_str());
  } else {
    PrintSaveDir(*s);
  }
  return healthy ? kExitOk : kExitProblem;
}

int RunVerify(const std::string& path, bool as_json, unsigned threads) {
  Result<ckpt::VerifyReport> r = ckpt::VerifyCheckpoint(io::Env::Default(), path, {threads});
  if (!r.ok()) return ReportError(r.status());
  if (as_json) {
    json j = {{"path", r->path},
              {"healthy", r->healthy},
              {"chunks_checked", r->chunks_checked},
              {"chunks_damaged", r->chunks_damaged},
              {"raw_bytes", r->raw_bytes},
              {"stored_bytes", r->stored_bytes},
              {"seconds", r->seconds},
              {"problems", r->problems},
              {"damaged_tensors", r->damaged_tensors}};
    std::printf("%s\n", j.dump().c_str());
  } else if (r->healthy) {
    std::printf("%s: healthy: %llu chunks, %s checked in %.1f s\n", r->path.c_str(),
                static_cast<unsigned long long>(r->chunks_checked),
                io::FormatBytes(r->raw_bytes).c_str(), r->seconds);
  } else {
    std::printf("%s: DAMAGED: %llu of %llu chunks bad\n", r->path.c_str(),
                static_cast<unsigned long long>(r->chunks_damaged),
                static_cast<unsigned long long>(r->chunks_checked));
    for (const std::string& p : r->problems) std::printf("  %s\n", p.c_str());
    if (!r->damaged_tensors.empty()) {
      std::printf("  damaged tensors:");
      for (const std::string& t : r->damaged_tensors) std::printf(" %s", t.c_str());
      std::printf("\n");
    }
    std::printf("  an earlier checkpoint may be intact: 'dsckpt list' and 'dsckpt verify' it\n");
  }
  return r->healthy ? kExitOk : kExitProblem;
}

}  // namespace

void AddInspectCommands(CLI::App& app, DsckptContext& ctx) {
  struct Flags {
    std::string path;
    bool json = false;
    unsigned threads = 0;
  };
  auto in = std::make_shared<Flags>();
  CLI::App* inspect = app.add_subcommand(
      "inspect",
      "What a checkpoint or save directory holds: tags, steps, sizes, and problems its manifest, "
      "shard headers and sizes show (chunks are not read: that is verify)");
  inspect->add_option("path", in->path, "A checkpoint directory or a save directory")->required();
  inspect->add_flag("--json", in->json, "Print one JSON object");
  inspect->footer("Examples:\n  dsckpt inspect ckpts/\n  dsckpt inspect ckpts/step-00001000 --json");
  inspect->callback([in, &ctx] { ctx.exit_code = RunInspect(in->path, in->json); });

  auto vf = std::make_shared<Flags>();
  CLI::App* verify = app.add_subcommand(
      "verify", "Check every chunk's checksums and the manifest: exit 0 healthy, 1 damaged");
  verify->add_option("path", vf->path, "A checkpoint directory")->required();
  verify->add_flag("--json", vf->json, "Print one JSON object");
  verify->add_option("--threads", vf->threads, "Reader threads (default: all cores)");
  verify->footer("Example:\n  dsckpt verify ckpts/step-00001000");
  verify->callback([vf, &ctx] { ctx.exit_code = RunVerify(vf->path, vf->json, vf->threads); });
}

}  // namespace ds::cli
