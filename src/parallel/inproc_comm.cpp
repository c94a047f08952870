// In-process communicators (inproc_comm.h): threads meeting at a rendezvous.
//
// Every collective has three phases on every rank of the group:
//   1. publish: under the world mutex, the rank writes a Slot (pointers to its arguments) and
//      waits at the first barrier until all ranks of the group have published;
//   2. work: outside the mutex, each rank checks all ranks' arguments against each other (the same
//      checks on the same data, so all ranks agree; each rank's own arguments were checked by
//      Communicator before it published them) and copies what it needs from its peers' inputs
//      into its own output; nobody writes to anything a peer reads;
//   3. leave: a second barrier, so that no rank returns (and frees or reuses its input, or
//      overwrites its slot) while a peer may still read it. Errors from phase 2 are rethrown only
//      after it.
// A barrier is a count plus a generation number: the last arrival resets the count, bumps the
// generation and wakes everyone. All groups derived from one world (by split) share one mutex,
// one condition variable and one abort flag, so aborting the world wakes every waiting rank.
#include "parallel/inproc_comm.h"

#include <algorithm>
#include <condition_variable>
#include <map>
#include <mutex>
#include <numeric>
#include <set>
#include <thread>

#include <torch/torch.h>

#include "common/error.h"
#include "common/log.h"
#include "parallel/comm_util.h"
#include "parallel/watchdog.h"

namespace sy {
namespace {

// Thrown by ranks woken by an abort; run_inproc_ranks prefers the error that caused the abort.
class AbortedError : public Error {
 public:
  using Error::Error;
};

// What one rank brings to a collective. Valid from its publication to the second barrier.
struct Slot {
  const char* op = "";
  const at::Tensor* input = nullptr;   // read by peers (the in-place tensor for all_reduce etc.)
  const at::Tensor* output = nullptr;  // never touched by peers; shape only
  const std::vector<int64_t>* send = nullptr;
  const std::vector<int64_t>* recv = nullptr;
  int root = 0;
  ReduceOp reduce = ReduceOp::kSum;
  int color = 0;
  int key = 0;
};

// State shared by every group of one world.
struct World {
  explicit World(int n) : finished(static_cast<size_t>(n), false) {}
  std::mutex mu;
  std::condition_variable cv;
  bool aborted = false;
  std::string reason;
  std::vector<bool> finished;  // by world rank: returned from its body
};

// One communicator's rendezvous.
struct Group {
  Group(std::shared_ptr<World> w, std::vector<int> m)
      : world(std::move(w)), members(std::move(m)), slots(members.size()) {}
  std::shared_ptr<World> world;
  std::vector<int> members;  // world rank of each group rank
  std::vector<Slot> slots;
  int arrived = 0;
  uint64_t generation = 0;
  // split(): groups being created, by color, with how many members have taken theirs. Empty
  // between collectives (the last member to take a group removes it).
  std::map<int, std::pair<std::shared_ptr<Group>, size_t>> splitting;
};

const char* op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kMin: return "min";
  }
  return "?";
}

class InprocCommunicator final : public Communicator {
 public:
  InprocCommunicator(std::shared_ptr<Group> group, int rank)
      : Communicator(rank, static_cast<int>(group->members.size()), "inproc"),
        group_(std::move(group)) {}

  void abort(const std::string& reason) override {
    {
      World& w = *group_->world;
      std::lock_guard<std::mutex> lock(w.mu);
      if (!w.aborted) {
        w.aborted = true;
        w.reason = reason;
      }
      w.cv.notify_all();
    }
    // Ranks stalled on purpose outside any collective (debug.stall_rank) wait for this flag.
    signal_fault(reason);
  }

  // Called by run_inproc_ranks when this (world) rank's body has returned: peers that wait for it
  // in a collective get an error instead of waiting forever.
  void mark_finished() {
    World& w = *group_->world;
    std::lock_guard<std::mutex> lock(w.mu);
    w.finished[group_->members[rank()]] = true;
    w.cv.notify_all();
  }

 protected:
  // Each rank's own arguments were checked by Communicator before it published them, so the
  // checks here are those between ranks only.
  void do_all_to_all(at::Tensor& output, const at::Tensor& input,
                     const std::vector<int64_t>& send_splits,
                     const std::vector<int64_t>& recv_splits) override {
    Slot s;
    s.op = "all_to_all_single";
    s.input = &input;
    s.output = &output;
    s.send = &send_splits;
    s.recv = &recv_splits;
    collective(s, [&](const std::vector<Slot>& slots) {
      // Rank r's splits, resolved: *slots[r].send and *slots[r].recv.
      const int n = size(), me = rank();
      for (int r = 1; r < n; ++r) {
        detail::check_same_rows(*slots[0].input, *slots[r].input,
                                str("all_to_all_single: ranks 0 and ", r));
      }
      for (int src = 0; src < n; ++src) {
        for (int dst = 0; dst < n; ++dst) {
          const int64_t sent = (*slots[src].send)[dst], expected = (*slots[dst].recv)[src];
          SY_CHECK(sent == expected, "all_to_all_single: rank ", src, " sends ", sent,
                   " rows to rank ", dst, ", but rank ", dst, " expects ", expected,
                   " rows from rank ", src);
        }
      }
      // Rows from src start at src's offset for destination `me` in its input, and land at
      // offset src in our receive layout.
      const std::vector<int64_t> recv_offsets = detail::offsets_of(recv_splits);
      for (int src = 0; src < n; ++src) {
        const int64_t rows = recv_splits[src];
        if (rows == 0) continue;
        const int64_t from = detail::offsets_of(*slots[src].send)[me];
        output.narrow(0, recv_offsets[src], rows).copy_(slots[src].input->narrow(0, from, rows));
      }
    });
  }

  void do_all_reduce(at::Tensor& tensor, ReduceOp op) override {
    Slot s;
    s.op = "all_reduce";
    s.input = &tensor;
    s.reduce = op;
    at::Tensor result;
    collective(s, [&](const std::vector<Slot>& slots) {
      for (size_t r = 0; r < slots.size(); ++r) {
        SY_CHECK(slots[r].reduce == op, "all_reduce: rank 0 reduces with ", op_name(op),
                 " but rank ", r, " with ", op_name(slots[r].reduce));
        check_same_tensor("all_reduce", slots, r);
      }
      // In rank order, into a private buffer: peers still read our tensor until the barrier.
      result = slots[0].input->clone();
      for (size_t r = 1; r < slots.size(); ++r) {
        const at::Tensor peer = slots[r].input->to(result.device());
        if (op == ReduceOp::kSum) result.add_(peer);
        else if (op == ReduceOp::kMax) result = at::maximum(result, peer);
        else result = at::minimum(result, peer);
      }
    });
    tensor.copy_(result);
  }

  void do_all_gather(at::Tensor& output, const at::Tensor& input) override {
    Slot s;
    s.op = "all_gather";
    s.input = &input;
    s.output = &output;
    collective(s, [&](const std::vector<Slot>& slots) {
      const int n = size();
      for (int r = 1; r < n; ++r) {
        detail::check_same_rows(*slots[0].input, *slots[r].input,
                                str("all_gather: ranks 0 and ", r));
        SY_CHECK(slots[r].input->size(0) == slots[0].input->size(0), "all_gather: rank ", r,
                 " sends ", slots[r].input->size(0), " rows but rank 0 sends ",
                 slots[0].input->size(0));
      }
      const int64_t rows = input.size(0);
      for (int r = 0; r < n && rows > 0; ++r) {
        output.narrow(0, r * rows, rows).copy_(*slots[r].input);
      }
    });
  }

  void do_broadcast(at::Tensor& tensor, int root) override {
    Slot s;
    s.op = "broadcast";
    s.input = &tensor;
    s.root = root;
    collective(s, [&](const std::vector<Slot>& slots) {
      for (size_t r = 0; r < slots.size(); ++r) {
        SY_CHECK(slots[r].root == root, "broadcast: rank 0 broadcasts from ", slots[0].root,
                 " but rank ", r, " from ", slots[r].root);
        check_same_tensor("broadcast", slots, r);
      }
      // Only the root's tensor is read, and the root does not write: no private buffer needed.
      if (rank() != root) tensor.copy_(*slots[root].input);
    });
  }

  std::shared_ptr<Communicator> do_split(int color, int key) override {
    Slot s;
    s.op = "split";
    s.color = color;
    s.key = key;
    std::shared_ptr<Group> child;
    int child_rank = 0;
    collective(s, [&](const std::vector<Slot>& slots) {
      // The members of our color, ordered by (key, rank); our position is our new rank.
      std::vector<std::pair<int, int>> order;  // (key, group rank)
      for (int r = 0; r < size(); ++r) {
        if (slots[r].color == color) order.emplace_back(slots[r].key, r);
      }
      std::sort(order.begin(), order.end());
      std::vector<int> members;  // world ranks
      for (size_t i = 0; i < order.size(); ++i) {
        if (order[i].second == rank()) child_rank = static_cast<int>(i);
        members.push_back(group_->members[order[i].second]);
      }
      // The first member to get here creates the group; the last to take it clears the entry.
      std::lock_guard<std::mutex> lock(group_->world->mu);
      auto& entry = group_->splitting[color];
      if (!entry.first) entry.first = std::make_shared<Group>(group_->world, members);
      child = entry.first;
      if (++entry.second == members.size()) group_->splitting.erase(color);
    });
    return std::make_shared<InprocCommunicator>(child, child_rank);
  }

 private:
  template <typename Work> void collective(const Slot& slot, Work&& work) {
    Group& g = *group_;
    {
      std::unique_lock<std::mutex> lock(g.world->mu);
      g.slots[rank()] = slot;
      wait_all(lock, slot.op, /*abortable=*/true);
    }
    std::exception_ptr error;
    try {
      check_same_op(g.slots);
      work(g.slots);
    } catch (...) {
      error = std::current_exception();
    }
    {
      // Not abortable: every member passed the first barrier and reaches this one without
      // waiting on anything, and leaving early would free an input a peer is still reading.
      std::unique_lock<std::mutex> lock(g.world->mu);
      wait_all(lock, slot.op, /*abortable=*/false);
    }
    if (error) std::rethrow_exception(error);
  }

  // The errors name rank 0, not the caller, so that every rank throws the same sentence.
  static void check_same_tensor(const char* op, const std::vector<Slot>& slots, size_t r) {
    const at::Tensor& t = *slots[r].input;
    const at::Tensor& t0 = *slots[0].input;
    SY_CHECK(t.scalar_type() == t0.scalar_type() && t.sizes() == t0.sizes(), op, ": rank ", r,
             " passes ", t.scalar_type(), " ", detail::shape_string(t), " but rank 0 passes ",
             t0.scalar_type(), " ", detail::shape_string(t0));
  }

  void check_same_op(const std::vector<Slot>& slots) const {
    for (size_t r = 1; r < slots.size(); ++r) {
      SY_CHECK(std::string(slots[r].op) == slots[0].op, "collectives out of step: rank 0 called ",
               slots[0].op, " while rank ", r, " called ", slots[r].op,
               " (every rank must call the same collectives in the same order)");
    }
  }

  // One barrier of the group; `lock` holds the world mutex. An abortable barrier throws when the
  // world is aborted or a member has returned from its body (it would never arrive).
  void wait_all(std::unique_lock<std::mutex>& lock, const char* op, bool abortable) {
    Group& g = *group_;
    World& w = *g.world;
    if (abortable && w.aborted) {
      throw AbortedError(str("aborted in ", op, ": ", w.reason), __FILE__, __LINE__);
    }
    const uint64_t generation = g.generation;
    if (++g.arrived == static_cast<int>(g.members.size())) {
      g.arrived = 0;
      ++g.generation;
      w.cv.notify_all();
      return;
    }
    int gone = -1;  // a member that returned from its body: it will never arrive
    w.cv.wait(lock, [&] {
      if (g.generation != generation) return true;
      if (!abortable) return false;
      if (w.aborted) return true;
      for (int m : g.members) {
        if (w.finished[m]) gone = m;
      }
      return gone >= 0;
    });
    if (g.generation != generation) return;
    if (w.aborted) throw AbortedError(str("aborted in ", op, ": ", w.reason), __FILE__, __LINE__);
    SY_THROW("collectives out of step: rank ", gone, " (world) returned while rank ",
             g.members[rank()], " (world) waits in ", op,
             " (every rank must call the same collectives in the same order)");
  }

  std::shared_ptr<Group> group_;
};

// Text of an exception, without LibTorch's backtrace.
std::string describe(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const Error& err) {
    return err.message();
  } catch (const c10::Error& err) {
    return err.what_without_backtrace();
  } catch (const std::exception& err) {
    return err.what();
  } catch (...) {
    return "unknown exception";
  }
}

// Error keeps its location as a const char*; annotated copies need file names that outlive them.
const char* intern(const std::string& s) {
  static std::mutex mu;
  static std::set<std::string> names;
  std::lock_guard<std::mutex> lock(mu);
  return names.insert(s).first->c_str();
}

[[noreturn]] void rethrow_annotated(const std::exception_ptr& e, int rank) {
  try {
    std::rethrow_exception(e);
  } catch (const Error& err) {
    const std::string where = err.where();
    const size_t colon = where.rfind(':');
    int line = 0;
    try {
      line = std::stoi(where.substr(colon + 1));
    } catch (const std::exception&) {
    }
    throw Error(str("rank ", rank, ": ", err.message()), intern(where.substr(0, colon)), line);
  } catch (const c10::Error& err) {
    throw Error(str("rank ", rank, ": ", err.what_without_backtrace()), __FILE__, __LINE__);
  } catch (const std::exception& err) {
    throw Error(str("rank ", rank, ": ", err.what()), __FILE__, __LINE__);
  }
}

}  // namespace

std::vector<CommPtr> make_inproc_communicators(int n) {
  SY_CHECK(n >= 1, "in-process ranks: need at least 1 rank, got ", n);
  std::vector<int> members(static_cast<size_t>(n));
  std::iota(members.begin(), members.end(), 0);
  auto group = std::make_shared<Group>(std::make_shared<World>(n), members);
  std::vector<CommPtr> comms;
  for (int r = 0; r < n; ++r) comms.push_back(std::make_shared<InprocCommunicator>(group, r));
  return comms;
}

void run_inproc_ranks(int n, const std::function<void(CommPtr world)>& body) {
  std::vector<CommPtr> comms = make_inproc_communicators(n);
  std::mutex mu;
  std::exception_ptr first_error, first_abort;
  int first_error_rank = -1, first_abort_rank = -1;
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(n));
  auto run_rank = [&](int r) {
    set_log_rank(r, n);
    try {
      body(comms[r]);
    } catch (const AbortedError&) {
      std::lock_guard<std::mutex> lock(mu);
      if (!first_abort) {
        first_abort = std::current_exception();
        first_abort_rank = r;
      }
    } catch (...) {
      const std::exception_ptr e = std::current_exception();
      {
        std::lock_guard<std::mutex> lock(mu);
        if (!first_error) {
          first_error = e;
          first_error_rank = r;
        }
      }
      comms[r]->abort(str("rank ", r, " failed: ", describe(e)));
    }
    static_cast<InprocCommunicator&>(*comms[r]).mark_finished();
  };
  try {
    for (int r = 0; r < n; ++r) threads.emplace_back(run_rank, r);
  } catch (...) {  // could not start a thread: release the ranks already running, then report
    comms[0]->abort("could not start all in-process ranks");
    for (auto& t : threads) t.join();
    throw;
  }
  for (auto& t : threads) t.join();
  const std::exception_ptr e = first_error ? first_error : first_abort;
  if (!e) return;
  if (n == 1) std::rethrow_exception(e);
  rethrow_annotated(e, first_error ? first_error_rank : first_abort_rank);
}

}  // namespace sy
