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

// Rank `rank` of `world`: `j` with `set` applied, trained on the CPU, rendezvous on `port`.
// `will_resume`: as dsrun --resume says it (TrainerOptions::will_resume).
inline Result<std::unique_ptr<Trainer>> MakeRankTrainer(
    const nlohmann::json& j, const std::vector<std::string>& set, int world, int rank, int port,
    const std::string& corpus_dir, io::Env* env = io::Env::Default(), bool will_resume = false) {
  Overrides o;
  o.set = set;
  o.world_size = world;
  DS_ASSIGN_OR_RETURN(Config c, ParseConfig(j.dump(), o, "rank-test.json"));
  TrainerOptions to;
  to.device = "cpu";
  to.rank = rank;
  to.world_size = world;
  to.master_port = port;
  to.corpus_cache_dir = corpus_dir;
  to.will_resume = will_resume;
  return Trainer::Create(env, c, to);
}

// The same, from a config file read as dsrun reads it (LoadConfig: a model folder's sizes too).
inline Result<std::unique_ptr<Trainer>> MakeRankTrainerFromFile(
    const std::string& config_file, const std::vector<std::string>& set, int world, int rank,
    int port, const std::string& corpus_dir, bool will_resume = false) {
  Overrides o;
  o.set = set;
  o.world_size = world;
  DS_ASSIGN_OR_RETURN(Config c, LoadConfig(io::Env::Default(), config_file, o));
  TrainerOptions to;
  to.device = "cpu";
  to.rank = rank;
  to.world_size = world;
  to.master_port = port;
  to.corpus_cache_dir = corpus_dir;
  to.will_resume = will_resume;
  return Trainer::Create(io::Env::Default(), c, to);
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
