// Layer-wise allocation rules against the test vectors of METHODS.md section 2 (worked out from
// the OWL reference, lib/prune_all.py, and the sensitivity paper's Algorithm 1) and hand-made
// cases for the outlier count, the N:M rounding and the errors.
#include <gtest/gtest.h>

#include "scalpel/core/error.hpp"
#include "scalpel/prune/allocation.hpp"

namespace scalpel::test {
namespace {

using namespace scalpel::prune;

Tensor host(std::vector<float> v, Shape shape) {
  Tensor t = Tensor::empty(shape);
  std::copy(v.begin(), v.end(), t.f32());
  return t;
}

std::string input_error(auto&& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::input);
    return e.what();
  }
  return "no error";
}

// The values below are exact decimal fractions of the inputs; 1e-12 covers float64 rounding.
constexpr double kTol = 1e-12;

TEST(Owl, MethodsTestVector) {
  // METHODS.md: D = [1,2,3,4], S = 0.7, λ = 0.08 → [0.78, 0.7267, 0.6733, 0.62].
  const auto s = owl_sparsities({1, 2, 3, 4}, 0.7, 0.08);
  ASSERT_EQ(s.size(), 4u);
  EXPECT_NEAR(s[0], 0.78, kTol);
  EXPECT_NEAR(s[1], 0.78 - 0.16 / 3, kTol);
  EXPECT_NEAR(s[2], 0.78 - 0.32 / 3, kTol);
  EXPECT_NEAR(s[3], 0.62, kTol);
  // More outliers, less sparsity; the unweighted mean is the target.
  EXPECT_NEAR((s[0] + s[1] + s[2] + s[3]) / 4, 0.7, kTol);
}

TEST(Owl, EqualRatiosAndClampAndErrors) {
  // All blocks alike: the reference divides by zero; every block gets the target.
  for (const double x : owl_sparsities({2, 2, 2}, 0.5, 0.08)) EXPECT_NEAR(x, 0.5, kTol);
  // S_l <= 0 becomes 0.01 (the reference's clamp): S = 0.05, λ = 0.2 gives block 3 −0.15.
  std::vector<std::size_t> clamped;
  const auto s = owl_sparsities({1, 2, 3, 4}, 0.05, 0.2, "allocation.owl_lambda", &clamped);
  EXPECT_EQ(clamped, (std::vector<std::size_t>{2, 3}));
  EXPECT_NEAR(s[0], 0.25, kTol);
  EXPECT_NEAR(s[3], 0.01, kTol);
  // A block at sparsity >= 1 is an error naming the key.
  EXPECT_NE(input_error([] { owl_sparsities({1, 2, 3, 4}, 0.9, 0.2); }).find("allocation.owl_lambda"),
            std::string::npos);
}

TEST(Owl, NmShiftsRoundHalfToEven) {
  // λ = 2 weights per group (the OWL README's 4:8 example): r = [0, 2/3, 4/3, 2], mean 1.
  EXPECT_EQ(owl_nm({1, 2, 3, 4}, 4, 8, 2), (std::vector<int>{5, 4, 4, 3}));
  // r − mean = [−1, −0.5, 0, 0.5, 1]: np.round gives [−1, −0, 0, 0, 1].
  EXPECT_EQ(owl_nm({0, 1, 2, 3, 4}, 4, 8, 2), (std::vector<int>{5, 4, 4, 4, 3}));
  EXPECT_EQ(owl_nm({3, 3}, 2, 4, 2), (std::vector<int>{2, 2}));
  EXPECT_NE(input_error([] { owl_nm({1, 2, 3, 4}, 1, 4, 6); }).find("allocation.owl_lambda"), std::string::npos);
}

TEST(Owl, OutlierRatioOverEveryLinearOfABlock) {
  // A = |W|·sqrt(s): [[1, 4], [3, 8]] with s = [1, 4].
  OutlierCounter c;
  c.add(host({1, -2, 3, 4}, {2, 2}), host({1, 4}, {2}));
  EXPECT_NEAR(c.ratio(1.5), 25.0, kTol);  // mean 4, threshold 6: one of four
  EXPECT_NEAR(c.ratio(0.5), 75.0, kTol);  // threshold 2: 4, 3, 8
  // A second linear joins the same mean and count: scores [0.5, 0.5, 0.5] (s = 0.25).
  c.add(host({0.5f, -0.5f, 0.5f}, {1, 3}), host({1, 1, 1}, {3}));
  // mean = (16 + 1.5)/7 = 2.5; threshold 1.5·2.5 = 3.75: 4 and 8 → 2 of 7.
  EXPECT_NEAR(c.ratio(1.5), 200.0 / 7, kTol);
  EXPECT_EQ(c.numel(), 7);
  EXPECT_NE(input_error([&] { c.add(host({1, 2}, {1, 2}), host({1, 2, 3}, {3})); }).find("column norms"),
            std::string::npos);
}

TEST(Sensitivity, MethodsTestVector) {
  // METHODS.md: sensitivities [5, 1, 3, 2], p = 0.5, α = 0.1 → [0.4, 0.6, 0.4667, 0.5333].
  const auto s = sensitivity_sparsities({5, 1, 3, 2}, 0.5, 0.1, false, {1, 1, 1, 1});
  EXPECT_NEAR(s[0], 0.4, kTol);
  EXPECT_NEAR(s[1], 0.6, kTol);
  EXPECT_NEAR(s[2], 0.5 - 0.1 / 3, kTol);
  EXPECT_NEAR(s[3], 0.5 + 0.1 / 3, kTol);
}

TEST(Sensitivity, WeightedHitsTheTargetByParameters) {
  const std::vector<std::int64_t> params{3, 1, 1, 1};
  const auto plain = sensitivity_sparsities({5, 1, 3, 2}, 0.5, 0.1, false, params);
  EXPECT_NEAR(weighted_sparsity(plain, params), 2.8 / 6, kTol);  // the paper's rule misses p by parameters
  const auto w = sensitivity_sparsities({5, 1, 3, 2}, 0.5, 0.1, true, params);
  EXPECT_NEAR(weighted_sparsity(w, params), 0.5, kTol);
  for (std::size_t i = 0; i < w.size(); ++i) EXPECT_NEAR(w[i] - plain[i], 0.5 - 2.8 / 6, kTol);  // one shift
}

TEST(Sensitivity, TiesSingleUnitAndErrors) {
  // Equal scores share their ranks' mean density: the same sparsity (they were split by index,
  // so an all-zero estimate gave 0.6, 0.53, 0.47, 0.4 by layer).
  const auto t = sensitivity_sparsities({1, 1}, 0.5, 0.1, false, {1, 1});
  EXPECT_NEAR(t[0], 0.5, kTol);
  EXPECT_NEAR(t[1], 0.5, kTol);
  const auto u = sensitivity_sparsities({0, 0, 0, 0}, 0.5, 0.1, false, {1, 1, 1, 1});
  for (const double x : u) EXPECT_NEAR(x, 0.5, kTol);
  const auto v = sensitivity_sparsities({3, 1, 1, 2}, 0.5, 0.1, false, {1, 1, 1, 1});  // ranks 0 and 1 tie
  EXPECT_NEAR(v[1], 1.0 - (0.4 + 0.4 + 0.2 / 3) / 2, kTol);
  EXPECT_NEAR(v[2], v[1], kTol);
  EXPECT_NEAR(v[0], 0.4, kTol);
  EXPECT_NEAR(sensitivity_sparsities({7}, 0.3, 0.1, false, {5})[0], 0.3, kTol);
  EXPECT_NE(input_error([] { sensitivity_sparsities({1, 2, 3}, 0.95, 0.1, false, {1, 1, 1}); }).find("allocation.alpha"),
            std::string::npos);
}

}  // namespace
}  // namespace scalpel::test
