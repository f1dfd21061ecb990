// dsckpt list / best / prune / gc (being written).
#include "cli/dsckpt_commands.h"

namespace ds::cli {
void AddCatalogCommands(CLI::App& app, DsckptContext& ctx) {
  (void)app;
  (void)ctx;
}
}  // namespace ds::cli
