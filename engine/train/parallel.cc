// Tensor and pipeline parallelism: this rank's place, its groups, its part of the model, and where
// each parameter sits in the whole model (for the gradient norm and checkpoints). The pipeline's
// 1F1B schedule is a step runner (step_pipeline.cc).
#include "engine/train/parallel.h"

#include <algorithm>

namespace ds::engine {

Status SetupParallel(const Config& config, int rank, int world_size, Comm* world,
                     ParallelState* par) {
  ParallelState& p = *par;
  p.tp = static_cast<int>(config.parallel.tp);
  p.pp = static_cast<int>(config.parallel.pp);
  p.dp = world_size / (p.tp * p.pp);
  const int r = rank;
  p.tp_rank = r % p.tp;
  p.dp_rank = r / p.tp % p.dp;
  p.stage = r / (p.tp * p.dp);
  if (!p.split()) {
    p.dp_rank = r;
    return Status::OK();
  }
  if (p.tp * p.pp * p.dp != world_size) {
    return Status::InvalidArgument("tensor-parallel degree " + std::to_string(p.tp) + " x " +
                                   std::to_string(p.pp) + " pipeline stages does not divide " +
                                   std::to_string(world_size) + " ranks");
  }
  auto rank_of = [&p](int stage, int dp_rank, int tp_rank) {
    return (stage * p.dp + dp_rank) * p.tp + tp_rank;
  };
  // Every rank makes the groups it is in, in this order (a group's rendezvous waits for all of
  // its members).
  auto group = [&](const std::string& name, std::vector<int> ranks,
                   std::unique_ptr<Comm>* out) -> Status {
    std::sort(ranks.begin(), ranks.end());
    DS_ASSIGN_OR_RETURN(*out, world->NewGroup(name, ranks));
    return Status::OK();
  };
  const std::string at = std::to_string(p.stage) + "-" + std::to_string(p.dp_rank);
  std::vector<int> tp_ranks, dp_ranks, model_ranks, pipe_ranks;
  for (int t = 0; t < p.tp; ++t) tp_ranks.push_back(rank_of(p.stage, p.dp_rank, t));
  for (int d = 0; d < p.dp; ++d) dp_ranks.push_back(rank_of(p.stage, d, p.tp_rank));
  for (int s = 0; s < p.pp; ++s) {
    for (int t = 0; t < p.tp; ++t) model_ranks.push_back(rank_of(s, p.dp_rank, t));
    pipe_ranks.push_back(rank_of(s, p.dp_rank, p.tp_rank));
  }
  const std::string replica = std::to_string(p.dp_rank) + "-" + std::to_string(p.tp_rank);
  DS_RETURN_IF_ERROR(group("tp-" + at, tp_ranks, &p.tp_comm));
  DS_RETURN_IF_ERROR(group("dp-" + std::to_string(p.stage) + "-" + std::to_string(p.tp_rank),
                           dp_ranks, &p.dp_comm));
  DS_RETURN_IF_ERROR(group("model-" + std::to_string(p.dp_rank), model_ranks, &p.model_comm));
  DS_RETURN_IF_ERROR(group("pipe-" + replica, pipe_ranks, &p.pipe_comm));
  if (p.pp > 1 && (p.first_stage() || p.last_stage())) {
    DS_RETURN_IF_ERROR(
        group("tied-" + replica, {pipe_ranks.front(), pipe_ranks.back()}, &p.tied_comm));
  }

  ModelPlace place;
  place.tp = p.tp;
  place.tp_rank = p.tp_rank;
  place.pp = p.pp;
  place.stage = p.stage;
  place.tp_all_reduce = [c = p.tp_comm.get()](torch::Tensor& t) {
    Status s = c->AllReduce(t, "tensor-parallel partial sums");
    TORCH_CHECK(s.ok(), s.message());
  };
  DS_ASSIGN_OR_RETURN(p.model, MakeModelPart(config.model, config.trainer.seed, std::move(place)));
  p.parts = dynamic_cast<SplitModel*>(p.model.get());
  if (p.parts == nullptr)
    return Status::FailedPrecondition("MakeModelPart made a model that cannot split");
  return Status::OK();
}

std::vector<TensorPlace> FindPlaces(const LanguageModel& model, const ParallelState& par) {
  std::vector<TensorPlace> places;
  for (const auto& p : model.named_parameters()) {  // ZeRO's order
    TensorPlace t;
    t.name = p.key();
    t.shape = p.value().sizes().vec();
    if (par.parts != nullptr) {
      t.split = par.parts->TpSplitOf(t.name);
      if (t.split.dim >= 0) t.shape[static_cast<size_t>(t.split.dim)] *= par.tp;
      // The last stage's copy of a tied embedding is the first stage's to count and save.
      t.owned = (t.split.dim >= 0 || par.tp_rank == 0) &&
                !(t.name == par.parts->tied_embedding() && par.pp > 1 && !par.first_stage());
    }
    places.push_back(std::move(t));
  }
  return places;
}

}  // namespace ds::engine
