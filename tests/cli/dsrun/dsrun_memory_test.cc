// Partitioned construction, measured where it matters: the host memory of real rank processes.
// `dsrun bench` runs 4 ranks over Gloo on this CPU at stages 0 and 3 and reports each rank's
// high-water mark (VmHWM) once the model and state are built, and at the end of its steps.
//
// The bound. N parameters trained in fp32: a stage-0 rank holds 20N bytes of model state
// (weights, gradient accumulator, master, Adam's two moments); a stage-3 rank of 4 holds a
// quarter of it, 5N (its partitions of the same five), plus a window: the units gathered and
// prefetched, their gradients and the reduce-scatter buffers, a few units' worth. What the
// process holds besides (LibTorch, Gloo, the data) is measured by the same run with a tiny model:
//     peak(N) - peak(tiny) <= 5N + window.
// A stage 3 that built the whole model on each rank first (as before zero.Init) holds at least
// the fp32 model and its copy besides its partitions at init, 13N, and fails this.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "bench/fio.h"
#include "testing/matchers.h"
#include "testing/paths.h"
#include "testing/shell.h"

namespace ds {
namespace {

using testing::Sh;
using testing::ShellResult;

std::string Q(const std::string& s) { return bench::ShellQuote(s); }

// `dsrun bench` of one stage-3 row on 4 ranks of a GPT of `layers` blocks of width `d`: the row.
nlohmann::json Stage3Row(const std::string& out_dir, int64_t layers, int64_t d, int64_t vocab,
                         int64_t seq) {
  const ShellResult r =
      Sh("timeout 600 " + Q(testing::BuildDir() + "/dsrun") + " bench --device cpu --config " +
         Q(testing::SourceDir() + "/examples/demo.json") +
         " --nproc-per-node 4 --stages 3 --warmup 0 --steps 1 --json --set model.n_layer=" +
         std::to_string(layers) + " model.d_model=" + std::to_string(d) +
         " model.n_head=8 model.vocab=" + std::to_string(vocab) +
         " model.seq_len=" + std::to_string(seq) +
         " train_micro_batch_size_per_gpu=1 gradient_accumulation_steps=1 bf16.enabled=false"
         " fp16.enabled=false checkpoint.enabled=false tensorboard.enabled=false"
         " trainer.eval_interval=0 zero_optimization.stage3_param_persistence_threshold=0"
         " zero_optimization.stage3_prefetch_bucket_size=" +
         std::to_string(12 * d * d + 13 * d) +  // one unit ahead (the default is 50M: all of it)
         " trainer.output_dir=" + Q(out_dir));
  EXPECT_EQ(r.status, 0) << r.out;
  const size_t at = r.out.rfind("{\"bench\"");
  if (r.status != 0 || at == std::string::npos) return {};
  std::printf(
      "%s", r.out.substr(r.out.rfind("\nZeRO stages"), at - r.out.rfind("\nZeRO stages")).c_str());
  const nlohmann::json j = nlohmann::json::parse(r.out.substr(at, r.out.find('\n', at) - at));
  if (j["rows"].size() != 1) return {};
  return j["rows"][0];
}

TEST(DsrunMemoryTest, AStage3RankHoldsAQuarterOfTheStatePlusAWindowAtInitAndInSteps) {
  testing::TempDir dir;
  // 16 blocks of d_model 512: N ~ 50.6M parameters, a block (unit) 3.1M; 8 tokens a step.
  const int64_t layers = 16, d = 512, vocab = 256, seq = 8;
  const double unit = 12.0 * d * d + 13.0 * d;
  const double n = layers * unit + (vocab + seq) * d + 2.0 * d;
  const nlohmann::json big = Stage3Row(dir.Join("big"), layers, d, vocab, seq);
  const nlohmann::json tiny = Stage3Row(dir.Join("tiny"), 1, 64, vocab, seq);
  for (const char* key : {"max_rank_init_peak_rss_bytes", "max_rank_peak_rss_bytes"}) {
    ASSERT_TRUE(big.contains(key) && tiny.contains(key)) << key;
  }
  const double mib = 1024.0 * 1024.0;
  const double window = 8 * unit * 4 + 64 * mib;  // 8 units in fp32, and the allocator's slack
  const double bound = 5 * n + window;
  const double init = big["max_rank_init_peak_rss_bytes"].get<double>() -
                      tiny["max_rank_init_peak_rss_bytes"].get<double>();
  const double peak =
      big["max_rank_peak_rss_bytes"].get<double>() - tiny["max_rank_peak_rss_bytes"].get<double>();
  std::printf(
      "N = %.1fM; a stage-3 rank of 4 beyond the tiny model's: %.0f MiB at init, %.0f MiB "
      "in steps; bound %.0f MiB (the whole state: %.0f MiB)\n",
      n / 1e6, init / mib, peak / mib, bound / mib, 20 * n / mib);
  EXPECT_LE(init, bound);
  EXPECT_LE(peak, bound);
  // The state itself, as the engine counts it: a quarter (padding aside).
  EXPECT_NEAR(big["model_state_bytes"].get<double>(), 5 * n, 0.01 * 5 * n);
}

}  // namespace
}  // namespace ds
