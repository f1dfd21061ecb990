// `dsrun bench --out DIR`: the table as bench.json, bench.csv and bench.svg (a chart written
// here, no plotting library) that opens in a browser.
#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/dsrun/internal.h"

namespace ds::engine {
namespace {

using Json = nlohmann::ordered_json;

double Number(const Json& row, const char* key) {
  return row.contains(key) && row[key].is_number() ? row[key].get<double>() : 0.0;
}

std::string Escape(const std::string& s) {  // for XML text and attributes
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// One panel: a bar per row of `key` (times `scale`), at x offset `left`.
std::string Panel(const Json& rows, const char* key, double scale, const std::string& title,
                  int left) {
  constexpr int kWidth = 340, kTop = 60, kHeight = 200, kBar = 44;
  double top = 0;
  for (const Json& r : rows) top = std::max(top, Number(r, key) * scale);
  if (top <= 0) top = 1;
  std::string svg = "<text x=\"" + std::to_string(left + kWidth / 2) + "\" y=\"" +
                    std::to_string(kTop - 24) + "\" text-anchor=\"middle\" font-size=\"14\">" +
                    Escape(title) + "</text>\n";
  svg += "<line x1=\"" + std::to_string(left) + "\" y1=\"" + std::to_string(kTop + kHeight) +
         "\" x2=\"" + std::to_string(left + kWidth) + "\" y2=\"" + std::to_string(kTop + kHeight) +
         "\" stroke=\"#444\"/>\n";
  const int n = static_cast<int>(rows.size());
  const int step = n > 0 ? kWidth / n : kWidth;
  for (int i = 0; i < n; ++i) {
    const double v = Number(rows[static_cast<size_t>(i)], key) * scale;
    const int h = static_cast<int>(v / top * kHeight);
    const int x = left + i * step + (step - kBar) / 2;
    const Json& row = rows[static_cast<size_t>(i)];
    const std::string label = "stage " + row.value("case", std::to_string(row["stage"].get<int>()));
    svg += "<rect class=\"bar\" x=\"" + std::to_string(x) + "\" y=\"" +
           std::to_string(kTop + kHeight - h) + "\" width=\"" + std::to_string(kBar) +
           "\" height=\"" + std::to_string(h) + "\" fill=\"#3b6ea8\"/>\n";
    svg += "<text x=\"" + std::to_string(x + kBar / 2) + "\" y=\"" +
           std::to_string(kTop + kHeight - h - 6) + "\" text-anchor=\"middle\" font-size=\"12\">" +
           FormatNumber(v >= 100 ? "%.0f" : "%.1f", v) + "</text>\n";
    svg += "<text x=\"" + std::to_string(x + kBar / 2) + "\" y=\"" +
           std::to_string(kTop + kHeight + 18) + "\" text-anchor=\"middle\" font-size=\"12\">" +
           Escape(label) + "</text>\n";
  }
  return svg;
}

}  // namespace

std::string FormatNumber(const char* format, double v) {
  char b[64];
  std::snprintf(b, sizeof b, format, v);
  return b;
}

std::string BenchCsv(const nlohmann::ordered_json& rows) {
  static const char* kColumns[] = {"case",
                                   "stage",
                                   "ranks",
                                   "offload_optimizer",
                                   "offload_param",
                                   "step_s",
                                   "tokens_per_s",
                                   "mfu",
                                   "model_state_bytes",
                                   "model_state_on_host_bytes",
                                   "params_bytes",
                                   "grads_bytes",
                                   "optimizer_bytes",
                                   "peak_bytes",
                                   "activation_bytes",
                                   "comm_bytes_per_step",
                                   "comm_seconds_per_step",
                                   "comm_bandwidth_bps",
                                   "save_stall_s",
                                   "first_save_stall_s",
                                   "save_durable_s",
                                   "save_total_s",
                                   "save_stored_bytes",
                                   "tp",
                                   "pp"};
  std::string csv;
  for (const char* c : kColumns) csv += std::string(csv.empty() ? "" : ",") + c;
  csv += "\n";
  for (const Json& r : rows) {
    std::string line;
    for (const char* c : kColumns) {
      line += line.empty() && c == kColumns[0] ? "" : ",";
      if (r.contains(c))
        line += r[c].is_boolean() ? (r[c].get<bool>() ? "true" : "false") : r[c].dump();
    }
    csv += line + "\n";
  }
  return csv;
}

std::string BenchSvg(const nlohmann::ordered_json& rows, const std::string& title) {
  std::string svg =
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"760\" height=\"320\" viewBox=\"0 0 760 "
      "320\" "
      "font-family=\"sans-serif\">\n<rect width=\"760\" height=\"320\" fill=\"white\"/>\n"
      "<text x=\"380\" y=\"18\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">" +
      Escape(title) + "</text>\n";
  svg += Panel(rows, "step_s", 1e3, "step time (ms)", 20);
  svg += Panel(rows, "model_state_bytes", 1.0 / (1024 * 1024), "model state per rank (MiB)", 400);
  return svg + "</svg>\n";
}

Status WriteBenchFiles(io::Env* env, const std::string& dir, const nlohmann::ordered_json& all) {
  DS_RETURN_IF_ERROR(env->CreateDirs(dir)) << "dsrun bench --out " << dir;
  const Json& rows = all["rows"];
  const std::string title =
      "ZeRO stages: " + all["config"].get<std::string>() + ", " +
      std::to_string(all["nproc_per_node"].get<int>() * all["nnodes"].get<int>()) + " rank(s)";
  DS_RETURN_IF_ERROR(
      env->ReplaceFileAtomically(io::JoinPath(dir, "bench.json"), all.dump(2) + "\n"));
  DS_RETURN_IF_ERROR(env->ReplaceFileAtomically(io::JoinPath(dir, "bench.csv"), BenchCsv(rows)));
  DS_RETURN_IF_ERROR(
      env->ReplaceFileAtomically(io::JoinPath(dir, "bench.svg"), BenchSvg(rows, title)));
  return Status::OK();
}

}  // namespace ds::engine
