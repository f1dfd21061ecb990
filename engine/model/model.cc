#include "engine/model/model.h"

#include <map>
#include <mutex>

#include "engine/model/bert.h"
#include "engine/model/gpt.h"
#include "engine/model/hf_gpt2.h"
#include "engine/model/llama.h"
#include "engine/model/split.h"
#include "engine/torch_status.h"
#include "io/log.h"

namespace ds::engine {
namespace {

struct Registry {
  std::mutex mu;
  std::map<std::string, ModelFactory> factories;
};

Result<std::shared_ptr<LanguageModel>> MakeGpt(const ModelConfig& c, uint64_t seed) {
  return std::shared_ptr<LanguageModel>(std::make_shared<GptImpl>(GptOptionsOf(c, seed)));
}

// A Hugging Face folder's model (model.hf_path): its family, its sizes, its weights; this rank's
// part at `place`.
Result<std::shared_ptr<LanguageModel>> MakeHfPart(const ModelConfig& c, uint64_t seed,
                                                  ModelPlace place) {
  if (c.hf_path.empty()) {
    return Status::InvalidArgument(
        "model.arch \"hf\" needs model.hf_path (or dsrun --model_name): a Hugging Face model "
        "folder");
  }
  DS_ASSIGN_OR_RETURN(HfModelSpec spec, ReadHfModel(io::Env::Default(), c.hf_path));
  HfModelOptions o;
  o.spec = std::move(spec);
  o.seq_len = c.seq_len;
  o.activation_checkpointing = c.activation_checkpointing;
  o.seed = seed;
  o.deferred = DeferredInit::Active();
  o.place = std::move(place);
  for (const std::string& w : o.spec.warnings) io::LogWarning(w);
  if (o.spec.family == "bert") {
    if (!o.place.whole()) {
      return Status::InvalidArgument(o.spec.architecture +
                                     " is not split across ranks (tensor_parallel.autotp_size, "
                                     "pipeline.stages): train it with ZeRO's data parallelism");
    }
    return std::shared_ptr<LanguageModel>(std::make_shared<BertImpl>(std::move(o)));
  }
  if (o.spec.family == "gpt2") {
    return std::shared_ptr<LanguageModel>(std::make_shared<HfGpt2Impl>(std::move(o)));
  }
  return std::shared_ptr<LanguageModel>(std::make_shared<LlamaImpl>(std::move(o)));
}

Result<std::shared_ptr<LanguageModel>> MakeHf(const ModelConfig& c, uint64_t seed) {
  return MakeHfPart(c, seed, ModelPlace{});
}

// Factories draw from LibTorch's global generator after seeding it: two models built at once
// (ranks as threads of one process) would interleave their draws.
std::mutex& BuildMutex() {
  static std::mutex building;
  return building;
}

Registry& TheRegistry() {
  static Registry* r = [] {
    auto* reg = new Registry;
    reg->factories["gpt"] = MakeGpt;
    reg->factories["hf"] = MakeHf;
    return reg;
  }();
  return *r;
}

thread_local bool deferring = false;

}  // namespace

DeferredInit::DeferredInit() : outer_(deferring) { deferring = true; }
DeferredInit::~DeferredInit() { deferring = outer_; }
bool DeferredInit::Active() { return deferring; }

torch::Tensor LanguageModel::InitialValues(const std::string& name, int64_t begin,
                                           int64_t end) const {
  // A deferred model's parameters are placeholders: their values are not here to give.
  TORCH_CHECK_VALUE(!deferred(), "parameter ", name,
                    ": the model defers its initial values (deferred() is true) but does not "
                    "give them: override LanguageModel::InitialValues");
  const torch::Tensor* p = named_parameters().find(name);
  TORCH_CHECK(p != nullptr, "the model has no parameter ", name);
  torch::NoGradGuard no_grad;
  return p->detach()
      .reshape({-1})
      .narrow(0, begin, end - begin)
      .to(torch::kCPU, torch::kFloat, false, /*copy=*/true);
}

void RegisterModel(const std::string& name, ModelFactory factory) {
  Registry& r = TheRegistry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.factories[name] = std::move(factory);
}

std::vector<std::string> RegisteredModels() {
  Registry& r = TheRegistry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<std::string> names;
  for (const auto& [name, f] : r.factories) names.push_back(name);
  return names;
}

Result<std::shared_ptr<LanguageModel>> MakeModel(const ModelConfig& config, uint64_t seed) {
  ModelFactory f;
  {
    Registry& r = TheRegistry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.factories.find(config.arch);
    if (it == r.factories.end()) {
      std::string known;
      for (const auto& [name, fn] : r.factories) known += (known.empty() ? "" : ", ") + name;
      return Status::InvalidArgument(
          "model.arch '" + config.arch + "' is not a registered model (" + known +
          "); register it with ds::engine::RegisterModel before " + "calling DsrunMain");
    }
    f = it->second;
  }
  std::lock_guard<std::mutex> lock(BuildMutex());
  try {
    torch::manual_seed(seed);
    Result<std::shared_ptr<LanguageModel>> m = f(config, seed);
    if (m.ok() && *m == nullptr) {
      return Status::InvalidArgument("the factory of model '" + config.arch +
                                     "' returned no model");
    }
    return m;
  } catch (const std::exception& e) {
    return TorchError(e, "building model '" + config.arch + "'", StatusCode::kInvalidArgument);
  }
}

GptOptions GptOptionsOf(const ModelConfig& c, uint64_t seed) {
  GptOptions g;
  g.n_layer = c.n_layer;
  g.n_head = c.n_head;
  g.d_model = c.d_model;
  g.seq_len = c.seq_len;
  g.vocab = c.vocab;
  g.activation_checkpointing = c.activation_checkpointing;
  g.seed = seed;
  g.deferred = DeferredInit::Active();
  return g;
}

Result<std::shared_ptr<LanguageModel>> MakeModelPart(const ModelConfig& config, uint64_t seed,
                                                     ModelPlace place) {
  if (config.arch != "gpt" && config.arch != "hf") {
    return Status::InvalidArgument("model.arch '" + config.arch +
                                   "' is not split across ranks: only the built-in GPT and a "
                                   "Llama or GPT-2 folder (model.hf_path) are");
  }
  std::lock_guard<std::mutex> lock(BuildMutex());
  try {
    if (config.arch == "hf") return MakeHfPart(config, seed, std::move(place));
    return std::shared_ptr<LanguageModel>(
        std::make_shared<GptImpl>(GptOptionsOf(config, seed), std::move(place)));
  } catch (const std::exception& e) {
    return TorchError(e, "building this rank's part of the model", StatusCode::kInvalidArgument);
  }
}

}  // namespace ds::engine
