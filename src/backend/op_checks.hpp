// Shape rules of the Backend ops, shared by the cpu and cuda implementations so that both accept
// and refuse the same calls with the same messages (where a tensor lives and its dtype each
// backend checks itself). Private to src/backend.
#pragma once
#include <cstdint>
#include <span>

#include "scalpel/backend/backend.hpp"
#include "scalpel/core/error.hpp"

namespace scalpel::op_checks {

struct GemmDims {
  std::int64_t m, n, k;
};

inline GemmDims gemm(Trans ta, Trans tb, const Tensor& a, const Tensor& b, const Tensor& c) {
  const auto m = ta == Trans::no ? a.size(0) : a.size(1);
  const auto k = ta == Trans::no ? a.size(1) : a.size(0);
  const auto kb = tb == Trans::no ? b.size(0) : b.size(1);
  const auto n = tb == Trans::no ? b.size(1) : b.size(0);
  SCALPEL_CHECK(k == kb && c.size(0) == m && c.size(1) == n, "gemm shapes {}{} x {}{} -> {}", shape_str(a.shape()),
                ta == Trans::yes ? "^T" : "", shape_str(b.shape()), tb == Trans::yes ? "^T" : "", shape_str(c.shape()));
  return {m, n, k};
}

// A block inside a 2-D tensor.
inline void block_in(const Tensor& t, const Block& b, const char* what) {
  SCALPEL_CHECK(t.dim() == 2 && b.r0 >= 0 && b.c0 >= 0 && b.rows >= 0 && b.cols >= 0 && b.r0 + b.rows <= t.size(0) &&
                    b.c0 + b.cols <= t.size(1),
                "{}: block rows [{}, {}) columns [{}, {}) outside {}", what, b.r0, b.r0 + b.rows, b.c0, b.c0 + b.cols,
                shape_str(t.shape()));
}

// Where two blocks lie in the same tensor, they must not share an element (the tile ops read and
// write in an unspecified order, on both backends). Only blocks of one tensor (the same data
// pointer and shape) are compared: overlapping views of one buffer are the caller's to avoid.
inline void disjoint(const Tensor& s, const Block& bs, const Tensor& d, const Block& bd, const char* what) {
  if (s.raw() != d.raw() || s.shape() != d.shape()) return;
  const bool apart = bs.rows == 0 || bs.cols == 0 || bd.rows == 0 || bd.cols == 0 || bs.r0 + bs.rows <= bd.r0 ||
                     bd.r0 + bd.rows <= bs.r0 || bs.c0 + bs.cols <= bd.c0 || bd.c0 + bd.cols <= bs.c0;
  SCALPEL_CHECK(apart, "{}: blocks at ({}, {}) and ({}, {}) of one tensor overlap", what, bs.r0, bs.c0, bd.r0, bd.c0);
}

inline void copy_block(const Tensor& src, const Block& bs, const Tensor& dst, std::int64_t r0, std::int64_t c0) {
  block_in(src, bs, "copy_block src");
  const Block bd{r0, c0, bs.rows, bs.cols};
  block_in(dst, bd, "copy_block dst");
  disjoint(src, bs, dst, bd, "copy_block");
}

inline GemmDims gemm_block(Trans ta, Trans tb, const Tensor& a, const Block& ba, const Tensor& b, const Block& bb,
                           const Tensor& c, const Block& bc) {
  block_in(a, ba, "gemm_block A");
  block_in(b, bb, "gemm_block B");
  block_in(c, bc, "gemm_block C");
  disjoint(a, ba, c, bc, "gemm_block A and C");
  disjoint(b, bb, c, bc, "gemm_block B and C");
  const auto m = ta == Trans::no ? ba.rows : ba.cols;
  const auto k = ta == Trans::no ? ba.cols : ba.rows;
  const auto kb = tb == Trans::no ? bb.rows : bb.cols;
  const auto n = tb == Trans::no ? bb.cols : bb.rows;
  SCALPEL_CHECK(k == kb && bc.rows == m && bc.cols == n, "gemm_block shapes {}x{}{} x {}x{}{} -> {}x{}", ba.rows,
                ba.cols, ta == Trans::yes ? "^T" : "", bb.rows, bb.cols, tb == Trans::yes ? "^T" : "", bc.rows,
                bc.cols);
  return {m, n, k};
}

inline void linear(const Tensor& x, const Tensor& w, const Tensor* bias, const Tensor& y) {
  const auto n = x.size(0), out = w.size(0);
  SCALPEL_CHECK(x.size(1) == w.size(1) && y.size(0) == n && y.size(1) == out, "linear x {} W {} y {}",
                shape_str(x.shape()), shape_str(w.shape()), shape_str(y.shape()));
  if (bias) SCALPEL_CHECK(bias->numel() == out, "bias {} for {} outputs", shape_str(bias->shape()), out);
}

inline void syrk(const Tensor& x, const Tensor& h) {
  const auto d = x.size(1);
  SCALPEL_CHECK(h.size(0) == d && h.size(1) == d, "syrk X {} H {}", shape_str(x.shape()), shape_str(h.shape()));
}

inline void square(const Tensor& a, const char* what) {
  SCALPEL_CHECK(a.size(1) == a.size(0), "{} of a non-square {}", what, shape_str(a.shape()));
}

inline void rope(const Tensor& x, std::int64_t seqlen, std::int64_t heads, std::int64_t head_dim, const Tensor& cos) {
  SCALPEL_CHECK(x.size(1) == heads * head_dim && x.size(0) % seqlen == 0 && head_dim % 2 == 0,
                "rope x {} heads {} head_dim {} seqlen {}", shape_str(x.shape()), heads, head_dim, seqlen);
  SCALPEL_CHECK(cos.size(0) >= seqlen && cos.size(1) == head_dim, "rope table {}", shape_str(cos.shape()));
}

inline void attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, const Tensor& out,
                      const Tensor* probs) {
  const auto T = s.seqlen, H = s.heads, KV = s.kv_heads, hd = s.head_dim;
  SCALPEL_CHECK(H % KV == 0, "heads {} not a multiple of kv heads {}", H, KV);
  SCALPEL_CHECK(q.size(0) == s.batch * T && q.size(1) == H * hd && k.size(1) == KV * hd && v.size(1) == KV * hd &&
                    k.size(0) == q.size(0) && out.numel() == q.numel(),
                "attention q {} k {} v {}", shape_str(q.shape()), shape_str(k.shape()), shape_str(v.shape()));
  if (probs) SCALPEL_CHECK(probs->numel() == s.batch * H * T * T, "attention probs {}", shape_str(probs->shape()));
}

// Token ids must index the table's rows (an input error: they come from a tokenizer or a file).
inline void embedding(std::span<const std::int32_t> ids, const Tensor& table, const Tensor& out) {
  const auto vocab = table.size(0), d = table.size(1);
  SCALPEL_CHECK(out.numel() == static_cast<std::int64_t>(ids.size()) * d, "embedding out {}", shape_str(out.shape()));
  for (std::size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= vocab)
      SCALPEL_INPUT_ERROR("token id {} at position {} is outside the vocabulary of {}", ids[i], i, vocab);
}

inline void nll(const Tensor& logits, std::span<const std::int32_t> targets, std::span<double> out,
                std::span<std::uint8_t> is_argmax) {
  const auto n = logits.size(0), V = logits.size(1);
  SCALPEL_CHECK(static_cast<std::int64_t>(targets.size()) == n && static_cast<std::int64_t>(out.size()) == n,
                "nll: {} rows, {} targets", n, targets.size());
  SCALPEL_CHECK(is_argmax.empty() || static_cast<std::int64_t>(is_argmax.size()) == n, "nll: {} rows, {} argmax flags",
                n, is_argmax.size());
  for (std::size_t i = 0; i < targets.size(); ++i)
    SCALPEL_CHECK(targets[i] >= 0 && targets[i] < V, "nll: target {} of row {} outside the {} logits", targets[i], i,
                  V);
}

inline void col_sq_norms(const Tensor& x, const Tensor& out) {
  SCALPEL_CHECK(out.numel() == x.size(1), "col_sq_norms out {} for {} columns", shape_str(out.shape()), x.size(1));
}

inline void hessian_prepare(const Tensor& h, const Tensor* w) {
  square(h, "hessian_prepare");
  if (w)
    SCALPEL_CHECK(w->size(1) == h.size(0), "hessian_prepare W {} for H {}", shape_str(w->shape()), shape_str(h.shape()));
}

inline void prune_scores(const Tensor& w, const Tensor* col, const Tensor& scores) {
  SCALPEL_CHECK(scores.shape() == w.shape(), "prune_scores {} for W {}", shape_str(scores.shape()),
                shape_str(w.shape()));
  if (col)
    SCALPEL_CHECK(col->numel() == w.size(1), "prune_scores column statistic {} for {} columns", shape_str(col->shape()),
                  w.size(1));
}

inline void kth(std::int64_t k, std::int64_t n) { SCALPEL_CHECK(k >= 0 && k <= n, "kth_threshold k {} of {}", k, n); }

inline void mask_threshold(const Tensor& scores, const Tensor& mask, std::int64_t col0) {
  SCALPEL_CHECK(mask.size(0) == scores.size(0) && col0 >= 0 && col0 + scores.size(1) <= mask.size(1),
                "mask_threshold scores {} into mask {} at {}", shape_str(scores.shape()), shape_str(mask.shape()), col0);
}

inline void same_shape(const Tensor& mask, const Tensor& t, const char* of) {
  SCALPEL_CHECK(mask.shape() == t.shape(), "mask {} for {} {}", shape_str(mask.shape()), of, shape_str(t.shape()));
}

inline void obs_scores(const Tensor& w, const Tensor& hinv, std::int64_t col0, const Tensor& scores,
                       const Tensor* hdiag) {
  const auto rows = w.size(0), d = w.size(1), width = scores.size(1);
  SCALPEL_CHECK(hinv.size(0) == d && hinv.size(1) == d && scores.size(0) == rows && col0 >= 0 && col0 + width <= d,
                "obs_scores W {} Hinv {} scores {} at {}", shape_str(w.shape()), shape_str(hinv.shape()),
                shape_str(scores.shape()), col0);
  SCALPEL_CHECK(!hdiag || (hdiag->numel() == d && hdiag->dtype() == DType::f32), "obs_scores hdiag {} for {} columns",
                hdiag ? shape_str(hdiag->shape()) : std::string(), d);
}

inline void diagonal(const Tensor& a, const Tensor& out) {
  SCALPEL_CHECK(a.dim() == 2 && a.size(0) == a.size(1) && out.numel() == a.size(0) && a.dtype() == DType::f32 &&
                    out.dtype() == DType::f32,
                "diagonal of {} into {}", shape_str(a.shape()), shape_str(out.shape()));
}

inline void obs_sweep(const Tensor& w, const Tensor& hinv, std::int64_t col0, std::int64_t width, int prune_n,
                      int prune_m, const Tensor& mask, const Tensor& err, const Tensor& losses) {
  const auto rows = w.size(0), d = w.size(1);
  SCALPEL_CHECK(hinv.size(0) == d && hinv.size(1) == d && mask.shape() == w.shape() && col0 >= 0 && width >= 0 &&
                    col0 + width <= d && err.size(0) == rows && err.size(1) == width,
                "obs_sweep W {} Hinv {} mask {} err {} block [{}, {})", shape_str(w.shape()), shape_str(hinv.shape()),
                shape_str(mask.shape()), shape_str(err.shape()), col0, col0 + width);
  SCALPEL_CHECK(losses.dtype() == DType::f64 && losses.numel() == rows, "obs_sweep losses {}", shape_str(losses.shape()));
  SCALPEL_CHECK(prune_m == 0 || (prune_n > 0 && prune_n < prune_m), "obs_sweep {}:{}", prune_n, prune_m);
}

inline void obs_lazy(const Tensor& w, const Tensor& err, const Tensor& hinv, std::int64_t col0) {
  const auto d = w.size(1);
  SCALPEL_CHECK(hinv.size(0) == d && hinv.size(1) == d && err.size(0) == w.size(0) && col0 >= 0 &&
                    col0 + err.size(1) <= d,
                "obs_lazy W {} err {} Hinv {} at {}", shape_str(w.shape()), shape_str(err.shape()),
                shape_str(hinv.shape()), col0);
}

inline void rowwise_dot(const Tensor& a, const Tensor& b, std::span<double> out) {
  SCALPEL_CHECK(a.shape() == b.shape() && static_cast<std::int64_t>(out.size()) == a.size(0),
                "rowwise_dot {} . {} into {}", shape_str(a.shape()), shape_str(b.shape()), out.size());
}


// Indices of the gathers and scatters lie inside the matrix they address.
inline void indices(std::span<const std::int64_t> idx, std::int64_t bound, const char* what) {
  for (const auto v : idx) SCALPEL_CHECK(v >= 0 && v < bound, "{}: index {} outside [0, {})", what, v, bound);
}

inline void gather(const Tensor& a, std::span<const std::int64_t> rows, std::span<const std::int64_t> cols,
                   const Tensor& out, const char* what) {
  SCALPEL_CHECK(a.dim() == 2 && out.numel() == static_cast<std::int64_t>(rows.size() * cols.size()),
                "{}: {} at {} x {} indices into {}", what, shape_str(a.shape()), rows.size(), cols.size(),
                shape_str(out.shape()));
  indices(rows, a.size(0), what);
  indices(cols, a.size(1), what);
}

inline void pairs(const Tensor& a, std::span<const std::int64_t> i, std::span<const std::int64_t> j, std::int64_t n,
                  const char* what) {
  SCALPEL_CHECK(a.dim() == 2 && i.size() == j.size() && n == static_cast<std::int64_t>(i.size()),
                "{}: {} with {} and {} indices for {} values", what, shape_str(a.shape()), i.size(), j.size(), n);
  indices(i, a.size(0), what);
  indices(j, a.size(1), what);
}

inline void rows_axpy(const Tensor& a, std::span<const std::int64_t> src, std::span<const std::int64_t> dst,
                      const Tensor& coef, const Tensor& out) {
  SCALPEL_CHECK(a.dim() == 2 && out.dim() == 2 && out.size(1) == a.size(1) && src.size() == dst.size() &&
                    coef.numel() == static_cast<std::int64_t>(src.size()),
                "rows_axpy: {} into {} with {} sources, {} destinations, {} coefficients", shape_str(a.shape()),
                shape_str(out.shape()), src.size(), dst.size(), coef.numel());
  indices(src, a.size(0), "rows_axpy sources");
  indices(dst, out.size(0), "rows_axpy destinations");
}

inline void kron_pairs(const Tensor& g, const Tensor& a, std::span<const std::int64_t> i,
                       std::span<const std::int64_t> j, const Tensor& out) {
  const auto n = static_cast<std::int64_t>(i.size());
  SCALPEL_CHECK(g.dim() == 2 && a.dim() == 2 && g.size(0) == g.size(1) && a.size(0) == a.size(1) && i.size() == j.size() &&
                    out.numel() == n * n,
                "kron_pairs: G {} A {} at {} pairs into {}", shape_str(g.shape()), shape_str(a.shape()), n,
                shape_str(out.shape()));
  indices(i, g.size(0), "kron_pairs rows");
  indices(j, a.size(0), "kron_pairs columns");
}

}  // namespace scalpel::op_checks
