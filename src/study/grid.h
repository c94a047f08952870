// A sweep's grid (docs/experiments.md#grid-files): which config keys vary and over which values,
// and how each run is launched. A grid file is YAML:
//
//   grid:                          # axes, combined as a Cartesian product in file order
//     moe.num_experts: [4, 8, 16]
//     train.seed: [1, 2, 3]
//     zip:                         # a key starting with "zip": these vary together, the i-th
//       model.d_model: [64, 128]   #   values of every list forming one point of this axis
//       model.n_heads: [4, 8]
//       label: [small, base]       # optional: names the points of the group in run names
//                                  #   and in the table (a column "label"); not a config key.
//                                  #   Several labelled groups: label.width, label.router, ...
//   set:                           # fixed overrides for every run (as --set), optional
//     train.max_steps: 500
//   launch: "mpirun -np {ranks} {switchyard} train --config {config} --resume auto"  # optional
//   ranks: 4                       # {ranks} in the launch template, optional (default 1)
//   parallel: 1                    # runs at a time, optional (--parallel overrides)
//
// The points of the grid become runs, each with its config resolved from the base files, `set`,
// the command line's --set and the point's values, in that order. Every value is checked against
// the config schema before anything runs: a bad key or value is one error naming it.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace sy::study {

// One axis: `keys` vary together (one key, or a zip group); values[i][j] is key j's value at the
// axis's i-th position, as the YAML scalar text.
struct GridAxis {
  std::vector<std::string> keys;
  std::vector<std::vector<std::string>> values;
};

struct Grid {
  std::string path;  // the grid file, for messages
  std::vector<GridAxis> axes;
  std::vector<std::string> sets;  // "section.key=value" from `set:`
  std::string launch;             // "" : the default template (sweep.h)
  int ranks = 1;
  int parallel = 0;  // 0: not given
};

// One run of the sweep: its folder name and the (key, value) pairs of its point, axis order.
struct SweepPoint {
  std::string name;
  std::vector<std::pair<std::string, std::string>> values;
};

// Parses a grid file; throws sy::Error naming the file and the entry when it is malformed (an
// axis without values, a value that is not a scalar, an unknown top-level entry, zip lists of
// different lengths, a key twice in the file, in the axes or in `set`, train.out_dir varied or
// set, a launch template with an unknown placeholder or without {config}). As in a config file
// (src/config/config_internal.h), a second YAML document and YAML tags are refused.
Grid load_grid(const std::string& path);
Grid parse_grid(const std::string& yaml_text, const std::string& source_name);

// Every varied key, in axis order.
std::vector<std::string> varied_keys(const Grid& grid);

// "label" or "label.<name>": a zip group's labels, which are no config key.
bool is_label(const std::string& key);

// The Cartesian product of the axes, the last axis varying fastest. Each point is named from its
// values, "num_experts=8_seed=1" (a key's last component, or the full key where two varied keys
// share it; characters other than [A-Za-z0-9.+-] become '_'); a zip group with a label gives
// its label alone ("moe8_seed=1") instead of its keys; "run" for a grid without axes.
std::vector<SweepPoint> expand(const Grid& grid);

// Loads the config of every point (base files, then grid sets, then `extra_sets`, then the
// point's values) and throws the first error, naming the grid file, the point and its values.
// train.out_dir in `extra_sets` (--set) is refused: the sweep sets each run's.
void check_points(const Grid& grid, const std::vector<SweepPoint>& points,
                  const std::vector<std::string>& base_files,
                  const std::vector<std::string>& extra_sets);

// The --set overrides of one point's run, in the order above, ending with train.out_dir.
std::vector<std::string> point_sets(const Grid& grid, const SweepPoint& point,
                                    const std::vector<std::string>& extra_sets,
                                    const std::string& run_dir);

// {placeholder} substitution of a launch template; throws naming an unknown placeholder.
struct LaunchFields {
  std::string switchyard, config, run_dir, name;
  int ranks = 1, slot = 0;
};
std::string launch_command(const std::string& launch_template, const LaunchFields& fields);

}  // namespace sy::study
