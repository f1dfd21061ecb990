// Tensor and pipeline parallelism in the trainer: this rank's place in the job, its process
// groups, its part of the model (engine/model/split.h), and where each parameter sits in the
// whole model.
// Thread safety: the training thread only.
#pragma once

#include <memory>
#include <vector>

#include "engine/comm/comm.h"
#include "engine/config/config.h"
#include "engine/model/model.h"
#include "engine/model/split.h"
#include "engine/train/state_plan.h"

namespace ds::engine {

// This rank's place in a tensor- and pipeline-parallel job. The world is dp x pp x tp ranks:
// rank = (stage * dp + dp_rank) * tp + tp_rank.
struct ParallelState {
  int tp = 1, pp = 1, dp = 1;
  int tp_rank = 0, stage = 0, dp_rank = 0;
  // Groups, made only when the job splits the model: the tensor-parallel ranks of this stage and
  // replica; the data-parallel ranks holding the same part; the parts of this replica (tp x pp
  // ranks); the stages of this tensor-parallel rank (pipe, by stage); the first and last stage
  // (their tied embedding).
  std::unique_ptr<Comm> tp_comm, dp_comm, model_comm, pipe_comm, tied_comm;
  std::shared_ptr<LanguageModel> model;  // this rank's part, when split
  SplitModel* parts = nullptr;           // the same model, as split.h sees it
  bool split() const { return tp * pp > 1; }
  bool first_stage() const { return stage == 0; }
  bool last_stage() const { return stage == pp - 1; }
};

// Places rank `rank` of `world_size` per config.parallel; when the model is split, makes the
// groups (over `world`) and this rank's part of the model (`model`, `parts`).
Status SetupParallel(const Config& config, int rank, int world_size, Comm* world,
                     ParallelState* par);

// Where each of `model`'s parameters (ZeRO's order) sits in the whole model.
std::vector<TensorPlace> FindPlaces(const LanguageModel& model, const ParallelState& par);

}  // namespace ds::engine
