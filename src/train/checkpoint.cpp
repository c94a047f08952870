#include "train/checkpoint.h"

#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
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

constexpr int64_t kFormat = 1;

// One written file, as the manifest lists it (path relative to the checkpoint folder).
struct FileRecord {
  std::string path;
  int64_t bytes = 0;
  uint32_t crc = 0;
};

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
  return FileRecord{rel, static_cast<int64_t>(bytes.size()), crc32(bytes.data(), bytes.size())};
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

std::string meta_json(const Config& cfg, int64_t step, const ParallelGroups& g, int64_t vocab) {
  std::ostringstream os;
  os << "{\"format\": " << kFormat << ", \"step\": " << step << ", \"world_size\": " << g.world_size
     << ", \"ep_size\": " << g.ep_size << ", \"num_experts\": " << cfg.moe.num_experts
     << ", \"vocab_size\": " << vocab << "}\n";
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
    written.push_back(write_record(dir, "config.yaml", to_yaml(cfg)));
    if (tokenizer != nullptr) {
      const std::string vocab_tmp = dir + "/vocab.json.staging";
      tokenizer->save(vocab_tmp);
      const std::string vocab = read_file(vocab_tmp);
      std::remove(vocab_tmp.c_str());
      written.push_back(write_record(dir, "vocab.json", vocab));
    }
    written.push_back(write_record(dir, "meta.json", meta_json(cfg, step, g, vocab_size)));
  }
  if (g.dp_rank == 0) {
    // This rank holds experts [first, first + local) of every MoE layer; one file per expert id.
    int64_t local = -1;
    for (const AdamWSlot& s : optimizer.slots()) {
      if (is_expert_parameter(s.name)) local = s.param.size(0);
    }
    for (int64_t i = 0; local > 0 && i < local; ++i) {
      torch::serialize::OutputArchive archive;
      for (const AdamWSlot& s : optimizer.slots()) {
        if (!is_expert_parameter(s.name)) continue;
        const auto [m, v] = moments(s);
        write_slot(archive, s, s.weights()[i], m[i], v[i]);
      }
      const int64_t expert = static_cast<int64_t>(g.ep_rank) * local + i;
      written.push_back(write_record(dir, expert_file(expert), archive_bytes(archive)));
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
    part += r.path + " " + std::to_string(r.bytes) + " " + hex32(r.crc) + "\n";
  }
  write_file_atomic(dir + "/" + part_file(g.world_rank), part);
  return written;
}

std::string manifest_json(int64_t step, const std::vector<FileRecord>& files) {
  std::ostringstream os;
  os << "{\"format\": " << kFormat << ", \"step\": " << step << ", \"files\": [\n";
  for (size_t i = 0; i < files.size(); ++i) {
    os << "  {\"path\": \"" << files[i].path << "\", \"bytes\": " << files[i].bytes
       << ", \"crc32\": \"" << hex32(files[i].crc) << "\"}"
       << (i + 1 < files.size() ? ",\n" : "\n");
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
             int world_size) {
  std::vector<FileRecord> files;
  for (int r = 0; r < world_size; ++r) {
    const std::string part = tmp + "/" + part_file(r);
    std::istringstream in(read_file(part));
    FileRecord rec;
    std::string crc;
    while (in >> rec.path >> rec.bytes >> crc) {
      rec.crc = static_cast<uint32_t>(std::stoul(crc, nullptr, 16));
      files.push_back(rec);
    }
  }
  std::sort(files.begin(), files.end(),
            [](const FileRecord& a, const FileRecord& b) { return a.path < b.path; });
  remove_tree(tmp + "/parts");
  write_file_atomic(tmp + "/manifest.json", manifest_json(req.step, files));
  struct stat st;
  const bool replacing = ::stat(final_dir.c_str(), &st) == 0;
  const std::string old = final_dir + ".old";
  if (replacing) {
    remove_tree(old);
    SY_CHECK(std::rename(final_dir.c_str(), old.c_str()) == 0, "cannot rename '", final_dir,
             "' to '", old, "'");
  }
  SY_CHECK(std::rename(tmp.c_str(), final_dir.c_str()) == 0, "cannot rename '", tmp, "' to '",
           final_dir, "'");
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
    SY_CHECK(root["format"] && root["format"].as<int64_t>() == kFormat, "'", path,
             "': format must be ", kFormat);
    m.step = root["step"].as<int64_t>();
    for (const YAML::Node& f : root["files"]) {
      FileRecord rec;
      rec.path = f["path"].as<std::string>();
      rec.bytes = f["bytes"].as<int64_t>();
      rec.crc = static_cast<uint32_t>(std::stoul(f["crc32"].as<std::string>(), nullptr, 16));
      m.files[rec.path] = rec;
    }
  } catch (const YAML::Exception& e) {
    SY_THROW("'", path, "' is not a valid manifest: ", e.what());
  } catch (const std::logic_error& e) {  // std::stoul
    SY_THROW("'", path, "' is not a valid manifest: ", e.what());
  }
  SY_CHECK(!m.files.empty(), "'", path, "' lists no files");
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

void check_compatible(const std::string& dir, const Manifest& m, const Config& cfg,
                      const CharTokenizer* tokenizer, int64_t vocab_size,
                      int64_t saved_vocab_size) {
  const std::string config_path = dir + "/config.yaml";
  const Config saved = load_config_from_string(read_checked(dir, m, "config.yaml"), config_path);
  const auto want = shape_keys(cfg), have = shape_keys(saved);
  for (size_t i = 0; i < want.size(); ++i) {
    SY_CHECK(want[i].second == have[i].second, "checkpoint '", config_path, "': ", want[i].first,
             " is ", have[i].second, ", this run has ", want[i].second,
             " (resuming needs the same model shape)");
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
  SY_CHECK(saved_vocab_size == vocab_size, "checkpoint '", dir, "/meta.json': vocab_size is ",
           saved_vocab_size, ", this run has ", vocab_size);
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

  err = g.world_rank != 0 ? "" : error_of([&] {
    make_directories(req.root);
    remove_tree(tmp);
    for (const char* sub : {"experts", "ranks", "parts"}) make_directories(tmp + "/" + sub);
  });
  agree_or_throw(world, err, comm_device);

  err = error_of([&] {
    write_rank_files(tmp, cfg, tokenizer, vocab_size, model, optimizer, mine, g, req.step);
  });
  if (req.kill_midway) {
    SY_LOG_ALL("checkpoint", "debug.kill_in_save_step: dying in the middle of saving step ",
               req.step);
    std::fflush(nullptr);
    std::_Exit(17);
  }
  agree_or_throw(world, err, comm_device);

  err = g.world_rank != 0 ? "" : error_of([&] { publish(tmp, final_dir, req, g.world_size); });
  agree_or_throw(world, err, comm_device);
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
    int64_t saved_vocab_size = 0;
    try {
      const YAML::Node meta = YAML::Load(read_checked(dir, m, "meta.json"));
      saved_vocab_size = meta["vocab_size"].as<int64_t>();
      out.step = meta["step"].as<int64_t>();
      out.saved_world_size = meta["world_size"].as<int>();
      out.saved_ep_size = meta["ep_size"].as<int>();
    } catch (const YAML::Exception& e) {
      SY_THROW("'", dir, "/meta.json' is not valid: ", e.what());
    }
    SY_CHECK(out.step == m.step, "checkpoint '", dir, "': meta.json says step ", out.step,
             ", manifest.json says ", m.step);
    check_compatible(dir, m, cfg, tokenizer, vocab_size, saved_vocab_size);

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
      torch::serialize::InputArchive archive;
      open_archive(archive, read_checked(dir, m, rel), dir + "/" + rel);
      for (AdamWSlot& s : optimizer.slots()) {
        if (!is_expert_parameter(s.name)) continue;
        const auto [m, v] = moments_of(s, i);
        load_slot(archive, dir + "/" + rel, s, s.weights().detach()[i], m, v);
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
