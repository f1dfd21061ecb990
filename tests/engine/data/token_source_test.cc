// TokenSource: every format reads back what was written (in memory and through a real mmap),
// the format is detected as documented, damaged llm.c headers and odd nanoGPT files are refused
// with messages that name the file, and a token outside the model's vocabulary is reported with
// its index in the file.
#include "engine/data/token_source.h"

#include <vector>

#include "io/mem_env.h"
#include "testing/matchers.h"
#include "tests/engine/data/data_test_util.h"

namespace ds::engine {
namespace {

using ::ds::engine::testing::LlmcBytes;
using ::ds::engine::testing::NanoGptBytes;
using ::ds::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::Eq;
using ::testing::HasSubstr;
using Format = DataConfig::Format;
using namespace std::string_literals;

class DataTokenSourceTest : public ::testing::Test {
 protected:
  void SetUp() override { DS_ASSERT_OK(env_.CreateDirs("/d")); }
  void Write(const std::string& path, const std::string& bytes) {
    DS_ASSERT_OK(env_.WriteFileSynced(path, bytes));
  }
  Result<TokenSource> Open(const std::string& path, Format format = Format::kAuto,
                           int64_t vocab = 0) {
    return TokenSource::Open(&env_, path, {.format = format, .vocab = vocab});
  }
  static std::vector<uint32_t> All(const TokenSource& s) {
    std::vector<uint32_t> out;
    for (uint64_t i = 0; i < s.size(); ++i) out.push_back(s.Token(i));
    return out;
  }

  io::MemEnv env_;
};

TEST_F(DataTokenSourceTest, NanoGptRoundTrip) {
  const std::vector<uint32_t> tokens = {0, 1, 65535, 50256, 7, 300};
  Write("/d/train.bin", NanoGptBytes(tokens));
  DS_ASSERT_OK_AND_ASSIGN(TokenSource s, Open("/d/train.bin"));
  EXPECT_EQ(s.format(), Format::kNanoGpt);
  EXPECT_THAT(All(s), ElementsAreArray(tokens));
  EXPECT_EQ(s.Describe(), "/d/train.bin (nanogpt, 6 tokens)");

  std::vector<int64_t> inputs(4), targets(4);
  DS_ASSERT_OK(s.ReadWindow(1, inputs, targets));
  EXPECT_THAT(inputs, ElementsAre(1, 65535, 50256, 7));
  EXPECT_THAT(targets, ElementsAre(65535, 50256, 7, 300));
}

TEST_F(DataTokenSourceTest, LlmcGpt2RoundTrip) {
  const std::vector<uint32_t> tokens = {50256, 464, 2068, 65535, 0};
  Write("/d/fineweb_train_000001.bin", LlmcBytes(20240520, 1, 5, tokens, 2));
  DS_ASSERT_OK_AND_ASSIGN(TokenSource s, Open("/d/fineweb_train_000001.bin"));
  EXPECT_EQ(s.format(), Format::kLlmc);
  EXPECT_THAT(All(s), ElementsAreArray(tokens));
}

// docs/data.md's worked example, byte for byte.
TEST_F(DataTokenSourceTest, LlmcDocExample) {
  std::string bytes = "\x88\xd8\x34\x01\x01\x00\x00\x00\x03\x00\x00\x00"s;
  bytes += std::string(1012, '\0') + "\x50\xc4\xd0\x01\x14\x08"s;
  ASSERT_EQ(bytes.size(), 1030u);
  Write("/d/example.bin", bytes);
  DS_ASSERT_OK_AND_ASSIGN(TokenSource s, Open("/d/example.bin"));
  EXPECT_EQ(s.format(), Format::kLlmc);
  EXPECT_THAT(All(s), ElementsAre(50256, 464, 2068));
}

TEST_F(DataTokenSourceTest, LlmcLlama3RoundTripHasUint32Tokens) {
  const std::vector<uint32_t> tokens = {128000, 9906, 1917, 128001, 70000};
  Write("/d/llama.bin", LlmcBytes(20240801, 7, 5, tokens, 4));
  DS_ASSERT_OK_AND_ASSIGN(TokenSource s, Open("/d/llama.bin", Format::kLlmc));
  EXPECT_EQ(s.format(), Format::kLlmc);
  EXPECT_THAT(All(s), ElementsAreArray(tokens));
}

TEST_F(DataTokenSourceTest, TextRoundTripIsOneTokenPerByte) {
  Write("/d/notes.txt", "h\xc3\xa9llo\n");  // "héllo\n" in UTF-8
  DS_ASSERT_OK_AND_ASSIGN(TokenSource s, Open("/d/notes.txt"));
  EXPECT_EQ(s.format(), Format::kText);
  EXPECT_THAT(All(s), ElementsAre('h', 0xc3, 0xa9, 'l', 'l', 'o', '\n'));
}

TEST_F(DataTokenSourceTest, AutoDetectionLooksAtExtensionThenMagic) {
  const std::string llmc = LlmcBytes(20240520, 1, 2, {1, 2}, 2);
  Write("/d/a.BIN", llmc);
  Write("/d/a.txt", llmc);
  Write("/d/a.dat", NanoGptBytes({1, 2, 3}));
  DS_ASSERT_OK_AND_ASSIGN(TokenSource bin, Open("/d/a.BIN"));
  EXPECT_EQ(bin.format(), Format::kLlmc);
  DS_ASSERT_OK_AND_ASSIGN(TokenSource txt, Open("/d/a.txt"));
  EXPECT_EQ(txt.format(), Format::kText);
  EXPECT_EQ(txt.size(), llmc.size());
  DS_ASSERT_OK_AND_ASSIGN(TokenSource dat, Open("/d/a.dat", Format::kNanoGpt));
  EXPECT_THAT(All(dat), ElementsAre(1, 2, 3));
  // An explicit nanogpt reads an llm.c file's header as tokens: the user asked for it.
  DS_ASSERT_OK_AND_ASSIGN(TokenSource raw, Open("/d/a.BIN", Format::kNanoGpt));
  EXPECT_EQ(raw.size(), 514u);
}

TEST_F(DataTokenSourceTest, LlmcBadMagic) {
  Write("/d/x.bin", LlmcBytes(12345, 1, 2, {1, 2}, 2));
  EXPECT_THAT(Open("/d/x.bin", Format::kLlmc),
              StatusIs(StatusCode::kCorruption,
                       Eq("data file /d/x.bin (format llmc): llm.c header has magic 12345, "
                          "expected 20240520 (uint16 tokens) or 20240801 (uint32 tokens) (not an "
                          "llm.c file? set data.format)")));
}

TEST_F(DataTokenSourceTest, LlmcBadVersion) {
  Write("/d/x.bin", LlmcBytes(20240520, 3, 2, {1, 2}, 2));
  EXPECT_THAT(Open("/d/x.bin", Format::kLlmc),
              StatusIs(StatusCode::kCorruption,
                       Eq("data file /d/x.bin (format llmc): llm.c header has version 3 with "
                          "magic 20240520; dstrain reads version 1 (uint16 tokens) for it "
                          "(written by a newer llm.c?)")));
  Write("/d/y.bin", LlmcBytes(20240801, 1, 2, {1, 2}, 4));
  EXPECT_THAT(Open("/d/y.bin"),
              StatusIs(StatusCode::kCorruption,
                       HasSubstr("version 1 with magic 20240801; dstrain reads version 7 (uint32 "
                                 "tokens)")));
}

TEST_F(DataTokenSourceTest, LlmcTokenCountMustMatchFileSize) {
  Write("/d/short.bin", LlmcBytes(20240520, 1, 5, {1, 2, 3}, 2));
  EXPECT_THAT(Open("/d/short.bin", Format::kLlmc),
              StatusIs(StatusCode::kCorruption,
                       Eq("data file /d/short.bin (format llmc): llm.c header says 5 tokens (10 "
                          "bytes after the header) but the file has 6 bytes after it (truncated, "
                          "or still being written?)")));
  Write("/d/long.bin", LlmcBytes(20240520, 1, 2, {1, 2, 3}, 2));
  EXPECT_THAT(Open("/d/long.bin", Format::kLlmc),
              StatusIs(StatusCode::kCorruption, HasSubstr("llm.c header says 2 tokens (4 bytes")));
  Write("/d/negative.bin", LlmcBytes(20240520, 1, -1, {}, 2));
  EXPECT_THAT(Open("/d/negative.bin", Format::kLlmc),
              StatusIs(StatusCode::kCorruption, HasSubstr("llm.c header says -1 tokens")));
  // Auto-detected by its magic: the error names the other .bin format.
  Write("/d/auto.bin", LlmcBytes(20240520, 1, 9, {1, 2}, 2));
  EXPECT_THAT(Open("/d/auto.bin"),
              StatusIs(StatusCode::kCorruption,
                       Eq("data file /d/auto.bin (format llmc): llm.c header says 9 tokens (18 "
                          "bytes after the header) but the file has 4 bytes after it (truncated, "
                          "or still being written?) (if it is a nanoGPT file, set data.format to "
                          "\"nanogpt\")")));
}

TEST_F(DataTokenSourceTest, LlmcShorterThanHeader) {
  Write("/d/tiny.bin", NanoGptBytes({1, 2}));
  EXPECT_THAT(Open("/d/tiny.bin", Format::kLlmc),
              StatusIs(StatusCode::kCorruption,
                       Eq("data file /d/tiny.bin (format llmc): 4 bytes is shorter than llm.c's "
                          "1024-byte header (not an llm.c file? set data.format)")));
}

TEST_F(DataTokenSourceTest, NanoGptOddSize) {
  Write("/d/odd.bin", NanoGptBytes({1, 2}) + "x");
  EXPECT_THAT(Open("/d/odd.bin"),
              StatusIs(StatusCode::kCorruption,
                       Eq("data file /d/odd.bin (format nanogpt): 5 bytes is not a whole number "
                          "of uint16 tokens (nanoGPT .bin files hold 2 bytes per token; "
                          "truncated?)")));
}

TEST_F(DataTokenSourceTest, EmptyAndMissingFiles) {
  Write("/d/empty.txt", "");
  EXPECT_THAT(Open("/d/empty.txt"),
              StatusIs(StatusCode::kInvalidArgument,
                       Eq("data file /d/empty.txt (format text) holds no tokens")));
  Write("/d/empty.bin", LlmcBytes(20240520, 1, 0, {}, 2));
  EXPECT_THAT(Open("/d/empty.bin"),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("(format llmc) holds no tokens")));
  EXPECT_THAT(Open("/d/none.bin"),
              StatusIs(StatusCode::kNotFound,
                       HasSubstr("data file /d/none.bin (set data.path to a token or text file, "
                                 "or leave it empty for the built-in corpus)")));
}

TEST_F(DataTokenSourceTest, TokenAtOrAboveVocabIsReportedWithItsIndexInTheFile) {
  std::vector<uint32_t> tokens(20, 100);
  tokens[13] = 50257;
  tokens[15] = 60000;
  Write("/d/train.bin", NanoGptBytes(tokens));
  DS_ASSERT_OK_AND_ASSIGN(TokenSource s, Open("/d/train.bin", Format::kAuto, 50257));
  std::vector<int64_t> inputs(4), targets(4);
  DS_EXPECT_OK(s.ReadWindow(8, inputs, targets));  // tokens 8..12
  // Through a slice, the index is still the token's index in the file.
  const TokenSource tail = s.Slice(10, 20);
  EXPECT_THAT(tail.ReadWindow(0, inputs, targets),
              StatusIs(StatusCode::kInvalidArgument,
                       Eq("data file /d/train.bin: token 13 is 50257, not below model.vocab 50257 "
                          "(the file was tokenized for a larger vocabulary: raise model.vocab "
                          "above 50257 or re-tokenize)")));
  // The last target counts too.
  EXPECT_THAT(s.ReadWindow(9, inputs, targets),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("token 13 is 50257")));
}

TEST_F(DataTokenSourceTest, TextNeedsAVocabOfAtLeast256) {
  Write("/d/a.txt", "plain ascii, then \xff");
  DS_ASSERT_OK_AND_ASSIGN(TokenSource s, Open("/d/a.txt", Format::kAuto, 128));
  std::vector<int64_t> inputs(18), targets(18);
  EXPECT_THAT(s.ReadWindow(0, inputs, targets),
              StatusIs(StatusCode::kInvalidArgument,
                       Eq("data file /d/a.txt: token 18 is 255, not below model.vocab 128 (text "
                          "files use one token per byte, so model.vocab must be at least 256)")));
}

TEST_F(DataTokenSourceTest, WindowPastTheEndIsRefused) {
  Write("/d/a.txt", "abcdef");
  DS_ASSERT_OK_AND_ASSIGN(TokenSource s, Open("/d/a.txt"));
  std::vector<int64_t> inputs(5), targets(5);
  DS_EXPECT_OK(s.ReadWindow(0, inputs, targets));
  EXPECT_THAT(s.ReadWindow(1, inputs, targets),
              StatusIs(StatusCode::kInvalidArgument,
                       Eq("data file /d/a.txt: window of 6 tokens at 1 does not fit 6 tokens")));
}

TEST_F(DataTokenSourceTest, SliceSharesTheMapping) {
  Write("/d/a.txt", "0123456789");
  DS_ASSERT_OK_AND_ASSIGN(TokenSource s, Open("/d/a.txt"));
  const TokenSource mid = s.Slice(3, 7);
  EXPECT_EQ(mid.size(), 4u);
  EXPECT_EQ(mid.first_token(), 3u);
  EXPECT_THAT(All(mid), ElementsAre('3', '4', '5', '6'));
  EXPECT_EQ(s.Slice(8, 100).size(), 2u);  // clamped to the view
}

TEST(DataTokenSourceRealFileTest, ReadsThroughMmap) {
  ::ds::testing::TempDir dir;
  const std::vector<uint32_t> tokens = {11, 22, 33, 44, 55};
  const std::string path = dir.Join("tokens.bin");
  DS_ASSERT_OK(io::Env::Default()->WriteFileSynced(path, LlmcBytes(20240520, 1, 5, tokens, 2)));
  DS_ASSERT_OK_AND_ASSIGN(TokenSource s,
                          TokenSource::Open(io::Env::Default(), path, {.vocab = 50257}));
  EXPECT_EQ(s.format(), Format::kLlmc);
  std::vector<int64_t> inputs(4), targets(4);
  DS_ASSERT_OK(s.ReadWindow(0, inputs, targets));
  EXPECT_THAT(inputs, ElementsAre(11, 22, 33, 44));
  EXPECT_THAT(targets, ElementsAre(22, 33, 44, 55));
}

}  // namespace
}  // namespace ds::engine
