// ParseConfig: JSON text -> --set overrides -> every section read in dependency order (see
// sections.h) -> cross-section checks -> unknown keys reported -> a typed, resolved Config.
#include "engine/config/config.h"

#include <algorithm>
#include <set>
#include <utility>

#include "engine/config/hf_model.h"
#include "engine/config/sections.h"
#include "io/units.h"

namespace ds::engine {

namespace {

using internal::Diagnostics;
using internal::SectionReader;
using nlohmann::json;

// A DeepSpeed config is a few levels deep; the limit keeps a crafted one (150,000 levels) from
// exhausting the stack of anything that walks the parsed tree.
constexpr int kMaxJsonDepth = 64;
constexpr uint64_t kMaxConfigBytes = 16 << 20;

// OK when no array or object in `text` nests deeper than kMaxJsonDepth; strings and comments
// are skipped, so brackets inside them do not count.
Status CheckJsonDepth(std::string_view text, std::string_view source) {
  int depth = 0, line = 1;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\n') {
      ++line;
    } else if (c == '"') {
      for (++i; i < text.size() && text[i] != '"'; ++i) {
        if (text[i] == '\\') ++i;
        if (i < text.size() && text[i] == '\n') ++line;
      }
    } else if (c == '/' && i + 1 < text.size() && text[i + 1] == '/') {
      while (i < text.size() && text[i] != '\n') ++i;
      --i;  // the newline is counted above
    } else if (c == '/' && i + 1 < text.size() && text[i + 1] == '*') {
      for (i += 2; i + 1 < text.size() && !(text[i] == '*' && text[i + 1] == '/'); ++i) {
        if (text[i] == '\n') ++line;
      }
      ++i;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) {
        return Status::InvalidArgument(std::string(source) + ": line " + std::to_string(line) +
                                       ": nested more than " + std::to_string(kMaxJsonDepth) +
                                       " levels deep (a DeepSpeed config has a few): is it the "
                                       "right file?");
      }
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return Status::OK();
}

// Parses JSON, refusing duplicate keys (DeepSpeed does: dict_raise_error_on_duplicate_keys;
// nlohmann would keep the last silently). Comments are allowed.
Result<json> ParseJsonText(std::string_view text, std::string_view source) {
  struct Frame {
    std::set<std::string> keys;
    std::string current;  // the key being parsed; "[]" inside arrays
  };
  std::vector<Frame> frames;
  std::string duplicate;  // the first duplicate key's path
  auto callback = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start: frames.push_back({}); break;
      case json::parse_event_t::array_start: frames.push_back({{}, "[]"}); break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        if (!frames.empty()) frames.pop_back();
        break;
      case json::parse_event_t::key: {
        Frame& f = frames.back();
        f.current = parsed.get<std::string>();
        if (!f.keys.insert(f.current).second && duplicate.empty()) {
          for (const Frame& outer : frames) {
            duplicate += (duplicate.empty() ? "" : ".") + outer.current;
          }
        }
        break;
      }
      case json::parse_event_t::value: break;
    }
    return true;
  };
  DS_RETURN_IF_ERROR(CheckJsonDepth(text, source));
  json root;
  try {
    root = json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/true,
                       /*ignore_comments=*/true);
  } catch (const json::parse_error& e) {
    std::string what = e.what();  // "[json.exception.parse_error.101] parse error at line ..."
    size_t at = what.find("] ");
    return Status::InvalidArgument(std::string(source) + ": not valid JSON: " +
                                   (at == std::string::npos ? what : what.substr(at + 2)));
  }
  if (!duplicate.empty()) {
    return Status::InvalidArgument(std::string(source) + ": duplicate key " + duplicate +
                                   " (DeepSpeed refuses duplicate keys too)");
  }
  if (!root.is_object()) {
    return Status::InvalidArgument(std::string(source) +
                                   ": the config must be a JSON object ({...})");
  }
  return root;
}

// Sets root[path[0]][path[1]]... = value, creating missing sections.
Status SetPath(json* root, const std::vector<std::string>& path, json value,
               std::string_view what) {
  json* node = root;
  std::string walked;
  for (size_t i = 0; i + 1 < path.size(); ++i) {
    walked += (walked.empty() ? "" : ".") + path[i];
    json& next = (*node)[path[i]];
    if (next.is_null()) next = json::object();
    if (!next.is_object()) {
      return Status::InvalidArgument(std::string(what) + ": " + walked + " is " + next.dump() +
                                     ", not a section");
    }
    node = &next;
  }
  // null removes the key: the value goes back to its default, as a key the file does not have.
  if (value.is_null()) {
    node->erase(path.back());
  } else {
    (*node)[path.back()] = std::move(value);
  }
  return Status::OK();
}

// The message for a key no reader knew, with the closest known key when there is one: first
// among its siblings, else the same name elsewhere ("stage" -> zero_optimization.stage).
std::string UnknownKeyMessage(const Diagnostics::Unknown& u, const Diagnostics& d, bool strict) {
  size_t dot = u.path.rfind('.');
  std::string key = dot == std::string::npos ? u.path : u.path.substr(dot + 1);
  std::optional<std::string> suggestion = internal::ClosestKey(key, u.siblings);
  if (!suggestion) {
    for (const std::string& known : d.known_paths) {
      std::string_view last = known;
      if (size_t kdot = last.rfind('.'); kdot != std::string_view::npos) {
        last = last.substr(kdot + 1);
      }
      if (known != u.path && internal::EditDistance(last, key) == 0) {
        suggestion = known;
        break;
      }
    }
  }
  std::string m = "unknown key " + u.path + (strict ? " (--strict)" : " is ignored");
  if (suggestion) m += "; did you mean " + *suggestion + "?";
  return m;
}

// Checks that need two sections (DeepSpeed's _do_error_check).
void CheckAcrossSections(const json& resolved, const ZeroConfig& zero, Diagnostics* d) {
  if (!d->ok()) return;
  const bool zero_on = zero.Stage().partitions_optimizer();
  if (resolved["fp16"].value("fp16_master_weights_and_grads", false) && !zero_on) {
    d->Error("fp16.fp16_master_weights_and_grads needs zero_optimization.stage 1, 2 or 3");
  } else if (resolved["bf16"].value("bf16_master_weights_and_grads", false) && !zero_on) {
    d->Error("bf16.bf16_master_weights_and_grads needs zero_optimization.stage 1, 2 or 3");
  } else if (resolved["bf16"].value("bf16_optimizer_states", false) && !zero_on) {
    d->Error("bf16.bf16_optimizer_states needs zero_optimization.stage 1, 2 or 3");
  }
}

// The world is dp x pp x tp ranks.
int64_t DataParallelSize(int64_t world, const ParallelConfig& p, Diagnostics* d) {
  const int64_t model_ranks = p.tp * p.pp;
  if (world % model_ranks != 0) {
    d->Error("tensor_parallel.autotp_size (" + std::to_string(p.tp) + ") x pipeline.stages (" +
             std::to_string(p.pp) + ") = " + std::to_string(model_ranks) +
             " does not divide the world size " + std::to_string(world) +
             ": launch a multiple of " + std::to_string(model_ranks) + " ranks");
    return 1;
  }
  return world / model_ranks;
}

// What tensor and pipeline parallelism need from the model and ZeRO (docs/parallelism.md).
void CheckParallelism(const Config& c, Diagnostics* d) {
  if (!d->ok() || (c.parallel.tp == 1 && c.parallel.pp == 1)) return;
  const ParallelConfig& p = c.parallel;
  const std::string tp = "tensor_parallel.autotp_size (" + std::to_string(p.tp) + ")";
  const std::string pp = "pipeline.stages (" + std::to_string(p.pp) + ")";
  // A folder's sizes are read later (LoadConfig, CheckHfParallelism).
  const bool sized = c.model.arch == "gpt";
  if (c.model.arch != "gpt" && c.model.arch != "hf") {
    d->Error((p.tp > 1 ? tp : pp) +
             ": only the built-in GPT (model.arch \"gpt\") and Llama or GPT-2 folders "
             "(model.hf_path) are split across ranks; model.arch is \"" +
             c.model.arch + "\"");
  } else if (sized && p.tp > 1 && c.model.n_head % p.tp != 0) {
    d->Error(tp + " must divide model.n_head (" + std::to_string(c.model.n_head) +
             "): each rank computes whole attention heads");
  } else if (sized && p.pp > c.model.n_layer) {
    d->Error(pp + " is more than model.n_layer (" + std::to_string(c.model.n_layer) +
             "): each stage needs at least one block");
  } else if (p.tp > 1 && c.zero.Stage().partitions_parameters()) {
    d->Error(tp + " works with zero_optimization.stage 0, 1 or 2, not 3");
  } else if (p.pp > 1 && c.zero.Stage().partitions_gradients()) {
    d->Error(pp + " works with zero_optimization.stage 0 or 1, not " +
             std::to_string(c.zero.stage) +
             " (as in DeepSpeed: gradients are accumulated over "
             "the pipeline's micro batches)");
  }
}

std::optional<int64_t> PeekSchedulerTotalSteps(const json& root) {
  auto s = root.find("scheduler");
  if (s == root.end() || !s->is_object()) return std::nullopt;
  auto p = s->find("params");
  if (p == s->end() || !p->is_object()) return std::nullopt;
  auto t = p->find("total_num_steps");
  if (t == p->end()) return std::nullopt;
  std::optional<int64_t> steps = internal::AsInteger(*t);
  return steps && *steps >= 1 ? steps : std::nullopt;
}

}  // namespace

Status ApplySetOverride(std::string_view assignment, json* root) {
  std::string what = "--set '" + std::string(assignment) + "'";
  size_t eq = assignment.find('=');
  if (eq == std::string_view::npos) {
    return Status::InvalidArgument(what +
                                   ": expected key.path=value (e.g. --set "
                                   "zero_optimization.stage=2)");
  }
  std::string_view key = assignment.substr(0, eq);
  std::string_view text = assignment.substr(eq + 1);
  std::vector<std::string> path;
  size_t start = 0;
  while (true) {
    size_t dot = key.find('.', start);
    std::string_view part = key.substr(start, dot == std::string_view::npos ? dot : dot - start);
    if (part.empty()) {
      return Status::InvalidArgument(what + ": empty key name in '" + std::string(key) + "'");
    }
    path.emplace_back(part);
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  // JSON when it parses (numbers, true, null, [0.9,0.95], {"device":"cpu"}), else a string.
  DS_RETURN_IF_ERROR(CheckJsonDepth(text, what));
  json value = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) value = std::string(text);
  return SetPath(root, path, std::move(value), what);
}

Result<Config> ParseConfig(std::string_view json_text, const Overrides& overrides,
                           std::string_view source_name) {
  const std::string source(source_name);
  DS_ASSIGN_OR_RETURN(json root, ParseJsonText(json_text, source));
  for (const std::string& assignment : overrides.set) {
    DS_RETURN_IF_ERROR(ApplySetOverride(assignment, &root));
  }
  if (overrides.max_steps) {
    DS_RETURN_IF_ERROR(
        SetPath(&root, {"trainer", "max_steps"}, *overrides.max_steps, "--max-steps"));
  }
  if (overrides.seed) {
    DS_RETURN_IF_ERROR(SetPath(&root, {"trainer", "seed"}, *overrides.seed, "--seed"));
  }
  if (overrides.world_size < 1) {
    return Status::InvalidArgument("data-parallel size must be >= 1, got " +
                                   std::to_string(overrides.world_size));
  }

  Config c;
  c.source = source;
  Diagnostics d;
  d.source = source;
  SectionReader top(&d, "", &root);
  internal::ReadOtherDeepSpeedKeys(top, &c.parallel,
                                   &c.zero);  // first: refuses keys DeepSpeed removed
  internal::ReadModel(top, &c.model);
  internal::ReadTrainer(top, PeekSchedulerTotalSteps(root), &c.trainer);
  internal::ReadData(top, &c.data);
  internal::ReadCheckpoint(top, &c.checkpoint);
  internal::ReadComms(top, &c.comms);
  c.parallel.dp = DataParallelSize(overrides.world_size, c.parallel, &d);
  internal::ReadBatch(top, c.parallel.dp, &c.batch);
  c.gradient_clipping = top.Number("gradient_clipping", 1.0);
  if (d.ok() && !(c.gradient_clipping >= 0)) {
    d.Error("gradient_clipping must be >= 0 (0 turns clipping off), got " +
            internal::ShowNumber(c.gradient_clipping));
  }
  internal::ReadPrecision(top, &c.fp16, &c.bf16);
  internal::ReadOptimizer(top, &c.optimizer);
  internal::ReadScheduler(top, c.optimizer, c.trainer, &c.scheduler);
  internal::ReadZero(top, c.model, &c.zero);
  internal::ReadMonitor(top, &c.monitor);
  top.Finish(&c.resolved);
  CheckAcrossSections(c.resolved, c.zero, &d);
  CheckParallelism(c, &d);
  if (!d.ok()) {
    // A misspelt key is often why a needed one is missing: say so in the same message.
    std::string also;
    for (const std::string& e : d.more_errors) also += "; also: " + e;
    for (const Diagnostics::Unknown& u : d.unknown)
      also += "; also: " + UnknownKeyMessage(u, d, false);
    return also.empty() ? d.error : Status::InvalidArgument(d.error.message() + also);
  }

  for (const Diagnostics::Unknown& u : d.unknown) {
    std::string message = UnknownKeyMessage(u, d, overrides.strict);
    if (overrides.strict) return Status::InvalidArgument(source + ": " + message);
    d.Warn(message);
  }
  if (!d.not_implemented.empty()) {
    std::string list;
    for (const std::string& k : d.not_implemented) list += (list.empty() ? "" : ", ") + k;
    d.Warn("accepted but not implemented (no effect in dstrain): " + list);
  }
  c.warnings = std::move(d.warnings);
  c.not_implemented = std::move(d.not_implemented);
  c.auto_filled = std::move(d.auto_filled);
  return c;
}

namespace {

// Whether the file or a --set names model.seq_len (without it a folder's model trains at 1024
// tokens, or at its max_position_embeddings where that is shorter).
bool GivesModelSeqLen(const std::string& text, const Overrides& overrides) {
  for (const std::string& set : overrides.set) {
    if (set.starts_with("model.seq_len=") && set != "model.seq_len=null") return true;
  }
  const json root = json::parse(text, nullptr, /*allow_exceptions=*/false, /*comments=*/true);
  if (!root.is_object() || !root.contains("model") || !root["model"].is_object()) return false;
  const auto it = root["model"].find("seq_len");
  return it != root["model"].end() && !it->is_null();
}

// What tensor and pipeline parallelism need from a folder's model (engine/model/split.h): every
// problem at once, naming config.json's keys.
Status CheckHfParallelism(const HfModelSpec& hf, const ParallelConfig& p,
                          const std::string& config_path) {
  if (p.tp == 1 && p.pp == 1) return Status::OK();
  const std::string file = io::JoinPath(hf.dir, "config.json");
  const std::string tp = "tensor_parallel.autotp_size (" + std::to_string(p.tp) + ")";
  std::vector<std::string> problems;
  if (hf.family == "bert") {
    problems.push_back(hf.architecture +
                       " is not split across ranks (tensor_parallel.autotp_size, "
                       "pipeline.stages): train it with ZeRO's data parallelism");
  } else {
    if (p.tp > 1 && hf.family == "gpt2") {
      problems.push_back(tp + ": " + hf.architecture +
                         " is split into pipeline stages only (its Conv1D c_attn holds q, k and v "
                         "side by side); use pipeline.stages, or a Llama-family folder");
    }
    auto divides = [&](const char* key, int64_t n) {
      if (p.tp > 1 && n % p.tp != 0) {
        problems.push_back(tp + " must divide " + key + " (" + std::to_string(n) + ") of " + file +
                           ": each rank computes whole heads");
      }
    };
    if (hf.family == "llama") {
      divides("num_attention_heads", hf.n_head);
      divides("num_key_value_heads", hf.n_kv_head);
      divides("intermediate_size", hf.intermediate);
    }
    if (p.pp > hf.n_layer) {
      problems.push_back("pipeline.stages (" + std::to_string(p.pp) +
                         ") is more than num_hidden_layers (" + std::to_string(hf.n_layer) +
                         ") of " + file + ": each stage needs at least one layer");
    }
  }
  if (problems.empty()) return Status::OK();
  std::string msg = config_path + ": the model of " + hf.dir + " cannot be split this way:";
  for (const std::string& problem : problems) msg += "\n  - " + problem;
  return Status::InvalidArgument(msg);
}

}  // namespace

Result<Config> LoadConfig(io::Env* env, const std::string& path, const Overrides& overrides) {
  DS_ASSIGN_OR_RETURN(io::FileInfo info, env->Stat(path));
  if (info.is_dir) return Status::InvalidArgument(path + " is a directory, not a JSON config");
  if (info.size > kMaxConfigBytes) {
    return Status::InvalidArgument(path + " is " + io::FormatBytes(info.size) +
                                   ": a DeepSpeed config is a few KB (at most " +
                                   io::FormatBytes(kMaxConfigBytes) + "); is it the right file?");
  }
  DS_ASSIGN_OR_RETURN(std::string text, env->ReadFileToString(path));
  DS_ASSIGN_OR_RETURN(Config c, ParseConfig(text, overrides, path));
  if (!c.model.hf_path.empty()) {
    // A Hugging Face folder's model: its sizes, for the estimates and the data's vocabulary.
    DS_ASSIGN_OR_RETURN(const HfModelSpec hf, ReadHfModel(env, c.model.hf_path));
    c.model.n_layer = hf.n_layer;
    c.model.n_head = hf.n_head;
    c.model.d_model = hf.hidden;
    c.model.vocab = hf.vocab;
    c.model.hf_parameters = hf.parameter_count();
    c.model.hf_config_json = hf.config_json;
    if (!GivesModelSeqLen(text, overrides)) {
      c.model.seq_len = std::min<int64_t>(c.model.seq_len, hf.max_positions);  // BERT: 512
    }
    if (c.model.seq_len > hf.max_positions) {
      return Status::InvalidArgument(path + ": model.seq_len (" + std::to_string(c.model.seq_len) +
                                     ") is longer than the model's max_position_embeddings (" +
                                     std::to_string(hf.max_positions) + ") in " +
                                     io::JoinPath(c.model.hf_path, "config.json"));
    }
    DS_RETURN_IF_ERROR(CheckHfParallelism(hf, c.parallel, path));
  }
  return c;
}

std::string CheckpointDir(const Config& config) {
  return config.checkpoint.save_dir.empty() ? io::JoinPath(config.trainer.output_dir, "checkpoints")
                                            : config.checkpoint.save_dir;
}

}  // namespace ds::engine
