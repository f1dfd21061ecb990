// TensorBoard event files: CRC-32C against its published check value, a round trip through our
// reader, damage detected, and TensorBoard's own reader (EventAccumulator) reading our file.
#include "engine/core/tensorboard.h"

#include <nlohmann/json.hpp>

#include "bench/fio.h"
#include "io/mem_env.h"
#include "testing/matchers.h"
#include "testing/paths.h"
#include "testing/python.h"

namespace ds::engine {
namespace {

using ::ds::testing::StatusIs;
using ::testing::HasSubstr;

TEST(TensorBoardTest, Crc32cCheckValue) {
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);  // the CRC-32C catalogue's check value
  EXPECT_EQ(Crc32c(""), 0u);
}

TEST(TensorBoardTest, RoundTripAndDamage) {
  io::MemEnv env;
  std::string path;
  {
    DS_ASSERT_OK_AND_ASSIGN(auto w, TensorBoardWriter::Open(&env, "/logs/tb"));
    for (int step = 1; step <= 300; ++step) {
      DS_ASSERT_OK(w->AddScalar("train/loss", 5.0 / step, step));
      if (step % 100 == 0) {
        DS_ASSERT_OK(w->AddScalar("eval/loss", 1.5, step));
      }
    }
    path = w->path();
  }
  DS_ASSERT_OK_AND_ASSIGN(std::vector<ScalarEvent> ev, ReadTensorBoardScalars(&env, path));
  ASSERT_EQ(ev.size(), 303u);
  EXPECT_EQ(ev[0].tag, "train/loss");
  EXPECT_EQ(ev[0].step, 1);
  EXPECT_FLOAT_EQ(static_cast<float>(ev[0].value), 5.0f);
  EXPECT_EQ(ev[100].tag, "eval/loss");
  EXPECT_EQ(ev[100].step, 100);
  DS_ASSERT_OK_AND_ASSIGN(auto f, env.OpenFile(path, {io::OpenMode::kUpdate}));
  std::byte b[1] = {std::byte{0x42}};
  DS_ASSERT_OK(f->WriteAt(200, b));
  EXPECT_THAT(ReadTensorBoardScalars(&env, path),
              StatusIs(StatusCode::kCorruption, HasSubstr("CRC mismatch")));
}

// The bytes of a SessionLog START event, as TensorBoard's own event_pb2 serialises
// Event(wall_time=1.0, step=256, session_log=SessionLog(status=START)).
TEST(TensorBoardTest, SessionStartEventBytes) {
  struct OneSecondClock : io::EnvWrapper {
    using EnvWrapper::EnvWrapper;
    int64_t WallTimeMicros() override { return 1'000'000; }
  };
  io::MemEnv mem;
  OneSecondClock env(&mem);
  std::string path;
  {
    DS_ASSERT_OK_AND_ASSIGN(auto w, TensorBoardWriter::Open(&env, "/tb"));
    DS_ASSERT_OK(w->AddSessionStart(256));
    path = w->path();
  }
  DS_ASSERT_OK_AND_ASSIGN(std::string data, env.ReadFileToString(path));
  const std::string want("\x09\0\0\0\0\0\0\xf0\x3f\x10\x80\x02\x3a\x02\x08\x01", 16);
  ASSERT_GE(data.size(), want.size() + 4);
  EXPECT_EQ(data.substr(data.size() - 4 - want.size(), want.size()), want);
  DS_ASSERT_OK_AND_ASSIGN(std::vector<ScalarEvent> ev, ReadTensorBoardScalars(&env, path));
  EXPECT_TRUE(ev.empty());  // not a scalar
}

TEST(TensorBoardTest, TensorBoardsOwnReaderReadsIt) {
  const std::string python = testing::Python();
  int status = 0;
  DS_SKIP_OR_FAIL_WITHOUT_PYTHON("tensorboard");
  testing::TempDir dir;
  {
    DS_ASSERT_OK_AND_ASSIGN(auto w, TensorBoardWriter::Open(io::Env::Default(), dir.Join("tb")));
    for (int step = 0; step < 50; ++step) {
      DS_ASSERT_OK(w->AddScalar("loss", 4.0 - step * 0.05, step));
    }
    DS_ASSERT_OK(w->AddScalar("lr", 3e-4, 49));
  }
  const char* script = R"PY(
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1])
acc.Reload()
loss = acc.Scalars("loss")
print(json.dumps({"tags": sorted(acc.Tags()["scalars"]), "n": len(loss),
                  "first": [loss[0].step, loss[0].value], "last": [loss[-1].step, loss[-1].value]}))
)PY";
  std::optional<std::string> out = bench::RunCapture(
      python + " -c " + bench::ShellQuote(script) + " " + bench::ShellQuote(dir.Join("tb")) +
          " 2>/dev/null",
      &status);
  ASSERT_TRUE(out.has_value()) << "EventAccumulator failed with status " << status;
  nlohmann::json j = nlohmann::json::parse(out->substr(out->rfind('{')));
  EXPECT_EQ(j["tags"], nlohmann::json({"loss", "lr"}));
  EXPECT_EQ(j["n"], 50);
  EXPECT_EQ(j["first"][0], 0);
  EXPECT_NEAR(j["first"][1].get<double>(), 4.0, 1e-6);
  EXPECT_EQ(j["last"][0], 49);
  EXPECT_NEAR(j["last"][1].get<double>(), 4.0 - 49 * 0.05, 1e-5);
}

}  // namespace
}  // namespace ds::engine
