// `dsckpt diff`, `export` and `import` end to end: exit codes and messages, the exported file
// read by Hugging Face's safetensors in Python, import -> verify -> export round trips, and the
// export's memory bound measured on the process.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "ckpt/export.h"
#include "ckpt/save_util.h"
#include "ckpt/tensor_files.h"
#include "formats/safetensors.h"
#include "testing/matchers.h"
#include "testing/paths.h"
#include "testing/python.h"
#include "testing/shell.h"

namespace ds {
namespace {

using ckpt::Layout;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::Sh;
using testing::ShellResult;
using testing::TestTensor;

std::string Dsckpt() { return testing::BuildDir() + "/dsckpt"; }
std::string Q(const std::string& s) { return bench::ShellQuote(s); }

// The last line of `out` that holds a JSON object (logs on stderr come before it).
std::string LastJsonLine(const std::string& out) {
  const size_t at = out.rfind("\n{");
  return at == std::string::npos ? out : out.substr(at + 1);
}

class DsckptExportTest : public ::testing::Test {
 protected:
  // Saves `state` at `layout` into save directory `save_dir` (under the temp dir).
  std::string Save(const std::vector<TestTensor>& state, const Layout& layout,
                   const std::string& save_dir, uint64_t chunk_bytes = 4096,
                   fmt::Codec codec = fmt::Codec::kByteGroupZstd) {
    ckpt::InProcessStore store;
    ckpt::WriterOptions o = ckpt::TestWriterOptions(dir_.Join(save_dir));
    o.chunk_bytes = chunk_bytes;
    o.staging_bytes = std::max<uint64_t>(o.staging_bytes, 4 * chunk_bytes);
    o.codec = codec;
    ckpt::SaveOutcome out = ckpt::SaveAll(io::Env::Default(), state, layout, 42, o, &store);
    for (const Status& s : out.status) EXPECT_TRUE(s.ok()) << s.ToString();
    return out.stats[0].path;
  }
  // Element `index` of fp32 tensor `name` of `state` set to `value`.
  static std::vector<TestTensor> With(std::vector<TestTensor> state, const std::string& name,
                                      uint64_t index, float value) {
    for (TestTensor& t : state) {
      if (t.name == name) std::memcpy(t.data.data() + 4 * index, &value, 4);
    }
    return state;
  }
  bool Exists(const std::string& path) {
    Result<bool> e = io::Env::Default()->Exists(path);
    return !e.ok() || *e;  // an error counts as "something is there"
  }

  testing::TempDir dir_;
  std::vector<TestTensor> state_ = {
      testing::MakeTensor("master/wte", fmt::DType::kF32, {64, 48}, 1),
      testing::MakeTensor("master/h.0.attn.c_attn.weight", fmt::DType::kF32, {48, 144}, 2),
      testing::MakeTensor("master/ln_f.bias", fmt::DType::kF32, {48}, 3),
      testing::MakeTensor("model/wte", fmt::DType::kBF16, {64, 48}, 4),
      testing::MakeTensor("optim/exp_avg/wte", fmt::DType::kF32, {64, 48}, 5),
      testing::MakeTensor("optim/exp_avg_sq/wte", fmt::DType::kF32, {64, 48}, 6)};
};

// ---- diff

TEST_F(DsckptExportTest, DiffExitCodesAndReport) {
  const std::string a = Save(state_, {1, 0, 1}, "a");
  const std::string b = Save(state_, {4, 2, 1}, "b");
  const float old_value = [&] {
    float f;
    std::memcpy(&f, state_[0].data.data() + 4 * (7 * 48 + 5), 4);
    return f;
  }();
  const std::string c =
      Save(With(state_, "master/wte", 7 * 48 + 5, old_value + 0.5f), {2, 3, 1}, "c");

  ShellResult same = Sh(Dsckpt() + " diff --ignore-blobs " + Q(a) + " " + Q(b));
  EXPECT_EQ(same.status, 0) << same.out;
  EXPECT_THAT(same.out, HasSubstr("equal: 6 tensors"));
  EXPECT_THAT(same.out, HasSubstr("(bit-exact)"));
  EXPECT_THAT(same.out, HasSubstr("world size 4, ZeRO stage 2"));

  ShellResult blobs = Sh(Dsckpt() + " diff " + Q(a) + " " + Q(b));
  EXPECT_EQ(blobs.status, 1) << blobs.out;
  EXPECT_THAT(blobs.out, HasSubstr("blob only in B: rng/rank-1 (0 bytes in A, 4 in B)"));

  ShellResult changed = Sh(Dsckpt() + " diff --ignore-blobs " + Q(a) + " " + Q(c));
  EXPECT_EQ(changed.status, 1) << changed.out;
  const double delta = static_cast<double>(old_value + 0.5f) - old_value;
  char expect[256];
  std::snprintf(expect, sizeof expect,
                "differs: master/wte: 1 of 3072 elements, max abs diff %.6g at [7, 5] (A %.6g, "
                "B %.6g), max rel diff %.6g\n",
                delta, static_cast<double>(old_value), static_cast<double>(old_value + 0.5f),
                delta / std::fabs(static_cast<double>(old_value + 0.5f)));
  EXPECT_THAT(changed.out, HasSubstr(expect));
  EXPECT_THAT(changed.out, HasSubstr("different: 1 of 6 tensors, 0 blob(s)"));

  ShellResult loose = Sh(Dsckpt() + " diff --ignore-blobs --atol 0.51 " + Q(a) + " " + Q(c));
  EXPECT_EQ(loose.status, 0) << loose.out;
  EXPECT_THAT(loose.out, HasSubstr("1 tensor(s) match within atol 0.51 rtol 0 but not "
                                   "bit-exactly (largest abs diff"));

  ShellResult js = Sh(Dsckpt() + " diff --json --ignore-blobs " + Q(a) + " " + Q(c));
  EXPECT_EQ(js.status, 1);
  nlohmann::json j = nlohmann::json::parse(LastJsonLine(js.out));
  EXPECT_FALSE(j["equal"].get<bool>());
  for (const auto& t : j["tensors"]) {
    if (t["name"] != "master/wte") continue;
    EXPECT_EQ(t["status"], "differs");
    EXPECT_EQ(t["mismatched"], 1);
    EXPECT_EQ(t["max_abs_index"], 7 * 48 + 5);
    EXPECT_DOUBLE_EQ(t["max_abs_diff"].get<double>(), delta);
  }

  // The save directory's pointers resolve; the save directory itself is not a checkpoint.
  ShellResult latest = Sh(Dsckpt() + " diff " + Q(dir_.Join("a/latest")) + " " + Q(a));
  EXPECT_EQ(latest.status, 0) << latest.out;
  ShellResult save_dir = Sh(Dsckpt() + " diff " + Q(dir_.Join("a")) + " " + Q(a));
  EXPECT_EQ(save_dir.status, 2) << save_dir.out;
  EXPECT_THAT(save_dir.out, HasSubstr("dsckpt: " + dir_.Join("a") +
                                      " is a save directory, not a checkpoint: name one of its "
                                      "checkpoints (" +
                                      dir_.Join("a/latest") + ", "));
  ShellResult missing = Sh(Dsckpt() + " diff " + Q(dir_.Join("nope")) + " " + Q(a));
  EXPECT_EQ(missing.status, 2) << missing.out;
  EXPECT_THAT(missing.out, HasSubstr("dsckpt: " + dir_.Join("nope") + " does not exist"));
  ASSERT_TRUE(io::Env::Default()->CreateDirs(dir_.Join("plain")).ok());
  ShellResult plain = Sh(Dsckpt() + " diff " + Q(dir_.Join("plain")) + " " + Q(a));
  EXPECT_EQ(plain.status, 2) << plain.out;
  EXPECT_THAT(plain.out, HasSubstr(dir_.Join("plain") + " is not a checkpoint: it has no "
                                                        "manifest.h5"));
}

// ---- export

TEST_F(DsckptExportTest, ExportBadInputLeavesNothingBehind) {
  const std::string ckpt = Save(state_, {2, 1, 1}, "s");
  const std::string out = dir_.Join("model.safetensors");
  struct Case {
    std::string args;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {"--format onnx", "dsckpt: unknown --format 'onnx' (supported: safetensors, hf)"},
           {"--dtype fp16", "dsckpt: unknown --dtype 'fp16' (use fp32 or bf16)"},
           {"--what optimizer", "dsckpt: unknown --what 'optimizer' (use weights or all)"},
           {"--memory lots", "dsckpt: --memory"},
           {"--max-shard-size 5GB", "dsckpt: --max-shard-size is for --format hf"},
           {"--format hf --max-shard-size lots", "dsckpt: --max-shard-size 'lots': give a size"},
       }) {
    ShellResult r = Sh(Dsckpt() + " export " + Q(ckpt) + " --out " + Q(out) + " " + c.args);
    EXPECT_EQ(r.status, 2) << c.args << ": " << r.out;
    EXPECT_THAT(r.out, HasSubstr(c.message)) << c.args;
    EXPECT_FALSE(Exists(out));
  }
  ShellResult no_dir =
      Sh(Dsckpt() + " export " + Q(ckpt) + " --out " + Q(dir_.Join("no/such/m.safetensors")));
  EXPECT_EQ(no_dir.status, 2) << no_dir.out;
  EXPECT_THAT(no_dir.out,
              HasSubstr("cannot write " + dir_.Join("no/such/m.safetensors") + ": the directory " +
                        dir_.Join("no/such") + " does not exist (create it first)"));

  ShellResult ok = Sh(Dsckpt() + " export " + Q(ckpt) + " --out " + Q(out));
  ASSERT_EQ(ok.status, 0) << ok.out;
  EXPECT_THAT(ok.out, HasSubstr("exported 3 tensors ("));
  EXPECT_THAT(ok.out, HasSubstr("float32) of step-00000042 (step 42) to " + out));
  ShellResult again = Sh(Dsckpt() + " export " + Q(ckpt) + " --out " + Q(out));
  EXPECT_EQ(again.status, 2) << again.out;
  EXPECT_THAT(again.out,
              HasSubstr("dsckpt: " + out + " already exists; pass --force to replace it"));
  ShellResult forced = Sh(Dsckpt() + " export " + Q(ckpt) + " --out " + Q(out) + " --force");
  EXPECT_EQ(forced.status, 0) << forced.out;

  // Damage a chunk of rank 1: the export fails naming it, and the old file stays as it was.
  auto f =
      io::Env::Default()->OpenFile(io::JoinPath(ckpt, "rank-00001.dss"), {io::OpenMode::kUpdate});
  ASSERT_TRUE(f.ok());
  std::byte junk[8] = {};
  ASSERT_TRUE((*f)->WriteAt(4096 + 64, junk).ok());
  const std::string out2 = dir_.Join("second.safetensors");
  ShellResult bad = Sh(Dsckpt() + " export " + Q(ckpt) + " --out " + Q(out2));
  EXPECT_EQ(bad.status, 2) << bad.out;
  EXPECT_THAT(bad.out, HasSubstr("of rank-00001.dss"));
  EXPECT_FALSE(Exists(out2));
  EXPECT_FALSE(Exists(out2 + ".partial"));
}

// Hugging Face's sharded layout (ckpt::ExportHfShards): tensors in checkpoint order, cut where the
// next would pass the limit (a larger one alone), the index's total_size and weight_map; a second
// export into the folder is refused unless it may overwrite, and then the first one's files go.
TEST_F(DsckptExportTest, HfShardsFollowSavePretrainedsLayout) {
  const std::string ckpt = Save(state_, {2, 1, 1}, "s");
  const std::string out = dir_.Join("hf");
  io::Env* env = io::Env::Default();
  ASSERT_TRUE(env->CreateDirs(out).ok());
  ckpt::ExportOptions o;
  // wte 12,288 bytes, h.0.attn.c_attn.weight 27,648 (over the limit: alone), ln_f.bias 192.
  DS_ASSERT_OK_AND_ASSIGN(ckpt::ShardedExport r, ckpt::ExportHfShards(env, ckpt, out, o, 13000));
  ASSERT_EQ(r.files.size(), 3u);
  EXPECT_EQ(r.files[0].path, io::JoinPath(out, "model-00001-of-00003.safetensors"));
  EXPECT_EQ(r.files[2].path, io::JoinPath(out, "model-00003-of-00003.safetensors"));
  EXPECT_EQ(r.total_bytes, 12288u + 27648u + 192u);
  DS_ASSERT_OK_AND_ASSIGN(std::string text, env->ReadFileToString(r.index));
  const nlohmann::json index = nlohmann::json::parse(text);
  EXPECT_EQ(index["metadata"]["total_size"], 40128);
  EXPECT_EQ(index["weight_map"]["wte"], "model-00001-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["h.0.attn.c_attn.weight"], "model-00002-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["ln_f.bias"], "model-00003-of-00003.safetensors");
  DS_ASSERT_OK_AND_ASSIGN(auto read_back, fmt::ReadSafetensorsIndex(env, r.index));
  EXPECT_EQ(read_back.size(), 3u);

  EXPECT_THAT(ckpt::ExportHfShards(env, ckpt, out, o, UINT64_MAX).status(),
              testing::StatusIs(StatusCode::kFailedPrecondition,
                                HasSubstr("model-00001-of-00003.safetensors exists (an earlier "
                                          "export); pass --force to replace it")));
  o.overwrite = true;
  DS_ASSERT_OK_AND_ASSIGN(ckpt::ShardedExport one,
                          ckpt::ExportHfShards(env, ckpt, out, o, UINT64_MAX));
  EXPECT_EQ(one.index, "");
  DS_ASSERT_OK_AND_ASSIGN(std::vector<std::string> files, env->ListDir(out));
  EXPECT_EQ(files, std::vector<std::string>{"model.safetensors"});

  // An index that maps a tensor outside the folder is refused, naming it.
  ASSERT_TRUE(env->WriteFileSynced(io::JoinPath(out, "bad.index.json"),
                                   R"({"weight_map": {"wte": "../x.safetensors"}})")
                  .ok());
  EXPECT_THAT(fmt::ReadSafetensorsIndex(env, io::JoinPath(out, "bad.index.json")).status(),
              testing::StatusIs(StatusCode::kInvalidArgument,
                                HasSubstr("weight_map[\"wte\"] must name a file in the folder")));
}

// Python's safetensors loads the file: names, dtypes, shapes and a checksum of every tensor's
// bytes (computed there and here) match the reference conversion of the saved state.
TEST_F(DsckptExportTest, HuggingFaceSafetensorsLoadsTheExport) {
  const std::string python = testing::Python();
  DS_SKIP_OR_FAIL_WITHOUT_PYTHON("safetensors, numpy, torch");
  const std::string ckpt = Save(state_, {3, 2, 1}, "s");
  const std::string script = R"(
import sys, json, numpy as np, torch, safetensors, safetensors.torch
tensors = safetensors.torch.load_file(sys.argv[1])
out = {}
for name, t in tensors.items():
    raw = np.frombuffer((t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes(), np.uint8).astype(np.uint64)
    weights = np.arange(len(raw), dtype=np.uint64) % np.uint64(251) + np.uint64(1)
    out[name] = [str(t.dtype).replace("torch.", ""), list(t.shape), int((raw * weights).sum())]
with safetensors.safe_open(sys.argv[1], framework="pt") as f:
    out["__metadata__"] = f.metadata()
print(json.dumps(out))
)";
  for (const char* dtype : {"fp32", "bf16"}) {
    SCOPED_TRACE(dtype);
    const std::string out = dir_.Join(std::string("model-") + dtype + ".safetensors");
    ShellResult r = Sh(Dsckpt() + " export " + Q(ckpt) + " --format safetensors --out " + Q(out) +
                       " --what all --dtype " + dtype);
    ASSERT_EQ(r.status, 0) << r.out;
    ShellResult py = Sh(python + " -c " + Q(script) + " " + Q(out));
    ASSERT_EQ(py.status, 0) << py.out;
    nlohmann::json j = nlohmann::json::parse(LastJsonLine(py.out));
    const fmt::DType to = std::string(dtype) == "bf16" ? fmt::DType::kBF16 : fmt::DType::kF32;
    size_t n = 0;
    for (const TestTensor& t : state_) {
      std::string name = t.name;
      if (name.rfind("master/", 0) == 0)
        name = name.substr(7);
      else if (name.rfind("optim/", 0) != 0)
        continue;  // model/wte has a master copy
      ++n;
      ASSERT_TRUE(j.contains(name)) << name << " in " << py.out;
      const std::vector<std::byte> want = ckpt::ReferenceConvert(t, to);
      uint64_t sum = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        sum += static_cast<uint64_t>(want[i]) * (i % 251 + 1);
      }
      EXPECT_EQ(j[name][0], to == fmt::DType::kBF16 ? "bfloat16" : "float32") << name;
      EXPECT_EQ(j[name][1].get<std::vector<int64_t>>(), t.shape) << name;
      EXPECT_EQ(j[name][2].get<uint64_t>(), sum) << name;
    }
    EXPECT_EQ(j.size(), n + 1);
    EXPECT_EQ(j["__metadata__"]["format"], "pt");
    EXPECT_EQ(j["__metadata__"]["tag"], "step-00000042");
    EXPECT_EQ(j["__metadata__"]["step"], "42");
  }

  // The three lines docs/export.md gives load a `--what all` export into a module.
  auto doc = io::Env::Default()->ReadFileToString(testing::SourceDir() + "/docs/export.md");
  ASSERT_TRUE(doc.ok());
  size_t begin = doc->find("```python\n");
  ASSERT_NE(begin, std::string::npos) << "docs/export.md lost its Python example";
  begin += 10;
  const std::string snippet = doc->substr(begin, doc->find("```", begin) - begin);
  EXPECT_EQ(std::count(snippet.begin(), snippet.end(), '\n'), 3) << "three lines, as promised";
  const std::string prelude = R"(
import torch
from safetensors.torch import load_file as _load
class _M(torch.nn.Module): pass
model = _M()
for _name, _t in _load("model.safetensors").items():
    if "/" in _name: continue
    *_path, _leaf = _name.split(".")
    _m = model
    for _p in _path:
        if not hasattr(_m, _p): _m.add_module(_p, _M())
        _m = getattr(_m, _p)
    _m.register_parameter(_leaf, torch.nn.Parameter(torch.zeros_like(_t)))
)";
  const std::string check = R"(
sd = model.state_dict()
print("doc-example", len(sd), all(torch.equal(sd[k], v) for k, v in state.items()))
)";
  ASSERT_TRUE(io::Env::Default()->CreateDirs(dir_.Join("doc")).ok());
  ShellResult r = Sh(Dsckpt() + " export " + Q(ckpt) + " --out " +
                     Q(dir_.Join("doc/model.safetensors")) + " --what all");
  ASSERT_EQ(r.status, 0) << r.out;
  ShellResult py =
      Sh("cd " + Q(dir_.Join("doc")) + " && " + python + " -c " + Q(prelude + snippet + check));
  EXPECT_EQ(py.status, 0) << py.out;
  EXPECT_THAT(py.out, HasSubstr("doc-example 3 True")) << py.out;
}

// A model of 128 MiB exported with --memory 16M: the process never holds more than a fraction
// of it (its peak resident set is measured), and the file is right.
TEST_F(DsckptExportTest, ExportMemoryStaysBounded) {
  auto make = [] {
    return std::vector<TestTensor>{
        testing::MakeTensor("master/a", fmt::DType::kF32, {8192, 2048}, 1),
        testing::MakeTensor("master/b", fmt::DType::kF32, {8192, 2048}, 2)};
  };
  // The state is dropped before dsckpt starts: a forked child's peak counts the pages it
  // shared with this process before exec.
  const std::string ckpt = Save(make(), {4, 2, 1}, "big", 1 << 20, fmt::Codec::kRaw);
  const std::string out = dir_.Join("big.safetensors");
  // Run dsckpt as a direct child, so that wait4 reports its own peak and nobody else's.
  std::vector<std::string> args = {Dsckpt(),   "export", ckpt,        "--out", out,
                                   "--memory", "16M",    "--threads", "2"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execv(argv[0], argv.data());
    _exit(127);
  }
  int status = 0;
  struct rusage ru {};
  ASSERT_EQ(wait4(pid, &status, 0, &ru), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  const uint64_t peak = static_cast<uint64_t>(ru.ru_maxrss) * 1024;  // bytes
  std::printf("export of 128 MiB with --memory 16M: peak resident set %.1f MiB\n",
              static_cast<double>(peak) / (1 << 20));
  EXPECT_LT(peak, uint64_t{64} << 20) << "the export held too much of the model";
  auto got = ckpt::ReadSafetensorsFile(io::Env::Default(), out);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  const std::vector<TestTensor> big = make();
  EXPECT_TRUE((*got)["a"].data == big[0].data);
  EXPECT_TRUE((*got)["b"].data == big[1].data);
}

// ---- import

TEST_F(DsckptExportTest, ImportVerifyExportRoundTrip) {
  const std::vector<TestTensor> file = {
      testing::MakeTensor("wte", fmt::DType::kF32, {64, 48}, 1),
      testing::MakeTensor("h.0.mlp.c_fc.weight", fmt::DType::kF32, {48, 100}, 2),
      testing::MakeTensor("position_ids", fmt::DType::kI64, {1, 40}, 3)};
  const std::string in = dir_.Join("in.safetensors");
  ASSERT_TRUE(ckpt::WriteSafetensorsFile(io::Env::Default(), in, file).ok());
  const std::string save_dir = dir_.Join("imported");
  ShellResult imp = Sh(Dsckpt() + " import " + Q(in) + " --out " + Q(save_dir) +
                       " --world 3 --stage 2 --step 100");
  ASSERT_EQ(imp.status, 0) << imp.out;
  EXPECT_THAT(imp.out, HasSubstr("imported 3 tensors ("));
  EXPECT_THAT(imp.out, HasSubstr("into " + save_dir +
                                 "/step-00000100 (world size 3, ZeRO stage "
                                 "2)"));
  EXPECT_THAT(imp.out, HasSubstr("latest -> step-00000100"));
  EXPECT_THAT(imp.out, HasSubstr("dsckpt: note: 1 non-floating tensor(s) imported unchanged "
                                 "under model/"));
  ShellResult verify = Sh(Dsckpt() + " verify " + Q(save_dir + "/step-00000100"));
  EXPECT_EQ(verify.status, 0) << verify.out;
  EXPECT_THAT(verify.out, HasSubstr("healthy"));

  const std::string out = dir_.Join("out.safetensors");
  ShellResult exp = Sh(Dsckpt() + " export " + Q(save_dir + "/latest") + " --out " + Q(out));
  ASSERT_EQ(exp.status, 0) << exp.out;
  auto got = ckpt::ReadSafetensorsFile(io::Env::Default(), out);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ASSERT_EQ(got->size(), file.size());
  for (const TestTensor& t : file) {
    EXPECT_EQ((*got)[t.name].dtype, t.dtype) << t.name;
    EXPECT_EQ((*got)[t.name].shape, t.shape) << t.name;
    EXPECT_TRUE((*got)[t.name].data == t.data) << t.name;
  }

  ShellResult again = Sh(Dsckpt() + " import " + Q(in) + " --out " + Q(save_dir) + " --step 100");
  EXPECT_EQ(again.status, 2) << again.out;
  EXPECT_THAT(again.out, HasSubstr(save_dir + "/step-00000100 already exists"));
  ASSERT_TRUE(io::Env::Default()->WriteFileSynced(dir_.Join("junk.safetensors"), "hello").ok());
  ShellResult junk =
      Sh(Dsckpt() + " import " + Q(dir_.Join("junk.safetensors")) + " --out " + Q(dir_.Join("j")));
  EXPECT_EQ(junk.status, 2) << junk.out;
  EXPECT_THAT(junk.out, HasSubstr("junk.safetensors: the file is 5 bytes, too short"));
  EXPECT_FALSE(Exists(dir_.Join("j")));
  ShellResult stage =
      Sh(Dsckpt() + " import " + Q(in) + " --out " + Q(dir_.Join("k")) + " --stage 5");
  EXPECT_EQ(stage.status, 2) << stage.out;
  EXPECT_THAT(stage.out, Not(HasSubstr("imported")));
}

}  // namespace
}  // namespace ds
