#include "engine/config/hf_model.h"

#include <nlohmann/json.hpp>
#include <set>
#include <string_view>

#include "formats/safetensors.h"

namespace ds::engine {
namespace {

using nlohmann::json;

// The architectures built on Llama's blocks, and what each adds.
struct Family {
  const char* architecture;
  const char* model_type;
};
constexpr Family kLlamaLike[] = {{"LlamaForCausalLM", "llama"},
                                 {"MistralForCausalLM", "mistral"},
                                 {"Qwen2ForCausalLM", "qwen2"}};

class Reader {
 public:
  Reader(const json& j, std::string file) : j_(j), file_(std::move(file)) {}

  Status error() const { return error_; }

  void Fail(const std::string& key, const std::string& what) {
    if (error_.ok()) error_ = Status::InvalidArgument(file_ + ": " + key + " " + what);
  }

  const json* Get(const json& in, const std::string& key) const {
    auto it = in.find(key);
    return it == in.end() || it->is_null() ? nullptr : &*it;
  }

  int64_t Int(const std::string& key, int64_t def, bool required = false) {
    const json* v = Get(j_, key);
    if (v == nullptr) {
      if (required) Fail(key, "is missing: a Hugging Face config.json gives it");
      return def;
    }
    if (!v->is_number_integer() || v->get<int64_t>() < 1) {
      Fail(key, "must be a positive integer, not " + v->dump());
      return def;
    }
    return v->get<int64_t>();
  }

  double Number(const json& in, const std::string& key, double def) {
    const json* v = Get(in, key);
    if (v == nullptr) return def;
    if (!v->is_number()) {
      Fail(key, "must be a number, not " + v->dump());
      return def;
    }
    return v->get<double>();
  }

  bool Bool(const std::string& key, bool def) {
    const json* v = Get(j_, key);
    if (v == nullptr) return def;
    if (!v->is_boolean()) {
      Fail(key, "must be true or false, not " + v->dump());
      return def;
    }
    return v->get<bool>();
  }

  std::string String(const json& in, const std::string& key, const std::string& def) {
    const json* v = Get(in, key);
    if (v == nullptr) return def;
    if (!v->is_string()) {
      Fail(key, "must be a string, not " + v->dump());
      return def;
    }
    return v->get<std::string>();
  }

  const json& root() const { return j_; }

 private:
  const json& j_;
  std::string file_;
  Status error_;
};

void ReadRope(Reader& r, HfRope* rope) {
  const json& j = r.root();
  // transformers 5 writes rope_parameters (theta inside); earlier versions rope_theta and
  // rope_scaling (its kind under "type" or "rope_type").
  const json* params = r.Get(j, "rope_parameters");
  const json* scaling = params != nullptr ? params : r.Get(j, "rope_scaling");
  const std::string key = params != nullptr ? "rope_parameters" : "rope_scaling";
  rope->theta = r.Number(j, "rope_theta", 10000.0);
  if (scaling == nullptr) return;
  if (!scaling->is_object()) return r.Fail(key, "must be an object, not " + scaling->dump());
  rope->theta = r.Number(*scaling, "rope_theta", rope->theta);
  rope->type = r.String(*scaling, "rope_type", r.String(*scaling, "type", "default"));
  if (rope->type != "default" && rope->type != "linear" && rope->type != "llama3") {
    return r.Fail(key + ".rope_type",
                  "'" + rope->type +
                      "' is not supported (default, linear and llama3 are): this model's "
                      "positions would be wrong");
  }
  rope->factor = r.Number(*scaling, "factor", 1.0);
  rope->low_freq_factor = r.Number(*scaling, "low_freq_factor", 1.0);
  rope->high_freq_factor = r.Number(*scaling, "high_freq_factor", 4.0);
  rope->original_max_positions =
      static_cast<int64_t>(r.Number(*scaling, "original_max_position_embeddings", 8192));
  if (rope->factor <= 0) r.Fail(key + ".factor", "must be positive");
  if (rope->type == "llama3" && rope->high_freq_factor <= rope->low_freq_factor) {
    r.Fail(key + ".high_freq_factor", "must be more than low_freq_factor");
  }
}

// The weights: model.safetensors, or the shards the index lists.
Status FindWeights(io::Env* env, HfModelSpec* s) {
  const std::string single = io::JoinPath(s->dir, "model.safetensors");
  const std::string index = io::JoinPath(s->dir, "model.safetensors.index.json");
  DS_ASSIGN_OR_RETURN(const bool sharded, env->Exists(index));
  if (sharded) {
    DS_ASSIGN_OR_RETURN(s->weight_files, fmt::ReadSafetensorsIndex(env, index));
    return Status::OK();
  }
  DS_ASSIGN_OR_RETURN(const bool one_file, env->Exists(single));
  if (one_file) s->weight_files["*"] = single;  // every name: one file
  return Status::OK();
}

// The hidden size divides into the heads (the families that derive head_dim from it).
Status CheckHeads(const HfModelSpec& s, const char* hidden_key, const char* heads_key) {
  if (s.hidden % s.n_head == 0) return Status::OK();
  return Status::InvalidArgument(io::JoinPath(s.dir, "config.json") + ": " + hidden_key + " (" +
                                 std::to_string(s.hidden) + ") must be a multiple of " + heads_key +
                                 " (" + std::to_string(s.n_head) + ")");
}

// Dropout rates the config asks for, which no family applies: a warning each.
void WarnDropout(Reader& r, const HfModelSpec& s, std::initializer_list<const char*> keys,
                 std::vector<std::string>* warnings) {
  for (const char* key : keys) {
    if (r.Number(r.root(), key, 0) > 0) {
      warnings->push_back(io::JoinPath(s.dir, "config.json") + ": " + key + " " +
                          r.Get(r.root(), key)->dump() +
                          " is not applied: dstrain trains without dropout (ZeRO-3 and "
                          "activation checkpointing run each layer again, exactly)");
    }
  }
}

// GPT2LMHeadModel: GPT-2's keys (n_embd, n_layer, n_head, n_positions, n_inner, ...).
Result<HfModelSpec> ReadGpt2(Reader& r, HfModelSpec s) {
  const json& j = r.root();
  s.family = "gpt2";
  const std::string act = r.String(j, "activation_function", "gelu_new");
  if (act != "gelu_new" && act != "gelu_pytorch_tanh") {
    r.Fail("activation_function",
           "'" + act + "' is not supported (gelu_new is: GPT-2's tanh GELU)");
  }
  for (const char* key : {"add_cross_attention", "scale_attn_by_inverse_layer_idx"}) {
    if (r.Bool(key, false)) r.Fail(key, "is true: not built (GPT-2 as released has it false)");
  }
  if (!r.Bool("scale_attn_weights", true)) {
    r.Fail("scale_attn_weights", "is false: not built (attention scores are scaled by 1/sqrt(d))");
  }
  s.vocab = r.Int("vocab_size", 0, true);
  s.hidden = r.Int("n_embd", 0, true);
  s.n_layer = r.Int("n_layer", 0, true);
  s.n_head = r.Int("n_head", 0, true);
  s.n_kv_head = s.n_head;
  s.head_dim = s.n_head > 0 ? s.hidden / s.n_head : 0;
  s.intermediate = r.Int("n_inner", 4 * s.hidden);
  s.max_positions = r.Int("n_positions", 1024);
  s.layer_norm_eps = r.Number(j, "layer_norm_epsilon", 1e-5);
  s.initializer_range = r.Number(j, "initializer_range", 0.02);
  s.tie_embeddings = r.Bool("tie_word_embeddings", true);  // GPT-2's default
  WarnDropout(r, s, {"resid_pdrop", "embd_pdrop", "attn_pdrop"}, &s.warnings);
  DS_RETURN_IF_ERROR(r.error());
  DS_RETURN_IF_ERROR(CheckHeads(s, "n_embd", "n_head"));
  return s;
}

// The folder's tokenizer.json, where there is one: its special tokens ("added_tokens" marked
// special) and the mask token among them ([MASK], or <mask> for RoBERTa-style vocabularies).
Status ReadSpecialTokens(io::Env* env, HfModelSpec* s) {
  const std::string file = io::JoinPath(s->dir, "tokenizer.json");
  DS_ASSIGN_OR_RETURN(const bool exists, env->Exists(file));
  if (!exists) return Status::OK();
  DS_ASSIGN_OR_RETURN(std::string text, env->ReadFileToString(file));
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Status::InvalidArgument(file + " is not a JSON object (a tokenizers tokenizer.json)");
  }
  s->tokenizer_file = file;
  auto it = j.find("added_tokens");
  if (it == j.end() || !it->is_array()) return Status::OK();
  for (const json& t : *it) {
    if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer()) {
      return Status::InvalidArgument(file +
                                     ": an entry of added_tokens has no integer id: " + t.dump());
    }
    const int64_t id = t["id"].get<int64_t>();
    const bool special = t.value("special", false);
    const std::string content = t.value("content", "");
    if (special) s->special_token_ids.push_back(id);
    if (content == "[MASK]" || content == "<mask>") s->mask_token_id = id;
  }
  return Status::OK();
}

// BertForMaskedLM: BERT's keys (hidden_size, type_vocab_size, layer_norm_eps, ...).
Result<HfModelSpec> ReadBert(Reader& r, HfModelSpec s) {
  const json& j = r.root();
  s.family = "bert";
  s.hidden_act = r.String(j, "hidden_act", "gelu");
  if (s.hidden_act != "gelu" && s.hidden_act != "gelu_new") {
    r.Fail("hidden_act", "'" + s.hidden_act + "' is not supported (gelu and gelu_new are)");
  }
  const std::string position = r.String(j, "position_embedding_type", "absolute");
  if (position != "absolute") {
    r.Fail("position_embedding_type",
           "'" + position + "' is not supported (absolute is: BERT's learned positions)");
  }
  for (const char* key : {"is_decoder", "add_cross_attention"}) {
    if (r.Bool(key, false)) r.Fail(key, "is true: dstrain builds BERT as an encoder only");
  }
  s.vocab = r.Int("vocab_size", 0, true);
  s.hidden = r.Int("hidden_size", 0, true);
  s.intermediate = r.Int("intermediate_size", 0, true);
  s.n_layer = r.Int("num_hidden_layers", 0, true);
  s.n_head = r.Int("num_attention_heads", 0, true);
  s.n_kv_head = s.n_head;
  s.head_dim = s.n_head > 0 ? s.hidden / s.n_head : 0;
  s.max_positions = r.Int("max_position_embeddings", 512);
  s.type_vocab = r.Int("type_vocab_size", 2);
  s.layer_norm_eps = r.Number(j, "layer_norm_eps", 1e-12);
  s.initializer_range = r.Number(j, "initializer_range", 0.02);
  s.tie_embeddings = r.Bool("tie_word_embeddings", true);
  if (const json* pad = r.Get(j, "pad_token_id"); pad != nullptr) {
    if (!pad->is_number_integer() || pad->get<int64_t>() < 0) {
      r.Fail("pad_token_id", "must be a token id, not " + pad->dump());
    } else {
      s.pad_token_id = pad->get<int64_t>();
    }
  }
  WarnDropout(r, s, {"hidden_dropout_prob", "attention_probs_dropout_prob"}, &s.warnings);
  DS_RETURN_IF_ERROR(r.error());
  DS_RETURN_IF_ERROR(CheckHeads(s, "hidden_size", "num_attention_heads"));
  return s;
}

}  // namespace

int64_t HfModelSpec::parameter_count() const {
  if (family == "bert") {
    const int64_t h = hidden, i = intermediate;
    const int64_t per_layer = 4 * (h * h + h)          // query, key, value, attention output
                              + h * i + i + i * h + h  // intermediate and output
                              + 4 * h;                 // two LayerNorms
    const int64_t embeddings = (vocab + max_positions + type_vocab) * h + 2 * h;
    const int64_t head = h * h + h + 2 * h + vocab + (tie_embeddings ? 0 : vocab * h);
    return embeddings + n_layer * per_layer + head;
  }
  if (family == "gpt2") {
    const int64_t h = hidden, i = intermediate;
    const int64_t per_layer = 4 * h                     // two LayerNorms
                              + h * 3 * h + 3 * h       // c_attn
                              + h * h + h               // attention c_proj
                              + h * i + i + i * h + h;  // MLP
    return vocab * h * (tie_embeddings ? 1 : 2) + max_positions * h + n_layer * per_layer + 2 * h;
  }
  const int64_t q = n_head * head_dim, kv = n_kv_head * head_dim;
  int64_t per_layer = hidden * q + 2 * hidden * kv + q * hidden  // attention
                      + 3 * hidden * intermediate                // SwiGLU
                      + 2 * hidden;                              // two RMSNorms
  if (attention_bias) per_layer += q + 2 * kv + hidden;
  if (qkv_bias) per_layer += q + 2 * kv;
  if (mlp_bias) per_layer += 2 * intermediate + hidden;
  return n_layer * per_layer + vocab * hidden * (tie_embeddings ? 1 : 2) + hidden;
}

Result<HfModelSpec> ParseHfConfig(const std::string& dir, std::string config_json) {
  HfModelSpec s;
  s.dir = dir;
  const std::string file = io::JoinPath(dir, "config.json");
  s.config_json = std::move(config_json);
  const json j = json::parse(s.config_json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Status::InvalidArgument(file + " is not a JSON object");
  }
  Reader r(j, file);
  const std::string model_type = r.String(j, "model_type", "");
  if (const json* a = r.Get(j, "architectures");
      a != nullptr && a->is_array() && !a->empty() && (*a)[0].is_string()) {
    s.architecture = (*a)[0].get<std::string>();
  }
  for (const Family& f : kLlamaLike) {
    if (s.architecture == f.architecture || (s.architecture.empty() && model_type == f.model_type))
      s.family = "llama";
  }
  if (s.architecture == "GPT2LMHeadModel" || (s.architecture.empty() && model_type == "gpt2")) {
    return ReadGpt2(r, std::move(s));
  }
  if (s.architecture == "BertForMaskedLM" || (s.architecture.empty() && model_type == "bert")) {
    return ReadBert(r, std::move(s));
  }
  if (s.family.empty()) {
    std::string known = "GPT2LMHeadModel, BertForMaskedLM";
    for (const Family& f : kLlamaLike) known += ", " + std::string(f.architecture);
    return Status::InvalidArgument(file + ": architectures [\"" + s.architecture +
                                   "\"] (model_type '" + model_type +
                                   "') is not a family dstrain builds (" + known + ")");
  }
  // What Llama's blocks cannot do: refused by name rather than trained wrongly.
  if (r.String(j, "hidden_act", "silu") != "silu") {
    r.Fail("hidden_act", "'" + r.String(j, "hidden_act", "") + "' is not supported (silu is)");
  }
  for (const char* key : {"num_local_experts", "num_experts", "moe_intermediate_size"}) {
    if (r.Get(j, key) != nullptr) r.Fail(key, "is set: mixture-of-experts models are not built");
  }
  const bool sliding = model_type == "qwen2" ? r.Bool("use_sliding_window", false)
                                             : r.Get(j, "sliding_window") != nullptr;
  if (sliding) {
    r.Fail(model_type == "qwen2" ? "use_sliding_window" : "sliding_window",
           "is set: sliding-window attention is not built (remove it to attend to the whole "
           "sequence)");
  }
  if (const json* tp = r.Get(j, "pretraining_tp"); tp != nullptr && *tp != json(1)) {
    r.Fail("pretraining_tp", "must be 1 (the sliced-matmul reference path is not built)");
  }
  s.vocab = r.Int("vocab_size", 0, true);
  s.hidden = r.Int("hidden_size", 0, true);
  s.intermediate = r.Int("intermediate_size", 0, true);
  s.n_layer = r.Int("num_hidden_layers", 0, true);
  s.n_head = r.Int("num_attention_heads", 0, true);
  s.n_kv_head = r.Int("num_key_value_heads", s.n_head);
  s.head_dim = r.Int("head_dim", s.n_head > 0 ? s.hidden / s.n_head : 0);
  s.max_positions = r.Int("max_position_embeddings", 2048);
  s.rms_eps = r.Number(j, "rms_norm_eps", 1e-6);
  s.initializer_range = r.Number(j, "initializer_range", 0.02);
  s.tie_embeddings = r.Bool("tie_word_embeddings", false);  // the default of all three
  s.attention_bias = r.Bool("attention_bias", false);
  s.mlp_bias = r.Bool("mlp_bias", false);
  s.qkv_bias = model_type == "qwen2";  // Qwen2's q, k and v have biases, its o_proj none
  ReadRope(r, &s.rope);
  DS_RETURN_IF_ERROR(r.error());
  if (s.n_head % s.n_kv_head != 0) {
    return Status::InvalidArgument(file + ": num_attention_heads (" + std::to_string(s.n_head) +
                                   ") must be a multiple of num_key_value_heads (" +
                                   std::to_string(s.n_kv_head) + ")");
  }
  if (s.head_dim % 2 != 0) {
    return Status::InvalidArgument(file + ": head_dim (" + std::to_string(s.head_dim) +
                                   ") must be even (rotary embeddings rotate pairs)");
  }
  return s;
}

Result<HfModelSpec> ReadHfModel(io::Env* env, const std::string& dir) {
  const std::string file = io::JoinPath(dir, "config.json");
  DS_ASSIGN_OR_RETURN(const bool has_config, env->Exists(file));
  if (!has_config) {
    return Status::NotFound(file +
                            " does not exist: --model_name / model.hf_path names a "
                            "Hugging Face model folder (config.json and model.safetensors)");
  }
  DS_ASSIGN_OR_RETURN(std::string text, env->ReadFileToString(file));
  DS_ASSIGN_OR_RETURN(HfModelSpec s, ParseHfConfig(dir, std::move(text)));
  if (s.family == "bert") {
    DS_RETURN_IF_ERROR(ReadSpecialTokens(env, &s));
    if (s.pad_token_id >= 0) s.special_token_ids.push_back(s.pad_token_id);
  }
  DS_RETURN_IF_ERROR(FindWeights(env, &s));
  return s;
}

}  // namespace ds::engine
