// The MPI backend under mpirun (run by run_mpi_gtest.sh on 2 and 4 ranks; label "mpi"): the same
// collective checks as the in-process ranks (collective_checks.h), plus MPI specifics (runtime
// topology, owned communicators, wide rows, error reporting). Outside mpirun every test skips.
//
// This binary has its own main: MPI comes up through MpiRuntime, only rank 0 prints the usual
// GoogleTest output (other ranks print their own failures, prefixed with their rank), and every
// rank returns the job-wide result so that mpirun fails when any rank failed. Tests call the same
// collectives on every rank whatever the results (EXPECT, never ASSERT, after a collective), and
// reduce their "#wrong" counts over the job so rank 0 reports other ranks' failures too.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "collective_checks.h"
#include "common/log.h"
#include "parallel/hierarchical_comm.h"
#include "parallel/mpi_comm.h"
#include "parallel/runtime.h"
#include "train/trainer.h"
#include "verify/verify.h"
#ifdef SWITCHYARD_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include "parallel/nccl_comm.h"
#endif

namespace sy {
namespace {

MpiRuntime* g_runtime = nullptr;

#define REQUIRE_MPI()                                                          \
  if (!g_runtime->mpi_active()) {                                              \
    GTEST_SKIP() << "not launched by mpirun (use tests/mpi/run_mpi_gtest.sh)"; \
  }

std::shared_ptr<MpiCommunicator> g_mpi_world;  // MPI_COMM_WORLD, also for a world of one

// The tests exercise the MPI backend even on one rank, where MpiRuntime::world() is a self
// communicator.
CommPtr world() { return g_mpi_world; }

// Sum of every rank's count.
int64_t job_total(int64_t wrong) {
  at::Tensor t = at::full({1}, wrong, at::kLong);
  world()->all_reduce(t, ReduceOp::kSum);
  return t.item<int64_t>();
}

TEST(MpiRuntime, TopologyMatchesTheLauncher) {
  REQUIRE_MPI();
  EXPECT_TRUE(MpiRuntime::launched_by_mpi());
  EXPECT_EQ(g_runtime->world()->backend(), g_runtime->world_size() == 1 ? "self" : "mpi");
  EXPECT_EQ(world()->backend(), "mpi");
  const char* size = std::getenv("OMPI_COMM_WORLD_SIZE");
  const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");
  if (size != nullptr && rank != nullptr) {
    EXPECT_EQ(g_runtime->world_size(), std::atoi(size));
    EXPECT_EQ(g_runtime->world_rank(), std::atoi(rank));
  }
  EXPECT_EQ(world()->size(), g_runtime->world_size());
  EXPECT_EQ(world()->rank(), g_runtime->world_rank());
  // Local ranks: all-gathered, they number each node's ranks 0..local_size-1.
  const auto local = checks::gather_ints(*world(), g_runtime->local_rank());
  int64_t on_my_node = 0;
  for (int64_t l : local) on_my_node += l == 0;
  EXPECT_GE(on_my_node, 1);
  EXPECT_LT(g_runtime->local_rank(), g_runtime->local_size());
  EXPECT_LE(g_runtime->local_size(), g_runtime->world_size());
}

TEST(MpiComm, AllToAllEqualSplits) {
  REQUIRE_MPI();
  Communicator& c = *world();
  const int64_t wrong = checks::check_all_to_all_equal(c, 3, at::kLong) +
                        checks::check_all_to_all_equal(c, 2, at::kFloat) +
                        checks::check_all_to_all_equal(c, 0, at::kFloat);
  EXPECT_EQ(wrong, 0) << "on rank " << c.rank();
  EXPECT_EQ(job_total(wrong), 0);
}

TEST(MpiComm, AllToAllUnevenSplitsWithZeroRows) {
  REQUIRE_MPI();
  Communicator& c = *world();
  const int64_t wrong = checks::check_all_to_all_uneven(c, at::kLong) +
                        checks::check_all_to_all_uneven(c, at::kDouble);
  EXPECT_EQ(wrong, 0) << "on rank " << c.rank();
  EXPECT_EQ(job_total(wrong), 0);
}

// The two-level all-to-all (parallel.a2a hierarchical) with the job's ranks as nodes of 2 (or
// of 1 on an odd world): row for row the flat exchange's.
TEST(MpiComm, TwoLevelAllToAllEqualsFlat) {
  REQUIRE_MPI();
  const int per_node = world()->size() % 2 == 0 ? 2 : 1;
  const CommPtr c = make_hierarchical(world(), per_node, "world");
  int64_t wrong = checks::check_all_to_all_equal(*c, 3, at::kLong) +
                  checks::check_all_to_all_uneven(*c, at::kDouble);
  for (uint32_t seed = 1; seed <= 3; ++seed) {
    wrong += checks::check_all_to_all_random(*c, seed, 5, at::kFloat);
  }
  EXPECT_EQ(wrong, 0) << "on rank " << c->rank();
  EXPECT_EQ(job_total(wrong), 0);
}

// Rows of 1 MiB: counts are in rows of a derived datatype, not in bytes.
TEST(MpiComm, AllToAllWideRows) {
  REQUIRE_MPI();
  Communicator& c = *world();
  const int64_t n = c.size(), width = int64_t{1} << 18;
  at::Tensor in =
      at::arange(n * 2, at::kFloat).view({n * 2, 1}).expand({n * 2, width}).contiguous() +
      1000.0f * c.rank();
  at::Tensor out = at::empty_like(in);
  c.all_to_all_single(out, in, {}, {});
  at::Tensor want = at::empty_like(in);
  for (int64_t src = 0; src < n; ++src) {
    for (int64_t i = 0; i < 2; ++i) want[src * 2 + i].fill_(1000.0f * src + c.rank() * 2 + i);
  }
  const int64_t wrong = out.ne(want).sum().item<int64_t>();
  EXPECT_EQ(job_total(wrong), 0);
}

TEST(MpiComm, AllReduceClosedFormsAndBitwiseEqual) {
  REQUIRE_MPI();
  const int64_t wrong = checks::check_all_reduce(*world(), /*exact_rank_order=*/false);
  EXPECT_EQ(wrong, 0) << "on rank " << world()->rank();
  EXPECT_EQ(job_total(wrong), 0);
}

TEST(MpiComm, AllGather) {
  REQUIRE_MPI();
  const int64_t wrong = checks::check_all_gather(*world());
  EXPECT_EQ(job_total(wrong), 0);
}

TEST(MpiComm, BroadcastFromEveryRoot) {
  REQUIRE_MPI();
  const int64_t wrong = checks::check_broadcast(*world());
  EXPECT_EQ(job_total(wrong), 0);
}

TEST(MpiComm, SplitAndBarrier) {
  REQUIRE_MPI();
  const int64_t wrong = checks::check_split(*world());
  for (int i = 0; i < 5; ++i) world()->barrier();
  EXPECT_EQ(job_total(wrong), 0);
}

TEST(MpiComm, OwnsADuplicatedCommunicator) {
  REQUIRE_MPI();
  MPI_Comm dup = MPI_COMM_NULL;
  SY_MPI(MPI_Comm_dup(MPI_COMM_WORLD, &dup));
  int64_t wrong = 0;
  {
    auto owned = std::make_shared<MpiCommunicator>(dup);  // freed at the end of this scope
    wrong += checks::check_all_to_all_uneven(*owned, at::kFloat);
    wrong += checks::check_split(*owned);
  }
  EXPECT_EQ(job_total(wrong), 0);
}

TEST(MpiGroups, EveryDivisorOfTheWorld) {
  REQUIRE_MPI();
  const int n = world()->size();
  for (int ep = 0; ep <= n; ++ep) {
    if (ep != 0 && n % ep != 0) continue;
    const int64_t wrong = checks::check_groups(world(), ep);
    EXPECT_EQ(job_total(wrong), 0) << "ep_size " << ep;
  }
}

// Mistakes every rank makes alike are caught before any MPI call, so no rank is left waiting.
TEST(MpiErrors, LocalChecksThrowBeforeCommunicating) {
  REQUIRE_MPI();
  Communicator& c = *world();
  const int n = c.size();
  at::Tensor bf16 = at::ones({4}, at::kBFloat16);
  EXPECT_THROW(c.all_reduce(bf16, ReduceOp::kSum), Error);
  at::Tensor strided = at::zeros({3, 2}).t();
  EXPECT_THROW(c.all_reduce(strided, ReduceOp::kSum), Error);
  at::Tensor in = at::zeros({2 * n, 3}), out = at::zeros({2 * n, 3});
  std::vector<int64_t> short_splits(n, 1);
  EXPECT_THROW(c.all_to_all_single(out, in, short_splits, {}), Error);
  at::Tensor odd = at::zeros({2 * n + 1, 3});
  EXPECT_THROW(c.all_to_all_single(out, odd, {}, {}), Error);
  EXPECT_THROW(c.broadcast(in, n), Error);
  EXPECT_THROW(make_groups(world(), n + 1), Error);
  EXPECT_EQ(job_total(0), 0);  // everyone is still in step
}

TEST(MpiErrors, FailedCallNamesTheCallAndMpiReason) {
  REQUIRE_MPI();
  auto* mpi = dynamic_cast<MpiCommunicator*>(world().get());
  ASSERT_NE(mpi, nullptr);
  int value = 0;
  try {
    SY_MPI(MPI_Bcast(&value, 1, MPI_INT, /*root=*/mpi->size() + 5, mpi->mpi_comm()));
    ADD_FAILURE() << "an invalid root should fail";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("MPI_Bcast"), std::string::npos) << e.message();
    EXPECT_NE(e.message().find("failed: "), std::string::npos) << e.message();
  }
  EXPECT_EQ(job_total(0), 0);
}

// Checks the harness itself: with SWITCHYARD_MPI_TEST_FAIL_RANK=r set, this test fails on rank r
// only, and the job must still fail (mpirun exits non-zero) and report it. Skips otherwise.
TEST(MpiHarness, FailsOnRequestedRank) {
  REQUIRE_MPI();
  const char* fail_rank = std::getenv("SWITCHYARD_MPI_TEST_FAIL_RANK");
  if (fail_rank == nullptr) GTEST_SKIP() << "SWITCHYARD_MPI_TEST_FAIL_RANK not set";
  const int64_t wrong = world()->rank() == std::atoi(fail_rank) ? 1 : 0;
  EXPECT_EQ(wrong, 0) << "on rank " << world()->rank() << " (requested failure)";
}

// Note [EP invariance] through the MPI backend: the MoE layer on this job's ranks (CPU) equals
// the single-process layer, for top-1 and top-2, with drops, without, and dropless, EP and EP x DP.
Config small_moe_config(const std::string& router, int64_t top_k, double capacity_factor,
                        int64_t ep_size) {
  Config cfg;
  cfg.model.d_model = 16;
  cfg.model.d_ff = 32;
  cfg.model.block_size = 16;
  cfg.data.batch_size = 4;  // 64 tokens per rank
  cfg.moe.num_experts = 8;
  cfg.moe.router = parse_choice_or_throw<RouterKind>(router, "router");
  cfg.moe.top_k = top_k;
  cfg.moe.capacity_factor = capacity_factor;
  cfg.moe.min_capacity = 1;
  cfg.parallel.ep_size = ep_size;
  return cfg;
}

int64_t verify_cases(const CommPtr& w, const c10::Device& device) {
  const int n = w->size();
  int64_t failed = 0;
  for (int64_t ep : {int64_t{0}, int64_t{n > 1 && n % 2 == 0 ? n / 2 : n}}) {
    for (double cf : {0.5, 4.0, 0.0}) {
      for (int64_t k : {1, 2}) {
        Config cfg = small_moe_config(k == 1 ? "switch" : "topk", k, cf, ep);
        VerifyReport rep = verify_expert_parallel(cfg, w, device);
        if (!rep.ok()) {
          ++failed;
          if (w->rank() == 0) {
            std::fprintf(stderr, "ep_size %ld, top-%ld, capacity factor %g:\n%s",
                         static_cast<long>(ep), static_cast<long>(k), cf, rep.table().c_str());
          }
        }
        if (cf == 0.5) {
          EXPECT_GT(rep.dropped, 0);
        } else {
          EXPECT_EQ(rep.dropped, 0);  // capacity 4x the balanced load, or dropless
        }
        EXPECT_EQ(rep.choices, n * 64 * k);
      }
    }
  }
  return failed;
}

TEST(MpiVerify, ExpertParallelLayerEqualsSingleProcess) {
  REQUIRE_MPI();
  EXPECT_EQ(verify_cases(world(), at::kCPU), 0);
}

// The NCCL backend (CUDA builds with one GPU per rank of this node): the shared collective checks
// through a staging shim (CPU tensors in and out, NCCL on the GPU in between), and the MoE layer
// on GPUs against the single-process CPU reference.
#ifdef SWITCHYARD_CUDA
class StagedNccl final : public Communicator {
 public:
  explicit StagedNccl(CommPtr nccl)
      : Communicator(nccl->rank(), nccl->size(), "nccl"), nccl_(std::move(nccl)) {}
  void abort(const std::string& reason) override { nccl_->abort(reason); }

 protected:
  void do_all_to_all(at::Tensor& output, const at::Tensor& input, const std::vector<int64_t>& send,
                     const std::vector<int64_t>& recv) override {
    at::Tensor in = gpu(input), out = gpu(output);
    nccl_->all_to_all_single(out, in, send, recv);
    output.copy_(out.cpu());
  }
  void do_all_reduce(at::Tensor& t, ReduceOp op) override {
    staged(t, [&](at::Tensor& g) { nccl_->all_reduce(g, op); });
  }
  void do_all_gather(at::Tensor& output, const at::Tensor& input) override {
    at::Tensor out = gpu(output);
    nccl_->all_gather(out, gpu(input));
    output.copy_(out.cpu());
  }
  void do_broadcast(at::Tensor& t, int root) override {
    staged(t, [&](at::Tensor& g) { nccl_->broadcast(g, root); });
  }
  std::shared_ptr<Communicator> do_split(int color, int key) override {
    return std::make_shared<StagedNccl>(nccl_->split(color, key));
  }

 private:
  static at::Tensor gpu(const at::Tensor& t) { return t.to(current_cuda_device()).contiguous(); }
  template <typename F> void staged(at::Tensor& t, F f) {
    at::Tensor g = gpu(t);
    f(g);
    t.copy_(g.cpu());
  }
  CommPtr nccl_;
};

// Null unless every rank of the job has a GPU of its own (the same answer on every rank).
CommPtr nccl_world_or_null() {
  int ok = torch::cuda::is_available() &&
                   static_cast<int>(torch::cuda::device_count()) >= g_runtime->local_size()
               ? 1
               : 0;
  SY_MPI(MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
  if (!ok) return nullptr;
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(g_runtime->local_rank()));
  static CommPtr nccl = make_nccl_communicator(world());
  return nccl;
}

#define REQUIRE_NCCL(var)                                                 \
  REQUIRE_MPI();                                                          \
  CommPtr var = nccl_world_or_null();                                     \
  if (!var)                                                               \
    GTEST_SKIP() << "needs one GPU per rank (" << g_runtime->local_size() \
                 << " ranks on this node, " << torch::cuda::device_count() << " GPUs)";

TEST(Nccl, CollectiveChecks) {
  REQUIRE_NCCL(nccl);
  StagedNccl c(nccl);
  int64_t wrong = checks::check_all_to_all_equal(c, 3, at::kLong) +
                  checks::check_all_to_all_equal(c, 2, at::kFloat) +
                  checks::check_all_to_all_uneven(c, at::kFloat) +
                  checks::check_all_to_all_uneven(c, at::kBFloat16) +
                  checks::check_all_reduce(c, /*exact_rank_order=*/false) +
                  checks::check_all_gather(c) + checks::check_broadcast(c) + checks::check_split(c);
  EXPECT_EQ(wrong, 0) << "on rank " << c.rank();
  EXPECT_EQ(job_total(wrong), 0);
}

TEST(Nccl, ExpertParallelLayerOnGpusEqualsCpuReference) {
  REQUIRE_NCCL(nccl);
  EXPECT_EQ(verify_cases(nccl, current_cuda_device()), 0);
}
#else
TEST(Nccl, CollectiveChecks) {
  GTEST_SKIP() << "CPU build: LibTorch without CUDA, so no NCCL backend";
}
#endif

// Ranks other than 0 print only their failures, prefixed with the rank.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (result.failed()) {
      std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                   result.file_name() ? result.file_name() : "?", result.line_number(),
                   result.summary());
    }
  }

 private:
  int rank_;
};

// After each test, rank 0 names the ranks on which it failed (its own summary counts only its own
// results). Every rank runs every test, so this gather stays in step.
class JobWideResults : public ::testing::EmptyTestEventListener {
 public:
  void OnTestEnd(const ::testing::TestInfo& info) override {
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int failed = info.result()->Failed() ? 1 : 0;
    std::vector<int> all(static_cast<size_t>(size), 0);
    MPI_Gather(&failed, 1, MPI_INT, all.data(), 1, MPI_INT, 0, MPI_COMM_WORLD);
    std::string ranks;
    for (int r = 0; r < size; ++r) {
      if (all[r]) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
    }
    if (rank == 0 && !ranks.empty()) {
      std::fprintf(stderr, "[  FAILED  ] %s.%s on rank(s) %s of %d\n", info.test_suite_name(),
                   info.name(), ranks.c_str(), size);
    }
  }
};

}  // namespace
}  // namespace sy

int main(int argc, char** argv) {
  sy::MpiRuntime runtime(&argc, &argv);
  sy::g_runtime = &runtime;
  sy::set_log_rank(runtime.world_rank(), runtime.world_size());
  ::testing::InitGoogleTest(&argc, argv);
  torch::set_num_threads(1);
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (runtime.world_rank() != 0) {
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new sy::RankFailurePrinter(runtime.world_rank()));
  }
  if (runtime.mpi_active()) {
    sy::g_mpi_world = std::make_shared<sy::MpiCommunicator>(MPI_COMM_WORLD);
    listeners.Append(new sy::JobWideResults);
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  sy::g_mpi_world.reset();
  if (runtime.mpi_active()) {
    MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (runtime.world_rank() == 0 && failed) {
      std::fprintf(stderr, "test_parallel_mpi: failures on at least one of %d ranks\n",
                   runtime.world_size());
    }
  }
  return failed;
}
