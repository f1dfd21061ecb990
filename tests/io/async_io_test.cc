// Both backends move the same bytes, aligned or not, direct or buffered; the backend choice
// follows DSTRAIN_IO_BACKEND and says why.
#include "io/async_io.h"

#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "io/buffer_pool.h"
#include "io/log.h"
#include "testing/matchers.h"

namespace ds::io {
namespace {

using ::ds::testing::StatusIs;
using ::ds::testing::TempDir;
using ::testing::HasSubstr;

struct Op {
  uint64_t offset;
  size_t len;
};

// Random non-overlapping extents, some 4 KiB aligned (the O_DIRECT fast path), some not.
std::vector<Op> RandomOps(std::mt19937_64& rng, int n) {
  std::vector<Op> ops;
  uint64_t pos = 0;
  for (int i = 0; i < n; ++i) {
    bool aligned = rng() % 2 == 0;
    size_t len = aligned ? kDirectAlignment * (1 + rng() % 64) : 1 + rng() % 300000;
    pos = aligned ? (pos + kDirectAlignment - 1) / kDirectAlignment * kDirectAlignment
                  : pos + rng() % 5000;
    ops.push_back({pos, len});
    pos += len;
  }
  return ops;
}

std::unique_ptr<AsyncIo> Open(const std::string& backend) {
  AsyncIoOptions opts;
  opts.backend = backend;
  opts.queue_depth = 8;
  Result<std::unique_ptr<AsyncIo>> io = OpenAsyncIo(opts);
  if (!io.ok()) return nullptr;
  return std::move(io).value();
}

// Writes the ops through `io`, reads them back through `io`, returns the whole file.
std::string RoundTrip(AsyncIo& io, const std::string& path, bool direct, const std::vector<Op>& ops,
                      const std::vector<std::byte>& source, BufferPool& pool) {
  Env* env = Env::Default();
  auto f = env->OpenFile(path, {OpenMode::kTruncate, direct});
  EXPECT_TRUE(f.ok()) << f.status().ToString();
  std::vector<Buffer> bufs;
  for (const Op& op : ops) {
    Result<Buffer> b = pool.Acquire(op.len);
    EXPECT_TRUE(b.ok());
    std::memcpy(b->data(), source.data() + op.offset, op.len);
    io.Write(f->get(), op.offset, std::span<const std::byte>(b->data(), op.len), nullptr);
    bufs.push_back(std::move(*b));
  }
  EXPECT_THAT(io.Drain(), ::ds::testing::IsOk());
  EXPECT_THAT((*f)->Sync(), ::ds::testing::IsOk());
  // Read back every extent through the same backend and compare.
  for (size_t i = 0; i < ops.size(); ++i) {
    std::memset(bufs[i].data(), 0xAB, ops[i].len);
    io.Read(f->get(), ops[i].offset, std::span<std::byte>(bufs[i].data(), ops[i].len), nullptr);
  }
  EXPECT_THAT(io.Drain(), ::ds::testing::IsOk());
  for (size_t i = 0; i < ops.size(); ++i) {
    EXPECT_EQ(std::memcmp(bufs[i].data(), source.data() + ops[i].offset, ops[i].len), 0)
        << "extent " << i << " at " << ops[i].offset << " len " << ops[i].len;
  }
  Result<std::string> all = env->ReadFileToString(path);
  EXPECT_TRUE(all.ok());
  return all.ok() ? *all : "";
}

TEST(AsyncIoTest, BackendsReturnIdenticalBytes) {
  TempDir dir;
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::vector<Op> ops = RandomOps(rng, 40);
  uint64_t end = ops.back().offset + ops.back().len;
  std::vector<std::byte> source(end);
  for (auto& b : source) b = static_cast<std::byte>(rng());
  BufferPool pool({.capacity_bytes = 64 << 20});

  std::vector<std::string> results;
  for (const char* backend : {"pwrite", "uring"}) {
    std::unique_ptr<AsyncIo> io = Open(backend);
    if (io == nullptr) {
      std::string why;
      ASSERT_FALSE(ProbeIoUring(&why)) << "uring failed to open although the probe passed";
      std::printf("io_uring not usable here (%s): only pwrite checked\n", why.c_str());
      continue;
    }
    EXPECT_EQ(io->backend(), backend);
    for (bool direct : {false, true}) {
      std::string path = dir.Join(std::string(backend) + (direct ? "-direct" : "-buffered"));
      results.push_back(RoundTrip(*io, path, direct, ops, source, pool));
    }
  }
  ASSERT_GE(results.size(), 2u);
  for (const std::string& r : results) {
    ASSERT_EQ(r.size(), end);
    // Every written extent holds the source bytes; the gaps between them are zeros.
    for (const Op& op : ops) {
      ASSERT_EQ(std::memcmp(r.data() + op.offset, source.data() + op.offset, op.len), 0);
    }
    EXPECT_EQ(r, results.front());
  }
}

// Two requests on a queue of depth 2: busy from the first start to the last finish, both in
// flight (the queue full) between the second start and the first finish, idle gaps not counted.
TEST(InFlightMeterTest, CountsBusyTimeDepthAndFullQueue) {
  InFlightMeter m(2);
  m.Start(100);
  m.Start(110);
  m.Finish(130, 4096);
  m.Finish(150, 8192);
  IoStats s = m.stats(200);
  EXPECT_EQ(s.requests, 2u);
  EXPECT_EQ(s.bytes, 12288u);
  EXPECT_EQ(s.busy_micros, 50u);                       // [100, 150)
  EXPECT_EQ(s.in_flight_micros, 10u + 2 * 20u + 20u);  // 1, then 2, then 1 in flight
  EXPECT_EQ(s.full_micros, 20u);                       // [110, 130)
  EXPECT_DOUBLE_EQ(s.mean_in_flight(), 70.0 / 50.0);
  m.Start(300);  // a request still in flight counts up to the reading
  const IoStats later = m.stats(340);
  EXPECT_EQ(later.busy_micros, 90u);
  const IoStats d = later - s;
  EXPECT_EQ(d.requests, 0u);
  EXPECT_EQ(d.busy_micros, 40u);
  EXPECT_EQ(d.in_flight_micros, 40u);
  EXPECT_EQ(d.full_micros, 0u);
  EXPECT_DOUBLE_EQ(IoStats{}.mean_in_flight(), 0.0);
}

// Both backends count every request they complete, and the time the queue was busy.
TEST(AsyncIoTest, StatsCountEveryRequestOfEitherBackend) {
  TempDir dir;
  BufferPool pool({.capacity_bytes = 16 << 20});
  DS_ASSERT_OK_AND_ASSIGN(Buffer buf, pool.Acquire(256 << 10));
  std::memset(buf.data(), 7, buf.size());
  for (const char* backend : {"pwrite", "uring"}) {
    std::unique_ptr<AsyncIo> io = Open(backend);
    if (io == nullptr) continue;  // io_uring not usable here: BackendsReturnIdenticalBytes says why
    SCOPED_TRACE(backend);
    auto f = Env::Default()->OpenFile(dir.Join(backend), {OpenMode::kTruncate, true});
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    const IoStats before = io->stats();
    for (uint64_t i = 0; i < 12; ++i) io->Write(f->get(), i * buf.size(), buf.span(), nullptr);
    DS_ASSERT_OK(io->Drain());
    const IoStats d = io->stats() - before;
    EXPECT_EQ(d.requests, 12u);
    EXPECT_EQ(d.bytes, 12 * buf.size());
    EXPECT_GT(d.busy_micros, 0u);
    EXPECT_GE(d.mean_in_flight(), 1.0);
    EXPECT_LE(d.mean_in_flight(), 8.0);  // the queue depth Open asks for
    EXPECT_LE(d.full_micros, d.busy_micros);
    DS_ASSERT_OK((*f)->Close());
  }
}

TEST(AsyncIoTest, ReadPastEndIsCorruptionNamingTheFile) {
  TempDir dir;
  DS_ASSERT_OK(Env::Default()->WriteFileSynced(dir.Join("short"), std::string(100, 'x')));
  DS_ASSERT_OK_AND_ASSIGN(auto f, Env::Default()->OpenFile(dir.Join("short"), {OpenMode::kRead}));
  for (const char* backend : {"pwrite", "uring"}) {
    std::unique_ptr<AsyncIo> io = Open(backend);
    if (io == nullptr) continue;
    std::vector<std::byte> out(200);
    io->Read(f.get(), 0, out, nullptr);
    EXPECT_THAT(io->Drain(),
                StatusIs(StatusCode::kCorruption,
                         HasSubstr("expected 200 bytes at offset 0 but the file ends after 100")));
  }
}

TEST(AsyncIoTest, ForcingTheFallbackWorksAndSaysSo) {
  ::setenv("DSTRAIN_IO_BACKEND", "pwrite", 1);
  std::vector<std::string> lines;
  SetLogSink([&](LogLevel, std::string_view m) { lines.emplace_back(m); });
  SetLogLevel(LogLevel::kDebug);
  Result<std::unique_ptr<AsyncIo>> io = OpenAsyncIo({});
  SetLogSink(nullptr);
  SetLogLevel(LogLevel::kInfo);
  ASSERT_TRUE(io.ok());
  EXPECT_EQ((*io)->backend(), "pwrite");
  EXPECT_EQ((*io)->reason(), "DSTRAIN_IO_BACKEND=pwrite");
  ASSERT_FALSE(lines.empty());
  EXPECT_THAT(lines.back(), HasSubstr("io backend: pwrite (DSTRAIN_IO_BACKEND=pwrite)"));

  ::setenv("DSTRAIN_IO_BACKEND", "bogus", 1);
  EXPECT_THAT(OpenAsyncIo({}),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("unknown io backend 'bogus'")));
  ::unsetenv("DSTRAIN_IO_BACKEND");
  Result<std::unique_ptr<AsyncIo>> probed = OpenAsyncIo({});
  ASSERT_TRUE(probed.ok());
  std::string why;
  EXPECT_EQ((*probed)->backend(), ProbeIoUring(&why) ? "uring" : "pwrite");
}

// The variable is read through the Env the caller passes, not from the process behind its back.
class BackendVariableEnv : public EnvWrapper {
 public:
  BackendVariableEnv(Env* target, std::string backend)
      : EnvWrapper(target), backend_(std::move(backend)) {}
  std::optional<std::string> GetEnvVar(const std::string& name) override {
    if (name == "DSTRAIN_IO_BACKEND") return backend_;
    return EnvWrapper::GetEnvVar(name);
  }

 private:
  std::string backend_;
};

TEST(AsyncIoTest, TheBackendVariableIsReadThroughTheGivenEnv) {
  ::unsetenv("DSTRAIN_IO_BACKEND");
  BackendVariableEnv pwrite(Env::Default(), "pwrite");
  AsyncIoOptions opts;
  opts.env = &pwrite;
  Result<std::unique_ptr<AsyncIo>> io = OpenAsyncIo(opts);
  ASSERT_TRUE(io.ok()) << io.status().ToString();
  EXPECT_EQ((*io)->backend(), "pwrite");
  EXPECT_EQ((*io)->reason(), "DSTRAIN_IO_BACKEND=pwrite");
  BackendVariableEnv bogus(Env::Default(), "bogus");
  opts.env = &bogus;
  EXPECT_THAT(OpenAsyncIo(opts), StatusIs(StatusCode::kInvalidArgument,
                                          HasSubstr("unknown io backend 'bogus' "
                                                    "(DSTRAIN_IO_BACKEND=bogus)")));
}

TEST(AsyncIoTest, RegisteredBuffersAreUsedTransparently) {
  std::unique_ptr<AsyncIo> io = Open("uring");
  if (io == nullptr) GTEST_SKIP() << "io_uring not usable here";
  TempDir dir;
  BufferPool pool({.capacity_bytes = 8 << 20});
  DS_ASSERT_OK_AND_ASSIGN(Buffer buf, pool.Acquire(1 << 20));
  io->RegisterBuffer({buf.data(), buf.capacity()});
  for (size_t i = 0; i < buf.size(); ++i) buf.data()[i] = static_cast<std::byte>(i * 7);
  DS_ASSERT_OK_AND_ASSIGN(auto f,
                          Env::Default()->OpenFile(dir.Join("fixed"), {OpenMode::kTruncate, true}));
  io->Write(f.get(), 0, buf.span(), nullptr);
  DS_ASSERT_OK(io->Drain());
  std::vector<std::byte> back(buf.size());
  io->Read(f.get(), 0, back, nullptr);
  DS_ASSERT_OK(io->Drain());
  EXPECT_EQ(std::memcmp(back.data(), buf.data(), back.size()), 0);
  io->UnregisterBuffer({buf.data(), buf.capacity()});
}

}  // namespace
}  // namespace ds::io
