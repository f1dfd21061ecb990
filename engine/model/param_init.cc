#include "engine/model/param_init.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/set.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <span>
#include <string_view>

#include "formats/chunk_codec.h"

namespace ds::engine {
namespace {

// A name's hash that is the same in every build (std::hash is not): the checksum's xxh64.
uint64_t NameHash(std::string_view name) { return fmt::Xxh64(std::as_bytes(std::span(name))); }

// splitmix64's finaliser: spreads nearby inputs (block k, k + 1) over the whole seed space.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

at::Tensor InitRange(const InitSpec& spec, uint64_t seed, const std::string& name, int64_t numel,
                     int64_t begin, int64_t end) {
  TORCH_CHECK(0 <= begin && begin <= end && end <= numel, "initial values of ", name, ": range [",
              begin, ", ", end, ") is outside its ", numel, " elements");
  at::Tensor out = at::empty({end - begin}, at::kFloat);
  if (spec.kind == InitSpec::Kind::kConstant) return out.fill_(spec.value);
  if (begin == end) return out;
  const uint64_t base = Mix(seed ^ Mix(NameHash(name)));
  const int64_t first = begin / kInitBlockElements, last = (end - 1) / kInitBlockElements;
  at::parallel_for(first, last + 1, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      // The whole block, always: a normal draw's values depend on the length drawn.
      const int64_t lo = b * kInitBlockElements;
      const int64_t len = std::min(kInitBlockElements, numel - lo);
      at::Generator gen =
          at::make_generator<at::CPUGeneratorImpl>(Mix(base + static_cast<uint64_t>(b)));
      at::Tensor block = at::empty({len}, at::kDouble).normal_(spec.mean, spec.std, gen);
      const int64_t s = std::max(begin, lo), e = std::min(end, lo + len);
      out.narrow(0, s - begin, e - s).copy_(block.narrow(0, s - lo, e - s));
    }
  });
  return out;
}

at::Tensor ShapeOnly(const std::vector<int64_t>& shape) {
  // set_ rather than expand(): a view would stay one, as far as autograd knows, after set_data.
  at::Tensor one = at::empty({1}, at::kFloat);
  at::Tensor t = at::empty({0}, at::kFloat);
  t.set_(one.storage(), 0, shape, std::vector<int64_t>(shape.size(), 0));
  return t;
}

}  // namespace ds::engine
