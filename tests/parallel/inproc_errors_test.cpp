// Failure paths of in-process ranks: one rank throwing while the others wait in a collective (in
// the world or in a subgroup) must end run_inproc_ranks promptly with that rank's error; argument
// mismatches between ranks must throw the same error on every rank; ranks that call different
// collectives, or return while others wait, must produce an error instead of a hang. Every run is
// guarded by checks::run_ranks, which ends the process if it hangs.
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "mpi/collective_checks.h"
#include "parallel/groups.h"
#include "parallel/inproc_comm.h"

namespace sy {
namespace {

// The sy::Error message that run_inproc_ranks(n, body) throws ("" when it returns normally).
std::string error_of(int n, const std::function<void(CommPtr)>& body) {
  try {
    checks::run_ranks(n, body, /*seconds=*/30);
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

#define EXPECT_CONTAINS(text, part)                          \
  EXPECT_NE(std::string(text).find(part), std::string::npos) \
      << "'" << (text) << "' lacks '" << (part) << "'"

TEST(InprocErrors, RankThrowingReleasesPeersBlockedInAllReduce) {
  std::mutex mu;
  std::vector<std::string> peer_errors;
  const auto start = std::chrono::steady_clock::now();
  const std::string msg = error_of(4, [&](CommPtr world) {
    if (world->rank() == 2) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the others are waiting
      SY_THROW("boom on purpose");
    }
    at::Tensor t = at::ones({4});
    try {
      world->all_reduce(t, ReduceOp::kSum);
    } catch (const Error& e) {
      std::lock_guard<std::mutex> lock(mu);
      peer_errors.push_back(e.message());
      throw;
    }
  });
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(msg, "rank 2: boom on purpose");
  EXPECT_LT(seconds, 5.0);
  ASSERT_EQ(peer_errors.size(), 3u);
  for (const auto& e : peer_errors) EXPECT_CONTAINS(e, "rank 2 failed: boom on purpose");
}

TEST(InprocErrors, RankThrowingReleasesPeersBlockedInSubgroups) {
  const std::string msg = error_of(8, [](CommPtr world) {
    ParallelGroups g = make_groups(world, /*ep_size=*/4);
    if (g.world_rank == 5) throw std::runtime_error("rank five gives up");
    at::Tensor t = at::ones({2});
    g.ep->all_reduce(t, ReduceOp::kSum);
    g.dp->all_reduce(t, ReduceOp::kSum);
    world->barrier();
  });
  EXPECT_EQ(msg, "rank 5: rank five gives up");
}

TEST(InprocErrors, ErrorKeepsItsLocation) {
  try {
    checks::run_ranks(2, [](CommPtr world) {
      if (world->rank() == 1) SY_THROW("located");
      world->barrier();
    });
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.message(), "rank 1: located");
    EXPECT_CONTAINS(e.where(), "inproc_errors_test.cpp:");
  }
}

TEST(InprocErrors, LibTorchErrorBecomesAnnotatedError) {
  const std::string msg = error_of(3, [](CommPtr world) {
    if (world->rank() == 1) at::ones({2}).view({3});  // shape mismatch: c10::Error
    world->barrier();
  });
  EXPECT_EQ(msg.rfind("rank 1: ", 0), 0u) << msg;
}

TEST(InprocErrors, SingleRankRethrowsUnchanged) {
  try {
    checks::run_ranks(1, [](CommPtr) { throw std::invalid_argument("plain"); });
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "plain");
  }
}

TEST(InprocErrors, MismatchedSplitsThrowOnEveryRank) {
  std::mutex mu;
  std::vector<std::string> errors;
  const std::string msg = error_of(3, [&](CommPtr world) {
    const int r = world->rank();
    at::Tensor in = at::zeros({3, 2}), out = at::zeros({3, 2});
    std::vector<int64_t> recv = {1, 1, 1};
    if (r == 1) recv = {2, 0, 1};  // rank 0 sends it 1 row, it expects 2
    try {
      world->all_to_all_single(out, in, {1, 1, 1}, recv);
    } catch (const Error& e) {
      std::lock_guard<std::mutex> lock(mu);
      errors.push_back(e.message());
      throw;
    }
  });
  EXPECT_CONTAINS(msg, "rank 0 sends 1 rows to rank 1, but rank 1 expects 2 rows from rank 0");
  ASSERT_EQ(errors.size(), 3u);  // every rank saw the same mistake, none was left waiting
  for (const auto& e : errors) EXPECT_EQ(e, errors[0]);
}

// A rank's own malformed splits are caught on that rank before it enters the collective (the
// checks of Communicator's public collectives); its peers are released by the abort.
TEST(InprocErrors, SplitsNotMatchingRows) {
  const std::string msg = error_of(2, [](CommPtr world) {
    at::Tensor in = at::zeros({4, 2}), out = at::zeros({4, 2});
    std::vector<int64_t> send = {2, 2};
    if (world->rank() == 1) send = {2, 1};
    world->all_to_all_single(out, in, send, {2, 2});
  });
  EXPECT_EQ(msg, "rank 1: all_to_all_single: send_splits sum to 3, but the tensor has 4 rows");
}

TEST(InprocErrors, EqualSplitsNeedDivisibleRows) {
  const std::string msg = error_of(3, [](CommPtr world) {
    at::Tensor in = at::zeros({4, 2}), out = at::zeros({4, 2});
    world->all_to_all_single(out, in, {}, {});
  });
  EXPECT_CONTAINS(msg, "4 rows are not divisible by 3 ranks");
}

TEST(InprocErrors, RowShapesMustMatch) {
  const std::string msg = error_of(2, [](CommPtr world) {
    const int64_t width = world->rank() == 0 ? 2 : 3;
    at::Tensor in = at::zeros({2, width}), out = at::zeros({2, width});
    world->all_to_all_single(out, in, {}, {});
  });
  EXPECT_CONTAINS(msg, "row shapes differ");
}

TEST(InprocErrors, AllReduceDtypeMismatch) {
  const std::string msg = error_of(2, [](CommPtr world) {
    at::Tensor t = at::ones({3}, world->rank() == 0 ? at::kDouble : at::kFloat);
    world->all_reduce(t, ReduceOp::kSum);
  });
  EXPECT_CONTAINS(msg, "all_reduce: rank 1 passes Float");
}

TEST(InprocErrors, DifferentCollectivesAreReported) {
  const std::string msg = error_of(3, [](CommPtr world) {
    at::Tensor t = at::ones({1});
    if (world->rank() == 2) {
      world->broadcast(t, 0);
    } else {
      world->all_reduce(t, ReduceOp::kSum);
    }
  });
  EXPECT_CONTAINS(
      msg, "collectives out of step: rank 0 called all_reduce while rank 2 called broadcast");
}

// barrier() is a one-element all-reduce: to the out-of-step check it is one.
TEST(InprocErrors, BarrierIsAnAllReduce) {
  const std::string msg = error_of(2, [](CommPtr world) {
    if (world->rank() == 1) {
      world->barrier();
    } else {
      at::Tensor t = at::ones({1});
      world->broadcast(t, 0);
    }
  });
  EXPECT_CONTAINS(
      msg, "collectives out of step: rank 0 called broadcast while rank 1 called all_reduce");
}

TEST(InprocErrors, RankReturningWhilePeersWaitIsReported) {
  const std::string msg = error_of(3, [](CommPtr world) {
    if (world->rank() == 0) return;
    world->barrier();
  });
  EXPECT_CONTAINS(msg, "rank 0 (world) returned while rank");
}

TEST(InprocErrors, WorldsAreIndependent) {
  EXPECT_NE(error_of(4,
                     [](CommPtr w) {
                       SY_CHECK(w->rank() != 3, "no");
                       w->barrier();
                     }),
            "");
  int64_t wrong = -1;
  checks::run_ranks(4, [&](CommPtr w) {
    const int64_t v = checks::check_all_to_all_uneven(*w, at::kLong);
    if (w->rank() == 0) wrong = v;
  });
  EXPECT_EQ(wrong, 0);
  EXPECT_THROW(run_inproc_ranks(0, [](CommPtr) {}), Error);
}

TEST(InprocErrors, MakeGroupsRejectsNonDivisorOnEveryRank) {
  std::mutex mu;
  std::vector<std::string> errors;
  const std::string msg = error_of(4, [&](CommPtr world) {
    try {
      make_groups(world, /*ep_size=*/3);
    } catch (const Error& e) {
      std::lock_guard<std::mutex> lock(mu);
      errors.push_back(e.message());
      throw;
    }
  });
  EXPECT_CONTAINS(msg, "parallel.ep_size (3) must divide the world size (4)");
  ASSERT_EQ(errors.size(), 4u);
  for (const auto& e : errors) EXPECT_EQ(e, "parallel.ep_size (3) must divide the world size (4)");
}

}  // namespace
}  // namespace sy
