// Tensor-parallel layouts: the boxes of fused (q,k,v), row-parallel and replicated tensors, the
// local tensor's elements mapped onto them, every element held by exactly one TP rank, the
// splits blob, and splits inferred from a checkpoint's boxes.
#include "ckpt/tp_layout.h"

#include "testing/matchers.h"

namespace ds::ckpt {
namespace {

using ::ds::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string Describe(const std::vector<TpBox>& boxes) {
  std::string s;
  for (const TpBox& b : boxes) {
    s += "[";
    for (size_t d = 0; d < b.offset.size(); ++d) {
      s += (d ? "," : "") + std::to_string(b.offset[d]) + "+" + std::to_string(b.length[d]);
    }
    s += "]@" + std::to_string(b.local_begin) + "#" + std::to_string(b.numel) + " ";
  }
  return s;
}

TEST(TpLayoutTest, FusedQkvRowsAreThreeBoxesPerRank) {
  // (3C, C) with C = 32: q, k, v of 32 rows each; TP 2 holds 16 rows of each.
  const std::vector<int64_t> shape = {96, 32};
  const TpSplit qkv{0, 3};
  DS_ASSERT_OK(ValidateTpSplit("c_attn.weight", shape, qkv, 2));
  EXPECT_THAT(TpLocalShape(shape, qkv, 2), ElementsAre(48, 32));
  EXPECT_EQ(Describe(TpBoxes(shape, qkv, 2, 0)),
            "[0+16,0+32]@0#512 [32+16,0+32]@512#512 [64+16,0+32]@1024#512 ");
  EXPECT_EQ(Describe(TpBoxes(shape, qkv, 2, 1)),
            "[16+16,0+32]@0#512 [48+16,0+32]@512#512 [80+16,0+32]@1024#512 ");
  // The bias (3C): the same cut in one dimension.
  EXPECT_EQ(Describe(TpBoxes(std::vector<int64_t>{96}, qkv, 2, 1)),
            "[16+16]@0#16 [48+16]@16#16 [80+16]@32#16 ");
}

TEST(TpLayoutTest, ColumnSplitIsOneBox) {
  const std::vector<int64_t> shape = {32, 32};
  const TpSplit cols{1, 1};
  EXPECT_THAT(TpLocalShape(shape, cols, 4), ElementsAre(32, 8));
  EXPECT_EQ(Describe(TpBoxes(shape, cols, 4, 0)), "[0+32,0+8]@0#256 ");
  EXPECT_EQ(Describe(TpBoxes(shape, cols, 4, 3)), "[0+32,24+8]@0#256 ");
}

TEST(TpLayoutTest, ReplicatedAndTpOneAreTheWholeTensor) {
  const std::vector<int64_t> ln = {32}, qkv = {96, 32};
  EXPECT_EQ(Describe(TpBoxes(ln, TpSplit{}, 4, 3)), "[0+32]@0#32 ");
  EXPECT_THAT(TpLocalShape(ln, TpSplit{}, 4), ElementsAre(32));
  EXPECT_EQ(Describe(TpBoxes(qkv, TpSplit{0, 3}, 1, 0)), "[0+96,0+32]@0#3072 ");
  EXPECT_EQ(Describe(TpBoxes(std::vector<int64_t>{}, TpSplit{}, 2, 1)), "[]@0#1 ");  // a scalar
}

TEST(TpLayoutTest, LocalRangesCrossBoxBoundaries) {
  const auto boxes = TpBoxes(std::vector<int64_t>{96, 32}, TpSplit{0, 3}, 2, 1);  // 3 x 512
  EXPECT_THAT(TpLocalRange(boxes, 500, 1100),
              ElementsAre(TpBoxRange{0, 500, 512, 500}, TpBoxRange{1, 0, 512, 512},
                          TpBoxRange{2, 0, 76, 1024}));
  EXPECT_THAT(TpLocalRange(boxes, 512, 1024), ElementsAre(TpBoxRange{1, 0, 512, 512}));
  EXPECT_THAT(TpLocalRange(boxes, 1535, 1536), ElementsAre(TpBoxRange{2, 511, 512, 1535}));
  EXPECT_TRUE(TpLocalRange(boxes, 700, 700).empty());
}

// The global flat index of every local element of `tp_rank`, by the plain rule (local row i of a
// fused tensor is row i % piece of part i / piece's piece tp_rank), not through TpBoxes.
std::vector<uint64_t> ReferenceLocalToGlobal(const std::vector<int64_t>& shape, TpSplit s,
                                             uint32_t tp, uint32_t tp_rank) {
  const uint64_t numel = *fmt::NumElements(shape);
  std::vector<uint64_t> out;
  if (s.dim < 0) {
    for (uint64_t i = 0; i < numel; ++i) out.push_back(i);
    return out;
  }
  const std::vector<int64_t> local = TpLocalShape(shape, s, tp);
  const uint64_t inner = numel / static_cast<uint64_t>(shape[0]);  // elements of one row
  if (s.dim == 0) {
    const uint64_t piece = static_cast<uint64_t>(shape[0]) / s.parts / tp;
    for (uint64_t row = 0; row < static_cast<uint64_t>(local[0]); ++row) {
      const uint64_t g = (row / piece) * piece * tp + tp_rank * piece + row % piece;
      for (uint64_t e = 0; e < inner; ++e) out.push_back(g * inner + e);
    }
    return out;
  }
  // Dimension 1 of a 2-D tensor: columns [tp_rank * w, (tp_rank + 1) * w) of every row.
  const auto w = static_cast<uint64_t>(local[1]), cols = static_cast<uint64_t>(shape[1]);
  for (uint64_t row = 0; row < static_cast<uint64_t>(shape[0]); ++row) {
    for (uint64_t c = 0; c < w; ++c) out.push_back(row * cols + tp_rank * w + c);
  }
  return out;
}

TEST(TpLayoutTest, EveryElementIsHeldOnceAndInTheReferenceOrder) {
  struct Case {
    std::vector<int64_t> shape;
    TpSplit split;
  };
  int checked = 0;
  for (const Case& c : {Case{{96, 32}, {0, 3}}, Case{{96}, {0, 3}}, Case{{32, 32}, {1, 1}},
                        Case{{24, 5}, {0, 1}}, Case{{32}, {}}, Case{{12, 2, 3}, {0, 2}}}) {
    for (uint32_t tp : {1u, 2u, 4u}) {
      if (!ValidateTpSplit("t", c.shape, c.split, tp).ok()) continue;
      const uint64_t numel = *fmt::NumElements(c.shape);
      std::vector<int> held(numel, 0);
      const uint32_t holders = c.split.dim < 0 ? 1 : tp;  // a replicated tensor: TP rank 0's
      for (uint32_t r = 0; r < holders; ++r) {
        const std::vector<TpBox> boxes = TpBoxes(c.shape, c.split, tp, r);
        const std::vector<uint64_t> want = ReferenceLocalToGlobal(c.shape, c.split, tp, r);
        ASSERT_EQ(want.size(), *fmt::NumElements(TpLocalShape(c.shape, c.split, tp)));
        // Local element i, through its box, is global element want[i].
        for (const TpBoxRange& br : TpLocalRange(boxes, 0, want.size())) {
          const TpBox& b = boxes[br.box];
          for (uint64_t f = br.flat_begin; f < br.flat_end; ++f) {
            uint64_t rem = f, global = 0, stride = 1;
            for (size_t d = c.shape.size(); d-- > 0;) {
              const auto len = static_cast<uint64_t>(b.length[d]);
              global += (rem % len + static_cast<uint64_t>(b.offset[d])) * stride;
              rem /= len;
              stride *= static_cast<uint64_t>(c.shape[d]);
            }
            const uint64_t local = br.local_offset + f - br.flat_begin;
            ASSERT_EQ(global, want[local]) << "tp " << tp << " rank " << r << " local " << local;
            held[global]++;
          }
        }
      }
      for (uint64_t e = 0; e < numel; ++e) ASSERT_EQ(held[e], 1) << "element " << e;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 17);
}

TEST(TpLayoutTest, BadSplitsAreRefusedNamingTheTensor) {
  const std::vector<int64_t> qkv = {90, 32}, proj = {32, 30};
  EXPECT_THAT(ValidateTpSplit("h.0.attn.c_attn.weight", qkv, {0, 3}, 4),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("tensor 'h.0.attn.c_attn.weight': dimension 0 of size 90 does not "
                                 "split into 3 parts x 4 tensor-parallel pieces")));
  EXPECT_THAT(ValidateTpSplit("proj", proj, {1, 1}, 4),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("dimension 1 of size 30 does not split into 4 tensor-parallel "
                                 "pieces")));
  EXPECT_THAT(ValidateTpSplit("proj", proj, {2, 1}, 2),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("'proj' of shape [32, 30] has no dimension 2 to split along")));
  EXPECT_THAT(ValidateTpSplit("proj", proj, {1, 2}, 2),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("fused parts (2) are only supported along dimension 0")));
  EXPECT_THAT(ValidateTpSplit("proj", proj, {0, 0}, 2),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("at least 1 part")));
  EXPECT_THAT(ValidateTpSplit("proj", proj, {0, 1}, 0),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("degree must be at least 1")));
  DS_EXPECT_OK(ValidateTpSplit("proj", proj, {}, 7));  // not split: any degree
}

TEST(TpLayoutTest, TheBlobRoundTripsAndBadBlobsAreCorruption) {
  const TpSplits splits = {{"master/c_attn.weight", {0, 3}}, {"master/c_proj.weight", {1, 1}}};
  const std::string json = EncodeTpSplits(splits);
  EXPECT_EQ(
      json,
      R"({"master/c_attn.weight":{"dim":0,"parts":3},"master/c_proj.weight":{"dim":1,"parts":1}})");
  DS_ASSERT_OK_AND_ASSIGN(TpSplits back, DecodeTpSplits(json));
  EXPECT_EQ(back, splits);
  DS_ASSERT_OK_AND_ASSIGN(TpSplits lenient, DecodeTpSplits(R"({"a":{"dim":1}})"));
  EXPECT_EQ(lenient.at("a"), (TpSplit{1, 1}));
  EXPECT_THAT(
      DecodeTpSplits("[1,2]"),
      StatusIs(StatusCode::kCorruption, HasSubstr("'layout/tp_splits' is not a JSON object")));
  EXPECT_THAT(DecodeTpSplits(R"({"a":{"dim":0,"parts":0}})"),
              StatusIs(StatusCode::kCorruption, HasSubstr("the entry of tensor 'a'")));
  EXPECT_THAT(DecodeTpSplits(R"({"a":{"parts":2}})"),
              StatusIs(StatusCode::kCorruption, HasSubstr("the entry of tensor 'a'")));
}

// ---- splits of a checkpoint, from its boxes (no data needed: ReadTpSplits reads the manifest)

// A manifest at `tp` whose tensor "w" (96, 32) has one slice per box (offset, rows) along dim 0.
fmt::Manifest BoxesManifest(uint32_t tp, const std::vector<std::pair<int64_t, int64_t>>& rows) {
  fmt::Manifest m;
  m.info.tag = "step-00000001";
  m.info.tp_degree = tp;
  m.tensors = {{"w", fmt::DType::kF32, {96, 32}}, {"ln", fmt::DType::kF32, {32}}};
  for (const auto& [off, len] : rows) {
    m.slices.push_back({0, 0, {off, 0}, {len, 32}, 0, static_cast<uint64_t>(len) * 32, 0, 0});
  }
  m.slices.push_back({1, 0, {0}, {32}, 0, 32, 0, 0});
  return m;
}

TEST(TpLayoutTest, SplitsAreInferredFromTheBoxesWithoutTheBlob) {
  // TP 2, six boxes of 16 rows: fused, 3 parts.
  DS_ASSERT_OK_AND_ASSIGN(
      TpSplits fused,
      ReadTpSplits(BoxesManifest(2, {{0, 16}, {16, 16}, {32, 16}, {48, 16}, {64, 16}, {80, 16}})));
  EXPECT_EQ(fused, (TpSplits{{"w", {0, 3}}}));
  DS_ASSERT_OK_AND_ASSIGN(TpSplits rows, ReadTpSplits(BoxesManifest(2, {{0, 48}, {48, 48}})));
  EXPECT_EQ(rows, (TpSplits{{"w", {0, 1}}}));
  EXPECT_THAT(ReadTpSplits(BoxesManifest(2, {{0, 32}, {32, 64}})),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("tensor 'w' is cut into boxes of different lengths (32 and 64)")));
  EXPECT_THAT(ReadTpSplits(BoxesManifest(2, {{0, 32}, {32, 32}, {64, 32}})),
              StatusIs(StatusCode::kInvalidArgument,
                       HasSubstr("tensor 'w' is cut into 3 boxes along dimension 0, not a "
                                 "multiple of the checkpoint's tensor-parallel degree 2")));
}

TEST(TpLayoutTest, TheBlobWinsOverTheBoxesAndIsChecked) {
  fmt::Manifest m = BoxesManifest(2, {{0, 48}, {48, 48}});
  m.blobs.push_back({kTpSplitsBlob, R"({"w":{"dim":0,"parts":3},"gone":{"dim":0,"parts":1},)"
                                    R"("ln":{"dim":-1,"parts":1}})"});
  DS_ASSERT_OK_AND_ASSIGN(TpSplits splits, ReadTpSplits(m));
  EXPECT_EQ(splits, (TpSplits{{"w", {0, 3}}}));  // "gone" is not in the checkpoint
  m.blobs[0].data = R"({"ln":{"dim":0,"parts":5}})";
  EXPECT_THAT(ReadTpSplits(m),
              StatusIs(StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("checkpoint step-00000001: blob 'layout/tp_splits'"),
                             HasSubstr("tensor 'ln': dimension 0 of size 32 does not split into 5 "
                                       "parts x 2 tensor-parallel pieces"))));
  m.blobs[0].data = "not json";
  EXPECT_THAT(ReadTpSplits(m),
              StatusIs(StatusCode::kCorruption,
                       HasSubstr("checkpoint step-00000001: blob 'layout/tp_splits'")));
}

}  // namespace
}  // namespace ds::ckpt
