// dsckpt: checkpoint tools that run with no GPU and no LibTorch (login nodes, cron boxes).
// Exit codes: 0 ok, 1 found a problem or a difference, 2 usage or I/O error.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "cli/dsckpt/commands.h"
#include "io/env.h"
#include "io/log.h"

namespace {

// Commands run in their CLI11 callbacks, during parsing; without them parsing runs nothing.
void DropCallbacks(CLI::App& app) {
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    sub->callback({});
    DropCallbacks(*sub);
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "dsckpt: inspect, verify and manage dstrain checkpoints (no GPU, no LibTorch needed)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("dsckpt ") + DSTRAIN_VERSION);
  app.footer(
      "Exit codes: 0 ok, 1 a problem or difference was found, 2 usage or I/O error.\n"
      "Examples:\n"
      "  dsckpt inspect ckpts/\n"
      "  dsckpt verify ckpts/step-00001000\n"
      "  dsckpt bench io --dir /scratch --size 4G --json");
  ds::cli::DsckptContext ctx;
  ds::cli::AddInspectCommands(app, ctx);
  ds::cli::AddCatalogCommands(app, ctx);
  ds::cli::AddReshardCommands(app, ctx);
  ds::cli::AddExportCommands(app, ctx);
  ds::cli::AddBenchCommands(app, ctx);
  // Parse only, run nothing: tests/docs/docs_commands_test.py checks the commands in the docs.
  if (ds::io::Env::Default()->GetEnvVar("DSTRAIN_CHECK_ARGS") == "1") DropCallbacks(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : ds::cli::kExitUsage;
  }
  return ctx.exit_code;
}
