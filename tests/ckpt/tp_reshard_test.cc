// Resharding tensor-parallel checkpoints with fused tensors: a GPT block saved the way a
// Megatron-style TP run saves it (q, k, v rows of its heads on each TP rank: three boxes per
// rank), with and without the `layout/tp_splits` blob, from pipeline stages, and from TP 1.
// Targets are what LayoutSlices and an independent reference here say, tensors read whole are
// unchanged, and round trips are bit-exact.
#include "ckpt/diff.h"
#include "ckpt/export.h"
#include "ckpt/reshard.h"
#include "ckpt/save_util.h"
#include "ckpt/tensor_files.h"
#include "ckpt/tp_layout.h"
#include "ckpt/verify.h"
#include "io/mem_env.h"
#include "testing/matchers.h"

namespace ds::ckpt {
namespace {

using ::ds::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

struct TpState {
  std::vector<testing::TestTensor> tensors;
  TpSplits splits;  // of the tensors that split
};

// One GPT block (C = 32) of a TP run: c_attn (3C, C) and its bias (3C) hold q, k, v stacked
// along dim 0 (column-parallel, 3 parts), c_proj (C, C) is row-parallel (split along dim 1),
// ln_1 (C) is replicated. fp32 master weights and Adam moments, bf16 model weights of c_attn.
TpState GptBlock(int block, uint64_t seed) {
  const std::string h = "h." + std::to_string(block) + ".";
  TpState s;
  for (std::string group : {"master/", "optim/exp_avg/"}) {
    s.tensors.push_back(
        testing::MakeTensor(group + h + "attn.c_attn.weight", fmt::DType::kF32, {96, 32}, seed++));
    s.tensors.push_back(
        testing::MakeTensor(group + h + "attn.c_attn.bias", fmt::DType::kF32, {96}, seed++));
    s.tensors.push_back(
        testing::MakeTensor(group + h + "attn.c_proj.weight", fmt::DType::kF32, {32, 32}, seed++));
    s.tensors.push_back(
        testing::MakeTensor(group + h + "ln_1.weight", fmt::DType::kF32, {32}, seed++));
    s.splits[group + h + "attn.c_attn.weight"] = {0, 3};
    s.splits[group + h + "attn.c_attn.bias"] = {0, 3};
    s.splits[group + h + "attn.c_proj.weight"] = {1, 1};
  }
  s.tensors.push_back(
      testing::MakeTensor("model/" + h + "attn.c_attn.weight", fmt::DType::kBF16, {96, 32}, seed));
  s.splits["model/" + h + "attn.c_attn.weight"] = {0, 3};
  return s;
}

// The state of all pipeline stages together, in stage order.
TpState Merge(const std::vector<TpState>& stages) {
  TpState all;
  for (const TpState& st : stages) {
    all.tensors.insert(all.tensors.end(), st.tensors.begin(), st.tensors.end());
    all.splits.insert(st.splits.begin(), st.splits.end());
  }
  return all;
}

// The slices `rank` of (world, stage, tp) owns, written out here independently of
// ckpt/tp_layout.cc: the local tensor of a fused tensor is TP rank r's rows of each part,
// concatenated; of a row-parallel one, its column block; each partition group's local tensors
// are partitioned over the data-parallel ranks; replicated tensors are saved by TP rank 0.
std::vector<WantedSlice> ReferenceSlices(const TpState& s, Layout l, uint32_t rank) {
  const uint32_t dp = l.world / l.tp, dp_rank = rank / l.tp, tp_rank = rank % l.tp;
  std::vector<std::string> groups;
  for (const auto& t : s.tensors) {
    const std::string g(PartitionGroup(t.name));
    if (std::find(groups.begin(), groups.end(), g) == groups.end()) groups.push_back(g);
  }
  std::vector<WantedSlice> out;
  for (const std::string& g : groups) {
    std::vector<const testing::TestTensor*> members;
    std::vector<uint64_t> numels;
    for (const auto& t : s.tensors) {
      if (PartitionGroup(t.name) != g) continue;
      members.push_back(&t);
      numels.push_back(*fmt::NumElements(t.shape) / (s.splits.count(t.name) ? l.tp : 1));
    }
    const auto ranges = PartitionForRank(numels, {dp, l.stage, 1}, dp_rank);
    for (const FlatRange& r : *ranges) {
      const testing::TestTensor& t = *members[r.tensor];
      auto it = s.splits.find(t.name);
      if (it == s.splits.end()) {
        if (tp_rank == 0) {
          out.push_back({t.name, std::vector<int64_t>(t.shape.size(), 0), t.shape, r.begin, r.end});
        }
        continue;
      }
      const int d = it->second.dim;
      const uint32_t parts = l.tp == 1 ? 1 : it->second.parts;  // TP 1: one box, the tensor
      std::vector<int64_t> off(t.shape.size(), 0), len = t.shape;
      len[d] = t.shape[d] / parts / l.tp;
      const uint64_t box = *fmt::NumElements(len);
      for (uint32_t k = 0; k < parts; ++k) {  // part k: local elements [k * box, (k+1) * box)
        off[d] = k * (t.shape[d] / parts) + tp_rank * len[d];
        const uint64_t b = std::max<uint64_t>(r.begin, k * box);
        const uint64_t e = std::min<uint64_t>(r.end, (k + 1) * box);
        if (b < e) out.push_back({t.name, off, len, b - k * box, e - k * box});
      }
    }
  }
  return out;
}

std::vector<std::vector<WantedSlice>> ReferenceLayout(const TpState& s, Layout l) {
  std::vector<std::vector<WantedSlice>> out;
  for (uint32_t r = 0; r < l.world; ++r) out.push_back(ReferenceSlices(s, l, r));
  return out;
}

std::vector<std::string> Describe(const std::vector<std::vector<WantedSlice>>& layout) {
  std::vector<std::string> out;
  for (const auto& rank : layout) out.push_back(DescribeSlices(rank));
  return out;
}

std::vector<std::pair<std::string, std::string>> SplitsBlob(const TpState& s, bool with_blob) {
  if (!with_blob) return {};
  return {{kTpSplitsBlob, EncodeTpSplits(s.splits)}};
}

// Saves `s` at `l` (pipeline stage p of `stages` saving the tensors of `stages[p]`), as step 1
// into `dir`; returns the checkpoint's path.
std::string SaveTp(io::Env* env, const std::vector<TpState>& stages, Layout l, bool with_blob,
                   const std::string& dir) {
  const TpState all = Merge(stages);
  std::vector<std::vector<WantedSlice>> slices;
  for (const TpState& st : stages) {
    const Layout stage{l.world / static_cast<uint32_t>(stages.size()), l.stage, l.tp};
    for (auto& r : ReferenceLayout(st, stage)) slices.push_back(std::move(r));
  }
  SaveRequest req;
  req.step = 1;
  req.zero_stage = l.stage;
  req.tp_degree = l.tp;
  req.pp_degree = static_cast<uint32_t>(stages.size());
  InProcessStore store;
  SaveOutcome out = SaveRanks(env, all.tensors, slices, req, TestWriterOptions(dir), &store,
                              SplitsBlob(all, with_blob));
  for (const Status& st : out.status) EXPECT_TRUE(st.ok()) << st.ToString();
  return dir + "/step-00000001";
}

ReshardOptions To(Layout l, std::string out) {
  ReshardOptions o;
  o.layout = {l.world, l.stage, l.tp, 1};
  o.out = std::move(out);
  o.memory_bytes = 1 << 20;
  o.chunk_bytes = 4096;
  o.io_backend = "pwrite";
  o.threads = 2;
  return o;
}

// Every tensor of the checkpoint at `dir`, read whole.
std::map<std::string, std::vector<std::byte>> ReadWhole(io::Env* env, const std::string& dir) {
  auto reader = CheckpointReader::Open(env, dir);
  EXPECT_TRUE(reader.ok()) << reader.status().ToString();
  std::map<std::string, std::vector<std::byte>> out;
  for (const fmt::TensorMeta& t : (*reader)->manifest().tensors) {
    const uint64_t n = *fmt::NumElements(t.shape);
    std::vector<std::byte>& buf = out[t.name];
    buf.resize(n * fmt::DTypeSize(t.dtype));
    ReadRequest q{{t.name, {}, {}, 0, n}, buf, nullptr};
    EXPECT_TRUE((*reader)->Read({&q, 1}).ok()) << t.name;
  }
  return out;
}

// Reshards `src` to `l` and checks the result: its slices are LayoutSlices's and the
// reference's, hold the right bytes, and every tensor read whole equals the source's.
std::string ReshardAndCheck(io::Env* env, const std::string& src, const TpState& all, Layout l,
                            const std::string& out) {
  DS_EXPECT_OK(VerifyCheckpoint(env, src).status());
  auto r = Reshard(env, src, To(l, out));
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  if (!r.ok()) return "";
  EXPECT_EQ(r->source_chunks_read, r->source_chunks) << "each source chunk once";
  auto source = CheckpointReader::Open(env, src);
  auto target = CheckpointReader::Open(env, r->path);
  auto planned = LayoutSlices((*source)->manifest(), {l.world, l.stage, l.tp, 1});
  EXPECT_TRUE(planned.ok()) << planned.status().ToString();
  const std::string what = out + " (world " + std::to_string(l.world) + ", stage " +
                           std::to_string(l.stage) + ", TP " + std::to_string(l.tp) + ")";
  EXPECT_EQ(Describe(SlicesByRank((*target)->manifest())), Describe(*planned)) << what;
  EXPECT_EQ(Describe(*planned), Describe(ReferenceLayout(all, l))) << what;
  DS_EXPECT_OK(LoadSlicesAndCompare(env, r->path, all.tensors, *planned)) << what;
  const fmt::ManifestInfo& info = (*target)->manifest().info;
  EXPECT_EQ(info.tp_degree, l.tp);
  EXPECT_EQ(info.pp_degree, 1u);
  const auto whole = ReadWhole(env, r->path);
  EXPECT_EQ(whole, ReadWhole(env, src)) << what;
  for (const auto& t : all.tensors) EXPECT_EQ(whole.at(t.name), t.data) << what << " " << t.name;
  return r->path;
}

std::string SplitsBlobOf(io::Env* env, const std::string& dir) {
  auto reader = CheckpointReader::Open(env, dir);
  auto blob = (*reader)->ReadBlob(kTpSplitsBlob);
  return blob.ok() ? *blob : "(none)";
}

TEST(TpReshardTest, FusedTensorsReshardWithAndWithoutTheBlob) {
  const TpState block = GptBlock(0, 10);
  const Layout source{4, 1, 2};  // TP 2 x DP 2
  for (bool with_blob : {true, false}) {
    SCOPED_TRACE(with_blob ? "with the blob" : "without the blob");
    io::MemEnv env;
    const std::string src = SaveTp(&env, {block}, source, with_blob, "/c");
    // LayoutSlices says what the TP run saved.
    DS_ASSERT_OK_AND_ASSIGN(auto reader, CheckpointReader::Open(&env, src));
    DS_ASSERT_OK_AND_ASSIGN(auto again, LayoutSlices(reader->manifest(), {4, 1, 2, 1}));
    EXPECT_EQ(Describe(again), Describe(SlicesByRank(reader->manifest())));
    int n = 0;
    for (Layout l : {Layout{2, 2, 1}, Layout{4, 1, 4}, Layout{3, 3, 1}, Layout{8, 2, 4}}) {
      const std::string out = "/c/t" + std::to_string(n++);
      const std::string there = ReshardAndCheck(&env, src, block, l, out);
      ASSERT_FALSE(there.empty());
      // The splits travel: copied, or inferred from the source's boxes.
      EXPECT_EQ(SplitsBlobOf(&env, there), EncodeTpSplits(block.splits));
      // And back to TP 2 x DP 2: the same slices, the same bytes.
      const std::string home = ReshardAndCheck(&env, there, block, source, out + "-back");
      DS_ASSERT_OK_AND_ASSIGN(auto back, CheckpointReader::Open(&env, home));
      EXPECT_EQ(Describe(SlicesByRank(back->manifest())),
                Describe(SlicesByRank(reader->manifest())));
      DS_EXPECT_OK(
          LoadSlicesAndCompare(&env, home, block.tensors, SlicesByRank(reader->manifest())));
    }
  }
}

TEST(TpReshardTest, ATpOneCheckpointWithTheBlobReshardsToTp) {
  const TpState block = GptBlock(0, 20);
  io::MemEnv env;
  const std::string src = SaveTp(&env, {block}, {2, 2, 1}, true, "/c");
  ReshardAndCheck(&env, src, block, {4, 1, 2}, "/c/tp2");
  ReshardAndCheck(&env, src, block, {8, 3, 4}, "/c/tp4");
  // Without the blob, nothing says how to cut.
  const std::string bare = SaveTp(&env, {block}, {2, 2, 1}, false, "/d");
  EXPECT_THAT(Reshard(&env, bare, To({4, 1, 2}, "/d/tp2")),
              StatusIs(StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("saved without tensor parallelism"),
                             HasSubstr("no 'layout/tp_splits' blob"),
                             HasSubstr("every checkpoint dstrain saves from now on carries it"))));
  // ... and a TP-1 target gets no made-up blob (an empty one would say nothing splits).
  const std::string w3 = ReshardAndCheck(&env, bare, block, {3, 1, 1}, "/d/w3");
  EXPECT_EQ(SplitsBlobOf(&env, w3), "(none)");
}

TEST(TpReshardTest, PipelineStagesReshardToOneStage) {
  // PP 2 x DP 2 x TP 2: ranks 0-3 hold block 0, ranks 4-7 block 1, each stage its own ZeRO
  // partition.
  const std::vector<TpState> stages = {GptBlock(0, 30), GptBlock(1, 40)};
  const TpState all = Merge(stages);
  for (bool with_blob : {true, false}) {
    SCOPED_TRACE(with_blob ? "with the blob" : "without the blob");
    io::MemEnv env;
    const std::string src = SaveTp(&env, stages, {8, 1, 2}, with_blob, "/c");
    DS_ASSERT_OK_AND_ASSIGN(auto reader, CheckpointReader::Open(&env, src));
    EXPECT_EQ(reader->manifest().info.pp_degree, 2u);
    const std::string one = ReshardAndCheck(&env, src, all, {2, 1, 1}, "/c/w2");
    ReshardAndCheck(&env, src, all, {4, 2, 2}, "/c/w4t2");
    ReshardAndCheck(&env, one, all, {8, 3, 4}, "/c/w8t4");
  }
}

TEST(TpReshardTest, ExportAndDiffReadFusedBoxes) {
  const TpState block = GptBlock(0, 50);
  io::MemEnv env;
  const std::string src = SaveTp(&env, {block}, {4, 1, 2}, true, "/c");
  const std::string one = ReshardAndCheck(&env, src, block, {1, 0, 1}, "/c/one");
  DS_ASSERT_OK_AND_ASSIGN(DiffReport d, DiffCheckpoints(&env, src, one, {}));
  EXPECT_TRUE(d.equal());
  EXPECT_EQ(d.tensors.size(), block.tensors.size());
  DS_ASSERT_OK_AND_ASSIGN(VerifyReport v, VerifyCheckpoint(&env, src));
  EXPECT_TRUE(v.healthy);
  ExportOptions eo;
  eo.io_backend = "pwrite";
  DS_ASSERT_OK(ExportSafetensors(&env, src, "/out.safetensors", eo).status());
  DS_ASSERT_OK_AND_ASSIGN(auto file, ReadSafetensorsFile(&env, "/out.safetensors"));
  for (const auto& t : block.tensors) {
    if (t.name.rfind("master/", 0) != 0) continue;
    EXPECT_EQ(file.at(t.name.substr(7)).data, t.data) << t.name;
  }
}

TEST(TpReshardTest, BadTpRequestsChangeNothing) {
  const TpState block = GptBlock(0, 60);
  io::MemEnv env;
  const std::string src = SaveTp(&env, {block}, {4, 1, 2}, true, "/c");
  DS_ASSERT_OK_AND_ASSIGN(auto before, env.ListDir("/c"));
  EXPECT_THAT(Reshard(&env, src, To({5, 1, 5}, "/c/tp5")),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("tensor 'master/h.0.attn.c_attn.weight': dimension 0 of size 96 "
                                 "does not split into 3 parts x 5 tensor-parallel pieces")));
  EXPECT_THAT(
      Reshard(&env, src, To({6, 1, 4}, "/c/w6")),
      StatusIs(StatusCode::kInvalidArgument, HasSubstr("does not divide the world size 6")));
  // A splits blob that does not fit its tensor (a writer's bug) is named, and nothing is written,
  // even for a target without tensor parallelism.
  InProcessStore store;
  SaveRequest req;
  req.step = 1;
  req.tp_degree = 2;
  std::vector<std::vector<WantedSlice>> slices = ReferenceLayout(block, {4, 0, 2});
  ASSERT_TRUE(SaveRanks(&env, block.tensors, slices, req, TestWriterOptions("/d"), &store,
                        {{kTpSplitsBlob, R"({"master/h.0.ln_1.weight": {"dim": 3}})"}})
                  .status[0]
                  .ok());
  EXPECT_THAT(
      Reshard(&env, "/d/step-00000001", To({2, 1, 1}, "/d/w2")),
      StatusIs(StatusCode::kInvalidArgument,
               AllOf(HasSubstr("blob 'layout/tp_splits'"),
                     HasSubstr("'master/h.0.ln_1.weight' of shape [32] has no dimension 3"))));
  DS_ASSERT_OK_AND_ASSIGN(auto after, env.ListDir("/c"));
  EXPECT_EQ(after, before);
  DS_ASSERT_OK_AND_ASSIGN(bool w2, env.Exists("/d/w2"));
  EXPECT_FALSE(w2);
}

}  // namespace
}  // namespace ds::ckpt
