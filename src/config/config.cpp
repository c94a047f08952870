// Loading, printing and listing the typed config; validate.cpp holds the cross-field rules.
//
// Note [One key table]: every key is described once, in keys() below: its section, its name and
// a pointer to its field (whose C++ type is the key's type). Loading (type checks, unknown keys
// and their suggestions), to_yaml() and config_keys() all walk that table, so a new field in
// config.h needs exactly one new line here.
//
// Files are applied to one Config in order, each key as it is read, so a later file overrides
// an earlier one key by key; `--set` overrides are applied last, then validate() runs.
#include "config/config.h"

#include <yaml-cpp/depthguard.h>  // YAML::DeepRecursion
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <type_traits>
#include <variant>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "config/config_internal.h"

namespace sy {
namespace {

// A pointer to one field of a Config; which alternative it holds is the key's type. The enums
// are the keys that take one of a fixed set of words (Note [Typed choices] in choices.h).
using Field =
    std::variant<int64_t*, double*, bool*, std::string*, InitKind*, ModelKind*, Objective*,
                 RouterKind*, Activation*, SlotPriority*, ExpertGemm*, DataFormat*, Precision*,
                 DeviceKind*, CrashMode*, ScoreKind*, BalanceKind*, AuxLossKind*, AuxScope*,
                 A2aKind*, NewExpertInit*, TaskMaskKind*, TaskHead*, MoeWhere*, PairTask*,
                 Recompute*, std::vector<int64_t>*, std::vector<std::string>*,
                 std::vector<TaskConfig>*>;

struct Key {
  std::string section;                  // "moe"
  std::string name;                     // "top_k"
  std::function<Field(Config&)> field;  // &config.moe.top_k
  std::string full() const { return section + "." + name; }
};

// One section of Config; `moe("top_k", &MoeConfig::top_k)` describes the key moe.top_k.
template <typename S> struct Section {
  const char* name;
  S Config::*member;
  template <typename T> Key operator()(const char* key, T S::*field) const {
    S Config::*section = member;
    return Key{name, key, [section, field](Config& c) -> Field { return &((c.*section).*field); }};
  }
};

// Every key, in the declaration order of config.h (see Note [One key table]).
const std::vector<Key>& keys() {
  static const Section<ModelConfig> model{"model", &Config::model};
  static const Section<MoeConfig> moe{"moe", &Config::moe};
  static const Section<DataConfig> data{"data", &Config::data};
  static const Section<TrainConfig> train{"train", &Config::train};
  static const Section<ParallelConfig> parallel{"parallel", &Config::parallel};
  static const Section<DebugConfig> debug{"debug", &Config::debug};
  static const std::vector<Key> table = {
      model("kind", &ModelConfig::kind),
      model("n_layers", &ModelConfig::n_layers),
      model("d_model", &ModelConfig::d_model),
      model("n_heads", &ModelConfig::n_heads),
      model("d_ff", &ModelConfig::d_ff),
      model("block_size", &ModelConfig::block_size),
      model("dropout", &ModelConfig::dropout),
      model("init", &ModelConfig::init),
      model("bias", &ModelConfig::bias),
      model("vocab_size", &ModelConfig::vocab_size),
      moe("num_experts", &MoeConfig::num_experts),
      moe("top_k", &MoeConfig::top_k),
      moe("router", &MoeConfig::router),
      moe("renormalize", &MoeConfig::renormalize),
      moe("every", &MoeConfig::every),
      moe("capacity_factor", &MoeConfig::capacity_factor),
      moe("eval_capacity_factor", &MoeConfig::eval_capacity_factor),
      moe("min_capacity", &MoeConfig::min_capacity),
      moe("aux_loss_coef", &MoeConfig::aux_loss_coef),
      moe("z_loss_coef", &MoeConfig::z_loss_coef),
      moe("activation", &MoeConfig::activation),
      moe("d_ff", &MoeConfig::d_ff),
      moe("jitter_eps", &MoeConfig::jitter_eps),
      moe("priority", &MoeConfig::priority),
      moe("expert_gemm", &MoeConfig::expert_gemm),
      moe("fused_kernels", &MoeConfig::fused_kernels),
      moe("a2a_chunks", &MoeConfig::a2a_chunks),
      moe("dedup_dispatch", &MoeConfig::dedup_dispatch),
      moe("route_padding", &MoeConfig::route_padding),
      moe("shared_experts", &MoeConfig::shared_experts),
      moe("shared_d_ff", &MoeConfig::shared_d_ff),
      moe("score", &MoeConfig::score),
      moe("route_scale", &MoeConfig::route_scale),
      moe("balance", &MoeConfig::balance),
      moe("bias_update_rate", &MoeConfig::bias_update_rate),
      moe("aux_loss", &MoeConfig::aux_loss),
      moe("aux_loss_scope", &MoeConfig::aux_loss_scope),
      moe("route_groups", &MoeConfig::route_groups),
      moe("route_group_limit", &MoeConfig::route_group_limit),
      moe("new_expert_init", &MoeConfig::new_expert_init),
      moe("frozen_experts", &MoeConfig::frozen_experts),
      moe("task_masks", &MoeConfig::task_masks),
      moe("where", &MoeConfig::where),
      data("format", &DataConfig::format),
      data("path", &DataConfig::path),
      data("val_path", &DataConfig::val_path),
      data("batch_size", &DataConfig::batch_size),
      data("val_fraction", &DataConfig::val_fraction),
      data("synthetic_chars", &DataConfig::synthetic_chars),
      data("tasks", &DataConfig::tasks),
      data("mask_prob", &DataConfig::mask_prob),
      data("pairs", &DataConfig::pairs),
      data("source_language", &DataConfig::source_language),
      data("target_language", &DataConfig::target_language),
      train("objective", &TrainConfig::objective),
      train("max_steps", &TrainConfig::max_steps),
      train("lr", &TrainConfig::lr),
      train("min_lr", &TrainConfig::min_lr),
      train("warmup_steps", &TrainConfig::warmup_steps),
      train("weight_decay", &TrainConfig::weight_decay),
      train("beta1", &TrainConfig::beta1),
      train("beta2", &TrainConfig::beta2),
      train("grad_clip", &TrainConfig::grad_clip),
      train("grad_accum", &TrainConfig::grad_accum),
      train("eval_interval", &TrainConfig::eval_interval),
      train("eval_iters", &TrainConfig::eval_iters),
      train("log_interval", &TrainConfig::log_interval),
      train("seed", &TrainConfig::seed),
      train("device", &TrainConfig::device),
      train("dtype", &TrainConfig::dtype),
      train("param_dtype", &TrainConfig::param_dtype),
      train("out_dir", &TrainConfig::out_dir),
      train("checkpoint_interval", &TrainConfig::checkpoint_interval),
      train("keep_checkpoints", &TrainConfig::keep_checkpoints),
      train("stop_at_step", &TrainConfig::stop_at_step),
      train("skip_nonfinite", &TrainConfig::skip_nonfinite),
      train("cuda_graph", &TrainConfig::cuda_graph),
      train("tf32", &TrainConfig::tf32),
      train("tensorboard", &TrainConfig::tensorboard),
      train("init_from", &TrainConfig::init_from),
      train("trainable", &TrainConfig::trainable),
      train("frozen", &TrainConfig::frozen),
      train("activation_checkpointing", &TrainConfig::activation_checkpointing),
      parallel("ep_size", &ParallelConfig::ep_size),
      parallel("timeout_s", &ParallelConfig::timeout_s),
      parallel("check_splits", &ParallelConfig::check_splits),
      parallel("a2a", &ParallelConfig::a2a),
      parallel("ranks_per_node", &ParallelConfig::ranks_per_node),
      debug("crash_rank", &DebugConfig::crash_rank),
      debug("crash_step", &DebugConfig::crash_step),
      debug("crash_mode", &DebugConfig::crash_mode),
      debug("stall_rank", &DebugConfig::stall_rank),
      debug("stall_step", &DebugConfig::stall_step),
      debug("nan_rank", &DebugConfig::nan_rank),
      debug("nan_step", &DebugConfig::nan_step),
      debug("kill_in_save_step", &DebugConfig::kill_in_save_step),
  };
  return table;
}

const Key* find_key(const std::string& full) {
  for (const Key& key : keys()) {
    if (key.full() == full) return &key;
  }
  return nullptr;
}

// The keys of one data.tasks entry, in the order to_yaml prints them.
struct TaskKey {
  const char* name;
  std::function<Field(TaskConfig&)> field;
};
const std::vector<TaskKey>& task_keys() {
  static const std::vector<TaskKey> table = {
      {"name", [](TaskConfig& t) -> Field { return &t.name; }},
      {"path", [](TaskConfig& t) -> Field { return &t.path; }},
      {"format", [](TaskConfig& t) -> Field { return &t.format; }},
      {"synthetic", [](TaskConfig& t) -> Field { return &t.synthetic; }},
      {"weight", [](TaskConfig& t) -> Field { return &t.weight; }},
      {"experts", [](TaskConfig& t) -> Field { return &t.experts; }},
      {"head", [](TaskConfig& t) -> Field { return &t.head; }},
  };
  return table;
}

// Section names in declaration order, taken from the table.
std::vector<std::string> section_names() {
  std::vector<std::string> names;
  for (const Key& key : keys()) {
    if (names.empty() || names.back() != key.section) names.push_back(key.section);
  }
  return names;
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

// Edit distance with adjacent transpositions counted as one edit ("optimal string alignment").
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

// "; did you mean 'moe.num_experts'?" for the nearest candidate (the first on ties), or "" when
// even the nearest differs in more than half of `typed` (a suggestion would only mislead).
std::string suggestion(const std::string& typed, const std::vector<std::string>& candidates) {
  const std::string* best = nullptr;
  size_t best_distance = 0;
  for (const std::string& candidate : candidates) {
    const size_t distance = edit_distance(typed, candidate);
    if (best == nullptr || distance < best_distance) {
      best = &candidate;
      best_distance = distance;
    }
  }
  if (best == nullptr || best_distance > std::max<size_t>(2, typed.size() / 2)) return "";
  return "; did you mean '" + *best + "'?";
}

// "a.yaml:3" (YAML marks count lines from 0; a node without a mark gives just the source).
std::string location(const std::string& source, const YAML::Mark& mark) {
  return mark.line < 0 ? source : source + ":" + std::to_string(mark.line + 1);
}

// What a node that is not the expected kind of value is, for error messages.
std::string describe(const YAML::Node& node) {
  if (node.IsScalar()) return "'" + node.Scalar() + "'";
  if (node.IsSequence()) return "a sequence";
  if (node.IsMap()) return "a mapping";
  return "an empty value";
}

// Scalar parsers, one per key type: true when `text` is a value of that type.
bool parse(const std::string& text, int64_t* out) {
  const size_t digits = (!text.empty() && (text[0] == '+' || text[0] == '-')) ? 1 : 0;
  if (digits == text.size()) return false;
  for (size_t i = digits; i < text.size(); ++i) {
    if (text[i] < '0' || text[i] > '9') return false;  // "2.5", "1e3", "0x10": not integers
  }
  errno = 0;
  const long long value = std::strtoll(text.c_str(), nullptr, 10);
  if (errno == ERANGE) return false;
  *out = value;
  return true;
}
bool parse(const std::string& text, double* out) {
  // Decimal forms only: strtod alone would also take "inf", "nan" and hex floats.
  if (text.empty() || text.find_first_not_of("0123456789+-.eE") != std::string::npos) return false;
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size() || !std::isfinite(value)) return false;
  *out = value;
  return true;
}
bool parse(const std::string& text, bool* out) {
  if (text != "true" && text != "false") return false;
  *out = text == "true";
  return true;
}
bool parse(const std::string& text, std::string* out) {
  *out = text;
  return true;
}
template <typename E, typename = std::enable_if_t<std::is_enum_v<E>>>
bool parse(const std::string& text, E* out) {
  return parse_choice(text, out);
}

std::string type_name(int64_t*) { return "an integer"; }
std::string type_name(double*) { return "a number"; }
std::string type_name(bool*) { return "a boolean (true or false)"; }
std::string type_name(std::string*) { return "a string"; }
template <typename E, typename = std::enable_if_t<std::is_enum_v<E>>> std::string type_name(E*) {
  return "one of " + choice_list<E>();
}
std::string type_name(std::vector<int64_t>*) { return "a list of integers (e.g. [0, 1])"; }
std::string type_name(std::vector<std::string>*) {
  return "a list of strings (e.g. [lm_head, \"blocks.*.moe.experts\"])";
}
std::string type_name(std::vector<TaskConfig>*) {
  return "a list of tasks, each a mapping of name, path or synthetic, weight, experts, head";
}

std::vector<std::string> task_key_names() {
  std::vector<std::string> names;
  for (const TaskKey& k : task_keys()) names.push_back(k.name);
  return names;
}

std::string type_error(const std::string& where, const std::string& key, const std::string& type,
                       const YAML::Node& value, bool is_string) {
  std::string got = describe(value);
  if (value.IsNull() && is_string) got += " (write \"\" for an empty string)";
  return str(where, ": ", key, ": expected ", type, ", got ", got);
}

// Where a value was written, for error messages: "file:line" of the node itself (an element of
// a list, a key of a task), the enclosing node's for an empty value, or "--set".
struct Where {
  std::string source;    // the file name, or "--set"
  bool lines = true;     // false for --set values (their marks count lines of the value text)
  std::string fallback;  // the enclosing node's location
  std::string of(const YAML::Node& node) const {
    if (!lines) return source;
    if (node.IsNull() || node.Mark().line < 0) return fallback;
    return location(source, node.Mark());
  }
  Where inside(const YAML::Node& node) const { return Where{source, lines, of(node)}; }
};

}  // namespace

// Note [No YAML tags]: a value's type is its key's, so a tag that would change how YAML reads it
// (`!!str 5`, `!!int "x"`, `!!map`, a custom `!foo`) is refused rather than ignored. yaml-cpp
// marks an untagged plain node "?" and an untagged quoted scalar "!"; anything else was written.
void config_detail::check_tag(const YAML::Node& node, const std::string& at,
                              const std::string& key) {
  if (!node.IsDefined() || node.IsNull()) return;
  const std::string& tag = node.Tag();
  if (tag.empty() || tag == "?" || tag == "!") return;
  std::string shown = tag;
  const std::string core = "tag:yaml.org,2002:";
  if (shown.compare(0, core.size(), core) == 0) shown = "!!" + shown.substr(core.size());
  SY_THROW(at, ": ", key, ": the YAML tag '", shown,
           "' is not allowed: a value's type is its key's (write the value without a tag)");
}

namespace {

void check_tag(const YAML::Node& node, const Where& w, const std::string& key) {
  config_detail::check_tag(node, w.of(node), key);
}

// Reads `value` into *field, or throws naming where it was written, the key, the expected type
// and what was given instead. Scalars parse their text; lists take a YAML sequence (block or
// [a, b]) of scalars; data.tasks takes a sequence of mappings whose keys are task_keys().
template <typename T>
void read_value(const YAML::Node& value, T* field, const Where& w, const std::string& key) {
  check_tag(value, w, key);
  if (value.IsScalar() && parse(value.Scalar(), field)) return;
  if (value.IsMap() || value.IsSequence()) {  // nested deeper than the key takes
    SY_THROW(type_error(w.of(value), key, type_name(field), value, false),
             " (nested deeper than the config allows: nothing nests under ", key, ")");
  }
  SY_THROW(type_error(w.of(value), key, type_name(field), value, std::is_same_v<T, std::string>));
}
template <typename S>
void read_value(const YAML::Node& value, std::vector<S>* field, const Where& w,
                const std::string& key) {
  check_tag(value, w, key);
  SY_CHECK(value.IsSequence(), type_error(w.of(value), key, type_name(field), value, false));
  std::vector<S> items(value.size());
  for (size_t i = 0; i < value.size(); ++i) {
    read_value(value[i], &items[i], w.inside(value), str(key, "[", i, "]"));
  }
  *field = std::move(items);
}
void read_value(const YAML::Node& value, std::vector<TaskConfig>* field, const Where& w,
                const std::string& key) {
  check_tag(value, w, key);
  SY_CHECK(value.IsSequence(), type_error(w.of(value), key, type_name(field), value, false));
  std::vector<TaskConfig> tasks(value.size());
  for (size_t i = 0; i < value.size(); ++i) {
    const std::string task_key = str(key, "[", i, "]");
    const Where in_list = w.inside(value);
    SY_CHECK(value[i].IsMap(), in_list.of(value[i]), ": ", task_key, ": expected a mapping (name, ",
             "path or synthetic, weight, experts, head), got ", describe(value[i]));
    check_tag(value[i], in_list, task_key);
    const Where in_task = in_list.inside(value[i]);
    for (const auto& entry : value[i]) {
      const std::string name = entry.first.IsScalar() ? entry.first.Scalar() : "";
      check_tag(entry.first, in_task, task_key + "." + name);
      const TaskKey* found = nullptr;
      for (const TaskKey& k : task_keys()) {
        if (name == k.name) found = &k;
      }
      if (found == nullptr) {
        SY_THROW(in_task.of(entry.first), ": unknown key '", name, "' in ", task_key,
                 " (a task has ", join(task_key_names()), ")", suggestion(name, task_key_names()));
      }
      const Where at_key{in_task.source, in_task.lines, in_task.of(entry.first)};
      std::visit([&](auto* f) { read_value(entry.second, f, at_key, task_key + "." + name); },
                 found->field(tasks[i]));
    }
  }
  *field = std::move(tasks);
}

void assign(Config& config, const Key& key, const YAML::Node& value, const Where& where) {
  std::visit([&](auto* field) { read_value(value, field, where, key.full()); }, key.field(config));
}

// The deepest a config nests: the top level, a section, a key's value, a list's element (a task
// of data.tasks), a task's value, an element of a task's list (its experts).
constexpr int kMaxConfigDepth = 6;

// Refuses nodes nested deeper than any key takes, naming the path of keys to them and the line.
void check_depth(const YAML::Node& node, const Where& w, const std::string& path, int depth) {
  if (!node.IsMap() && !node.IsSequence()) return;
  auto below = [&](const YAML::Node& child, const std::string& child_path) {
    if (depth + 1 > kMaxConfigDepth && (child.IsDefined() && !child.IsNull())) {
      SY_THROW(w.of(child), ": ", child_path, ": nested deeper than a config allows (at most ",
               kMaxConfigDepth, " levels: section, key, list element, task key, list element)");
    }
    check_depth(child, w, child_path, depth + 1);
  };
  if (node.IsMap()) {
    for (const auto& entry : node) {
      const std::string name = entry.first.IsScalar() ? entry.first.Scalar() : "?";
      below(entry.second, path.empty() ? name : path + "." + name);
    }
  } else {
    for (size_t i = 0; i < node.size(); ++i) below(node[i], str(path, "[", i, "]"));
  }
}

// Applies one parsed YAML document (`source` names it in errors) onto `config`.
void apply_document(Config& config, const YAML::Node& root, const std::string& source) {
  if (root.IsNull()) return;  // an empty file, or only comments
  SY_CHECK(root.IsMap(), source, ": the top level must be a mapping of sections (",
           join(section_names()), "), got ", describe(root));
  const Where top{source, true, source};
  check_tag(root, top, "the top level");
  check_depth(root, top, "", 1);
  std::map<std::string, int> first_line;  // full key or section -> line it was first on
  for (const auto& section : root) {
    const YAML::Node& name = section.first;
    const YAML::Node& body = section.second;
    const std::string at = location(source, name.Mark());
    SY_CHECK(name.IsScalar(), at, ": a section name must be a plain word, got ", describe(name));
    check_tag(name, top, "section '" + name.Scalar() + "'");
    const std::vector<std::string> sections = section_names();
    if (std::find(sections.begin(), sections.end(), name.Scalar()) == sections.end()) {
      SY_THROW("unknown section '", name.Scalar(), "' in ", at,
               suggestion(name.Scalar(), sections));
    }
    // A second `moe:` in one file: YAML would keep both and merge them silently.
    const auto [seen, first] = first_line.emplace(name.Scalar(), name.Mark().line + 1);
    SY_CHECK(first, at, ": section '", name.Scalar(), "' appears twice in ", source,
             " (first on line ", seen->second, ")");
    if (body.IsNull()) continue;  // "moe:" with every key commented out
    check_tag(body, top.inside(name), "section '" + name.Scalar() + "'");
    SY_CHECK(body.IsMap(), at, ": section '", name.Scalar(), "' must be a mapping of keys, got ",
             describe(body));
    for (const auto& entry : body) {
      const std::string key_at = location(source, entry.first.Mark());
      SY_CHECK(entry.first.IsScalar(), key_at, ": a key in section '", name.Scalar(),
               "' must be a plain word, got ", describe(entry.first));
      const std::string full = name.Scalar() + "." + entry.first.Scalar();
      check_tag(entry.first, top, full);
      const Key* key = find_key(full);
      if (key == nullptr) {
        SY_THROW("unknown key '", full, "' in ", key_at, suggestion(full, config_keys()));
      }
      const auto [it, inserted] = first_line.emplace(full, entry.first.Mark().line + 1);
      SY_CHECK(inserted, key_at, ": ", full, " is set twice in ", source, " (first on line ",
               it->second, ")");
      // An empty value carries no useful mark of its own; point at its key then.
      const YAML::Mark mark = entry.second.IsNull() ? entry.first.Mark() : entry.second.Mark();
      assign(config, *key, entry.second, Where{source, true, location(source, mark)});
    }
  }
}

}  // namespace

YAML::Node config_detail::parse_document(const std::string& text, const std::string& source,
                                         const std::string& what) {
  std::vector<YAML::Node> documents;
  try {
    documents = YAML::LoadAll(text);
  } catch (const YAML::DeepRecursion& e) {
    SY_THROW(location(source, e.mark), ": nested deeper than a config allows (over ", e.depth(),
             " levels; a config nests at most ", kMaxConfigDepth, ")");
  } catch (const YAML::Exception& e) {
    const std::string at = e.mark.line < 0
                               ? source
                               : location(source, e.mark) + ":" + std::to_string(e.mark.column + 1);
    SY_THROW(at, ": malformed YAML: ", e.msg);
  }
  SY_CHECK(documents.size() <= 1, source, ": holds ", documents.size(), " YAML documents; ", what,
           " must hold one");
  return documents.empty() ? YAML::Node() : documents.front();
}

namespace {

// The whole config file. Only regular files (and /dev/null, the empty config) are read, checked
// with stat() before opening, so a FIFO or a socket can never block the start; a file that stat()
// reports empty but that holds bytes (/proc, /sys) is refused rather than read as an empty config.
std::string read_file(const std::string& path) {
  struct stat st {};
  SY_CHECK(::stat(path.c_str(), &st) == 0, "cannot read config file '", path,
           "': ", std::strerror(errno));
  SY_CHECK(!S_ISDIR(st.st_mode), "cannot read config file '", path, "': it is a directory");
  const bool dev_null = S_ISCHR(st.st_mode) && path == "/dev/null";
  if (dev_null) return "";
  if (!S_ISREG(st.st_mode)) {
    const char* kind = S_ISFIFO(st.st_mode)   ? "a FIFO (named pipe)"
                       : S_ISSOCK(st.st_mode) ? "a socket"
                       : S_ISCHR(st.st_mode)  ? "a character device"
                       : S_ISBLK(st.st_mode)  ? "a block device"
                                              : "not a regular file";
    SY_THROW("cannot read config file '", path, "': it is ", kind, ", not a regular file");
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  SY_CHECK(fd >= 0, "cannot read config file '", path, "': ", std::strerror(errno));
  std::string text;
  char buffer[65536];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int error = errno;
      ::close(fd);
      SY_THROW("cannot read config file '", path, "': read error: ", std::strerror(error));
    }
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  SY_CHECK(st.st_size > 0 || text.empty(), "cannot read config file '", path,
           "': its size is 0 but it holds ", text.size(),
           " bytes (a /proc or /sys file?); copy it to a regular file");
  return text;
}

std::string trim(const std::string& s) {
  const size_t begin = s.find_first_not_of(" \t");
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(" \t") - begin + 1);
}

// Applies one "section.key=value" override; the value is read as a YAML scalar.
void apply_override(Config& config, const std::string& text) {
  const size_t eq = text.find('=');
  SY_CHECK(eq != std::string::npos, "malformed override '", text,
           "': expected --set section.key=value (e.g. --set moe.top_k=1)");
  const std::string full = trim(text.substr(0, eq));
  const size_t dot = full.find('.');
  SY_CHECK(dot != std::string::npos && dot > 0 && dot + 1 < full.size(), "malformed override '",
           text, "': the key must be section.key (e.g. --set moe.top_k=1)");
  const Key* key = find_key(full);
  if (key == nullptr) {
    SY_THROW("unknown key '", full, "' in --set", suggestion(full, config_keys()));
  }
  const std::string value = text.substr(eq + 1);
  YAML::Node node;
  try {
    node = YAML::Load(value);
  } catch (const YAML::Exception& e) {
    SY_THROW("--set: ", full, ": cannot read '", value, "' as a YAML value: ", e.msg);
  }
  assign(config, *key, node, Where{"--set", false, "--set"});
}

Config resolve(Config config, const std::vector<std::string>& overrides) {
  for (const std::string& text : overrides) apply_override(config, text);
  validate(config);
  return config;
}

// Values as to_yaml prints them; each reads back to the same value through parse() above.
std::string format_value(int64_t value) { return std::to_string(value); }
std::string format_value(double value) { return config_detail::format_number(value); }
std::string format_value(bool value) { return value ? "true" : "false"; }
std::string format_value(const std::string& value) {
  // Plain when unambiguous (the common paths and names), double-quoted and escaped otherwise:
  // an empty string or "null"/"~" would read back as an empty value.
  const bool plain = !value.empty() && value != "null" && value != "Null" && value != "NULL" &&
                     value.find_first_not_of(
                         "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                         "0123456789_./+-") == std::string::npos &&
                     value[0] != '-' && value[0] != '+';
  if (plain) return value;
  YAML::Emitter out;
  out << YAML::DoubleQuoted << value;
  return out.c_str();
}
template <typename E, typename = std::enable_if_t<std::is_enum_v<E>>>
std::string format_value(E value) {
  return choice_name(value);
}
// Lists in YAML's flow style, which reads back through read_value(): [a, b], [{name: x, ...}].
template <typename S> std::string format_value(const std::vector<S>& items);
std::string format_value(const TaskConfig& task) {
  TaskConfig copy = task;
  std::string out;
  for (const TaskKey& k : task_keys()) {
    out += std::string(out.empty() ? "" : ", ") + k.name + ": " +
           std::visit([](auto* f) { return format_value(*f); }, k.field(copy));
  }
  return "{" + out + "}";
}
template <typename S> std::string format_value(const std::vector<S>& items) {
  std::string out;
  for (const S& item : items) out += (out.empty() ? "" : ", ") + format_value(item);
  return "[" + out + "]";
}

}  // namespace

namespace config_detail {

std::string format_number(double value) {
  char text[64];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(text, sizeof(text), "%.*g", precision, value);
    if (std::strtod(text, nullptr) == value) break;  // 17 digits always round-trip
  }
  std::string out = text;
  if (out.find_first_of(".eEn") == std::string::npos) out += ".0";  // 'n': inf, nan
  return out;
}

}  // namespace config_detail

Config load_config(const std::vector<std::string>& files,
                   const std::vector<std::string>& overrides) {
  Config config;
  for (const std::string& file : files) {
    apply_document(config, config_detail::parse_document(read_file(file), file), file);
  }
  return resolve(config, overrides);
}

Config load_config_from_string(const std::string& yaml_text, const std::string& source_name,
                               const std::vector<std::string>& overrides) {
  Config config;
  apply_document(config, config_detail::parse_document(yaml_text, source_name), source_name);
  return resolve(config, overrides);
}

std::string to_yaml(const Config& config) {
  Config copy = config;  // the table hands out non-const field pointers
  std::string out;
  std::string section;
  for (const Key& key : keys()) {
    if (key.section != section) {
      section = key.section;
      out += section + ":\n";
    }
    out += "  " + key.name + ": " +
           std::visit([](auto* field) { return format_value(*field); }, key.field(copy)) + "\n";
  }
  return out;
}

namespace {

void flatten_yaml(const YAML::Node& node, const std::string& prefix,
                  std::vector<std::pair<std::string, std::string>>& out) {
  if (node.IsMap()) {
    for (const auto& item : node) {
      const std::string key = item.first.as<std::string>();
      flatten_yaml(item.second, prefix.empty() ? key : prefix + "." + key, out);
    }
    return;
  }
  YAML::Emitter e;
  e << YAML::Flow << node;
  out.emplace_back(prefix, e.c_str());
}

}  // namespace

std::vector<std::pair<std::string, std::string>> flatten_config_yaml(const std::string& yaml_text) {
  std::vector<std::pair<std::string, std::string>> out;
  flatten_yaml(YAML::Load(yaml_text), "", out);
  return out;
}

std::vector<std::string> config_keys() {
  std::vector<std::string> names;
  for (const Key& key : keys()) names.push_back(key.full());
  return names;
}

}  // namespace sy
