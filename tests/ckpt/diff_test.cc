// DiffCheckpoints: equal and different checkpoints, tolerances, tensors present on one side,
// dtype and shape mismatches, layout independence, small memory windows, and damage.
#include "ckpt/diff.h"

#include "ckpt/save_util.h"
#include "io/mem_env.h"
#include "testing/matchers.h"

namespace ds::ckpt {
namespace {

using ::ds::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::TestTensor;

class DiffTest : public ::testing::Test {
 protected:
  // Saves `state` at `layout` into its own save directory; returns the checkpoint's path.
  std::string Save(const std::vector<TestTensor>& state, const Layout& layout,
                   uint64_t chunk_bytes = 4096, fmt::Codec codec = fmt::Codec::kByteGroupZstd) {
    InProcessStore store;
    WriterOptions o = TestWriterOptions("/run" + std::to_string(runs_++));
    o.chunk_bytes = chunk_bytes;
    o.codec = codec;
    SaveOutcome out = SaveAll(&env_, state, layout, 5, o, &store);
    for (const Status& s : out.status) EXPECT_THAT(s, testing::IsOk());
    return out.stats[0].path;
  }
  DiffOptions Options() {
    DiffOptions o;
    o.threads = 2;
    o.io_backend = "pwrite";
    return o;
  }
  const TensorDiff& Find(const DiffReport& r, const std::string& name) {
    for (const TensorDiff& t : r.tensors) {
      if (t.name == name) return t;
    }
    ADD_FAILURE() << name << " not in the report";
    return r.tensors.front();
  }
  // `state` with element `index` of tensor `name` (fp32) set to `value`.
  static std::vector<TestTensor> With(std::vector<TestTensor> state, const std::string& name,
                                      uint64_t index, float value) {
    for (TestTensor& t : state) {
      if (t.name == name) std::memcpy(t.data.data() + 4 * index, &value, 4);
    }
    return state;
  }
  static float At(const std::vector<TestTensor>& state, const std::string& name, uint64_t i) {
    float f = 0;
    for (const TestTensor& t : state) {
      if (t.name == name) std::memcpy(&f, t.data.data() + 4 * i, 4);
    }
    return f;
  }

  io::MemEnv env_;
  int runs_ = 0;
  std::vector<TestTensor> state_ = {
      testing::MakeTensor("master/wte", fmt::DType::kF32, {64, 48}, 1),
      testing::MakeTensor("master/ln.weight", fmt::DType::kF32, {48}, 2),
      testing::MakeTensor("model/wte", fmt::DType::kBF16, {64, 48}, 3),
      testing::MakeTensor("optim/step", fmt::DType::kI64, {3}, 4),
      testing::MakeTensor("mask", fmt::DType::kBool, {5}, 5)};
};

TEST_F(DiffTest, IdenticalCheckpointsAreEqual) {
  const std::string a = Save(state_, {2, 1, 1}), b = Save(state_, {2, 1, 1});
  DS_ASSERT_OK_AND_ASSIGN(DiffReport r, DiffCheckpoints(&env_, a, b, Options()));
  EXPECT_TRUE(r.equal());
  EXPECT_EQ(r.tensors.size(), state_.size());
  EXPECT_TRUE(r.blobs.empty());
  EXPECT_EQ(r.bytes_compared, (64 * 48 * 4 + 48 * 4 + 64 * 48 * 2 + 3 * 8 + 5) * 1u);
  for (const TensorDiff& t : r.tensors) {
    EXPECT_EQ(t.kind, TensorDiffKind::kEqual) << t.name;
    EXPECT_EQ(t.not_bit_exact, 0u) << t.name;
  }
}

// The same state saved at other world sizes, stages, TP boxes, chunk sizes (cutting elements)
// and codecs compares equal: tensors are compared, not files.
TEST_F(DiffTest, LayoutIndependent) {
  const std::string a = Save(state_, {1, 0, 1});
  for (auto [layout, chunk, codec] :
       {std::tuple<Layout, uint64_t, fmt::Codec>{{3, 2, 1}, 4098, fmt::Codec::kRaw},
        {{4, 3, 1}, 8192, fmt::Codec::kZstd},
        {{4, 1, 2}, 4097, fmt::Codec::kByteGroupZstd}}) {
    SCOPED_TRACE("world " + std::to_string(layout.world) + " stage " +
                 std::to_string(layout.stage));
    const std::string b = Save(state_, layout, chunk, codec);
    DiffOptions o = Options();
    o.compare_blobs = false;  // each rank saves its own rng blob
    DS_ASSERT_OK_AND_ASSIGN(DiffReport r, DiffCheckpoints(&env_, a, b, o));
    EXPECT_TRUE(r.equal());
    DS_ASSERT_OK_AND_ASSIGN(DiffReport with_blobs, DiffCheckpoints(&env_, a, b, Options()));
    EXPECT_FALSE(with_blobs.equal());
    ASSERT_FALSE(with_blobs.blobs.empty());
    EXPECT_EQ(with_blobs.blobs[0].name, "rng/rank-1");
    EXPECT_EQ(with_blobs.blobs[0].kind, BlobDiffKind::kOnlyInB);
  }
}

TEST_F(DiffTest, OneElementChangedIsFoundWithItsDifference) {
  const uint64_t index = 7 * 48 + 5;
  const float old_value = At(state_, "master/wte", index);
  const std::string a = Save(state_, {2, 2, 1});
  const std::string b = Save(With(state_, "master/wte", index, old_value + 0.5f), {3, 0, 1});
  DiffOptions o = Options();
  o.memory_bytes = 16 << 10;  // windows of 4 KiB: the tensor is compared in 3 pieces
  DS_ASSERT_OK_AND_ASSIGN(DiffReport r, DiffCheckpoints(&env_, a, b, o));
  EXPECT_FALSE(r.equal());
  const TensorDiff& d = Find(r, "master/wte");
  EXPECT_EQ(d.kind, TensorDiffKind::kDiffers);
  EXPECT_EQ(d.elements, 64u * 48);
  EXPECT_EQ(d.mismatched, 1u);
  EXPECT_EQ(d.first_mismatch, index);
  EXPECT_EQ(d.max_abs_index, index);
  EXPECT_DOUBLE_EQ(d.max_abs, static_cast<double>(old_value + 0.5f) - old_value);
  EXPECT_DOUBLE_EQ(d.max_rel, d.max_abs / std::fabs(static_cast<double>(old_value + 0.5f)));
  EXPECT_EQ(d.a_at_max, old_value);
  EXPECT_EQ(Find(r, "master/ln.weight").kind, TensorDiffKind::kEqual);

  // Within an absolute tolerance it matches (but is not bit-exact); a relative one too.
  o.atol = 0.51;  // the float sum old + 0.5 is rounded
  DS_ASSERT_OK_AND_ASSIGN(DiffReport loose, DiffCheckpoints(&env_, a, b, o));
  EXPECT_EQ(Find(loose, "master/wte").kind, TensorDiffKind::kEqual);
  EXPECT_EQ(Find(loose, "master/wte").not_bit_exact, 1u);
  o.atol = 0;
  o.rtol = 1.5;  // |a - b| = 0.5 and |b| is about 0.5
  DS_ASSERT_OK_AND_ASSIGN(DiffReport rel, DiffCheckpoints(&env_, a, b, o));
  EXPECT_EQ(Find(rel, "master/wte").kind, TensorDiffKind::kEqual);
  o.rtol = 1e-3;
  DS_ASSERT_OK_AND_ASSIGN(DiffReport tight, DiffCheckpoints(&env_, a, b, o));
  EXPECT_EQ(Find(tight, "master/wte").kind, TensorDiffKind::kDiffers);
}

TEST_F(DiffTest, IntegersCompareExactlyWhateverTheTolerance) {
  std::vector<TestTensor> changed = state_;
  changed[3].data[8] ^= std::byte{1};  // optim/step element 1: +-1
  const std::string a = Save(state_, {1, 0, 1}), b = Save(changed, {1, 0, 1});
  DiffOptions o = Options();
  o.atol = 1e9;
  DS_ASSERT_OK_AND_ASSIGN(DiffReport r, DiffCheckpoints(&env_, a, b, o));
  const TensorDiff& d = Find(r, "optim/step");
  EXPECT_EQ(d.kind, TensorDiffKind::kDiffers);
  EXPECT_EQ(d.first_mismatch, 1u);
  EXPECT_EQ(d.max_abs, 1.0);
}

TEST_F(DiffTest, NaNsAndSignedZeros) {
  const std::string a =
      Save(With(With(state_, "master/ln.weight", 0, NAN), "master/ln.weight", 1, 0.0f), {1, 0, 1});
  const std::string b =
      Save(With(With(state_, "master/ln.weight", 0, NAN), "master/ln.weight", 1, -0.0f), {1, 0, 1});
  const std::string c = Save(With(state_, "master/ln.weight", 0, 1.0f), {1, 0, 1});
  DiffOptions o = Options();
  DS_ASSERT_OK_AND_ASSIGN(DiffReport exact, DiffCheckpoints(&env_, a, b, o));
  EXPECT_EQ(Find(exact, "master/ln.weight").mismatched, 1u) << "-0 is not bit-exactly +0";
  o.atol = 1e-12;
  DS_ASSERT_OK_AND_ASSIGN(DiffReport loose, DiffCheckpoints(&env_, a, b, o));
  EXPECT_EQ(Find(loose, "master/ln.weight").kind, TensorDiffKind::kEqual) << "same NaN bits";
  DS_ASSERT_OK_AND_ASSIGN(DiffReport nan, DiffCheckpoints(&env_, a, c, o));
  EXPECT_EQ(Find(nan, "master/ln.weight").nan_mismatches, 1u);
  EXPECT_EQ(Find(nan, "master/ln.weight").kind, TensorDiffKind::kDiffers);
}

TEST_F(DiffTest, TensorsOnOneSideAndMismatchedDTypesOrShapes) {
  std::vector<TestTensor> other = state_;
  other.erase(other.begin() + 1);                                                // ln.weight
  other.push_back(testing::MakeTensor("master/new", fmt::DType::kF32, {2}, 9));  // only in B
  other[0] = testing::MakeTensor("master/wte", fmt::DType::kF32, {48, 64}, 1);   // transposed
  other[1] = testing::MakeTensor("model/wte", fmt::DType::kF16, {64, 48}, 3);    // other dtype
  const std::string a = Save(state_, {2, 1, 1}), b = Save(other, {2, 1, 1});
  DS_ASSERT_OK_AND_ASSIGN(DiffReport r, DiffCheckpoints(&env_, a, b, Options()));
  EXPECT_FALSE(r.equal());
  EXPECT_EQ(Find(r, "master/ln.weight").kind, TensorDiffKind::kOnlyInA);
  EXPECT_EQ(Find(r, "master/new").kind, TensorDiffKind::kOnlyInB);
  EXPECT_EQ(r.tensors.back().name, "master/new");  // B-only tensors come last
  const TensorDiff& shape = Find(r, "master/wte");
  EXPECT_EQ(shape.kind, TensorDiffKind::kShapeMismatch);
  EXPECT_EQ(shape.shape_a, (std::vector<int64_t>{64, 48}));
  EXPECT_EQ(shape.shape_b, (std::vector<int64_t>{48, 64}));
  const TensorDiff& dtype = Find(r, "model/wte");
  EXPECT_EQ(dtype.kind, TensorDiffKind::kDTypeMismatch);
  EXPECT_EQ(dtype.dtype_b, fmt::DType::kF16);
  EXPECT_EQ(Find(r, "mask").kind, TensorDiffKind::kEqual);
}

TEST_F(DiffTest, DamageIsAnErrorNamingTheChunk) {
  const std::string a = Save(state_, {2, 1, 1}, 4096, fmt::Codec::kRaw);
  const std::string b = Save(state_, {2, 1, 1}, 4096, fmt::Codec::kRaw);
  DS_ASSERT_OK_AND_ASSIGN(auto f, env_.OpenFile(b + "/rank-00001.dss", {io::OpenMode::kUpdate}));
  std::byte junk[4] = {std::byte{1}, std::byte{2}, std::byte{3}, std::byte{4}};
  DS_ASSERT_OK(f->WriteAt(4096 + 8, junk));
  EXPECT_THAT(DiffCheckpoints(&env_, a, b, Options()),
              StatusIs(StatusCode::kCorruption,
                       AllOf(HasSubstr("of rank-00001.dss"), HasSubstr("while reading " + b))));
  EXPECT_THAT(DiffCheckpoints(&env_, a, "/nowhere", Options()),
              StatusIs(StatusCode::kNotFound, HasSubstr("/nowhere")));
  DiffOptions neg = Options();
  neg.atol = -1;
  EXPECT_THAT(DiffCheckpoints(&env_, a, a, neg),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("tolerances must be >= 0")));
}

}  // namespace
}  // namespace ds::ckpt
