// Watched communicators, the in-flight registry and the watchdog thread (watchdog.h).
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

#include <torch/torch.h>

#include "common/error.h"
#include "common/log.h"
#include "parallel/comm_util.h"
#include "parallel/watchdog_internal.h"

namespace sy {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kPoll = std::chrono::milliseconds(100);

thread_local std::string t_label;

// One operation in flight.
struct InFlight {
  int world_rank = 0, world_size = 1;
  int64_t step = -1;
  std::string where, group, op;
  int group_size = 0;  // 0: not a collective (a debug stall)
  bool has_splits = false;
  std::vector<int64_t> send, recv;
  Clock::time_point start;
  double timeout_s = 0;  // 0: listed in dumps, never fires
  std::unique_ptr<detail::Completion> completion;  // set once the host call returned (NCCL)
  bool reported = false;                           // in a dump already: fires once
};

class Watchdog;

struct WatchedInner {
  std::weak_ptr<Communicator> comm;
  bool is_mpi = false;  // MpiCommunicator::abort is MPI_Abort: never from the watchdog thread
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
  std::weak_ptr<Watchdog> watchdog;
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
                 : str("send ", e.send.empty() ? std::string("equal") : format_list(e.send), " recv ",
                       e.recv.empty() ? std::string("equal") : format_list(e.recv));
  }
  const double waited = std::chrono::duration<double>(now - e.start).count();
  return str("rank ", e.world_rank, " | step ", step_text(e.step),
             " | ", e.where.empty() ? std::string("(no label)") : e.where, " | ",
             e.group_size > 0 ? str(e.group, " (", e.group_size, " ranks)") : std::string("-"), " | ",
             e.op, " | ", splits, " | waiting ", format_seconds(waited),
             e.completion ? " (enqueued; not complete on the GPU)" : "");
}

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
      reason = str("collective timeout: rank ", overdue->world_rank, " waited ", format_seconds(waited),
                   " in ", overdue->op, " (group ", overdue->group, ", step ", step_text(overdue->step), ", at '",
                   overdue->where.empty() ? std::string("(no label)") : overdue->where,
                   "'; parallel.timeout_s = ", overdue->timeout_s, ")");
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
      for (const InFlight* e : order) lines.push_back({e->world_rank, e->world_size, describe(*e, now)});
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

// Registers one operation for the lifetime of the object (nothing without a timeout). After the
// host call, enqueued() keeps it registered until the device work completes (NCCL).
class InFlightScope {
 public:
  InFlightScope(double timeout_s, const RankContext& ctx, const std::string& group, int group_size,
                const char* op, const std::vector<int64_t>* send = nullptr,
                const std::vector<int64_t>* recv = nullptr)
      : active_(timeout_s > 0), op_(op) {
    if (!active_) return;
    InFlight e;
    e.world_rank = ctx.world_rank();
    e.world_size = ctx.world_size();
    e.step = ctx.step();
    e.where = t_label;
    e.group = group;
    e.group_size = group_size;
    e.op = op;
    e.has_splits = send != nullptr;
    if (send) e.send = *send;
    if (recv) e.recv = *recv;
    e.timeout_s = timeout_s;
    e.start = Clock::now();
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    id_ = s.next_id++;
    s.in_flight.emplace(id_, std::move(e));
  }
  ~InFlightScope() {
    if (!active_) return;
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    s.in_flight.erase(id_);
  }
  InFlightScope(const InFlightScope&) = delete;
  InFlightScope& operator=(const InFlightScope&) = delete;

  // The host call returned. On NCCL the collective has only been enqueued on `t`'s stream: keep
  // it in flight until a CUDA event recorded after it completes.
  void enqueued(bool device_async, const at::Tensor& t) {
#ifdef SWITCHYARD_CUDA
    if (!active_ || !device_async || !t.defined() || !t.is_cuda()) return;
    std::unique_ptr<detail::Completion> c;
    try {
      c = detail::record_cuda_completion(t.device().index());
    } catch (const std::exception& e) {  // the collective itself succeeded: only the watch is lost
      SY_LOG_ALL("watchdog", "cannot watch the GPU side of ", op_, ": ", e.what());
      return;
    }
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.in_flight.find(id_);
    if (it == s.in_flight.end()) return;
    it->second.completion = std::move(c);
    active_ = false;  // the watchdog removes it when the event completes
#else
    (void)device_async;
    (void)t;
#endif
  }

 private:
  bool active_;
  const char* op_;
  uint64_t id_ = 0;
};

class WatchedCommunicator final : public Communicator {
 public:
  WatchedCommunicator(CommPtr inner, std::string name, std::shared_ptr<RankContext> ctx,
                      const WatchOptions& opt)
      : inner_(std::move(inner)), name_(std::move(name)), ctx_(std::move(ctx)), opt_(opt) {
    SY_CHECK(inner_ != nullptr, "watch_communicator: no communicator to watch (group ", name_, ")");
    if (!ctx_) ctx_ = std::make_shared<RankContext>(inner_->rank(), inner_->size());
    async_ = inner_->backend() == "nccl";
    if (opt_.timeout_s > 0) watchdog_ = acquire_watchdog();
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    s.watched.erase(std::remove_if(s.watched.begin(), s.watched.end(),
                                   [](const WatchedInner& w) { return w.comm.expired(); }),
                    s.watched.end());
    const std::string backend = inner_->backend();
    s.watched.push_back({inner_, backend == "mpi", backend == "mpi" || backend == "nccl"});
  }

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string backend() const override { return inner_->backend(); }

  void all_to_all_single(at::Tensor& output, const at::Tensor& input,
                         const std::vector<int64_t>& send_splits,
                         const std::vector<int64_t>& recv_splits) override {
    InFlightScope scope(opt_.timeout_s, *ctx_, name_, size(), "all_to_all_single", &send_splits,
                        &recv_splits);
    if (opt_.check_splits) check_splits(output, input, send_splits, recv_splits);
    inner_->all_to_all_single(output, input, send_splits, recv_splits);
    scope.enqueued(async_, output);
  }

  void all_reduce(at::Tensor& tensor, ReduceOp op) override {
    InFlightScope scope(opt_.timeout_s, *ctx_, name_, size(), "all_reduce");
    inner_->all_reduce(tensor, op);
    scope.enqueued(async_, tensor);
  }

  void all_gather(at::Tensor& output, const at::Tensor& input) override {
    InFlightScope scope(opt_.timeout_s, *ctx_, name_, size(), "all_gather");
    inner_->all_gather(output, input);
    scope.enqueued(async_, output);
  }

  void broadcast(at::Tensor& tensor, int root) override {
    InFlightScope scope(opt_.timeout_s, *ctx_, name_, size(), "broadcast");
    inner_->broadcast(tensor, root);
    scope.enqueued(async_, tensor);
  }

  void barrier() override {  // synchronous on every backend (NCCL waits for its stream)
    InFlightScope scope(opt_.timeout_s, *ctx_, name_, size(), "barrier");
    inner_->barrier();
  }

  std::shared_ptr<Communicator> split(int color, int key) override {
    return split_named(color, key, name_ + "/split");
  }

  CommPtr split_named(int color, int key, const std::string& child_name) {
    CommPtr child;
    {
      InFlightScope scope(opt_.timeout_s, *ctx_, name_, size(), "split");
      child = inner_->split(color, key);
    }
    return std::make_shared<WatchedCommunicator>(std::move(child), child_name, ctx_, opt_);
  }

  void abort(const std::string& reason) override {
    signal_fault(reason);
    inner_->abort(reason);
  }

 private:
  // parallel.check_splits: every rank all-gathers [world rank, row width, dtype, send splits,
  // recv splits] and checks the whole table in the same order, so every rank throws the same
  // error. A rank whose own arguments are malformed throws before the exchange (its peers are
  // then released by the job's abort).
  void check_splits(const at::Tensor& output, const at::Tensor& input,
                    const std::vector<int64_t>& send_splits, const std::vector<int64_t>& recv_splits) {
    const int n = size();
    const std::string where = t_label.empty() ? std::string("(no label)") : t_label;
    const std::string what = str("all_to_all_single at '", where, "' (group ", name_, ", parallel.check_splits)");
    detail::check_tensor(input, what + ": input", 1);
    detail::check_tensor(output, what + ": output", 1);
    const std::vector<int64_t> send = detail::resolve_splits(send_splits, input.size(0), n, what + ": send_splits");
    const std::vector<int64_t> recv = detail::resolve_splits(recv_splits, output.size(0), n, what + ": recv_splits");
    std::vector<int64_t> mine = {ctx_->world_rank(), row_width(input),
                                 static_cast<int64_t>(input.scalar_type())};
    mine.insert(mine.end(), send.begin(), send.end());
    mine.insert(mine.end(), recv.begin(), recv.end());
    const int64_t cols = static_cast<int64_t>(mine.size());
    at::Tensor local = at::tensor(mine, at::TensorOptions().dtype(at::kLong)).view({1, cols}).to(input.device());
    at::Tensor table = at::empty({n, cols}, local.options());
    inner_->all_gather(table, local);
    table = table.to(at::kCPU).contiguous();
    const int64_t* t = table.data_ptr<int64_t>();
    auto at_ = [&](int r, int64_t c) { return t[r * cols + c]; };
    auto who = [&](int r) {
      const int64_t world = at_(r, 0);
      return world == r ? str("rank ", world) : str("rank ", world, " (", name_, " rank ", r, ")");
    };
    for (int r = 1; r < n; ++r) {
      SY_CHECK(at_(r, 1) == at_(0, 1), what, ": ", who(r), " sends rows of ", at_(r, 1),
               " elements but ", who(0), " rows of ", at_(0, 1));
      SY_CHECK(at_(r, 2) == at_(0, 2), what, ": ", who(r), " sends ",
               static_cast<at::ScalarType>(at_(r, 2)), " but ", who(0), " sends ",
               static_cast<at::ScalarType>(at_(0, 2)));
    }
    for (int src = 0; src < n; ++src) {
      for (int dst = 0; dst < n; ++dst) {
        const int64_t sent = at_(src, 3 + dst), expected = at_(dst, 3 + n + src);
        SY_CHECK(sent == expected, what, ": ", who(src), " sends ", sent, " rows to ", who(dst),
                 ", but ", who(dst), " expects ", expected, " rows from ", who(src));
      }
    }
  }

  static int64_t row_width(const at::Tensor& t) {
    int64_t w = 1;
    for (int64_t d = 1; d < t.dim(); ++d) w *= t.size(d);
    return w;
  }

  CommPtr inner_;
  std::string name_;
  std::shared_ptr<RankContext> ctx_;
  WatchOptions opt_;
  bool async_ = false;
  std::shared_ptr<Watchdog> watchdog_;  // keeps the thread running while this lives
};

}  // namespace

CollectiveLabel::CollectiveLabel(std::string label) : previous_(std::move(t_label)) {
  t_label = std::move(label);
}

CollectiveLabel::~CollectiveLabel() { t_label = std::move(previous_); }

const std::string& current_collective_label() { return t_label; }

CommPtr watch_communicator(CommPtr inner, std::string group_name, std::shared_ptr<RankContext> ctx,
                           const WatchOptions& opt) {
  return std::make_shared<WatchedCommunicator>(std::move(inner), std::move(group_name),
                                               std::move(ctx), opt);
}

CommPtr watched_split(const CommPtr& comm, int color, int key, const std::string& group_name) {
  SY_CHECK(comm != nullptr, "watched_split: no communicator");
  if (auto* w = dynamic_cast<WatchedCommunicator*>(comm.get())) return w->split_named(color, key, group_name);
  return comm->split(color, key);
}

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
  State& s = state();
  uint64_t id = 0;
  {
    InFlight e;
    e.world_rank = world_rank;
    e.world_size = log_world_size();
    e.step = step;
    e.where = what;
    e.op = "stalled (not in a collective)";
    e.start = Clock::now();
    std::lock_guard<std::mutex> lock(s.mu);
    id = s.next_id++;
    s.in_flight.emplace(id, std::move(e));
  }
  while (!fault_signalled()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.in_flight.erase(id);
  }
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
