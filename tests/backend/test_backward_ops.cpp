// The backward ops (LLM Surgeon's gradients) of every backend against float64 central
// differences of the float64 reference forwards (tests/common/reference.hpp): each op's input
// gradient for a random output cotangent r, i.e. ∂<r, f(x)>/∂x. Tolerance Tol::f32_deep (1e-4,
// relative Frobenius): the fp32 backward's rounding is ~1e-6 over these short rows, the finite
// differences' error ~1e-10 (finite_diff.hpp); a wrong term in a derivative is off by O(1).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "../common/backends.hpp"
#include "../common/finite_diff.hpp"
#include "../common/reference.hpp"
#include "scalpel/core/error.hpp"

namespace scalpel::test {
namespace {

class BackwardOps : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { SCALPEL_BACKEND_OR_SKIP(be, GetParam(), 2); }
  Tensor up(const Vec& v, Shape s) { return be->upload(to_tensor(v, std::move(s))); }
  Vec down(const Tensor& t) { return to_vec(be->download(t)); }
  std::unique_ptr<Backend> be;
};

TEST_P(BackwardOps, LayerNormWithAndWithoutAffine) {
  const std::int64_t n = 5, d = 24;
  const Vec x = random_vec(n * d, 1, 2.0), w = random_vec(d, 2), b = random_vec(d, 3), r = random_vec(n * d, 4);
  const Vec ones(d, 1.0), zeros(d, 0.0);
  for (const bool affine : {true, false}) {
    const auto f = [&](const Vec& in) { return ref_layer_norm(in, affine ? w : ones, affine ? b : zeros, n, d, 1e-5); };
    Tensor tw = up(w, {d}), tdx = be->empty({n, d});
    be->layer_norm_backward(up(x, {n, d}), affine ? &tw : nullptr, 1e-5f, up(r, {n, d}), tdx);
    SCOPED_TRACE(affine ? "affine" : "no affine");
    EXPECT_REL_NEAR(down(tdx), fd_gradient(f, x, r), Tol::f32_deep);
  }
}

TEST_P(BackwardOps, RmsNormInPlace) {
  const std::int64_t n = 4, d = 32;
  const Vec x = random_vec(n * d, 5, 1.5), w = random_vec(d, 6), r = random_vec(n * d, 7);
  Tensor dy = up(r, {n, d});
  be->rms_norm_backward(up(x, {n, d}), up(w, {d}), 1e-6f, dy, dy);  // dx aliases dy
  EXPECT_REL_NEAR(down(dy), fd_gradient([&](const Vec& in) { return ref_rms_norm(in, w, n, d, 1e-6); }, x, r),
                  Tol::f32_deep);
}

TEST_P(BackwardOps, Activations) {
  const std::int64_t n = 64;
  Vec x = random_vec(n, 8, 2.0);
  for (auto& v : x)
    if (std::abs(v) < 1e-3) v = 0.5;  // relu has no derivative at 0
  const Vec r = random_vec(n, 9);
  const double c = std::sqrt(2.0 / M_PI);
  const auto gelu = [&](const Vec& in) {
    Vec o(in.size());
    for (std::size_t i = 0; i < in.size(); ++i)
      o[i] = 0.5 * in[i] * (1 + std::tanh(c * (in[i] + 0.044715 * in[i] * in[i] * in[i])));
    return o;
  };
  const auto relu = [](const Vec& in) {
    Vec o(in.size());
    for (std::size_t i = 0; i < in.size(); ++i) o[i] = std::max(0.0, in[i]);
    return o;
  };
  Tensor g1 = up(r, {n}), g2 = up(r, {n});
  be->gelu_backward(up(x, {n}), g1);
  be->relu_backward(up(x, {n}), g2);
  EXPECT_REL_NEAR(down(g1), fd_gradient(gelu, x, r), Tol::f32_deep);
  EXPECT_REL_NEAR(down(g2), fd_gradient(relu, x, r), Tol::f32_deep);
}

TEST_P(BackwardOps, SiluMul) {
  const std::int64_t n = 48;
  const Vec g = random_vec(n, 10, 3.0), u = random_vec(n, 11), r = random_vec(n, 12);
  const auto f = [](const Vec& gate, const Vec& upv) {
    Vec o(gate.size());
    for (std::size_t i = 0; i < o.size(); ++i) o[i] = gate[i] / (1 + std::exp(-gate[i])) * upv[i];
    return o;
  };
  Tensor dg = be->empty({n}), du = be->empty({n});
  be->silu_mul_backward(up(g, {n}), up(u, {n}), up(r, {n}), dg, du);
  EXPECT_REL_NEAR(down(dg), fd_gradient([&](const Vec& in) { return f(in, u); }, g, r), Tol::f32_deep);
  EXPECT_REL_NEAR(down(du), fd_gradient([&](const Vec& in) { return f(g, in); }, u, r), Tol::f32_deep);
}

// Grouped-query attention (4 query heads on 2 kv heads), two sequences, a scale != 1.
TEST_P(BackwardOps, AttentionGqa) {
  const std::int64_t B = 2, T = 7, H = 4, KV = 2, hd = 6;
  const double scale = 0.4;
  const Vec q = random_vec(B * T * H * hd, 13), k = random_vec(B * T * KV * hd, 14), v = random_vec(B * T * KV * hd, 15);
  const Vec r = random_vec(B * T * H * hd, 16);
  const AttentionShape s{B, T, H, KV, hd, static_cast<float>(scale)};
  Tensor tq = up(q, {B * T, H * hd}), tk = up(k, {B * T, KV * hd}), tv = up(v, {B * T, KV * hd});
  Tensor out = be->empty({B * T, H * hd}), probs = be->empty({B, H, T, T});
  be->attention(tq, tk, tv, s, out, &probs);
  Tensor dq = be->empty({B * T, H * hd}), dk = be->empty({B * T, KV * hd}), dv = be->empty({B * T, KV * hd});
  be->attention_backward(tq, tk, tv, probs, up(r, {B * T, H * hd}), s, dq, dk, dv);
  const auto att = [&](const Vec& a, const Vec& b, const Vec& c) { return ref_attention(a, b, c, B, T, H, KV, hd, scale); };
  EXPECT_REL_NEAR(down(dq), fd_gradient([&](const Vec& in) { return att(in, k, v); }, q, r), Tol::f32_deep);
  EXPECT_REL_NEAR(down(dk), fd_gradient([&](const Vec& in) { return att(q, in, v); }, k, r), Tol::f32_deep);
  EXPECT_REL_NEAR(down(dv), fd_gradient([&](const Vec& in) { return att(q, k, in); }, v, r), Tol::f32_deep);
}

// RoPE's backward is the rotation by -θ: the rope op with the sine table negated.
TEST_P(BackwardOps, RopeWithNegatedSineIsTheTranspose) {
  const std::int64_t T = 5, heads = 2, hd = 8, rows = 2 * T;
  const double theta = 500.0;
  const Vec x = random_vec(rows * heads * hd, 17), r = random_vec(rows * heads * hd, 18);
  Vec c(T * hd), s(T * hd), ns(T * hd);
  for (std::int64_t p = 0; p < T; ++p)
    for (std::int64_t i = 0; i < hd; ++i) {
      const double f = p / std::pow(theta, 2.0 * (i % (hd / 2)) / hd);
      c[p * hd + i] = std::cos(f);
      s[p * hd + i] = std::sin(f);
      ns[p * hd + i] = -s[p * hd + i];
    }
  Tensor g = up(r, {rows, heads * hd});
  be->rope(g, T, heads, hd, up(c, {T, hd}), up(ns, {T, hd}));
  const auto f = [&](const Vec& in) {
    Vec o = in;
    ref_rope(o, rows, T, heads, hd, theta);
    return o;
  };
  EXPECT_REL_NEAR(down(g), fd_gradient(f, x, r), Tol::f32_deep);
}

TEST_P(BackwardOps, CrossEntropyGradientAndLoss) {
  const std::int64_t n = 4, V = 300;
  const Vec z = random_vec(n * V, 19, 3.0);
  const std::vector<std::int32_t> t{5, -1, 299, 0};
  const float scale = 0.25f;
  const auto loss = [&](const Vec& in) {
    double L = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      if (t[i] < 0) continue;
      double m = -1e300, zs = 0;
      for (std::int64_t j = 0; j < V; ++j) m = std::max(m, in[i * V + j]);
      for (std::int64_t j = 0; j < V; ++j) zs += std::exp(in[i * V + j] - m);
      L += m + std::log(zs) - in[i * V + t[i]];
    }
    return Vec{L * scale};
  };
  Tensor g = up(z, {n, V});
  std::vector<double> rows(n);
  be->nll_backward(g, t, scale, rows);
  EXPECT_REL_NEAR(down(g), fd_gradient(loss, z, Vec{1.0}), Tol::f32_deep);
  EXPECT_EQ(rows[1], 0.0);
  EXPECT_NEAR((rows[0] + rows[2] + rows[3]) * scale, loss(z)[0], 1e-5 * loss(z)[0]);
}

// LLM Surgeon's solvers against float64 identities: A·A⁻¹ = I past the recursion's 96-wide leaves,
// and the chunk factor and solve.
TEST_P(BackwardOps, SpdInverseAndChunkSolves) {
  const std::int64_t n = 250, k = 3;
  const Vec m = random_vec(static_cast<std::size_t>(n * n), 40);
  Vec a(static_cast<std::size_t>(n * n), 0.0);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      for (std::int64_t q = 0; q < n; ++q) a[i * n + j] += m[i * n + q] * m[j * n + q] / n;
      if (i == j) a[i * n + j] += 0.05;
    }
  Tensor inv = Tensor::empty({n, n}, DType::f64);
  std::copy(a.begin(), a.end(), inv.f64());
  ASSERT_TRUE(be->spd_inverse_f64(inv));
  double worst = 0;
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (std::int64_t q = 0; q < n; ++q) s += a[i * n + q] * inv.f64()[q * n + j];
      worst = std::max(worst, std::abs(s - (i == j ? 1.0 : 0.0)));
    }
  EXPECT_LT(worst, 1e-9);  // condition ~1e3: float64 leaves ~1e-13
  // fp32 factor + solve of A X = B: residual relative to ||B||, fp32 with condition ~1e3.
  const Vec b = random_vec(static_cast<std::size_t>(n * k), 41);
  std::vector<Tensor> f{up(a, {n, n})};
  std::vector<std::uint8_t> ok(1, 0);
  be->cholesky_batch(f, ok);
  ASSERT_TRUE(ok[0]);
  Tensor x = up(b, {n, k});
  be->cholesky_solve(f[0], x);
  const Vec xs = down(x);
  Vec ax(static_cast<std::size_t>(n * k), 0.0);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < k; ++j)
      for (std::int64_t q = 0; q < n; ++q) ax[i * k + j] += a[i * n + q] * xs[q * k + j];
  EXPECT_REL_NEAR(ax, b, 1e-4);
  // Not positive definite: reported, not thrown.
  Vec bad = a;
  bad[5 * n + 5] = -1.0;
  std::vector<Tensor> fb{up(bad, {n, n})};
  be->cholesky_batch(fb, ok);
  EXPECT_EQ(ok[0], 0);
  Tensor badinv = Tensor::empty({n, n}, DType::f64);
  std::copy(bad.begin(), bad.end(), badinv.f64());
  EXPECT_FALSE(be->spd_inverse_f64(badinv));
}

// The sub-problem gathers and scatters of the LLM Surgeon update, against direct indexing.
TEST_P(BackwardOps, SurgeonIndexOps) {
  const std::int64_t R = 5, C = 7;
  const Vec a = random_vec(R * C, 50), g = random_vec(4 * 4, 51), x = random_vec(C * C, 52);
  const std::vector<std::int64_t> rows{4, 0, 2}, cols{6, 1};
  Tensor ta = up(a, {R, C});
  Tensor out = be->empty({3, 2}), outt = be->empty({2, 3});
  be->gather(ta, rows, cols, out, false);
  be->gather(ta, rows, cols, outt, true);
  const Vec o = down(out), ot = down(outt);
  for (std::size_t i = 0; i < 3; ++i)
    for (std::size_t j = 0; j < 2; ++j) {
      EXPECT_EQ(o[i * 2 + j], static_cast<float>(a[rows[i] * C + cols[j]]));
      EXPECT_EQ(ot[j * 3 + i], o[i * 2 + j]);
    }
  Tensor z = be->zeros({R, C});
  be->scatter(out, rows, cols, z);
  const Vec zs = down(z);
  for (std::int64_t r = 0; r < R; ++r)
    for (std::int64_t c = 0; c < C; ++c) {
      const bool hit = std::count(rows.begin(), rows.end(), r) && std::count(cols.begin(), cols.end(), c);
      EXPECT_EQ(zs[r * C + c], hit ? static_cast<float>(a[r * C + c]) : 0.0f) << r << "," << c;
    }
  const std::vector<std::int64_t> pi{3, 3, 1}, pj{0, 5, 2};
  Tensor v = be->empty({3, 1});
  be->gather_pairs(ta, pi, pj, v);
  const Vec vs = down(v);
  for (std::size_t k = 0; k < 3; ++k) EXPECT_EQ(vs[k], static_cast<float>(a[pi[k] * C + pj[k]]));
  // rows_axpy: out[dst[k], :] += v[k] a[src[k], :], the k's in order (two land in row 1), against
  // the same fp32 operations in that order. Whether a product and its sum are fused (FMA) is up to
  // the compiler on either side, which changes each step by at most one rounding of the product:
  // 2^-23 of its size, times the steps, on top of the sum's own rounding.
  const std::vector<std::int64_t> src{3, 0, 4}, dst{1, 0, 1};
  Tensor acc = up(Vec(2 * C, 0.5), {2, C});
  be->rows_axpy(ta, src, dst, v, acc);
  const Vec as = down(acc);
  for (std::int64_t c = 0; c < C; ++c)
    for (std::int64_t row = 0; row < 2; ++row) {
      float want = 0.5f;
      double size = 0.5;
      for (std::size_t k = 0; k < 3; ++k)
        if (dst[k] == row) {
          want += static_cast<float>(vs[k]) * static_cast<float>(a[src[k] * C + c]);
          size += std::fabs(vs[k] * a[src[k] * C + c]);
        }
      EXPECT_NEAR(as[row * C + c], want, 4 * 0x1p-23 * size) << row << "," << c;
    }
  // kron_pairs: entries of G ⊗ X at (row, column) pairs of a 4 x 7 weight.
  const std::vector<std::int64_t> ki{0, 0, 3, 2}, kj{6, 1, 1, 4};
  Tensor kp = be->empty({4, 4});
  be->kron_pairs(up(g, {4, 4}), up(x, {C, C}), ki, kj, kp);
  const Vec ks = down(kp);
  for (std::size_t p = 0; p < 4; ++p)
    for (std::size_t q = 0; q < 4; ++q)
      EXPECT_EQ(ks[p * 4 + q], static_cast<float>(g[ki[p] * 4 + ki[q]]) * static_cast<float>(x[kj[p] * C + kj[q]]));
  // An index outside the matrix is refused before anything is read or written.
  const std::vector<std::int64_t> bad{0, 5};
  EXPECT_THROW(be->gather(ta, bad, cols, out, false), Error);
  EXPECT_THROW(be->gather_pairs(ta, pi, std::vector<std::int64_t>{0, 7, 1}, v), Error);
  EXPECT_THROW(be->rows_axpy(ta, src, std::vector<std::int64_t>{1, 2, 0}, v, acc), Error);
}

INSTANTIATE_TEST_SUITE_P(Backends, BackwardOps, ::testing::ValuesIn(test_backends()));

}  // namespace
}  // namespace scalpel::test
