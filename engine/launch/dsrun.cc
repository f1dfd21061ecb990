#include "engine/launch/dsrun.h"

#include <CLI/CLI.hpp>
#include <cstdio>

#include "engine/config/config.h"
#include "engine/config/memory.h"
#include "engine/runtime_info.h"
#include "engine/train/trainer.h"
#include "io/log.h"

namespace {

constexpr int kExitTrainingFailed = 1;
constexpr int kExitUsage = 2;

struct Flags {
  std::string config;
  std::vector<std::string> set;
  std::optional<int64_t> max_steps;
  std::optional<uint64_t> seed;
  std::string device;
  bool dry_run = false;
  bool strict = false;
  bool version = false;
};

int Fail(int code, const ds::Status& s) {
  std::fprintf(stderr, "dsrun: %s\n", s.message().c_str());
  return code;
}

int Run(const Flags& f) {
  ds::io::Env* env = ds::io::Env::Default();
  ds::engine::Overrides o;
  o.set = f.set;
  o.max_steps = f.max_steps;
  o.seed = f.seed;
  o.strict = f.strict;
  ds::Result<ds::engine::Config> config = ds::engine::LoadConfig(env, f.config, o);
  if (!config.ok()) return Fail(kExitUsage, config.status());
  for (const std::string& w : config->warnings) ds::io::LogWarning(w);
  if (!config->not_implemented.empty()) {
    std::string keys;
    for (const std::string& k : config->not_implemented) keys += (keys.empty() ? "" : ", ") + k;
    ds::io::LogWarning(f.config + ": accepted but not implemented (no effect): " + keys);
  }
  if (f.dry_run) {
    std::printf("%s\n\n%s", config->resolved.dump(2).c_str(),
                ds::engine::FormatMemoryTable(*config).c_str());
    std::printf("\n%s: the config resolves; drop --dry-run to train\n", f.config.c_str());
    return 0;
  }
  ds::engine::TrainerOptions topts;
  topts.device = f.device;
  ds::Result<std::unique_ptr<ds::engine::Trainer>> trainer =
      ds::engine::Trainer::Create(env, *config, topts);
  if (!trainer.ok()) return Fail(kExitUsage, trainer.status());
  ds::Result<ds::engine::TrainSummary> s = (*trainer)->Run();
  if (!s.ok()) return Fail(kExitTrainingFailed, s.status());
  std::printf("trained %lld steps on %s in %.1f s (%.0f tokens/s): loss %.4f -> %.4f",
              static_cast<long long>(s->steps), s->device.c_str(), s->seconds, s->tokens_per_s,
              s->first_loss, s->last_loss);
  if (s->last_eval_loss) std::printf(", eval loss %.4f", *s->last_eval_loss);
  if (s->skipped_steps > 0) std::printf(", %lld steps skipped (overflow)", static_cast<long long>(s->skipped_steps));
  std::printf("\nmetrics: %s/metrics.jsonl\n", config->trainer.output_dir.c_str());
  return 0;
}

}  // namespace

namespace ds::engine {

int DsrunMain(int argc, char** argv) {
  CLI::App app{"dsrun: train with ZeRO from a DeepSpeed JSON config"};
  Flags f;
  app.add_option("--config", f.config, "DeepSpeed JSON config (with our model/data/trainer sections)");
  app.add_option("--set", f.set, "Override a key: --set optimizer.params.lr=3e-4 (repeatable)")
      ->take_all();
  app.add_option("--max-steps", f.max_steps, "Optimizer steps to train (trainer.max_steps)");
  app.add_option("--seed", f.seed, "Seed (trainer.seed)");
  app.add_option("--device", f.device, "cpu, cuda or cuda:N (default: cuda when a GPU is visible)");
  app.add_flag("--dry-run", f.dry_run,
               "Validate, print the resolved config and the memory per rank at each ZeRO stage");
  app.add_flag("--strict", f.strict, "Unknown config keys are errors, not warnings");
  app.add_flag("--version", f.version, "Print versions of dstrain, LibTorch, CUDA, NCCL and Gloo");
  app.footer(
      "Examples:\n"
      "  dsrun --config examples/demo.json\n"
      "  dsrun --config cfg.json --set zero_optimization.stage=2 --max-steps 100 --dry-run");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : kExitUsage;
  }
  if (f.version) {
    std::printf("dsrun %s\n%s", DSTRAIN_VERSION,
                ds::engine::DescribeRuntime(ds::engine::QueryRuntime()).c_str());
    return 0;
  }
  if (f.config.empty()) {
    std::fputs(app.help().c_str(), stderr);
    std::fprintf(stderr, "dsrun: --config is required\n");
    return kExitUsage;
  }
  return Run(f);
}

}  // namespace ds::engine
