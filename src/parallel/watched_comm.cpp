// Watched communicators (watch_communicator, watched_split in watchdog.h): every collective of the
// wrapped communicator registered in the watchdog's in-flight registry while it runs (until its
// device work completes, on NCCL), and with parallel.check_splits every all-to-all's splits
// cross-checked between ranks first. The registry and the watchdog thread are in watchdog.cpp.
#include <algorithm>
#include <functional>
#include <random>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>
#include <unistd.h>

#include "common/error.h"
#include "common/log.h"
#include "parallel/heartbeat.h"
#include "parallel/watchdog.h"
#include "parallel/watchdog_internal.h"

namespace sy {
namespace {

// True when every entry of `v` is the same (split lists of an equal-split exchange).
bool uniform(const std::vector<int64_t>& v) {
  return std::adjacent_find(v.begin(), v.end(), std::not_equal_to<int64_t>()) == v.end();
}

// Registers one operation for the lifetime of the object (nothing without a timeout). After the
// host call, enqueued() keeps it registered until the device work completes (NCCL).
class InFlightScope {
 public:
  // `send` and `recv`: an all-to-all's resolved splits, shown as "equal splits" in the dump when
  // every rank gets the same number of rows (as with empty split lists).
  InFlightScope(double timeout_s, const RankContext& ctx, const std::string& group, int group_size,
                const char* op, const std::vector<int64_t>* send = nullptr,
                const std::vector<int64_t>* recv = nullptr,
                std::shared_ptr<const std::vector<int>> members = nullptr,
                bool members_in_process = false,
                const std::shared_ptr<detail::CommCount>& count = nullptr)
      : active_(timeout_s > 0), op_(op) {
    if (!active_) return;
    detail::OpRecord e;
    e.world_rank = ctx.world_rank();
    e.world_size = ctx.world_size();
    e.step = ctx.step();
    e.where = current_collective_label();
    e.group = group;
    e.group_size = group_size;
    e.members = std::move(members);
    e.members_in_process = members_in_process;
    e.op = op;
    if (count != nullptr) {
      e.comm = count;
      e.seq = ++count->begun;
    }
    e.has_splits = send != nullptr;
    if (send && recv && !(uniform(*send) && uniform(*recv))) {
      e.send = *send;
      e.recv = *recv;
    }
    e.timeout_s = timeout_s;
    id_ = detail::begin_in_flight(std::move(e));
  }
  ~InFlightScope() {
    if (active_) detail::end_in_flight(id_);
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
    if (detail::end_in_flight_when(id_, std::move(c))) active_ = false;  // the watchdog removes it
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

const CommPtr& require_inner(const CommPtr& inner, const std::string& name) {
  SY_CHECK(inner != nullptr, "watch_communicator: no communicator to watch (group ", name, ")");
  return inner;
}

class WatchedCommunicator final : public Communicator {
 public:
  // `members`: the group's world ranks by group rank; empty: the identity when the group is
  // the world (as large, the same rank), otherwise not known.
  WatchedCommunicator(CommPtr inner, std::string name, std::shared_ptr<RankContext> ctx,
                      const WatchOptions& opt, std::vector<int> members = {})
      : Communicator(require_inner(inner, name)->rank(), require_inner(inner, name)->size(),
                     require_inner(inner, name)->backend(),
                     barrier_device_of(*require_inner(inner, name))),
        inner_(std::move(inner)),
        name_(std::move(name)),
        ctx_(std::move(ctx)),
        opt_(opt) {
    if (!ctx_) ctx_ = std::make_shared<RankContext>(rank(), size());
    if (members.empty() && size() == ctx_->world_size() && rank() == ctx_->world_rank()) {
      for (int r = 0; r < size(); ++r) members.push_back(r);
    }
    members_ = std::make_shared<const std::vector<int>>(std::move(members));
    in_process_ = backend() == "inproc";
    async_ = backend() == "nccl";
    if (opt_.timeout_s > 0) {
      watchdog_ = detail::acquire_watchdog();
      count_ = detail::register_comm(ctx_->world_rank(), name_, *members_);
    }
    detail::abort_on_timeout(inner_);
  }

  CommPtr split_named(int color, int key, const std::string& child_name) {
    CommPtr child;
    {
      InFlightScope scope(opt_.timeout_s, *ctx_, name_, size(), "split", nullptr, nullptr, members_,
                          in_process_, count_);
      child = inner_->split(color, key);
    }
    // The child's world ranks, for the dump (Note [Missing ranks]): collective over the child,
    // which every member has just created.
    std::vector<int> members;
    if (opt_.timeout_s > 0 && child->size() > 1) {
      const at::Tensor mine = at::full({1}, static_cast<int64_t>(ctx_->world_rank()), at::kLong)
                                  .to(barrier_device_of(*child));
      at::Tensor all = at::empty({child->size()}, mine.options());
      child->all_gather(all, mine);
      all = all.to(at::kCPU).contiguous();
      for (int64_t i = 0; i < all.numel(); ++i) {
        members.push_back(static_cast<int>(all.data_ptr<int64_t>()[i]));
      }
    }
    return std::make_shared<WatchedCommunicator>(std::move(child), child_name, ctx_, opt_,
                                                 std::move(members));
  }

  // Where `c` takes the one-element tensors of a barrier (its device).
  static c10::Device device_of(const Communicator& c) { return barrier_device_of(c); }

  void abort(const std::string& reason) override {
    signal_fault(reason);
    inner_->abort(reason);
  }

 protected:
  void do_all_to_all(at::Tensor& output, const at::Tensor& input,
                     const std::vector<int64_t>& send_splits,
                     const std::vector<int64_t>& recv_splits) override {
    exchange(output, input, send_splits, recv_splits, /*equal=*/false);
  }
  void do_all_to_all_equal(at::Tensor& output, const at::Tensor& input,
                           const std::vector<int64_t>& send_splits,
                           const std::vector<int64_t>& recv_splits) override {
    exchange(output, input, send_splits, recv_splits, /*equal=*/true);
  }

  void do_all_reduce(at::Tensor& tensor, ReduceOp op) override {
    InFlightScope scope(opt_.timeout_s, *ctx_, name_, size(), "all_reduce", nullptr, nullptr,
                        members_, in_process_, count_);
    inner_->all_reduce(tensor, op);
    scope.enqueued(async_, tensor);
  }

  void do_all_gather(at::Tensor& output, const at::Tensor& input) override {
    InFlightScope scope(opt_.timeout_s, *ctx_, name_, size(), "all_gather", nullptr, nullptr,
                        members_, in_process_, count_);
    inner_->all_gather(output, input);
    scope.enqueued(async_, output);
  }

  void do_broadcast(at::Tensor& tensor, int root) override {
    InFlightScope scope(opt_.timeout_s, *ctx_, name_, size(), "broadcast", nullptr, nullptr,
                        members_, in_process_, count_);
    inner_->broadcast(tensor, root);
    scope.enqueued(async_, tensor);
  }

  std::shared_ptr<Communicator> do_split(int color, int key) override {
    return split_named(color, key, name_ + "/split");
  }

 private:
  // equal: the caller's empty split lists are passed on as such (do_all_to_all_equal).
  void exchange(at::Tensor& output, const at::Tensor& input, const std::vector<int64_t>& send,
                const std::vector<int64_t>& recv, bool equal) {
    InFlightScope scope(opt_.timeout_s, *ctx_, name_, size(), "all_to_all_single", &send, &recv,
                        members_, in_process_, count_);
    if (opt_.check_splits) check_splits(input, send, recv);
    if (equal) {
      inner_->all_to_all_single(output, input, {}, {});
    } else {
      inner_->all_to_all_single(output, input, send, recv);
    }
    scope.enqueued(async_, output);
  }

  // parallel.check_splits: every rank all-gathers [world rank, row width, dtype, send splits,
  // recv splits] and checks the whole table in the same order, so every rank throws the same
  // error. A rank whose own arguments are malformed has already thrown (Communicator's checks,
  // before the exchange; its peers are then released by the job's abort).
  void check_splits(const at::Tensor& input, const std::vector<int64_t>& send,
                    const std::vector<int64_t>& recv) {
    const int n = size();
    const std::string& label = current_collective_label();
    const std::string where = label.empty() ? std::string("(no label)") : label;
    const std::string what =
        str("all_to_all_single at '", where, "' (group ", name_, ", parallel.check_splits)");
    std::vector<int64_t> mine = {ctx_->world_rank(), row_width(input),
                                 static_cast<int64_t>(input.scalar_type())};
    mine.insert(mine.end(), send.begin(), send.end());
    mine.insert(mine.end(), recv.begin(), recv.end());
    const int64_t cols = static_cast<int64_t>(mine.size());
    at::Tensor local =
        at::tensor(mine, at::TensorOptions().dtype(at::kLong)).view({1, cols}).to(input.device());
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
  std::shared_ptr<const std::vector<int>> members_;  // world ranks by group rank; empty: unknown
  bool in_process_ = false;                          // every member is a thread of this process
  bool async_ = false;
  std::shared_ptr<detail::Watchdog> watchdog_;  // keeps the thread running while this lives
  std::shared_ptr<detail::CommCount> count_;    // collectives begun, for the heartbeat
};

}  // namespace

CommPtr watch_communicator(CommPtr inner, std::string group_name, std::shared_ptr<RankContext> ctx,
                           const WatchOptions& opt) {
  return std::make_shared<WatchedCommunicator>(std::move(inner), std::move(group_name),
                                               std::move(ctx), opt);
}

CommPtr watched_split(const CommPtr& comm, int color, int key, const std::string& group_name) {
  SY_CHECK(comm != nullptr, "watched_split: no communicator");
  if (auto* w = dynamic_cast<WatchedCommunicator*>(comm.get()))
    return w->split_named(color, key, group_name);
  return comm->split(color, key);
}

std::shared_ptr<HeartbeatHandle> start_heartbeat(const CommPtr& world,
                                                 std::shared_ptr<RankContext> ctx,
                                                 const std::string& dir) {
  SY_CHECK(world != nullptr && ctx != nullptr, "start_heartbeat: no world communicator or context");
  // The job's id, rank 0's, so that every rank tells this job's files from an earlier job's.
  uint64_t job = 0;
  if (world->rank() == 0) {
    std::random_device device;
    job = (static_cast<uint64_t>(device()) << 32) ^ device() ^
          static_cast<uint64_t>(detail::wall_ms()) ^ (static_cast<uint64_t>(::getpid()) << 16);
  }
  at::Tensor id = at::full({1}, static_cast<int64_t>(job), at::kLong)
                      .to(WatchedCommunicator::device_of(*world));
  world->broadcast(id, 0);
  job = static_cast<uint64_t>(id.to(at::kCPU).item<int64_t>());
  return detail::enable_heartbeat(dir, job, std::move(ctx));
}

}  // namespace sy
