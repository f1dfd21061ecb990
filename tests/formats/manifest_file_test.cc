// manifest.h5 as a file: format 2's layout (user block, HDF5 image, record), format 1 files as
// dstrain wrote them before format 2 (tests/formats/data/v1_sample.h5, from that writer), and
// crafted files that crash or hang libhdf5, which cost the reader a Corruption, never the process.
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <regex>

#include "bench/fio.h"
#include "formats/chunk_codec.h"
#include "formats/endian.h"
#include "formats/manifest.h"
#include "formats/sample_manifest.h"
#include "testing/matchers.h"
#include "testing/paths.h"
#include "testing/python.h"

namespace ds::fmt {
namespace {

using ::ds::testing::StatusIs;
using ::testing::HasSubstr;

std::span<const std::byte> Bytes(const std::string& s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}
uint64_t U64At(const std::string& s, size_t at) {
  return GetU64(reinterpret_cast<const std::byte*>(s.data()) + at);
}
void PutU64At(std::string* s, size_t at, uint64_t v) {
  PutU64(reinterpret_cast<std::byte*>(s->data()) + at, v);
}

std::string V1Fixture() {
  std::string f = testing::V1SampleFile();
  EXPECT_FALSE(f.empty()) << "tests/formats/data/v1_sample.h5 is missing";
  return f;
}
void Reseal(std::string* file) { testing::ResealManifest(file); }

Manifest SampleAtVersion(uint32_t version) {
  Manifest m = testing::SampleManifest();
  m.info.format_version = version;
  return m;
}

// Sets an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    if (old != nullptr) old_ = old;
    ::setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// ---- format 2

TEST(ManifestFileTest, Format2IsTheHdf5ImageThenTheRecordSealedByTheUserBlock) {
  const Manifest m = testing::SampleManifest();
  DS_ASSERT_OK_AND_ASSIGN(std::string file, EncodeManifest(m));
  const std::string record = EncodeManifestRecord(m);
  ASSERT_EQ(file.substr(0, 8), "DSTRMANF");
  EXPECT_EQ(U64At(file, 8), 2u);  // u32 version, then 4 zero bytes
  EXPECT_EQ(U64At(file, 16), file.size());
  EXPECT_EQ(U64At(file, 24), Xxh64(Bytes(file).subspan(512)));
  const uint64_t record_at = U64At(file, 32);
  EXPECT_EQ(U64At(file, 40), record.size());
  EXPECT_EQ(record_at + record.size(), file.size());
  EXPECT_TRUE(file.substr(record_at) == record);
  EXPECT_EQ(U64At(file, 48), Xxh64(Bytes(record)));
  EXPECT_EQ(file.find_first_not_of('\0', 56), 512u);  // the rest of the user block is zero
  // The record starts where HDF5's file ends: the superblock's end-of-file address (a u64 at
  // byte 28 of a version 2 or 3 superblock, which starts after the user block).
  EXPECT_EQ(file.substr(512, 8), "\x89HDF\r\n\x1a\n");
  EXPECT_EQ(U64At(file, 512 + 28), record_at);

  DS_ASSERT_OK_AND_ASSIGN(Manifest back, DecodeManifest(Bytes(file), "m.h5"));
  EXPECT_TRUE(EncodeManifestRecord(back) == record);
}

TEST(ManifestFileTest, Format2DamageIsRefusedNamingIt) {
  DS_ASSERT_OK_AND_ASSIGN(const std::string file, EncodeManifest(testing::SampleManifest()));
  const uint64_t record_at = U64At(file, 32);
  struct Case {
    const char* name;
    std::function<void(std::string*)> craft;  // edits and reseals
    std::string message;
  };
  const std::vector<Case> cases = {
      {"record checksum",
       [](std::string* f) {
         PutU64At(f, 48, 1);
         PutU64At(f, 24, Xxh64(Bytes(*f).subspan(512)));
       },
       "m.h5: the manifest's record fails its checksum (damaged); an older checkpoint may still "
       "be good: 'dsckpt list'"},
      {"record inside the user block",
       [](std::string* f) {
         PutU64At(f, 32, 100);
         PutU64At(f, 24, Xxh64(Bytes(*f).subspan(512)));
       },
       "m.h5: the manifest's header places its record at byte 100 (" +
           std::to_string(file.size() - record_at) +
           " bytes), not between the 512-byte header and the end of the " +
           std::to_string(file.size()) + "-byte file (damaged)"},
      {"record not at the end",
       [&](std::string* f) {
         PutU64At(f, 40, U64At(*f, 40) - 1);
         PutU64At(f, 24, Xxh64(Bytes(*f).subspan(512)));
       },
       "m.h5: the manifest's header places its record at byte " + std::to_string(record_at) + " (" +
           std::to_string(file.size() - record_at - 1) +
           " bytes), not between the 512-byte header and the end of the " +
           std::to_string(file.size()) + "-byte file (damaged)"},
      {"record of another version",
       [&](std::string* f) {
         PutU64At(f, record_at, 1);
         Reseal(f);
       },
       "m.h5: the manifest's record says format version 1 but its header says 2"},
      {"record with a lying string length",
       [&](std::string* f) {
         PutU64At(f, record_at + 8, 1000000);  // the tag's length
         Reseal(f);
       },
       "m.h5: the manifest record's tag claims 1000000 bytes but only"},
      {"record cut short",
       [&](std::string* f) {
         f->resize(f->size() - 1);
         Reseal(f);
       },
       "m.h5: the manifest record's blobs[1].data claims 3 bytes but only 2 are left"},
      {"record breaking a rule",
       [&](std::string* f) {
         const size_t at = f->find("rank-00001.dss", record_at);
         (*f)[at + 9] = '0';  // two files named rank-00000.dss
         Reseal(f);
       },
       "m.h5: file 'rank-00000.dss' is listed twice"},
  };
  for (const Case& c : cases) {
    std::string f = file;
    c.craft(&f);
    Result<Manifest> r = DecodeManifest(Bytes(f), "m.h5");
    EXPECT_THAT(r, StatusIs(StatusCode::kCorruption, HasSubstr(c.message)))
        << c.name << ": " << r.status().ToString();
  }
}

// h5dump sees the same tables and attributes in a format-1 and a format-2 file of one manifest
// (only `format_version`, and with it `content_xxh64`, differ), and h5py reads content_xxh64 as
// the xxh64 of the record.
TEST(ManifestFileTest, Format2OpensInH5dumpAndH5pyLikeFormat1) {
  testing::TempDir dir;
  DS_ASSERT_OK_AND_ASSIGN(std::string v1, EncodeManifestV1(testing::SampleManifest()));
  DS_ASSERT_OK_AND_ASSIGN(std::string v2, EncodeManifest(testing::SampleManifest()));
  DS_ASSERT_OK(io::Env::Default()->WriteFileSynced(dir.Join("v1.h5"), v1));
  DS_ASSERT_OK(io::Env::Default()->WriteFileSynced(dir.Join("v2.h5"), v2));
  int status = 0;
  if (bench::RunCapture("command -v h5dump >/dev/null", &status)) {
    auto dump = [&](const char* name) {
      std::optional<std::string> d =
          bench::RunCapture("h5dump " + bench::ShellQuote(dir.Join(name)), &status);
      EXPECT_TRUE(d.has_value()) << "h5dump " << name << " failed with status " << status;
      std::string s = d.value_or("");
      s = s.substr(s.find('\n'));  // the first line names the file
      // The two attributes that differ, with their values.
      for (const char* attr : {"content_xxh64", "format_version"}) {
        const size_t a = s.find(std::string("ATTRIBUTE \"") + attr + "\"");
        const size_t b = s.find("ATTRIBUTE", a + 1);
        if (a != std::string::npos) s.erase(a, b - a);
      }
      return s;
    };
    const std::string d1 = dump("v1.h5"), d2 = dump("v2.h5");
    EXPECT_THAT(d2, HasSubstr("DATASET \"slices\""));
    EXPECT_EQ(d1, d2);
  }
  DS_SKIP_OR_FAIL_WITHOUT_PYTHON("h5py");
  const char* script = R"PY(
import h5py, json, sys
f = h5py.File(sys.argv[1], "r")
print(json.dumps({"version": int(f.attrs["format_version"]),
                  "content": str(int(f.attrs["content_xxh64"])),
                  "userblock": f.userblock_size, "tensors": len(f["tensors"]),
                  "blob1": list(bytes(f["blobs"][1]["data"]))}))
)PY";
  std::optional<std::string> out =
      bench::RunCapture(testing::Python() + " -c " + bench::ShellQuote(script) + " " +
                            bench::ShellQuote(dir.Join("v2.h5")) + " 2>&1",
                        &status);
  ASSERT_TRUE(out.has_value()) << "python failed with status " << status;
  nlohmann::json j = nlohmann::json::parse(*out);
  EXPECT_EQ(j["version"], 2);
  EXPECT_EQ(j["content"], std::to_string(Xxh64(Bytes(EncodeManifestRecord(SampleAtVersion(2))))));
  EXPECT_EQ(j["userblock"], 512);
  EXPECT_EQ(j["tensors"], 3);
  EXPECT_EQ(j["blob1"], nlohmann::json({0, 1, 2}));
}

// ---- format 1

TEST(ManifestFileTest, Format1FilesStillDecode) {
  const std::string fixture = V1Fixture();
  ASSERT_EQ(U64At(fixture, 8), 1u);
  DS_ASSERT_OK_AND_ASSIGN(Manifest back, DecodeManifest(Bytes(fixture), "m.h5"));
  EXPECT_TRUE(EncodeManifestRecord(back) == EncodeManifestRecord(SampleAtVersion(1)));
  // The format-1 writer kept for tests writes what dstrain wrote before format 2 (HDF5 stamps
  // object headers with the time, so only the length and the content can be compared).
  DS_ASSERT_OK_AND_ASSIGN(std::string v1, EncodeManifestV1(testing::SampleManifest()));
  EXPECT_EQ(v1.size(), fixture.size());
  DS_ASSERT_OK_AND_ASSIGN(Manifest again, DecodeManifest(Bytes(v1), "m.h5"));
  EXPECT_TRUE(EncodeManifestRecord(again) == EncodeManifestRecord(back));
}

TEST(ManifestFileTest, Format1FileThatCrashesLibhdf5IsCorruption) {
  // Byte 3066 (0x00 -> 0xff) of the fixture makes libhdf5 1.10.8 (and h5dump) segfault.
  EXPECT_THAT(DecodeManifest(Bytes(testing::V1ThatCrashesLibhdf5()), "ckpts/step-5/manifest.h5"),
              StatusIs(StatusCode::kCorruption,
                       "ckpts/step-5/manifest.h5: the HDF5 library crashed (SIGSEGV) parsing it: "
                       "the manifest is damaged; an older checkpoint may still be good"));
}

TEST(ManifestFileTest, Format1FileThatHangsLibhdf5IsKilledAtTheTimeout) {
  // Byte 3256 (0x13 -> 0x63) of the fixture sends libhdf5 1.10.8 (and h5dump) into a loop.
  ScopedEnv timeout("DSTRAIN_MANIFEST_PARSE_TIMEOUT_S", "0.5");
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THAT(DecodeManifest(Bytes(testing::V1ThatHangsLibhdf5()), "m.h5"),
              StatusIs(StatusCode::kCorruption,
                       "m.h5: the HDF5 library did not finish within 0.5 s (killed) parsing it: "
                       "the manifest is damaged; an older checkpoint may still be good "
                       "(DSTRAIN_MANIFEST_PARSE_TIMEOUT_S sets the limit)"));
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 5.0);
}

TEST(ManifestFileTest, ABadTimeoutSettingIsNamed) {
  ScopedEnv timeout("DSTRAIN_MANIFEST_PARSE_TIMEOUT_S", "soon");
  EXPECT_THAT(DecodeManifest(Bytes(V1Fixture()), "m.h5"),
              StatusIs(StatusCode::kInvalidArgument,
                       "DSTRAIN_MANIFEST_PARSE_TIMEOUT_S='soon' is not a number of seconds in "
                       "(0, 86400]"));
}

// Bytes all through a format-1 file changed, checksum fixed up: each parse ends in the same
// manifest or a Corruption (libhdf5 crashing on some: the test process survives them all).
TEST(ManifestFileTest, Format1DamageWithTheChecksumFixedNeverCrashesTheReader) {
  ScopedEnv timeout("DSTRAIN_MANIFEST_PARSE_TIMEOUT_S", "2");
  const std::string fixture = V1Fixture();
  const std::string same = EncodeManifestRecord(SampleAtVersion(1));
  int refused = 0, crashed = 0;
  for (size_t at = 512; at < fixture.size(); at += 97) {
    for (char v : {'\xff', '\x00'}) {
      if (fixture[at] == v) continue;
      Result<Manifest> r = DecodeManifest(Bytes(testing::CraftedV1(at, v)), "m.h5");
      if (r.ok()) {
        EXPECT_TRUE(EncodeManifestRecord(*r) == same) << "byte " << at << " changed the content";
        continue;
      }
      ++refused;
      EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << r.status().ToString();
      if (r.status().message().find("crashed") != std::string::npos) ++crashed;
    }
  }
  EXPECT_GT(refused, 0);
  RecordProperty("crashes_of_libhdf5", crashed);
}

// ---- the fuzz corpus: real files of both formats, and the crashing one

const char* const kCorpusDir = "/tests/fuzz/corpus/manifest_file/";

TEST(ManifestFileTest, FuzzSeedsAreRealManifests) {
  io::Env* env = io::Env::Default();
  const std::string dir = testing::SourceDir() + kCorpusDir;
  for (const char* name : {"v1_sample", "v1_empty", "v2_sample", "v2_empty"}) {
    DS_ASSERT_OK_AND_ASSIGN(std::string f, env->ReadFileToString(dir + name));
    EXPECT_THAT(DecodeManifest(Bytes(f), name).status(), testing::IsOk()) << name;
  }
  DS_ASSERT_OK_AND_ASSIGN(std::string crash, env->ReadFileToString(dir + "v1_crash_sigsegv"));
  EXPECT_THAT(DecodeManifest(Bytes(crash), "m.h5"),
              StatusIs(StatusCode::kCorruption, HasSubstr("crashed (SIGSEGV)")));
}

// Writes the seeds: build/tests/formats/formats_test --gtest_also_run_disabled_tests
//   --gtest_filter='*DISABLED_WriteFuzzSeeds'
TEST(ManifestFileTest, DISABLED_WriteFuzzSeeds) {
  io::Env* env = io::Env::Default();
  const std::string dir = testing::SourceDir() + kCorpusDir;
  DS_ASSERT_OK(env->CreateDirs(dir));
  Manifest empty;
  empty.info.tag = "empty";
  DS_ASSERT_OK_AND_ASSIGN(std::string v1e, EncodeManifestV1(empty));
  DS_ASSERT_OK_AND_ASSIGN(std::string v2e, EncodeManifest(empty));
  DS_ASSERT_OK_AND_ASSIGN(std::string v2s, EncodeManifest(testing::SampleManifest()));
  DS_ASSERT_OK(env->WriteFileSynced(dir + "v1_sample", V1Fixture()));
  DS_ASSERT_OK(env->WriteFileSynced(dir + "v1_empty", v1e));
  DS_ASSERT_OK(env->WriteFileSynced(dir + "v2_sample", v2s));
  DS_ASSERT_OK(env->WriteFileSynced(dir + "v2_empty", v2e));
  DS_ASSERT_OK(env->WriteFileSynced(dir + "v1_crash_sigsegv", testing::V1ThatCrashesLibhdf5()));
}

}  // namespace
}  // namespace ds::fmt
