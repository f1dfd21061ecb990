// dsckpt reshard: a checkpoint rewritten for another world size, ZeRO stage or TP degree.
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>

#include "ckpt/catalog.h"
#include "ckpt/inspect.h"
#include "ckpt/reshard.h"
#include "cli/dsckpt/commands.h"
#include "io/progress.h"
#include "io/units.h"

namespace ds::cli {
namespace {

struct ReshardFlags {
  std::string src;
  uint32_t world = 0;
  int stage = -1;  // default: the source's
  int tp = -1;     // default: the source's
  std::string out;
  std::string memory = "1G";
  std::string codec;  // default: the source's most common
  std::string chunk = "4M";
  bool set_latest = false;
  bool json = false;
};

// SRC may name a checkpoint directory, or a save directory (its `latest` is used).
Result<std::string> ResolveSource(const std::string& src) {
  io::Env* env = io::Env::Default();
  DS_ASSIGN_OR_RETURN(bool is_ckpt, ckpt::IsCheckpointDir(env, src));
  if (is_ckpt) return src;
  ckpt::Catalog cat(env, src);
  Result<std::string> latest = cat.Resolve("latest");
  if (latest.ok()) return latest;
  return Status::NotFound(src +
                          " is not a checkpoint (no manifest.h5) nor a save directory "
                          "with a 'latest' checkpoint");
}

int RunReshard(const ReshardFlags& f) {
  Result<std::string> src = ResolveSource(f.src);
  if (!src.ok()) return ReportError(src.status());
  io::Env* env = io::Env::Default();
  Result<fmt::Manifest> m = fmt::ReadManifest(env, io::JoinPath(*src, fmt::kManifestFileName));
  if (!m.ok()) return ReportError(m.status());
  ckpt::ReshardOptions o;
  o.layout.world_size = f.world;
  o.layout.zero_stage = f.stage >= 0 ? static_cast<uint32_t>(f.stage) : m->info.zero_stage;
  o.layout.tp_degree = f.tp >= 0 ? static_cast<uint32_t>(f.tp) : m->info.tp_degree;
  o.layout.alignment = m->info.partition_alignment;
  o.out = f.out;
  o.set_latest = f.set_latest;
  Result<uint64_t> mem = io::ParseByteSize(f.memory);
  if (!mem.ok()) return ReportError(mem.status().WithContext("--memory"));
  o.memory_bytes = *mem;
  Result<uint64_t> chunk = io::ParseByteSize(f.chunk);
  if (!chunk.ok()) return ReportError(chunk.status().WithContext("--chunk"));
  o.chunk_bytes = *chunk;
  if (!f.codec.empty()) {
    Result<fmt::Codec> c = fmt::CodecFromName(f.codec);
    if (!c.ok()) return ReportError(c.status().WithContext("--codec"));
    o.codec = *c;
  }
  uint64_t total = 0;
  for (const fmt::ChunkMeta& c : m->chunks) total += c.raw_len;
  io::Progress progress("reshard", total);
  o.progress = [&](uint64_t n) { progress.Add(n); };
  Result<ckpt::ReshardResult> r = ckpt::Reshard(env, *src, o);
  progress.Finish();
  if (!r.ok()) return ReportError(r.status());
  if (f.json) {
    nlohmann::json j = {{"source", *src},
                        {"path", r->path},
                        {"tag", r->tag},
                        {"world_size", o.layout.world_size},
                        {"zero_stage", o.layout.zero_stage},
                        {"tp_degree", o.layout.tp_degree},
                        {"logical_bytes", r->logical_bytes},
                        {"stored_bytes", r->stored_bytes},
                        {"source_chunks", r->source_chunks},
                        {"source_chunks_read", r->source_chunks_read},
                        {"seconds", r->seconds},
                        {"set_latest", o.set_latest}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf(
        "resharded %s (world %u, stage %u, TP %u) into %s (world %u, stage %u, TP %u): "
        "%s in %.1f s%s\n",
        src->c_str(), m->info.world_size, m->info.zero_stage, m->info.tp_degree, r->path.c_str(),
        o.layout.world_size, o.layout.zero_stage, o.layout.tp_degree,
        io::FormatBytes(r->logical_bytes).c_str(), r->seconds,
        o.set_latest ? "; latest points to it" : "");
  }
  return kExitOk;
}

}  // namespace

void AddReshardCommands(CLI::App& app, DsckptContext& ctx) {
  auto f = std::make_shared<ReshardFlags>();
  CLI::App* c = app.add_subcommand(
      "reshard", "Rewrite a checkpoint for another world size, ZeRO stage or TP degree");
  c->add_option("src", f->src, "A checkpoint directory (or a save directory: its latest)")
      ->required();
  c->add_option("--to-world", f->world, "Ranks of the target layout")
      ->required()
      ->check(CLI::Range(1, 1 << 20));
  c->add_option("--to-stage", f->stage, "ZeRO stage of the target layout (default: the source's)")
      ->check(CLI::Range(0, 3));
  c->add_option("--to-tp", f->tp,
                "Tensor-parallel degree (default: the source's); tensors are cut as the "
                "checkpoint's layout/tp_splits blob says, or as its TP boxes show")
      ->check(CLI::Range(1, 1 << 16));
  c->add_option("--out", f->out,
                "The new checkpoint's directory (default: <save_dir>/<tag>-w<M>s<S>)");
  c->add_option("--memory", f->memory, "Memory bound, independent of the model's size");
  c->add_option("--codec", f->codec, "raw, zstd or bytegroup+zstd (default: the source's)");
  c->add_option("--chunk", f->chunk, "Raw bytes per chunk of the output");
  c->add_flag("--set-latest", f->set_latest, "Point the save directory's latest at the result");
  c->add_flag("--json", f->json, "Print one JSON object");
  c->footer(
      "Examples:\n"
      "  dsckpt reshard ckpts/step-00001000 --to-world 32 --to-stage 3\n"
      "  dsckpt reshard ckpts/ --to-world 8 --out ckpts/w8 --set-latest --memory 4G\n"
      "  dsckpt reshard ckpts/step-00001000 --to-world 16 --to-tp 4");
  c->callback([f, &ctx] { ctx.exit_code = RunReshard(*f); });
}

}  // namespace ds::cli
