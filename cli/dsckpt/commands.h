// The dsckpt subcommands, each registered on a CLI11 app; a command's callback stores its exit
// code in the context. Thread safety: single-threaded (command-line parsing).
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "io/status.h"

namespace ds::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitProblem = 1;  // damage found, difference found
inline constexpr int kExitUsage = 2;    // bad arguments, unreadable input, I/O error

struct DsckptContext {
  int exit_code = kExitOk;
};

// Prints "dsckpt: <message>" on stderr and returns the exit code for an error status.
int ReportError(const Status& status);

void AddBenchCommands(CLI::App& app, DsckptContext& ctx);
void AddInspectCommands(CLI::App& app, DsckptContext& ctx);
void AddCatalogCommands(CLI::App& app, DsckptContext& ctx);  // list, best, prune, gc
void AddExportCommands(CLI::App& app, DsckptContext& ctx);   // diff, export, import
void AddReshardCommands(CLI::App& app, DsckptContext& ctx);  // reshard

}  // namespace ds::cli
