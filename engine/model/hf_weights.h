// The weights of a Hugging Face folder (engine/config/hf_model.h), read by element range: what a
// deferred model's InitialValues gives ZeRO, one rank's part at a time, converted to fp32.
// Without weights in the folder, values drawn per name as transformers initialises them.
// Thread safety: Read may be called from several threads (the readers are opened under a lock).
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/config/hf_model.h"
#include "engine/model/model.h"
#include "engine/model/param_init.h"

namespace ds::fmt {
class SafetensorsReader;
}

namespace ds::engine {

// How a model of a Hugging Face folder is built (the families: llama.h, hf_gpt2.h).
struct HfModelOptions {
  HfModelSpec spec;
  int64_t seq_len = 1024;  // the training sequence (for flops_per_token)
  bool activation_checkpointing = false;
  uint64_t seed = 1234;   // initialisation without weights in the folder
  bool deferred = false;  // placeholders whose values InitialValues gives
};

class HfWeights {
 public:
  explicit HfWeights(const HfModelSpec& spec, uint64_t seed);
  ~HfWeights();

  // Elements [begin, end) of parameter `name` of `shape`, an fp32 CPU tensor: from the folder's
  // files (the shape checked against the file's), or `init` drawn per name when the folder
  // has no weights. Throws a c10::ValueError naming the folder and the tensor.
  at::Tensor Read(const std::string& name, const std::vector<int64_t>& shape, int64_t begin,
                  int64_t end, const InitSpec& init) const;

 private:
  const fmt::SafetensorsReader* ReaderFor(const std::string& name) const;

  const HfModelSpec& spec_;
  uint64_t seed_;
  mutable std::mutex mu_;
  mutable std::map<std::string, std::unique_ptr<fmt::SafetensorsReader>> readers_;  // by file
};

// A new parameter `name` of `shape` for `model`: a ShapeOnly placeholder when deferred, else a
// tensor of its own holding model.InitialValues (the whole range).
at::Tensor NewHfParameter(const LanguageModel& model, bool deferred, const std::string& name,
                          const std::vector<int64_t>& shape);

}  // namespace ds::engine
