// Every backend op against a float64 reference, one test body for all backends (ggml's
// test-backend-ops idea): the cuda backend joins the list when it is built and a GPU is present.
#include <gtest/gtest.h>

#include "../common/reference.hpp"
#include "scalpel/backend/backend.hpp"
#include "scalpel/core/error.hpp"

namespace scalpel::test {
namespace {

class BackendOps : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { be = make_backend(GetParam(), 2); }
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

TEST_P(BackendOps, SyrkFillsBothTriangles) {
  const std::int64_t n = 300, d = 45;
  const auto x = random_vec(n * d, 7);
  Vec want(static_cast<std::size_t>(d * d), 0.0);
  for (std::int64_t i = 0; i < d; ++i)
    for (std::int64_t j = 0; j < d; ++j)
      for (std::int64_t t = 0; t < n; ++t) want[i * d + j] += 2.0 / n * x[t * d + i] * x[t * d + j];
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

TEST_P(BackendOps, EmbeddingRejectsOutOfVocabularyIds) {
  Tensor table = up(random_vec(10 * 4, 18), {10, 4});
  Tensor out = be->empty({2, 4});
  std::vector<std::int32_t> ids{3, 10};
  EXPECT_THROW(be->embedding(ids, table, out), Error);
}

std::vector<std::string> backends() { return {"cpu"}; }
INSTANTIATE_TEST_SUITE_P(All, BackendOps, ::testing::ValuesIn(backends()));

}  // namespace
}  // namespace scalpel::test
