// The sweep folder's manifest and results table: see results.h.
#include "study/results.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <optional>

#include <yaml-cpp/yaml.h>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"

namespace sy::study {
namespace {

// Text from a file for a message: at most 40 characters, other bytes than printable ASCII as '?'.
std::string shown(const std::string& text) {
  std::string out = text.substr(0, 40);
  for (char& c : out) {
    if (c < 0x20 || c > 0x7e) c = '?';
  }
  return out + (text.size() > 40 ? "..." : "");
}

// A JSON object file (`holds` says what it holds), read with yaml-cpp (JSON is YAML's flow style).
// A missing file is an empty node: a run that has not written it yet. So is a file that is no
// JSON object, with *problem saying so: "RUN/summary.json: expected a JSON object ..., got ...".
YAML::Node read_json_file(const std::string& path, const std::string& holds,
                          std::string* problem = nullptr) {
  if (!path_exists(path)) return {};
  std::string got;
  try {
    const std::string bytes = read_file(path);
    const YAML::Node n = YAML::Load(bytes);
    // A JSON object starts with '{' (YAML would also read "x{: 1" as a map).
    const size_t start = bytes.find_first_not_of(" \t\r\n");
    if (n.IsMap() && bytes[start] == '{') return n;
    const std::string first_line = start == std::string::npos
                                       ? std::string()
                                       : bytes.substr(start, bytes.find('\n', start) - start);
    got = n.IsSequence()       ? "a list"
          : first_line.empty() ? "an empty file"
                               : "'" + shown(first_line) + "'";
  } catch (const YAML::Exception& e) {
    got = str("text that is not JSON (line ", e.mark.line + 1, ": ", e.msg, ")");
  } catch (const Error& e) {
    got = e.message();
  }
  if (problem != nullptr) {
    *problem += str(problem->empty() ? "" : "; ", path, ": expected a JSON object with ", holds,
                    ", got ", got);
  }
  return {};
}

constexpr const char* kSummaryHolds = "the run's totals (status, steps, tokens, ...)";
constexpr const char* kStatusHolds = "the sweep's record of the run (status, exit_code, ...)";

std::optional<double> number(const YAML::Node& node) {
  if (!node || !node.IsScalar()) return std::nullopt;
  try {
    return node.as<double>();
  } catch (const YAML::Exception&) {
    return std::nullopt;
  }
}

std::string text(const YAML::Node& node) {
  return node && node.IsScalar() ? node.Scalar() : std::string();
}

std::string num_json(const std::optional<double>& v) {
  return v ? json_number(*v) : std::string("null");
}

std::string str_json(const std::string& s) { return "\"" + json_escape(s) + "\""; }

// What the run's log lines say: the last train line's values, the val losses, and the means.
struct MetricsDigest {
  std::optional<double> final_train, final_val, best_val, aux, z, drop_mean, imbalance_mean;
  std::optional<double> last_step;
};

MetricsDigest digest_metrics(const std::string& run_dir) {
  MetricsDigest d;
  double drop_sum = 0, imbalance_sum = 0;
  int64_t drop_n = 0, imbalance_n = 0;
  for (const std::string& line : metrics_lines(run_dir)) {
    const YAML::Node n = YAML::Load(line);
    if (auto step = number(n["step"])) d.last_step = step;
    if (auto v = number(n["val_loss"])) {
      d.final_val = v;
      d.best_val = d.best_val ? std::min(*d.best_val, *v) : *v;
    }
    if (!n["train_loss"]) continue;
    d.final_train = number(n["train_loss"]);
    d.aux = number(n["aux_loss"]);
    d.z = number(n["z_loss"]);
    if (auto drop = number(n["drop_fraction"])) {
      drop_sum += *drop;
      ++drop_n;
    }
    // expert_load[l][e]: shares of layer l's choices; max / mean = max x E.
    const YAML::Node load = n["expert_load"];
    if (!load || !load.IsSequence()) continue;
    for (const YAML::Node& layer : load) {
      if (!layer.IsSequence() || layer.size() == 0) continue;
      double max_share = 0;
      for (const YAML::Node& share : layer)
        max_share = std::max(max_share, number(share).value_or(0));
      imbalance_sum += max_share * static_cast<double>(layer.size());
      ++imbalance_n;
    }
  }
  if (drop_n) d.drop_mean = drop_sum / static_cast<double>(drop_n);
  if (imbalance_n) d.imbalance_mean = imbalance_sum / static_cast<double>(imbalance_n);
  return d;
}

std::string csv_cell(const std::string& json) {
  if (json == "null") return "";
  if (json.empty() || json[0] != '"') return json;
  // A JSON string back to its text, then quoted for CSV when it needs to be.
  std::string s;
  for (size_t i = 1; i + 1 < json.size(); ++i) {
    if (json[i] == '\\' && i + 2 < json.size()) {
      const char c = json[++i];
      s += c == 'n' ? '\n' : c == 't' ? '\t' : c;
    } else {
      s += json[i];
    }
  }
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string quoted = "\"";
  for (char c : s) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

}  // namespace

RunStatus read_status(const std::string& run_dir, std::string* problem) {
  const YAML::Node n = read_json_file(run_dir + "/status.json", kStatusHolds, problem);
  RunStatus s;
  s.status = text(n["status"]);
  s.error = text(n["error"]);
  s.command = text(n["command"]);
  s.exit_code = static_cast<int>(number(n["exit_code"]).value_or(0));
  s.attempts = static_cast<int>(number(n["attempts"]).value_or(0));
  s.seconds = number(n["seconds"]).value_or(0);
  return s;
}

void write_status(const std::string& run_dir, const RunStatus& s) {
  JsonObject o;
  o.add("status", s.status)
      .add("exit_code", static_cast<int64_t>(s.exit_code))
      .add("attempts", static_cast<int64_t>(s.attempts))
      .add("seconds", s.seconds)
      .add("error", s.error)
      .add("command", s.command);
  write_file_atomic(run_dir + "/status.json", o.str() + "\n");
}

bool run_complete(const std::string& run_dir) {
  return text(read_json_file(run_dir + "/summary.json", kSummaryHolds)["status"]) == "complete";
}

bool is_sweep_dir(const std::string& dir) { return path_exists(dir + "/sweep.yaml"); }

void write_manifest(const std::string& sweep_dir, const SweepManifest& m) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "command" << YAML::Value << YAML::DoubleQuoted << m.command;
  out << YAML::Key << "base" << YAML::Value << YAML::Flow << m.base_files;
  out << YAML::Key << "grid" << YAML::Value << m.grid_file;
  out << YAML::Key << "launch" << YAML::Value << YAML::DoubleQuoted << m.launch;
  out << YAML::Key << "varied" << YAML::Value << YAML::Flow << m.varied;
  out << YAML::Key << "runs" << YAML::Value << YAML::BeginSeq;
  for (const RunRecord& r : m.runs) {
    out << YAML::BeginMap << YAML::Key << "name" << YAML::Value << r.name;
    out << YAML::Key << "values" << YAML::Value << YAML::Flow << YAML::BeginMap;
    for (const auto& [key, value] : r.values) {
      out << YAML::Key << key << YAML::Value << YAML::DoubleQuoted << value;
    }
    out << YAML::EndMap << YAML::EndMap;
  }
  out << YAML::EndSeq << YAML::EndMap;
  write_file_atomic(sweep_dir + "/sweep.yaml", std::string(out.c_str()) + "\n");
}

SweepManifest read_manifest(const std::string& sweep_dir) {
  const std::string path = sweep_dir + "/sweep.yaml";
  SY_CHECK(path_exists(path), "'", sweep_dir, "' is not a sweep folder: it has no sweep.yaml");
  SweepManifest m;
  try {
    const YAML::Node doc = YAML::Load(read_file(path));
    m.command = text(doc["command"]);
    m.grid_file = text(doc["grid"]);
    m.launch = text(doc["launch"]);
    for (const YAML::Node& f : doc["base"]) m.base_files.push_back(f.Scalar());
    for (const YAML::Node& k : doc["varied"]) m.varied.push_back(k.Scalar());
    for (const YAML::Node& r : doc["runs"]) {
      RunRecord rec{r["name"].Scalar(), {}};
      for (const auto& v : r["values"])
        rec.values.emplace_back(v.first.Scalar(), v.second.Scalar());
      m.runs.push_back(std::move(rec));
    }
  } catch (const YAML::Exception& e) {
    SY_THROW(path, ": not a sweep manifest (", e.msg, ")");
  }
  SY_CHECK(!m.runs.empty(), path, ": the manifest lists no runs");
  return m;
}

std::string ResultRow::json(const std::string& column) const {
  for (const auto& [c, v] : cells) {
    if (c == column) return v;
  }
  return "null";
}

std::string ResultRow::to_json() const {
  JsonObject o;
  for (const auto& [c, v] : cells) o.add_raw(c, v);
  return o.str();
}

std::vector<std::string> result_columns(const std::vector<std::string>& varied) {
  std::vector<std::string> cols{"run"};
  cols.insert(cols.end(), varied.begin(), varied.end());
  for (const char* c : {"status", "final_val_loss", "best_val_loss", "final_train_loss", "steps",
                        "tokens", "params_total", "params_active", "flops_per_token", "train_flops",
                        "tokens_per_s", "ms_per_step", "peak_mib", "drop_fraction",
                        "load_imbalance", "aux_loss", "z_loss", "seconds", "error"}) {
    cols.push_back(c);
  }
  return cols;
}

// JSON's number grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? ("010", ".5", "+1" and
// "5." are numbers to strtod but not to JSON, nor to the report's JavaScript).
bool is_json_number(const std::string& v) {
  size_t i = 0;
  auto digits = [&] {
    const size_t start = i;
    while (i < v.size() && v[i] >= '0' && v[i] <= '9') ++i;
    return i - start;
  };
  if (i < v.size() && v[i] == '-') ++i;
  if (i < v.size() && v[i] == '0') {
    ++i;
  } else if (digits() == 0) {
    return false;
  }
  if (i < v.size() && v[i] == '.') {
    ++i;
    if (digits() == 0) return false;
  }
  if (i < v.size() && (v[i] == 'e' || v[i] == 'E')) {
    ++i;
    if (i < v.size() && (v[i] == '+' || v[i] == '-')) ++i;
    if (digits() == 0) return false;
  }
  return i == v.size() && std::isfinite(std::strtod(v.c_str(), nullptr));
}

std::string value_json(const std::string& v) { return is_json_number(v) ? v : str_json(v); }

namespace {

// A metrics value as the JSON the report embeds: a JSON number (unquoted), null, or a list of
// them (expert_load); nullopt for anything else (a string, a map, true, nan, 0x10, ...).
std::optional<std::string> metric_json(const YAML::Node& value) {
  if (value.IsNull()) return "null";
  if (value.IsScalar()) {
    if (value.Tag() != "?" || !is_json_number(value.Scalar())) return std::nullopt;  // "5": text
    return value.Scalar();
  }
  if (!value.IsSequence()) return std::nullopt;
  std::string out = "[";
  for (size_t i = 0; i < value.size(); ++i) {
    const std::optional<std::string> item = metric_json(value[i]);
    if (!item) return std::nullopt;
    out += (i ? ", " : "") + *item;
  }
  return out + "]";
}

// One line of metrics.jsonl written anew from what it holds, or nullopt when it is no JSON object
// of such values with a numeric "step".
std::optional<std::string> metrics_line(const std::string& line) {
  if (line.size() < 2 || line.front() != '{' || line.back() != '}') return std::nullopt;
  YAML::Node n;
  try {
    n = YAML::Load(line);
  } catch (const YAML::Exception&) {
    return std::nullopt;
  }
  if (!n.IsMap()) return std::nullopt;
  JsonObject out;
  bool step = false;
  for (const auto& entry : n) {
    const std::optional<std::string> value = metric_json(entry.second);
    if (!entry.first.IsScalar() || !value) return std::nullopt;
    if (entry.first.Scalar() == "step") step = *value != "null" && value->front() != '[';
    out.add_raw(entry.first.Scalar(), *value);
  }
  return step ? std::optional<std::string>(out.str()) : std::nullopt;
}

}  // namespace

std::vector<std::string> metrics_lines(const std::string& run_dir, size_t* skipped) {
  std::vector<std::string> lines;
  size_t bad = 0;
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    if (std::optional<std::string> json = metrics_line(line)) {
      lines.push_back(std::move(*json));
    } else if (!in.eof() && line.find_first_not_of(" \t\r") != std::string::npos) {
      ++bad;  // not a blank line, nor a last line without its newline (being written, or cut)
    }
  }
  if (skipped != nullptr) *skipped = bad;
  return lines;
}

ResultRow summarize_run(const std::string& run_dir, const RunRecord& run,
                        const std::vector<std::string>& varied, bool live) {
  std::string problem;  // a summary.json or status.json that cannot be read
  const YAML::Node summary = read_json_file(run_dir + "/summary.json", kSummaryHolds, &problem);
  const RunStatus status = read_status(run_dir, &problem);
  const MetricsDigest m = digest_metrics(run_dir);

  std::string state = status.status;
  if (text(summary["status"]) == "complete") {  // run_complete(), from the summary read above
    state = "done";
  } else if (!problem.empty() && !(state == "running" && live)) {
    // A damaged file: failed, with the reason, and run again by the next sweep (a run that a
    // sweep runs now writes both files anew).
    state = "failed";
  } else if (state.empty()) {
    state = path_exists(run_dir + "/metrics.jsonl") ? "incomplete" : "pending";
  } else if (state == "done") {
    state = "incomplete";  // the command succeeded but the run did not reach max_steps
  } else if (state == "running" && !live) {
    state = "interrupted";  // its sweep is gone (killed outright): nothing runs it now
  }
  const std::optional<double> steps = summary["steps"] ? number(summary["steps"]) : m.last_step;
  const std::optional<double> tokens = number(summary["tokens"]);
  const std::optional<double> flops = number(summary["flops_per_token"]);
  std::optional<double> train_flops;
  if (tokens && flops) train_flops = *tokens * *flops;

  ResultRow row;
  auto cell = [&](const std::string& c, const std::string& json) {
    row.cells.emplace_back(c, json);
  };
  cell("run", str_json(run.name));
  for (const std::string& key : varied) {
    std::string v = "null";
    for (const auto& [k, value] : run.values) {
      if (k == key) v = value_json(value);
    }
    cell(key, v);
  }
  cell("status", str_json(state));
  cell("final_val_loss", num_json(m.final_val));
  cell("best_val_loss", num_json(m.best_val));
  cell("final_train_loss", num_json(m.final_train));
  cell("steps", num_json(steps));
  cell("tokens", num_json(tokens));
  cell("params_total", num_json(number(summary["params_total"])));
  cell("params_active", num_json(number(summary["params_active"])));
  cell("flops_per_token", num_json(flops));
  cell("train_flops", num_json(train_flops));
  cell("tokens_per_s", num_json(number(summary["tokens_per_s"])));
  cell("ms_per_step", num_json(number(summary["ms_per_step"])));
  cell("peak_mib", num_json(number(summary["peak_mib"])));
  cell("drop_fraction", num_json(m.drop_mean));
  cell("load_imbalance", num_json(m.imbalance_mean));
  cell("aux_loss", num_json(m.aux));
  cell("z_loss", num_json(m.z));
  cell("seconds", status.status.empty() ? std::string("null") : json_number(status.seconds));
  if (!status.error.empty()) problem += (problem.empty() ? "" : "; ") + status.error;
  cell("error", str_json(state == "done" ? std::string() : problem));
  return row;
}

std::vector<ResultRow> write_results(const std::string& sweep_dir, const SweepManifest& manifest,
                                     bool live) {
  const std::vector<std::string> columns = result_columns(manifest.varied);
  std::vector<ResultRow> rows;
  std::string csv, jsonl;
  for (size_t c = 0; c < columns.size(); ++c)
    csv += (c ? "," : "") + csv_cell(str_json(columns[c]));
  csv += "\n";
  for (const RunRecord& run : manifest.runs) {
    ResultRow row = summarize_run(sweep_dir + "/" + run.name, run, manifest.varied, live);
    for (size_t c = 0; c < columns.size(); ++c)
      csv += (c ? "," : "") + csv_cell(row.json(columns[c]));
    csv += "\n";
    jsonl += row.to_json() + "\n";
    rows.push_back(std::move(row));
  }
  write_file_atomic(sweep_dir + "/results.csv", csv);
  write_file_atomic(sweep_dir + "/results.jsonl", jsonl);
  return rows;
}

}  // namespace sy::study
