#include "train/checkpoint.h"

#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "parallel/consensus.h"
#include "parallel/watchdog.h"

namespace sy {
namespace {

// Format 2 added each expert file's id and shapes and the config hash (Note [Checkpoint
// integrity]); format 1 checkpoints still load, with size and CRC checks only.
constexpr int64_t kFormat = 2;
constexpr int64_t kOldestFormat = 1;

// One written file, as the manifest lists it (path relative to the checkpoint folder).
struct FileRecord {
  std::string path;
  int64_t bytes = 0;
  uint32_t crc = 0;
  int64_t expert = -1;  // an expert file's global expert id; -1 for the others
  // An expert file's tensors: name -> shape (the weights; the AdamW moments have the same).
  std::map<std::string, std::vector<int64_t>> shapes;
};

// The key inside an expert file that holds its global expert id.
constexpr const char* kExpertIdKey = "meta.expert_id";

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%08" PRIx32, v);
  return buf;
}

std::string padded(int64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%05" PRId64, v);
  return buf;
}

std::string expert_file(int64_t expert) { return "experts/expert_" + padded(expert) + ".pt"; }
std::string rank_file(int64_t rank) { return "ranks/rank_" + padded(rank) + ".pt"; }
std::string part_file(int64_t rank) { return "parts/rank_" + padded(rank) + ".txt"; }

FileRecord write_record(const std::string& dir, const std::string& rel, const std::string& bytes) {
  write_file_atomic(dir + "/" + rel, bytes);
  FileRecord rec;
  rec.path = rel;
  rec.bytes = static_cast<int64_t>(bytes.size());
  rec.crc = crc32(bytes.data(), bytes.size());
  return rec;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// A record's expert id and shapes as one space-free token of a manifest part file:
// "-" or "<expert>:<name>=<d0>x<d1>;<name>=...".
std::string expert_token(const FileRecord& r) {
  if (r.expert < 0) return "-";
  std::string out = std::to_string(r.expert) + ":";
  bool first = true;
  for (const auto& [name, shape] : r.shapes) {
    out += (first ? "" : ";") + name + "=";
    first = false;
    for (size_t i = 0; i < shape.size(); ++i) out += (i ? "x" : "") + std::to_string(shape[i]);
  }
  return out;
}

void parse_expert_token(const std::string& token, FileRecord& r) {
  if (token == "-") return;
  const size_t colon = token.find(':');
  SY_CHECK(colon != std::string::npos, "bad expert record '", token, "'");
  r.expert = std::stoll(token.substr(0, colon));
  std::istringstream items(token.substr(colon + 1));
  for (std::string item; std::getline(items, item, ';');) {
    const size_t eq = item.find('=');
    SY_CHECK(eq != std::string::npos, "bad expert record '", token, "'");
    std::vector<int64_t>& shape = r.shapes[item.substr(0, eq)];
    std::istringstream dims(item.substr(eq + 1));
    for (std::string d; std::getline(dims, d, 'x');) shape.push_back(std::stoll(d));
  }
}

std::string archive_bytes(torch::serialize::OutputArchive& archive) {
  std::ostringstream os;
  archive.save_to(os);
  return os.str();
}

// Keys inside the .pt archives.
std::string exp_avg_key(const std::string& name) { return "exp_avg." + name; }
std::string exp_avg_sq_key(const std::string& name) { return "exp_avg_sq." + name; }
std::string steps_key(const std::string& name) { return "steps." + name; }

at::Tensor cpu_copy(const at::Tensor& t) { return t.detach().to(at::kCPU).clone(); }

std::string buffer_key(const std::string& name) { return "buffer." + name; }

// Moments of a slot, zeros before its first step (then loading them is the same as a fresh
// start: AdamW allocates zeros at the first step).
std::pair<at::Tensor, at::Tensor> moments(const AdamWSlot& s) {
  if (s.exp_avg.defined()) return {s.exp_avg, s.exp_avg_sq};
  return {at::zeros_like(s.weights()), at::zeros_like(s.weights())};
}

void write_slot(torch::serialize::OutputArchive& archive, const AdamWSlot& s,
                const at::Tensor& param, const at::Tensor& m, const at::Tensor& v) {
  archive.write(s.name, cpu_copy(param));
  archive.write(exp_avg_key(s.name), cpu_copy(m));
  archive.write(exp_avg_sq_key(s.name), cpu_copy(v));
  archive.write(steps_key(s.name), at::full({}, s.steps, at::kLong));
}

std::string first_nonfinite(const AdamW& optimizer) {
  for (const AdamWSlot& s : optimizer.slots()) {
    if (!at::isfinite(s.weights().detach()).all().item<bool>()) return "weight '" + s.name + "'";
    if (s.exp_avg.defined() && !(at::isfinite(s.exp_avg).all().item<bool>() &&
                                 at::isfinite(s.exp_avg_sq).all().item<bool>())) {
      return "AdamW moments of '" + s.name + "'";
    }
  }
  return "";
}

// Note [Config hash]: the manifest and meta.json record a hash of the run's resolved config
// (FNV-1a 64 of its "section.key=value" lines, sorted, as config.yaml holds them) without the
// keys that may change when a run is resumed: its length and stop (train.max_steps,
// train.stop_at_step), where and how often it writes (train.out_dir, train.keep_checkpoints,
// train.checkpoint_interval, train.log_interval, train.eval_interval), the layout and the
// watchdog (parallel.*: checkpoints reshard) and debug.*. Loading recomputes it from the
// checkpoint's config.yaml: a config.yaml edited or replaced after the save is refused even with
// its CRC fixed up. Against this run's config only the shape keys must agree (check_compatible);
// other differences in hashed keys are listed in a warning.
bool resume_may_change(const std::string& key) {
  static const char* const kKeys[] = {
      "train.max_steps",        "train.stop_at_step",        "train.out_dir",
      "train.keep_checkpoints", "train.checkpoint_interval", "train.log_interval",
      "train.eval_interval"};
  for (const char* k : kKeys) {
    if (key == k) return true;
  }
  return key.rfind("debug.", 0) == 0 || key.rfind("parallel.", 0) == 0;
}

// "section.key" -> value text, of a config as YAML (config.yaml, to_yaml).
std::map<std::string, std::string> flat_config(const std::string& yaml_text) {
  const auto entries = flatten_config_yaml(yaml_text);
  return std::map<std::string, std::string>(entries.begin(), entries.end());
}

std::string config_hash(const std::map<std::string, std::string>& flat) {
  uint64_t h = 0xcbf29ce484222325ull;
  auto add = [&h](const std::string& text) {
    for (const char c : text) {
      h ^= static_cast<unsigned char>(c);
      h *= 0x100000001b3ull;
    }
  };
  for (const auto& [key, value] : flat) {
    if (resume_may_change(key)) continue;
    add(key + "=" + value + "\n");
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "fnv1a64:%016" PRIx64, h);
  return buf;
}

std::string meta_json(const Config& cfg, int64_t step, const ParallelGroups& g, int64_t vocab,
                      const std::string& hash) {
  std::ostringstream os;
  os << "{\"format\": " << kFormat << ", \"step\": " << step << ", \"world_size\": " << g.world_size
     << ", \"ep_size\": " << g.ep_size << ", \"num_experts\": " << cfg.moe.num_experts
     << ", \"vocab_size\": " << vocab << ", \"config_hash\": \"" << hash << "\"}\n";
  return os.str();
}

// Writes this rank's files into `dir`; returns their records.
std::vector<FileRecord> write_rank_files(const std::string& dir, const Config& cfg,
                                         const CharTokenizer* tokenizer, int64_t vocab_size,
                                         GPTImpl& model, const AdamW& optimizer,
                                         const RankState& mine, const ParallelGroups& g,
                                         int64_t step) {
  torch::NoGradGuard no_grad;
  std::vector<FileRecord> written;
  if (g.world_rank == 0) {
    torch::serialize::OutputArchive dense;
    for (const AdamWSlot& s : optimizer.slots()) {
      if (is_expert_parameter(s.name)) continue;
      const auto [m, v] = moments(s);
      write_slot(dense, s, s.weights(), m, v);
    }
    // Buffers (the routers' score biases): replicated, the same on every rank.
    for (const auto& item : model.named_buffers()) {
      dense.write(buffer_key(item.key()), cpu_copy(item.value()));
    }
    written.push_back(write_record(dir, "dense.pt", archive_bytes(dense)));
    const std::string config_text = to_yaml(cfg);
    written.push_back(write_record(dir, "config.yaml", config_text));
    if (tokenizer != nullptr) {
      const std::string vocab_tmp = dir + "/vocab.json.staging";
      tokenizer->save(vocab_tmp);
      const std::string vocab = read_file(vocab_tmp);
      std::remove(vocab_tmp.c_str());
      written.push_back(write_record(dir, "vocab.json", vocab));
    }
    written.push_back(
        write_record(dir, "meta.json",
                     meta_json(cfg, step, g, vocab_size, config_hash(flat_config(config_text)))));
  }
  if (g.dp_rank == 0) {
    // This rank holds experts [first, first + local) of every MoE layer; one file per expert id.
    int64_t local = -1;
    for (const AdamWSlot& s : optimizer.slots()) {
      if (is_expert_parameter(s.name)) local = s.param.size(0);
    }
    for (int64_t i = 0; local > 0 && i < local; ++i) {
      const int64_t expert = static_cast<int64_t>(g.ep_rank) * local + i;
      torch::serialize::OutputArchive archive;
      std::map<std::string, std::vector<int64_t>> shapes;
      for (const AdamWSlot& s : optimizer.slots()) {
        if (!is_expert_parameter(s.name)) continue;
        const auto [m, v] = moments(s);
        write_slot(archive, s, s.weights()[i], m[i], v[i]);
        shapes[s.name] = s.weights()[i].sizes().vec();
      }
      archive.write(kExpertIdKey, at::full({}, expert, at::kLong));
      FileRecord rec = write_record(dir, expert_file(expert), archive_bytes(archive));
      rec.expert = expert;
      rec.shapes = std::move(shapes);
      written.push_back(std::move(rec));
    }
  }
  torch::serialize::OutputArchive state;
  for (const auto& [key, t] : mine.tensors) state.write("tensor." + key, cpu_copy(t));
  for (const auto& [key, text] : mine.text) {
    at::Tensor bytes = at::empty({static_cast<int64_t>(text.size())}, at::kByte);
    std::copy(text.begin(), text.end(), bytes.data_ptr<uint8_t>());
    state.write("text." + key, bytes);
  }
  for (const auto& [key, v] : mine.ints) state.write("int." + key, at::full({}, v, at::kLong));
  written.push_back(write_record(dir, rank_file(g.world_rank), archive_bytes(state)));

  // This rank's part of the manifest, merged by rank 0 once every rank is done.
  std::string part;
  for (const FileRecord& r : written) {
    part +=
        r.path + " " + std::to_string(r.bytes) + " " + hex32(r.crc) + " " + expert_token(r) + "\n";
  }
  write_file_atomic(dir + "/" + part_file(g.world_rank), part);
  return written;
}

std::string manifest_json(int64_t step, const std::string& hash,
                          const std::vector<FileRecord>& files) {
  std::ostringstream os;
  os << "{\"format\": " << kFormat << ", \"step\": " << step << ", \"config_hash\": \"" << hash
     << "\", \"files\": [\n";
  for (size_t i = 0; i < files.size(); ++i) {
    os << "  {\"path\": \"" << files[i].path << "\", \"bytes\": " << files[i].bytes
       << ", \"crc32\": \"" << hex32(files[i].crc) << "\"";
    if (files[i].expert >= 0) {
      os << ", \"expert\": " << files[i].expert << ", \"shapes\": {";
      bool first = true;
      for (const auto& [name, shape] : files[i].shapes) {
        os << (first ? "" : ", ") << "\"" << name << "\": " << shape_text(shape);
        first = false;
      }
      os << "}";
    }
    os << "}" << (i + 1 < files.size() ? ",\n" : "\n");
  }
  os << "]}\n";
  return os.str();
}

// step_<N> folders under root (complete or not), by step.
std::vector<std::pair<int64_t, std::string>> step_folders(const std::string& root, bool partial) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    const std::string suffix = partial ? ".partial" : "";
    if (name.rfind("step_", 0) != 0 || name.size() <= 5 + suffix.size()) continue;
    if (name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) continue;
    const std::string digits = name.substr(5, name.size() - 5 - suffix.size());
    if (digits.find_first_not_of("0123456789") != std::string::npos) continue;
    out.emplace_back(std::stoll(digits), entry.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Rank 0, after every rank wrote its files: the manifest, then the folder's final name, then
// pruning old checkpoints and leftovers of killed saves.
void publish(const std::string& tmp, const std::string& final_dir, const CheckpointSave& req,
             int world_size, const std::string& hash) {
  std::vector<FileRecord> files;
  for (int r = 0; r < world_size; ++r) {
    const std::string part = tmp + "/" + part_file(r);
    std::istringstream in(read_file(part));
    FileRecord rec;
    std::string crc, expert;
    while (in >> rec.path >> rec.bytes >> crc >> expert) {
      rec.crc = static_cast<uint32_t>(std::stoul(crc, nullptr, 16));
      rec.expert = -1;
      rec.shapes.clear();
      parse_expert_token(expert, rec);
      files.push_back(rec);
    }
  }
  std::sort(files.begin(), files.end(),
            [](const FileRecord& a, const FileRecord& b) { return a.path < b.path; });
  remove_tree(tmp + "/parts");
  write_file_atomic(tmp + "/manifest.json", manifest_json(req.step, hash, files));
  struct stat st;
  const bool replacing = ::stat(final_dir.c_str(), &st) == 0;
  const std::string old = final_dir + ".old";
  if (replacing) {
    remove_tree(old);
    SY_CHECK(std::rename(final_dir.c_str(), old.c_str()) == 0, "cannot rename '", final_dir,
             "' to '", old, "'");
  }
  if (std::rename(tmp.c_str(), final_dir.c_str()) != 0) {
    const int error = errno;
    if (replacing) std::rename(old.c_str(), final_dir.c_str());  // the earlier one back in place
    SY_THROW("cannot rename '", tmp, "' to '", final_dir, "': ", std::strerror(error));
  }
  sync_directory(req.root);
  if (replacing) remove_tree(old);
  for (const auto& [step, path] : step_folders(req.root, /*partial=*/true)) remove_tree(path);
  if (req.keep > 0) {
    auto done = step_folders(req.root, /*partial=*/false);
    for (size_t i = 0; i + static_cast<size_t>(req.keep) < done.size(); ++i) {
      if (done[i].second != final_dir) remove_tree(done[i].second);
    }
  }
}

// ---- loading ----

struct Manifest {
  std::map<std::string, FileRecord> files;
  int64_t step = 0;
  int64_t format = 0;
  std::string config_hash;  // "" in format 1
};

Manifest read_manifest(const std::string& dir) {
  const std::string path = dir + "/manifest.json";
  struct stat st;
  SY_CHECK(::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode), "checkpoint '", dir,
           "' does not exist or is not a folder");
  SY_CHECK(::stat(path.c_str(), &st) == 0, "checkpoint '", dir,
           "' has no manifest.json: it is not ",
           "a complete checkpoint (a save that did not finish leaves none)");
  Manifest m;
  try {
    const YAML::Node root = YAML::Load(read_file(path));
    m.format = root["format"] ? root["format"].as<int64_t>() : 0;
    SY_CHECK(m.format >= kOldestFormat && m.format <= kFormat, "'", path, "': format ", m.format,
             " is not one this build reads (", kOldestFormat, " to ", kFormat, ")");
    m.step = root["step"].as<int64_t>();
    if (m.format >= 2) {
      SY_CHECK(root["config_hash"], "'", path, "' has no config_hash (format ", m.format, ")");
      m.config_hash = root["config_hash"].as<std::string>();
    }
    for (const YAML::Node& f : root["files"]) {
      FileRecord rec;
      rec.path = f["path"].as<std::string>();
      rec.bytes = f["bytes"].as<int64_t>();
      rec.crc = static_cast<uint32_t>(std::stoul(f["crc32"].as<std::string>(), nullptr, 16));
      if (f["expert"]) rec.expert = f["expert"].as<int64_t>();
      if (f["shapes"]) {
        for (const auto& item : f["shapes"]) {
          rec.shapes[item.first.as<std::string>()] = item.second.as<std::vector<int64_t>>();
        }
      }
      m.files[rec.path] = rec;
    }
  } catch (const YAML::Exception& e) {
    SY_THROW("'", path, "' is not a valid manifest: ", e.what());
  } catch (const std::logic_error& e) {  // std::stoul
    SY_THROW("'", path, "' is not a valid manifest: ", e.what());
  }
  SY_CHECK(!m.files.empty(), "'", path, "' lists no files");
  // Every expert file is recorded under the id its name gives (checked before any file is read).
  for (const auto& [rel, rec] : m.files) {
    if (rel.rfind("experts/", 0) != 0 || m.format < 2) continue;
    SY_CHECK(rec.expert >= 0, "'", path, "' records no expert id for '", rel, "'");
    SY_CHECK(rel == expert_file(rec.expert), "'", path, "' records '", rel, "' as expert ",
             rec.expert, " (whose file is '", expert_file(rec.expert), "')");
  }
  return m;
}

// Every listed file exists with its listed size (cheap, on every rank: a missing or truncated
// shard is reported the same way wherever it is).
void check_sizes(const std::string& dir, const Manifest& m) {
  for (const auto& [rel, rec] : m.files) {
    const std::string path = dir + "/" + rel;
    struct stat st;
    SY_CHECK(::stat(path.c_str(), &st) == 0, "checkpoint file '", path, "' is missing (listed in ",
             dir, "/manifest.json)");
    SY_CHECK(static_cast<int64_t>(st.st_size) == rec.bytes, "checkpoint file '", path, "' has ",
             static_cast<int64_t>(st.st_size), " bytes, manifest.json says ", rec.bytes,
             " (truncated or replaced)");
  }
}

// The file's bytes, after checking them against the manifest.
std::string read_checked(const std::string& dir, const Manifest& m, const std::string& rel) {
  const auto it = m.files.find(rel);
  SY_CHECK(it != m.files.end(), "checkpoint '", dir, "': manifest.json does not list '", rel, "'");
  const std::string path = dir + "/" + rel;
  std::string bytes = read_file(path);
  SY_CHECK(static_cast<int64_t>(bytes.size()) == it->second.bytes, "checkpoint file '", path,
           "' has ", bytes.size(), " bytes, manifest.json says ", it->second.bytes);
  const uint32_t crc = crc32(bytes.data(), bytes.size());
  SY_CHECK(crc == it->second.crc, "checkpoint file '", path, "': CRC-32 ", hex32(crc),
           " does not match manifest.json (", hex32(it->second.crc), "): the file is corrupt");
  return bytes;
}

void open_archive(torch::serialize::InputArchive& archive, const std::string& bytes,
                  const std::string& path) {
  try {
    archive.load_from(bytes.data(), bytes.size());
  } catch (const c10::Error& e) {
    SY_THROW("cannot read checkpoint file '", path, "': ", e.what_without_backtrace());
  }
}

at::Tensor read_tensor(torch::serialize::InputArchive& archive, const std::string& key,
                       const std::string& path) {
  at::Tensor t;
  SY_CHECK(archive.try_read(key, t), "checkpoint file '", path, "' has no tensor '", key, "'");
  return t;
}

// Copies one parameter (or one expert of it) and its AdamW state from `archive`.
void load_slot(torch::serialize::InputArchive& archive, const std::string& path, AdamWSlot& s,
               const at::Tensor& param, const at::Tensor& m, const at::Tensor& v) {
  const at::Tensor stored = read_tensor(archive, s.name, path);
  SY_CHECK(stored.sizes() == param.sizes(), "checkpoint file '", path, "': '", s.name,
           "' has shape ", stored.sizes(), ", this model's is ", param.sizes(),
           " (the model shape differs from the one that was saved)");
  param.copy_(stored);
  m.copy_(read_tensor(archive, exp_avg_key(s.name), path));
  v.copy_(read_tensor(archive, exp_avg_sq_key(s.name), path));
  const int64_t steps = read_tensor(archive, steps_key(s.name), path).item<int64_t>();
  SY_CHECK(s.steps == 0 || s.steps == steps, "checkpoint file '", path, "': AdamW step counts of '",
           s.name, "' differ between experts (", s.steps, " and ", steps, ")");
  s.steps = steps;
}

// The config keys that decide tensor shapes: "key" -> value as text.
std::vector<std::pair<std::string, std::string>> shape_keys(const Config& c) {
  auto b = [](bool v) { return std::string(v ? "true" : "false"); };
  return {{"model.n_layers", std::to_string(c.model.n_layers)},
          {"model.d_model", std::to_string(c.model.d_model)},
          {"model.n_heads", std::to_string(c.model.n_heads)},
          {"model.d_ff", std::to_string(c.model.d_ff)},
          {"model.block_size", std::to_string(c.model.block_size)},
          {"model.bias", b(c.model.bias)},
          {"moe.num_experts", std::to_string(c.moe.num_experts)},
          {"moe.every", std::to_string(c.moe.every)},
          {"moe.d_ff", std::to_string(c.moe.d_ff)},
          {"moe.shared_experts", std::to_string(c.moe.shared_experts)},
          {"moe.shared_d_ff", std::to_string(c.moe.shared_d_ff)},
          {"moe.activation", choice_name(c.moe.activation)},
          {"moe.router", choice_name(c.moe.router)}};
}

// meta.json's fields.
struct Meta {
  int64_t step = 0, vocab_size = 0, num_experts = 0;
  int world_size = 0, ep_size = 0;
  std::string config_hash;  // "" in format 1
};

void check_compatible(const std::string& dir, const Manifest& m, const Meta& meta,
                      const Config& cfg, const CharTokenizer* tokenizer, int64_t vocab_size) {
  const std::string config_path = dir + "/config.yaml";
  const std::string meta_path = dir + "/meta.json";
  const std::string config_text = read_checked(dir, m, "config.yaml");
  const Config saved = load_config_from_string(config_text, config_path);
  // The checkpoint's own files agree with each other (Note [Config hash]).
  const auto saved_flat = flat_config(config_text);
  if (m.format >= 2) {
    const std::string hash = config_hash(saved_flat);
    SY_CHECK(hash == m.config_hash, "checkpoint file '", config_path, "' hashes to ", hash,
             ", manifest.json records ", m.config_hash,
             ": config.yaml was edited or replaced after the save");
    SY_CHECK(meta.config_hash == m.config_hash, "checkpoint file '", meta_path,
             "': config_hash is ", meta.config_hash, ", manifest.json records ", m.config_hash,
             " (meta.json contradicts the config)");
  }
  SY_CHECK(meta.num_experts == saved.moe.num_experts, "checkpoint file '", meta_path,
           "': num_experts is ", meta.num_experts, ", its config.yaml has moe.num_experts ",
           saved.moe.num_experts, " (meta.json contradicts the config)");
  SY_CHECK(meta.ep_size > 0 && meta.world_size > 0 && meta.world_size % meta.ep_size == 0 &&
               meta.num_experts % meta.ep_size == 0,
           "checkpoint file '", meta_path, "': world_size ", meta.world_size, " and ep_size ",
           meta.ep_size, " are not a layout of ", meta.num_experts,
           " experts (meta.json contradicts the config)");
  const auto want = shape_keys(cfg), have = shape_keys(saved);
  for (size_t i = 0; i < want.size(); ++i) {
    SY_CHECK(want[i].second == have[i].second, "checkpoint '", config_path, "': ", want[i].first,
             " is ", have[i].second, ", this run has ", want[i].second,
             " (resuming needs the same model shape)");
  }
  // Other keys may change on resume; the ones the config hash covers are listed.
  const auto run_flat = flat_config(to_yaml(cfg));
  std::string changed;
  int count = 0;
  for (const auto& [key, value] : run_flat) {
    const auto it = saved_flat.find(key);
    const std::string before = it == saved_flat.end() ? std::string("(absent)") : it->second;
    if (resume_may_change(key) || before == value) continue;
    if (++count <= 8) changed += str(count > 1 ? ", " : "", key, " ", before, " -> ", value);
  }
  if (count > 8) changed += str(" and ", count - 8, " more");
  if (count > 0) {
    SY_LOG("checkpoint", "warning: this run's config differs from the checkpoint's (", config_path,
           ") in ", changed, ": resuming with the new values");
  }
  const std::string vocab_path = dir + "/vocab.json";
  const bool saved_text = m.files.count("vocab.json") == 1;
  SY_CHECK(saved_text == (tokenizer != nullptr), "checkpoint '", dir, "' was trained on ",
           saved_text ? "text (it has a vocab.json)" : "token ids (it has no vocab.json)",
           ", this run reads ", tokenizer != nullptr ? "text" : "token ids", " (data.format '",
           choice_name(cfg.data.format), "')");
  if (tokenizer != nullptr) {
    read_checked(dir, m, "vocab.json");  // size and CRC, before parsing it
    const CharTokenizer saved_vocab = CharTokenizer::load(vocab_path);
    SY_CHECK(saved_vocab.chars() == tokenizer->chars(), "checkpoint vocabulary '", vocab_path,
             "' (", saved_vocab.vocab_size(), " characters) differs from this run's data (",
             tokenizer->vocab_size(),
             " characters): resume with the data the checkpoint was trained on");
  }
  SY_CHECK(meta.vocab_size == vocab_size, "checkpoint '", dir, "/meta.json': vocab_size is ",
           meta.vocab_size, ", this run has ", vocab_size);
}

}  // namespace

std::string checkpoint_root(const Config& config) { return config.train.out_dir + "/checkpoints"; }

std::string latest_checkpoint(const std::string& root) {
  const auto done = step_folders(root, /*partial=*/false);
  for (auto it = done.rbegin(); it != done.rend(); ++it) {
    struct stat st;
    if (::stat((it->second + "/manifest.json").c_str(), &st) == 0) return it->second;
  }
  return "";
}

std::string save_checkpoint(const CheckpointSave& req, const Config& cfg,
                            const CharTokenizer* tokenizer, int64_t vocab_size, GPTImpl& model,
                            const AdamW& optimizer, const RankState& mine, const ParallelGroups& g,
                            const c10::Device& comm_device) {
  Communicator& world = *g.world;
  CollectiveLabel label("checkpoint save, step " + std::to_string(req.step));
  const std::string final_dir = req.root + "/step_" + std::to_string(req.step);
  const std::string tmp = final_dir + ".partial";

  // Never write a checkpoint one could not continue from.
  std::string err = error_of([&] {
    const std::string bad = first_nonfinite(optimizer);
    SY_CHECK(bad.empty(), "step ", req.step, ": not writing a checkpoint: ", bad, " is not finite");
  });
  agree_or_throw(world, err, comm_device);

  // Note [Failed saves]: a write that fails on any rank (disk full, an I/O error) fails the save
  // on every rank: rank 0 removes step_<N>.partial and every rank throws the same error, naming
  // the file, the system error and the newest complete checkpoint (untouched by the save).
  const std::string previous = g.world_rank == 0 ? latest_checkpoint(req.root) : std::string();
  auto fail_on_every_rank = [&](const std::string& cause) {
    std::string note;
    if (g.world_rank == 0) {
      struct stat st;
      const bool published =
          ::stat(tmp.c_str(), &st) != 0 && ::stat((final_dir + "/manifest.json").c_str(), &st) == 0;
      if (published) {  // what failed came after the rename (pruning older checkpoints)
        note = str("the checkpoint '", final_dir, "' itself is complete");
      } else {
        const std::string removal = error_of([&] { remove_tree(tmp); });
        note = removal.empty() ? str("removed '", tmp, "'")
                               : str("could not remove '", tmp, "' (", removal, ")");
        note += previous.empty() ? std::string("; there is no earlier checkpoint yet")
                                 : str("; the previous checkpoint '", previous,
                                       "' is intact (--resume auto ", "continues from it)");
      }
    }
    note = broadcast_text(world, note, 0, comm_device);
    SY_THROW("checkpoint save of step ", req.step, " failed: ", cause, "; ", note);
  };
  auto agree_or_fail = [&](const std::string& local_error) {
    std::string cause;
    try {
      agree_or_throw(world, local_error, comm_device);
    } catch (const Error& e) {
      cause = e.message();
    }
    if (!cause.empty()) fail_on_every_rank(cause);
  };

  err = g.world_rank != 0 ? "" : error_of([&] {
    make_directories(req.root);
    remove_tree(tmp);
    for (const char* sub : {"experts", "ranks", "parts"}) make_directories(tmp + "/" + sub);
  });
  agree_or_fail(err);

  err = error_of([&] {
    write_rank_files(tmp, cfg, tokenizer, vocab_size, model, optimizer, mine, g, req.step);
  });
  if (req.kill_midway) {
    SY_LOG_ALL("checkpoint", "debug.kill_in_save_step: dying in the middle of saving step ",
               req.step);
    std::fflush(nullptr);
    std::_Exit(17);
  }
  agree_or_fail(err);

  err = g.world_rank != 0 ? "" : error_of([&] {
    publish(tmp, final_dir, req, g.world_size, config_hash(flat_config(to_yaml(cfg))));
  });
  agree_or_fail(err);
  return final_dir;
}

LoadedCheckpoint load_checkpoint(const std::string& dir, const Config& cfg,
                                 const CharTokenizer* tokenizer, int64_t vocab_size, GPTImpl& model,
                                 AdamW& optimizer, const ParallelGroups& g,
                                 const c10::Device& comm_device) {
  CollectiveLabel label("checkpoint load " + dir);
  LoadedCheckpoint out;
  out.dir = dir;
  const std::string err = error_of([&] {
    const Manifest m = read_manifest(dir);
    check_sizes(dir, m);
    if (m.format < kFormat) {
      SY_LOG("checkpoint", "warning: checkpoint '", dir, "' has format ", m.format,
             ", written before expert ids, shapes and the config hash were recorded: only sizes "
             "and CRCs are checked");
    }
    Meta meta;
    try {
      const YAML::Node node = YAML::Load(read_checked(dir, m, "meta.json"));
      meta.vocab_size = node["vocab_size"].as<int64_t>();
      meta.step = node["step"].as<int64_t>();
      meta.world_size = node["world_size"].as<int>();
      meta.ep_size = node["ep_size"].as<int>();
      meta.num_experts = node["num_experts"].as<int64_t>();
      if (m.format >= 2) {
        SY_CHECK(node["config_hash"], "checkpoint file '", dir, "/meta.json' has no config_hash");
        meta.config_hash = node["config_hash"].as<std::string>();
      }
    } catch (const YAML::Exception& e) {
      SY_THROW("'", dir, "/meta.json' is not valid: ", e.what());
    }
    out.step = meta.step;
    out.saved_world_size = meta.world_size;
    out.saved_ep_size = meta.ep_size;
    SY_CHECK(out.step == m.step, "checkpoint '", dir, "': meta.json says step ", out.step,
             ", manifest.json says ", m.step);
    check_compatible(dir, m, meta, cfg, tokenizer, vocab_size);

    torch::NoGradGuard no_grad;
    for (AdamWSlot& s : optimizer.slots()) {
      s.steps = 0;
      if (!s.exp_avg.defined() && !s.frozen) {
        s.exp_avg = at::zeros_like(s.weights());
        s.exp_avg_sq = at::zeros_like(s.weights());
      }
    }
    // A frozen slot (Note [Freezing]) keeps no moments: the stored ones are read into scratch.
    auto moments_of = [](AdamWSlot& s, int64_t expert) -> std::pair<at::Tensor, at::Tensor> {
      if (s.frozen) {
        const at::Tensor w = expert < 0 ? s.weights() : s.weights()[expert];
        return {at::empty_like(w), at::empty_like(w)};
      }
      if (expert < 0) return {s.exp_avg, s.exp_avg_sq};
      return {s.exp_avg[expert], s.exp_avg_sq[expert]};
    };
    {
      const std::string path = dir + "/dense.pt";
      torch::serialize::InputArchive dense;
      open_archive(dense, read_checked(dir, m, "dense.pt"), path);
      for (AdamWSlot& s : optimizer.slots()) {
        if (is_expert_parameter(s.name)) continue;
        const auto [m, v] = moments_of(s, -1);
        load_slot(dense, path, s, s.weights().detach(), m, v);
      }
      for (auto& item : model.named_buffers()) {
        at::Tensor stored;
        SY_CHECK(dense.try_read(buffer_key(item.key()), stored), "checkpoint file '", path,
                 "' has no buffer '", item.key(), "' (saved without it: was moe.balance ",
                 "different?)");
        SY_CHECK(stored.sizes() == item.value().sizes(), "checkpoint file '", path, "': buffer '",
                 item.key(), "' has shape ", stored.sizes(), ", this model's is ",
                 item.value().sizes());
        item.value().copy_(stored);
      }
    }
    int64_t local = -1;
    for (const AdamWSlot& s : optimizer.slots()) {
      if (is_expert_parameter(s.name)) local = s.param.size(0);
    }
    for (int64_t i = 0; local > 0 && i < local; ++i) {
      const int64_t expert = static_cast<int64_t>(g.ep_rank) * local + i;
      const std::string rel = expert_file(expert);
      SY_CHECK(m.files.count(rel) == 1, "checkpoint '", dir, "' has no '", rel, "' (it holds ",
               cfg.moe.num_experts, " experts?)");
      const std::string path = dir + "/" + rel;
      torch::serialize::InputArchive archive;
      open_archive(archive, read_checked(dir, m, rel), path);
      const FileRecord& rec = m.files.at(rel);
      if (m.format >= 2) {
        // The file holds the expert its name and the manifest say (Note [Checkpoint integrity]).
        at::Tensor id;
        SY_CHECK(archive.try_read(kExpertIdKey, id), "checkpoint file '", path,
                 "' records no expert id ('", kExpertIdKey, "')");
        SY_CHECK(id.item<int64_t>() == expert, "checkpoint file '", path, "' holds expert ",
                 id.item<int64_t>(), ", not expert ", expert, " (expert files swapped or renamed)");
      }
      for (AdamWSlot& s : optimizer.slots()) {
        if (!is_expert_parameter(s.name)) continue;
        if (m.format >= 2) {
          const auto it = rec.shapes.find(s.name);
          SY_CHECK(it != rec.shapes.end(), "checkpoint '", dir,
                   "': manifest.json records no shape of '", s.name, "' for '", rel, "'");
          const at::Tensor stored = read_tensor(archive, s.name, path);
          SY_CHECK(stored.sizes().vec() == it->second, "checkpoint file '", path, "': '", s.name,
                   "' has shape ", shape_text(stored.sizes().vec()), ", manifest.json records ",
                   shape_text(it->second));
        }
        const auto [m, v] = moments_of(s, i);
        load_slot(archive, path, s, s.weights().detach()[i], m, v);
      }
    }
    for (AdamWSlot& s : optimizer.slots()) s.sync_param();  // fp32 masters into bf16 parameters
    if (out.saved_world_size == g.world_size) {
      const std::string rel = rank_file(g.world_rank);
      torch::serialize::InputArchive state;
      open_archive(state, read_checked(dir, m, rel), dir + "/" + rel);
      for (const std::string& key : state.keys()) {
        at::Tensor t = read_tensor(state, key, dir + "/" + rel);
        if (key.rfind("tensor.", 0) == 0) {
          out.state.tensors[key.substr(7)] = t;
        } else if (key.rfind("text.", 0) == 0) {
          const auto* p = t.data_ptr<uint8_t>();
          out.state.text[key.substr(5)] = std::string(p, p + t.numel());
        } else if (key.rfind("int.", 0) == 0) {
          out.state.ints[key.substr(4)] = t.item<int64_t>();
        }
      }
      out.has_rank_state = true;
    }
  });
  agree_or_throw(*g.world, err, comm_device);
  return out;
}

}  // namespace sy
