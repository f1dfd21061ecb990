// A Hugging Face model folder (`config.json`, and `model.safetensors` or the shards a
// `model.safetensors.index.json` lists), read without LibTorch: what the config loader needs for
// sizes and the model families (engine/model/llama.h) need to build and fill the model.
// Families: LlamaForCausalLM and the models that share its blocks (Mistral without a sliding
// window, Qwen2, SmolLM), GPT2LMHeadModel, and BertForMaskedLM (with the folder's
// tokenizer.json for its [MASK] and special tokens). A key the family cannot honour is refused,
// naming it.
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "io/env.h"
#include "io/status.h"

namespace ds::engine {

struct HfRope {
  double theta = 10000.0;
  std::string type = "default";  // "default", "linear" or "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;           // llama3
  double high_freq_factor = 4.0;          // llama3
  int64_t original_max_positions = 8192;  // llama3
};

struct HfModelSpec {
  std::string dir;
  std::string config_json;   // the text of dir/config.json
  std::string architecture;  // "LlamaForCausalLM", "Qwen2ForCausalLM", ...
  std::string family;        // "llama", "gpt2" or "bert"
  int64_t vocab = 0;
  int64_t hidden = 0;
  int64_t intermediate = 0;
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t n_kv_head = 0;
  int64_t head_dim = 0;
  int64_t max_positions = 0;
  double rms_eps = 1e-6;         // llama: RMSNorm's epsilon
  double layer_norm_eps = 1e-5;  // gpt2, bert: LayerNorm's
  double initializer_range = 0.02;
  HfRope rope;
  bool tie_embeddings = false;
  bool attention_bias = false;  // q, k, v and o projections (Llama's attention_bias)
  bool qkv_bias = false;        // q, k and v only (Qwen2)
  bool mlp_bias = false;
  // bert: token types, the activation ("gelu": erf; "gelu_new": tanh), the padding token
  // (keys equal to it are not attended to; -1: none), and from tokenizer.json the [MASK] token
  // (-1: no tokenizer.json, or none in it) and every special token (never masked).
  int64_t type_vocab = 0;
  std::string hidden_act;
  int64_t pad_token_id = -1;
  int64_t mask_token_id = -1;
  std::vector<int64_t> special_token_ids;
  std::string tokenizer_file;  // the tokenizer.json read, or ""
  // What the family reads but does not do (dropout), for a warning at start.
  std::vector<std::string> warnings;
  // Each weight's safetensors file (a path), by Hugging Face name, or under "*" the one file
  // that holds them all; empty: no weights in the folder (a random initialisation as
  // transformers makes one from config.json).
  std::map<std::string, std::string> weight_files;
  // Parameters of the whole model.
  int64_t parameter_count() const;
};

// Reads `dir`/config.json and finds the weights (and BERT's tokenizer.json). Errors name the file
// and the key.
Result<HfModelSpec> ReadHfModel(io::Env* env, const std::string& dir);
// The model `config_json` (the text of `dir`/config.json) describes, without reading the folder:
// no weight files, no tokenizer (for estimates from a config that was read already).
Result<HfModelSpec> ParseHfConfig(const std::string& dir, std::string config_json);

}  // namespace ds::engine
