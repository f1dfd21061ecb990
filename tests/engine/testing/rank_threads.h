// Ranks as threads of one test process: each runs its own Trainer, Gloo process group and
// TCPStore client over loopback. Used by the ZeRO and resume tests.
// Thread safety: RunRanks starts and joins its threads.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "ckpt/catalog.h"
#include "ckpt/diff.h"
#include "engine/train/trainer.h"
#include "launch/launcher.h"

namespace ds::engine::testing {

// Runs fn(rank, port) for every rank at once and waits for all.
inline void RunRanks(int world, const std::function<void(int rank, int port)>& fn) {
  Result<int> port_or = launch::PickFreePort();
  ASSERT_TRUE(port_or.ok()) << port_or.status().ToString();
  const int port = *port_or;
  std::vector<std::thread> ranks;
  for (int r = 0; r < world; ++r) ranks.emplace_back([&fn, r, port] { fn(r, port); });
  for (std::thread& t : ranks) t.join();
}

// Rank `rank` of `world` of `c`, trained on the CPU, rendezvous on `port`. `will_resume`: as
// dsrun --resume says it (TrainerOptions::will_resume).
inline Result<std::unique_ptr<Trainer>> MakeRankTrainerOf(const Config& c, int world, int rank,
                                                          int port, const std::string& corpus_dir,
                                                          io::Env* env, bool will_resume) {
  TrainerOptions to;
  to.device = "cpu";
  to.rank = rank;
  to.world_size = world;
  to.master_port = port;
  to.corpus_cache_dir = corpus_dir;
  to.will_resume = will_resume;
  return Trainer::Create(env, c, to);
}

// `j` with `set` applied.
inline Result<std::unique_ptr<Trainer>> MakeRankTrainer(
    const nlohmann::json& j, const std::vector<std::string>& set, int world, int rank, int port,
    const std::string& corpus_dir, io::Env* env = io::Env::Default(), bool will_resume = false) {
  Overrides o;
  o.set = set;
  o.world_size = world;
  DS_ASSIGN_OR_RETURN(Config c, ParseConfig(j.dump(), o, "rank-test.json"));
  return MakeRankTrainerOf(c, world, rank, port, corpus_dir, env, will_resume);
}

// The same, from a config file read as dsrun reads it (LoadConfig: a model folder's sizes too).
inline Result<std::unique_ptr<Trainer>> MakeRankTrainerFromFile(const std::string& config_file,
                                                                const std::vector<std::string>& set,
                                                                int world, int rank, int port,
                                                                const std::string& corpus_dir,
                                                                bool will_resume = false) {
  Overrides o;
  o.set = set;
  o.world_size = world;
  DS_ASSIGN_OR_RETURN(Config c, LoadConfig(io::Env::Default(), config_file, o));
  return MakeRankTrainerOf(c, world, rank, port, corpus_dir, io::Env::Default(), will_resume);
}

// The checkpoint `latest` names under `out`/checkpoints, or "".
inline std::string LatestIn(const std::string& out) {
  Result<std::string> p = ckpt::Catalog(io::Env::Default(), out + "/checkpoints").Resolve("latest");
  return p.ok() ? *p : "";
}

// Every tensor of two checkpoints: equal within `atol` (0: bit-exact), and more than
// `at_least` of them.
inline void ExpectSameTensors(const std::string& a, const std::string& b, double atol,
                              size_t at_least) {
  ckpt::DiffOptions o;
  o.atol = atol;
  o.compare_blobs = false;  // the trainer's state names the layout
  Result<ckpt::DiffReport> d = ckpt::DiffCheckpoints(io::Env::Default(), a, b, o);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  for (const ckpt::TensorDiff& t : d->tensors) {
    EXPECT_EQ(t.kind, ckpt::TensorDiffKind::kEqual)
        << t.name << ": " << ckpt::TensorDiffKindName(t.kind) << ", max |a - b| " << t.max_abs;
  }
  EXPECT_GT(d->tensors.size(), at_least);
}

// What `dsrun --resume <from>` asks for ("latest", a tag, or a checkpoint directory).
inline ResumeOptions ResumeFrom(const std::string& from = "latest") {
  ResumeOptions r;
  r.from = from;
  return r;
}

}  // namespace ds::engine::testing

// Every rank's run (a vector of structs with a `status`) succeeded.
#define ASSERT_RANKS_OK(runs)                                                                     \
  for (size_t r_ = 0; r_ < (runs).size(); ++r_) {                                                 \
    ASSERT_TRUE((runs)[r_].status.ok()) << "rank " << r_ << ": " << (runs)[r_].status.ToString(); \
  }
