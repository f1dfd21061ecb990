// dsrun: the training launcher. This build knows its runtime (--version); training itself
// arrives with the engine (docs/engine.md tracks what is implemented).
#include <CLI/CLI.hpp>
#include <cstdio>

#include "engine/runtime_info.h"

int main(int argc, char** argv) {
  CLI::App app{"dsrun: train with ZeRO from a DeepSpeed JSON config"};
  bool version = false;
  app.add_flag("--version", version, "Print versions of dstrain, LibTorch, CUDA, NCCL and Gloo");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  if (version) {
    std::printf("dsrun %s\n%s", DSTRAIN_VERSION,
                ds::engine::DescribeRuntime(ds::engine::QueryRuntime()).c_str());
    return 0;
  }
  std::fputs(app.help().c_str(), stdout);
  return 2;
}
