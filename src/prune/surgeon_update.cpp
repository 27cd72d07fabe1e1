// LLM Surgeon's weight update (pruner.py weight_update, first Kronecker rank): the correlated OBS
// update of the removed set under F ≈ G ⊗ A on the alive sub-problem, then exact zeros.
//  elements: Q cut into chunks of whole rows of at most max_correlate entries; per chunk
//            C = Ĝ⁻¹[r_Q, r_Q] ∘ Â⁻¹[c_Q, c_Q], λ = C⁻¹ (w_Q + ΔW_Q), ΔW -= Ĝ⁻¹[:, rows] Λ Â⁻¹
//            (applied to ΔW a block of chunks at a time; the same sums in another order).
//  rows P:    ΔW = -Ĝ⁻¹[:, P] (Ĝ⁻¹_PP)⁻¹ (W + ΔW)_P,: with ΔW_P,: = -W_P,:;
//  columns P: ΔW = -(W + ΔW)_:,P (Â⁻¹_PP)⁻¹ Â⁻¹[P, :] with ΔW_:,P = -W_:,P.
#include <algorithm>

#include "scalpel/core/error.hpp"
#include "scalpel/prune/surgeon.hpp"

namespace scalpel::prune::surgeon {
namespace {

using Index = std::vector<std::int64_t>;

Index iota(std::int64_t n) {
  Index v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = i;
  return v;
}

// The alive sub-problem of a linear on the backend: W and the accumulated update ΔW [ra, ca], and
// the f32 inverses Ĝ⁻¹ [ra, ra] and Â⁻¹ [ca, ca].
struct Sub {
  Tensor w, dw, ginv, ainv;
  std::int64_t ra = 0, ca = 0;
};

Sub make_sub(Backend& be, const Linear& l, const Scored& s) {
  Sub u;
  u.ra = static_cast<std::int64_t>(s.rows.size());
  u.ca = static_cast<std::int64_t>(s.cols.size());
  Tensor w = Tensor::empty({u.ra, u.ca});
  const auto C = l.w.size(1);
  for (std::int64_t i = 0; i < u.ra; ++i)
    for (std::int64_t j = 0; j < u.ca; ++j)
      w.f32()[i * u.ca + j] = l.w.f32()[s.rows[static_cast<std::size_t>(i)] * C + s.cols[static_cast<std::size_t>(j)]];
  u.w = view_on(be, w);
  u.dw = be.zeros({u.ra, u.ca});
  u.ginv = view_on(be, s.ginv);  // read only
  u.ainv = view_on(be, s.ainv);
  return u;
}

// W += ΔW on the alive entries of l.w.
void write_back(Backend& be, Linear& l, const Scored& s, const Sub& u) {
  const Tensor w = be.download(u.w), dw = be.download(u.dw);
  const auto C = l.w.size(1);
  for (std::int64_t i = 0; i < u.ra; ++i)
    for (std::int64_t j = 0; j < u.ca; ++j)
      l.w.f32()[s.rows[static_cast<std::size_t>(i)] * C + s.cols[static_cast<std::size_t>(j)]] =
          w.f32()[i * u.ca + j] + dw.f32()[i * u.ca + j];
}

// m[rows, cols] on the backend, [rows.size(), cols.size()] (or its transpose).
Tensor pick(Backend& be, const Tensor& m, const Index& rows, const Index& cols, bool transposed = false) {
  const auto nr = static_cast<std::int64_t>(rows.size()), nc = static_cast<std::int64_t>(cols.size());
  Tensor out = be.empty(transposed ? scalpel::Shape{nc, nr} : scalpel::Shape{nr, nc});
  be.gather(m, rows, cols, out, transposed);
  return out;
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

// A chunk's entries (row, column) in the sub-problem as two index lists, and its distinct rows.
struct Chunk {
  Index i, j, rows, local;  // local[k]: the position of i[k] in rows
  std::int64_t size() const { return static_cast<std::int64_t>(i.size()); }
};

Chunk make_chunk(const std::vector<std::pair<std::int64_t, std::int64_t>>& q, std::pair<std::size_t, std::size_t> range) {
  Chunk c;
  for (std::size_t k = range.first; k < range.second; ++k) {
    c.i.push_back(q[k].first);
    c.j.push_back(q[k].second);
    if (c.rows.empty() || c.rows.back() != q[k].first) c.rows.push_back(q[k].first);
    c.local.push_back(static_cast<std::int64_t>(c.rows.size()) - 1);
  }
  return c;
}

// A block of consecutive chunks (their rows distinct: a row never spans two chunks), updated
// together. Chunk c needs ΔW at its entries as every chunk before it left it; ΔW itself takes the
// block's updates at its end, in one product over all of its rows, -= Ĝ⁻¹[:, rows_B] T_B with T_B
// the chunks' Λ Â⁻¹ stacked (a GEMM as deep as the block's rows, where one per chunk was as deep
// as a chunk's: the whole ΔW was swept once per chunk). Inside the block, d_B (ΔW on the block's
// rows) takes each chunk's update at once, so the next chunk reads what ΔW would hold.
struct Block {
  std::vector<Chunk> chunks;
  std::vector<std::int64_t> offset;  // each chunk's first row in rows
  Index rows;
};

Block make_block(const std::vector<std::pair<std::int64_t, std::int64_t>>& q,
                 const std::vector<std::pair<std::size_t, std::size_t>>& ranges, std::size_t c0, std::size_t c1) {
  Block b;
  for (std::size_t c = c0; c < c1; ++c) {
    b.chunks.push_back(make_chunk(q, ranges[c]));
    b.offset.push_back(static_cast<std::int64_t>(b.rows.size()));
    b.rows.insert(b.rows.end(), b.chunks.back().rows.begin(), b.chunks.back().rows.end());
  }
  return b;
}

// The chunks' λ = C⁻¹ (w_Q + ΔW_Q) with their factors of C = Ĝ⁻¹[r_Q, r_Q] ∘ Â⁻¹[c_Q, c_Q], each
// chunk's Λ Â⁻¹ into its rows of T_B, then ΔW -= Ĝ⁻¹[:, rows_B] T_B.
void apply_block(Backend& be, Sub& u, const Block& b, const std::vector<Tensor>& factors, bool addupdate) {
  const auto nb = static_cast<std::int64_t>(b.rows.size());
  Tensor t = be.zeros({nb, u.ca});
  Tensor d = addupdate ? pick(be, u.dw, b.rows, iota(u.ca)) : Tensor();  // ΔW on the block's rows
  for (std::size_t c = 0; c < b.chunks.size(); ++c) {
    const Chunk& q = b.chunks[c];
    const auto n = q.size(), nr = static_cast<std::int64_t>(q.rows.size());
    Index row_in_block(q.local);
    for (auto& r : row_in_block) r += b.offset[c];
    Tensor lam = be.empty({n, 1});
    be.gather_pairs(u.w, q.i, q.j, lam);
    if (addupdate) {
      Tensor dq = be.empty({n, 1});
      be.gather_pairs(d, row_in_block, q.j, dq);
      be.add(lam, dq);
    }
    be.cholesky_solve(factors[c], lam);
    // Λ Â⁻¹ row by row: Λ has one weight per removed entry, so row r is Σ_k λ_k Â⁻¹[j_k, :] over the
    // chunk's entries in row r (2·n·ca FLOPs, reading n rows of Â⁻¹ instead of all of it).
    be.rows_axpy(u.ainv, q.j, row_in_block, lam, t);
    if (addupdate && c + 1 < b.chunks.size()) {  // what the block's later chunks read
      const Tensor tc = t.slice_rows(b.offset[c], b.offset[c] + nr);
      be.gemm(Trans::no, Trans::no, -1.0f, pick(be, u.ginv, b.rows, q.rows), tc, 1.0f, d);
    }
  }
  be.gemm(Trans::no, Trans::no, -1.0f, pick(be, u.ginv, iota(u.ra), b.rows), t, 1.0f, u.dw);  // ΔW -= Ĝ⁻¹[:, rows_B] T_B
}

// Chunks factorised and applied this many at a time (their matrices held together: 8 x 16 MB at
// 2000 entries).
constexpr std::size_t kChunkBatch = 8;

void update_elements(Backend& be, Linear& l, const Scored& s, const Removal& r, const Options& o) {
  const auto C = l.w.size(1);
  if (o.cost == Cost::surgeon && !s.rows.empty() && !s.cols.empty()) {
    Sub u = make_sub(be, l, s);
    std::vector<std::pair<std::int64_t, std::int64_t>> q;
    for (std::int64_t i = 0; i < u.ra; ++i)
      for (std::int64_t j = 0; j < u.ca; ++j)
        if (r.mask[static_cast<std::size_t>(s.rows[static_cast<std::size_t>(i)] * C + s.cols[static_cast<std::size_t>(j)])])
          q.emplace_back(i, j);
    const auto ranges = row_chunks(q, o.max_correlate);
    for (std::size_t c0 = 0; c0 < ranges.size(); c0 += kChunkBatch) {
      const Block b = make_block(q, ranges, c0, std::min(ranges.size(), c0 + kChunkBatch));
      std::vector<Tensor> factors;
      for (const auto& ch : b.chunks) {
        factors.push_back(be.empty({ch.size(), ch.size()}));
        be.kron_pairs(u.ginv, u.ainv, ch.i, ch.j, factors.back());
      }
      std::vector<std::uint8_t> ok(factors.size(), 0);
      be.cholesky_batch(factors, ok);
      for (std::size_t c = 0; c < b.chunks.size(); ++c)
        if (!ok[c])
          SCALPEL_RUNTIME_ERROR("{}: the correlated update's system of {} weights is not positive definite", l.name,
                                b.chunks[c].size());
      apply_block(be, u, b, factors, o.addupdate);
    }
    write_back(be, l, s, u);
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

// (W + ΔW)[rows, cols] on the backend (ΔW left out without addupdate), or its transpose.
Tensor current(Backend& be, const Sub& u, const Index& rows, const Index& cols, bool addupdate, bool transposed) {
  Tensor x = pick(be, u.w, rows, cols, transposed);
  if (addupdate) be.add(x, pick(be, u.dw, rows, cols, transposed));
  return x;
}

// ΔW += d, after d[rows, cols] = -W[rows, cols] (the removed structures end at exactly zero).
void add_with_removed(Backend& be, Sub& u, Tensor& d, const Index& rows, const Index& cols) {
  Tensor neg = pick(be, u.w, rows, cols);
  be.scale(neg, -1.0f);
  be.scatter(neg, rows, cols, d);
  be.add(u.dw, d);
}

void remove_rows(Backend& be, const Linear& l, Sub& u, const Index& p, bool addupdate) {
  const auto np = static_cast<std::int64_t>(p.size());
  Tensor m = pick(be, u.ginv, p, p), x = current(be, u, p, iota(u.ca), addupdate, false);
  if (!be.spd_solve(m, x)) SCALPEL_RUNTIME_ERROR("{}: the row update's system of {} rows is not positive definite", l.name, np);
  Tensor d = be.empty({u.ra, u.ca});
  be.gemm(Trans::no, Trans::no, -1.0f, pick(be, u.ginv, iota(u.ra), p), x, 0.0f, d);
  add_with_removed(be, u, d, p, iota(u.ca));
}

void remove_cols(Backend& be, const Linear& l, Sub& u, const Index& p, bool addupdate) {
  const auto np = static_cast<std::int64_t>(p.size());
  Tensor m = pick(be, u.ainv, p, p), x = current(be, u, iota(u.ra), p, addupdate, true);  // (W + ΔW)_:,Pᵀ
  if (!be.spd_solve(m, x))
    SCALPEL_RUNTIME_ERROR("{}: the column update's system of {} columns is not positive definite", l.name, np);
  Tensor d = be.empty({u.ra, u.ca});
  be.gemm(Trans::yes, Trans::no, -1.0f, x, pick(be, u.ainv, p, iota(u.ca)), 0.0f, d);
  add_with_removed(be, u, d, iota(u.ra), p);
}

void update_structures(Backend& be, Linear& l, const Scored& s, const Removal& r, const Options& o) {
  const Index pr = positions(s.rows, r.rows), pc = positions(s.cols, r.cols);
  if (o.cost == Cost::surgeon && (!pr.empty() || !pc.empty())) {
    Sub u = make_sub(be, l, s);
    for (const auto& p : split(pr, o.max_correlate)) remove_rows(be, l, u, p, o.addupdate);
    for (const auto& p : split(pc, o.max_correlate)) remove_cols(be, l, u, p, o.addupdate);
    write_back(be, l, s, u);
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
