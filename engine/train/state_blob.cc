#include "engine/train/state_blob.h"

#include <nlohmann/json.hpp>
#include <optional>

namespace ds::engine {
namespace {

using Json = nlohmann::ordered_json;

// Reads one field of the blob; every failure names the checkpoint and the key.
class FieldReader {
 public:
  FieldReader(const Json& j, std::string_view what) : j_(j), what_(what) {}

  // An integer >= `min`; absent: `def` when there is one, else an error.
  Status Int(const char* key, int64_t min, std::optional<int64_t> def, int64_t* out) const {
    const Json* v = Find(j_, key);
    if (v == nullptr && def) {
      *out = *def;
      return Status::OK();
    }
    if (v == nullptr || !v->is_number_integer()) return Bad(key, "an integer");
    const int64_t x = v->get<int64_t>();
    if (x < min) return Bad(key, "an integer >= " + std::to_string(min));
    *out = x;
    return Status::OK();
  }
  Status Number(const Json& obj, const char* key, double* out) const {
    const Json* v = Find(obj, key);
    if (v == nullptr || !v->is_number()) return Bad(key, "a number");
    *out = v->get<double>();
    return Status::OK();
  }
  Status IntIn(const Json& obj, const char* key, int64_t* out) const {
    const Json* v = Find(obj, key);
    if (v == nullptr || !v->is_number_integer()) return Bad(key, "an integer");
    *out = v->get<int64_t>();
    return Status::OK();
  }
  Status String(const char* key, std::string* out) const {
    const Json* v = Find(j_, key);
    if (v == nullptr || !v->is_string()) return Bad(key, "a string");
    *out = v->get<std::string>();
    return Status::OK();
  }
  Status Bad(const char* key, const std::string& expected) const {
    return Status::Corruption(std::string(what_) + ": blob " + kTrainerStateBlob +
                              " is not the "
                              "trainer's state: '" +
                              key + "' is missing or not " + expected);
  }

 private:
  static const Json* Find(const Json& obj, const char* key) {
    if (!obj.is_object()) return nullptr;
    auto it = obj.find(key);
    return it == obj.end() ? nullptr : &*it;
  }
  const Json& j_;
  std::string_view what_;
};

}  // namespace

std::string TrainerState::ToJson() const {
  Json j = {{"step", step},
            {"adam_steps", adam_steps},
            {"skipped", skipped},
            {"schedule_origin", schedule_origin},
            {"loss_scaler",
             {{"scale", loss_scaler.scale},
              {"iteration", loss_scaler.iteration},
              {"last_overflow_iteration", loss_scaler.last_overflow_iteration},
              {"hysteresis_left", loss_scaler.hysteresis_left}}},
            {"sampler", sampler},
            {"world_size", world_size},
            {"zero_stage", zero_stage}};
  return j.dump();
}

Result<TrainerState> TrainerState::FromJson(std::string_view json, std::string_view what) {
  const Json j = Json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Status::Corruption(std::string(what) + ": blob " + kTrainerStateBlob +
                              " is not the trainer's state (not a JSON object)");
  }
  FieldReader r(j, what);
  TrainerState s;
  DS_RETURN_IF_ERROR(r.Int("step", 0, std::nullopt, &s.step));
  DS_RETURN_IF_ERROR(r.Int("adam_steps", 0, std::nullopt, &s.adam_steps));
  DS_RETURN_IF_ERROR(r.Int("skipped", 0, 0, &s.skipped));
  DS_RETURN_IF_ERROR(r.Int("schedule_origin", INT64_MIN, 0, &s.schedule_origin));
  DS_RETURN_IF_ERROR(r.Int("world_size", 1, 1, &s.world_size));
  DS_RETURN_IF_ERROR(r.Int("zero_stage", 0, 0, &s.zero_stage));
  DS_RETURN_IF_ERROR(r.String("sampler", &s.sampler));
  auto ls = j.find("loss_scaler");
  if (ls == j.end() || !ls->is_object()) return r.Bad("loss_scaler", "an object");
  DS_RETURN_IF_ERROR(r.Number(*ls, "scale", &s.loss_scaler.scale));
  DS_RETURN_IF_ERROR(r.IntIn(*ls, "iteration", &s.loss_scaler.iteration));
  DS_RETURN_IF_ERROR(
      r.IntIn(*ls, "last_overflow_iteration", &s.loss_scaler.last_overflow_iteration));
  DS_RETURN_IF_ERROR(r.IntIn(*ls, "hysteresis_left", &s.loss_scaler.hysteresis_left));
  if (!(s.loss_scaler.scale > 0)) return r.Bad("scale", "a positive number");
  return s;
}

}  // namespace ds::engine
