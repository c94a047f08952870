// `switchyard report DIR [-o FILE]`: one self-contained HTML page (no network: inline CSS and
// scripts, charts drawn as SVG in the browser) for a sweep folder or a single run folder: loss
// curves, the scaling plots (final val loss against active parameters and training FLOPs),
// throughput, per-layer expert-load heatmaps, drop and aux-loss curves, and the sortable results
// table (docs/experiments.md#the-report). The page is src/study/report_page.html with the data
// (below) in place of its placeholder.
//
// The data: {"title", "kind": "sweep" | "run", "generated", "command", "varied": [keys],
// "columns": [result columns], "runs": [{"name", "row": {column: value}, "metrics": [the run's
// metrics.jsonl lines]}]}.
#pragma once

#include <string>

namespace sy::study {

// The page's data for DIR as JSON (see above). Throws naming DIR when it is neither a sweep
// folder (sweep.yaml) nor a run folder (metrics.jsonl).
std::string report_data(const std::string& dir);

// Writes the page to `out_path` ("" : DIR/report.html) and returns its path.
std::string write_report(const std::string& dir, const std::string& out_path);

}  // namespace sy::study
