// Export and import: dtype conversion against reference loops, the naming rules, exports of
// checkpoints saved at many layouts, import -> load / verify / export round trips, and every
// way a user or the machine can make them fail (with nothing half-written left behind).
#include "ckpt/export.h"

#include "ckpt/catalog.h"
#include "ckpt/save_util.h"
#include "ckpt/tensor_files.h"
#include "ckpt/verify.h"
#include "formats/dtype_convert.h"
#include "io/fault_env.h"
#include "io/mem_env.h"
#include "testing/matchers.h"

namespace ds::ckpt {
namespace {

using ::ds::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::TestTensor;

// ---- dtype conversion

TEST(DTypeConvertTest, BF16RoundingMatchesTheReferenceOnEdgesAndRandomValues) {
  std::vector<uint32_t> bits = {
      0x00000000, 0x80000000, 0x3f800000, 0x3f808000,  // 1 + half an ulp: tie, to even (down)
      0x3f818000,                                      // tie, to even (up)
      0x3f808001, 0x3f807fff, 0x7f7fffff,              // largest float: rounds to infinity
      0x7f7f7fff, 0x7f7f8000, 0xff7fffff, 0x7f800000, 0xff800000, 0x00000001,
      0x007fffff, 0x00008000, 0x00018000, 0x7fc00000, 0x7f800001, 0xffffffff};
  std::mt19937_64 rng(7);
  for (int i = 0; i < 200000; ++i) bits.push_back(static_cast<uint32_t>(rng()));
  for (uint32_t u : bits) {
    float f;
    std::memcpy(&f, &u, 4);
    const uint16_t got = fmt::F32ToBF16(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(fmt::BF16ToF32(got))) << std::hex << u;
      EXPECT_EQ(got & 0x8000, (u >> 16) & 0x8000) << std::hex << u;
      continue;
    }
    ASSERT_EQ(got, ReferenceBF16(f)) << "float bits 0x" << std::hex << u;
  }
  EXPECT_EQ(fmt::F32ToBF16(3.4028235e38f), 0x7f80);  // overflow rounds to infinity, as torch does
}

TEST(DTypeConvertTest, HalfWidthsWidenExactly) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const auto x = static_cast<uint16_t>(h);
    const double f16 = F16Value(x), bf16 = BF16Value(x);
    if (std::isnan(f16)) {
      EXPECT_TRUE(std::isnan(fmt::F16ToF32(x)));
    } else {
      ASSERT_EQ(static_cast<double>(fmt::F16ToF32(x)), f16) << std::hex << h;
    }
    if (!std::isnan(bf16)) {
      ASSERT_EQ(static_cast<double>(fmt::BF16ToF32(x)), bf16) << std::hex << h;
      ASSERT_EQ(fmt::F32ToBF16(fmt::BF16ToF32(x)), x) << "bf16 -> fp32 -> bf16 is the identity";
    }
  }
}

TEST(DTypeConvertTest, ConvertElementsChecksDTypesAndSizes) {
  std::vector<std::byte> src(12), dst(6), wrong(8);
  DS_EXPECT_OK(fmt::ConvertElements(fmt::DType::kF32, src, fmt::DType::kBF16, dst));
  EXPECT_THAT(fmt::ConvertElements(fmt::DType::kF32, src, fmt::DType::kBF16, wrong),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("12 bytes in, 8 bytes out")));
  EXPECT_THAT(fmt::ConvertElements(fmt::DType::kI32, src, fmt::DType::kF32, src),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("converting int32 to float32 is not supported")));
}

// ---- naming

fmt::Manifest ManifestOf(std::vector<std::pair<std::string, fmt::DType>> tensors) {
  fmt::Manifest m;
  m.info.tag = "step-00000009";
  for (auto& [name, dtype] : tensors) m.tensors.push_back({name, dtype, {2, 3}});
  return m;
}

std::vector<std::string> Names(const ExportSelection& s) {
  std::vector<std::string> out;
  for (const ExportItem& i : s.items) out.push_back(i.source + " -> " + i.name);
  return out;
}

TEST(SelectForExportTest, MasterFirstThenModelThenOptimizerOnRequest) {
  using fmt::DType;
  const fmt::Manifest m = ManifestOf({{"master/wte", DType::kF32},
                                      {"model/wte", DType::kBF16},
                                      {"model/frozen", DType::kBF16},
                                      {"optim/exp_avg/wte", DType::kF32},
                                      {"optim/step/wte", DType::kI64},
                                      {"model/pos_ids", DType::kI64},
                                      {"scalar", DType::kI64}});
  DS_ASSERT_OK_AND_ASSIGN(ExportSelection w, SelectForExport(m, {}));
  EXPECT_THAT(Names(w), ElementsAre("master/wte -> wte", "model/frozen -> frozen",
                                    "model/pos_ids -> pos_ids"));
  EXPECT_EQ(w.from_master, 1u);
  EXPECT_EQ(w.from_model, 2u);
  EXPECT_EQ(w.skipped, 4u);
  EXPECT_EQ(w.items[1].dtype, DType::kF32);  // floats take the export dtype
  EXPECT_EQ(w.items[2].dtype, DType::kI64);  // integers keep theirs
  EXPECT_THAT(w.notes, ElementsAre("2 weight(s) have no master/ copy: exported from model/"));
  EXPECT_EQ(w.data_bytes, 6u * 4 + 6 * 4 + 6 * 8);

  ExportOptions all;
  all.with_optimizer = true;
  all.dtype = DType::kBF16;
  DS_ASSERT_OK_AND_ASSIGN(ExportSelection a, SelectForExport(m, all));
  EXPECT_THAT(Names(a),
              ElementsAre("master/wte -> wte", "model/frozen -> frozen",
                          "optim/exp_avg/wte -> optim/exp_avg/wte",
                          "optim/step/wte -> optim/step/wte", "model/pos_ids -> pos_ids"));
  EXPECT_EQ(a.items[0].dtype, DType::kBF16);
  EXPECT_EQ(a.items[3].dtype, DType::kI64);
}

TEST(SelectForExportTest, FallsBackToModelWeightsAndSaysSo) {
  const fmt::Manifest m =
      ManifestOf({{"model/a", fmt::DType::kBF16}, {"model/b", fmt::DType::kF16}});
  DS_ASSERT_OK_AND_ASSIGN(ExportSelection s, SelectForExport(m, {}));
  EXPECT_THAT(Names(s), ElementsAre("model/a -> a", "model/b -> b"));
  EXPECT_THAT(s.notes, ElementsAre("the checkpoint has no master/ (fp32 master) tensors: exported "
                                   "the 2 model/ weights instead"));
}

TEST(SelectForExportTest, RefusesCheckpointsWithoutWeightsAndOtherDTypes) {
  const fmt::Manifest m =
      ManifestOf({{"optim/exp_avg/a", fmt::DType::kF32}, {"x", fmt::DType::kI8}});
  EXPECT_THAT(SelectForExport(m, {}),
              StatusIs(StatusCode::kFailedPrecondition,
                       HasSubstr("checkpoint step-00000009 has no weights to export: no master/ or "
                                 "model/ tensors (it holds optim/exp_avg/a, x;")));
  ExportOptions f16;
  f16.dtype = fmt::DType::kF16;
  EXPECT_THAT(SelectForExport(ManifestOf({{"master/a", fmt::DType::kF32}}), f16),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("cannot export as float16: the export dtype is float32 or "
                                 "bfloat16")));
}

// ---- export

class ExportTest : public ::testing::Test {
 protected:
  ExportOptions Options(fmt::DType dtype = fmt::DType::kF32) {
    ExportOptions o;
    o.dtype = dtype;
    o.threads = 2;
    o.io_backend = "pwrite";
    return o;
  }
  // Saves `state` at `layout` into a fresh save directory and returns the checkpoint's path.
  std::string Save(io::Env* env, const std::vector<TestTensor>& state, const Layout& layout,
                   uint64_t chunk_bytes = 4096, const std::string& dir = "/ckpts") {
    InProcessStore store;
    WriterOptions o = TestWriterOptions(dir);
    o.chunk_bytes = chunk_bytes;
    SaveOutcome out = SaveAll(env, state, layout, 3, o, &store);
    for (const Status& s : out.status) EXPECT_THAT(s, testing::IsOk());
    return out.stats[0].path;
  }

  // The file holds every master/ and model-only tensor of `state`, converted as the reference
  // loop converts them, under the documented names.
  void ExpectExported(io::Env* env, const std::string& path, const std::vector<TestTensor>& state,
                      fmt::DType dtype, bool with_optimizer = false) {
    DS_ASSERT_OK_AND_ASSIGN(auto got, ReadSafetensorsFile(env, path));
    size_t expected = 0;
    for (const TestTensor& t : state) {
      std::string name;
      if (t.name.rfind("master/", 0) == 0) name = t.name.substr(7);
      if (t.name.rfind("model/", 0) == 0 &&
          std::none_of(state.begin(), state.end(), [&](const TestTensor& u) {
            return u.name == "master/" + t.name.substr(6);
          })) {
        name = t.name.substr(6);
      }
      if (with_optimizer && t.name.rfind("optim/", 0) == 0) name = t.name;
      if (name.empty()) continue;
      ++expected;
      ASSERT_TRUE(got.count(name)) << name << " missing from " << path;
      const TestTensor& g = got[name];
      const fmt::DType want_dtype = fmt::DTypeIsFloat(t.dtype) ? dtype : t.dtype;
      EXPECT_EQ(g.dtype, want_dtype) << name;
      EXPECT_EQ(g.shape, t.shape) << name;
      EXPECT_TRUE(CanonicalNaNs(g.dtype, g.data) ==
                  CanonicalNaNs(want_dtype, ReferenceConvert(t, want_dtype)))
          << name << " differs from the reference conversion of " << t.name;
    }
    EXPECT_EQ(got.size(), expected);
  }

  std::vector<TestTensor> state_ = {
      testing::MakeTensor("master/wte", fmt::DType::kF32, {64, 48}, 1),
      testing::MakeTensor("master/h.0.attn.c_attn.weight", fmt::DType::kF32, {48, 144}, 2),
      testing::MakeTensor("master/ln_f.bias", fmt::DType::kF32, {48}, 3),
      testing::MakeTensor("model/wte", fmt::DType::kBF16, {64, 48}, 4),
      testing::MakeTensor("model/rotary", fmt::DType::kBF16, {30, 7}, 5),
      testing::MakeTensor("optim/exp_avg/wte", fmt::DType::kF32, {64, 48}, 6),
      testing::MakeTensor("optim/step/wte", fmt::DType::kI64, {1}, 7),
      testing::MakeTensor("model/position_ids", fmt::DType::kI64, {2, 20}, 8),
      testing::MakeTensor("rng", fmt::DType::kU8, {17}, 9)};
};

// Every layout (world 1-5 x stage 0-3, a TP layout, chunks that cut elements in two), both
// dtypes: the export equals the full tensors, converted as the reference loop converts them.
TEST_F(ExportTest, EveryLayoutExportsTheConsolidatedWeights) {
  std::vector<std::pair<Layout, uint64_t>> cases;
  for (uint32_t world = 1; world <= 5; ++world) {
    for (uint32_t stage = 0; stage <= 3; ++stage) cases.push_back({{world, stage, 1}, 4096});
  }
  cases.push_back({{4, 2, 2}, 4096});
  cases.push_back({{3, 2, 1}, 4098});  // chunk boundaries inside fp32 elements
  cases.push_back({{2, 3, 1}, 4097});
  for (const auto& [layout, chunk] : cases) {
    SCOPED_TRACE("world " + std::to_string(layout.world) + " stage " +
                 std::to_string(layout.stage) + " tp " + std::to_string(layout.tp) + " chunk " +
                 std::to_string(chunk));
    io::MemEnv env;
    const std::string ckpt = Save(&env, state_, layout, chunk);
    for (fmt::DType dtype : {fmt::DType::kF32, fmt::DType::kBF16}) {
      const std::string out = std::string("/out-") + std::string(fmt::DTypeName(dtype));
      DS_ASSERT_OK_AND_ASSIGN(ExportReport r, ExportSafetensors(&env, ckpt, out, Options(dtype)));
      EXPECT_EQ(r.selection.from_master, 3u);
      EXPECT_EQ(r.selection.from_model, 2u);  // rotary, position_ids
      EXPECT_EQ(r.bytes_written, r.selection.data_bytes);
      ExpectExported(&env, out, state_, dtype);
    }
  }
}

TEST_F(ExportTest, AllAddsOptimizerStateAndMetadataNamesTheSource) {
  io::MemEnv env;
  const std::string ckpt = Save(&env, state_, {3, 1, 1});
  ExportOptions o = Options();
  o.with_optimizer = true;
  DS_ASSERT_OK(ExportSafetensors(&env, ckpt, "/all.safetensors", o).status());
  ExpectExported(&env, "/all.safetensors", state_, fmt::DType::kF32, /*with_optimizer=*/true);
  DS_ASSERT_OK_AND_ASSIGN(auto r, fmt::SafetensorsReader::Open(&env, "/all.safetensors"));
  EXPECT_EQ(r->metadata(), (std::map<std::string, std::string>{{"dtype", "float32"},
                                                               {"format", "pt"},
                                                               {"step", "3"},
                                                               {"tag", "step-00000003"},
                                                               {"weights_from", "master+model"}}));
}

// A model of 3 MiB through 1 MiB of memory, with 64 KiB chunks: windows and the reader's pools
// bound what is held, and the result is the same.
TEST_F(ExportTest, MemorySmallerThanTheModel) {
  io::MemEnv env;
  std::vector<TestTensor> big = {testing::MakeTensor("master/a", fmt::DType::kF32, {512, 1024}, 1),
                                 testing::MakeTensor("master/b", fmt::DType::kF32, {256, 1024}, 2)};
  const std::string ckpt = Save(&env, big, {4, 2, 1}, 64 << 10);
  ExportOptions o = Options(fmt::DType::kBF16);
  o.memory_bytes = 1 << 20;
  uint64_t progressed = 0, total = 0;
  o.progress = [&](uint64_t n, uint64_t t) {
    progressed += n;  // threads: the test's counters are only read after the export
    total = t;
  };
  o.threads = 1;
  DS_ASSERT_OK_AND_ASSIGN(ExportReport r, ExportSafetensors(&env, ckpt, "/m.safetensors", o));
  ExpectExported(&env, "/m.safetensors", big, fmt::DType::kBF16);
  EXPECT_EQ(progressed, (512 + 256) * 1024 * 2u);
  EXPECT_EQ(total, progressed);
}

TEST_F(ExportTest, ExistingOutputNeedsOverwrite) {
  io::MemEnv env;
  const std::string ckpt = Save(&env, state_, {2, 1, 1});
  DS_ASSERT_OK(env.WriteFileSynced("/model.safetensors", "old"));
  EXPECT_THAT(ExportSafetensors(&env, ckpt, "/model.safetensors", Options()),
              StatusIs(StatusCode::kFailedPrecondition,
                       HasSubstr("/model.safetensors already exists; pass --force to replace it")));
  DS_ASSERT_OK_AND_ASSIGN(std::string old, env.ReadFileToString("/model.safetensors"));
  EXPECT_EQ(old, "old");
  ExportOptions o = Options();
  o.overwrite = true;
  DS_ASSERT_OK(ExportSafetensors(&env, ckpt, "/model.safetensors", o).status());
  ExpectExported(&env, "/model.safetensors", state_, fmt::DType::kF32);
  DS_ASSERT_OK(env.CreateDirs("/outdir"));
  EXPECT_THAT(ExportSafetensors(&env, ckpt, "/outdir", o),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("/outdir is a directory; name the file to write")));
}

TEST_F(ExportTest, NotEnoughFreeSpaceIsRefusedUpFront) {
  io::MemEnv env;
  const std::string ckpt = Save(&env, state_, {1, 0, 1});
  env.SetCapacity(env.UsedBytes() + 10000);
  EXPECT_THAT(ExportSafetensors(&env, ckpt, "/model.safetensors", Options()),
              StatusIs(StatusCode::kNoSpace,
                       AllOf(HasSubstr("exporting to /model.safetensors needs"),
                             HasSubstr("but the filesystem of / has only 9.8 KiB (10000 bytes) "
                                       "free; free some space or write elsewhere"))));
  DS_ASSERT_OK_AND_ASSIGN(auto names, env.ListDir("/"));
  EXPECT_THAT(names, ElementsAre("ckpts"));
}

// Failures once the file is being written: a write error, a full disk that StatFs did not
// foresee, damage in the checkpoint. Each fails naming the cause and leaves no file behind.
TEST_F(ExportTest, FailuresMidwayLeaveNothingBehind) {
  io::MemEnv mem;
  const std::string ckpt = Save(&mem, state_, {2, 2, 1});
  struct Case {
    io::FaultKind kind;
    StatusCode code;
    const char* message;
  };
  for (const Case& c : {Case{io::FaultKind::kIOError, StatusCode::kIOError, "model.safetensors"},
                        Case{io::FaultKind::kNoSpace, StatusCode::kNoSpace, "free space"}}) {
    io::FaultEnv env(&mem);
    env.AddRule({io::kFaultWrite, "/model.safetensors.partial", 3, -1, c.kind});
    EXPECT_THAT(ExportSafetensors(&env, ckpt, "/model.safetensors", Options()),
                StatusIs(c.code, HasSubstr(c.message)));
    DS_ASSERT_OK_AND_ASSIGN(auto names, mem.ListDir("/"));
    EXPECT_THAT(names, ElementsAre("ckpts"));
  }
  // Damage one chunk of rank 1.
  DS_ASSERT_OK_AND_ASSIGN(auto f, mem.OpenFile(ckpt + "/rank-00001.dss", {io::OpenMode::kUpdate}));
  std::byte junk[8] = {};
  DS_ASSERT_OK(f->WriteAt(4096 + 100, junk));
  EXPECT_THAT(ExportSafetensors(&mem, ckpt, "/model.safetensors", Options()),
              StatusIs(StatusCode::kCorruption,
                       AllOf(HasSubstr("of rank-00001.dss"), HasSubstr("exporting /ckpts/"))));
  DS_ASSERT_OK_AND_ASSIGN(auto names, mem.ListDir("/"));
  EXPECT_THAT(names, ElementsAre("ckpts"));
}

TEST_F(ExportTest, NotACheckpoint) {
  io::MemEnv env;
  DS_ASSERT_OK(env.CreateDirs("/empty"));
  EXPECT_THAT(ExportSafetensors(&env, "/empty", "/m.safetensors", Options()),
              StatusIs(StatusCode::kNotFound, HasSubstr("/empty/manifest.h5")));
  DS_ASSERT_OK_AND_ASSIGN(auto names, env.ListDir("/"));
  EXPECT_THAT(names, ElementsAre("empty"));
}

// ---- import

// `t` (16-bit floats of random bits) with its NaNs replaced by 1.5.
TestTensor WithoutNaNs(TestTensor t) {
  for (size_t i = 0; i < t.data.size(); i += 2) {
    uint16_t h;
    std::memcpy(&h, t.data.data() + i, 2);
    if (!std::isnan(t.dtype == fmt::DType::kBF16 ? BF16Value(h) : F16Value(h))) continue;
    h = t.dtype == fmt::DType::kBF16 ? 0x3fc0 : 0x3e00;
    std::memcpy(t.data.data() + i, &h, 2);
  }
  return t;
}

class ImportTest : public ExportTest {
 protected:
  ImportOptions ImportOpts(uint32_t world, uint32_t stage) {
    ImportOptions o;
    o.world_size = world;
    o.zero_stage = stage;
    o.writer = TestWriterOptions("");
    o.memory_bytes = 1 << 20;
    return o;
  }
  // What the import of `file` must hold: floats as fp32 master/ (optim/ kept), others model/.
  static std::vector<TestTensor> Imported(const std::vector<TestTensor>& file) {
    std::vector<TestTensor> out;
    for (const TestTensor& t : file) {
      TestTensor c = t;
      if (fmt::DTypeIsFloat(t.dtype)) {
        c.dtype = fmt::DType::kF32;
        c.data = ReferenceConvert(t, fmt::DType::kF32);
        if (t.name.rfind("optim/", 0) != 0) c.name = "master/" + t.name;
      } else {
        c.name = "model/" + t.name;
      }
      out.push_back(c);
    }
    return out;
  }
  std::vector<TestTensor> file_ = {
      testing::MakeTensor("wte", fmt::DType::kF32, {64, 48}, 1),
      testing::MakeTensor("h.0.mlp.c_fc.weight", fmt::DType::kF32, {48, 100}, 2),
      testing::MakeTensor("ln_f.weight", fmt::DType::kF32, {48}, 3),
      testing::MakeTensor("position_ids", fmt::DType::kI64, {1, 40}, 4),
      testing::MakeTensor("optim/exp_avg/wte", fmt::DType::kF32, {64, 48}, 5),
      testing::MakeTensor("scale", fmt::DType::kF32, {}, 6),
      testing::MakeTensor("empty", fmt::DType::kF32, {0, 3}, 7)};
};

TEST_F(ImportTest, LoadsAtAnyLayoutAndVerifies) {
  for (auto [world, stage] : {std::pair<uint32_t, uint32_t>{1, 0}, {3, 2}, {4, 3}, {2, 1}}) {
    SCOPED_TRACE("world " + std::to_string(world) + " stage " + std::to_string(stage));
    io::MemEnv env;
    DS_ASSERT_OK(WriteSafetensorsFile(&env, "/in.safetensors", file_));
    DS_ASSERT_OK_AND_ASSIGN(ImportReport r, ImportSafetensors(&env, "/in.safetensors", "/ckpts",
                                                              ImportOpts(world, stage)));
    EXPECT_EQ(r.path, "/ckpts/step-00000000");
    EXPECT_EQ(r.tensors, file_.size());
    DS_ASSERT_OK_AND_ASSIGN(VerifyReport v, VerifyCheckpoint(&env, r.path));
    EXPECT_TRUE(v.healthy) << (v.problems.empty() ? "" : v.problems[0]);
    DS_ASSERT_OK_AND_ASSIGN(auto latest, Catalog(&env, "/ckpts").ReadLatest());
    EXPECT_EQ(latest, "step-00000000");
    std::vector<TestTensor> want = Imported(file_);
    want.pop_back();  // SlicesOf leaves out empty tensors: checked through the export below
    for (const Layout& to : {Layout{1, 0, 1}, Layout{5, 3, 1}}) {
      DS_EXPECT_OK(LoadAndCompare(&env, r.path, want, to));
    }
    DS_ASSERT_OK_AND_ASSIGN(auto reader, CheckpointReader::Open(&env, r.path));
    EXPECT_EQ(reader->manifest().info.world_size, world);
    EXPECT_EQ(reader->manifest().info.zero_stage, stage);
    EXPECT_GE(reader->manifest().FindTensor("master/empty"), 0);
    DS_ASSERT_OK_AND_ASSIGN(std::string step, reader->ReadBlob("step"));
    EXPECT_EQ(step, "0");
    DS_ASSERT_OK_AND_ASSIGN(std::string imported, reader->ReadBlob("import"));
    EXPECT_EQ(imported, R"({"file":"in.safetensors","metadata":{"format":"pt","who":"test"}})");
  }
}

// import -> export gives the file back: fp32 as is; bf16 through fp32 masters and back.
TEST_F(ImportTest, ExportAfterImportReproducesTheFile) {
  io::MemEnv env;
  DS_ASSERT_OK(WriteSafetensorsFile(&env, "/in.safetensors", file_));
  ImportOptions opts = ImportOpts(3, 2);
  opts.step = 1234;
  DS_ASSERT_OK_AND_ASSIGN(ImportReport r, ImportSafetensors(&env, "/in.safetensors", "/c", opts));
  EXPECT_EQ(r.tag, "step-00001234");
  ExportOptions o = Options();
  o.with_optimizer = true;
  DS_ASSERT_OK(ExportSafetensors(&env, r.path, "/out.safetensors", o).status());
  DS_ASSERT_OK_AND_ASSIGN(auto in, ReadSafetensorsFile(&env, "/in.safetensors"));
  DS_ASSERT_OK_AND_ASSIGN(auto out, ReadSafetensorsFile(&env, "/out.safetensors"));
  ASSERT_EQ(out.size(), in.size());
  for (const auto& [name, t] : in) {
    ASSERT_TRUE(out.count(name)) << name;
    EXPECT_EQ(out[name].dtype, t.dtype) << name;
    EXPECT_EQ(out[name].shape, t.shape) << name;
    EXPECT_TRUE(out[name].data == t.data) << name;
  }

  // Every bit pattern but NaNs (whose payloads need not survive), infinities and subnormals
  // included.
  std::vector<TestTensor> halves = {
      WithoutNaNs(testing::MakeTensor("a", fmt::DType::kBF16, {33, 65}, 1)),
      WithoutNaNs(testing::MakeTensor("b", fmt::DType::kF16, {1000}, 2))};
  DS_ASSERT_OK(WriteSafetensorsFile(&env, "/half.safetensors", halves));
  DS_ASSERT_OK(ImportSafetensors(&env, "/half.safetensors", "/h", ImportOpts(2, 3)).status());
  DS_ASSERT_OK(LoadAndCompare(&env, "/h/step-00000000", Imported(halves), {1, 0, 1}));
  DS_ASSERT_OK(ExportSafetensors(&env, "/h/step-00000000", "/half-out.safetensors",
                                 Options(fmt::DType::kBF16))
                   .status());
  DS_ASSERT_OK_AND_ASSIGN(auto back, ReadSafetensorsFile(&env, "/half-out.safetensors"));
  EXPECT_TRUE(CanonicalNaNs(fmt::DType::kBF16, back["a"].data) ==
              CanonicalNaNs(fmt::DType::kBF16, halves[0].data))
      << "bf16 -> fp32 -> bf16 must give the same bits";
}

TEST_F(ImportTest, BadInputIsRefusedAndLeavesNothingBehind) {
  io::MemEnv env;
  DS_ASSERT_OK(WriteSafetensorsFile(&env, "/in.safetensors", file_));
  EXPECT_THAT(ImportSafetensors(&env, "/nope.safetensors", "/c", ImportOpts(1, 0)),
              StatusIs(StatusCode::kNotFound, HasSubstr("/nope.safetensors")));
  EXPECT_THAT(ImportSafetensors(&env, "/in.safetensors", "/c", ImportOpts(2, 4)),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("stage")));
  EXPECT_THAT(ImportSafetensors(&env, "/in.safetensors", "/c", ImportOpts(1000, 1)),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("world size 1000 is more than 256; import at a smaller world "
                                 "size (any world size loads any checkpoint)")));
  DS_ASSERT_OK(WriteSafetensorsFile(&env, "/none.safetensors", {}));
  EXPECT_THAT(
      ImportSafetensors(&env, "/none.safetensors", "/c", ImportOpts(1, 0)),
      StatusIs(StatusCode::kInvalidArgument,
               HasSubstr("/none.safetensors holds no tensors; there is nothing to import")));
  DS_ASSERT_OK(ImportSafetensors(&env, "/in.safetensors", "/c", ImportOpts(1, 0)).status());
  EXPECT_THAT(ImportSafetensors(&env, "/in.safetensors", "/c", ImportOpts(2, 0)),
              StatusIs(StatusCode::kFailedPrecondition,
                       HasSubstr("/c/step-00000000 already exists (a checkpoint is never "
                                 "replaced); choose another --tag or --step, or another --out")));

  // A file truncated after its header was read: the ranks' reads fail, the save is abandoned.
  DS_ASSERT_OK_AND_ASSIGN(std::string bytes, env.ReadFileToString("/in.safetensors"));
  DS_ASSERT_OK(env.WriteFileSynced("/cut.safetensors", bytes));
  io::FaultEnv faults(&env);
  faults.AddRule({io::kFaultRead, "/cut.safetensors", 2, -1, io::FaultKind::kIOError});
  EXPECT_THAT(ImportSafetensors(&faults, "/cut.safetensors", "/d", ImportOpts(3, 2)),
              StatusIs(StatusCode::kIOError, HasSubstr("cut.safetensors")));
  DS_ASSERT_OK_AND_ASSIGN(auto left, env.ListDir("/d"));
  for (const std::string& n : left) EXPECT_NE(n.rfind(".tmp-", 0), 0u) << n << " left behind";
  DS_ASSERT_OK_AND_ASSIGN(auto latest, Catalog(&env, "/d").ReadLatest());
  EXPECT_FALSE(latest.has_value());

  env.SetCapacity(env.UsedBytes() + 5000);
  EXPECT_THAT(ImportSafetensors(&env, "/in.safetensors", "/e", ImportOpts(1, 0)),
              StatusIs(StatusCode::kNoSpace, HasSubstr("importing /in.safetensors needs")));
}

}  // namespace
}  // namespace ds::ckpt
