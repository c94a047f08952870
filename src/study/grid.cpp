// Grid files and their expansion into runs: see grid.h.
#include "study/grid.h"

#include <algorithm>
#include <map>
#include <set>

#include <yaml-cpp/yaml.h>

#include "common/error.h"
#include "common/files.h"
#include "config/config.h"
#include "config/config_internal.h"

namespace sy::study {
namespace {

std::string where(const std::string& source, const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  return mark.line >= 0 ? str(source, ":", mark.line + 1) : source;
}

// The list of scalars under an axis key.
std::vector<std::string> scalar_list(const YAML::Node& node, const std::string& key,
                                     const std::string& source) {
  SY_CHECK(node.IsSequence(), where(source, node), ": grid axis '", key,
           "' must be a list of values, e.g. ", key, ": [1, 2]");
  SY_CHECK(node.size() > 0, where(source, node), ": grid axis '", key,
           "' has an empty list of values");
  std::vector<std::string> values;
  for (const YAML::Node& v : node) {
    SY_CHECK(v.IsScalar(), where(source, v), ": grid axis '", key,
             "': every value must be a scalar (a number, word or string), not a list or map");
    values.push_back(v.Scalar());
  }
  return values;
}

int positive_int(const YAML::Node& node, const std::string& key, const std::string& source) {
  int v = 0;
  try {
    v = node.as<int>();
  } catch (const YAML::Exception&) {
    SY_THROW(where(source, node), ": '", key, "' must be an integer, got '",
             node.IsScalar() ? node.Scalar() : std::string("a list or map"), "'");
  }
  SY_CHECK(v >= 1, where(source, node), ": '", key, "' must be >= 1, got ", v);
  return v;
}

// "moe.num_experts" -> "num_experts", unless another varied key ends the same way.
std::string short_name(const std::string& key, const std::vector<std::string>& all) {
  const std::string last = key.substr(key.rfind('.') + 1);
  int same = 0;
  for (const std::string& k : all) same += k.substr(k.rfind('.') + 1) == last;
  return same > 1 ? key : last;
}

std::string sanitize(const std::string& value) {
  std::string out = value.empty() ? std::string("empty") : value;
  for (char& c : out) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '+' || c == '-';
    if (!ok) c = '_';
  }
  return out;
}

// Note [No YAML tags] holds in grid files too: a value's type is its config key's.
void check_tags(const YAML::Node& node, const std::string& source, const std::string& path) {
  config_detail::check_tag(node, where(source, node), path.empty() ? "the top level" : path);
  if (node.IsMap()) {
    for (const auto& entry : node) {
      const std::string name = entry.first.IsScalar() ? entry.first.Scalar() : "?";
      const std::string child = path.empty() ? name : path + "." + name;
      config_detail::check_tag(entry.first, where(source, entry.first), child);
      check_tags(entry.second, source, child);
    }
  } else if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) check_tags(node[i], source, str(path, "[", i, "]"));
  }
}

// A word for /bin/sh: as is when it has only safe characters, else single-quoted.
std::string shell_word(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                        "0123456789_./+-=:,@%") == std::string::npos) {
    return s;
  }
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string config_error(const std::exception& e) {
  if (const auto* err = dynamic_cast<const Error*>(&e)) return err->message();
  return e.what();
}

}  // namespace

std::string launch_command(const std::string& tmpl, const LaunchFields& f) {
  std::string out;
  for (size_t i = 0; i < tmpl.size(); ++i) {
    if (tmpl[i] != '{') {
      out += tmpl[i];
      continue;
    }
    const size_t close = tmpl.find('}', i);
    SY_CHECK(close != std::string::npos, "launch template '", tmpl, "': a '{' is not closed");
    const std::string name = tmpl.substr(i + 1, close - i - 1);
    if (name == "switchyard") out += shell_word(f.switchyard);
    else if (name == "config") out += shell_word(f.config);
    else if (name == "run_dir") out += shell_word(f.run_dir);
    else if (name == "name") out += shell_word(f.name);
    else if (name == "ranks") out += std::to_string(f.ranks);
    else if (name == "slot") out += std::to_string(f.slot);
    else
      SY_THROW("launch template '", tmpl, "': unknown placeholder {", name,
               "}: expected {switchyard}, {config}, {run_dir}, {name}, {ranks} or {slot}");
    i = close;
  }
  return out;
}

bool is_label(const std::string& key) { return key == "label" || key.rfind("label.", 0) == 0; }

Grid parse_grid(const std::string& yaml_text, const std::string& source) {
  // As a config file: one YAML document, no tags, no key twice (YAML would keep both, and the
  // last would win).
  const YAML::Node doc = config_detail::parse_document(yaml_text, source, "a grid file");
  SY_CHECK(doc.IsMap(), source, ": a grid file is a YAML map with 'grid:' (and optionally set, ",
           "launch, ranks, parallel)");
  check_tags(doc, source, "");
  Grid grid;
  grid.path = source;
  // Where each key was first written: the top-level entries, the varied keys, the set keys.
  std::map<std::string, int> entries, varied, fixed;
  auto claim = [&](std::map<std::string, int>& seen, const YAML::Node& key, const std::string& in) {
    const auto [first, inserted] = seen.emplace(key.Scalar(), key.Mark().line + 1);
    SY_CHECK(inserted, where(source, key), ": key '", key.Scalar(), "' appears twice ", in,
             " (first on line ", first->second, ")");
  };
  // A config key, varied or set; train.out_dir is not the grid's to give.
  auto claim_key = [&](std::map<std::string, int>& seen, const YAML::Node& key,
                       const std::string& in) {
    claim(seen, key, in);
    SY_CHECK(key.Scalar() != "train.out_dir", where(source, key),
             ": train.out_dir cannot be set in a grid: the sweep sets each run's folder ",
             "(SWEEP/<run name>); choose the sweep's folder with --out");
  };
  for (const auto& entry : doc) {
    const std::string name = entry.first.Scalar();
    const YAML::Node& value = entry.second;
    claim(entries, entry.first, "in the grid file");
    if (name == "grid") {
      SY_CHECK(value.IsMap() || value.IsNull(), where(source, value),
               ": 'grid' must map config keys to lists of values");
      for (const auto& axis : value) {
        const std::string key = axis.first.Scalar();
        GridAxis a;
        if (key.rfind("zip", 0) == 0 && axis.second.IsMap()) {
          size_t length = 0;
          for (const auto& member : axis.second) {
            const std::string k = member.first.Scalar();
            claim_key(varied, member.first, "in the grid");
            const std::vector<std::string> vs = scalar_list(member.second, k, source);
            SY_CHECK(a.keys.empty() || vs.size() == length, where(source, member.second),
                     ": zip group '", key, "': '", k, "' has ", vs.size(),
                     " values but the keys before it have ", length,
                     " (keys in a zip group vary together and need equally long lists)");
            length = vs.size();
            a.keys.push_back(k);
            a.values.resize(length);
            for (size_t i = 0; i < length; ++i) a.values[i].push_back(vs[i]);
          }
          SY_CHECK(!a.keys.empty(), where(source, axis.second), ": zip group '", key,
                   "' has no keys");
        } else {
          SY_CHECK(!is_label(key), where(source, axis.first), ": '", key,
                   "' names the points of a zip group and belongs inside one");
          claim_key(varied, axis.first, "in the grid");
          a.keys.push_back(key);
          for (const std::string& v : scalar_list(axis.second, key, source))
            a.values.push_back({v});
        }
        grid.axes.push_back(std::move(a));
      }
    } else if (name == "set") {
      SY_CHECK(value.IsMap(), where(source, value),
               ": 'set' must map config keys to single values, e.g. train.max_steps: 500");
      for (const auto& s : value) {
        claim_key(fixed, s.first, "in 'set'");
        SY_CHECK(s.second.IsScalar(), where(source, s.second), ": set '", s.first.Scalar(),
                 "' must be a single value");
        grid.sets.push_back(s.first.Scalar() + "=" + s.second.Scalar());
      }
    } else if (name == "launch") {
      SY_CHECK(value.IsScalar(), where(source, value), ": 'launch' must be a command template");
      grid.launch = value.Scalar();
      // Checked now, not when the first run starts: every placeholder known, and {config}.
      try {
        launch_command(grid.launch, LaunchFields{});
      } catch (const Error& e) {
        SY_THROW(where(source, value), ": ", e.message());
      }
      SY_CHECK(grid.launch.empty() || grid.launch.find("{config}") != std::string::npos,
               where(source, value), ": the launch template '", grid.launch,
               "' must pass the run's config: {config}");
    } else if (name == "ranks") {
      grid.ranks = positive_int(value, "ranks", source);
    } else if (name == "parallel") {
      grid.parallel = positive_int(value, "parallel", source);
    } else {
      SY_THROW(where(source, entry.first), ": unknown grid entry '", name,
               "': expected grid, set, launch, ranks or parallel");
    }
  }
  return grid;
}

Grid load_grid(const std::string& path) { return parse_grid(read_file(path), path); }

std::vector<std::string> varied_keys(const Grid& grid) {
  std::vector<std::string> keys;
  for (const GridAxis& a : grid.axes) keys.insert(keys.end(), a.keys.begin(), a.keys.end());
  return keys;
}

std::vector<SweepPoint> expand(const Grid& grid) {
  const std::vector<std::string> keys = varied_keys(grid);
  // Mixed-radix counting over the axes, the last axis fastest.
  size_t count = 1;
  for (const GridAxis& a : grid.axes) count *= a.values.size();
  std::vector<SweepPoint> points;
  std::set<std::string> names;
  for (size_t index = 0; index < count; ++index) {
    SweepPoint p;
    size_t rest = index;
    std::vector<size_t> position(grid.axes.size());
    for (size_t a = grid.axes.size(); a-- > 0;) {
      position[a] = rest % grid.axes[a].values.size();
      rest /= grid.axes[a].values.size();
    }
    for (size_t a = 0; a < grid.axes.size(); ++a) {
      for (size_t k = 0; k < grid.axes[a].keys.size(); ++k) {
        const std::string& key = grid.axes[a].keys[k];
        const std::string& value = grid.axes[a].values[position[a]][k];
        p.values.emplace_back(key, value);
      }
      const auto& ks = grid.axes[a].keys;
      const bool labelled = std::any_of(ks.begin(), ks.end(), is_label);
      for (size_t k = 0; k < ks.size(); ++k) {
        const std::string& value = grid.axes[a].values[position[a]][k];
        if (labelled && !is_label(ks[k])) continue;
        p.name +=
            (p.name.empty() ? "" : "_") +
            (is_label(ks[k]) ? sanitize(value) : short_name(ks[k], keys) + "=" + sanitize(value));
      }
    }
    if (p.name.empty()) p.name = "run";
    // Values that differ only in characters sanitize() replaces would share a folder.
    if (!names.insert(p.name).second) p.name += "_" + std::to_string(index);
    names.insert(p.name);
    points.push_back(std::move(p));
  }
  return points;
}

std::vector<std::string> point_sets(const Grid& grid, const SweepPoint& point,
                                    const std::vector<std::string>& extra_sets,
                                    const std::string& run_dir) {
  std::vector<std::string> sets = grid.sets;
  sets.insert(sets.end(), extra_sets.begin(), extra_sets.end());
  for (const auto& [key, value] : point.values) {
    if (!is_label(key)) sets.push_back(key + "=" + value);
  }
  sets.push_back("train.out_dir=" + run_dir);
  return sets;
}

void check_points(const Grid& grid, const std::vector<SweepPoint>& points,
                  const std::vector<std::string>& base_files,
                  const std::vector<std::string>& extra_sets) {
  for (const std::string& set : extra_sets) {
    std::string key = set.substr(0, set.find('='));
    key.erase(std::remove_if(key.begin(), key.end(), [](char c) { return c == ' ' || c == '\t'; }),
              key.end());
    SY_CHECK(key != "train.out_dir", "--set ", set, ": the sweep sets each run's train.out_dir ",
             "(SWEEP/<run name>); choose the sweep's folder with --out");
  }
  std::vector<std::string> sets = grid.sets;
  sets.insert(sets.end(), extra_sets.begin(), extra_sets.end());
  try {
    load_config(base_files, sets);
  } catch (const std::exception& e) {
    SY_THROW(grid.path, ": the base config with the grid's 'set' and --set: ", config_error(e));
  }
  // Every point: a wrong key or type is named by the config's error, a rule between keys
  // (moe.top_k <= moe.num_experts, ...) with the point's values, which may come from several axes.
  for (const SweepPoint& p : points) {
    try {
      load_config(base_files, point_sets(grid, p, extra_sets, "runs/check"));
    } catch (const std::exception& e) {
      std::string values;
      for (const auto& [key, value] : p.values)
        values += (values.empty() ? "" : ", ") + key + "=" + value;
      SY_THROW(grid.path, ": run '", p.name, "' (", values, "): ", config_error(e));
    }
  }
}

}  // namespace sy::study
