// Protecting a run folder: see run_folder.h, Note [Run folders].
#include "train/run_folder.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/stop_signal.h"

namespace sy {
namespace {

// lstat(): a link to nothing still takes the name.
bool exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

std::string join(const std::vector<std::string>& items, const std::string& sep) {
  std::string out;
  for (const std::string& s : items) out += (out.empty() ? "" : sep) + s;
  return out;
}

// ---- the default out_dir ----

std::string trim(const std::string& s) {
  const size_t begin = s.find_first_not_of(" \t");
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(" \t") - begin + 1);
}

// Whether `file` sets train.out_dir. A file that is not a regular file (a pipe read once already)
// or does not parse counts as setting it: the loaded value then stays as it is.
bool file_sets_out_dir(const std::string& file) {
  struct stat st;
  if (::stat(file.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return true;
  try {
    const YAML::Node root = YAML::Load(read_file(file));
    if (!root.IsMap()) return false;
    const YAML::Node train = root["train"];
    return train && train.IsMap() && train["out_dir"];
  } catch (const std::exception&) {
    return true;
  }
}

// "configs/debug-cpu.yaml" -> "debug-cpu".
std::string config_stem(const std::string& file) {
  std::string name = file.substr(file.find_last_of('/') + 1);
  const size_t dot = name.find_last_of('.');
  if (dot != std::string::npos && dot > 0) name = name.substr(0, dot);
  return name.empty() || name == "." || name == ".." ? "default" : name;
}

// ---- checkpoint folders ----

// step_<N>, and the step_<N>.partial / step_<N>.old names of a save in progress.
bool is_step_folder_name(const std::string& name) {
  if (name.rfind("step_", 0) != 0) return false;
  std::string digits = name.substr(5);
  for (const char* suffix : {".partial", ".old"}) {
    const std::string s = suffix;
    if (digits.size() > s.size() && digits.compare(digits.size() - s.size(), s.size(), s) == 0) {
      digits.resize(digits.size() - s.size());
    }
  }
  return !digits.empty() && digits.find_first_not_of("0123456789") == std::string::npos;
}

std::vector<std::string> components(const std::string& path) {
  std::vector<std::string> parts;
  std::istringstream in(path);
  for (std::string part; std::getline(in, part, '/');) {
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      if (!parts.empty()) parts.pop_back();
      continue;
    }
    parts.push_back(part);
  }
  return parts;
}

std::string path_of(const std::vector<std::string>& parts, size_t count) {
  std::string out;
  for (size_t i = 0; i < count; ++i) out += "/" + parts[i];
  return out.empty() ? "/" : out;
}

// The checkpoint folder (.../checkpoints/step_<N>) among the leading components, or "".
std::string checkpoint_prefix(const std::vector<std::string>& parts) {
  for (size_t i = 1; i < parts.size(); ++i) {
    if (parts[i - 1] == "checkpoints" && is_step_folder_name(parts[i]))
      return path_of(parts, i + 1);
  }
  return "";
}

void refuse_checkpoint_folder(const std::string& out_dir) {
  std::string absolute = out_dir;
  if (absolute[0] != '/') {
    char cwd[PATH_MAX];
    SY_CHECK(::getcwd(cwd, sizeof(cwd)) != nullptr,
             "cannot read the working folder: ", std::strerror(errno));
    absolute = std::string(cwd) + "/" + out_dir;
  }
  const std::vector<std::string> parts = components(absolute);
  auto refuse = [&](const std::string& checkpoint, const std::string& why) {
    SY_THROW("train.out_dir '", out_dir, "' is ",
             components(checkpoint).size() == parts.size() ? "" : "inside ", "the checkpoint '",
             checkpoint, "'", why,
             ": a run folder there would be deleted by checkpoint rotation; choose another "
             "train.out_dir (to continue from that checkpoint: --resume ",
             checkpoint, ")");
  };
  std::string checkpoint = checkpoint_prefix(parts);
  if (!checkpoint.empty()) refuse(checkpoint, "");
  // The existing folders on the way, as the file system sees them (symbolic links resolved).
  size_t existing = parts.size();
  while (existing > 0 && !is_directory(path_of(parts, existing))) --existing;
  for (size_t k = 1; k <= existing; ++k) {
    const std::string folder = path_of(parts, k);
    if (exists(folder + "/manifest.json") && exists(folder + "/meta.json")) {
      refuse(folder, " (it holds manifest.json)");
    }
  }
  char real[PATH_MAX];
  if (existing > 0 && ::realpath(path_of(parts, existing).c_str(), real) != nullptr) {
    std::vector<std::string> resolved = components(real);
    resolved.insert(resolved.end(), parts.begin() + static_cast<std::ptrdiff_t>(existing),
                    parts.end());
    checkpoint = checkpoint_prefix(resolved);
    if (!checkpoint.empty()) refuse(checkpoint, "");
  }
}

// ---- an earlier run in the folder ----

// The file's text into *text; false when it cannot be read.
bool try_read(const std::string& path, std::string* text) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream s;
  s << in.rdbuf();
  *text = s.str();
  return true;
}

// Its files, as named in the refusal; `own_config`: this run's config.yaml text.
std::vector<std::string> earlier_run(const std::string& dir, const std::string& own_config) {
  std::vector<std::string> found;
  for (const char* name : {"metrics.jsonl", "summary.json", "model.pt"}) {
    if (exists(dir + "/" + name)) found.push_back(name);
  }
  const std::string root = dir + "/checkpoints";
  if (is_directory(root)) {
    std::vector<int64_t> steps;
    size_t entries = 0;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(root, ec)) {
      ++entries;
      const std::string name = entry.path().filename().string();
      if (is_step_folder_name(name) && name.find('.') == std::string::npos) {
        steps.push_back(std::stoll(name.substr(5)));
      }
    }
    std::sort(steps.begin(), steps.end());
    if (!steps.empty()) {
      found.push_back(steps.size() == 1
                          ? str("checkpoints/step_", steps[0])
                          : str("checkpoints/step_", steps.front(), "..step_", steps.back()));
    } else if (entries > 0) {
      found.push_back("checkpoints/");
    }
  }
  // A config.yaml alone that is this run's own config is not a run: nothing trained yet (a sweep
  // writes it before starting the run).
  const std::string config = dir + "/config.yaml";
  if (exists(config)) {
    std::string text;
    const bool own = found.empty() && try_read(config, &text) && text == own_config;
    if (!own) found.insert(found.begin(), "config.yaml");
  }
  return found;
}

void remove_file(const std::string& path) {
  SY_CHECK(::unlink(path.c_str()) == 0 || errno == ENOENT, "--overwrite: cannot remove '", path,
           "': ", std::strerror(errno));
}

// --overwrite: the earlier run's checkpoints first, then its other files. (Its heartbeats went
// when the folder was claimed, before this job's ranks started writing theirs.)
void remove_earlier_run(const std::string& dir) {
  remove_tree(dir + "/checkpoints");
  for (const char* name :
       {"model.pt", "summary.json", "metrics.jsonl", "config.yaml", "vocab.json"}) {
    remove_file(dir + "/" + name);
  }
  std::error_code ec;
  std::vector<std::string> events;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("events.out.tfevents.", 0) == 0) events.push_back(entry.path().string());
  }
  for (const std::string& path : events) remove_file(path);
  sync_directory(dir);
}

// ---- the lock ----

struct Holder {
  bool readable = false;
  std::string host;
  long pid = 0;
};

Holder parse_holder(const std::string& text) {
  Holder h;
  try {
    const YAML::Node node = YAML::Load(text);
    if (node.IsMap() && node["host"] && node["pid"]) {
      h.host = node["host"].as<std::string>();
      h.pid = node["pid"].as<long>();
      h.readable = h.pid > 0;
    }
  } catch (const std::exception&) {
  }
  return h;
}

bool process_alive(long pid) {
  if (pid == static_cast<long>(::getpid())) return false;  // an earlier process of this pid
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

void write_all(int fd, const std::string& path, const std::string& text) {
  const char* p = text.data();
  size_t left = text.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      SY_THROW("cannot write the lock file '", path, "': ", std::strerror(err));
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
}

// Creates `path` holding `text`, only if it does not exist; false when it does. The text is
// written to a file of this process first and linked to `path`, so that nobody ever reads a
// half-written lock; where the file system has no hard links, O_CREAT | O_EXCL on `path` itself.
bool create_exclusive(const std::string& path, const std::string& text) {
  const std::string tmp = path + "." + std::to_string(::getpid()) + ".tmp";
  ::unlink(tmp.c_str());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  SY_CHECK(fd >= 0, "cannot create the lock file '", tmp, "': ", std::strerror(errno));
  write_all(fd, tmp, text);
  ::fsync(fd);
  ::close(fd);
  const int rc = ::link(tmp.c_str(), path.c_str());
  const int err = errno;
  ::unlink(tmp.c_str());
  if (rc == 0) return true;
  if (err == EEXIST) return false;
  SY_CHECK(err == EPERM || err == ENOTSUP || err == EOPNOTSUPP || err == ENOSYS || err == EMLINK,
           "cannot create the lock file '", path, "': ", std::strerror(err));
  fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0 && errno == EEXIST) return false;
  SY_CHECK(fd >= 0, "cannot create the lock file '", path, "': ", std::strerror(errno));
  write_all(fd, path, text);
  ::fsync(fd);
  ::close(fd);
  return true;
}

}  // namespace

void resolve_out_dir(Config& config, const std::vector<std::string>& config_files,
                     const std::vector<std::string>& sets) {
  bool set = false;
  for (const std::string& text : sets) {
    set = set || trim(text.substr(0, text.find('='))) == "train.out_dir";
  }
  for (const std::string& file : config_files) set = set || file_sets_out_dir(file);
  if (!set && !config_files.empty()) {
    config.train.out_dir = "runs/" + config_stem(config_files.back());
  }
  config.train.out_dir = expand_home(config.train.out_dir, "train.out_dir");
}

RunFolderLock::RunFolderLock(const std::string& dir, bool created_dir)
    : dir_(dir), path_(dir + "/.lock"), created_dir_(created_dir) {
  const std::string host = host_name();
  content_ = str("{\"host\": \"", host, "\", \"pid\": ", ::getpid(), "}\n");
  for (int attempt = 0; attempt < 5; ++attempt) {
    if (create_exclusive(path_, content_)) {
      set_stop_cleanup_file(path_);  // a second signal ends the process at once
      return;
    }
    std::string text;
    if (!try_read(path_, &text)) continue;  // released meanwhile: try again
    const Holder h = parse_holder(text);
    SY_CHECK(h.readable, "train.out_dir '", dir, "' is locked by another job (", path_,
             " exists but names no host and pid); if no job uses the folder, remove ", path_);
    SY_CHECK(h.host == host && !process_alive(h.pid), "train.out_dir '", dir,
             "' is in use by another job: process ", h.pid, " on host ", h.host, " holds ", path_,
             h.host == host ? "; wait for it to end or choose another train.out_dir"
                            : " (another host: if no job runs there, remove the lock file)");
    // Stale: move it aside, and make sure what was moved is the stale lock just read (not one
    // that another job took over meanwhile) before removing it.
    const std::string aside = path_ + ".stale." + std::to_string(::getpid());
    if (::rename(path_.c_str(), aside.c_str()) != 0) continue;
    std::string moved;
    if (!try_read(aside, &moved) || moved != text) {
      (void)::link(aside.c_str(), path_.c_str());  // put the live one back
      ::unlink(aside.c_str());
      continue;
    }
    ::unlink(aside.c_str());
    SY_LOG("train", "took over the stale lock ", path_, " of process ", h.pid, " on ", h.host,
           ", which no longer runs");
  }
  SY_THROW("cannot take the lock '", path_, "' of train.out_dir '", dir,
           "': other jobs keep taking it");
}

void RunFolderLock::clear_earlier_run() {
  if (earlier_.empty()) return;
  remove_earlier_run(dir_);
  SY_LOG("train", "--overwrite: removed the earlier run in ", dir_, " (", join(earlier_, ", "),
         ")");
  earlier_.clear();
}

RunFolderLock::~RunFolderLock() {
  set_stop_cleanup_file("");
  std::string text;
  if (try_read(path_, &text) && text == content_) ::unlink(path_.c_str());
  if (created_dir_) ::rmdir(dir_.c_str());  // only while it is empty
}

std::unique_ptr<RunFolderLock> claim_run_folder(const Config& config, const std::string& resume,
                                                bool overwrite) {
  const std::string& dir = config.train.out_dir;
  SY_CHECK(dir.find_first_not_of(" \t") != std::string::npos, "train.out_dir is ",
           dir.empty() ? "empty" : "blank ('" + dir + "')", ": give the run a folder");
  refuse_checkpoint_folder(dir);
  const bool existed = exists(dir);
  make_directories(dir, "train.out_dir");
  auto lock = std::make_unique<RunFolderLock>(dir, !existed);
  if (resume.empty()) {
    const std::vector<std::string> found = earlier_run(dir, to_yaml(config));
    if (!found.empty()) {
      SY_CHECK(overwrite, "train.out_dir '", dir, "' already holds a run (", join(found, ", "),
               "): continue it with --resume auto, or start over with --overwrite (deletes its "
               "checkpoints, metrics and model)");
      // Left by a job its watchdog ended (Note [Heartbeats]); this job's ranks write theirs here.
      remove_tree(dir + "/heartbeats");
      SY_LOG("train", "--overwrite: the earlier run in ", dir, " (", join(found, ", "),
             ") goes once this run's data and model have loaded");
      lock->set_earlier_run(found);
    }
  }
  return lock;
}

}  // namespace sy
