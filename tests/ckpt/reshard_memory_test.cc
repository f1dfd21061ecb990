// Resharding's memory is bounded by --memory, not by the model: every heap allocation of this
// binary is counted (malloc and its family are replaced below; operator new and libstdc++,
// libhdf5 and zstd all allocate through them), and the peak above the baseline while Reshard
// runs is compared with ReshardOptions::memory_bytes. The checkpoint lives on the real
// filesystem (a MemEnv would hold the files themselves on the heap), so what is counted is what
// Reshard holds: its buffer pools, the plan, the codecs' contexts and libhdf5's.
//
// Its own binary: replacing malloc changes every test linked with it.
#include <malloc.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>

#include "ckpt/reshard.h"
#include "ckpt/save_util.h"
#include "testing/matchers.h"

// ---- the counting allocator: glibc's, with bytes in use (usable sizes) and their peak

namespace {

std::atomic<int64_t> g_in_use{0};  // bytes
std::atomic<int64_t> g_peak{0};    // bytes: the most g_in_use reached since the last reset

void Count(int64_t delta) {
  const int64_t now = g_in_use.fetch_add(delta, std::memory_order_relaxed) + delta;
  int64_t peak = g_peak.load(std::memory_order_relaxed);
  while (now > peak && !g_peak.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}

int64_t Usable(void* p) { return p == nullptr ? 0 : static_cast<int64_t>(malloc_usable_size(p)); }

}  // namespace

extern "C" {
void* __libc_malloc(size_t n);
void* __libc_calloc(size_t count, size_t n);
void* __libc_realloc(void* p, size_t n);
void* __libc_memalign(size_t alignment, size_t n);
void __libc_free(void* p);

void* malloc(size_t n) noexcept {
  void* p = __libc_malloc(n);
  Count(Usable(p));
  return p;
}
void* calloc(size_t count, size_t n) noexcept {
  void* p = __libc_calloc(count, n);
  Count(Usable(p));
  return p;
}
void* realloc(void* p, size_t n) noexcept {
  const int64_t before = Usable(p);
  void* q = __libc_realloc(p, n);
  if (q != nullptr) {
    Count(Usable(q) - before);
  } else if (n == 0) {
    Count(-before);  // glibc's realloc(p, 0) frees p
  }
  return q;
}
void* reallocarray(void* p, size_t count, size_t n) noexcept {
  size_t bytes = 0;
  if (__builtin_mul_overflow(count, n, &bytes)) {
    errno = ENOMEM;
    return nullptr;
  }
  return realloc(p, bytes);
}
void* memalign(size_t alignment, size_t n) noexcept {
  void* p = __libc_memalign(alignment, n);
  Count(Usable(p));
  return p;
}
void* aligned_alloc(size_t alignment, size_t n) noexcept { return memalign(alignment, n); }
int posix_memalign(void** out, size_t alignment, size_t n) noexcept {
  void* p = memalign(alignment, n);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}
void* valloc(size_t n) noexcept { return memalign(static_cast<size_t>(sysconf(_SC_PAGESIZE)), n); }
void* pvalloc(size_t n) noexcept {
  const auto page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return memalign(page, (n + page - 1) / page * page);
}
void free(void* p) noexcept {
  Count(-Usable(p));
  __libc_free(p);
}
}  // extern "C"

namespace ds::ckpt {
namespace {

// The most bytes `fn` held on the heap at once, beyond what was in use when it started.
template <typename Fn>
int64_t PeakHeapBytes(Fn&& fn) {
  const int64_t base = g_in_use.load();
  g_peak.store(base);
  fn();
  return g_peak.load() - base;
}

TEST(ReshardMemoryTest, TheAllocatorCountsWhatIsHeld) {
  const int64_t peak = PeakHeapBytes([] {
    std::vector<std::byte> a(3 << 20);
    void* b = std::aligned_alloc(4096, 1 << 20);
    free(b);
  });
  EXPECT_GE(peak, (3 << 20) + (1 << 20));
  EXPECT_LT(peak, (4 << 20) + (64 << 10));
}

std::vector<testing::TestTensor> ModelOf(int tensors) {
  std::vector<testing::TestTensor> model;
  for (int i = 0; i < tensors; ++i) {
    const std::string group = i % 2 == 0 ? "master/" : "optim/exp_avg/";
    model.push_back(testing::MakeTensor(group + "t" + std::to_string(i / 2), fmt::DType::kF32,
                                        {1024, 1024}, static_cast<uint64_t>(i) + 1));  // 4 MiB
  }
  return model;
}

uint64_t BytesOf(const std::vector<testing::TestTensor>& model) {
  uint64_t n = 0;
  for (const auto& t : model) n += t.data.size();
  return n;
}

struct Resharded {
  int64_t peak = 0;     // heap bytes above the baseline
  uint64_t chunks = 0;  // source chunks read plus target chunks written (the plan's size)
};

// Saves `model` at 3 ranks, stage 2 (64 KiB chunks) under `dir`, then reshards it to 5 ranks at
// stage 1 (64 KiB chunks) within `memory_bytes`, counting the heap while Reshard runs.
Resharded SaveAndReshard(const std::vector<testing::TestTensor>& model, const std::string& dir,
                         uint64_t memory_bytes, const std::string& out) {
  io::Env* env = io::Env::Default();
  const std::string src = io::JoinPath(dir, "step-00000001");
  Result<bool> saved = env->Exists(src);
  if (!saved.ok() || !*saved) {
    InProcessStore store;
    WriterOptions w = TestWriterOptions(dir);
    w.chunk_bytes = 64 << 10;
    SaveOutcome s = SaveAll(env, model, {3, 2, 1}, 1, w, &store);
    EXPECT_TRUE(s.status[0].ok()) << s.status[0].ToString();
  }
  ReshardOptions o;
  o.layout = {5, 1, 1, 1};
  o.memory_bytes = memory_bytes;
  o.chunk_bytes = 64 << 10;
  o.io_backend = "pwrite";
  o.threads = 2;
  o.out = io::JoinPath(dir, out);
  Result<ReshardResult> r = Status::Unavailable("not run");
  Resharded res;
  res.peak = PeakHeapBytes([&] { r = Reshard(env, src, o); });
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  if (r.ok()) res.chunks = r->source_chunks_read + r->logical_bytes / o.chunk_bytes + 5;
  std::printf("reshard of a %s model with --memory %s: peak heap %s (%" PRIu64 " chunks)\n",
              io::FormatBytes(BytesOf(model)).c_str(), io::FormatBytes(memory_bytes).c_str(),
              io::FormatBytes(static_cast<uint64_t>(res.peak)).c_str(), res.chunks);
  return res;
}

// Models of 4 and 32 MiB resharded within 1 MiB: the peak heap is the limit plus what does not
// depend on the model (libhdf5 writing the manifest: 3.5 MiB measured, its caches; a zstd
// context per encoder thread: 0.2 MiB) plus the plan (under 1 KiB per chunk: 0.02% of a model
// at the default 4 MiB chunks), and it hardly grows from the small model to the 8 times
// larger one. Given more
// memory than the model, the same reshard holds most of the model at once: the count sees
// Reshard's buffers, and this test fails if the limit stops binding them.
TEST(ReshardMemoryTest, PeakHeapStaysWithinTheMemoryLimitWhenTheModelIsLarger) {
  const uint64_t limit = 1 << 20;
  const int64_t fixed = int64_t{9} << 19;  // 4.5 MiB
  const int64_t per_chunk = 1 << 10;
  testing::TempDir tmp;
  const std::vector<testing::TestTensor> small = ModelOf(1), large = ModelOf(8);
  const Resharded s = SaveAndReshard(small, tmp.Join("small"), limit, "bounded");
  const Resharded l = SaveAndReshard(large, tmp.Join("large"), limit, "bounded");
  DS_ASSERT_OK(LoadAndCompare(io::Env::Default(), tmp.Join("large/bounded"), large, {5, 1, 1}));
  for (const Resharded& r : {s, l}) {
    EXPECT_LE(r.peak,
              static_cast<int64_t>(limit) + fixed + per_chunk * static_cast<int64_t>(r.chunks))
        << "Reshard held more than --memory " << limit << " plus the fixed and per-chunk parts";
  }
  EXPECT_LE(l.peak - s.peak, per_chunk * static_cast<int64_t>(l.chunks - s.chunks) + (256 << 10))
      << "the peak grew with the model beyond its plan";
  EXPECT_LT(l.peak, static_cast<int64_t>(BytesOf(large)) / 4);
  const Resharded roomy = SaveAndReshard(large, tmp.Join("large"), 2 * BytesOf(large), "roomy");
  // The batch of target chunks (3/8 of the memory) now holds most of the model.
  EXPECT_GT(roomy.peak, static_cast<int64_t>(BytesOf(large)) / 4);
}

}  // namespace
}  // namespace ds::ckpt
