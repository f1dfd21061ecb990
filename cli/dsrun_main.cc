// dsrun: train with ZeRO from a DeepSpeed JSON config (engine/launch/dsrun.h).
#include "engine/launch/dsrun.h"

int main(int argc, char** argv) { return ds::engine::DsrunMain(argc, argv); }
