#include "io/status.h"

#include <cerrno>

#include "io/log.h"
#include "io/units.h"
#include "testing/matchers.h"

namespace ds {
namespace {

using ::ds::testing::StatusIs;
using ::testing::HasSubstr;

TEST(StatusTest, ErrnoMapsToCodes) {
  EXPECT_THAT(ErrnoStatus("open /x", ENOENT), StatusIs(StatusCode::kNotFound, HasSubstr("/x")));
  Status full = ErrnoStatus("write /x", ENOSPC);
  EXPECT_TRUE(full.IsNoSpace());
  EXPECT_EQ(full.sys_errno(), ENOSPC);
  EXPECT_THAT(full, StatusIs(StatusCode::kNoSpace, HasSubstr("free space")));
  EXPECT_THAT(ErrnoStatus("read /x", EIO), StatusIs(StatusCode::kIOError, HasSubstr("read /x")));
}

Status Inner() { return Status::Corruption("chunk 17 fails its checksum"); }
Status Outer() {
  DS_RETURN_IF_ERROR(Inner()) << "while reading rank-00003.dss";
  return Status::OK();
}
Result<int> Value(bool ok) {
  if (!ok) return Status::InvalidArgument("no value");
  return 42;
}
Result<int> Doubled(bool ok) {
  DS_ASSIGN_OR_RETURN(int v, Value(ok));
  return 2 * v;
}
Result<int> WithContext() {
  DS_RETURN_IF_ERROR(Inner()) << "loading";
  return 1;
}

TEST(StatusTest, ContextIsAddedOnceOnTheWayUp) {
  Status s = Outer();
  EXPECT_EQ(s.ToString(), "Corruption: while reading rank-00003.dss: chunk 17 fails its checksum");
  EXPECT_EQ(s.WithContext("while reading rank-00003.dss").message(), s.message());
  EXPECT_THAT(WithContext(), StatusIs(StatusCode::kCorruption, HasSubstr("loading: chunk 17")));
}

TEST(StatusTest, ResultCarriesValueOrError) {
  Result<int> ok = Doubled(true);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 84);
  EXPECT_THAT(Doubled(false), StatusIs(StatusCode::kInvalidArgument, HasSubstr("no value")));
  EXPECT_TRUE(Status().ok());
  EXPECT_EQ(Status().ToString(), "OK");
}

}  // namespace
}  // namespace ds

namespace ds::io {
namespace {

using ::ds::testing::StatusIs;
using ::testing::HasSubstr;

TEST(UnitsTest, ParsesSizesAsPeopleWriteThem) {
  EXPECT_EQ(*ParseByteSize("4G"), uint64_t{4} << 30);
  EXPECT_EQ(*ParseByteSize("512M"), uint64_t{512} << 20);
  EXPECT_EQ(*ParseByteSize("1.5GiB"), uint64_t{3} << 29);
  EXPECT_EQ(*ParseByteSize("500GB"), uint64_t{500} * 1000 * 1000 * 1000);
  EXPECT_EQ(*ParseByteSize("4096"), 4096u);
  EXPECT_EQ(*ParseByteSize("2 k"), 2048u);
  EXPECT_THAT(ParseByteSize("lots"), StatusIs(StatusCode::kInvalidArgument, HasSubstr("'lots'")));
  EXPECT_THAT(ParseByteSize("4Q"), StatusIs(StatusCode::kInvalidArgument, HasSubstr("unit 'q'")));
  EXPECT_THAT(ParseByteSize("-1G"), StatusIs(StatusCode::kInvalidArgument, HasSubstr("-1G")));
}

TEST(UnitsTest, ParsesDurations) {
  EXPECT_EQ(*ParseDurationSeconds("90"), 90u);
  EXPECT_EQ(*ParseDurationSeconds("30m"), 1800u);
  EXPECT_EQ(*ParseDurationSeconds("1h"), 3600u);
  EXPECT_EQ(*ParseDurationSeconds("2d"), 172800u);
  EXPECT_THAT(ParseDurationSeconds("1y"), StatusIs(StatusCode::kInvalidArgument, HasSubstr("'y'")));
  EXPECT_EQ(FormatRate(2.5e9), "2.50 GB/s");
}

// What a file holds, quoted in a message: a NUL cannot cut the message, and 50 MB are not echoed.
TEST(QuoteForMessageTest, EscapesAndCuts) {
  EXPECT_EQ(io::QuoteForMessage("step-00000100"), "'step-00000100'");
  EXPECT_EQ(io::QuoteForMessage(std::string("step-\0\x01\n", 8)), "'step-\\x00\\x01\\x0a'");
  EXPECT_EQ(io::QuoteForMessage("it's a \\"), "'it\\'s a \\\\'");
  EXPECT_EQ(io::QuoteForMessage("\xff\x7f"), "'\\xff\\x7f'");
  EXPECT_EQ(io::QuoteForMessage(std::string(50 << 20, 'a'), 4), "'aaaa'... (52428800 bytes)");
  EXPECT_EQ(io::QuoteForMessage(std::string(64, 'a')), "'" + std::string(64, 'a') + "'");
  EXPECT_EQ(io::QuoteForMessage(std::string(65, 'a')).size(),
            66u + std::string("... (65 bytes)").size());
}

}  // namespace
}  // namespace ds::io
