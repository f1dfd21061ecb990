// `dsckpt bench io` end to end on a small file: the table, the JSON line's fields, and the
// exit codes for bad arguments.
#include <nlohmann/json.hpp>

#include "bench/fio.h"
#include "testing/matchers.h"
#include "testing/paths.h"

namespace ds {
namespace {

std::string Dsckpt() { return testing::BuildDir() + "/dsckpt"; }

TEST(DsckptBenchIo, JsonLineHasTheDocumentedFields) {
  testing::TempDir dir;
  int status = 0;
  std::optional<std::string> out = bench::RunCapture(
      Dsckpt() + " bench io --dir " + bench::ShellQuote(dir.path()) +
          " --size 8M --repeat 1 --json --no-fio 2>/dev/null",
      &status);
  ASSERT_TRUE(out.has_value()) << "exit status " << status;
  nlohmann::json j = nlohmann::json::parse(*out);
  for (const char* key : {"backend", "write_bps", "read_bps", "fio_write_bps", "fio_read_bps"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_GT(j["write_bps"].get<double>(), 0);
  EXPECT_GT(j["read_bps"].get<double>(), 0);
  EXPECT_TRUE(j["fio_write_bps"].is_null());  // --no-fio
  EXPECT_TRUE(j["backends"].contains("pwrite"));
}

TEST(DsckptBenchIo, BadArgumentsExitTwoWithAMessage) {
  int status = 0;
  EXPECT_FALSE(bench::RunCapture(Dsckpt() + " bench io --size lots 2>&1", &status));
  EXPECT_EQ(status, 2);
  std::optional<std::string> msg =
      bench::RunCapture(Dsckpt() + " bench io --size lots 2>&1; true", &status);
  ASSERT_TRUE(msg.has_value());
  EXPECT_THAT(*msg, ::testing::HasSubstr("--size: 'lots' is not a size"));
  EXPECT_FALSE(bench::RunCapture(Dsckpt() + " bench io --dir /nonexistent/x 2>&1", &status));
  EXPECT_EQ(status, 2);
  EXPECT_FALSE(bench::RunCapture(Dsckpt() + " 2>&1", &status));
  EXPECT_EQ(status, 2);
}

}  // namespace
}  // namespace ds
