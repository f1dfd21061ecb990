// dsrun's command line as a library function, so a program that registers its own model
// (engine/model/model.h) gets the same command line, config handling and exit codes:
//   dsrun --config cfg.json [--set key.path=value ...] [--max-steps N] [--seed S] [--dry-run]
// Exit codes: 0 trained (or the dry run passed), 2 a usage or config error, 1 training failed.
#pragma once

namespace ds::engine {

int DsrunMain(int argc, char** argv);

}  // namespace ds::engine
