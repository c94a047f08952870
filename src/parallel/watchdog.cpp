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

#include "common/error.h"
#include "common/log.h"
#include "parallel/watchdog_internal.h"

namespace sy {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kPoll = std::chrono::milliseconds(100);

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

// Note [Missing ranks]: which ranks of the overdue operation's group did not reach it. With
// in-process ranks every member registers its operations in this process: a member without an
// entry for the same group and operation has not arrived (it computes, waits elsewhere, or
// stalled). Under MPI (or NCCL) a process sees only its own operations, so it can only name the
// group's ranks: each waiting rank prints its own dump, and the members without one are the ones
// that did not arrive. `missing` gets the ranks when they are known.
std::string missing_ranks_line(const InFlight& overdue, const std::map<uint64_t, InFlight>& all,
                               std::vector<int>& missing) {
  const std::string what =
      str("'", overdue.op, "' (group ", overdue.group, ", step ", step_text(overdue.step), ", at '",
          overdue.where.empty() ? std::string("(no label)") : overdue.where, "')");
  if (!overdue.members || overdue.members->empty()) {
    return str("ranks that did not reach ", what, ": not known");
  }
  if (!overdue.members_in_process) {
    return str("ranks that did not reach ", what,
               ": not known to this process (under MPI a rank sees only its own operations); the "
               "group is world ranks ",
               format_ranks(*overdue.members),
               ": those without a dump of their own did not arrive");
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
    return str("every rank of group ", overdue.group, " reached ", what,
               ": none is missing (the collective itself is stuck)");
  }
  return str("ranks that did not reach ", what, ": ", format_ranks(missing));
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

  // One poll: drop device work that completed, and fire if anything is overdue.
  static void check() {
    State& s = state();
    const Clock::time_point now = Clock::now();
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
      const std::string missing_line = missing_ranks_line(*overdue, s.in_flight, missing);
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
      lines.push_back({overdue->world_rank, overdue->world_size, missing_line});
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
