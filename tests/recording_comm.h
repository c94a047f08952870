// A Communicator that passes every collective on to another one and records it: the operation
// and, for all-to-alls, the resolved split lists. Communicators split from it record into the
// same log, so a test sees what a decorator (the two-level exchange) or a layer asked of the
// communicators below it. One log per rank; not for use from several threads at once.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "parallel/communicator.h"

namespace sy::testing {

class RecordingComm final : public Communicator {
 public:
  struct Call {
    std::string op;                   // "all_to_all", "all_reduce", "all_gather", "broadcast"
    std::vector<int64_t> send, recv;  // all_to_all only
  };
  using Log = std::vector<Call>;

  explicit RecordingComm(CommPtr inner, std::shared_ptr<Log> log = std::make_shared<Log>())
      : Communicator(inner->rank(), inner->size(), inner->backend()),
        inner_(std::move(inner)),
        log_(std::move(log)) {}

  const Log& log() const { return *log_; }
  void clear() { log_->clear(); }
  // The recorded calls of one operation, in order.
  std::vector<Call> calls(const std::string& op) const {
    std::vector<Call> out;
    for (const Call& c : *log_) {
      if (c.op == op) out.push_back(c);
    }
    return out;
  }

  void abort(const std::string& reason) override { inner_->abort(reason); }

 protected:
  void do_all_to_all(at::Tensor& out, const at::Tensor& in, const std::vector<int64_t>& send,
                     const std::vector<int64_t>& recv) override {
    log_->push_back({"all_to_all", send, recv});
    inner_->all_to_all_single(out, in, send, recv);
  }
  void do_all_reduce(at::Tensor& t, ReduceOp op) override {
    log_->push_back({"all_reduce", {}, {}});
    inner_->all_reduce(t, op);
  }
  void do_all_gather(at::Tensor& out, const at::Tensor& in) override {
    log_->push_back({"all_gather", {}, {}});
    inner_->all_gather(out, in);
  }
  void do_broadcast(at::Tensor& t, int root) override {
    log_->push_back({"broadcast", {}, {}});
    inner_->broadcast(t, root);
  }
  std::shared_ptr<Communicator> do_split(int color, int key) override {
    return std::make_shared<RecordingComm>(inner_->split(color, key), log_);
  }

 private:
  CommPtr inner_;
  std::shared_ptr<Log> log_;
};

}  // namespace sy::testing
