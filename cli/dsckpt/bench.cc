// dsckpt bench ...: storage benchmarks. Each prints a table, or with --json one JSON line.
#include <cstdio>

#include "bench/codec_bench.h"
#include "bench/io_bench.h"
#include "bench/reshard_bench.h"
#include "bench/save_bench.h"

#include <unistd.h>
#include "cli/dsckpt/commands.h"
#include "io/units.h"

namespace ds::cli {

int ReportError(const Status& status) {
  std::fprintf(stderr, "dsckpt: %s\n", status.message().c_str());
  return kExitUsage;
}

namespace {

// Benchmarks print a table for people, or with --json one JSON line for programs (the table
// then goes to stderr).
int Print(bool json, const std::string& table, std::string json_text) {
  if (json) {
    std::fputs(table.c_str(), stderr);
    if (!json_text.empty() && json_text.back() != '\n') json_text += '\n';
    std::fputs(json_text.c_str(), stdout);
  } else {
    std::fputs(table.c_str(), stdout);
  }
  return kExitOk;
}

struct IoFlags {
  std::string dir = ".";
  std::string size = "4G";
  std::string block = "4M";
  unsigned depth = 16;
  unsigned repeat = 3;
  bool json = false;
  bool no_fio = false;
};

int RunBenchIo(const IoFlags& f) {
  bench::IoBenchOptions o;
  o.dir = f.dir;
  Result<uint64_t> size = io::ParseByteSize(f.size);
  if (!size.ok()) return ReportError(size.status().WithContext("--size"));
  Result<uint64_t> block = io::ParseByteSize(f.block);
  if (!block.ok()) return ReportError(block.status().WithContext("--block"));
  o.size_bytes = *size;
  o.block_bytes = *block;
  o.queue_depth = f.depth;
  o.run_fio = !f.no_fio;
  o.repeat = f.repeat;
  Result<bench::IoBenchReport> rep = bench::RunIoBench(io::Env::Default(), o);
  if (!rep.ok()) return ReportError(rep.status());
  return Print(f.json, bench::IoBenchTable(o, *rep), bench::IoBenchJson(o, *rep));
}

struct CodecFlags {
  std::string size = "64M";
  std::string chunk = "4M";
  unsigned repeat = 3;
  uint64_t seed = 42;
  bool json = false;
};

int RunBenchCodec(const CodecFlags& f) {
  bench::CodecBenchOptions o;
  Result<uint64_t> size = io::ParseByteSize(f.size);
  if (!size.ok()) return ReportError(size.status().WithContext("--size"));
  Result<uint64_t> chunk = io::ParseByteSize(f.chunk);
  if (!chunk.ok()) return ReportError(chunk.status().WithContext("--chunk"));
  o.size_bytes = *size;
  o.chunk_bytes = *chunk;
  o.repeat = f.repeat;
  o.seed = f.seed;
  Result<bench::CodecBenchReport> rep = bench::RunCodecBench(io::Env::Default(), o);
  if (!rep.ok()) return ReportError(rep.status());
  return Print(f.json, bench::CodecBenchTable(o, *rep), bench::CodecBenchJson(o, *rep));
}

struct SaveFlags {
  std::string dir = ".";
  std::string size = "4G";
  std::string chunk = "4M";
  std::string codec = "bytegroup+zstd";
  uint32_t ranks = 1;
  unsigned repeat = 3;
  bool keep = false;
  bool json = false;
  bool no_fio = false;
};

int RunBenchSave(const SaveFlags& f) {
  bench::SaveBenchOptions o;
  o.dir = f.dir;
  Result<uint64_t> size = io::ParseByteSize(f.size);
  if (!size.ok()) return ReportError(size.status().WithContext("--size"));
  Result<uint64_t> chunk = io::ParseByteSize(f.chunk);
  if (!chunk.ok()) return ReportError(chunk.status().WithContext("--chunk"));
  Result<fmt::Codec> codec = fmt::CodecFromName(f.codec);
  if (!codec.ok()) return ReportError(codec.status().WithContext("--codec"));
  o.size_bytes = *size;
  o.chunk_bytes = *chunk;
  o.codec = *codec;
  o.ranks = f.ranks;
  o.repeat = f.repeat;
  o.keep = f.keep;
  o.run_fio = !f.no_fio;
  Result<bench::SaveBenchReport> rep = bench::RunSaveBench(io::Env::Default(), o);
  if (!rep.ok()) return ReportError(rep.status());
  return Print(f.json, bench::SaveBenchTable(o, *rep), bench::SaveBenchJson(o, *rep));
}

struct ReshardBenchFlags {
  std::string operation = "reshard";
  std::string dir = ".";
  std::string size = "4G";
  std::string memory = "1G";
  std::string codec = "raw";
  uint32_t from = 2, to = 3;
  uint32_t from_stage = 1, to_stage = 1;
  bool json = false;
  bool no_fio = false;
  bool keep = false;
};

int RunBenchReshard(const ReshardBenchFlags& f) {
  bench::ReshardBenchOptions o;
  o.operation = f.operation;
  o.dir = f.dir;
  Result<uint64_t> size = io::ParseByteSize(f.size);
  if (!size.ok()) return ReportError(size.status().WithContext("--size"));
  Result<uint64_t> mem = io::ParseByteSize(f.memory);
  if (!mem.ok()) return ReportError(mem.status().WithContext("--memory"));
  Result<fmt::Codec> codec = fmt::CodecFromName(f.codec);
  if (!codec.ok()) return ReportError(codec.status().WithContext("--codec"));
  o.size_bytes = *size;
  o.memory_bytes = *mem;
  o.codec = *codec;
  o.from_world = f.from;
  o.to_world = f.to;
  o.from_stage = f.from_stage;
  o.to_stage = f.to_stage;
  o.run_fio = !f.no_fio;
  o.keep = f.keep;
  char self[4096];
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return ReportError(Status::IOError("cannot find this program (/proc/self/exe)"));
  o.dsckpt.assign(self, static_cast<size_t>(n));
  Result<bench::ReshardBenchReport> rep = bench::RunReshardBench(io::Env::Default(), o);
  if (!rep.ok()) return ReportError(rep.status());
  return Print(f.json, bench::ReshardBenchTable(o, *rep), bench::ReshardBenchJson(o, *rep));
}

}  // namespace

void AddBenchCommands(CLI::App& app, DsckptContext& ctx) {
  CLI::App* bench = app.add_subcommand("bench", "Measure storage speed against the disk's bound");
  bench->require_subcommand(1);

  auto io_flags = std::make_shared<IoFlags>();
  CLI::App* io = bench->add_subcommand(
      "io", "Sequential write (until fsynced) and read with each I/O backend, beside fio");
  io->add_option("--dir", io_flags->dir, "Directory on the disk to measure")->check(
      CLI::ExistingDirectory);
  io->add_option("--size", io_flags->size, "Bytes to write and read (e.g. 4G, 512M)");
  io->add_option("--block", io_flags->block, "Request size (multiple of 4 KiB)");
  io->add_option("--queue-depth", io_flags->depth, "Requests in flight")->check(
      CLI::Range(1, 1024));
  io->add_option("--repeat", io_flags->repeat, "Interleaved runs of each; medians are reported")
      ->check(CLI::Range(1, 100));
  io->add_flag("--json", io_flags->json, "Print one JSON line (the table goes to stderr)");
  io->add_flag("--no-fio", io_flags->no_fio, "Skip the fio comparison");
  io->footer("Example: dsckpt bench io --dir /scratch --size 4G --json");
  io->callback([io_flags, &ctx] { ctx.exit_code = RunBenchIo(*io_flags); });

  auto codec_flags = std::make_shared<CodecFlags>();
  CLI::App* codec = bench->add_subcommand(
      "codec", "Ratio and one-core encode/decode speed of each chunk codec on synthetic state");
  codec->add_option("--size", codec_flags->size, "Bytes of each data set (e.g. 64M, 1G)");
  codec->add_option("--chunk", codec_flags->chunk, "Chunk size (multiple of 8 bytes)");
  codec->add_option("--repeat", codec_flags->repeat, "Timed runs of each; medians are reported")
      ->check(CLI::Range(1, 100));
  codec->add_option("--seed", codec_flags->seed, "Seed of the synthetic data");
  codec->add_flag("--json", codec_flags->json,
                  "Print one JSON line per (data, codec) (the table goes to stderr)");
  codec->footer("Example: dsckpt bench codec --size 64M --json");
  codec->callback([codec_flags, &ctx] { ctx.exit_code = RunBenchCodec(*codec_flags); });

  auto save_flags = std::make_shared<SaveFlags>();
  CLI::App* save = bench->add_subcommand(
      "save", "A whole save and load of synthetic training state, against memcpy and fio");
  save->add_option("--dir", save_flags->dir, "Directory on the disk to save to")
      ->check(CLI::ExistingDirectory);
  save->add_option("--size", save_flags->size, "Logical bytes of state, all ranks together");
  save->add_option("--ranks", save_flags->ranks, "Ranks saving at once (threads)")
      ->check(CLI::Range(1, 64));
  save->add_option("--codec", save_flags->codec, "raw, zstd or bytegroup+zstd");
  save->add_option("--chunk", save_flags->chunk, "Raw bytes per chunk");
  save->add_option("--repeat", save_flags->repeat,
                   "Measured rounds of save, load and fio (after one warm-up save); medians")
      ->check(CLI::Range(1, 100));
  save->add_flag("--keep", save_flags->keep, "Leave the save directory behind for inspection");
  save->add_flag("--json", save_flags->json, "Print one JSON line (the table goes to stderr)");
  save->add_flag("--no-fio", save_flags->no_fio, "Skip the fio comparison");
  save->footer("Example: dsckpt bench save --dir /scratch --size 4G --ranks 2 --codec raw --json");
  save->callback([save_flags, &ctx] { ctx.exit_code = RunBenchSave(*save_flags); });

  auto rf = std::make_shared<ReshardBenchFlags>();
  CLI::App* rs = bench->add_subcommand(
      "reshard", "Reshard a synthetic checkpoint N->M ranks, against fio's read + write bound");
  rs->add_option("--dir", rf->dir, "Directory on the disk to use")->check(CLI::ExistingDirectory);
  rs->add_option("--size", rf->size, "Logical bytes of training state");
  rs->add_option("--from", rf->from, "Ranks of the source")->check(CLI::Range(1, 1024));
  rs->add_option("--to", rf->to, "Ranks of the target")->check(CLI::Range(1, 1024));
  rs->add_option("--from-stage", rf->from_stage, "ZeRO stage of the source")->check(CLI::Range(0, 3));
  rs->add_option("--to-stage", rf->to_stage, "ZeRO stage of the target")->check(CLI::Range(0, 3));
  rs->add_option("--memory", rf->memory, "The reshard's --memory");
  rs->add_option("--codec", rf->codec, "Codec of the source (raw, zstd, bytegroup+zstd)");
  rs->add_flag("--keep", rf->keep, "Leave the checkpoints behind");
  rs->add_flag("--json", rf->json, "Print one JSON line (the table goes to stderr)");
  rs->add_flag("--no-fio", rf->no_fio, "Skip the fio comparison");
  rs->footer("Example: dsckpt bench reshard --dir /scratch --size 4G --from 2 --to 3 --json");
  rs->callback([rf, &ctx] { ctx.exit_code = RunBenchReshard(*rf); });

  auto ef = std::make_shared<ReshardBenchFlags>();
  ef->operation = "export";
  CLI::App* ex = bench->add_subcommand(
      "export", "Export a synthetic checkpoint's weights to safetensors, against fio's bound");
  ex->add_option("--dir", ef->dir, "Directory on the disk to use")->check(CLI::ExistingDirectory);
  ex->add_option("--size", ef->size, "Logical bytes of training state (a third are weights)");
  ex->add_option("--from", ef->from, "Ranks of the checkpoint")->check(CLI::Range(1, 1024));
  ex->add_option("--memory", ef->memory, "The export's --memory");
  ex->add_option("--codec", ef->codec, "Codec of the checkpoint (raw, zstd, bytegroup+zstd)");
  ex->add_flag("--keep", ef->keep, "Leave the files behind");
  ex->add_flag("--json", ef->json, "Print one JSON line (the table goes to stderr)");
  ex->add_flag("--no-fio", ef->no_fio, "Skip the fio comparison");
  ex->footer("Example: dsckpt bench export --dir /scratch --size 4G --json");
  ex->callback([ef, &ctx] { ctx.exit_code = RunBenchReshard(*ef); });
}

}  // namespace ds::cli
