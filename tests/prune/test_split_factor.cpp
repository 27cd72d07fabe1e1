// prune::shared_inverse_cholesky_upper on one rank (tests/app/test_factor_share_mpi.cpp runs it
// over several): U is upper triangular with H⁻¹ = UᵀU, checked against a float64 reference for
// tilings that divide n and that leave a ragged last panel, next to Backend::inverse_cholesky_upper
// (the factor it replaces for wide Hessians); the same bits at any thread count; an indefinite H
// is refused. One body per backend (the cuda instances need a GPU).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <tuple>

#include "../common/backends.hpp"
#include "../common/reference.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/dist/comm.hpp"
#include "scalpel/prune/split_factor.hpp"

namespace scalpel::test {
namespace {

Vec spd(std::int64_t n, unsigned seed) { return random_spd(n, seed); }

// U (upper) with H⁻¹ = UᵀU in float64: L = chol(J H J), U = J L⁻¹ J.
Vec ref_factor(const Vec& h, std::int64_t n) {
  Vec a(h.size()), x(h.size(), 0.0);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j) a[i * n + j] = h[(n - 1 - i) * n + (n - 1 - j)];
  for (std::int64_t j = 0; j < n; ++j) {  // Cholesky, lower
    for (std::int64_t q = 0; q < j; ++q) a[j * n + j] -= a[j * n + q] * a[j * n + q];
    a[j * n + j] = std::sqrt(a[j * n + j]);
    for (std::int64_t i = j + 1; i < n; ++i) {
      for (std::int64_t q = 0; q < j; ++q) a[i * n + j] -= a[i * n + q] * a[j * n + q];
      a[i * n + j] /= a[j * n + j];
    }
  }
  for (std::int64_t j = 0; j < n; ++j) {  // X = L⁻¹, column by column
    x[j * n + j] = 1.0 / a[j * n + j];
    for (std::int64_t i = j + 1; i < n; ++i) {
      double s = 0;
      for (std::int64_t q = j; q < i; ++q) s += a[i * n + q] * x[q * n + j];
      x[i * n + j] = -s / a[i * n + i];
    }
  }
  Vec u(h.size());
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j) u[i * n + j] = x[(n - 1 - i) * n + (n - 1 - j)];
  return u;
}

double max_abs_diff(const Vec& a, const Vec& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}
double max_abs(const Vec& a) { return max_abs_diff(a, Vec(a.size(), 0.0)); }

class SplitFactor : public ::testing::TestWithParam<std::tuple<std::string, std::int64_t, std::int64_t>> {};

TEST_P(SplitFactor, MatchesTheFloat64FactorAndTheWholeFactorisation) {
  const auto [device, n, tile] = GetParam();
  std::unique_ptr<Backend> be;
  SCALPEL_BACKEND_OR_SKIP(be, device, 2);
  const Vec h = spd(n, 7 + static_cast<unsigned>(n));
  const Vec want = ref_factor(h, n);
  dist::SelfComm self;
  Tensor u = be->upload(to_tensor(h, {n, n}));
  ASSERT_TRUE(prune::shared_inverse_cholesky_upper(*be, u, tile, self));
  Tensor whole = be->upload(to_tensor(h, {n, n}));
  ASSERT_TRUE(be->inverse_cholesky_upper(whole));
  const Vec got = to_vec(be->download(u)), ref = to_vec(be->download(whole));
  // fp32 Cholesky and triangular inverse: errors grow like n·eps·cond(H) in the worst case
  // (257 x 6e-8 x 60 = 1e-3 of max|U|); measured on the cpu backend 1.0e-7 to 1.6e-7 of it, the
  // whole factorisation 1.4e-7 to 1.6e-7. 1e-5 leaves room for other summation orders (cuBLAS)
  // and still catches a wrong block (an error of the size of an entry).
  const double scale = max_abs(want);
  EXPECT_LE(max_abs_diff(got, want), 1e-5 * scale);
  EXPECT_LE(max_abs_diff(ref, want), 1e-5 * scale);  // the whole factorisation, for scale
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < i; ++j) ASSERT_EQ(got[static_cast<std::size_t>(i * n + j)], 0.0) << i << "," << j;
}

INSTANTIATE_TEST_SUITE_P(All, SplitFactor,
                         ::testing::Combine(::testing::ValuesIn(test_backends()),
                                            ::testing::Values(std::int64_t{200}, std::int64_t{257}),
                                            ::testing::Values(std::int64_t{32}, std::int64_t{50}, std::int64_t{512})),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_n" + std::to_string(std::get<1>(info.param)) + "_tile" +
                                  std::to_string(std::get<2>(info.param));
                         });

TEST(SplitFactorCpu, TheSameBitsAtAnyThreadCount) {
  const std::int64_t n = 300, tile = 64;
  const Vec h = spd(n, 3);
  dist::SelfComm self;
  Tensor first;
  for (const int threads : {1, 2, 3}) {
    auto be = make_cpu_backend(threads);
    Tensor u = to_tensor(h, {n, n});
    ASSERT_TRUE(prune::shared_inverse_cholesky_upper(*be, u, tile, self));
    if (!first.defined())
      first = u;
    else
      EXPECT_EQ(std::memcmp(u.raw(), first.raw(), u.nbytes()), 0) << threads << " threads";
  }
}

TEST(SplitFactorCpu, AnIndefiniteMatrixIsRefused) {
  const std::int64_t n = 100;
  Vec h = spd(n, 5);
  h[static_cast<std::size_t>(10 * n + 10)] = -5.0;  // a negative pivot (row 89 after the flip: panel 2)
  auto be = make_cpu_backend(1);
  dist::SelfComm self;
  Tensor u = to_tensor(h, {n, n});
  EXPECT_FALSE(prune::shared_inverse_cholesky_upper(*be, u, 32, self));
  Tensor bad_tile = to_tensor(spd(8, 1), {8, 8});
  EXPECT_THROW(prune::shared_inverse_cholesky_upper(*be, bad_tile, 0, self), Error);
}

}  // namespace
}  // namespace scalpel::test
