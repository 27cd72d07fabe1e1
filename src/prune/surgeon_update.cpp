// LLM Surgeon's weight update (pruner.py weight_update, first Kronecker rank): the correlated OBS
// update of the removed set under F ≈ G ⊗ A on the alive sub-problem, then exact zeros.
//  elements: Q cut into chunks of whole rows of at most max_correlate entries; per chunk
//            C = Ĝ⁻¹[r_Q, r_Q] ∘ Â⁻¹[c_Q, c_Q], λ = C⁻¹ (w_Q + ΔW_Q), ΔW -= Ĝ⁻¹[:, rows] Λ Â⁻¹.
//  rows P:    ΔW = -Ĝ⁻¹[:, P] (Ĝ⁻¹_PP)⁻¹ (W + ΔW)_P,: with ΔW_P,: = -W_P,:;
//  columns P: ΔW = -(W + ΔW)_:,P (Â⁻¹_PP)⁻¹ Â⁻¹[P, :] with ΔW_:,P = -W_:,P.
#include <algorithm>

#include "scalpel/core/error.hpp"
#include "scalpel/prune/surgeon.hpp"

namespace scalpel::prune::surgeon {
namespace {

using Index = std::vector<std::int64_t>;

// The alive sub-problem of a linear: W and the accumulated update ΔW, [ra, ca].
struct Sub {
  Tensor w, dw;
  std::int64_t ra = 0, ca = 0;
  float& W(std::int64_t i, std::int64_t j) const { return w.f32()[i * ca + j]; }
  float& D(std::int64_t i, std::int64_t j) const { return dw.f32()[i * ca + j]; }
};

Sub make_sub(const Linear& l, const Scored& s) {
  Sub u;
  u.ra = static_cast<std::int64_t>(s.rows.size());
  u.ca = static_cast<std::int64_t>(s.cols.size());
  u.w = Tensor::empty({u.ra, u.ca});
  u.dw = Tensor::zeros({u.ra, u.ca});
  const auto C = l.w.size(1);
  for (std::int64_t i = 0; i < u.ra; ++i)
    for (std::int64_t j = 0; j < u.ca; ++j)
      u.W(i, j) = l.w.f32()[s.rows[static_cast<std::size_t>(i)] * C + s.cols[static_cast<std::size_t>(j)]];
  return u;
}

// W += ΔW on the alive entries of l.w.
void write_back(Linear& l, const Scored& s, const Sub& u) {
  const auto C = l.w.size(1);
  for (std::int64_t i = 0; i < u.ra; ++i)
    for (std::int64_t j = 0; j < u.ca; ++j)
      l.w.f32()[s.rows[static_cast<std::size_t>(i)] * C + s.cols[static_cast<std::size_t>(j)]] = u.W(i, j) + u.D(i, j);
}

Tensor pick(const Tensor& m, const Index& rows, const Index& cols) {
  const auto ld = m.size(1);
  Tensor out = Tensor::empty({static_cast<std::int64_t>(rows.size()), static_cast<std::int64_t>(cols.size())});
  for (std::size_t i = 0; i < rows.size(); ++i)
    for (std::size_t j = 0; j < cols.size(); ++j) out.f32()[i * cols.size() + j] = m.f32()[rows[i] * ld + cols[j]];
  return out;
}

Index iota(std::int64_t n) {
  Index v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = i;
  return v;
}

// The reference's chunks: consecutive rows of Q grouped while their entries fit max_correlate; a
// row with more entries than that is a chunk of its own. Returns [begin, end) ranges into Q.
std::vector<std::pair<std::size_t, std::size_t>> row_chunks(const std::vector<std::pair<std::int64_t, std::int64_t>>& q,
                                                            std::int64_t max_correlate) {
  std::vector<std::pair<std::size_t, std::size_t>> out;
  if (q.empty()) return out;
  if (max_correlate <= 0) return {{0, q.size()}};
  std::size_t begin = 0, i = 0;
  while (i < q.size()) {
    std::size_t row_end = i;
    while (row_end < q.size() && q[row_end].first == q[i].first) ++row_end;
    const auto count = static_cast<std::int64_t>(i - begin), num = static_cast<std::int64_t>(row_end - i);
    if (count + num > max_correlate && count > 0) {
      out.emplace_back(begin, i);
      begin = i;
    }
    i = row_end;
  }
  out.emplace_back(begin, q.size());
  return out;
}

using Entries = std::vector<std::pair<std::int64_t, std::int64_t>>;  // (row, column) in the sub-problem

// C = Ĝ⁻¹[r_Q, r_Q] ∘ Â⁻¹[c_Q, c_Q] of a chunk: it does not depend on the updates of the chunks before
// it, so a batch of them is built and factorised at once.
Tensor chunk_matrix(const Scored& s, const Entries& q, std::int64_t ra, std::int64_t ca) {
  const auto n = static_cast<std::int64_t>(q.size());
  Tensor cm = Tensor::empty({n, n});
#pragma omp parallel for schedule(static)
  for (std::int64_t a = 0; a < n; ++a) {
    const auto [ia, ja] = q[static_cast<std::size_t>(a)];
    const float* g = s.ginv.f32() + ia * ra;
    const float* x = s.ainv.f32() + ja * ca;
    float* row = cm.f32() + a * n;
    for (std::int64_t b = 0; b < n; ++b) {
      const auto [ib, jb] = q[static_cast<std::size_t>(b)];
      row[b] = g[ib] * x[jb];
    }
  }
  return cm;
}

// With the chunk's factor: λ = C⁻¹ (w_Q + ΔW_Q), then ΔW -= Ĝ⁻¹[:, rows] Λ Â⁻¹.
void apply_chunk(Backend& be, const Scored& s, Sub& u, const Entries& q, const Tensor& factor, bool addupdate) {
  const auto n = static_cast<std::int64_t>(q.size()), ra = u.ra, ca = u.ca;
  Index rows;
  std::vector<std::int64_t> local(q.size());
  for (std::size_t k = 0; k < q.size(); ++k) {
    if (rows.empty() || rows.back() != q[k].first) rows.push_back(q[k].first);
    local[k] = static_cast<std::int64_t>(rows.size()) - 1;
  }
  Tensor lam = Tensor::empty({n, 1});
  for (std::int64_t a = 0; a < n; ++a) {
    const auto [i, j] = q[static_cast<std::size_t>(a)];
    lam.f32()[a] = u.W(i, j) + (addupdate ? u.D(i, j) : 0.0f);
  }
  be.cholesky_solve(factor, lam);
  const auto nr = static_cast<std::int64_t>(rows.size());
  Tensor big = Tensor::zeros({nr, ca}), t = Tensor::empty({nr, ca});
  for (std::int64_t k = 0; k < n; ++k)
    big.f32()[local[static_cast<std::size_t>(k)] * ca + q[static_cast<std::size_t>(k)].second] = lam.f32()[k];
  be.gemm(Trans::no, Trans::no, 1.0f, big, s.ainv, 0.0f, t);                         // Λ Â⁻¹
  be.gemm(Trans::no, Trans::no, -1.0f, pick(s.ginv, iota(ra), rows), t, 1.0f, u.dw);  // ΔW -= Ĝ⁻¹[:, rows] Λ Â⁻¹
}

// Chunks factorised this many at a time (their matrices held together: 8 x 16 MB at 2000 entries).
constexpr std::size_t kChunkBatch = 8;

void update_elements(Backend& be, Linear& l, const Scored& s, const Removal& r, const Options& o) {
  const auto C = l.w.size(1);
  if (o.cost == Cost::surgeon && !s.rows.empty() && !s.cols.empty()) {
    Sub u = make_sub(l, s);
    Entries q;
    for (std::int64_t i = 0; i < u.ra; ++i)
      for (std::int64_t j = 0; j < u.ca; ++j)
        if (r.mask[static_cast<std::size_t>(s.rows[static_cast<std::size_t>(i)] * C + s.cols[static_cast<std::size_t>(j)])])
          q.emplace_back(i, j);
    const auto ranges = row_chunks(q, o.max_correlate);
    for (std::size_t c0 = 0; c0 < ranges.size(); c0 += kChunkBatch) {
      const std::size_t c1 = std::min(ranges.size(), c0 + kChunkBatch);
      std::vector<Entries> chunks;
      std::vector<Tensor> factors;
      for (std::size_t c = c0; c < c1; ++c) {
        chunks.emplace_back(q.begin() + static_cast<std::ptrdiff_t>(ranges[c].first),
                            q.begin() + static_cast<std::ptrdiff_t>(ranges[c].second));
        factors.push_back(chunk_matrix(s, chunks.back(), u.ra, u.ca));
      }
      std::vector<std::uint8_t> ok(factors.size(), 0);
      be.cholesky_batch(factors, ok);
      for (std::size_t c = 0; c < chunks.size(); ++c) {
        if (!ok[c])
          SCALPEL_RUNTIME_ERROR("{}: the correlated update's system of {} weights is not positive definite", l.name,
                                chunks[c].size());
        apply_chunk(be, s, u, chunks[c], factors[c], o.addupdate);
      }
    }
    write_back(l, s, u);
  }
  for (std::size_t k = 0; k < r.mask.size(); ++k)
    if (r.mask[k]) l.w.f32()[k] = 0.0f;
}

// Positions of `full` indices in the alive list (indices that are dead are skipped).
Index positions(const Index& alive, const Index& full) {
  Index out;
  for (const auto f : full)
    if (auto it = std::lower_bound(alive.begin(), alive.end(), f); it != alive.end() && *it == f)
      out.push_back(it - alive.begin());
  return out;
}

std::vector<Index> split(const Index& v, std::int64_t size) {
  if (v.empty()) return {};
  if (size <= 0) return {v};
  std::vector<Index> out;
  for (std::size_t i = 0; i < v.size(); i += static_cast<std::size_t>(size))
    out.emplace_back(v.begin() + static_cast<std::ptrdiff_t>(i),
                     v.begin() + static_cast<std::ptrdiff_t>(std::min(v.size(), i + static_cast<std::size_t>(size))));
  return out;
}

void remove_rows(Backend& be, const Linear& l, const Scored& s, Sub& u, const Index& p, bool addupdate) {
  const auto np = static_cast<std::int64_t>(p.size()), ra = u.ra, ca = u.ca;
  Tensor m = pick(s.ginv, p, p), x = Tensor::empty({np, ca});
  for (std::int64_t k = 0; k < np; ++k)
    for (std::int64_t j = 0; j < ca; ++j)
      x.f32()[k * ca + j] = u.W(p[static_cast<std::size_t>(k)], j) + (addupdate ? u.D(p[static_cast<std::size_t>(k)], j) : 0.0f);
  if (!be.spd_solve(m, x)) SCALPEL_RUNTIME_ERROR("{}: the row update's system of {} rows is not positive definite", l.name, np);
  Tensor d = Tensor::empty({ra, ca});
  be.gemm(Trans::no, Trans::no, -1.0f, pick(s.ginv, iota(ra), p), x, 0.0f, d);
  for (const auto i : p)
    for (std::int64_t j = 0; j < ca; ++j) d.f32()[i * ca + j] = -u.W(i, j);
  be.add(u.dw, d);
}

void remove_cols(Backend& be, const Linear& l, const Scored& s, Sub& u, const Index& p, bool addupdate) {
  const auto np = static_cast<std::int64_t>(p.size()), ra = u.ra, ca = u.ca;
  Tensor m = pick(s.ainv, p, p), x = Tensor::empty({np, ra});  // (W + ΔW)_:,Pᵀ
  for (std::int64_t k = 0; k < np; ++k)
    for (std::int64_t i = 0; i < ra; ++i)
      x.f32()[k * ra + i] = u.W(i, p[static_cast<std::size_t>(k)]) + (addupdate ? u.D(i, p[static_cast<std::size_t>(k)]) : 0.0f);
  if (!be.spd_solve(m, x))
    SCALPEL_RUNTIME_ERROR("{}: the column update's system of {} columns is not positive definite", l.name, np);
  Tensor d = Tensor::empty({ra, ca});
  be.gemm(Trans::yes, Trans::no, -1.0f, x, pick(s.ainv, p, iota(ca)), 0.0f, d);
  for (std::int64_t i = 0; i < ra; ++i)
    for (const auto j : p) d.f32()[i * ca + j] = -u.W(i, j);
  be.add(u.dw, d);
}

void update_structures(Backend& be, Linear& l, const Scored& s, const Removal& r, const Options& o) {
  const Index pr = positions(s.rows, r.rows), pc = positions(s.cols, r.cols);
  if (o.cost == Cost::surgeon && (!pr.empty() || !pc.empty())) {
    Sub u = make_sub(l, s);
    for (const auto& p : split(pr, o.max_correlate)) remove_rows(be, l, s, u, p, o.addupdate);
    for (const auto& p : split(pc, o.max_correlate)) remove_cols(be, l, s, u, p, o.addupdate);
    write_back(l, s, u);
  }
  const auto C = l.w.size(1);
  for (const auto row : r.rows) std::fill(l.w.f32() + row * C, l.w.f32() + (row + 1) * C, 0.0f);
  for (const auto c : r.cols)
    for (std::int64_t row = 0; row < l.w.size(0); ++row) l.w.f32()[row * C + c] = 0.0f;
}

}  // namespace

void update(Backend& be, Linear& l, const Scored& s, const Removal& r, const Options& o) {
  if (o.shape == Shape::structured) update_structures(be, l, s, r, o);
  else update_elements(be, l, s, r, o);
}

}  // namespace scalpel::prune::surgeon
