// The plan that saving and loading both read (engine/train/state_plan.h), without LibTorch:
// every element of every whole tensor is saved by exactly one rank, and every slice maps a
// rank's buffer element to the whole tensor's element it really is, at every ZeRO stage, world
// size and tensor-parallel degree.
#include "engine/train/state_plan.h"

#include <gtest/gtest.h>

#include <numeric>

#include "ckpt/partition.h"

namespace ds::engine {
namespace {

int64_t Numel(const std::vector<int64_t>& shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
}

// A small model's parameters, as a GPT's are cut by tensor parallelism: a fused q,k,v weight
// (dim 0 in 3 parts), a column split, a row split (dim 1), and whole tensors.
std::vector<TensorPlace> Places(int tp, int tp_rank) {
  std::vector<TensorPlace> p = {
      {"wte", {12, 8}, {-1, 1}, true},       {"attn.qkv.weight", {24, 8}, {0, 3}, true},
      {"attn.qkv.bias", {24}, {0, 3}, true}, {"attn.proj.weight", {8, 8}, {1, 1}, true},
      {"ln.weight", {8}, {-1, 1}, true},     {"mlp.fc.weight", {16, 8}, {0, 1}, true},
  };
  for (TensorPlace& t : p) t.owned = t.split.dim >= 0 || tp_rank == 0 || tp == 1;
  return p;
}

// The whole tensor's flat index of element `i` of tensor-parallel rank `r`'s local tensor,
// computed from what the split means (not from ckpt/tp_layout): along the split dimension,
// each of `parts` blocks is cut into tp pieces and rank r holds piece r of each, in part order.
int64_t GlobalOfLocal(const TensorPlace& t, int tp, int r, int64_t i) {
  if (tp == 1 || t.split.dim < 0) return i;
  std::vector<int64_t> local = t.shape;
  const auto d = static_cast<size_t>(t.split.dim);
  local[d] /= tp;
  std::vector<int64_t> idx(local.size());
  for (size_t k = local.size(); k-- > 0;) {
    idx[k] = i % local[k];
    i /= local[k];
  }
  const int64_t piece = t.shape[d] / (t.split.parts * tp);
  const int64_t part = idx[d] / piece, within = idx[d] % piece;
  idx[d] = part * (t.shape[d] / t.split.parts) + r * piece + within;
  int64_t g = 0;
  for (size_t k = 0; k < idx.size(); ++k) g = g * t.shape[k] + idx[k];
  return g;
}

// The whole tensor's flat index of element `f` (row-major) of a slice's box.
int64_t GlobalOfSlice(const TensorPlace& t, const StateSlice& s, uint64_t f) {
  if (s.box_offset.empty()) return static_cast<int64_t>(f);
  std::vector<int64_t> idx(s.box_length.size());
  auto rest = static_cast<int64_t>(f);
  for (size_t k = idx.size(); k-- > 0;) {
    idx[k] = rest % s.box_length[k] + s.box_offset[k];
    rest /= s.box_length[k];
  }
  int64_t g = 0;
  for (size_t k = 0; k < idx.size(); ++k) g = g * t.shape[k] + idx[k];
  return g;
}

struct Rank {
  std::vector<ZeroPiece> held, saved;
  std::vector<int64_t> buffer;  // per element: tensor * 1e6 + its whole-tensor flat index
};

// Rank (dp_rank, tp_rank)'s pieces as ZeroOptimizer lays them out: stages 1-3 hold what they
// save; stage 0 holds every tensor whole and saves its partition of them.
Rank MakeRank(const std::vector<TensorPlace>& places, int tp, int tp_rank, int dp, int dp_rank,
              int stage, uint64_t alignment) {
  std::vector<uint64_t> numels;
  for (const TensorPlace& t : places)
    numels.push_back(static_cast<uint64_t>(Numel(t.shape) / (t.split.dim >= 0 ? tp : 1)));
  Rank r;
  std::vector<int64_t> whole_offset;  // stage 0: where each tensor starts in the buffer
  int64_t at = 0;
  for (uint64_t n : numels) {
    whole_offset.push_back(at);
    at += static_cast<int64_t>(n);
  }
  Result<std::vector<ckpt::FlatRange>> ranges = ckpt::PartitionForRank(
      numels,
      {static_cast<uint32_t>(dp), static_cast<uint32_t>(stage), alignment},
      static_cast<uint32_t>(dp_rank));
  EXPECT_TRUE(ranges.ok()) << ranges.status().ToString();
  int64_t offset = 0;
  for (const ckpt::FlatRange& f : *ranges) {
    ZeroPiece p{static_cast<int>(f.tensor), static_cast<int64_t>(f.begin),
                static_cast<int64_t>(f.end), 0};
    p.offset = stage == 0 ? whole_offset[f.tensor] + p.begin : offset;
    offset += p.end - p.begin;
    r.saved.push_back(p);
  }
  if (stage == 0) {
    for (size_t i = 0; i < numels.size(); ++i)
      r.held.push_back({static_cast<int>(i), 0, static_cast<int64_t>(numels[i]), whole_offset[i]});
  } else {
    r.held = r.saved;
  }
  int64_t size = 0;
  for (const ZeroPiece& p : r.held) size = std::max(size, p.offset + p.end - p.begin);
  r.buffer.assign(static_cast<size_t>(size), -1);
  for (const ZeroPiece& p : r.held) {
    const TensorPlace& t = places[static_cast<size_t>(p.tensor)];
    for (int64_t i = p.begin; i < p.end; ++i) {
      r.buffer[static_cast<size_t>(p.offset + i - p.begin)] =
          p.tensor * 1'000'000 + GlobalOfLocal(t, tp, tp_rank, i);
    }
  }
  return r;
}

TEST(StatePlanTest, EveryElementSavedOnceAndEverySliceNamesItsElements) {
  for (int tp : {1, 2}) {
    for (int dp : {1, 2, 3}) {
      for (int stage = 0; stage <= 3; ++stage) {
        for (uint64_t alignment : {uint64_t{1}, uint64_t{16}}) {
          SCOPED_TRACE("tp " + std::to_string(tp) + " dp " + std::to_string(dp) + " stage " +
                       std::to_string(stage) + " alignment " + std::to_string(alignment));
          const std::vector<TensorPlace> whole = Places(tp, 0);
          std::vector<std::vector<int>> saved_count(whole.size());
          for (size_t i = 0; i < whole.size(); ++i)
            saved_count[i].assign(static_cast<size_t>(Numel(whole[i].shape)), 0);
          for (int tp_rank = 0; tp_rank < tp; ++tp_rank) {
            const std::vector<TensorPlace> places = Places(tp, tp_rank);
            const StatePlan plan(places, tp, tp_rank);
            for (int dp_rank = 0; dp_rank < dp; ++dp_rank) {
              const Rank r = MakeRank(places, tp, tp_rank, dp, dp_rank, stage, alignment);
              // Saving: each slice's buffer elements are the whole tensor's elements it names.
              for (const StateSlice& s : plan.SaveSlices(r.saved)) {
                const TensorPlace& t = places[static_cast<size_t>(s.tensor)];
                ASSERT_TRUE(t.owned);
                for (uint64_t f = s.flat_begin; f < s.flat_end; ++f) {
                  const int64_t g = GlobalOfSlice(t, s, f);
                  const int64_t in_buffer =
                      r.buffer[static_cast<size_t>(s.buffer_offset + static_cast<int64_t>(f) -
                                                   static_cast<int64_t>(s.flat_begin))];
                  ASSERT_EQ(in_buffer, s.tensor * 1'000'000 + g) << t.name;
                  ++saved_count[static_cast<size_t>(s.tensor)][static_cast<size_t>(g)];
                }
              }
              // Loading: the slices fill every buffer element exactly once, each with its own.
              std::vector<int> filled(r.buffer.size(), 0);
              for (const StateSlice& s : plan.LoadSlices(r.held)) {
                const TensorPlace& t = places[static_cast<size_t>(s.tensor)];
                for (uint64_t f = s.flat_begin; f < s.flat_end; ++f) {
                  const auto at = static_cast<size_t>(s.buffer_offset + static_cast<int64_t>(f) -
                                                      static_cast<int64_t>(s.flat_begin));
                  ASSERT_EQ(r.buffer[at], s.tensor * 1'000'000 + GlobalOfSlice(t, s, f));
                  ++filled[at];
                }
              }
              for (size_t i = 0; i < filled.size(); ++i) {
                if (r.buffer[i] >= 0) {
                  ASSERT_EQ(filled[i], 1) << "buffer element " << i;
                }
              }
            }
          }
          for (size_t i = 0; i < whole.size(); ++i) {
            for (size_t e = 0; e < saved_count[i].size(); ++e)
              ASSERT_EQ(saved_count[i][e], 1) << whole[i].name << " element " << e;
          }
        }
      }
    }
  }
}

TEST(StatePlanTest, CopiesAnotherRankOwnsAreNotSavedButAreLoaded) {
  const std::vector<TensorPlace> places = Places(2, 1);  // whole tensors: rank 0 owns them
  const StatePlan plan(places, 2, 1);
  const Rank r = MakeRank(places, 2, 1, 1, 0, 0, 1);
  for (const StateSlice& s : plan.SaveSlices(r.saved))
    EXPECT_NE(places[static_cast<size_t>(s.tensor)].name, "wte");
  bool loads_wte = false;
  for (const StateSlice& s : plan.LoadSlices(r.held))
    loads_wte = loads_wte || places[static_cast<size_t>(s.tensor)].name == "wte";
  EXPECT_TRUE(loads_wte);
}

fmt::Manifest ManifestOf(const std::vector<TensorPlace>& places, int buffers) {
  fmt::Manifest m;
  for (const TensorPlace& t : places) {
    for (int b = 0; b < buffers; ++b) {
      fmt::TensorMeta meta;
      meta.name = kStateBufferPrefix[b] + t.name;
      meta.shape = t.shape;
      m.tensors.push_back(meta);
    }
  }
  return m;
}

TEST(StatePlanTest, CheckMatchesNamesTheMissingOrMisshapenTensor) {
  const std::vector<TensorPlace> places = Places(1, 0);
  const StatePlan plan(places, 1, 0);
  EXPECT_TRUE(plan.CheckMatches(ManifestOf(places, 3), 3, "/ck/step-1").ok());

  // Weights only: enough for --no-load-optimizer, not for a full resume.
  const fmt::Manifest weights = ManifestOf(places, 1);
  EXPECT_TRUE(plan.CheckMatches(weights, 1, "/ck/step-1").ok());
  Status s = plan.CheckMatches(weights, 3, "/ck/step-1");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("no tensor optim/exp_avg/wte"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("--no-load-optimizer"), std::string::npos) << s.message();

  fmt::Manifest other = ManifestOf(places, 3);
  other.tensors[static_cast<size_t>(other.FindTensor("master/ln.weight"))].shape = {9};
  s = plan.CheckMatches(other, 3, "/ck/step-1");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("tensor master/ln.weight is [9] there, [8] in the model"),
            std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("dsckpt inspect /ck/step-1"), std::string::npos) << s.message();
}

TEST(StatePlanTest, BufferSplitsCoverEveryBuffer) {
  const ckpt::TpSplits s = StatePlan::BufferSplits({{"attn.qkv.weight", {0, 3}}});
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s.at("master/attn.qkv.weight"), (ckpt::TpSplit{0, 3}));
  EXPECT_EQ(s.at("optim/exp_avg/attn.qkv.weight"), (ckpt::TpSplit{0, 3}));
  EXPECT_EQ(s.at("optim/exp_avg_sq/attn.qkv.weight"), (ckpt::TpSplit{0, 3}));
}

}  // namespace
}  // namespace ds::engine
