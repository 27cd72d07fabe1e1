// Every backend op against a float64 reference, one test body for all backends (ggml's
// test-backend-ops idea): the cuda backend joins the list when it is built and a GPU is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <numeric>

#include "../common/backends.hpp"
#include "../common/reference.hpp"
#include "scalpel/backend/backend.hpp"
#include "scalpel/core/error.hpp"

namespace scalpel::test {
namespace {

class BackendOps : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { SCALPEL_BACKEND_OR_SKIP(be, GetParam(), 2); }
  Tensor up(const Vec& v, Shape s) { return be->upload(to_tensor(v, std::move(s))); }
  Vec down(const Tensor& t) { return to_vec(be->download(t)); }
  std::unique_ptr<Backend> be;
};

TEST_P(BackendOps, LinearWithBiasMatchesFloat64) {
  const std::int64_t n = 37, in = 200, out = 71;
  const auto x = random_vec(n * in, 1), w = random_vec(out * in, 2), b = random_vec(out, 3);
  Tensor y = be->empty({n, out});
  const Tensor bt = up(b, {out});
  be->linear(up(x, {n, in}), up(w, {out, in}), &bt, y);
  EXPECT_REL_NEAR(down(y), ref_linear(x, w, &b, n, in, out), Tol::f32);
}

TEST_P(BackendOps, GemmTransposesMatchFloat64) {
  const std::int64_t m = 19, k = 33, n = 27;
  const auto a = random_vec(k * m, 4), b = random_vec(n * k, 5), c0 = random_vec(m * n, 6);
  // C = 0.5 * A^T B^T + 2 C0 with A stored [k, m] and B stored [n, k].
  Vec want(static_cast<std::size_t>(m * n));
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (std::int64_t p = 0; p < k; ++p) s += a[p * m + i] * b[j * k + p];
      want[i * n + j] = 0.5 * s + 2 * c0[i * n + j];
    }
  Tensor c = up(c0, {m, n});
  be->gemm(Trans::yes, Trans::yes, 0.5f, up(a, {k, m}), up(b, {n, k}), 2.0f, c);
  EXPECT_REL_NEAR(down(c), want, Tol::f32);
}

// The shared factorisation's tile ops: a product of rectangles inside larger matrices (outside
// the rectangle C is untouched), a rectangle copy, the inverse of a lower triangle, the flip.
TEST_P(BackendOps, TileOpsOnRectangles) {
  const std::int64_t m = 13, k = 21, n = 9;
  // A^T is the rectangle rows [2, 2+k) columns [3, 3+m) of a [30, 20]; B^T rows [1, 1+n)
  // columns [4, 4+k) of b [12, 30]; C rows [5, 5+m) columns [6, 6+n) of c [20, 16].
  const auto a = random_vec(30 * 20, 14), b = random_vec(12 * 30, 15), c0 = random_vec(20 * 16, 16);
  Vec want = c0;
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (std::int64_t p = 0; p < k; ++p) s += a[(2 + p) * 20 + 3 + i] * b[(1 + j) * 30 + 4 + p];
      want[(5 + i) * 16 + 6 + j] = -1.5 * s + 0.5 * c0[(5 + i) * 16 + 6 + j];
    }
  Tensor c = up(c0, {20, 16});
  be->gemm_block(Trans::yes, Trans::yes, -1.5f, up(a, {30, 20}), {2, 3, k, m}, up(b, {12, 30}), {1, 4, n, k}, 0.5f, c,
                 {5, 6, m, n});
  EXPECT_REL_NEAR(down(c), want, Tol::f32);
  EXPECT_THROW(be->gemm_block(Trans::no, Trans::no, 1.0f, c, {0, 0, 4, 4}, c, {0, 0, 4, 4}, 0.0f, c, {18, 14, 4, 4}),
               Error);  // outside c
  EXPECT_THROW(be->gemm_block(Trans::no, Trans::no, 1.0f, c, {0, 0, 4, 4}, c, {0, 0, 4, 4}, 0.0f, c, {3, 3, 4, 4}),
               Error);  // C overlaps A and B
  // A B^T, beta 0 (C is not read: NaN there must not leak): rows [4, 9) columns [1, 8) of a
  // times rows [3, 7) columns [2, 9) of b, transposed.
  const std::int64_t m2 = 5, k2 = 7, n2 = 4;
  Vec want_nt(static_cast<std::size_t>(m2 * n2));
  for (std::int64_t i = 0; i < m2; ++i)
    for (std::int64_t j = 0; j < n2; ++j) {
      double s = 0;
      for (std::int64_t p = 0; p < k2; ++p) s += a[(4 + i) * 20 + 1 + p] * b[(3 + j) * 30 + 2 + p];
      want_nt[i * n2 + j] = s;
    }
  Tensor nt = up(Vec(static_cast<std::size_t>(m2 * n2), std::numeric_limits<double>::quiet_NaN()), {m2, n2});
  be->gemm_block(Trans::no, Trans::yes, 1.0f, up(a, {30, 20}), {4, 1, m2, k2}, up(b, {12, 30}), {3, 2, n2, k2}, 0.0f,
                 nt, {0, 0, m2, n2});
  EXPECT_REL_NEAR(down(nt), want_nt, Tol::f32);

  Tensor dst = up(c0, {20, 16});
  be->copy_block(up(a, {30, 20}), {7, 2, 4, 5}, dst, 11, 10);
  Vec want_copy = c0;
  for (std::int64_t i = 0; i < 4; ++i)
    for (std::int64_t j = 0; j < 5; ++j) want_copy[(11 + i) * 16 + 10 + j] = a[(7 + i) * 20 + 2 + j];
  EXPECT_EQ(down(dst), want_copy);
  be->copy_block(dst, {11, 10, 4, 5}, dst, 0, 0);  // within one tensor, apart
  for (std::int64_t i = 0; i < 4; ++i)
    for (std::int64_t j = 0; j < 5; ++j) want_copy[i * 16 + j] = want_copy[(11 + i) * 16 + 10 + j];
  EXPECT_EQ(down(dst), want_copy);
  EXPECT_THROW(be->copy_block(dst, {0, 0, 4, 5}, dst, 2, 3), Error);  // overlapping: refused

  const std::int64_t d = 40;
  Vec l = random_vec(d * d, 17);
  for (std::int64_t i = 0; i < d; ++i)  // well away from singular, and fp32 values
    l[i * d + i] = static_cast<float>(3.0 + std::fabs(l[i * d + i]));
  Tensor li = up(l, {d, d});
  be->invert_lower(li);  // reads only the lower triangle; l's upper holds noise
  const Vec x = down(li);
  double worst = 0;
  for (std::int64_t i = 0; i < d; ++i)
    for (std::int64_t j = 0; j < d; ++j) {
      double s = 0;
      for (std::int64_t p = j; p <= i; ++p) s += l[i * d + p] * x[p * d + j];
      if (j > i) {
        EXPECT_EQ(x[i * d + j], 0.0);
      }
      worst = std::max(worst, std::fabs((j <= i ? s : 0.0) - (i == j ? 1.0 : 0.0)));
    }
  EXPECT_LT(worst, 1e-5);  // L X = I to fp32 rounding (|L| <= 4, d = 40)

  Tensor f = up(l, {d, d});
  be->flip(f, false);
  Tensor g = up(l, {d, d});
  be->flip(g, true);
  const Vec fv = down(f), gv = down(g);
  for (std::int64_t i = 0; i < d; ++i)
    for (std::int64_t j = 0; j < d; ++j) {
      EXPECT_EQ(fv[i * d + j], l[(d - 1 - i) * d + d - 1 - j]);
      EXPECT_EQ(gv[i * d + j], j >= i ? l[(d - 1 - i) * d + d - 1 - j] : 0.0);
    }
}

TEST_P(BackendOps, SyrkFillsBothTriangles) {
  const std::int64_t n = 300, d = 45;
  const auto x = random_vec(n * d, 7);
  const Vec want = ref_gram(x, n, d, 2.0 / n);
  Tensor h = be->zeros({d, d});
  be->syrk(2.0f / n, up(x, {n, d}), 0.0f, h);
  EXPECT_REL_NEAR(down(h), want, Tol::f32);
}

TEST_P(BackendOps, NormsMatchFloat64) {
  const std::int64_t n = 13, d = 96;
  const auto x = random_vec(n * d, 8, 3.0), w = random_vec(d, 9), b = random_vec(d, 10);
  Tensor y = be->empty({n, d});
  const Tensor wt = up(w, {d}), bt = up(b, {d});
  be->layer_norm(up(x, {n, d}), &wt, &bt, 1e-5f, y);
  EXPECT_REL_NEAR(down(y), ref_layer_norm(x, w, b, n, d, 1e-5), Tol::f32);
  be->rms_norm(up(x, {n, d}), wt, 1e-6f, y);
  EXPECT_REL_NEAR(down(y), ref_rms_norm(x, w, n, d, 1e-6), Tol::f32);
}

TEST_P(BackendOps, ElementwiseMatchFloat64) {
  const std::int64_t n = 1000;
  const auto g = random_vec(n, 11, 2.0), u = random_vec(n, 12);
  Tensor o = be->empty({n});
  be->silu_mul(up(g, {n}), up(u, {n}), o);
  Vec want(n);
  for (std::int64_t i = 0; i < n; ++i) want[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
  EXPECT_REL_NEAR(down(o), want, Tol::f32);
  Tensor r = up(g, {n});
  be->relu(r);
  for (std::int64_t i = 0; i < n; ++i) want[i] = std::max(0.0, g[i]);
  EXPECT_REL_NEAR(down(r), want, Tol::f32);
  // NaN stays NaN, as torch.relu: a NaN weight must not vanish behind the activation.
  Tensor nan = up(Vec{std::nan(""), -1.0, 2.0}, {3});
  be->relu(nan);
  const auto back = down(nan);
  EXPECT_TRUE(std::isnan(back[0]));
  EXPECT_EQ(back[1], 0.0);
  EXPECT_EQ(back[2], 2.0);
}

TEST_P(BackendOps, RopeMatchesFloat64) {
  const std::int64_t B = 2, T = 50, H = 3, hd = 16;
  auto x = random_vec(B * T * H * hd, 13);
  Tensor t = up(x, {B * T, H * hd});
  Tensor c = Tensor::empty({T, hd}), s = Tensor::empty({T, hd});
  for (std::int64_t p = 0; p < T; ++p)
    for (std::int64_t i = 0; i < hd / 2; ++i) {
      const double f = p / std::pow(10000.0, 2.0 * i / hd);
      c.f32()[p * hd + i] = c.f32()[p * hd + i + hd / 2] = static_cast<float>(std::cos(f));
      s.f32()[p * hd + i] = s.f32()[p * hd + i + hd / 2] = static_cast<float>(std::sin(f));
    }
  be->rope(t, T, H, hd, be->upload(c), be->upload(s));
  ref_rope(x, B * T, T, H, hd, 10000.0);
  EXPECT_REL_NEAR(down(t), x, Tol::f32);
}

TEST_P(BackendOps, CausalGqaAttentionMatchesFloat64) {
  const std::int64_t B = 2, T = 23, H = 4, KV = 2, hd = 8;
  const auto q = random_vec(B * T * H * hd, 14), k = random_vec(B * T * KV * hd, 15), v = random_vec(B * T * KV * hd, 16);
  Tensor out = be->empty({B * T, H * hd});
  Tensor probs = be->empty({B, H, T, T});
  be->attention(up(q, {B * T, H * hd}), up(k, {B * T, KV * hd}), up(v, {B * T, KV * hd}),
                AttentionShape{B, T, H, KV, hd, 0.35f}, out, &probs);
  EXPECT_REL_NEAR(down(out), ref_attention(q, k, v, B, T, H, KV, hd, 0.35f), Tol::f32);
  // Causality: nothing above the diagonal, rows sum to one.
  const auto p = down(probs);
  for (std::int64_t i = 0; i < T; ++i) {
    double row = 0;
    for (std::int64_t j = 0; j < T; ++j) {
      if (j > i) {
        EXPECT_EQ(p[i * T + j], 0.0);
      }
      row += p[i * T + j];
    }
    EXPECT_NEAR(row, 1.0, 1e-6);
  }
}

TEST_P(BackendOps, NllMatchesFloat64LogSoftmax) {
  const std::int64_t n = 9, V = 500;
  const auto l = random_vec(n * V, 17, 4.0);
  std::vector<std::int32_t> tgt(n);
  for (std::int64_t i = 0; i < n; ++i) tgt[i] = static_cast<std::int32_t>((i * 131) % V);
  std::vector<double> got(n);
  be->nll(up(l, {n, V}), tgt, got);
  for (std::int64_t i = 0; i < n; ++i) {
    double m = -1e300, z = 0;
    for (std::int64_t j = 0; j < V; ++j) m = std::max(m, l[i * V + j]);
    for (std::int64_t j = 0; j < V; ++j) z += std::exp(l[i * V + j] - m);
    // fp32 exponentials: each term within 2^-24 relative, so the NLL within ~1e-7 absolute.
    EXPECT_NEAR(got[i], m + std::log(z) - l[i * V + tgt[i]], 1e-6);
  }
}

TEST_P(BackendOps, NllFlagsTheFirstArgmaxAsTorchDoes) {
  const std::int64_t n = 5, V = 300;
  auto l = random_vec(n * V, 23, 2.0);
  std::vector<std::int32_t> tgt{7, 150, 299, 40, 0};
  l[0 * V + 7] = 9.0;                          // the unique maximum: greedy
  l[1 * V + 150] = 9.0, l[1 * V + 3] = 9.0;    // tied with an earlier index: torch.argmax says 3
  l[2 * V + 299] = 9.0;                        // the last index, unique maximum
  l[3 * V + 40] = 9.0, l[3 * V + 200] = 9.0;   // tied with a later index: 40 comes first
  l[4 * V + 10] = 9.0;                         // not the maximum at all
  std::vector<double> got(n);
  std::vector<std::uint8_t> hit(n, 7);
  be->nll(up(l, {n, V}), tgt, got, hit);
  EXPECT_EQ(hit, (std::vector<std::uint8_t>{1, 0, 1, 1, 0}));
  std::vector<double> plain(n);
  be->nll(up(l, {n, V}), tgt, plain);  // the flag changes nothing else
  EXPECT_EQ(plain, got);
}

TEST_P(BackendOps, EmbeddingRejectsOutOfVocabularyIds) {
  Tensor table = up(random_vec(10 * 4, 18), {10, 4});
  Tensor out = be->empty({2, 4});
  std::vector<std::int32_t> ids{3, 10};
  EXPECT_THROW(be->embedding(ids, table, out), Error);
}

// ---- Pruning ops ----

// Symmetric positive definite test matrix A = BᵀB/k + I (condition number ~ 10).
Vec spd(std::int64_t n, std::uint64_t seed) {
  const std::int64_t k = 2 * n;
  const auto b = random_vec(k * n, seed);
  Vec a(static_cast<std::size_t>(n * n), 0.0);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (std::int64_t t = 0; t < k; ++t) s += b[t * n + i] * b[t * n + j];
      a[i * n + j] = s / k + (i == j);
    }
  for (auto& v : a) v = static_cast<double>(static_cast<float>(v));
  return a;
}

Vec matmul(const Vec& a, const Vec& b, std::int64_t m, std::int64_t k, std::int64_t n) {
  Vec c(static_cast<std::size_t>(m * n), 0.0);
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t p = 0; p < k; ++p)
      for (std::int64_t j = 0; j < n; ++j) c[i * n + j] += a[i * k + p] * b[p * n + j];
  return c;
}

Vec transpose(const Vec& a, std::int64_t m, std::int64_t n) {
  Vec t(a.size());
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) t[j * m + i] = a[i * n + j];
  return t;
}

std::vector<std::uint8_t> mask_bytes(const Tensor& t) {
  const auto* p = t.data<std::uint8_t>();
  return {p, p + t.numel()};
}

TEST_P(BackendOps, CholeskyFactorsAndInverts) {
  const std::int64_t n = 70;  // odd sizes past one 64-wide tile of the triangle mirror
  const auto a = spd(n, 20);
  for (const bool upper : {false, true}) {
    Tensor f = up(a, {n, n});
    ASSERT_TRUE(be->cholesky(f, upper));
    const auto fv = down(f);
    // The other triangle is zeroed, and the product gives A back (UᵀU or LLᵀ).
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < n; ++j)
        if (upper ? j < i : j > i) {
          EXPECT_EQ(fv[i * n + j], 0.0) << i << "," << j;
        }
    const auto back = upper ? matmul(transpose(fv, n, n), fv, n, n, n) : matmul(fv, transpose(fv, n, n), n, n, n);
    // potrf is backward stable: |A - FᵀF| ~ n eps |A|; cond ~ 10 keeps the factor itself as close.
    EXPECT_REL_NEAR(back, a, Tol::f32);
    be->cholesky_inverse(f, upper);
    // A · A⁻¹ = I: the inverse carries cond(A) x the factor's error, ~1e-6.
    const auto prod = matmul(a, down(f), n, n, n);
    Vec eye(static_cast<std::size_t>(n * n), 0.0);
    for (std::int64_t i = 0; i < n; ++i) eye[i * n + i] = 1.0;
    EXPECT_REL_NEAR(prod, eye, 1e-5);
  }
}

// Past the CPU backend's 96-wide leaves: the recursive blocked path (trsm, syrk, trmm) runs.
TEST_P(BackendOps, BlockedCholeskyAndSparseGptFactor) {
  const std::int64_t n = 250;
  const auto a = spd(n, 21);
  Tensor l = up(a, {n, n});
  ASSERT_TRUE(be->cholesky(l, false));
  const auto lv = down(l);
  EXPECT_REL_NEAR(matmul(lv, transpose(lv, n, n), n, n, n), a, Tol::f32);
  // SparseGPT's U: upper, and A · UᵀU = I (the inverse's error is cond(A) x the factor's, ~1e-6).
  Tensor u = up(a, {n, n});
  ASSERT_TRUE(be->inverse_cholesky_upper(u));
  const auto uv = down(u);
  for (std::int64_t i = 0; i < n; ++i) {
    EXPECT_GT(uv[i * n + i], 0.0) << i;
    for (std::int64_t j = 0; j < i; ++j) ASSERT_EQ(uv[i * n + j], 0.0) << i << "," << j;
  }
  Vec eye(static_cast<std::size_t>(n * n), 0.0);
  for (std::int64_t i = 0; i < n; ++i) eye[i * n + i] = 1.0;
  EXPECT_REL_NEAR(matmul(a, matmul(transpose(uv, n, n), uv, n, n, n), n, n, n), eye, 1e-5);
  // The reference's route (chol, cholesky_inverse, chol upper) reaches the same unique factor.
  Tensor r = up(a, {n, n});
  ASSERT_TRUE(be->cholesky(r, false));
  be->cholesky_inverse(r, false);
  ASSERT_TRUE(be->cholesky(r, true));
  EXPECT_REL_NEAR(down(r), uv, 1e-5);
  Vec bad = a;
  bad[(n / 2) * n + n / 2] = -1.0;  // a negative diagonal entry: not positive definite
  Tensor b = up(bad, {n, n});
  EXPECT_FALSE(be->inverse_cholesky_upper(b));
}

// The cuda backend inverts triangles above a leaf size (8192) by halves with two TRMMs; a small
// leaf puts n = 250 through three levels of that split. (The cpu backend ignores the variable.)
TEST_P(BackendOps, SparseGptFactorWithSplitTriangularInverse) {
  const std::int64_t n = 250;
  const auto a = spd(n, 22);
  Tensor whole = up(a, {n, n});
  ASSERT_TRUE(be->inverse_cholesky_upper(whole));
  setenv("SCALPEL_CUDA_TRTRI_LEAF", "40", 1);
  auto split = make_backend(GetParam(), 2);
  unsetenv("SCALPEL_CUDA_TRTRI_LEAF");
  Tensor u = split->upload(to_tensor(a, {n, n}));
  ASSERT_TRUE(split->inverse_cholesky_upper(u));
  const auto uv = to_vec(split->download(u));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < i; ++j) ASSERT_EQ(uv[i * n + j], 0.0) << i << "," << j;
  Vec eye(static_cast<std::size_t>(n * n), 0.0);
  for (std::int64_t i = 0; i < n; ++i) eye[i * n + i] = 1.0;
  EXPECT_REL_NEAR(matmul(a, matmul(transpose(uv, n, n), uv, n, n, n), n, n, n), eye, 1e-5);
  EXPECT_REL_NEAR(uv, down(whole), 1e-5);  // the unique factor, by either route
}

TEST_P(BackendOps, CholeskyReportsIndefinite) {
  Vec a = {1, 3, 0, 3, 1, 0, 0, 0, 1};  // eigenvalues -2, 4, 1
  Tensor f = up(a, {3, 3});
  EXPECT_FALSE(be->cholesky(f, true));
}

TEST_P(BackendOps, ColSqNormsAccumulate) {
  const std::int64_t n = 150, d = 37;
  const auto x = random_vec(n * d, 21);
  const auto s0 = random_vec(d, 22);
  Vec want(static_cast<std::size_t>(d));
  for (std::int64_t j = 0; j < d; ++j) {
    double s = 0;
    for (std::int64_t t = 0; t < n; ++t) s += x[t * d + j] * x[t * d + j];
    want[j] = 0.25 * s0[j] + 0.5 * s;
  }
  Tensor out = up(s0, {d});
  be->col_sq_norms(up(x, {n, d}), 0.5f, 0.25f, out);
  EXPECT_REL_NEAR(down(out), want, Tol::f32);
  // beta == 0 does not read out (as BLAS with C): NaN there does not leak through.
  Tensor nan = Tensor::empty({d});
  for (std::int64_t j = 0; j < d; ++j) nan.f32()[j] = std::numeric_limits<float>::quiet_NaN();
  out = be->upload(nan);
  be->col_sq_norms(up(x, {n, d}), 0.5f, 0.0f, out);
  for (std::int64_t j = 0; j < d; ++j) want[j] -= 0.25 * s0[j];
  EXPECT_REL_NEAR(down(out), want, Tol::f32);
}

TEST_P(BackendOps, HessianPrepareFixesDeadInputsAndDamps) {
  const std::int64_t d = 6, rows = 3;
  Vec h = spd(d, 23);
  for (std::int64_t j = 0; j < d; ++j) h[2 * d + j] = h[j * d + 2] = 0.0;  // input 2 never fires
  Tensor ht = up(h, {d, d});
  Tensor w = up(random_vec(rows * d, 24), {rows, d});
  const auto prep = be->hessian_prepare(ht, &w, 0.1f);
  EXPECT_EQ(prep.dead, 1);
  double mean = 1.0;  // the dead diagonal counts as 1, as in the reference
  for (std::int64_t j = 0; j < d; ++j) mean += j == 2 ? 0.0 : h[j * d + j];
  mean /= d;
  EXPECT_NEAR(prep.damp, 0.1 * mean, 1e-6 * mean);
  const auto hv = down(ht), wv = down(w);
  for (std::int64_t j = 0; j < d; ++j) EXPECT_NEAR(hv[j * d + j], (j == 2 ? 1.0 : h[j * d + j]) + prep.damp, 1e-6);
  for (std::int64_t r = 0; r < rows; ++r) EXPECT_EQ(wv[r * d + 2], 0.0);
}

TEST_P(BackendOps, KthThresholdPrunesExactlyKWithTies) {
  const std::int64_t rows = 40, cols = 50;
  // Values on a coarse grid so that many tie, including at every threshold.
  auto s = random_vec(rows * cols, 25);
  for (auto& v : s) v = std::round(std::fabs(v) * 8) / 8;
  const Tensor st = up(s, {rows, cols});
  for (const std::int64_t k : {std::int64_t{0}, std::int64_t{1}, std::int64_t{777}, rows * cols / 2, rows * cols - 1,
                               rows * cols}) {
    const auto t = be->kth_threshold(st, k);
    Tensor mask = be->empty({rows, cols + 3}, DType::u8);  // written at column offset 2
    be->mask_threshold(st, t, mask, 2);
    const auto m = mask_bytes(be->download(mask));
    // Reference: a stable sort of the flattened scores, the first k pruned.
    std::vector<std::int64_t> idx(static_cast<std::size_t>(rows * cols));
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](auto a, auto b) { return s[a] < s[b]; });
    std::vector<std::uint8_t> want(static_cast<std::size_t>(rows * cols), 1);
    for (std::int64_t i = 0; i < k; ++i) want[idx[i]] = 0;
    std::int64_t mismatches = 0;
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = 0; j < cols; ++j) mismatches += m[r * (cols + 3) + 2 + j] != want[r * cols + j];
    EXPECT_EQ(mismatches, 0) << "k = " << k;
  }
}

TEST_P(BackendOps, RowAndNmSelectionsFollowStableOrder) {
  const std::int64_t rows = 7, cols = 30;  // 30 = 7 groups of 4 + a tail of 2
  auto s = random_vec(rows * cols, 26);
  for (auto& v : s) v = std::round(std::fabs(v) * 4) / 4;  // ties
  const Tensor st = up(s, {rows, cols});
  Tensor mask = be->empty({rows, cols}, DType::u8);
  be->mask_rows_smallest(st, 11, mask);
  auto m = mask_bytes(be->download(mask));
  for (std::int64_t r = 0; r < rows; ++r) {
    std::vector<std::int64_t> idx(static_cast<std::size_t>(cols));
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](auto a, auto b) { return s[r * cols + a] < s[r * cols + b]; });
    for (std::int64_t i = 0; i < cols; ++i) EXPECT_EQ(m[r * cols + idx[i]], i < 11 ? 0 : 1) << r << "," << idx[i];
  }
  be->mask_nm(st, 3, 4, mask);
  m = mask_bytes(be->download(mask));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t g = 0; g < cols; g += 4) {
      const auto len = std::min<std::int64_t>(4, cols - g);
      std::vector<std::int64_t> idx(static_cast<std::size_t>(len));
      std::iota(idx.begin(), idx.end(), g);
      // (score, column) order, i.e. a stable sort (std::sort with the index as tie-break).
      std::sort(idx.begin(), idx.end(), [&](auto a, auto b) {
        return s[r * cols + a] < s[r * cols + b] || (s[r * cols + a] == s[r * cols + b] && a < b);
      });
      for (std::int64_t i = 0; i < len; ++i)
        EXPECT_EQ(m[r * cols + idx[i]], i < std::min<std::int64_t>(3, len) ? 0 : 1) << r << "," << idx[i];
    }
}

TEST_P(BackendOps, ScoresAndApplyMask) {
  const std::int64_t rows = 5, cols = 9;
  const auto w = random_vec(rows * cols, 27);
  auto c = random_vec(cols, 28);
  for (auto& v : c) v = std::fabs(v);
  const Tensor wt = up(w, {rows, cols}), ct = up(c, {cols});
  Tensor s = be->empty({rows, cols});
  be->prune_scores(wt, &ct, s);
  Vec want(w.size());
  for (std::int64_t i = 0; i < rows * cols; ++i) want[i] = std::fabs(w[i]) * std::sqrt(c[i % cols]);
  EXPECT_REL_NEAR(down(s), want, Tol::f32);
  Tensor mask = Tensor::empty({rows, cols}, DType::u8);  // host; uploaded below
  for (std::int64_t i = 0; i < rows * cols; ++i) mask.data<std::uint8_t>()[i] = i % 3 != 0;
  Tensor wm = up(w, {rows, cols});
  be->apply_mask(wm, be->upload(mask));
  const auto got = down(wm);
  for (std::int64_t i = 0; i < rows * cols; ++i) EXPECT_EQ(got[i], i % 3 ? static_cast<double>(static_cast<float>(w[i])) : 0.0);
}

// One OBS block with a given mask, and the lazy update, against the reference's column loop in
// float64 (W1[:, i:] -= err ⊗ Hinv1[i, i:], then W[:, i2:] -= Err1 · Hinv[i1:i2, i2:]).
TEST_P(BackendOps, ObsSweepBlockAndLazyUpdateMatchFloat64) {
  const std::int64_t rows = 13, d = 40, c0 = 8, width = 20;
  const auto w0 = random_vec(rows * d, 29);
  auto u = random_vec(d * d, 30, 0.1);
  for (std::int64_t i = 0; i < d; ++i) {
    for (std::int64_t j = 0; j < i; ++j) u[i * d + j] = 0.0;
    u[i * d + i] = 1.0 + std::fabs(u[i * d + i]);
  }
  for (const int pm : {0, 4}) {
    std::vector<std::uint8_t> mk(static_cast<std::size_t>(rows * d), 1);
    if (pm == 0)
      for (std::int64_t i = 0; i < rows * d; ++i) mk[i] = (i * 7) % 5 < 3;
    // float64 reference
    Vec w = w0, err(static_cast<std::size_t>(rows * width), 0.0), loss(static_cast<std::size_t>(rows), 0.0);
    for (std::int64_t r = 0; r < rows; ++r) {
      double* wr = w.data() + r * d;
      for (std::int64_t i = 0; i < width; ++i) {
        const std::int64_t c = c0 + i;
        if (pm && i % pm == 0) {
          std::vector<std::int64_t> idx(pm);
          std::iota(idx.begin(), idx.end(), c);
          auto score = [&](std::int64_t j) { return wr[j] * wr[j] / (u[j * d + j] * u[j * d + j]); };
          std::stable_sort(idx.begin(), idx.end(), [&](auto a, auto b) { return score(a) < score(b); });
          for (int t = 0; t < pm; ++t) mk[r * d + idx[t]] = t >= 1;  // 1:4
        }
        const double e = mk[r * d + c] ? 0.0 : wr[c] / u[c * d + c];
        for (std::int64_t j = c; j < c0 + width; ++j) wr[j] -= e * u[c * d + j];
        if (!mk[r * d + c]) wr[c] = 0.0;
        err[r * width + i] = e;
        loss[r] += e * e / 2;
      }
      for (std::int64_t j = c0 + width; j < d; ++j)
        for (std::int64_t i = 0; i < width; ++i) wr[j] -= err[r * width + i] * u[(c0 + i) * d + j];
    }
    Tensor wt = up(w0, {rows, d}), ut = up(u, {d, d});
    Tensor mask = Tensor::empty({rows, d}, DType::u8);  // host; uploaded below
    std::copy(mk.begin(), mk.end(), mask.data<std::uint8_t>());
    if (pm) std::fill(mask.data<std::uint8_t>(), mask.data<std::uint8_t>() + rows * d, std::uint8_t{7});
    mask = be->upload(mask);
    Tensor et = be->empty({rows, width}), lt = be->zeros({rows}, DType::f64);
    be->obs_sweep_block(wt, ut, c0, width, pm ? 1 : 0, pm, mask, et, lt);
    be->obs_lazy_update(wt, et, ut, c0, 0, 0);
    EXPECT_REL_NEAR(down(wt), w, Tol::f32);
    EXPECT_REL_NEAR(down(et), err, Tol::f32);
    const Tensor lh = be->download(lt);
    EXPECT_REL_NEAR(Vec(lh.f64(), lh.f64() + rows), loss, Tol::f32);
    const auto mg = mask_bytes(be->download(mask));
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = c0; j < c0 + width; ++j) EXPECT_EQ(mg[r * d + j], mk[r * d + j]) << r << "," << j;
  }
}

TEST_P(BackendOps, RowwiseDotAndAllFinite) {
  const std::int64_t rows = 6, d = 33;
  const auto a = random_vec(rows * d, 31), b = random_vec(rows * d, 32);
  std::vector<double> got(rows);
  be->rowwise_dot(up(a, {rows, d}), up(b, {rows, d}), got);
  Vec want(rows, 0.0);
  for (std::int64_t i = 0; i < rows * d; ++i) want[i / d] += a[i] * b[i];
  EXPECT_REL_NEAR(Vec(got.begin(), got.end()), want, 1e-12);  // fp32 inputs, double products and sums
  Tensor t = to_tensor(a, {rows, d});  // host
  EXPECT_TRUE(be->all_finite(be->upload(t)));
  t.f32()[5] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(be->all_finite(be->upload(t)));
  Tensor d64 = Tensor::zeros({rows}, DType::f64);
  EXPECT_TRUE(be->all_finite(be->upload_exact(d64)));
  d64.f64()[rows - 1] = std::numeric_limits<double>::infinity();
  EXPECT_FALSE(be->all_finite(be->upload_exact(d64)));
}

// The float64 sums of the summed statistics: elementwise and packed upper triangle, rounded once.
TEST_P(BackendOps, Float64SumsRoundOnce) {
  const std::int64_t d = 37;
  const auto a = random_vec(d * d, 33), b = random_vec(d * d, 34);
  Vec sa(a.size()), sb(b.size());  // symmetric versions
  for (std::int64_t i = 0; i < d; ++i)
    for (std::int64_t j = 0; j < d; ++j) {
      sa[i * d + j] = static_cast<float>(a[std::min(i, j) * d + std::max(i, j)]);
      sb[i * d + j] = static_cast<float>(b[std::min(i, j) * d + std::max(i, j)]);
    }
  Tensor acc = be->zeros({d * (d + 1) / 2}, DType::f64);
  be->accumulate_upper_f64(up(sa, {d, d}), acc);
  be->accumulate_upper_f64(up(sb, {d, d}), acc);
  Tensor h = be->empty({d, d});
  be->upper_f64_to_symmetric(acc, 0.5, h);
  Vec want(sa.size());
  for (std::size_t i = 0; i < want.size(); ++i) want[i] = static_cast<float>((sa[i] + sb[i]) * 0.5);
  EXPECT_EQ(rel_err(down(h), want), 0.0);  // two fp32 values sum exactly in double; one rounding
  Tensor acc1 = be->zeros({d}, DType::f64), out = be->empty({d});
  be->accumulate_f64(up(Vec(a.begin(), a.begin() + d), {d}), acc1);
  be->accumulate_f64(up(Vec(b.begin(), b.begin() + d), {d}), acc1);
  be->f64_to_f32(acc1, 2.0, out);
  Vec want1(d);
  for (std::int64_t j = 0; j < d; ++j)
    want1[j] = static_cast<float>((double(float(a[j])) + double(float(b[j]))) * 2.0);
  EXPECT_EQ(rel_err(down(out), want1), 0.0);
}

INSTANTIATE_TEST_SUITE_P(All, BackendOps, ::testing::ValuesIn(test_backends()));

}  // namespace
}  // namespace scalpel::test
