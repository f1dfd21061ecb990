// The default corpus: built from the real /usr/share/common-licenses, byte for byte the same on
// every build, with its composition recorded; a stale file is replaced; without the license
// texts the error says what to do.
#include "engine/data/default_corpus.h"

#include <nlohmann/json.hpp>
#include <string>

#include "io/mem_env.h"
#include "testing/matchers.h"

namespace ds::engine {
namespace {

using ::ds::testing::StatusIs;
using ::ds::testing::TempDir;
using ::testing::Eq;

TEST(DataDefaultCorpusTest, BuildsFromTheRealLicenseTextsTheSameEveryTime) {
  io::Env* env = io::Env::Default();
  Result<bool> present = env->Exists(std::string(kCommonLicensesDir));
  if (!present.ok() || !*present) {
    GTEST_SKIP() << kCommonLicensesDir << " is absent (not Debian): nothing to build from";
  }
  TempDir dir;
  const std::string first = dir.Join("cache/default-corpus.txt");
  const std::string second = dir.Join("other/default-corpus.txt");
  DS_ASSERT_OK_AND_ASSIGN(std::string path, BuildDefaultCorpus(env, first));
  EXPECT_EQ(path, first);
  DS_ASSERT_OK(BuildDefaultCorpus(env, second).status());
  DS_ASSERT_OK_AND_ASSIGN(std::string a, env->ReadFileToString(first));
  DS_ASSERT_OK_AND_ASSIGN(std::string b, env->ReadFileToString(second));
  EXPECT_EQ(a, b);
  DS_ASSERT_OK_AND_ASSIGN(std::string a_json, env->ReadFileToString(first + ".json"));
  DS_ASSERT_OK_AND_ASSIGN(std::string b_json, env->ReadFileToString(second + ".json"));
  EXPECT_EQ(a_json, b_json);

  // Small, real text, made of the listed files in order, as the composition says.
  EXPECT_GT(a.size(), 100'000u);
  EXPECT_LT(a.size(), 1'000'000u);
  const nlohmann::json composition = nlohmann::json::parse(a_json);
  EXPECT_EQ(composition["bytes"], a.size());
  std::string expected;
  size_t listed = 0;
  for (std::string_view name : DefaultCorpusFiles()) {
    Result<std::string> text = env->ReadFileToString(io::JoinPath(kCommonLicensesDir, name));
    if (!text.ok()) continue;
    ASSERT_LT(listed, composition["files"].size());
    EXPECT_EQ(composition["files"][listed]["name"], name);
    EXPECT_EQ(composition["files"][listed]["bytes"], text->size());
    ++listed;
    expected += *text + "\n";
  }
  EXPECT_EQ(listed, composition["files"].size());
  EXPECT_EQ(a, expected);
  EXPECT_NE(a.find("GNU GENERAL PUBLIC LICENSE"), std::string::npos);

  // Built again over itself: unchanged.
  DS_ASSERT_OK(BuildDefaultCorpus(env, first).status());
  DS_ASSERT_OK_AND_ASSIGN(std::string again, env->ReadFileToString(first));
  EXPECT_EQ(again, a);
}

TEST(DataDefaultCorpusTest, CompositionAndStaleFiles) {
  io::MemEnv env;
  DS_ASSERT_OK(env.CreateDirs("/lic"));
  DS_ASSERT_OK(env.WriteFileSynced("/lic/GPL-3", "GPL three"));
  DS_ASSERT_OK(env.WriteFileSynced("/lic/Apache-2.0", "Apache"));
  DS_ASSERT_OK(env.WriteFileSynced("/lic/GPL", "a symlink's name: not read"));
  DS_ASSERT_OK(env.CreateDirs("/out"));
  DS_ASSERT_OK(env.WriteFileSynced("/out/corpus.txt", "stale"));
  DS_ASSERT_OK(BuildDefaultCorpus(&env, "/out/corpus.txt", "/lic").status());
  DS_ASSERT_OK_AND_ASSIGN(std::string corpus, env.ReadFileToString("/out/corpus.txt"));
  EXPECT_EQ(corpus, "Apache\nGPL three\n");
  DS_ASSERT_OK_AND_ASSIGN(std::string json, env.ReadFileToString("/out/corpus.txt.json"));
  const nlohmann::json c = nlohmann::json::parse(json);
  EXPECT_EQ(c["source_dir"], "/lic");
  EXPECT_EQ(c["bytes"], 17);
  ASSERT_EQ(c["files"].size(), 2u);
  EXPECT_EQ(c["files"][0]["name"], "Apache-2.0");
  EXPECT_EQ(c["files"][0]["bytes"], 6);
  EXPECT_EQ(c["files"][0]["xxh64"].get<std::string>().size(), 16u);
  EXPECT_EQ(c["files"][1]["name"], "GPL-3");
  EXPECT_EQ(c["missing"].size(), DefaultCorpusFiles().size() - 2);
  EXPECT_EQ(c["missing"][0], "Artistic");
}

TEST(DataDefaultCorpusTest, NoLicenseTextsIsAClearError) {
  io::MemEnv env;
  EXPECT_THAT(BuildDefaultCorpus(&env, "/out/corpus.txt"),
              StatusIs(StatusCode::kFailedPrecondition,
                       Eq("default corpus: none of its license texts (Apache-2.0, Artistic, BSD, "
                          "CC0-1.0, GFDL-1.2, GFDL-1.3, GPL-1, GPL-2, GPL-3, LGPL-2, LGPL-2.1, "
                          "LGPL-3, MPL-1.1, MPL-2.0) is in /usr/share/common-licenses (Debian's "
                          "base-files package ships them; elsewhere set data.path to a token or "
                          "text file)")));
  Result<bool> written = env.Exists("/out/corpus.txt");
  ASSERT_TRUE(written.ok());
  EXPECT_FALSE(*written);
}

}  // namespace
}  // namespace ds::engine
