// Every injected failure reaches the caller as a clear Status, and nothing hangs.
#include "io/fault_env.h"

#include <string>
#include <vector>

#include "io/async_io.h"
#include "io/mem_env.h"
#include "testing/matchers.h"

namespace ds::io {
namespace {

using ::ds::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

std::span<const std::byte> Bytes(std::string_view s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

class FaultEnvTest : public ::testing::TestWithParam<bool> {  // param: over PosixEnv?
 protected:
  void SetUp() override {
    base_ = GetParam() ? Env::Default() : static_cast<Env*>(&mem_);
    env_ = std::make_unique<FaultEnv>(base_);
    Result<std::string> d = env_->MakeTempDir("fault-");
    ASSERT_TRUE(d.ok());
    dir_ = *d;
  }
  void TearDown() override {
    env_->ClearRules();
    env_->SetActive(true);
    (void)env_->RemoveAll(dir_);
  }
  std::string P(std::string_view n) { return JoinPath(dir_, n); }

  MemEnv mem_;
  Env* base_ = nullptr;
  std::unique_ptr<FaultEnv> env_;
  std::string dir_;
};

TEST_P(FaultEnvTest, EachKindIsAClearStatus) {
  struct Case {
    FaultKind kind;
    StatusCode code;
    const char* text;
  };
  for (const Case& c : {Case{FaultKind::kIOError, StatusCode::kIOError, "Input/output error"},
                        Case{FaultKind::kNoSpace, StatusCode::kNoSpace, "No space left"},
                        Case{FaultKind::kInterrupted, StatusCode::kIOError, "Interrupted"}}) {
    env_->ClearRules();
    env_->AddRule({kFaultWrite, "*/victim", 0, 1, c.kind});
    DS_ASSERT_OK_AND_ASSIGN(auto f, env_->OpenFile(P("victim"), {OpenMode::kTruncate}));
    EXPECT_THAT(f->WriteAt(0, Bytes("data")),
                StatusIs(c.code, AllOf(HasSubstr("injected fault: write"), HasSubstr("victim"),
                                       HasSubstr(c.text))));
    DS_EXPECT_OK(f->WriteAt(0, Bytes("data")));  // count = 1: the next one passes
  }
}

TEST_P(FaultEnvTest, ShortWriteLandsHalfAndReportsIt) {
  env_->AddRule({kFaultWrite, "*", 0, 1, FaultKind::kShortWrite});
  DS_ASSERT_OK_AND_ASSIGN(auto f, env_->OpenFile(P("f"), {OpenMode::kTruncate}));
  EXPECT_THAT(f->WriteAt(0, Bytes("12345678")),
              StatusIs(StatusCode::kIOError, HasSubstr("short write to " + P("f") +
                                                       ": wrote 4 of 8 bytes at offset 0")));
  DS_ASSERT_OK_AND_ASSIGN(uint64_t size, f->Size());
  EXPECT_EQ(size, 4u);
}

TEST_P(FaultEnvTest, NthOperationAndPathPatternSelectTheVictim) {
  env_->AddRule({kFaultSync, "*.dss", /*skip=*/2, /*count=*/1, FaultKind::kIOError});
  DS_ASSERT_OK_AND_ASSIGN(auto dss, env_->OpenFile(P("rank-0.dss"), {OpenMode::kTruncate}));
  DS_ASSERT_OK_AND_ASSIGN(auto other, env_->OpenFile(P("manifest.h5"), {OpenMode::kTruncate}));
  DS_EXPECT_OK(other->Sync());  // does not match the pattern
  DS_EXPECT_OK(dss->Sync());
  DS_EXPECT_OK(dss->Sync());
  EXPECT_THAT(dss->Sync(), StatusIs(StatusCode::kIOError, HasSubstr("fsync")));
  DS_EXPECT_OK(dss->Sync());
  EXPECT_EQ(env_->injected_count(), 1u);
}

TEST_P(FaultEnvTest, DirectoryOperationsFail) {
  env_->AddRule({kFaultRename | kFaultSyncDir | kFaultCreateDir | kFaultRemove | kFaultLink, "*",
                 0, -1, FaultKind::kIOError});
  DS_ASSERT_OK(base_->WriteFileSynced(P("a"), "x"));
  EXPECT_THAT(env_->Rename(P("a"), P("b")), StatusIs(StatusCode::kIOError, HasSubstr("rename")));
  EXPECT_THAT(env_->SyncDir(dir_), StatusIs(StatusCode::kIOError, HasSubstr("syncdir")));
  EXPECT_THAT(env_->CreateDir(P("d")), StatusIs(StatusCode::kIOError, HasSubstr("mkdir")));
  EXPECT_THAT(env_->RemoveFile(P("a")), StatusIs(StatusCode::kIOError, HasSubstr("remove")));
  EXPECT_THAT(env_->Link(P("a"), P("c")), StatusIs(StatusCode::kIOError, HasSubstr("link")));
  env_->ClearRules();
  DS_EXPECT_OK(env_->Rename(P("a"), P("b")));
}

TEST_P(FaultEnvTest, StoppedFilesystemRefusesEverything) {
  env_->StopAfter(1);
  DS_ASSERT_OK_AND_ASSIGN(auto f, env_->OpenFile(P("f"), {OpenMode::kTruncate}));  // mutation 1
  EXPECT_THAT(f->WriteAt(0, Bytes("x")), StatusIs(StatusCode::kIOError, HasSubstr("simulated crash")));
  EXPECT_FALSE(env_->active());
  EXPECT_THAT(env_->Stat(P("f")), StatusIs(StatusCode::kIOError, HasSubstr("simulated crash")));
  if (!GetParam()) {
    DS_ASSERT_OK(env_->SimulateCrash(CrashTail::kDrop, 0));
    EXPECT_TRUE(env_->active());
  } else {
    EXPECT_THAT(env_->SimulateCrash(CrashTail::kDrop, 0),
                StatusIs(StatusCode::kFailedPrecondition, HasSubstr("MemEnv")));
  }
}

TEST_P(FaultEnvTest, AsyncWritesWithFaultsDrainWithTheError) {
  for (const char* backend : {"pwrite", "uring"}) {
    AsyncIoOptions opts;
    opts.backend = backend;
    Result<std::unique_ptr<AsyncIo>> io = OpenAsyncIo(opts);
    if (!io.ok()) {
      ASSERT_EQ(std::string(backend), "uring") << io.status().ToString();
      continue;  // io_uring forbidden here: the pwrite case covered it
    }
    env_->ClearRules();
    env_->AddRule({kFaultWrite, "*", 5, 3, FaultKind::kNoSpace});
    DS_ASSERT_OK_AND_ASSIGN(auto f, env_->OpenFile(P("async"), {OpenMode::kTruncate}));
    std::vector<char> data(64 * 1024, 'z');
    int failures = 0;
    std::mutex mu;
    for (int i = 0; i < 16; ++i) {
      (*io)->Write(f.get(), i * 4096, Bytes(std::string_view(data.data(), 4096)),
                   [&](const Status& s) {
                     std::lock_guard<std::mutex> l(mu);
                     if (!s.ok()) ++failures;
                   });
    }
    EXPECT_THAT((*io)->Drain(), StatusIs(StatusCode::kNoSpace, HasSubstr("async")));
    EXPECT_EQ(failures, 3);
    DS_EXPECT_OK((*io)->Drain());  // the error was reported once
  }
}

INSTANTIATE_TEST_SUITE_P(Bases, FaultEnvTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "posix" : "mem"; });

}  // namespace
}  // namespace ds::io
