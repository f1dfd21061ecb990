// dsckpt diff / export / import (being written).
#include "cli/dsckpt_commands.h"

namespace ds::cli {
void AddExportCommands(CLI::App& app, DsckptContext& ctx) {
  (void)app;
  (void)ctx;
}
}  // namespace ds::cli
