// NCCL groups made from MPI (dist/nccl_group): a device buffer summed over the ranks equals the
// host sum. At 1 rank SCALPEL_NCCL=force makes a one-rank NCCL communicator, which runs the whole
// path (unique id over MPI, init, all-reduce on the GPU). At 2 ranks on one GPU NCCL cannot be used
// (it refuses two ranks per GPU) and the group must say so, so that callers take the host path;
// on a machine with a GPU per rank the 2-rank sum runs through NCCL. The broadcast likewise.
// Without a GPU: SKIPPED.
#include <gtest/gtest.h>

#include <cstdlib>
#include <vector>

#include "../common/mpi_test_main.hpp"
#include "scalpel/backend/backend.hpp"

namespace scalpel::test {
namespace {

// This rank's GPU backend, NCCL forced even for a one-rank group.
std::unique_ptr<Backend> rank_gpu(dist::MpiComm& world) {
  setenv("SCALPEL_NCCL", "force", 1);
  BackendOptions o;
  o.local_rank = world.local_rank();
  return make_backend("cuda", o);
}

TEST(Nccl, DeviceAllReduceSumsOverTheRanks) {
  if (cuda_devices() == 0) GTEST_SKIP() << "no GPU here (" << cuda_status() << ")";
  dist::MpiComm& world = *g_world;
  auto be = rank_gpu(world);
  const std::int64_t n = 100003;  // odd, past any power-of-two chunking
  Tensor host = Tensor::empty({n}, DType::f64);
  for (std::int64_t i = 0; i < n; ++i) host.f64()[i] = (world.rank() + 1) * 0.5 + static_cast<double>(i) * 1e-3;
  Tensor dev = be->upload_exact(host);
  if (!world.device_collectives()) {
    // Only acceptable reason: the ranks share GPUs.
    EXPECT_GT(world.size(), 1);
    EXPECT_LT(cuda_devices(), world.local_size());
    GTEST_SKIP() << world.size() << " ranks on " << cuda_devices() << " GPU(s): NCCL not usable, host path taken";
  }
  world.allreduce_sum_device(dev.data<double>(), static_cast<std::size_t>(n));
  const Tensor got = be->download(dev);
  const int p = world.size();
  const double rank_sum = 0.5 * p * (p + 1) / 2.0;
  for (std::int64_t i = 0; i < n; ++i)
    ASSERT_DOUBLE_EQ(got.f64()[i], rank_sum + p * static_cast<double>(i) * 1e-3) << i;
  EXPECT_EQ(world.bytes().allreduce, static_cast<std::int64_t>(n * sizeof(double)));
}

// The shared factorisation's panels go GPU to GPU by broadcast_device: every rank ends with the
// last rank's bytes.
TEST(Nccl, DeviceBroadcastFromTheLastRank) {
  if (cuda_devices() == 0) GTEST_SKIP() << "no GPU here (" << cuda_status() << ")";
  dist::MpiComm& world = *g_world;
  auto be = rank_gpu(world);
  const std::int64_t n = 70001;
  Tensor host = Tensor::empty({n}, DType::u8);
  for (std::int64_t i = 0; i < n; ++i) host.data<std::uint8_t>()[i] = static_cast<std::uint8_t>(i * 7 + world.rank());
  Tensor dev = be->upload_exact(host);
  if (!world.device_collectives()) GTEST_SKIP() << world.size() << " ranks on " << cuda_devices() << " GPU(s)";
  const int root = world.size() - 1;
  world.broadcast_device(static_cast<std::byte*>(dev.raw()), static_cast<std::size_t>(n), root);
  const Tensor got = be->download(dev);
  for (std::int64_t i = 0; i < n; ++i)
    ASSERT_EQ(got.data<std::uint8_t>()[i], static_cast<std::uint8_t>(i * 7 + root)) << i;
}

}  // namespace
}  // namespace scalpel::test
