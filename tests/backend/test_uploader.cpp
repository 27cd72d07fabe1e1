// Backend::make_uploader, the copies behind Model::prefetch: tensors handed over on a background
// thread arrive on the device byte for byte (every dtype, sizes across many staging chunks, an
// empty one), and a device block the caller freed while queued work still read it is not
// overwritten before that work has run (the copy stream waits for the compute stream). One body
// per backend; the cuda instances need a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <thread>

#include "../common/backends.hpp"
#include "../common/reference.hpp"
#include "scalpel/backend/backend.hpp"

namespace scalpel::test {
namespace {

// A host tensor of `shape` and `dt` whose bytes are a pattern depending on `seed`.
Tensor pattern(const Shape& shape, DType dt, unsigned seed) {
  Tensor t = Tensor::empty(shape, dt);
  auto* p = static_cast<unsigned char*>(t.raw());
  for (std::size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<unsigned char>((i * 131 + seed * 17 + i / 251) & 0xff);
  return t;
}

// uploader->upload(host) run on a thread of its own, as Model::prefetch does.
std::vector<Tensor> upload_on_thread(Uploader& up, const std::vector<Tensor>& host) {
  std::vector<Tensor> got;
  std::exception_ptr err;
  std::thread t([&] {
    try {
      got = up.upload(host);
    } catch (...) {
      err = std::current_exception();
    }
  });
  t.join();
  if (err) std::rethrow_exception(err);
  return got;
}

class Uploads : public ::testing::TestWithParam<std::string> {};

TEST_P(Uploads, ArriveByteForByteFromAnotherThread) {
  // 4 KiB staging buffers (64 MiB by default), so that the tensors below cross many of them and
  // the two buffers alternate.
  setenv("SCALPEL_UPLOAD_CHUNK_KB", "4", 1);
  std::unique_ptr<Backend> be;
  SCALPEL_BACKEND_OR_SKIP(be, GetParam(), 1);
  auto up = be->make_uploader();
  const std::vector<Tensor> host{pattern({300, 17}, DType::f32, 1), pattern({5001}, DType::f16, 2),
                                 pattern({1, 3}, DType::bf16, 3),   pattern({10000}, DType::u8, 4),
                                 pattern({0, 8}, DType::f32, 5),    pattern({3}, DType::i64, 6)};
  for (int round = 0; round < 2; ++round) {  // the same uploader again (its buffers are reused)
    const auto got = upload_on_thread(*up, host);
    ASSERT_EQ(got.size(), host.size());
    for (std::size_t i = 0; i < host.size(); ++i) {
      EXPECT_EQ(got[i].device(), be->device()) << i;
      ASSERT_EQ(got[i].dtype(), host[i].dtype()) << i;
      ASSERT_EQ(got[i].shape(), host[i].shape()) << i;
      const Tensor back = be->download(got[i]);
      EXPECT_EQ(std::memcmp(back.raw(), host[i].raw(), host[i].nbytes()), 0) << "tensor " << i << " round " << round;
    }
  }
  unsetenv("SCALPEL_UPLOAD_CHUNK_KB");
}

TEST_P(Uploads, AFreedBlockIsNotOverwrittenWhileQueuedWorkReadsIt) {
  std::unique_ptr<Backend> be;
  SCALPEL_BACKEND_OR_SKIP(be, GetParam(), 2);
  // 8 products of 4096² (1.1 TFLOP, tens of ms) are still queued when `a` is freed and its block
  // handed to the upload, whose 64 MB copy alone takes a few ms. The cpu backend queues nothing,
  // so there the race cannot happen and the test could not fail.
  if (be->device() != Device::cuda) GTEST_SKIP() << "no asynchronous work on the " << GetParam() << " backend";
  const std::int64_t n = 4096;
  const Tensor a_host = to_tensor(random_vec(static_cast<std::size_t>(n * n), 1), {n, n});
  const Tensor b = be->upload(to_tensor(random_vec(static_cast<std::size_t>(n * n), 2), {n, n}));
  const auto products = [&](const Tensor& a, Tensor& c) {
    for (int r = 0; r < 8; ++r) be->gemm(Trans::no, Trans::no, 1.0f, a, b, r == 0 ? 0.0f : 1.0f, c);
  };
  Tensor want = be->empty({n, n});
  products(be->upload(a_host), want);
  const Tensor want_host = be->download(want);  // synchronises

  auto up = be->make_uploader();
  Tensor c = be->empty({n, n});
  {
    Tensor a = be->upload(a_host);
    products(a, c);
  }  // `a` is freed here, its products still queued on a GPU
  Tensor nans = Tensor::empty({n, n});
  for (std::int64_t i = 0; i < n * n; ++i) nans.f32()[i] = std::numeric_limits<float>::quiet_NaN();
  const auto got = upload_on_thread(*up, {nans});  // the allocator hands it a's block, if it is free
  const Tensor c_host = be->download(c);
  EXPECT_EQ(std::memcmp(c_host.raw(), want_host.raw(), want_host.nbytes()), 0)
      << "the products read a block the upload had overwritten";
  EXPECT_TRUE(std::isnan(be->download(got[0]).f32()[n * n - 1]));
}

INSTANTIATE_TEST_SUITE_P(All, Uploads, ::testing::ValuesIn(test_backends()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace scalpel::test
