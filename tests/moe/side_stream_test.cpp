// start_beside / join (moe/side_stream.h): work started beside the current stream gives the
// same values and gradients as the same work run in place, several pieces may be in flight at
// once (the chunked all-to-all keeps up to moe.a2a_chunks), and an input the caller dropped stays
// valid until the join. On the CPU the work runs in place; on CUDA (skipped without a device) it
// runs on the communication stream or a pool stream while the current stream does other work.
#include <vector>

#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moe/moe_test_util.h"
#include "moe/side_stream.h"

namespace sy {
namespace {

using testing_moe::seeded_randn;

// A few GEMMs, long enough on a GPU that the current stream's work overlaps them.
at::Tensor work(const at::Tensor& in, const at::Tensor& w) {
  at::Tensor h = in;
  for (int i = 0; i < 4; ++i) h = at::tanh(h.matmul(w));
  return h;
}

void check_values_and_gradients(const c10::Device& device) {
  const at::Tensor x0 = seeded_randn({512, 256}, 1).to(device, at::kFloat);
  const at::Tensor w0 = (seeded_randn({256, 256}, 2) / 16).to(device, at::kFloat);
  const at::Tensor g = seeded_randn({512, 256}, 3).to(device, at::kFloat);

  // In place, in the same four pieces (a GEMM over fewer rows may round differently).
  const at::Tensor xa = x0.clone().requires_grad_(true), wa = w0.clone().requires_grad_(true);
  std::vector<at::Tensor> pieces;
  for (int64_t j = 0; j < 4; ++j) pieces.push_back(work(xa.narrow(0, 128 * j, 128), wa));
  const at::Tensor ya = at::cat(pieces, 0) + xa * 2;
  ya.backward(g);

  // Three pieces in flight on the communication stream, one on a pool stream, while the current
  // stream computes xb * 2.
  const at::Tensor xb = x0.clone().requires_grad_(true), wb = w0.clone().requires_grad_(true);
  std::vector<Pending> pending;
  for (int64_t j = 0; j < 3; ++j) {
    pending.push_back(start_beside(xb.narrow(0, 128 * j, 128), SideStream::kComm,
                                   [&](const at::Tensor& in) { return work(in, wb); }));
  }
  Pending last = start_beside(xb.narrow(0, 384, 128), SideStream::kCompute,
                              [&](const at::Tensor& in) { return work(in, wb); });
  const at::Tensor doubled = xb * 2;
  std::vector<at::Tensor> parts;
  for (Pending& p : pending) parts.push_back(join(std::move(p)));
  parts.push_back(join(std::move(last)));
  const at::Tensor yb = at::cat(parts, 0) + doubled;
  yb.backward(g);

  // The same kernels on the same rows: on the CPU, equal values and input gradients; cuBLAS
  // promises bitwise equal results across streams only with CUBLAS_WORKSPACE_CONFIG set, so on
  // CUDA they agree to fp32 rounding. The weight gradient sums the four pieces' contributions, in
  // an order autograd picks.
  if (device.is_cpu()) {
    EXPECT_TRUE(at::equal(yb, ya));
    EXPECT_TRUE(at::equal(xb.grad(), xa.grad()));
  } else {
    EXPECT_TRUE(at::allclose(yb.cpu(), ya.cpu(), 1e-5, 1e-6));
    EXPECT_TRUE(at::allclose(xb.grad().cpu(), xa.grad().cpu(), 1e-5, 1e-6));
  }
  EXPECT_TRUE(at::allclose(wb.grad().cpu(), wa.grad().cpu(), 1e-5, 1e-6));
}

TEST(SideStream, ValuesAndGradientsEqualInPlace) { check_values_and_gradients(at::kCPU); }

TEST(SideStreamCuda, ValuesAndGradientsEqualInPlace) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device (or a LibTorch without CUDA)";
  check_values_and_gradients(c10::Device(at::kCUDA, 0));
}

// The caller drops its only reference to the input right after starting the work, then the
// current stream allocates and overwrites blocks of the same size: the Pending keeps the input
// alive until the join, so the side stream still reads the original values.
TEST(SideStreamCuda, InputOutlivesTheCallersReferenceUntilJoin) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device (or a LibTorch without CUDA)";
  const c10::Device cuda(at::kCUDA, 0);
  const at::Tensor w = (seeded_randn({1024, 1024}, 5) / 32).to(cuda, at::kFloat);
  const at::Tensor expected = work(seeded_randn({2048, 1024}, 4).to(cuda, at::kFloat), w);
  Pending p;
  {
    at::Tensor input = seeded_randn({2048, 1024}, 4).to(cuda, at::kFloat);
    p = start_beside(input, SideStream::kComm, [&](const at::Tensor& in) { return work(in, w); });
  }
  std::vector<at::Tensor> noise;
  for (int i = 0; i < 8; ++i) noise.push_back(at::full({2048, 1024}, 1e6, w.options()));
  EXPECT_TRUE(at::allclose(join(std::move(p)).cpu(), expected.cpu(), 1e-5, 1e-6));
}

// Every piece started for the communication stream runs on one stream (collectives pair up in
// the order they were started), which is not the current one.
TEST(SideStreamCuda, CommunicationWorkRunsOnOneStreamBesideTheCurrentOne) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device (or a LibTorch without CUDA)";
  const c10::Device cuda(at::kCUDA, 0);
  const c10::impl::DeviceGuardImplInterface* impl = c10::impl::getDeviceGuardImpl(at::kCUDA);
  const c10::Stream current = impl->getStream(cuda);
  std::vector<c10::Stream> seen;
  const at::Tensor x = at::ones({4}, at::TensorOptions().device(cuda));
  for (int i = 0; i < 3; ++i) {
    Pending p = start_beside(x, SideStream::kComm, [&](const at::Tensor& in) {
      seen.push_back(impl->getStream(cuda));
      return in + 1;
    });
    EXPECT_TRUE(at::equal(join(std::move(p)).cpu(), at::full({4}, 2.0f)));
  }
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_NE(seen[0], current);
  EXPECT_EQ(seen[1], seen[0]);
  EXPECT_EQ(seen[2], seen[0]);
  EXPECT_EQ(impl->getStream(cuda), current);  // restored after each start
}

}  // namespace
}  // namespace sy
