#include "formats/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <optional>
#include <sstream>
#include <thread>

#include "bench/fio.h"
#include "io/fault_env.h"
#include "io/mem_env.h"
#include "testing/matchers.h"
#include "testing/paths.h"
#include "testing/python.h"

namespace ds::fmt {
namespace {

using ::ds::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::Eq;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;

// ---- helpers

struct TestTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<std::byte> bytes;  // the tensor's data, little-endian elements
};

int64_t NumElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// A tensor whose bytes follow from `seed`; BOOL bytes stay 0 or 1, as numpy and torch expect.
TestTensor MakeTensor(std::string name, DType dtype, std::vector<int64_t> shape, uint8_t seed) {
  TestTensor t{std::move(name), dtype, std::move(shape), {}};
  t.bytes.resize(static_cast<size_t>(NumElements(t.shape)) * DTypeSize(dtype));
  for (size_t i = 0; i < t.bytes.size(); ++i) {
    const auto b = static_cast<uint8_t>(seed + i * 37 + (i >> 3));
    t.bytes[i] = static_cast<std::byte>(dtype == DType::kBool ? b & 1 : b);
  }
  return t;
}

// Every dtype, a scalar and empty tensors (one between others, one at the end).
std::vector<TestTensor> SampleTensors(bool with_bf16) {
  std::vector<TestTensor> ts = {
      MakeTensor("h.0.attn.w", DType::kF32, {3, 4}, 1),
      MakeTensor("h.0.attn.b", DType::kF16, {5}, 2),
      MakeTensor("empty.middle", DType::kF64, {2, 0, 3}, 3),
      MakeTensor("wpe", DType::kF64, {2, 3}, 4),
      MakeTensor("step", DType::kI64, {}, 5),
      MakeTensor("i32", DType::kI32, {2, 2, 2}, 6),
      MakeTensor("i16", DType::kI16, {7}, 7),
      MakeTensor("i8", DType::kI8, {1, 9}, 8),
      MakeTensor("u8", DType::kU8, {10}, 9),
      MakeTensor("mask", DType::kBool, {4, 1}, 10),
  };
  if (with_bf16) ts.push_back(MakeTensor("ln_f.bf16", DType::kBF16, {2, 3}, 11));
  ts.push_back(MakeTensor("empty.last", DType::kI32, {0}, 12));
  return ts;
}

const std::map<std::string, std::string> kMetadata = {{"format", "pt"}, {"step", "1000"}};

std::vector<SafetensorsTensor> Layout(const std::vector<TestTensor>& ts) {
  std::vector<SafetensorsTensor> out;
  out.reserve(ts.size());
  for (const TestTensor& t : ts) out.push_back({t.name, t.dtype, t.shape});
  return out;
}

// Writes every tensor in `chunk`-byte pieces, last piece first, then rewrites the first piece.
Status WriteBackwards(SafetensorsWriter& w, const std::vector<TestTensor>& ts, size_t chunk) {
  for (size_t i = ts.size(); i-- > 0;) {
    const std::span<const std::byte> all(ts[i].bytes);
    for (size_t end = all.size(); end > 0;) {
      const size_t begin = end > chunk ? end - chunk : 0;
      DS_RETURN_IF_ERROR(w.WriteTensorData(i, begin, all.subspan(begin, end - begin)));
      end = begin;
    }
    if (!all.empty()) DS_RETURN_IF_ERROR(w.WriteTensorData(i, 0, all.first(1)));
  }
  return Status::OK();
}

Status WriteFile(io::Env* env, const std::string& path, const std::vector<TestTensor>& ts,
                 const std::map<std::string, std::string>& metadata) {
  DS_ASSIGN_OR_RETURN(auto w, SafetensorsWriter::Create(env, path, Layout(ts), metadata));
  DS_RETURN_IF_ERROR(WriteBackwards(*w, ts, 3));
  return w->Finish();
}

// Reads every tensor back and compares it with `ts` (any order).
void ExpectContents(const SafetensorsReader& r, const std::vector<TestTensor>& ts) {
  ASSERT_EQ(r.tensors().size(), ts.size());
  for (const TestTensor& t : ts) {
    SCOPED_TRACE(t.name);
    DS_ASSERT_OK_AND_ASSIGN(size_t i, r.Find(t.name));
    const SafetensorsTensor& info = r.tensors()[i];
    EXPECT_EQ(info.dtype, t.dtype);
    EXPECT_EQ(info.shape, t.shape);
    std::vector<std::byte> got(info.nbytes());
    DS_ASSERT_OK(r.ReadTensorData(i, 0, got));
    EXPECT_EQ(got, t.bytes);
  }
}

std::string Hex(std::span<const std::byte> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s;
  for (std::byte b : bytes) {
    s += kDigits[std::to_integer<int>(b) >> 4];
    s += kDigits[std::to_integer<int>(b) & 15];
  }
  return s;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Lines "name dtype [shape] hex", one per tensor, sorted: what the Python snippets print too.
std::string SortedLines(std::vector<std::string> lines) {
  std::sort(lines.begin(), lines.end());
  std::string s;
  for (const std::string& l : lines) s += l + "\n";
  return s;
}
std::string Line(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                 std::span<const std::byte> bytes) {
  return name + " " + std::string(DTypeName(dtype)) + " " + ShapeText(shape) + " " + Hex(bytes);
}

// The 8-byte little-endian header length.
std::string LengthPrefix(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out;
}

// The file as bytes: the length, the JSON as given, then `data`.
std::string FileBytes(std::string_view json, std::string_view data) {
  return LengthPrefix(json.size()) + std::string(json) + std::string(data);
}

// ---- round trips

TEST(SafetensorsTest, RoundTripsEveryDtypeOnMemEnvAndDisk) {
  io::MemEnv mem;
  testing::TempDir disk;
  for (auto [env, path] : {std::pair<io::Env*, std::string>(&mem, "/model.safetensors"),
                           {io::Env::Default(), disk.Join("model.safetensors")}}) {
    SCOPED_TRACE(path);
    const std::vector<TestTensor> ts = SampleTensors(/*with_bf16=*/true);
    DS_ASSERT_OK(WriteFile(env, path, ts, kMetadata));
    DS_ASSERT_OK_AND_ASSIGN(auto r, SafetensorsReader::Open(env, path));
    ExpectContents(*r, ts);
    EXPECT_EQ(r->metadata(), kMetadata);
    // Data order is the order the writer was given.
    for (size_t i = 0; i < ts.size(); ++i) EXPECT_EQ(r->tensors()[i].name, ts[i].name);
    DS_ASSERT_OK_AND_ASSIGN(auto names, env->ListDir(io::DirName(path)));
    EXPECT_THAT(names, ElementsAre("model.safetensors"));  // no .partial left behind
  }
}

TEST(SafetensorsTest, WriterAlignsDataWithSpacesAndAssignsOffsetsInOrder) {
  io::MemEnv env;
  const std::vector<TestTensor> ts = {MakeTensor("a", DType::kU8, {3}, 1),
                                      MakeTensor("b", DType::kF32, {2}, 2)};
  DS_ASSERT_OK_AND_ASSIGN(auto w,
                          SafetensorsWriter::Create(&env, "/f.safetensors", Layout(ts), {}));
  EXPECT_EQ(w->tensors()[0].data_begin, 0u);
  EXPECT_EQ(w->tensors()[0].data_end, 3u);
  EXPECT_EQ(w->tensors()[1].data_begin, 3u);
  EXPECT_EQ(w->tensors()[1].data_end, 11u);
  DS_ASSERT_OK(WriteBackwards(*w, ts, 2));
  DS_ASSERT_OK(w->Finish());

  DS_ASSERT_OK_AND_ASSIGN(std::string file, env.ReadFileToString("/f.safetensors"));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(file[i]);
  EXPECT_EQ(n, 112u);  // 107 bytes of JSON, then 5 spaces so that the data starts at byte 120
  const std::string json = file.substr(8, n);
  EXPECT_EQ(json.substr(0, json.find_last_not_of(' ') + 1),
            R"({"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},)"
            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[3,11]}})");
  EXPECT_EQ(file.size(), 8 + n + 11);
}

TEST(SafetensorsTest, ConcurrentWritersOnDistinctRanges) {
  testing::TempDir dir;
  const std::string path = dir.Join("big.safetensors");
  const std::vector<TestTensor> ts = {MakeTensor("a", DType::kF32, {256, 64}, 1),
                                      MakeTensor("b", DType::kBF16, {1000}, 2)};
  DS_ASSERT_OK_AND_ASSIGN(auto w,
                          SafetensorsWriter::Create(io::Env::Default(), path, Layout(ts), {}));
  constexpr size_t kThreads = 4, kChunk = 1000;  // bytes per write
  std::vector<std::thread> threads;
  std::vector<Status> results(kThreads);
  for (size_t k = 0; k < kThreads; ++k) {
    threads.emplace_back([&, k] {
      for (size_t i = 0; i < ts.size(); ++i) {
        const std::span<const std::byte> all(ts[i].bytes);
        for (size_t off = k * kChunk; off < all.size(); off += kThreads * kChunk) {
          Status s =
              w->WriteTensorData(i, off, all.subspan(off, std::min(kChunk, all.size() - off)));
          if (!s.ok()) results[k] = s;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const Status& s : results) DS_ASSERT_OK(s);
  DS_ASSERT_OK(w->Finish());
  DS_ASSERT_OK_AND_ASSIGN(auto r, SafetensorsReader::Open(io::Env::Default(), path));
  ExpectContents(*r, ts);
}

// ---- the writer's refusals

TEST(SafetensorsTest, FinishRefusesMissingBytesNamingTheTensorAndCanThenComplete) {
  io::MemEnv env;
  const std::vector<TestTensor> ts = {MakeTensor("a", DType::kU8, {8}, 1),
                                      MakeTensor("h.0.attn.w", DType::kF32, {4}, 2)};
  DS_ASSERT_OK_AND_ASSIGN(auto w,
                          SafetensorsWriter::Create(&env, "/m.safetensors", Layout(ts), {}));
  const std::span<const std::byte> b(ts[1].bytes);
  DS_ASSERT_OK(w->WriteTensorData(0, 0, ts[0].bytes));
  DS_ASSERT_OK(w->WriteTensorData(1, 0, b.first(4)));
  DS_ASSERT_OK(w->WriteTensorData(1, 12, b.subspan(12)));
  EXPECT_THAT(w->Finish(),
              StatusIs(StatusCode::kFailedPrecondition,
                       Eq("/m.safetensors: tensor 'h.0.attn.w' is incomplete: bytes [4, 12) were "
                          "never written (8 of 16 bytes written); call WriteTensorData for every "
                          "byte before Finish")));
  DS_ASSERT_OK_AND_ASSIGN(bool exists, env.Exists("/m.safetensors"));
  EXPECT_FALSE(exists);
  DS_ASSERT_OK(w->WriteTensorData(1, 4, b.subspan(4, 8)));
  DS_ASSERT_OK(w->Finish());
  EXPECT_THAT(w->WriteTensorData(0, 0, ts[0].bytes),
              StatusIs(StatusCode::kFailedPrecondition, HasSubstr("after Finish")));
  EXPECT_THAT(w->Finish(), StatusIs(StatusCode::kFailedPrecondition, HasSubstr("again")));
  DS_ASSERT_OK_AND_ASSIGN(auto r, SafetensorsReader::Open(&env, "/m.safetensors"));
  ExpectContents(*r, ts);
}

TEST(SafetensorsTest, WriterRejectsBadLayoutsAndRanges) {
  io::MemEnv env;
  auto create = [&](std::vector<SafetensorsTensor> ts) {
    return SafetensorsWriter::Create(&env, "/w.safetensors", std::move(ts), {}).status();
  };
  EXPECT_THAT(create({{"a", DType::kF32, {1}}, {"a", DType::kF32, {2}}}),
              StatusIs(StatusCode::kInvalidArgument,
                       Eq("/w.safetensors: tensor #1 ('a') appears twice (names must be unique)")));
  EXPECT_THAT(create({{"", DType::kF32, {1}}}),
              StatusIs(StatusCode::kInvalidArgument,
                       Eq("/w.safetensors: tensor #0 ('') has an empty name")));
  EXPECT_THAT(create({{"__metadata__", DType::kF32, {1}}}),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("reserved for file metadata")));
  EXPECT_THAT(create({{"x", DType::kF32, {2, -1}}}),
              StatusIs(StatusCode::kInvalidArgument,
                       Eq("/w.safetensors: tensor #0 ('x'): shape [2, -1] has a negative "
                          "dimension")));
  EXPECT_THAT(create({{"x", DType::kF32, {1, 1, 1, 1, 1, 1, 1, 1, 1}}}),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("more than 8 dimensions")));
  EXPECT_THAT(create({{"bad\xff", DType::kF32, {1}}}),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("name is not UTF-8")));
  EXPECT_THAT(create({{"x", DType::kF64, {int64_t{1} << 62, 4}}}),
              StatusIs(StatusCode::kInvalidArgument,
                       Eq("/w.safetensors: tensor 'x': shape [4611686018427387904, 4] takes the "
                          "file past 2^64 bytes")));
  DS_ASSERT_OK_AND_ASSIGN(auto ls, env.ListDir("/"));
  EXPECT_THAT(ls, IsEmpty());  // nothing created for a refused layout

  DS_ASSERT_OK_AND_ASSIGN(
      auto w, SafetensorsWriter::Create(&env, "/w.safetensors", {{"x", DType::kF32, {2}}}, {}));
  std::vector<std::byte> four(4);
  EXPECT_THAT(w->WriteTensorData(0, 6, four),
              StatusIs(StatusCode::kInvalidArgument,
                       Eq("/w.safetensors: tensor 'x' holds 8 bytes; cannot write 4 at offset 6")));
  EXPECT_THAT(w->WriteTensorData(1, 0, four),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("tensor index 1 out of range")));
}

TEST(SafetensorsTest, AbandonedWriterLeavesNothingBehind) {
  io::MemEnv env;
  const std::vector<TestTensor> ts = SampleTensors(true);
  {
    DS_ASSERT_OK_AND_ASSIGN(auto w,
                            SafetensorsWriter::Create(&env, "/a.safetensors", Layout(ts), {}));
    DS_ASSERT_OK(w->WriteTensorData(0, 0, ts[0].bytes));
    DS_ASSERT_OK_AND_ASSIGN(auto ls, env.ListDir("/"));
    EXPECT_THAT(ls, ElementsAre("a.safetensors.partial"));
  }
  DS_ASSERT_OK_AND_ASSIGN(auto ls, env.ListDir("/"));
  EXPECT_THAT(ls, IsEmpty());
}

TEST(SafetensorsTest, FailedSyncIsReportedAndLeavesNoFile) {
  io::MemEnv mem;
  io::FaultEnv env(&mem);
  env.AddRule({.ops = io::kFaultSync, .path_glob = "*.partial"});
  const std::vector<TestTensor> ts = SampleTensors(true);
  {
    DS_ASSERT_OK_AND_ASSIGN(auto w,
                            SafetensorsWriter::Create(&env, "/m.safetensors", Layout(ts), {}));
    DS_ASSERT_OK(WriteBackwards(*w, ts, 7));
    EXPECT_THAT(w->Finish(),
                StatusIs(StatusCode::kIOError, HasSubstr("while finishing /m.safetensors")));
    EXPECT_THAT(w->Finish(),
                StatusIs(StatusCode::kFailedPrecondition, HasSubstr("an earlier Finish failed")));
  }
  DS_ASSERT_OK_AND_ASSIGN(auto ls, mem.ListDir("/"));
  EXPECT_THAT(ls, IsEmpty());
}

// A power cut after each mutation of a save, in turn: the name shows the whole file or nothing,
// and the whole file once Finish has returned.
TEST(SafetensorsTest, CrashAtEveryStepNeverShowsAHalfFile) {
  const std::vector<TestTensor> ts = SampleTensors(true);
  auto save = [&](io::Env* env) -> Status {
    DS_ASSIGN_OR_RETURN(
        auto w, SafetensorsWriter::Create(env, "/ckpt/m.safetensors", Layout(ts), kMetadata));
    DS_RETURN_IF_ERROR(WriteBackwards(*w, ts, 16));
    return w->Finish();
  };
  auto fresh = [](io::MemEnv& mem) {
    ASSERT_THAT(mem.CreateDirs("/ckpt"), testing::IsOk());
    ASSERT_THAT(mem.SyncDir("/"), testing::IsOk());
  };
  uint64_t mutations = 0;
  {
    io::MemEnv mem;
    fresh(mem);
    io::FaultEnv env(&mem);
    DS_ASSERT_OK(save(&env));
    mutations = env.mutation_count();
    ASSERT_GT(mutations, ts.size());
  }
  for (uint64_t stop = 0; stop <= mutations; ++stop) {
    for (io::CrashTail tail : {io::CrashTail::kDrop, io::CrashTail::kKeep, io::CrashTail::kTear}) {
      SCOPED_TRACE("crash after mutation " + std::to_string(stop) + " of " +
                   std::to_string(mutations) + ", tail " + std::to_string(static_cast<int>(tail)) +
                   ", seed " + std::to_string(stop));
      io::MemEnv mem;
      fresh(mem);
      io::FaultEnv env(&mem);
      env.StopAfter(stop);
      const Status saved = save(&env);
      DS_ASSERT_OK(env.SimulateCrash(tail, /*seed=*/stop));
      Result<std::unique_ptr<SafetensorsReader>> r =
          SafetensorsReader::Open(&mem, "/ckpt/m.safetensors");
      if (saved.ok()) {
        ASSERT_THAT(r, testing::IsOk());
      }
      if (r.ok()) {
        ExpectContents(**r, ts);
      } else {
        EXPECT_THAT(r, StatusIs(StatusCode::kNotFound, HasSubstr("m.safetensors")));
      }
    }
  }
}

// ---- the reader's checks, each with its message

class SafetensorsBadInputTest : public ::testing::Test {
 protected:
  // Opens a file holding `bytes`; returns its status.
  Status OpenBytes(const std::string& bytes) {
    Status s = env_.WriteFileSynced(kPath, bytes);
    if (!s.ok()) return s;
    return SafetensorsReader::Open(&env_, kPath).status();
  }
  // A file with `json` and `data_bytes` zero bytes of data.
  Status OpenJson(std::string_view json, size_t data_bytes) {
    return OpenBytes(FileBytes(json, std::string(data_bytes, '\0')));
  }
  static constexpr const char* kPath = "/model.safetensors";
  io::MemEnv env_;
};

MATCHER_P(CorruptionIs, message, "") {
  return ::testing::ExplainMatchResult(
      StatusIs(StatusCode::kCorruption, Eq(std::string("/model.safetensors: ") + message)), arg,
      result_listener);
}

TEST_F(SafetensorsBadInputTest, FileTooShortOrHeaderLengthWrong) {
  EXPECT_THAT(OpenBytes("abc"),
              CorruptionIs("the file is 3 bytes, too short for the 8-byte header length (not a "
                           "safetensors file?)"));
  EXPECT_THAT(OpenBytes(LengthPrefix(1000) + "{}"),
              CorruptionIs("header length 1000 bytes runs past the end of the file (10 bytes; "
                           "truncated?)"));
  EXPECT_THAT(OpenBytes(LengthPrefix(100'000'001) + "{}"),
              CorruptionIs("header length 100000001 bytes exceeds the 100000000-byte limit (not "
                           "a safetensors file?)"));
  EXPECT_THAT(OpenBytes(LengthPrefix(~uint64_t{0}) + "{}"),
              CorruptionIs("header length 18446744073709551615 bytes exceeds the "
                           "100000000-byte limit (not a safetensors file?)"));
}

TEST_F(SafetensorsBadInputTest, HeaderNotJsonOrNotAnObject) {
  EXPECT_THAT(OpenJson(R"({"a": {"dtype": )", 0),
              StatusIs(StatusCode::kCorruption,
                       StartsWith("/model.safetensors: header is not JSON: parse error at line 1, "
                                  "column 17: syntax error while parsing value")));
  EXPECT_THAT(OpenJson("", 0),
              StatusIs(StatusCode::kCorruption,
                       StartsWith("/model.safetensors: header is not JSON: parse error")));
  EXPECT_THAT(OpenJson("[1, 2]", 0), CorruptionIs("header is an array, not a JSON object of "
                                                  "tensors"));
  EXPECT_THAT(OpenJson(R"({"w": [1]})", 0),
              CorruptionIs("tensor 'w': entry is an array, not an object with dtype, shape and "
                           "data_offsets"));
  EXPECT_THAT(OpenJson(std::string(100'000, '[') + std::string(100'000, ']'), 0),
              CorruptionIs("header is an array, not a JSON object of tensors"));
}

TEST_F(SafetensorsBadInputTest, BadDtypeShapeOrOffsets) {
  EXPECT_THAT(OpenJson(R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", 2),
              CorruptionIs("tensor 'w': dtype 'F8_E4M3' is not supported (dstrain reads F64, "
                           "F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)"));
  EXPECT_THAT(OpenJson(R"({"w":{"dtype":4,"shape":[2],"data_offsets":[0,2]}})", 2),
              CorruptionIs("tensor 'w': dtype is 4, not a string such as \"F32\""));
  EXPECT_THAT(OpenJson(R"({"w":{"dtype":"U8","data_offsets":[0,2]}})", 2),
              CorruptionIs("tensor 'w': \"shape\" is missing"));
  EXPECT_THAT(
      OpenJson(R"({"h.0.attn.w":{"dtype":"F32","shape":[5,5],"data_offsets":[0,96]}})", 96),
      CorruptionIs("tensor 'h.0.attn.w': data_offsets [0, 96] hold 96 bytes but shape [5, 5] of "
                   "F32 needs 100"));
  EXPECT_THAT(OpenJson(R"({"w":{"dtype":"F32","shape":[-1,4],"data_offsets":[0,0]}})", 0),
              CorruptionIs("tensor 'w': shape[0] is -1, not an integer >= 0"));
  EXPECT_THAT(OpenJson(R"({"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,10]}})", 10),
              CorruptionIs("tensor 'w': shape[0] is 2.5, not an integer >= 0"));
  EXPECT_THAT(OpenJson(R"({"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", 8),
              CorruptionIs("tensor 'w': shape[0] is a string, not an integer >= 0"));
  EXPECT_THAT(OpenJson(R"({"w":{"dtype":"U8","shape":[9223372036854775808],)"
                       R"("data_offsets":[0,0]}})",
                       0),
              CorruptionIs("tensor 'w': shape[0] is 9223372036854775808, more than 2^63-1"));
  EXPECT_THAT(
      OpenJson(R"({"w":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1],)"
               R"("data_offsets":[0,1]}})",
               1),
      CorruptionIs("tensor 'w': shape has more than 8 dimensions (dstrain supports at most 8)"));
  EXPECT_THAT(OpenJson(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],)"
                       R"("data_offsets":[0,0]}})",
                       0),
              CorruptionIs("tensor 'w': shape [4294967296, 4294967296] of F32 needs more than "
                           "2^64 bytes"));
  EXPECT_THAT(
      OpenJson(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2,4]}})", 2),
      CorruptionIs("tensor 'w': data_offsets has more than 2 entries; expected [begin, end]"));
  EXPECT_THAT(OpenJson(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[0]}})", 2),
              CorruptionIs("tensor 'w': data_offsets has 1 entry; expected [begin, end]"));
  EXPECT_THAT(OpenJson(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":"0-2"}})", 2),
              CorruptionIs("tensor 'w': data_offsets is a string, not [begin, end]"));
  EXPECT_THAT(OpenJson(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[0,-2]}})", 2),
              CorruptionIs("tensor 'w': data_offsets[1] is -2, not an integer >= 0"));
  EXPECT_THAT(OpenJson(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[4,2]}})", 4),
              CorruptionIs("tensor 'w': data_offsets [4, 2] end before they begin"));
  EXPECT_THAT(OpenJson(R"({"w":{"dtype":"U8","shape":[16],"data_offsets":[0,16]}})", 8),
              CorruptionIs("tensor 'w': data_offsets [0, 16] reach past the end of the data "
                           "section (8 bytes; file truncated?)"));
}

TEST_F(SafetensorsBadInputTest, OverlapGapAndTrailingData) {
  EXPECT_THAT(OpenJson(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
                       R"("b":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}})",
                       12),
              CorruptionIs("tensors 'a' (data_offsets [0, 8]) and 'b' (data_offsets [4, 12]) "
                           "overlap"));
  EXPECT_THAT(OpenJson(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                       R"("b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}})",
                       12),
              CorruptionIs("bytes [4, 8) of the data section belong to no tensor (between 'a' "
                           "and 'b')"));
  EXPECT_THAT(OpenJson(R"({"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})", 6),
              CorruptionIs("bytes [0, 2) of the data section belong to no tensor (before 'b')"));
  EXPECT_THAT(OpenJson(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", 6),
              CorruptionIs("bytes [4, 6) of the data section belong to no tensor (trailing data "
                           "after 'a')"));
  EXPECT_THAT(OpenJson(R"({})", 3),
              CorruptionIs("bytes [0, 3) of the data section belong to no tensor (trailing data; "
                           "no tensors listed)"));
}

TEST_F(SafetensorsBadInputTest, DuplicateKeysAndBadMetadata) {
  EXPECT_THAT(OpenJson(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                       R"("a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})",
                       4),
              CorruptionIs("tensor 'a' appears twice in the header (names must be unique)"));
  EXPECT_THAT(OpenJson(R"({"a":{"dtype":"U8","dtype":"I8","shape":[2],"data_offsets":[0,2]}})", 2),
              CorruptionIs("tensor 'a': key 'dtype' appears twice"));
  EXPECT_THAT(OpenJson(R"({"__metadata__":{"k":"1","k":"2"}})", 0),
              CorruptionIs("__metadata__: key 'k' appears twice"));
  EXPECT_THAT(OpenJson(R"({"__metadata__":{"step":100}})", 0),
              CorruptionIs("__metadata__ key 'step' is 100, not a string"));
  EXPECT_THAT(OpenJson(R"({"__metadata__":["a"]})", 0),
              CorruptionIs("__metadata__ is an array, not an object of strings"));
}

TEST_F(SafetensorsBadInputTest, AcceptsWhatTheReferenceAccepts) {
  // Padding spaces, unknown keys, null metadata, empty tensors anywhere, any key order.
  DS_ASSERT_OK(OpenJson(R"({"__metadata__":null,"b":{"data_offsets":[2,6],"shape":[2],)"
                        R"("dtype":"I16","extra":{"x":[1]}},"z":{"dtype":"F32","shape":[0],)"
                        R"("data_offsets":[2,2]},"a":{"dtype":"U8","shape":[2],)"
                        R"("data_offsets":[0,2]}}       )",
                        6));
  DS_ASSERT_OK_AND_ASSIGN(auto r, SafetensorsReader::Open(&env_, kPath));
  ASSERT_EQ(r->tensors().size(), 3u);
  EXPECT_EQ(r->tensors()[0].name, "a");
  EXPECT_EQ(r->tensors()[1].name, "z");
  EXPECT_EQ(r->tensors()[2].name, "b");
  EXPECT_TRUE(r->metadata().empty());
  EXPECT_THAT(r->Find("nope"), StatusIs(StatusCode::kNotFound,
                                        Eq("/model.safetensors: no tensor named 'nope' (the file "
                                           "has 3)")));
  std::vector<std::byte> out(3);
  EXPECT_THAT(r->ReadTensorData(2, 2, out),
              StatusIs(StatusCode::kInvalidArgument,
                       Eq("/model.safetensors: tensor 'b' holds 4 bytes; cannot read 3 at offset "
                          "2")));
}

// Unknown keys are skipped without building anything: a header that nests or repeats values
// there costs time in proportion to its length, and no memory.
TEST_F(SafetensorsBadInputTest, SkipsHugeUnknownValuesCheaply) {
  std::string extra = std::string(200'000, '[') + std::string(200'000, ']') + ",[0";
  for (int i = 0; i < 1'000'000; ++i) extra += ",0";
  DS_ASSERT_OK(
      OpenJson(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"x":[)" + extra + "]]}}", 2));
}

TEST(SafetensorsTest, ReadOfAFileTruncatedAfterOpenIsCorruption) {
  io::MemEnv env;
  const std::vector<TestTensor> ts = {MakeTensor("w", DType::kF32, {16}, 1)};
  DS_ASSERT_OK(WriteFile(&env, "/t.safetensors", ts, {}));
  DS_ASSERT_OK_AND_ASSIGN(auto r, SafetensorsReader::Open(&env, "/t.safetensors"));
  const uint64_t data_start = 8 + 56;  // the 8-byte length and the 56-byte padded header
  {
    DS_ASSERT_OK_AND_ASSIGN(auto f,
                            env.OpenFile("/t.safetensors", {.mode = io::OpenMode::kUpdate}));
    DS_ASSERT_OK_AND_ASSIGN(uint64_t size, f->Size());
    ASSERT_EQ(size, data_start + 64);
    DS_ASSERT_OK(f->Truncate(data_start + 10));
  }
  std::vector<std::byte> out(64);
  EXPECT_THAT(r->ReadTensorData(0, 0, out),
              StatusIs(StatusCode::kCorruption,
                       Eq("/t.safetensors: tensor 'w': the file ends at byte 74, inside file "
                          "bytes [64, 128) (truncated?)")));
}

// ---- interoperability with Hugging Face's own library

// Runs `script` with the project's Python and `args`; returns its stdout and stderr, or nullopt
// (after recording why) when the script failed.
std::optional<std::string> RunPython(const std::string& script, const std::string& arg) {
  const std::string cmd = testing::Python() + " -c " + bench::ShellQuote(script) + " " +
                          bench::ShellQuote(arg) + " 2>&1; echo \"exit=$?\"";
  int status = 0;
  std::optional<std::string> out = bench::RunCapture(cmd, &status);
  if (!out) {
    ADD_FAILURE() << "could not run: " << cmd;
    return std::nullopt;
  }
  const size_t tail = out->rfind("exit=");
  if (tail == std::string::npos || out->substr(tail) != "exit=0\n") {
    ADD_FAILURE() << "Python failed:\n" << *out;
    return std::nullopt;
  }
  return out->substr(0, tail);
}

// Skips the test (fails it in CI) unless the build found a Python with safetensors, numpy and
// torch.
#define DS_SKIP_WITHOUT_PYTHON_SAFETENSORS() \
  DS_SKIP_OR_FAIL_WITHOUT_PYTHON("safetensors, numpy, torch")

// Prints "name dtype [shape] hex" per tensor of a dict of torch tensors or numpy arrays.
constexpr const char* kPrintTensors = R"(
def show(tensors):
    import torch
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor):
            dtype = str(t.dtype).replace("torch.", "")
            raw = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()
        else:
            dtype, raw = str(t.dtype), t.tobytes()
        print(name, dtype, str(list(t.shape)), raw.hex())
)";

TEST(SafetensorsInteropTest, HuggingFaceLoadsWhatWeWrite) {
  DS_SKIP_WITHOUT_PYTHON_SAFETENSORS();
  testing::TempDir dir;
  // numpy has no bfloat16: one file for numpy without it, one for torch with everything.
  for (bool with_bf16 : {false, true}) {
    SCOPED_TRACE(with_bf16 ? "torch" : "numpy");
    const std::vector<TestTensor> ts = SampleTensors(with_bf16);
    const std::string path = dir.Join(with_bf16 ? "all.safetensors" : "numpy.safetensors");
    DS_ASSERT_OK(WriteFile(io::Env::Default(), path, ts, kMetadata));
    const std::string script = std::string(kPrintTensors) +
                               "import sys, json, safetensors, safetensors." +
                               (with_bf16 ? "torch" : "numpy") + " as lib\n" +
                               "show(lib.load_file(sys.argv[1]))\n"
                               "with safetensors.safe_open(sys.argv[1], framework='np') as f:\n"
                               "    print('metadata', json.dumps(f.metadata(), sort_keys=True))\n";
    std::optional<std::string> out = RunPython(script, path);
    if (!out) return;
    std::vector<std::string> want;
    want.reserve(ts.size() + 1);
    for (const TestTensor& t : ts) want.push_back(Line(t.name, t.dtype, t.shape, t.bytes));
    want.push_back(R"(metadata {"format": "pt", "step": "1000"})");
    std::istringstream lines(*out);
    std::vector<std::string> got;
    for (std::string l; std::getline(lines, l);) got.push_back(l);
    EXPECT_EQ(SortedLines(got), SortedLines(want));
  }
}

TEST(SafetensorsInteropTest, WeReadWhatHuggingFaceWrites) {
  DS_SKIP_WITHOUT_PYTHON_SAFETENSORS();
  testing::TempDir dir;
  const std::string path = dir.Join("hf.safetensors");
  const std::string script = std::string(kPrintTensors) + R"(
import sys, torch, safetensors.torch
g = torch.Generator().manual_seed(7)
tensors = {
    "wte": torch.randn(5, 3, generator=g),
    "ln.bf16": torch.randn(4, 2, generator=g).to(torch.bfloat16),
    "ln.f16": torch.randn(3, generator=g).to(torch.float16),
    "f64": torch.randn(2, 2, generator=g).to(torch.float64),
    "step": torch.tensor(1234, dtype=torch.int64),
    "i32": torch.arange(-3, 3, dtype=torch.int32).reshape(2, 3),
    "i16": torch.arange(4, dtype=torch.int16),
    "i8": torch.tensor([-128, 127], dtype=torch.int8),
    "u8": torch.arange(250, 256, dtype=torch.uint8),
    "mask": torch.tensor([True, False, True]),
    "empty": torch.zeros(0, 4),
}
safetensors.torch.save_file(tensors, sys.argv[1], metadata={"format": "pt", "who": "hf"})
show(tensors)
)";
  std::optional<std::string> out = RunPython(script, path);
  if (!out) return;
  std::istringstream lines(*out);
  std::vector<std::string> want;
  for (std::string l; std::getline(lines, l);) want.push_back(l);
  ASSERT_EQ(want.size(), 11u) << *out;

  DS_ASSERT_OK_AND_ASSIGN(auto r, SafetensorsReader::Open(io::Env::Default(), path));
  EXPECT_EQ(r->metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"who", "hf"}}));
  std::vector<std::string> got;
  for (size_t i = 0; i < r->tensors().size(); ++i) {
    const SafetensorsTensor& t = r->tensors()[i];
    std::vector<std::byte> bytes(t.nbytes());
    DS_ASSERT_OK(r->ReadTensorData(i, 0, bytes));
    got.push_back(Line(t.name, t.dtype, t.shape, bytes));
  }
  EXPECT_EQ(SortedLines(got), SortedLines(want));
}

}  // namespace
}  // namespace ds::fmt
