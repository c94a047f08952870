// The in-flight registry, the watchdog thread, collective labels and the fault flag (watchdog.h);
// the watched communicators that fill the registry are in watched_comm.cpp.
//
// Locking: the registry's mutex (State::mu) is never held while calling into a communicator, and
// the fault flag has its own mutex, because an in-process communicator's abort() calls
// signal_fault() while holding its world's mutex. The watchdog thread holds no owning reference
// to a watched communicator, so a watched communicator (and the Watchdog it keeps alive) is never
// destroyed on the watchdog thread, which could not join itself.
#include "parallel/watchdog.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include <unistd.h>

#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "parallel/heartbeat.h"
#include "parallel/watchdog_internal.h"

namespace sy {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kPoll = std::chrono::milliseconds(100);
constexpr auto kBeat = std::chrono::seconds(1);  // heartbeat interval (Note [Heartbeats])

thread_local std::string t_label;

// One operation in flight.
struct InFlight : detail::OpRecord {
  Clock::time_point start;
  std::unique_ptr<detail::Completion> completion;  // set once the host call returned (NCCL)
  bool reported = false;                           // in a dump already: fires once
};

struct WatchedInner {
  std::weak_ptr<Communicator> comm;
  bool is_mpi = false;   // MpiCommunicator::abort is MPI_Abort: never from the watchdog thread
  bool mpi_job = false;  // MPI or NCCL (bootstrapped by MPI): the process must end itself
};

// Process-wide state. Leaked on purpose: the watchdog thread and ranks' threads may still touch
// it while static destructors run at exit.
struct State {
  std::mutex mu;
  std::map<uint64_t, InFlight> in_flight;
  uint64_t next_id = 1;
  std::vector<WatchedInner> watched;
  std::string last_dump;

  std::mutex fault_mu;
  std::atomic<bool> fault{false};
  std::string fault_reason;

  std::mutex watchdog_mu;
  std::weak_ptr<detail::Watchdog> watchdog;

  // The heartbeat (Note [Heartbeats]), under mu; hb_write_mu orders the file's writes and its
  // removal.
  bool hb_on = false;
  std::string hb_dir, hb_host;
  uint64_t hb_job = 0;
  std::shared_ptr<RankContext> hb_ctx;
  Clock::time_point hb_last;
  std::vector<std::weak_ptr<detail::CommCount>> counts;
  std::map<std::string, int> comm_ordinals;  // "<world rank>|<group> <members>" -> next ordinal
  std::mutex hb_write_mu;
};

State& state() {
  static State* s = new State;
  return *s;
}

std::string format_seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f s", s);
  return buf;
}

std::string step_text(int64_t step) { return step < 0 ? std::string("-") : std::to_string(step); }

std::string format_list(const std::vector<int64_t>& v) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  os << ']';
  return os.str();
}

// "rank 1 | step 3 | moe block 0: dispatch | ep (4 ranks) | all_to_all_single | send [..] recv [..] | waiting 5.0 s"
std::string describe(const InFlight& e, Clock::time_point now) {
  std::string splits = "-";
  if (e.has_splits) {
    splits = e.send.empty() && e.recv.empty()
                 ? std::string("equal splits")
                 : str("send ", format_list(e.send), " recv ", format_list(e.recv));
  }
  const double waited = std::chrono::duration<double>(now - e.start).count();
  return str("rank ", e.world_rank, " | step ", step_text(e.step), " | ",
             e.where.empty() ? std::string("(no label)") : e.where, " | ",
             e.group_size > 0 ? str(e.group, " (", e.group_size, " ranks)") : std::string("-"),
             " | ", e.op, " | ", splits, " | waiting ", format_seconds(waited),
             e.completion ? " (enqueued; not complete on the GPU)" : "");
}

std::string format_ranks(const std::vector<int>& ranks) {
  std::string out;
  for (size_t i = 0; i < ranks.size(); ++i) out += (i ? ", " : "") + std::to_string(ranks[i]);
  return out;
}

// What the dump says of an operation: "'all_to_all_single' (group ep, step 3, at 'moe block 0:
// dispatch')".
std::string operation_text(const InFlight& e) {
  return str("'", e.op, "' (group ", e.group, ", step ", step_text(e.step), ", at '",
             e.where.empty() ? std::string("(no label)") : e.where, "')");
}

// Note [Missing ranks]: which ranks of the overdue operation's group did not reach it. With
// in-process ranks every member registers its operations in this process: a member without an
// entry for the same group and operation has not arrived (it computes, waits elsewhere, or
// stalled). Under MPI (or NCCL) a process sees only its own operations; there the members'
// heartbeat files tell (Note [Heartbeats]), and without them the dump can only list the group's
// ranks (each waiting rank prints its own dump: the members without one did not arrive). Returns
// the dump's lines about it; `missing` gets the ranks when they are known. Called under State::mu.
std::vector<std::string> missing_ranks_lines(const InFlight& overdue,
                                             const std::map<uint64_t, InFlight>& all,
                                             std::vector<int>& missing) {
  const State& s = state();
  const std::string what = operation_text(overdue);
  if (!overdue.members || overdue.members->empty()) {
    return {str("ranks that did not reach ", what, ": not known")};
  }
  if (!overdue.members_in_process && s.hb_on && overdue.comm) {
    std::vector<std::string> details;
    detail::missing_by_heartbeats(
        {overdue.comm->name, overdue.seq, *overdue.members, overdue.world_rank}, s.hb_dir, s.hb_job,
        detail::wall_ms(), missing, details);
    std::vector<std::string> lines;
    if (!missing.empty()) {
      lines.push_back(str("ranks that did not reach ", what, ": ", format_ranks(missing),
                          " (by their heartbeat files in ", s.hb_dir, ")"));
    } else {
      lines.push_back(str("ranks that did not reach ", what,
                          ": none found by the heartbeat files in ", s.hb_dir,
                          " (the collective itself is stuck, or a rank arrived within the last ",
                          std::chrono::duration<double>(kBeat).count(), " s)"));
    }
    lines.insert(lines.end(), details.begin(), details.end());
    return lines;
  }
  if (!overdue.members_in_process) {
    return {str("ranks that did not reach ", what,
                ": not known to this process (under MPI a rank sees only its own operations); the "
                "group is world ranks ",
                format_ranks(*overdue.members),
                ": those without a dump of their own did not arrive")};
  }
  for (const int member : *overdue.members) {
    bool arrived = false;
    for (const auto& [id, e] : all) {
      (void)id;
      arrived = arrived || (e.world_rank == member && e.group == overdue.group && e.members &&
                            *e.members == *overdue.members && e.op == overdue.op);
    }
    if (!arrived) missing.push_back(member);
  }
  if (missing.empty()) {
    return {str("every rank of group ", overdue.group, " reached ", what,
                ": none is missing (the collective itself is stuck)")};
  }
  return {str("ranks that did not reach ", what, ": ", format_ranks(missing))};
}

// What a rank is busy with, for its heartbeat: "all_to_all_single on ep 0,1,2,3 #0 (collective
// 42) at 'moe block 0: dispatch' for 3.1 s".
std::string busy_text(const InFlight& e, Clock::time_point now) {
  return str(e.op, !e.comm ? std::string() : str(" on ", e.comm->name, " (collective ", e.seq, ")"),
             " at '", e.where.empty() ? std::string("(no label)") : e.where, "' for ",
             format_seconds(std::chrono::duration<double>(now - e.start).count()));
}

// Writes this process's heartbeat when one is due (or `force`): the counts of its watched
// communicators and its oldest operation in flight. A write that fails ends the heartbeat (the
// dump then lists the group's ranks, as without one) and returns the error ("" otherwise).
std::string beat(Clock::time_point now, bool force) {
  State& s = state();
  std::lock_guard<std::mutex> write_lock(s.hb_write_mu);
  detail::Heartbeat hb;
  std::string dir;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (!s.hb_on || (!force && now - s.hb_last < kBeat)) return "";
    s.hb_last = now;
    dir = s.hb_dir;
    hb.job = s.hb_job;
    hb.rank = s.hb_ctx->world_rank();
    hb.world_size = s.hb_ctx->world_size();
    hb.host = s.hb_host;
    hb.pid = static_cast<int64_t>(::getpid());
    hb.step = s.hb_ctx->step();
    s.counts.erase(
        std::remove_if(s.counts.begin(), s.counts.end(), [](const auto& c) { return c.expired(); }),
        s.counts.end());
    for (const auto& weak : s.counts) {
      if (const auto c = weak.lock()) hb.counts.push_back({c->name, c->begun.load()});
    }
    const InFlight* oldest = nullptr;
    for (const auto& [id, e] : s.in_flight) {
      (void)id;
      if (e.world_rank == hb.rank && (oldest == nullptr || e.start < oldest->start)) oldest = &e;
    }
    if (oldest != nullptr) hb.busy = busy_text(*oldest, now);
  }
  hb.written_ms = detail::wall_ms();
  try {
    detail::write_heartbeat(dir, hb);
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lock(s.mu);
    s.hb_on = false;
    return e.what();
  }
  return "";
}

}  // namespace

namespace detail {

class Watchdog {
 public:
  Watchdog() : thread_([this] { run(); }) {}
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      cv_.wait_for(lock, kPoll, [this] { return stop_; });
      if (stop_) break;
      lock.unlock();
      try {
        check();
      } catch (const std::exception& e) {  // the watchdog must not take the process down itself
        SY_LOG_ALL("watchdog", "internal error: ", e.what());
      }
      lock.lock();
    }
  }

  // One poll: drop device work that completed, write the heartbeat when due, and fire if
  // anything is overdue.
  static void check() {
    State& s = state();
    const Clock::time_point now = Clock::now();
    const std::string beat_error = beat(now, /*force=*/false);
    if (!beat_error.empty()) {
      SY_LOG_ALL("watchdog", "heartbeat stopped: ", beat_error,
                 "; a timeout's dump cannot name the ranks that did not arrive");
    }
    struct Line {
      int rank, world_size;
      std::string text;
    };
    std::vector<Line> lines;
    std::string reason;
    std::vector<WatchedInner> watched;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      for (auto it = s.in_flight.begin(); it != s.in_flight.end();) {
        bool done = false;
        if (it->second.completion) {
          try {
            done = it->second.completion->done();
          } catch (const std::exception&) {
            done = true;  // a failed event cannot complete later; the error shows elsewhere
          }
        }
        it = done ? s.in_flight.erase(it) : std::next(it);
      }
      const InFlight* overdue = nullptr;
      for (const auto& [id, e] : s.in_flight) {
        (void)id;
        const double waited = std::chrono::duration<double>(now - e.start).count();
        if (e.timeout_s > 0 && !e.reported && waited > e.timeout_s &&
            (overdue == nullptr || e.start < overdue->start)) {
          overdue = &e;
        }
      }
      if (overdue == nullptr) return;
      const double waited = std::chrono::duration<double>(now - overdue->start).count();
      std::vector<int> missing;
      const std::vector<std::string> missing_lines =
          missing_ranks_lines(*overdue, s.in_flight, missing);
      reason =
          str("collective timeout: rank ", overdue->world_rank, " waited ", format_seconds(waited),
              " in ", overdue->op, " (group ", overdue->group, ", step ", step_text(overdue->step),
              ", at '", overdue->where.empty() ? std::string("(no label)") : overdue->where,
              "'; parallel.timeout_s = ", overdue->timeout_s, ")",
              missing.empty() ? std::string() : str("; did not arrive: ", format_ranks(missing)));
      std::vector<const InFlight*> order;
      for (auto& [id, e] : s.in_flight) {
        (void)id;
        e.reported = true;
        order.push_back(&e);
      }
      std::stable_sort(order.begin(), order.end(), [](const InFlight* a, const InFlight* b) {
        return a->world_rank != b->world_rank ? a->world_rank < b->world_rank : a->start < b->start;
      });
      lines.push_back({overdue->world_rank, overdue->world_size,
                       str("collective timeout: an operation has been in flight for more than ",
                           overdue->timeout_s, " s (parallel.timeout_s); ", order.size(),
                           " in flight in this process (rank | step | where | group | operation | "
                           "splits | waiting):")});
      for (const std::string& l : missing_lines)
        lines.push_back({overdue->world_rank, overdue->world_size, l});
      for (const InFlight* e : order)
        lines.push_back({e->world_rank, e->world_size, describe(*e, now)});
      std::string dump;
      for (const Line& l : lines) dump += l.text + "\n";
      s.last_dump = dump;
      watched = s.watched;
    }
    // Each line under the prefix of the rank it describes (the log rank is per thread).
    for (const Line& l : lines) {
      set_log_rank(l.rank, l.world_size);
      SY_LOG_ALL("watchdog", l.text);
    }
    signal_fault(reason);
    bool mpi_job = false;
    for (const WatchedInner& w : watched) {
      if (w.comm.expired()) continue;
      mpi_job = mpi_job || w.mpi_job;
      if (w.is_mpi) continue;
      if (CommPtr c = w.comm.lock()) {
        try {
          c->abort(reason);
        } catch (const std::exception& e) {
          SY_LOG_ALL("watchdog", "abort failed: ", e.what());
        }
      }
    }
    if (mpi_job) {
      // MPI_Abort from this thread would break MPI_THREAD_SERIALIZED while the rank's own thread
      // is inside MPI; a non-zero exit without MPI_Finalize makes mpirun end the other ranks.
      SY_LOG_ALL("error", reason, "; ending the job (exit status ", kWatchdogExitCode, ")");
      std::fflush(nullptr);
      std::_Exit(kWatchdogExitCode);
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;  // last: starts after the members it uses exist
};

std::shared_ptr<Watchdog> acquire_watchdog() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.watchdog_mu);
  std::shared_ptr<Watchdog> w = s.watchdog.lock();
  if (!w) {
    w = std::make_shared<Watchdog>();
    s.watchdog = w;
  }
  return w;
}

uint64_t begin_in_flight(OpRecord op) {
  InFlight e;
  static_cast<OpRecord&>(e) = std::move(op);
  e.start = Clock::now();
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  const uint64_t id = s.next_id++;
  s.in_flight.emplace(id, std::move(e));
  return id;
}

void end_in_flight(uint64_t id) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.in_flight.erase(id);
}

bool end_in_flight_when(uint64_t id, std::unique_ptr<Completion> done) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.in_flight.find(id);
  if (it == s.in_flight.end()) return false;
  it->second.completion = std::move(done);
  return true;
}

void abort_on_timeout(const std::shared_ptr<Communicator>& comm) {
  const std::string& backend = comm->backend();
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.watched.erase(std::remove_if(s.watched.begin(), s.watched.end(),
                                 [](const WatchedInner& w) { return w.comm.expired(); }),
                  s.watched.end());
  s.watched.push_back({comm, backend == "mpi", backend == "mpi" || backend == "nccl"});
}

std::shared_ptr<CommCount> register_comm(int world_rank, const std::string& group,
                                         const std::vector<int>& members) {
  std::string ranks;
  for (size_t i = 0; i < members.size(); ++i) ranks += (i ? "," : "") + std::to_string(members[i]);
  const std::string base = str(group, " ", ranks.empty() ? std::string("?") : ranks);
  auto count = std::make_shared<CommCount>();
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  count->name = str(base, " #", s.comm_ordinals[str(world_rank, "|", base)]++);
  s.counts.erase(
      std::remove_if(s.counts.begin(), s.counts.end(), [](const auto& c) { return c.expired(); }),
      s.counts.end());
  s.counts.push_back(count);
  return count;
}

}  // namespace detail

class HeartbeatHandle {
 public:
  HeartbeatHandle(std::string dir, int rank) : dir_(std::move(dir)), rank_(rank) {}
  ~HeartbeatHandle() {
    State& s = state();
    std::lock_guard<std::mutex> write_lock(s.hb_write_mu);
    {
      std::lock_guard<std::mutex> lock(s.mu);
      s.hb_on = false;
      s.hb_ctx.reset();
    }
    ::unlink(detail::heartbeat_path(dir_, rank_).c_str());
    ::rmdir(dir_.c_str());  // once the last rank's file is gone
  }
  HeartbeatHandle(const HeartbeatHandle&) = delete;
  HeartbeatHandle& operator=(const HeartbeatHandle&) = delete;

 private:
  std::string dir_;
  int rank_;
};

namespace detail {

std::shared_ptr<HeartbeatHandle> enable_heartbeat(const std::string& dir, uint64_t job,
                                                  std::shared_ptr<RankContext> ctx) {
  SY_CHECK(ctx != nullptr, "heartbeat: no rank context");
  State& s = state();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    SY_CHECK(!s.hb_on, "heartbeat: this process already writes one (in ", s.hb_dir, ")");
    s.hb_on = true;
    s.hb_dir = dir;
    s.hb_host = host_name();
    s.hb_job = job;
    s.hb_ctx = ctx;
  }
  auto handle = std::make_shared<HeartbeatHandle>(dir, ctx->world_rank());
  const std::string error = beat(Clock::now(), /*force=*/true);
  SY_CHECK(error.empty(), "parallel.timeout_s: the heartbeat file of rank ", ctx->world_rank(),
           " cannot be written (Note [Heartbeats]): ", error);
  return handle;
}

}  // namespace detail

CollectiveLabel::CollectiveLabel(std::string label) : previous_(std::move(t_label)) {
  t_label = std::move(label);
}

CollectiveLabel::~CollectiveLabel() { t_label = std::move(previous_); }

const std::string& current_collective_label() { return t_label; }

void signal_fault(const std::string& reason) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.fault_mu);
  if (!s.fault.load()) s.fault_reason = reason;
  s.fault.store(true);
}

bool fault_signalled() { return state().fault.load(); }

std::string fault_reason() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.fault_mu);
  return s.fault_reason;
}

void reset_fault_state() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.fault_mu);
  s.fault.store(false);
  s.fault_reason.clear();
}

void stall_until_aborted(const std::string& what, int world_rank, int64_t step) {
  // Listed in dumps (timeout 0: never fires itself), so the dump names the rank that stopped.
  detail::OpRecord e;
  e.world_rank = world_rank;
  e.world_size = log_world_size();
  e.step = step;
  e.where = what;
  e.op = "stalled (not in a collective)";
  const uint64_t id = detail::begin_in_flight(std::move(e));
  while (!fault_signalled()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  detail::end_in_flight(id);
  SY_THROW(what, "; stalled rank released by the job's abort: ", fault_reason());
}

bool watchdog_running() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.watchdog_mu);
  return !s.watchdog.expired();
}

std::string last_watchdog_dump() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.last_dump;
}

}  // namespace sy
