// The HTML report: see report.h.
#include "study/report.h"

#include <unistd.h>

#include <ctime>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "common/log.h"
#include "study/results.h"

namespace sy::study {
namespace {

// The page template (src/study/report_page.html), embedded at build time.
const char* const kPage =
#include "report_page_html.inc"
    ;

constexpr const char* kPlaceholder = "/*SWITCHYARD_REPORT_DATA*/null";

std::string json_list(const std::vector<std::string>& items, bool quote) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) {
    out += (i ? ", " : "") + (quote ? "\"" + json_escape(items[i]) + "\"" : items[i]);
  }
  return out + "]";
}

// A run's entry of the data. Malformed lines of its metrics.jsonl are skipped with one warning;
// a single run's report (`alone`) with none usable is an error.
std::string run_json(const std::string& run_dir, const RunRecord& run,
                     const std::vector<std::string>& varied, bool alone) {
  size_t skipped = 0;
  const std::vector<std::string> metrics = metrics_lines(run_dir, &skipped);
  const std::string file = run_dir + "/metrics.jsonl";
  const char* const usable = "a JSON object of numbers (or null, or lists of them) with a \"step\"";
  SY_CHECK(!alone || skipped == 0 || !metrics.empty(), file, ": no usable line: ", skipped,
           " line(s), none ", usable);
  if (skipped > 0) {
    SY_LOG("report", "warning: ", file, ": ", skipped, " malformed line(s) skipped (each line ",
           "must be ", usable, "); ", metrics.size(), " used");
  }
  return JsonObject()
      .add("name", run.name)
      .add_raw("row", summarize_run(run_dir, run, varied).to_json())
      .add_raw("metrics", json_list(metrics, /*quote=*/false))
      .str();
}

std::string now_utc() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M UTC", &tm);
  return buf;
}

std::string base_name(std::string dir) {
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return dir.substr(dir.find_last_of('/') + 1);
}

}  // namespace

std::string report_data(const std::string& dir) {
  std::vector<std::string> runs, varied;
  std::string kind, command;
  if (is_sweep_dir(dir)) {
    const SweepManifest m = read_manifest(dir);
    kind = "sweep";
    command = m.command;
    varied = m.varied;
    for (const RunRecord& r : m.runs) {
      runs.push_back(run_json(dir + "/" + r.name, r, varied, /*alone=*/false));
    }
  } else {
    SY_CHECK(path_exists(dir + "/metrics.jsonl"), "switchyard report: '", dir,
             "' is neither a sweep folder (sweep.yaml) nor a run folder (metrics.jsonl)");
    kind = "run";
    runs.push_back(run_json(dir, RunRecord{base_name(dir), {}}, varied, /*alone=*/true));
  }
  return JsonObject()
      .add("title", kind + " " + base_name(dir))
      .add("kind", kind)
      .add("generated", now_utc())
      .add("command", command)
      .add_raw("varied", json_list(varied, true))
      .add_raw("columns", json_list(result_columns(varied), true))
      .add_raw("runs", json_list(runs, false))
      .str();
}

std::string write_report(const std::string& dir, const std::string& out_path) {
  const std::string path = out_path.empty() ? dir + "/report.html" : out_path;
  SY_CHECK(!is_directory(path), "switchyard report: the output '", path,
           "' is a folder; expected the HTML file to write (-o FILE, e.g. -o ", path,
           "/report.html)");
  std::string data = report_data(dir);
  // Inside <script>, "</script" would end the element early and "<!--" would change how the
  // browser reads the rest: every '<' (which JSON holds only inside strings) becomes \u003c.
  for (size_t at = data.find('<'); at != std::string::npos; at = data.find('<', at + 6)) {
    data.replace(at, 1, "\\u003c");
  }
  std::string page = kPage;
  const size_t at = page.find(kPlaceholder);
  SY_CHECK(at != std::string::npos, "the report template has no data placeholder");
  page.replace(at, std::string(kPlaceholder).size(), data);
  try {
    write_file_atomic(path, page);
  } catch (...) {
    ::unlink((path + ".tmp").c_str());  // write_file_atomic's, left by a failed write
    throw;
  }
  return path;
}

}  // namespace sy::study
