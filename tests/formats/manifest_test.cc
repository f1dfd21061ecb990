// manifest.h5: round trips, what h5py and h5dump see, and every rule of ValidateManifest
// (the two format versions and crafted files: manifest_file_test.cc).
#include "formats/manifest.h"

#include <functional>
#include <nlohmann/json.hpp>

#include "bench/fio.h"
#include "formats/sample_manifest.h"
#include "io/mem_env.h"
#include "testing/matchers.h"
#include "testing/paths.h"
#include "testing/python.h"

namespace ds::fmt {
namespace {

using ::ds::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

Manifest Sample() { return testing::SampleManifest(); }

std::span<const std::byte> Bytes(const std::string& s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

bool SameManifest(const Manifest& a, const Manifest& b) {
  return ManifestContentChecksum(a) == ManifestContentChecksum(b);
}

TEST(ManifestTest, RoundTripKeepsEveryField) {
  Manifest m = Sample();
  DS_ASSERT_OK_AND_ASSIGN(std::string image, EncodeManifest(m));
  DS_ASSERT_OK_AND_ASSIGN(Manifest back, DecodeManifest(Bytes(image), "manifest.h5"));
  EXPECT_TRUE(SameManifest(m, back));
  EXPECT_EQ(back.info.tag, "step-00000100");
  EXPECT_EQ(back.info.config_json, m.info.config_json);
  EXPECT_EQ(back.tensors[1].dtype, DType::kBF16);
  EXPECT_EQ(back.tensors[2].shape.size(), 0u);
  EXPECT_EQ(back.slices[3].box_offset, (std::vector<int64_t>{4, 0}));
  EXPECT_EQ(back.chunks[4].codec, Codec::kZstd);
  EXPECT_EQ(back.blobs[1].data, std::string("\0\1\2", 3));
  EXPECT_EQ(back.FindTensor("model/emb"), 1);
  EXPECT_EQ(back.FindBlob("nope"), -1);
}

TEST(ManifestTest, ThroughEnvAndEmptyTables) {
  io::MemEnv env;
  Manifest m;
  m.info.tag = "empty";
  DS_ASSERT_OK(WriteManifest(&env, "/manifest.h5", m));
  DS_ASSERT_OK_AND_ASSIGN(Manifest back, ReadManifest(&env, "/manifest.h5"));
  EXPECT_TRUE(SameManifest(m, back));
  EXPECT_THAT(ReadManifest(&env, "/missing.h5"),
              StatusIs(StatusCode::kNotFound, HasSubstr("missing")));
}

TEST(ManifestTest, H5pyAndH5dumpReadItNaturally) {
  const std::string python = testing::Python();
  testing::TempDir dir;
  DS_ASSERT_OK(WriteManifest(io::Env::Default(), dir.Join("manifest.h5"), Sample()));
  int status = 0;
  if (bench::RunCapture("command -v h5dump >/dev/null", &status)) {
    std::optional<std::string> dump =
        bench::RunCapture("h5dump " + bench::ShellQuote(dir.Join("manifest.h5")), &status);
    ASSERT_TRUE(dump.has_value()) << "h5dump failed with status " << status;
    EXPECT_THAT(*dump, HasSubstr("\"master/w\""));
    EXPECT_THAT(*dump, HasSubstr("bytegroup_zstd"));  // the codec enum's names are visible
  }
  DS_SKIP_OR_FAIL_WITHOUT_PYTHON("h5py");
  const char* script = R"PY(
import h5py, json, sys
f = h5py.File(sys.argv[1], "r")
t = f["tensors"][:]
s = f["slices"][:]
c = f["chunks"][:]
out = {
  "tag": f.attrs["tag"], "step": int(f.attrs["step"]), "world": int(f.attrs["world_size"]),
  "config": json.loads(f.attrs["config_json"]),
  "names": [n.decode() for n in t["name"]], "dtypes": [d.decode() for d in t["dtype"]],
  "shape0": [int(x) for x in t["shape"][0]],
  "slice1_range": [int(s["flat_begin"][1]), int(s["flat_end"][1])],
  "box3": [int(x) for x in s["box_offset"][3]],
  "codec4": h5py.check_enum_dtype(c.dtype["codec"]) is not None and int(c["codec"][4]),
  "blob0": bytes(f["blobs"][0]["data"]).decode(),
}
print(json.dumps(out))
)PY";
  std::optional<std::string> out =
      bench::RunCapture(python + " -c " + bench::ShellQuote(script) + " " +
                            bench::ShellQuote(dir.Join("manifest.h5")) + " 2>&1",
                        &status);
  ASSERT_TRUE(out.has_value()) << "python failed with status " << status;
  nlohmann::json j = nlohmann::json::parse(*out);
  EXPECT_EQ(j["tag"], "step-00000100");
  EXPECT_EQ(j["step"], 100);
  EXPECT_EQ(j["world"], 2);
  EXPECT_EQ(j["config"]["train_batch_size"], 8);
  EXPECT_EQ(j["names"], nlohmann::json({"master/w", "model/emb", "step"}));
  EXPECT_EQ(j["dtypes"], nlohmann::json({"float32", "bfloat16", "int64"}));
  EXPECT_EQ(j["shape0"], nlohmann::json({4, 6}));
  EXPECT_EQ(j["slice1_range"], nlohmann::json({13, 24}));
  EXPECT_EQ(j["box3"], nlohmann::json({4, 0}));
  EXPECT_EQ(j["codec4"], 1);
  EXPECT_EQ(j["blob0"], R"({"last_lr": 0.0003})");
}

// Each broken field, and the message that must name it.
struct Breakage {
  const char* name;
  std::function<void(Manifest&)> breaks;
  const char* message;
};

TEST(ManifestValidationTest, EveryRuleNamesWhatIsWrong) {
  const std::vector<Breakage> cases = {
      {"newer format", [](Manifest& m) { m.info.format_version = 3; },
       "manifest format version 3 is not one this dstrain reads (it reads 1 to 2)"},
      {"world size", [](Manifest& m) { m.info.world_size = 0; }, "world size 0 is invalid"},
      {"stage", [](Manifest& m) { m.info.zero_stage = 4; }, "ZeRO stage 4 is invalid"},
      {"duplicate tensor", [](Manifest& m) { m.tensors[1].name = "master/w"; },
       "tensor 'master/w' is listed twice"},
      {"negative dim",
       [](Manifest& m) {
         m.tensors[0].shape = {4, -6};
       },
       "tensor 'master/w' has an invalid shape [4, -6]"},
      {"too many dims", [](Manifest& m) { m.tensors[2].shape = std::vector<int64_t>(9, 1); },
       "tensor 'step' has 9 dimensions (at most 8)"},
      {"file name with slash", [](Manifest& m) { m.files[0].name = "../rank-00000.dss"; },
       "file name '../rank-00000.dss' is not a plain name"},
      {"file name dotdot", [](Manifest& m) { m.files[0].name = ".."; },
       "file name '..' is not a plain name"},
      {"duplicate file", [](Manifest& m) { m.files[1].name = "rank-00000.dss"; },
       "file 'rank-00000.dss' is listed twice"},
      {"file rank", [](Manifest& m) { m.files[1].rank = 2; },
       "file 'rank-00001.dss' belongs to rank 2 but the world size is 2"},
      {"chunk file index", [](Manifest& m) { m.chunks[0].file = 7; }, "chunk 0 names file 7 of 2"},
      {"chunk past end", [](Manifest& m) { m.chunks[2].offset = 16384; },
       "chunk 2 of rank-00000.dss at offset 16384 (8 bytes) is not inside the 16384-byte file"},
      {"chunk unaligned", [](Manifest& m) { m.chunks[2].offset = 12000; },
       "chunk 2 of rank-00000.dss at offset 12000"},
      {"chunk in header", [](Manifest& m) { m.chunks[0].offset = 0; },
       "chunk 0 of rank-00000.dss at offset 0"},
      {"codec", [](Manifest& m) { m.chunks[1].codec = static_cast<Codec>(9); },
       "chunk 1 of rank-00000.dss has unknown codec 9"},
      {"bomb", [](Manifest& m) { m.chunks[4].raw_len = uint64_t{1} << 40; },
       "chunk 4 of rank-00001.dss claims 1099511627776 raw bytes, more than the limit"},
      {"raw lengths", [](Manifest& m) { m.chunks[0].stored_len = 40; },
       "chunk 0 of rank-00000.dss is stored raw but its stored and raw lengths differ"},
      {"overlapping chunks", [](Manifest& m) { m.chunks[1].offset = 4096; },
       "chunk 1 of rank-00000.dss overlaps chunk 0 of rank-00000.dss"},
      {"slice tensor", [](Manifest& m) { m.slices[0].tensor = 5; }, "slice 0 names tensor 5 of 3"},
      {"slice rank", [](Manifest& m) { m.slices[1].rank = 3; },
       "slice of 'master/w' from rank 3: rank is not below the world size 2"},
      {"box dims", [](Manifest& m) { m.slices[2].box_offset = {0}; },
       "slice of 'model/emb' from rank 0: box has 1 dimensions but the tensor has 2"},
      {"box outside",
       [](Manifest& m) {
         m.slices[3].box_offset = {5, 0};
       },
       "box offset [5, 0] length [4, 3] is outside the shape [8, 3]"},
      {"flat range", [](Manifest& m) { m.slices[1].flat_end = 25; },
       "flat range [13, 25) is outside its box of 24 elements"},
      {"overlap",
       [](Manifest& m) {
         m.slices[1].flat_begin = 12;
         m.chunks[3].raw_len = 48;
         m.chunks[3].stored_len = 48;
       },
       "tensor 'master/w': slices of ranks 0 and 1 overlap in elements [12, 13)"},
      {"coverage", [](Manifest& m) { m.slices[1].flat_end = 23; },
       "tensor 'master/w': slices hold 23 of its 24 elements"},
      {"boxes overlap",
       [](Manifest& m) {
         m.slices[3].box_offset = {3, 0};
       },
       "tensor 'model/emb': boxes at [0, 0] and [3, 0] overlap"},
      {"shared chunk bytes",
       [](Manifest& m) {
         m.chunks[0].raw_len = 48;
         m.chunks[0].stored_len = 48;
       },
       "slices of 'master/w' (rank 0) and 'model/emb' (rank 0) claim the same bytes of chunk 1 "
       "of rank-00000.dss"},
      {"chunks too short",
       [](Manifest& m) {
         m.chunks[2].raw_len = 4;
         m.chunks[2].stored_len = 4;
       },
       "slice of 'step' from rank 0 needs 8 bytes but its chunks end 4 bytes short"},
      {"slice in other rank's file", [](Manifest& m) { m.slices[0].first_chunk = 3; },
       "slice of 'master/w' from rank 0 lives in rank-00001.dss of rank 1"},
      {"element size",
       [](Manifest& m) {
         m.chunks[4].codec = Codec::kByteGroupZstd;
         m.chunks[4].elem_size = 4;
       },
       "has 2-byte elements but chunk 4 of rank-00001.dss groups 4-byte elements"},
      {"duplicate blob", [](Manifest& m) { m.blobs[1].name = "scheduler"; },
       "blob 'scheduler' is empty-named or listed twice"},
  };
  DS_ASSERT_OK(ValidateManifest(Sample(), "m.h5"));
  for (const Breakage& b : cases) {
    Manifest m = Sample();
    b.breaks(m);
    EXPECT_THAT(ValidateManifest(m, "m.h5"),
                StatusIs(StatusCode::kCorruption, AllOf(HasSubstr("m.h5: "), HasSubstr(b.message))))
        << b.name;
    EXPECT_FALSE(EncodeManifest(m).ok()) << b.name << ": an invalid manifest was written";
  }
}

TEST(ManifestDecodeTest, DamagedImagesAreRefused) {
  DS_ASSERT_OK_AND_ASSIGN(std::string image, EncodeManifest(Sample()));
  EXPECT_THAT(DecodeManifest(Bytes("not hdf5 at all"), "m.h5"),
              StatusIs(StatusCode::kCorruption, HasSubstr("m.h5: not a dstrain manifest")));
  EXPECT_THAT(DecodeManifest(Bytes(image + "x"), "m.h5"),
              StatusIs(StatusCode::kCorruption, HasSubstr("(appended to)")));
  std::string newer = image;
  newer[8] = 3;
  EXPECT_THAT(DecodeManifest(Bytes(newer), "m.h5"),
              StatusIs(StatusCode::kCorruption, HasSubstr("manifest format version 3")));
  EXPECT_THAT(DecodeManifest(Bytes(image.substr(0, image.size() / 2)), "m.h5"),
              StatusIs(StatusCode::kCorruption, HasSubstr("m.h5")));
  // Change the bytes of a string that lives in the tables' storage: the content checksum (or
  // HDF5's own metadata checksums) catches it; the reader never accepts it.
  size_t at = image.find("master/w");
  ASSERT_NE(at, std::string::npos);
  std::string damaged = image;
  damaged[at] = 'M';
  EXPECT_THAT(DecodeManifest(Bytes(damaged), "m.h5"),
              StatusIs(StatusCode::kCorruption, HasSubstr("m.h5")));
  // Flip bytes throughout the image: every result is either a refusal or the same manifest.
  int refused = 0;
  for (size_t i = 0; i < image.size(); i += 97) {
    std::string flipped = image;
    flipped[i] ^= 0x5a;
    Result<Manifest> r = DecodeManifest(Bytes(flipped), "m.h5");
    if (!r.ok()) {
      ++refused;
      EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << r.status().ToString();
    } else {
      EXPECT_TRUE(SameManifest(*r, Sample())) << "byte " << i << " changed the content silently";
    }
  }
  EXPECT_GT(refused, 0);
}

}  // namespace
}  // namespace ds::fmt
