// Monitor: one record per step (a JSON object), written to metrics.jsonl, then turned into
// DeepSpeed's scalar events for TensorBoard and csv_monitor, and summarised in the progress
// line. A field added to StepRecord reaches every output.
#include "engine/monitor/monitor.h"

#include <cctype>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <vector>

#include "engine/core/tensorboard.h"
#include "engine/monitor/internal/csv_monitor.h"
#include "engine/monitor/internal/metrics_log.h"
#include "engine/monitor/internal/progress.h"
#include "io/log.h"

namespace ds::engine {
namespace {

using Json = nlohmann::ordered_json;

// Every key StepRecord and EvalRecord may write; an extra metric may not take one.
// clang-format off
constexpr std::string_view kBuiltInKeys[] = {
    "step", "samples", "loss", "lr", "loss_scale", "tokens", "tokens_per_s", "step_time_s",
    "forward_s", "backward_s", "optimizer_s", "mfu", "grad_norm", "skipped", "rss_bytes",
    "peak_rss_bytes", "gpu_allocated_bytes", "gpu_reserved_bytes", "gpu_peak_bytes",
    "model_state_bytes", "eval_loss", "eval_tokens", "time"};
// clang-format on

template <typename T>
void Put(Json& j, const char* key, const std::optional<T>& v) {
  if (v) j[key] = *v;
}

Status PutExtras(Json& j, const std::map<std::string, double>& extras) {
  for (const auto& [name, value] : extras) {
    bool ok = !name.empty();
    for (char c : name) {
      ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_');
    }
    if (!ok) {
      return Status::InvalidArgument("monitor: extra metric '" + name +
                                     "' is not a name of letters, digits and '_'");
    }
    for (std::string_view k : kBuiltInKeys) {
      if (name == k) {
        return Status::InvalidArgument("monitor: extra metric '" + name +
                                       "' clashes with the built-in field of that name "
                                       "(rename the extra)");
      }
    }
    j[name] = value;
  }
  return Status::OK();
}

// The metrics.jsonl object of a step; optional fields only when present.
Result<Json> StepRecord(const StepMetrics& m, double wall_time_s) {
  Json j;
  j["step"] = m.step;
  Put(j, "samples", m.samples);
  j["loss"] = m.loss;
  j["lr"] = m.lr;
  Put(j, "loss_scale", m.loss_scale);
  j["tokens"] = m.tokens;
  j["tokens_per_s"] = TokensPerSecond(m.tokens, m.step_time_s);
  j["step_time_s"] = m.step_time_s;
  Put(j, "forward_s", m.forward_s);
  Put(j, "backward_s", m.backward_s);
  Put(j, "optimizer_s", m.optimizer_s);
  Put(j, "mfu", m.mfu);
  Put(j, "grad_norm", m.grad_norm);
  j["skipped"] = m.skipped;
  Put(j, "rss_bytes", m.memory.rss_bytes);
  Put(j, "peak_rss_bytes", m.memory.peak_rss_bytes);
  Put(j, "gpu_allocated_bytes", m.memory.gpu_allocated_bytes);
  Put(j, "gpu_reserved_bytes", m.memory.gpu_reserved_bytes);
  Put(j, "gpu_peak_bytes", m.memory.gpu_peak_bytes);
  Put(j, "model_state_bytes", m.memory.model_state_bytes);
  DS_RETURN_IF_ERROR(PutExtras(j, m.extras)) << "step " << m.step;
  j["time"] = wall_time_s;
  return j;
}

Result<Json> EvalRecord(const EvalMetrics& m, double wall_time_s) {
  Json j;
  j["step"] = m.step;
  Put(j, "samples", m.samples);
  j["eval_loss"] = m.eval_loss;
  j["eval_tokens"] = m.eval_tokens;
  DS_RETURN_IF_ERROR(PutExtras(j, m.extras)) << "evaluation at step " << m.step;
  j["time"] = wall_time_s;
  return j;
}

// DeepSpeed's tag for a record key (runtime/engine.py, runtime/pipe/engine.py), and the factor
// to its unit: DeepSpeed charts times in milliseconds.
struct TagName {
  std::string_view key;
  std::string_view deepspeed_name;
  double scale;
};
constexpr TagName kDeepSpeedNames[] = {
    {"loss", "train_loss", 1},
    {"forward_s", "elapsed_time_ms_forward", 1000},
    {"backward_s", "elapsed_time_ms_backward", 1000},
    {"optimizer_s", "elapsed_time_ms_step", 1000},
};

// The scalar events DeepSpeed's monitors would get for a record: every number but the axes
// and the clock, tagged Train/Samples/<name>, at x = samples (DeepSpeed's global_samples) when
// the caller gave them, else the step.
int64_t XAxis(const Json& record) {
  return record.contains("samples") ? record["samples"].get<int64_t>()
                                    : record["step"].get<int64_t>();
}

std::vector<ScalarEvent> RecordEvents(const Json& record) {
  const int64_t x = XAxis(record);
  std::vector<ScalarEvent> events;
  for (const auto& [key, value] : record.items()) {
    if (!value.is_number() || key == "step" || key == "samples" || key == "time") continue;
    std::string name = key;
    double scale = 1;
    for (const TagName& t : kDeepSpeedNames) {
      if (key == t.key) name = t.deepspeed_name, scale = t.scale;
    }
    events.push_back({"Train/Samples/" + name, x, value.get<double>() * scale});
  }
  return events;
}

double WallSeconds(io::Env* env) { return static_cast<double>(env->WallTimeMicros()) / 1e6; }

std::string WriterDir(const MonitorConfig::Writer& w, const std::string& output_dir) {
  const std::string base = w.output_path.empty() ? output_dir : w.output_path;
  return w.job_name.empty() ? base : io::JoinPath(base, w.job_name);
}

}  // namespace

struct Monitor::Outputs {
  std::unique_ptr<internal::JsonLinesFile> jsonl;
  std::unique_ptr<TensorBoardWriter> tensorboard;
  std::unique_ptr<internal::CsvMonitor> csv;
  internal::ProgressWindow window;
  bool closed = false;
  bool session_started = false;  // the TensorBoard file has its SessionLog START

  // Every output gets the record even when an earlier one failed; the first error is returned.
  Status Write(const Json& record) {
    Status first = jsonl->Append(record.dump());
    auto keep = [&first](const Status& s) {
      if (first.ok() && !s.ok()) first = s;
    };
    if (tensorboard == nullptr && csv == nullptr) return first;
    // Before this run's first point: TensorBoard then drops what an earlier run (crashed, or
    // resumed from an older checkpoint) wrote at this x or later, as metrics.jsonl's cut does.
    if (tensorboard != nullptr && !session_started) {
      keep(tensorboard->AddSessionStart(XAxis(record)));
      session_started = true;
    }
    for (const ScalarEvent& e : RecordEvents(record)) {
      if (tensorboard != nullptr) keep(tensorboard->AddScalar(e.tag, e.value, e.step));
      if (csv != nullptr) keep(csv->Write(e));
    }
    // Flushed per record, as DeepSpeed's TensorBoardMonitor does: a crash loses one step.
    if (tensorboard != nullptr) keep(tensorboard->Flush());
    return first;
  }
};

Monitor::Monitor(io::Env* env, MonitorOptions options)
    : env_(env), options_(std::move(options)), out_(std::make_unique<Outputs>()) {}

Monitor::~Monitor() {
  Status s = Close();
  if (!s.ok()) io::LogWarning("monitor: " + s.ToString());
}

Result<std::unique_ptr<Monitor>> Monitor::Open(io::Env* env, MonitorOptions options) {
  std::unique_ptr<Monitor> m(new Monitor(env, std::move(options)));
  const MonitorOptions& o = m->options_;
  m->writes_ = o.rank == 0 || o.all_ranks;
  if (!m->writes_) return m;
  char name[40];
  std::snprintf(name, sizeof name, "metrics-rank-%05d.jsonl", o.rank);
  m->metrics_path_ = io::JoinPath(o.output_dir, o.rank == 0 ? "metrics.jsonl" : name);
  DS_ASSIGN_OR_RETURN(m->out_->jsonl,
                      internal::JsonLinesFile::Open(env, m->metrics_path_, o.resume_step));
  std::string where = "metrics to " + m->metrics_path_;
  if (o.rank == 0 && o.config.tensorboard.enabled) {
    const std::string dir = WriterDir(o.config.tensorboard, o.output_dir);
    DS_ASSIGN_OR_RETURN(m->out_->tensorboard, TensorBoardWriter::Open(env, dir));
    where += ", TensorBoard events to " + dir;
  }
  if (o.rank == 0 && o.config.csv_monitor.enabled) {
    const std::string dir = WriterDir(o.config.csv_monitor, o.output_dir);
    DS_ASSIGN_OR_RETURN(m->out_->csv, internal::CsvMonitor::Open(env, dir));
    where += ", csv_monitor files to " + dir;
  }
  io::LogInfo("monitor: " + where);
  return m;
}

Status Monitor::RecordStep(const StepMetrics& in) {
  if (!writes_ || out_->closed) return Status::OK();
  StepMetrics m = in;
  if (options_.read_process_memory && !m.memory.rss_bytes && memory_readable_) {
    Result<ProcessMemory> pm = ReadProcessMemory(env_);
    if (pm.ok()) {
      m.memory.rss_bytes = pm->rss_bytes;
      m.memory.peak_rss_bytes = pm->peak_rss_bytes;
    } else {
      memory_readable_ = false;  // asked once: the answer will not change
      io::LogDebug("monitor: " + pm.status().ToString());
    }
  }
  DS_ASSIGN_OR_RETURN(Json record, StepRecord(m, WallSeconds(env_)));
  Status s = out_->Write(record);
  out_->window.Add(m);
  const int64_t every = options_.config.steps_per_print;
  if ((every > 0 && m.step % every == 0) ||
      (options_.max_steps > 0 && m.step == options_.max_steps)) {
    io::LogInfo(out_->window.Line(options_.max_steps));
    out_->window.Clear();
  }
  return s;
}

Status Monitor::RecordEval(const EvalMetrics& m) {
  if (!writes_ || out_->closed) return Status::OK();
  DS_ASSIGN_OR_RETURN(Json record, EvalRecord(m, WallSeconds(env_)));
  io::LogInfo(internal::EvalLine(m));
  return out_->Write(record);
}

Status Monitor::Sync() {
  if (!writes_ || out_->closed) return Status::OK();
  return out_->jsonl->Sync();
}

Status Monitor::Close() {
  if (!writes_ || out_->closed) return Status::OK();
  out_->closed = true;
  // A run that stops between progress lines (preemption, an error) still reports its last steps.
  if (!out_->window.empty()) io::LogInfo(out_->window.Line(options_.max_steps));
  Status first;
  auto keep = [&first](const Status& s) {
    if (first.ok() && !s.ok()) first = s;
  };
  if (out_->tensorboard != nullptr) {
    keep(out_->tensorboard->Flush());
    out_->tensorboard.reset();
  }
  if (out_->csv != nullptr) keep(out_->csv->Close());
  if (out_->jsonl != nullptr) keep(out_->jsonl->Close());  // null when Open failed
  return first;
}

}  // namespace ds::engine
