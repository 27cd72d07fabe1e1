// LLM Surgeon's per-shot pieces (see surgeon.hpp): dead structures, damped float64 inverses,
// costs, and the removal's correlated update. The sub-problem of a linear is its alive rows and
// columns, as the reference squeezes dead ones out before inverting; heavy products and solves
// go through the Backend, index gathers are host loops.
#include "scalpel/prune/surgeon.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "scalpel/core/error.hpp"

namespace scalpel::prune::surgeon {
namespace {

using Index = std::vector<std::int64_t>;

// src[rows, cols] of a 2-D f32 or f64 host tensor, as f32 [rows.size(), cols.size()].
Tensor gather(const Tensor& src, const Index& rows, const Index& cols) {
  const auto ld = src.size(1), nr = static_cast<std::int64_t>(rows.size()), nc = static_cast<std::int64_t>(cols.size());
  Tensor out = Tensor::empty({nr, nc});
  float* o = out.f32();
  for (std::int64_t i = 0; i < nr; ++i)
    for (std::int64_t j = 0; j < nc; ++j) {
      const auto k = rows[static_cast<std::size_t>(i)] * ld + cols[static_cast<std::size_t>(j)];
      o[i * nc + j] = src.dtype() == DType::f64 ? static_cast<float>(src.f64()[k]) : src.f32()[k];
    }
  return out;
}

// Inverse of the damped sub-factor x[idx, idx] + damp·mean(diag)·I, by Cholesky in float64.
Tensor damped_inverse(Backend& be, const Tensor& x, const Index& idx, double damp, const std::string& what) {
  const auto n = static_cast<std::int64_t>(idx.size()), ld = x.size(1);
  Tensor s = Tensor::empty({n, n}, DType::f64);
  double mean = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < n; ++j)
      s.f64()[i * n + j] = x.f64()[idx[static_cast<std::size_t>(i)] * ld + idx[static_cast<std::size_t>(j)]];
    mean += s.f64()[i * n + i];
  }
  mean /= static_cast<double>(std::max<std::int64_t>(n, 1));
  for (std::int64_t i = 0; i < n; ++i) s.f64()[i * n + i] += damp * mean;
  if (!be.spd_inverse_f64(s)) SCALPEL_RUNTIME_ERROR("{}: the damped factor is not positive definite", what);
  Tensor out = Tensor::empty({n, n});
  for (std::int64_t i = 0; i < n * n; ++i) out.f32()[i] = static_cast<float>(s.f64()[i]);
  return out;
}

bool all_finite64(const Tensor& t) {
  for (std::int64_t i = 0; i < t.numel(); ++i)
    if (!std::isfinite(t.f64()[i])) return false;
  return true;
}

// Marks dead rows and columns, zeroes them in w, and returns the alive ones.
void find_alive(Linear& l, bool factors, Scored& s) {
  const auto R = l.w.size(0), C = l.w.size(1);
  float* w = l.w.f32();
  std::vector<std::uint8_t> row_nz(static_cast<std::size_t>(R), 0), col_nz(static_cast<std::size_t>(C), 0);
  for (std::int64_t r = 0; r < R; ++r)
    for (std::int64_t c = 0; c < C; ++c)
      if (w[r * C + c] != 0.0f) row_nz[static_cast<std::size_t>(r)] = col_nz[static_cast<std::size_t>(c)] = 1;
  for (std::int64_t r = 0; r < R; ++r)
    if (row_nz[static_cast<std::size_t>(r)] && (!factors || l.g.f64()[r * R + r] != 0.0)) s.rows.push_back(r);
  for (std::int64_t c = 0; c < C; ++c)
    if (col_nz[static_cast<std::size_t>(c)] && (!factors || l.a.f64()[c * C + c] != 0.0)) s.cols.push_back(c);
  std::vector<std::uint8_t> keep_r(static_cast<std::size_t>(R), 0), keep_c(static_cast<std::size_t>(C), 0);
  for (const auto r : s.rows) keep_r[static_cast<std::size_t>(r)] = 1;
  for (const auto c : s.cols) keep_c[static_cast<std::size_t>(c)] = 1;
  for (std::int64_t r = 0; r < R; ++r)
    for (std::int64_t c = 0; c < C; ++c)
      if (!keep_r[static_cast<std::size_t>(r)] || !keep_c[static_cast<std::size_t>(c)]) w[r * C + c] = 0.0f;
}

float finite_or_zero(double v) { return std::isfinite(v) ? static_cast<float>(v) : 0.0f; }  // NaN -> 0, as losses[losses != losses] = 0

void element_costs(const Linear& l, Scored& s, Cost cost) {
  const auto C = l.w.size(1);
  s.cost.assign(static_cast<std::size_t>(l.w.numel()), 0.0f);
  const auto nr = static_cast<std::int64_t>(s.rows.size()), nc = static_cast<std::int64_t>(s.cols.size());
  for (std::int64_t i = 0; i < nr; ++i)
    for (std::int64_t j = 0; j < nc; ++j) {
      const auto r = s.rows[static_cast<std::size_t>(i)], c = s.cols[static_cast<std::size_t>(j)];
      const double w = l.w.f32()[r * C + c];
      double v = 0.5 * w * w;
      if (cost == Cost::surgeon) v /= static_cast<double>(s.ginv.f32()[i * nr + i]) * s.ainv.f32()[j * nc + j];
      if (cost == Cost::kobd) v *= l.g.f64()[r * l.g.size(1) + r] * l.a.f64()[c * C + c];
      s.cost[static_cast<std::size_t>(r * C + c)] = finite_or_zero(v);
    }
}

// Row r: ½ w_r A w_rᵀ (A undamped) divided by [Ĝ⁻¹]_rr (surgeon) or times G_rr (kobd), ‖w_r‖
// (magnitude); column c: ½ w_cᵀ G w_c with [Â⁻¹]_cc or A_cc, ‖w_c‖.
void structured_costs(Backend& be, const Linear& l, Scored& s, Cost cost) {
  const auto R = l.w.size(0), C = l.w.size(1);
  const auto nr = static_cast<std::int64_t>(s.rows.size()), nc = static_cast<std::int64_t>(s.cols.size());
  s.row_cost.assign(static_cast<std::size_t>(R), 0.0f);
  s.col_cost.assign(static_cast<std::size_t>(C), 0.0f);
  if (nr == 0 || nc == 0) return;
  const Tensor w = gather(l.w, s.rows, s.cols);
  std::vector<double> rq(static_cast<std::size_t>(nr), 0.0), cq(static_cast<std::size_t>(nc), 0.0);
  if (cost == Cost::magnitude) {
    for (std::int64_t i = 0; i < nr; ++i)
      for (std::int64_t j = 0; j < nc; ++j) {
        const double v = w.f32()[i * nc + j];
        rq[static_cast<std::size_t>(i)] += v * v;
        cq[static_cast<std::size_t>(j)] += v * v;
      }
    for (auto& v : rq) v = std::sqrt(v);
    for (auto& v : cq) v = std::sqrt(v);
  } else {
    // The two products on the backend (host tensors go to its device and back).
    const Tensor wd = view_on(be, w);
    Tensor wa = be.empty({nr, nc}), gw = be.empty({nr, nc});
    be.gemm(Trans::no, Trans::no, 1.0f, wd, view_on(be, gather(l.a, s.cols, s.cols)), 0.0f, wa);
    be.gemm(Trans::no, Trans::no, 1.0f, view_on(be, gather(l.g, s.rows, s.rows)), wd, 0.0f, gw);
    wa = be.download(wa);
    gw = be.download(gw);
    for (std::int64_t i = 0; i < nr; ++i)
      for (std::int64_t j = 0; j < nc; ++j) {
        const double v = w.f32()[i * nc + j];
        rq[static_cast<std::size_t>(i)] += 0.5 * v * wa.f32()[i * nc + j];
        cq[static_cast<std::size_t>(j)] += 0.5 * v * gw.f32()[i * nc + j];
      }
    for (std::int64_t i = 0; i < nr; ++i) {
      const auto r = s.rows[static_cast<std::size_t>(i)];
      rq[static_cast<std::size_t>(i)] = cost == Cost::surgeon ? rq[static_cast<std::size_t>(i)] / s.ginv.f32()[i * nr + i]
                                                             : rq[static_cast<std::size_t>(i)] * l.g.f64()[r * R + r];
    }
    for (std::int64_t j = 0; j < nc; ++j) {
      const auto c = s.cols[static_cast<std::size_t>(j)];
      cq[static_cast<std::size_t>(j)] = cost == Cost::surgeon ? cq[static_cast<std::size_t>(j)] / s.ainv.f32()[j * nc + j]
                                                             : cq[static_cast<std::size_t>(j)] * l.a.f64()[c * C + c];
    }
  }
  for (std::int64_t i = 0; i < nr; ++i) s.row_cost[static_cast<std::size_t>(s.rows[static_cast<std::size_t>(i)])] = finite_or_zero(rq[static_cast<std::size_t>(i)]);
  for (std::int64_t j = 0; j < nc; ++j) s.col_cost[static_cast<std::size_t>(s.cols[static_cast<std::size_t>(j)])] = finite_or_zero(cq[static_cast<std::size_t>(j)]);
}

}  // namespace

Scored score(Backend& be, Linear& l, const Options& o) {
  SCALPEL_CHECK(l.w.dim() == 2 && l.w.dtype() == DType::f32 && l.w.device() == Device::cpu, "{}: weight {}", l.name,
                shape_str(l.w.shape()));
  const auto R = l.w.size(0), C = l.w.size(1);
  const bool factors = o.cost != Cost::magnitude;
  if (factors) {
    SCALPEL_CHECK(l.a.dtype() == DType::f64 && l.a.size(0) == C && l.g.dtype() == DType::f64 && l.g.size(0) == R,
                  "{}: factors A {} G {} for a weight {}", l.name, shape_str(l.a.shape()), shape_str(l.g.shape()),
                  shape_str(l.w.shape()));
    if (!all_finite64(l.a)) SCALPEL_RUNTIME_ERROR("{}: the Kronecker factor A is not finite", l.name);
    if (!all_finite64(l.g)) SCALPEL_RUNTIME_ERROR("{}: the Kronecker factor G is not finite", l.name);
  }
  Scored s;
  find_alive(l, factors, s);
  if (o.cost == Cost::surgeon) {
    s.ginv = damped_inverse(be, l.g, s.rows, o.damp_g, l.name + " G");
    s.ainv = damped_inverse(be, l.a, s.cols, o.damp_a, l.name + " A");
  }
  if (o.shape == Shape::structured) structured_costs(be, l, s, o.cost);
  else element_costs(l, s, o.cost);
  return s;
}

}  // namespace scalpel::prune::surgeon
