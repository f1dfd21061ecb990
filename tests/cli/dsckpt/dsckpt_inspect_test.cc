// `dsckpt inspect` and `dsckpt verify` end to end, and the Python reader of docs/format.md run
// against a real checkpoint (so the spec's example cannot rot).
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include "bench/fio.h"
#include "io/env.h"
#include "testing/checkpoint_builder.h"
#include "testing/matchers.h"
#include "testing/paths.h"
#include "testing/python.h"
#include "testing/shell.h"

namespace ds {
namespace {

using ::testing::HasSubstr;

std::string Dsckpt() { return testing::BuildDir() + "/dsckpt"; }

using testing::Sh;
using testing::ShellResult;

class DsckptInspectTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tensors_ = {testing::MakeTensor("master/w", fmt::DType::kF32, {64, 33}, 1),
                testing::MakeTensor("model/w", fmt::DType::kBF16, {64, 33}, 2),
                testing::MakeTensor("count", fmt::DType::kI64, {3}, 3)};
    ckpt_ = dir_.Join("step-00000007");
    auto m = testing::WriteTestCheckpoint(io::Env::Default(), ckpt_, tensors_, 3, fmt::Codec::kRaw,
                                          4096);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    manifest_ = *m;
  }
  testing::TempDir dir_;
  std::string ckpt_;
  std::vector<testing::TestTensor> tensors_;
  fmt::Manifest manifest_;

  // Overwrites one byte of rank 2's shard file with 0xff.
  void Damage(uint64_t offset) {
    auto f = io::Env::Default()->OpenFile(io::JoinPath(ckpt_, "rank-00002.dss"),
                                          {io::OpenMode::kUpdate});
    ASSERT_TRUE(f.ok());
    std::byte b[1] = {std::byte{0xff}};
    ASSERT_TRUE((*f)->WriteAt(offset, b).ok());
  }
};

TEST_F(DsckptInspectTest, VerifyExitCodes) {
  ShellResult ok = Sh(Dsckpt() + " verify " + bench::ShellQuote(ckpt_));
  EXPECT_EQ(ok.status, 0) << ok.out;
  EXPECT_THAT(ok.out, HasSubstr("healthy"));
  ShellResult missing = Sh(Dsckpt() + " verify " + bench::ShellQuote(dir_.Join("nope")));
  EXPECT_EQ(missing.status, 2) << missing.out;
  EXPECT_THAT(missing.out, HasSubstr("does not exist"));
  Damage(manifest_.chunks.back().offset);  // one chunk of rank 2
  ShellResult bad = Sh(Dsckpt() + " verify " + bench::ShellQuote(ckpt_));
  EXPECT_EQ(bad.status, 1) << bad.out;
  EXPECT_THAT(bad.out, HasSubstr("of rank-00002.dss"));
  EXPECT_THAT(bad.out, HasSubstr("DAMAGED"));
  ShellResult js = Sh(Dsckpt() + " verify --json " + bench::ShellQuote(ckpt_));
  EXPECT_EQ(js.status, 1);
  nlohmann::json j = nlohmann::json::parse(js.out);
  EXPECT_EQ(j["chunks_damaged"], 1);
  EXPECT_FALSE(j["healthy"].get<bool>());
}

// A directory or a FIFO where a shard should be is damage (exit 1), found at once: a FIFO with
// no writer must not block verify (`timeout` turns a hang into status 124).
TEST_F(DsckptInspectTest, VerifyCallsWhatIsNotAFileInAShardsPlaceDamage) {
  io::Env* env = io::Env::Default();
  const std::string shard = io::JoinPath(ckpt_, "rank-00001.dss");
  DS_ASSERT_OK(env->RemoveFile(shard));
  DS_ASSERT_OK(env->CreateDir(shard));
  ShellResult dir = Sh("timeout 10 " + Dsckpt() + " verify " + bench::ShellQuote(ckpt_));
  EXPECT_EQ(dir.status, 1) << dir.out;
  EXPECT_THAT(dir.out, HasSubstr("DAMAGED"));
  EXPECT_THAT(dir.out, HasSubstr(shard + " is a directory, not a regular file"));
  DS_ASSERT_OK(env->RemoveDir(shard));
  ASSERT_EQ(::mkfifo(shard.c_str(), 0644), 0);
  ShellResult fifo = Sh("timeout 10 " + Dsckpt() + " verify " + bench::ShellQuote(ckpt_));
  EXPECT_EQ(fifo.status, 1) << fifo.out;
  EXPECT_THAT(fifo.out, HasSubstr(shard + " is a FIFO, not a regular file"));
  ShellResult inspect = Sh("timeout 10 " + Dsckpt() + " inspect " + bench::ShellQuote(ckpt_));
  EXPECT_EQ(inspect.status, 1) << inspect.out;
  EXPECT_THAT(inspect.out, HasSubstr("is a FIFO, not a regular file"));
}

// inspect reads no chunk, so it never says "healthy": it says what it checked, and that verify
// reads the rest. A damaged shard header it does see.
TEST_F(DsckptInspectTest, InspectSaysWhatItCheckedAndWhatNot) {
  ShellResult text = Sh(Dsckpt() + " inspect " + bench::ShellQuote(ckpt_));
  ASSERT_EQ(text.status, 0) << text.out;
  EXPECT_THAT(text.out, HasSubstr("checkpoint " + ckpt_ +
                                  ": not verified: manifest, shard "
                                  "headers and sizes ok; chunks not read (run 'dsckpt verify " +
                                  ckpt_ + "')"));
  EXPECT_THAT(text.out, ::testing::Not(HasSubstr("healthy")));
  ShellResult js = Sh(Dsckpt() + " inspect --json " + bench::ShellQuote(ckpt_));
  ASSERT_EQ(js.status, 0) << js.out;
  nlohmann::json j = nlohmann::json::parse(js.out);
  EXPECT_TRUE(j["healthy"].get<bool>());
  EXPECT_FALSE(j["verified"].get<bool>());
  EXPECT_THAT(j["checked"].get<std::string>(), HasSubstr("chunks not read"));
  ShellResult dir = Sh(Dsckpt() + " inspect " + bench::ShellQuote(dir_.path()));
  ASSERT_EQ(dir.status, 0) << dir.out;
  EXPECT_THAT(dir.out, HasSubstr("not verified"));
  EXPECT_THAT(dir.out, HasSubstr("chunks not read"));
  // A damaged chunk: inspect cannot see it, and does not claim the checkpoint is intact.
  Damage(manifest_.chunks.back().offset);
  ShellResult chunk = Sh(Dsckpt() + " inspect " + bench::ShellQuote(ckpt_));
  EXPECT_EQ(chunk.status, 0) << chunk.out;
  EXPECT_THAT(chunk.out, HasSubstr("not verified"));
  EXPECT_THAT(chunk.out, ::testing::Not(HasSubstr("healthy")));
  // A damaged shard header: DAMAGED, exit 1.
  Damage(100);
  ShellResult header = Sh(Dsckpt() + " inspect " + bench::ShellQuote(ckpt_));
  EXPECT_EQ(header.status, 1) << header.out;
  EXPECT_THAT(header.out, HasSubstr("DAMAGED"));
  EXPECT_THAT(header.out, HasSubstr("rank-00002.dss: shard header fails its checksum"));
}

TEST_F(DsckptInspectTest, InspectCheckpointAndSaveDir) {
  ShellResult one = Sh(Dsckpt() + " inspect --json " + bench::ShellQuote(ckpt_));
  ASSERT_EQ(one.status, 0) << one.out;
  nlohmann::json j = nlohmann::json::parse(one.out);
  EXPECT_EQ(j["tag"], "step-00000007");
  EXPECT_EQ(j["world_size"], 3);
  EXPECT_EQ(j["tensors"], 3);
  EXPECT_EQ(j["raw_bytes"], 64 * 33 * 4 + 64 * 33 * 2 + 3 * 8);
  EXPECT_EQ(j["largest_tensor"], "master/w");
  ShellResult text = Sh(Dsckpt() + " inspect " + bench::ShellQuote(dir_.path()));
  ASSERT_EQ(text.status, 0) << text.out;
  EXPECT_THAT(text.out, HasSubstr("1 checkpoint(s)"));
  EXPECT_THAT(text.out, HasSubstr("step-00000007"));
  ShellResult empty =
      Sh(Dsckpt() + " inspect " + bench::ShellQuote(dir_.Join("step-00000007/..")) + "/nothing");
  EXPECT_EQ(empty.status, 2) << empty.out;
}

// The Python reader printed in docs/format.md, section 7, reads our raw checkpoint.
TEST_F(DsckptInspectTest, FormatDocPythonExampleReadsTheCheckpoint) {
  const std::string python = testing::Python();
  int status = 0;
  DS_SKIP_OR_FAIL_WITHOUT_PYTHON("h5py, numpy");
  auto doc = io::Env::Default()->ReadFileToString(testing::SourceDir() + "/docs/format.md");
  ASSERT_TRUE(doc.ok());
  size_t begin = doc->find("```python\n");
  ASSERT_NE(begin, std::string::npos) << "docs/format.md lost its Python example";
  begin += 10;
  size_t end = doc->find("```", begin);
  std::string script = doc->substr(begin, end - begin);
  EXPECT_LE(std::count(script.begin(), script.end(), '\n'), 20) << "keep the example short";
  script +=
      "import json\n"
      "print(json.dumps({k: [int(x) for x in v.reshape(-1).view(np.uint8)[:64]] + "
      "[int(v.reshape(-1).view(np.uint8).astype(np.uint64).sum())] for k, v in out.items()}))\n";
  std::optional<std::string> out = bench::RunCapture(
      python + " -c " + bench::ShellQuote(script) + " " + bench::ShellQuote(ckpt_), &status);
  ASSERT_TRUE(out.has_value()) << "the doc's example failed with status " << status;
  std::string last = out->substr(out->rfind('{'));
  nlohmann::json j = nlohmann::json::parse(last);
  for (const testing::TestTensor& t : tensors_) {
    ASSERT_TRUE(j.contains(t.name)) << t.name;
    std::vector<uint64_t> want;
    uint64_t sum = 0;
    for (size_t i = 0; i < t.data.size(); ++i) {
      if (i < 64) want.push_back(static_cast<uint64_t>(t.data[i]));
      sum += static_cast<uint64_t>(t.data[i]);
    }
    want.push_back(sum);
    EXPECT_EQ(j[t.name].get<std::vector<uint64_t>>(), want) << t.name;
  }
}

}  // namespace
}  // namespace ds
