// `dsckpt reshard` end to end: a checkpoint of 2 ranks resharded to 3 through the binary loads
// bit-exactly, JSON output, `--set-latest`, and the exit codes for bad requests.
#include <nlohmann/json.hpp>

#include "ckpt/catalog.h"
#include "ckpt/save_util.h"
#include "testing/matchers.h"
#include "testing/paths.h"
#include "testing/shell.h"

namespace ds {
namespace {

using ::testing::HasSubstr;

std::string Dsckpt() { return testing::BuildDir() + "/dsckpt"; }

TEST(DsckptReshardTest, ReshardThroughTheBinary) {
  testing::TempDir dir;
  const std::string save = dir.Join("ckpts");
  const auto state = ckpt::SampleState();
  ckpt::InProcessStore store;
  ckpt::SaveOutcome out = ckpt::SaveAll(io::Env::Default(), state, {2, 1, 1}, 5,
                                        ckpt::TestWriterOptions(save), &store);
  ASSERT_TRUE(out.status[0].ok()) << out.status[0].ToString();
  testing::ShellResult r = testing::Sh(Dsckpt() + " reshard " + bench::ShellQuote(save) +
                                       " --to-world 3 --to-stage 3 --json --set-latest");
  ASSERT_EQ(r.status, 0) << r.out;
  nlohmann::json j = nlohmann::json::parse(r.out.substr(r.out.rfind("\n{") + 1));
  EXPECT_EQ(j["tag"], "step-00000005-w3s3");
  EXPECT_EQ(j["world_size"], 3);
  EXPECT_EQ(j["source_chunks_read"], j["source_chunks"]);
  DS_ASSERT_OK(ckpt::LoadAndCompare(io::Env::Default(), j["path"].get<std::string>(), state,
                                    {3, 3, 1}));
  ckpt::Catalog cat(io::Env::Default(), save);
  DS_ASSERT_OK_AND_ASSIGN(auto latest, cat.ReadLatest());
  EXPECT_EQ(latest, "step-00000005-w3s3");

  testing::ShellResult tp = testing::Sh(Dsckpt() + " reshard " + bench::ShellQuote(save) +
                                        " --to-world 4 --to-tp 2");
  EXPECT_EQ(tp.status, 2) << tp.out;
  EXPECT_THAT(tp.out, HasSubstr("saved without tensor parallelism"));
  testing::ShellResult missing = testing::Sh(Dsckpt() + " reshard " +
                                             bench::ShellQuote(dir.Join("nope")) + " --to-world 2");
  EXPECT_EQ(missing.status, 2);
  EXPECT_THAT(missing.out, HasSubstr("is not a checkpoint"));
  testing::ShellResult usage = testing::Sh(Dsckpt() + " reshard " + bench::ShellQuote(save));
  EXPECT_EQ(usage.status, 2);
  EXPECT_THAT(usage.out, HasSubstr("--to-world is required"));
}

}  // namespace
}  // namespace ds
