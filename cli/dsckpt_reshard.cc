// dsckpt reshard (being written).
#include "cli/dsckpt_commands.h"

namespace ds::cli {
void AddReshardCommands(CLI::App& app, DsckptContext& ctx) {
  (void)app;
  (void)ctx;
}
}  // namespace ds::cli
