// LLM Surgeon's per-shot pieces against float64 computations written here from the formulas of
// METHODS.md section 1 (pruner.py, threshold.py, curvature.py of the reference): Kronecker factor
// sums, rebalancing, dead rows and columns, costs, the three selections, and the correlated
// updates as the explicit OBS solution with the Kronecker product formed in full.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "../common/backends.hpp"
#include "../common/reference.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/prune/kfac.hpp"
#include "scalpel/prune/surgeon.hpp"

namespace scalpel::test {
namespace {

using namespace scalpel::prune;
using namespace scalpel::prune::surgeon;

// ---- float64 dense helpers (small n) ----
Vec inverse(Vec a, std::int64_t n) {  // Gauss-Jordan with partial pivoting
  Vec inv(static_cast<std::size_t>(n * n), 0.0);
  for (std::int64_t i = 0; i < n; ++i) inv[i * n + i] = 1;
  for (std::int64_t c = 0; c < n; ++c) {
    std::int64_t p = c;
    for (std::int64_t r = c + 1; r < n; ++r)
      if (std::abs(a[r * n + c]) > std::abs(a[p * n + c])) p = r;
    for (std::int64_t j = 0; j < n; ++j) {
      std::swap(a[c * n + j], a[p * n + j]);
      std::swap(inv[c * n + j], inv[p * n + j]);
    }
    const double d = a[c * n + c];
    for (std::int64_t j = 0; j < n; ++j) {
      a[c * n + j] /= d;
      inv[c * n + j] /= d;
    }
    for (std::int64_t r = 0; r < n; ++r) {
      if (r == c) continue;
      const double f = a[r * n + c];
      for (std::int64_t j = 0; j < n; ++j) {
        a[r * n + j] -= f * a[c * n + j];
        inv[r * n + j] -= f * inv[c * n + j];
      }
    }
  }
  return inv;
}

Vec spd(std::int64_t n, std::uint64_t seed) {  // M Mᵀ / n + 0.1 I, well conditioned
  const Vec m = random_vec(static_cast<std::size_t>(n * n), seed);
  Vec a(static_cast<std::size_t>(n * n), 0.0);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      for (std::int64_t k = 0; k < n; ++k) a[i * n + j] += m[i * n + k] * m[j * n + k];
      a[i * n + j] /= static_cast<double>(n);
    }
  for (std::int64_t i = 0; i < n; ++i) a[i * n + i] += 0.1;
  return a;
}

Tensor f64(const Vec& v, std::int64_t n) {
  Tensor t = Tensor::empty({n, n}, DType::f64);
  std::copy(v.begin(), v.end(), t.f64());
  return t;
}

Vec sub(const Vec& a, std::int64_t n, const std::vector<std::int64_t>& idx) {
  Vec s;
  for (const auto i : idx)
    for (const auto j : idx) s.push_back(a[i * n + j]);
  return s;
}

Vec damped_inv(const Vec& a, std::int64_t n, double damp) {
  double mean = 0;
  for (std::int64_t i = 0; i < n; ++i) mean += a[i * n + i];
  mean /= static_cast<double>(n);
  Vec d = a;
  for (std::int64_t i = 0; i < n; ++i) d[i * n + i] += damp * mean;
  return inverse(d, n);
}

struct Problem {
  std::int64_t R = 6, C = 5;  // C includes the bias column
  Vec w, a, g;
  Linear linear() const {
    Linear l{"layer 0 test", to_tensor(w, {R, C}), true, f64(a, C), f64(g, R)};
    return l;
  }
};

Problem make_problem(std::uint64_t seed, std::int64_t R = 6, std::int64_t C = 5) {
  Problem p;
  p.R = R;
  p.C = C;
  p.w = random_vec(static_cast<std::size_t>(R * C), seed);
  p.a = spd(C, seed + 1);
  p.g = spd(R, seed + 2);
  return p;
}

// ---- factors ----

TEST(KroneckerFactor, MeanWithTheBiasColumnMatchesFloat64) {
  auto be = make_cpu_backend(2);
  dist::SelfComm self;
  const std::int64_t d = 7;
  const std::vector<std::int64_t> sizes{5, 9, 3};
  std::vector<Vec> batches;
  for (std::size_t i = 0; i < sizes.size(); ++i) batches.push_back(random_vec(static_cast<std::size_t>(sizes[i] * d), 40 + i));
  Vec want(static_cast<std::size_t>((d + 1) * (d + 1)), 0.0);
  std::int64_t tokens = 0;
  for (std::size_t b = 0; b < batches.size(); ++b)
    for (std::int64_t t = 0; t < sizes[b]; ++t, ++tokens) {
      Vec row(batches[b].begin() + t * d, batches[b].begin() + (t + 1) * d);
      row.push_back(1.0);
      for (std::int64_t i = 0; i <= d; ++i)
        for (std::int64_t j = 0; j <= d; ++j) want[i * (d + 1) + j] += row[i] * row[j];
    }
  for (auto& v : want) v /= static_cast<double>(tokens);
  for (const auto mode : {Accumulation::sum, Accumulation::exact}) {
    KroneckerFactor f(*be, d, true, mode, "A");
    for (std::size_t b = 0; b < batches.size(); ++b) f.add(to_tensor(batches[b], {sizes[b], d}));
    f.reduce(self);
    const Tensor m = f.mean(tokens);
    ASSERT_EQ(m.size(0), d + 1);
    // fp32 syrk per batch (k <= 9 products, ~1e-7) then float64 sums.
    EXPECT_REL_NEAR(Vec(m.f64(), m.f64() + m.numel()), want, 1e-6);
    EXPECT_EQ(m.f64()[d * (d + 1) + d], 1.0);  // the count of ones / tokens
  }
}

TEST(KroneckerFactor, ExactSumsAreBitwiseIndependentOfBatchOrder) {
  auto be = make_cpu_backend(2);
  dist::SelfComm self;
  const std::int64_t d = 5;
  const Vec x1 = random_vec(30, 50), x2 = random_vec(40, 51, 100.0), x3 = random_vec(20, 52, 1e-3);
  KroneckerFactor f1(*be, d, false, Accumulation::exact, "G"), f2(*be, d, false, Accumulation::exact, "G");
  f1.add(to_tensor(x1, {6, d}));
  f1.add(to_tensor(x2, {8, d}));
  f1.add(to_tensor(x3, {4, d}));
  f2.add(to_tensor(x3, {4, d}));
  f2.add(to_tensor(x1, {6, d}));
  f2.add(to_tensor(x2, {8, d}));
  f1.reduce(self);
  f2.reduce(self);
  const Tensor m1 = f1.mean(18), m2 = f2.mean(18);
  EXPECT_EQ(0, std::memcmp(m1.f64(), m2.f64(), static_cast<std::size_t>(m1.numel()) * sizeof(double)));
}

TEST(KroneckerFactor, NonFiniteBatchIsARuntimeError) {
  auto be = make_cpu_backend(1);
  KroneckerFactor f(*be, 3, false, Accumulation::sum, "layer 2 fc1 G");
  Vec v(6, 1.0);
  v[4] = std::nan("");
  try {
    f.add(to_tensor(v, {2, 3}));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 2 fc1 G"), std::string::npos) << e.what();
  }
}

TEST(KroneckerFactor, RebalanceEqualisesNormsAndKeepsTheProduct) {
  Vec a = spd(4, 60), g = spd(3, 61);
  for (auto& v : g) v *= 1e-6;
  Tensor ta = f64(a, 4), tg = f64(g, 3);
  rebalance_factors(ta, tg);
  double na = 0, ng = 0;
  for (int i = 0; i < 16; ++i) na += ta.f64()[i] * ta.f64()[i];
  for (int i = 0; i < 9; ++i) ng += tg.f64()[i] * tg.f64()[i];
  EXPECT_NEAR(std::sqrt(na), std::sqrt(ng), 1e-12 * std::sqrt(na));
  EXPECT_NEAR(ta.f64()[5] * tg.f64()[4], a[5] * g[4], 1e-12 * std::abs(a[5] * g[4]));
}

// ---- score ----

TEST(SurgeonScore, DeadRowsAndColumnsAndElementCosts) {
  auto be = make_cpu_backend(2);
  auto p = make_problem(70);
  for (std::int64_t c = 0; c < p.C; ++c) p.w[2 * p.C + c] = 0;  // row 2: all-zero weight
  for (std::int64_t j = 0; j < p.R; ++j) p.g[4 * p.R + j] = p.g[j * p.R + 4] = 0;  // row 4: G_rr = 0
  for (std::int64_t r = 0; r < p.R; ++r) p.w[r * p.C + 1] = 0;  // column 1: all-zero
  Linear l = p.linear();
  Options o;
  const Scored s = score(*be, l, o);
  EXPECT_EQ(s.rows, (std::vector<std::int64_t>{0, 1, 3, 5}));
  EXPECT_EQ(s.cols, (std::vector<std::int64_t>{0, 2, 3, 4}));
  for (std::int64_t c = 0; c < p.C; ++c) EXPECT_EQ(l.w.f32()[4 * p.C + c], 0.0f);  // zeroed
  const Vec gi = damped_inv(sub(p.g, p.R, s.rows), 4, o.damp_g), ai = damped_inv(sub(p.a, p.C, s.cols), 4, o.damp_a);
  for (std::int64_t i = 0; i < 4; ++i)
    for (std::int64_t j = 0; j < 4; ++j) {
      const auto r = s.rows[i], c = s.cols[j];
      const double w = p.w[r * p.C + c], want = 0.5 * w * w / (gi[i * 4 + i] * ai[j * 4 + j]);
      EXPECT_NEAR(s.cost[r * p.C + c], want, 1e-5 * want);  // fp32 costs from float64 inverses
    }
  EXPECT_EQ(s.cost[4 * p.C + 0], 0.0f);
  EXPECT_EQ(s.cost[0 * p.C + 1], 0.0f);
}

TEST(SurgeonScore, NonFiniteFactorNamesTheLinear) {
  auto be = make_cpu_backend(1);
  auto p = make_problem(71);
  p.a[3] = std::numeric_limits<double>::infinity();
  Linear l = p.linear();
  try {
    score(*be, l, Options{});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 0 test: the Kronecker factor A is not finite"), std::string::npos)
        << e.what();
  }
}

// ---- updates as the explicit OBS solution ----

// The reference's element update in float64 with F̂⁻¹ = Ĝ⁻¹ ⊗ Â⁻¹ formed in full: chunks of
// whole rows (max_correlate entries), λ = (F̂⁻¹_QQ)⁻¹ (w_Q + addupdate·Δw_Q), Δw -= F̂⁻¹[:, Q] λ.
Vec reference_element_update(const Problem& p, const std::vector<std::uint8_t>& mask, std::int64_t max_correlate,
                             bool addupdate, const Options& o) {
  const auto R = p.R, C = p.C, n = R * C;
  const Vec gi = damped_inv(p.g, R, o.damp_g), ai = damped_inv(p.a, C, o.damp_a);
  auto finv = [&](std::int64_t x, std::int64_t y) { return gi[(x / C) * R + y / C] * ai[(x % C) * C + y % C]; };
  std::vector<std::int64_t> q;
  for (std::int64_t i = 0; i < n; ++i)
    if (mask[static_cast<std::size_t>(i)]) q.push_back(i);
  std::vector<std::vector<std::int64_t>> chunks(1);
  std::int64_t count = 0;
  for (std::size_t k = 0; k < q.size();) {
    std::size_t e = k;
    while (e < q.size() && q[e] / C == q[k] / C) ++e;
    const auto num = static_cast<std::int64_t>(e - k);
    if (max_correlate > 0 && count + num > max_correlate && count > 0) {
      chunks.emplace_back();
      count = 0;
    }
    chunks.back().insert(chunks.back().end(), q.begin() + k, q.begin() + e);
    count += num;
    k = e;
  }
  Vec dw(static_cast<std::size_t>(n), 0.0);
  for (const auto& ch : chunks) {
    const auto m = static_cast<std::int64_t>(ch.size());
    if (m == 0) continue;
    Vec cq(static_cast<std::size_t>(m * m)), rhs(static_cast<std::size_t>(m));
    for (std::int64_t a = 0; a < m; ++a) {
      for (std::int64_t b = 0; b < m; ++b) cq[a * m + b] = finv(ch[a], ch[b]);
      rhs[a] = p.w[ch[a]] + (addupdate ? dw[ch[a]] : 0.0);
    }
    const Vec ci = inverse(cq, m);
    Vec lam(static_cast<std::size_t>(m), 0.0);
    for (std::int64_t a = 0; a < m; ++a)
      for (std::int64_t b = 0; b < m; ++b) lam[a] += ci[a * m + b] * rhs[b];
    for (std::int64_t x = 0; x < n; ++x)
      for (std::int64_t a = 0; a < m; ++a) dw[x] -= finv(x, ch[a]) * lam[a];
  }
  Vec out = p.w;
  for (std::int64_t x = 0; x < n; ++x) out[x] = mask[static_cast<std::size_t>(x)] ? 0.0 : p.w[x] + dw[x];
  return out;
}

// The updates run on every backend (cuda: the sub-problem, chunk factors and solves on the GPU).
class ElementUpdate : public ::testing::TestWithParam<std::tuple<std::string, std::int64_t, bool>> {};

TEST_P(ElementUpdate, MatchesTheFloat64ObsSolution) {
  const auto [backend, max_correlate, addupdate] = GetParam();
  std::unique_ptr<Backend> be;
  SCALPEL_BACKEND_OR_SKIP(be, backend, 2);
  // 7 rows: one block of chunks; 40 rows with chunks of a row or two: blocks of 8 chunks, whose
  // updates reach ΔW at the block's end (each chunk still reads ΔW as the chunks before left it).
  for (const std::int64_t rows : {7, 40}) {
    const auto p = make_problem(80, rows, 9);
    Options o;
    o.max_correlate = max_correlate;
    o.addupdate = addupdate;
    std::vector<Linear> ls{p.linear()};
    std::vector<Scored> sc{score(*be, ls[0], o)};
    double tau = 0;
    const auto rem = select(ls, sc, o, 0.4, tau);
    EXPECT_EQ(rem[0].removed, static_cast<std::int64_t>(0.4 * static_cast<double>(rows * 9)));  // floor(s·n)
    update(*be, ls[0], sc[0], rem[0], o);
    const Vec want = reference_element_update(p, rem[0].mask, max_correlate, addupdate, o);
    // fp32 solves of systems up to 144 x 144 (condition ~1e2) against float64: ~1e-5.
    SCOPED_TRACE(::testing::Message() << rows << " rows");
    EXPECT_REL_NEAR(to_vec(ls[0].w), want, 2e-4);
    for (std::size_t k = 0; k < rem[0].mask.size(); ++k)
      EXPECT_TRUE(!rem[0].mask[k] || ls[0].w.f32()[k] == 0.0f) << k;
  }
}

INSTANTIATE_TEST_SUITE_P(Chunks, ElementUpdate,
                         ::testing::Combine(::testing::ValuesIn(test_backends()),
                                            ::testing::Values(std::int64_t{0}, std::int64_t{5}, std::int64_t{2}),
                                            ::testing::Bool()));

class StructuredUpdate : public ::testing::TestWithParam<std::string> {};

TEST_P(StructuredUpdate, RowsThenColumnsMatchFloat64) {
  std::unique_ptr<Backend> be;
  SCALPEL_BACKEND_OR_SKIP(be, GetParam(), 2);
  const auto p = make_problem(90, 8, 6);
  Options o;
  o.shape = surgeon::Shape::structured;
  o.max_correlate = 0;
  std::vector<Linear> ls{p.linear()};
  std::vector<Scored> sc{score(*be, ls[0], o)};
  Removal r;
  r.rows = {1, 5};
  r.cols = {2};
  update(*be, ls[0], sc[0], r, o);
  const auto R = p.R, C = p.C;
  const Vec gi = damped_inv(p.g, R, o.damp_g), ai = damped_inv(p.a, C, o.damp_a);
  Vec dw(static_cast<std::size_t>(R * C), 0.0);
  // Rows P = {1, 5}: ΔW = -Ĝ⁻¹[:, P] (Ĝ⁻¹_PP)⁻¹ W_P,:, then ΔW_P,: = -W_P,:.
  const std::vector<std::int64_t> P{1, 5};
  const Vec mi = inverse({gi[1 * R + 1], gi[1 * R + 5], gi[5 * R + 1], gi[5 * R + 5]}, 2);
  for (std::int64_t i = 0; i < R; ++i)
    for (std::int64_t c = 0; c < C; ++c) {
      double v = 0;
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) v += gi[i * R + P[a]] * mi[a * 2 + b] * p.w[P[b] * C + c];
      dw[i * C + c] = (i == 1 || i == 5) ? -p.w[i * C + c] : -v;
    }
  // Column 2 with addupdate: ΔW -= (W + ΔW)_:,2 / Â⁻¹_22 · Â⁻¹[2, :], then ΔW_:,2 = -W_:,2.
  Vec col(static_cast<std::size_t>(R));
  for (std::int64_t i = 0; i < R; ++i) col[i] = p.w[i * C + 2] + dw[i * C + 2];
  for (std::int64_t i = 0; i < R; ++i)
    for (std::int64_t c = 0; c < C; ++c)
      dw[i * C + c] += c == 2 ? -p.w[i * C + 2] : -col[i] / ai[2 * C + 2] * ai[2 * C + c];
  Vec want(static_cast<std::size_t>(R * C));
  for (std::int64_t i = 0; i < R; ++i)
    for (std::int64_t c = 0; c < C; ++c)
      want[i * C + c] = (i == 1 || i == 5 || c == 2) ? 0.0 : p.w[i * C + c] + dw[i * C + c];
  EXPECT_REL_NEAR(to_vec(ls[0].w), want, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Backends, StructuredUpdate, ::testing::ValuesIn(test_backends()));

// ---- selections ----

TEST(SurgeonSelect, ElementTiesInLinearThenRowMajorOrder) {
  std::vector<Linear> ls(2);
  ls[0].w = Tensor::zeros({2, 2});
  ls[1].w = Tensor::zeros({1, 3});
  std::vector<Scored> sc(2);
  sc[0].cost = {1, 3, 2, 2};
  sc[1].cost = {2, 0.5f, 9};
  double tau = 0;
  const auto r = select(ls, sc, Options{}, 4.0 / 7.0, tau);  // k = 4: 0.5, 1, and two of the 2s
  EXPECT_EQ(tau, 2.0);
  EXPECT_EQ(r[0].mask, (std::vector<std::uint8_t>{1, 0, 1, 1}));
  EXPECT_EQ(r[1].mask, (std::vector<std::uint8_t>{0, 1, 0}));
}

TEST(SurgeonSelect, NmGroupsOfRealColumnsBiasExcluded) {
  std::vector<Linear> ls(1);
  ls[0].w = Tensor::zeros({2, 9});  // 8 real columns + bias
  ls[0].has_bias = true;
  std::vector<Scored> sc(1);
  sc[0].cost = {4, 3, 2, 1, 8, 8, 8, 8, 0, /**/ 1, 1, 9, 9, 0, 5, 0, 5, 0};
  Options o;
  o.shape = surgeon::Shape::nm;
  double tau = 0;
  // Group costs (two smallest): 3, 16, 2, 0 -> at s = 0.25 half the groups: 0 and 2.
  auto r = select(ls, sc, o, 0.25, tau);
  EXPECT_EQ(tau, 2.0);
  EXPECT_EQ(r[0].mask, (std::vector<std::uint8_t>{0, 0, 0, 0, 0, 0, 0, 0, 0, /**/ 1, 1, 0, 0, 1, 0, 1, 0, 0}));
  r = select(ls, sc, o, 0.5, tau);  // every group: exactly 2:4, bias never
  EXPECT_EQ(r[0].mask, (std::vector<std::uint8_t>{0, 0, 1, 1, 1, 1, 0, 0, 0, /**/ 1, 1, 0, 0, 1, 0, 1, 0, 0}));
  ls[0].w = Tensor::zeros({2, 8});  // 7 real columns: not a multiple of 4
  EXPECT_THROW(select(ls, sc, o, 0.5, tau), Error);
}

TEST(SurgeonSelect, StructuredCountsOverlapAndTakesTheLargestThresholdThatFits) {
  std::vector<Linear> ls(2);
  ls[0].w = Tensor::zeros({4, 3});
  ls[1].w = Tensor::zeros({2, 5});
  std::vector<Scored> sc(2);
  sc[0].row_cost = {5, 1, 7, 3};
  sc[0].col_cost = {2, 6, 4};
  sc[1].row_cost = {0.5f, 8};
  sc[1].col_cost = {9, 1.5f, 2.5f, 9, 9};
  Options o;
  o.shape = surgeon::Shape::structured;
  // Brute force: removed(τ) over every cost, largest τ within floor(0.4·22) = 8.
  double tau = 0;
  const auto r = select(ls, sc, o, 0.4, tau);
  auto removed = [&](float t) {
    std::int64_t tot = 0;
    for (int i = 0; i < 2; ++i) {
      std::int64_t a = 0, b = 0;
      for (const auto v : sc[i].row_cost) a += v <= t;
      for (const auto v : sc[i].col_cost) b += v <= t;
      tot += a * ls[i].w.size(1) + b * ls[i].w.size(0) - a * b;
    }
    return tot;
  };
  float best = -1;
  for (const auto& s : sc)
    for (const auto& list : {s.row_cost, s.col_cost})
      for (const auto v : list)
        if (removed(v) <= 8 && v > best) best = v;
  EXPECT_EQ(tau, best);
  std::int64_t total = 0;
  for (const auto& x : r) total += x.removed;
  EXPECT_EQ(total, removed(best));
  EXPECT_LE(total, 8);
}

}  // namespace
}  // namespace scalpel::test
