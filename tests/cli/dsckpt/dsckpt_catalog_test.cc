// `dsckpt list / best / prune / gc` end to end through the binary: JSON parsed, exit codes for
// bad directories and missing flags, and every dsckpt command line in docs/operations.md run
// against a real save directory (so the page cannot rot).
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "bench/fio.h"
#include "ckpt/catalog.h"
#include "ckpt/save_util.h"
#include "testing/matchers.h"
#include "testing/paths.h"
#include "testing/shell.h"

namespace ds {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

using testing::Sh;
using testing::ShellResult;

// The JSON object a command printed (one line; log lines on stderr may come before it).
nlohmann::json Json(const ShellResult& r) {
  const size_t line = r.out.rfind("\n{");
  return nlohmann::json::parse(r.out.substr(r.out[0] == '{' ? 0 : line + 1), nullptr, false);
}

std::string Dsckpt() { return bench::ShellQuote(testing::BuildDir() + "/dsckpt"); }

// "dsckpt <args>" with the save directory `dir` first.
ShellResult Cmd(const std::string& command, const std::string& dir, const std::string& flags = "") {
  return Sh(Dsckpt() + " " + command + " " + bench::ShellQuote(dir) + " " + flags);
}

const std::vector<std::pair<int64_t, double>> kSaves = {
    {10000, 2.0}, {20000, 1.5}, {25000, 1.8}, {30000, 1.7}};  // step, eval_loss

// A save directory as a run leaves it: real saves, `latest` at the last, `best` by eval_loss
// (step 20000).
void MakeSaveDir(const std::string& dir) {
  ckpt::InProcessStore store;
  ckpt::WriterOptions o = ckpt::TestWriterOptions(dir);
  o.best_metric = "eval_loss";
  for (const auto& [step, loss] : kSaves) {
    auto out = ckpt::SaveAll(io::Env::Default(), ckpt::LoopState(step), {1, 0, 1}, step, o, &store,
                             "{\"eval_loss\": " + std::to_string(loss) + "}");
    ASSERT_TRUE(out.status[0].ok()) << out.status[0].ToString();
  }
}

// A temp dir a save left behind: a shard file and a free writer lock file.
std::string MakeTornSave(const std::string& dir, const std::string& name) {
  io::Env* env = io::Env::Default();
  const std::string path = io::JoinPath(dir, name);
  EXPECT_TRUE(env->CreateDirs(path).ok());
  EXPECT_TRUE(env->WriteFileSynced(io::JoinPath(path, "rank-00000.dss"), "partial").ok());
  EXPECT_TRUE(env->TryLockFile(io::JoinPath(path, ".writer-0.lock")).ok());
  return path;
}

// Backdates everything under `path` by two hours, as time passing would (lock files younger
// than a minute are never tested: their writer may be about to lock them).
void Backdate(const std::string& path) {
  ShellResult r = Sh("find " + bench::ShellQuote(path) + " -exec touch -d '2 hours ago' {} +");
  EXPECT_EQ(r.status, 0) << r.out;
}

std::vector<std::string> Tags(const nlohmann::json& list) {
  std::vector<std::string> out;
  for (const auto& e : list) out.push_back(e["tag"]);
  return out;
}

class DsckptCatalogTest : public ::testing::Test {
 protected:
  void SetUp() override { MakeSaveDir(dir_); }
  testing::TempDir tmp_;
  const std::string dir_ = tmp_.Join("run1");
  io::Env* env_ = io::Env::Default();
};

TEST_F(DsckptCatalogTest, ListMarksLatestBestSavesInProgressAndLeftovers) {
  const std::string live = MakeTornSave(dir_, ".tmp-step-00040000-live");
  DS_ASSERT_OK_AND_ASSIGN(auto held, env_->TryLockFile(io::JoinPath(live, ".writer-0.lock")));
  MakeTornSave(dir_, ".tmp-step-00035000-torn");
  DS_ASSERT_OK(env_->CreateDirs(io::JoinPath(dir_, ".trash-step-00005000-x")));
  ShellResult fresh = Cmd("list", dir_, "--json");
  ASSERT_EQ(fresh.status, 0) << fresh.out;
  EXPECT_TRUE(Json(fresh)["temp_dirs"][0]["starting"].get<bool>());
  EXPECT_FALSE(Json(fresh)["temp_dirs"][1]["live"].get<bool>());  // too fresh to test
  Backdate(dir_);
  ShellResult r = Cmd("list", dir_, "--json");
  ASSERT_EQ(r.status, 0) << r.out;
  nlohmann::json j = Json(r);
  EXPECT_THAT(Tags(j["checkpoints"]),
              ElementsAre("step-00010000", "step-00020000", "step-00025000", "step-00030000"));
  EXPECT_EQ(j["latest"], "step-00030000");
  EXPECT_EQ(j["best"]["tag"], "step-00020000");
  EXPECT_EQ(j["best"]["value"], 1.5);
  EXPECT_TRUE(j["checkpoints"][3]["latest"].get<bool>());
  EXPECT_TRUE(j["checkpoints"][1]["best"].get<bool>());
  EXPECT_FALSE(j["checkpoints"][0]["best"].get<bool>());
  EXPECT_EQ(j["checkpoints"][2]["metrics"]["eval_loss"], 1.8);
  EXPECT_GT(j["checkpoints"][0]["bytes"].get<uint64_t>(), 0u);
  EXPECT_GT(j["checkpoints"][0]["created_micros"].get<int64_t>(), 0);
  ASSERT_EQ(j["temp_dirs"].size(), 2u);
  EXPECT_EQ(j["temp_dirs"][0]["name"], ".tmp-step-00035000-torn");
  EXPECT_FALSE(j["temp_dirs"][0]["live"].get<bool>());
  EXPECT_FALSE(j["temp_dirs"][0]["starting"].get<bool>());
  EXPECT_TRUE(j["temp_dirs"][1]["live"].get<bool>());
  EXPECT_EQ(j["trash_dirs"].size(), 1u);
  ShellResult text = Cmd("list", dir_);
  ASSERT_EQ(text.status, 0) << text.out;
  EXPECT_THAT(text.out, HasSubstr("4 checkpoint(s)"));
  EXPECT_THAT(text.out, HasSubstr("latest step-00030000, best step-00020000 (eval_loss = 1.5"));
  EXPECT_THAT(text.out, HasSubstr("save in progress: .tmp-step-00040000-live"));
  EXPECT_THAT(text.out, HasSubstr("a writer holds .writer-0.lock"));
  EXPECT_THAT(text.out, HasSubstr("torn (no live writer; 'dsckpt gc' removes it): "
                                  ".tmp-step-00035000-torn"));
  EXPECT_THAT(text.out, HasSubstr("leftover of a removal: .trash-step-00005000-x"));
}

TEST_F(DsckptCatalogTest, WhatIsNotASaveDirectoryIsAUsageError) {
  DS_ASSERT_OK(env_->CreateDirs(tmp_.Join("empty")));
  for (const std::string cmd : {"list", "best", "gc", "prune"}) {
    const std::string flags = cmd == "prune" ? "--keep-last 1" : "";
    ShellResult missing = Cmd(cmd, tmp_.Join("nope"), flags);
    EXPECT_EQ(missing.status, 2) << cmd << ": " << missing.out;
    EXPECT_THAT(missing.out, HasSubstr("does not exist; expected a save directory")) << cmd;
    ShellResult empty = Cmd(cmd, tmp_.Join("empty"), flags);
    EXPECT_EQ(empty.status, 2) << cmd << ": " << empty.out;
    EXPECT_THAT(empty.out, HasSubstr("is not a save directory")) << cmd;
    ShellResult ckpt = Cmd(cmd, io::JoinPath(dir_, "step-00010000"), flags);
    EXPECT_EQ(ckpt.status, 2) << cmd << ": " << ckpt.out;
    EXPECT_THAT(ckpt.out, HasSubstr("is a checkpoint, not a save directory: use its parent"));
    ShellResult no_dir = Sh(Dsckpt() + " " + cmd);
    EXPECT_EQ(no_dir.status, 2) << cmd << ": " << no_dir.out;
  }
  EXPECT_FALSE(*env_->Exists(tmp_.Join("nope")));  // nothing was created
}

TEST_F(DsckptCatalogTest, BestPrintsAndSetsThePointer) {
  ShellResult show = Cmd("best", dir_, "--json");
  ASSERT_EQ(show.status, 0) << show.out;
  EXPECT_EQ(Json(show)["best"]["tag"], "step-00020000");
  EXPECT_TRUE(Json(show)["exists"].get<bool>());
  ShellResult set = Cmd("best", dir_, "--set step-00025000 --metric eval_loss --mode min --json");
  ASSERT_EQ(set.status, 0) << set.out;
  EXPECT_EQ(Json(set)["best"]["value"], 1.8);
  ShellResult text = Cmd("best", dir_);
  EXPECT_THAT(text.out, HasSubstr("best of " + dir_ + ": step-00025000 (eval_loss = 1.8, min)"));
  ShellResult again = Cmd("best", dir_, "--set step-00030000");  // metric and mode kept
  ASSERT_EQ(again.status, 0) << again.out;
  EXPECT_THAT(again.out, HasSubstr("is now step-00030000 (eval_loss = 1.7, min)"));

  ShellResult absent = Cmd("best", dir_, "--set step-00099999 --metric eval_loss");
  EXPECT_EQ(absent.status, 2);
  EXPECT_THAT(absent.out, HasSubstr("'step-00099999' is not a committed checkpoint"));
  ShellResult no_metric = Cmd("best", dir_, "--set step-00010000 --metric accuracy");
  EXPECT_EQ(no_metric.status, 2);
  EXPECT_THAT(no_metric.out,
              HasSubstr("checkpoint step-00010000 has no numeric metric 'accuracy'"));
  ShellResult lone = Cmd("best", dir_, "--metric eval_loss");
  EXPECT_EQ(lone.status, 2);
  EXPECT_THAT(lone.out, HasSubstr("go with --set"));
  EXPECT_EQ(Cmd("best", dir_, "--set step-00010000 --mode up").status, 2);
  EXPECT_EQ(Json(Cmd("best", dir_, "--json"))["best"]["tag"], "step-00030000");
}

TEST_F(DsckptCatalogTest, PruneSaysWhatItRemovesAndNeedsAPolicy) {
  ShellResult none = Cmd("prune", dir_);
  EXPECT_EQ(none.status, 2);
  EXPECT_THAT(none.out, HasSubstr("prune needs a policy: say what to keep with --keep-last N"));
  ShellResult bad_size = Cmd("prune", dir_, "--max-size lots");
  EXPECT_EQ(bad_size.status, 2);
  EXPECT_THAT(bad_size.out, HasSubstr("--max-size: 'lots' is not a size"));
  ShellResult dry = Cmd("prune", dir_, "--keep-last 1 --dry-run --json");
  ASSERT_EQ(dry.status, 0) << dry.out;
  // step 30000 is the last (and latest), step 20000 is best.
  EXPECT_THAT(Tags(Json(dry)["removed"]), ElementsAre("step-00010000", "step-00025000"));
  EXPECT_TRUE(Json(dry)["dry_run"].get<bool>());
  EXPECT_EQ(Json(Cmd("list", dir_, "--json"))["checkpoints"].size(), 4u);
  ShellResult real = Cmd("prune", dir_, "--keep-last 1 --json");
  ASSERT_EQ(real.status, 0) << real.out;
  EXPECT_EQ(Json(real)["removed"], Json(dry)["removed"]);
  EXPECT_GT(Json(real)["freed_bytes"].get<uint64_t>(), 0u);
  EXPECT_THAT(Tags(Json(Cmd("list", dir_, "--json"))["checkpoints"]),
              ElementsAre("step-00020000", "step-00030000"));
  ShellResult text = Cmd("prune", dir_, "--keep-last 1");
  EXPECT_THAT(text.out, HasSubstr("removed 0 checkpoint(s)"));
}

TEST_F(DsckptCatalogTest, GcRemovesLeftoversAndLeavesALiveSave) {
  const std::string live = MakeTornSave(dir_, ".tmp-step-00040000-live");
  DS_ASSERT_OK_AND_ASSIGN(auto held, env_->TryLockFile(io::JoinPath(live, ".writer-0.lock")));
  const std::string torn = MakeTornSave(dir_, ".tmp-step-00035000-torn");
  const std::string trash = io::JoinPath(dir_, ".trash-step-00005000-x");
  DS_ASSERT_OK(env_->CreateDirs(trash));
  const std::string stray = io::JoinPath(dir_, "step-00010000/stray.tmp");
  DS_ASSERT_OK(env_->WriteFileSynced(stray, "junk"));
  ShellResult fresh = Cmd("gc", dir_, "--older-than 0s --json");
  ASSERT_EQ(fresh.status, 0) << fresh.out;
  EXPECT_EQ(Json(fresh)["removed"].size(), 2u);  // the trash and the stray file
  EXPECT_EQ(Json(fresh)["kept"].size(), 2u);     // both saves may be starting
  EXPECT_FALSE(*env_->Exists(trash));
  EXPECT_FALSE(*env_->Exists(stray));

  Backdate(live);
  Backdate(torn);
  ShellResult young = Cmd("gc", dir_, "--older-than 3h --json");
  ASSERT_EQ(young.status, 0) << young.out;
  EXPECT_EQ(Json(young)["removed"].size(), 0u);
  ShellResult dry = Cmd("gc", dir_, "--dry-run --json");  // default 1h
  ASSERT_EQ(dry.status, 0) << dry.out;
  ASSERT_EQ(Json(dry)["removed"].size(), 1u);
  EXPECT_EQ(Json(dry)["removed"][0]["path"], torn);
  EXPECT_EQ(Json(dry)["removed"][0]["kind"], "temp");
  EXPECT_TRUE(*env_->Exists(torn));
  ShellResult real = Cmd("gc", dir_);
  ASSERT_EQ(real.status, 0) << real.out;
  EXPECT_THAT(real.out, HasSubstr("removed 1 item(s)"));
  EXPECT_THAT(real.out, HasSubstr("kept temp " + live +
                                  ": a save in progress: a live writer "
                                  "holds .writer-0.lock"));
  EXPECT_FALSE(*env_->Exists(torn));
  EXPECT_TRUE(*env_->Exists(io::JoinPath(live, "rank-00000.dss")));
  EXPECT_EQ(Cmd("gc", dir_, "--older-than soon").status, 2);
}

// A link inside a checkpoint (a tokenizer linked to the data directory): the dry run says only
// the link goes, and gc removes only the link.
TEST_F(DsckptCatalogTest, GcRemovesALinkAsALinkAndSaysSo) {
  io::Env* env = io::Env::Default();
  const std::string data = tmp_.Join("data");
  DS_ASSERT_OK(env->CreateDirs(data));
  DS_ASSERT_OK(env->WriteFileSynced(data + "/corpus.bin", "do not lose"));
  const std::string link = dir_ + "/step-00010000/tokenizer";
  ASSERT_EQ(::symlink("../../data", link.c_str()), 0);
  ShellResult dry = Cmd("gc", dir_, "--dry-run");
  ASSERT_EQ(dry.status, 0) << dry.out;
  EXPECT_THAT(dry.out, HasSubstr("would remove unreferenced " + link +
                                 ", 10 B: a symbolic link "
                                 "to '../../data', not referenced by the manifest of checkpoint "
                                 "step-00010000: removes the link only, not its target"));
  EXPECT_TRUE(env->LinkStat(link).ok());
  ShellResult gc = Cmd("gc", dir_, "--json");
  ASSERT_EQ(gc.status, 0) << gc.out;
  EXPECT_EQ(Json(gc)["removed"][0]["path"], link);
  EXPECT_FALSE(env->LinkStat(link).ok());
  DS_ASSERT_OK_AND_ASSIGN(std::string corpus, env->ReadFileToString(data + "/corpus.bin"));
  EXPECT_EQ(corpus, "do not lose");
}

// A `latest` of 50 MiB, or holding a NUL byte: list says so, quoted and short, and goes on.
TEST_F(DsckptCatalogTest, ListQuotesALatestThatIsNotAPointer) {
  io::Env* env = io::Env::Default();
  DS_ASSERT_OK(env->WriteFileSynced(dir_ + "/latest", std::string(50 << 20, 'x')));
  ShellResult big = Cmd("list", dir_);
  ASSERT_EQ(big.status, 0) << big.out.substr(0, 2000);
  EXPECT_THAT(big.out, HasSubstr("latest: UNREADABLE: " + dir_ +
                                 "/latest is 50.0 MiB: not a "
                                 "pointer"));
  EXPECT_LT(big.out.size(), 4000u);
  DS_ASSERT_OK(env->WriteFileSynced(dir_ + "/latest", std::string("step-\0\x01\n", 8)));
  ShellResult nul = Cmd("list", dir_);
  ASSERT_EQ(nul.status, 0) << nul.out;
  EXPECT_THAT(nul.out, HasSubstr("latest: UNREADABLE: latest: 'step-\\x00\\x01' cannot be a "
                                 "checkpoint tag"));
}

TEST_F(DsckptCatalogTest, ABusySaveDirectoryFailsWithinTheWait) {
  ckpt::Catalog cat(env_, dir_);
  DS_ASSERT_OK_AND_ASSIGN(auto held, cat.Lock(0));
  const uint64_t start = env_->NowMicros();
  for (const std::string cmd : {"prune --keep-last 1", "gc", "best --set step-00010000"}) {
    const std::string sub = cmd.substr(0, cmd.find(' '));
    const std::string flags = cmd.find(' ') == std::string::npos ? "" : cmd.substr(cmd.find(' '));
    ShellResult r = Cmd(sub, dir_, flags + " --lock-wait 1s");
    EXPECT_EQ(r.status, 2) << cmd << ": " << r.out;
    EXPECT_THAT(r.out, HasSubstr("is busy: another save, prune or gc has held its catalog lock"));
    EXPECT_THAT(r.out, HasSubstr("--lock-wait")) << cmd;
  }
  EXPECT_LT(env_->NowMicros() - start, 20'000'000u);
  EXPECT_EQ(Cmd("list", dir_).status, 0);  // list takes no lock
}

TEST_F(DsckptCatalogTest, HelpShowsExamples) {
  for (const std::string cmd : {"list", "best", "prune", "gc"}) {
    ShellResult r = Sh(Dsckpt() + " " + cmd + " --help");
    EXPECT_EQ(r.status, 0) << cmd;
    EXPECT_THAT(r.out, HasSubstr("Examples:\n  dsckpt " + cmd)) << cmd;
  }
}

// The dsckpt command lines of docs/operations.md (shell lines and cron lines), each run on a
// fresh save directory standing in for /ckpts/run1: every one must succeed.
std::vector<std::string> DocCommands() {
  auto doc = io::Env::Default()->ReadFileToString(testing::SourceDir() + "/docs/operations.md");
  EXPECT_TRUE(doc.ok()) << doc.status().ToString();
  std::vector<std::string> out;
  std::istringstream in(doc.ok() ? *doc : "");
  bool in_code = false;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("```", 0) == 0) {
      in_code = !in_code;
      continue;
    }
    size_t at = line.rfind("dsckpt ", 0) == 0 ? 0 : line.find(" dsckpt ");
    const bool cron = !line.empty() && (line[0] == '*' || line[0] == '@' || isdigit(line[0]));
    if (!in_code || at == std::string::npos || (at != 0 && !cron)) continue;
    std::string cmd = line.substr(at == 0 ? 0 : at + 1);
    for (const char* end : {" >", " 2>", " |", " #", ";", " &&"}) {
      cmd = cmd.substr(0, cmd.find(end));
    }
    out.push_back(cmd);
  }
  return out;
}

TEST(DsckptOperationsDocTest, EveryCommandLineInTheDocRuns) {
  const std::vector<std::string> cmds = DocCommands();
  EXPECT_GE(cmds.size(), 8u) << "docs/operations.md lost its examples";
  for (const std::string& cmd : cmds) {
    testing::TempDir tmp;
    const std::string dir = tmp.Join("run1");
    MakeSaveDir(dir);
    MakeTornSave(dir, ".tmp-step-00040000-abc");
    std::string line = cmd;
    for (size_t at; (at = line.find("/ckpts/run1")) != std::string::npos;) {
      line.replace(at, 11, bench::ShellQuote(dir));
    }
    ShellResult r = Sh(Dsckpt() + line.substr(6));
    EXPECT_EQ(r.status, 0) << cmd << "\n" << r.out;
    EXPECT_THAT(r.out, Not(HasSubstr("Run with --help"))) << cmd;
  }
}

}  // namespace
}  // namespace ds
