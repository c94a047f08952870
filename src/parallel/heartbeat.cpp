// Heartbeat files (Note [Heartbeats] in heartbeat.h).
#include "parallel/heartbeat.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "common/files.h"

namespace sy::detail {
namespace {

constexpr const char* kMagic = "switchyard heartbeat 1";

std::string format_ranks(const std::vector<int>& ranks) {
  std::string out;
  for (size_t i = 0; i < ranks.size(); ++i) out += (i ? ", " : "") + std::to_string(ranks[i]);
  return out;
}

std::string format_age(int64_t ms) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f s", static_cast<double>(ms < 0 ? 0 : ms) / 1000.0);
  return buf;
}

}  // namespace

int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Line by line: "key value"; a count line is "count <begun> <comm>" (the communicator's name
// last, since it holds spaces); the text ends with "end", so a torn read is not a heartbeat.
std::string format_heartbeat(const Heartbeat& hb) {
  std::ostringstream os;
  os << kMagic << "\n"
     << "job " << hb.job << "\n"
     << "rank " << hb.rank << " " << hb.world_size << "\n"
     << "host " << hb.host << "\n"
     << "pid " << hb.pid << "\n"
     << "written_ms " << hb.written_ms << "\n"
     << "step " << hb.step << "\n";
  for (const Heartbeat::Count& c : hb.counts) os << "count " << c.begun << " " << c.comm << "\n";
  if (!hb.busy.empty()) os << "busy " << hb.busy << "\n";
  os << "end\n";
  return os.str();
}

std::optional<Heartbeat> parse_heartbeat(const std::string& text) {
  std::istringstream in(text);
  std::string line;
  if (!std::getline(in, line) || line != kMagic) return std::nullopt;
  Heartbeat hb;
  bool ended = false, has_job = false, has_rank = false;
  while (std::getline(in, line)) {
    if (line == "end") {
      ended = true;
      break;
    }
    const size_t space = line.find(' ');
    if (space == std::string::npos) return std::nullopt;
    const std::string key = line.substr(0, space), value = line.substr(space + 1);
    std::istringstream v(value);
    if (key == "job") {
      has_job = static_cast<bool>(v >> hb.job);
    } else if (key == "rank") {
      has_rank = static_cast<bool>(v >> hb.rank >> hb.world_size);
    } else if (key == "host") {
      hb.host = value;
    } else if (key == "pid") {
      v >> hb.pid;
    } else if (key == "written_ms") {
      v >> hb.written_ms;
    } else if (key == "step") {
      v >> hb.step;
    } else if (key == "count") {
      Heartbeat::Count c;
      if (!(v >> c.begun)) return std::nullopt;
      v.get();  // the space before the name
      std::getline(v, c.comm);
      if (c.comm.empty()) return std::nullopt;
      hb.counts.push_back(std::move(c));
    } else if (key == "busy") {
      hb.busy = value;
    }  // unknown keys: from a newer writer, ignored
  }
  if (!ended || !has_job || !has_rank) return std::nullopt;
  return hb;
}

std::string heartbeat_path(const std::string& dir, int rank) {
  return str(dir, "/rank_", rank, ".txt");
}

void write_heartbeat(const std::string& dir, const Heartbeat& hb) {
  make_directories(dir);
  const std::string path = heartbeat_path(dir, hb.rank), tmp = path + ".tmp";
  const std::string text = format_heartbeat(hb);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  SY_CHECK(fd >= 0, "cannot create '", tmp, "': ", std::strerror(errno));
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      SY_THROW("cannot write '", tmp, "': ", std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  SY_CHECK(::close(fd) == 0, "cannot write '", tmp, "': ", std::strerror(errno));
  SY_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename '", tmp, "' to '", path,
           "': ", std::strerror(errno));
}

std::optional<Heartbeat> read_heartbeat(const std::string& dir, int rank) {
  std::ifstream in(heartbeat_path(dir, rank), std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  return parse_heartbeat(text.str());
}

void missing_by_heartbeats(const OverdueOp& op, const std::string& dir, uint64_t job,
                           int64_t now_ms, std::vector<int>& missing,
                           std::vector<std::string>& details) {
  std::vector<int> no_file, other_job, no_comm;
  for (const int member : op.members) {
    if (member == op.self) continue;
    const std::optional<Heartbeat> hb = read_heartbeat(dir, member);
    if (!hb || hb->rank != member) {
      no_file.push_back(member);
      continue;
    }
    if (hb->job != job) {
      other_job.push_back(member);
      continue;
    }
    const Heartbeat::Count* count = nullptr;
    for (const Heartbeat::Count& c : hb->counts) {
      if (c.comm == op.comm) count = &c;
    }
    if (count == nullptr) {
      no_comm.push_back(member);
      continue;
    }
    if (count->begun >= op.seq) continue;  // it reached the operation (and may wait in it too)
    missing.push_back(member);
    details.push_back(
        str("rank ", member, " (host ", hb->host, ", pid ", hb->pid, "; heartbeat ",
            format_age(now_ms - hb->written_ms), " old): step ",
            hb->step < 0 ? std::string("-") : std::to_string(hb->step), ", ", count->begun, " of ",
            op.comm, "'s collectives begun (the overdue one is ", op.seq, "); busy: ",
            hb->busy.empty() ? std::string("no watched operation (computing, or in unwatched work)")
                             : hb->busy));
  }
  if (!no_file.empty() || !other_job.empty() || !no_comm.empty()) {
    std::string unknown;
    auto add = [&](const std::vector<int>& ranks, const std::string& why) {
      if (ranks.empty()) return;
      unknown += str(unknown.empty() ? "" : "; ", format_ranks(ranks), ": ", why);
    };
    add(no_file, str("no heartbeat file in ", dir,
                     " (not started yet, or the folder is not shared with this host)"));
    add(other_job, "the heartbeat file is another job's");
    add(no_comm, str("no communicator ", op.comm, " in the heartbeat"));
    details.push_back(str("not known whether these ranks arrived: ", unknown));
  }
}

}  // namespace sy::detail
