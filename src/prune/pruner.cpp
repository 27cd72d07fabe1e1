// prune_linear: validates the request, runs magnitude / Wanda / SparseGPT through Backend ops,
// and measures what came out (mask count, reconstruction error from H, time per phase).
#include "scalpel/prune/pruner.hpp"

#include <algorithm>
#include <cmath>

#include "scalpel/core/error.hpp"
#include "scalpel/core/timer.hpp"

namespace scalpel::prune {

namespace {

// A [shape] view over the first elements of a scratch buffer (blocks narrower than the buffer).
Tensor view_of(const Tensor& buf, const Shape& shape) {
  return buf.reshape({buf.numel()}).slice_rows(0, shape_numel(shape)).reshape(shape);
}

}  // namespace

std::string_view method_name(Method m) {
  switch (m) {
    case Method::magnitude: return "magnitude";
    case Method::wanda: return "wanda";
    case Method::sparsegpt: return "sparsegpt";
  }
  return "?";
}

Method parse_method(const std::string& text, const std::string& what) {
  if (text == "magnitude") return Method::magnitude;
  if (text == "wanda") return Method::wanda;
  if (text == "sparsegpt") return Method::sparsegpt;
  SCALPEL_INPUT_ERROR("{}: method '{}' is not one of: magnitude, wanda, sparsegpt", what, text);
}

SelectThreshold local_select(Backend& be, const Tensor& scores, std::int64_t k) { return be.kth_threshold(scores, k); }

std::int64_t expected_pruned(std::int64_t rows, std::int64_t cols, const Pattern& p, Method method,
                             std::int64_t blocksize) {
  if (p.is_nm()) {
    const std::int64_t tail = cols % p.m;
    return rows * ((cols / p.m) * p.n + (tail ? nm_group_count(p.n, p.m, tail) : 0));
  }
  switch (method) {
    case Method::magnitude: return unstructured_count(rows * cols, p.sparsity);
    case Method::wanda: return rows * unstructured_count(cols, p.sparsity);
    case Method::sparsegpt: {
      const auto bs = sparsegpt_blocksize(blocksize, p);
      std::int64_t n = 0;
      for (std::int64_t c0 = 0; c0 < cols; c0 += bs) n += unstructured_count(rows * std::min(bs, cols - c0), p.sparsity);
      return n;
    }
  }
  return 0;
}

void magnitude_mask(Backend& be, const Tensor& w, const Pattern& p, Tensor& mask, const BlockSelect& select,
                    std::int64_t total_rows) {
  Tensor scores = be.empty(w.shape());
  be.prune_scores(w, nullptr, scores);
  if (p.is_nm()) {
    be.mask_nm(scores, p.n, p.m, mask);
    return;
  }
  // One threshold over the whole matrix, as the reference's sort of the flattened |W|.
  const auto rows = total_rows > 0 ? total_rows : w.size(0);
  const auto t = select(be, scores, unstructured_count(rows * w.size(1), p.sparsity));
  be.mask_threshold(scores, t, mask, 0);
}

void wanda_mask(Backend& be, const Tensor& w, const Tensor& col_norms, const Pattern& p, Tensor& mask) {
  Tensor scores = be.empty(w.shape());
  be.prune_scores(w, &col_norms, scores);
  if (p.is_nm())
    be.mask_nm(scores, p.n, p.m, mask);
  else
    be.mask_rows_smallest(scores, unstructured_count(w.size(1), p.sparsity), mask);
}

ReconstructionError reconstruction_error(Backend& be, const Tensor& w, const Tensor& w_pruned, const Tensor& hessian,
                                         std::int64_t nsamples) {
  const auto rows = w.size(0), d = w.size(1);
  SCALPEL_CHECK(w_pruned.shape() == w.shape() && hessian.size(0) == d && hessian.size(1) == d,
                "reconstruction_error W {} W' {} H {}", shape_str(w.shape()), shape_str(w_pruned.shape()),
                shape_str(hessian.shape()));
  ReconstructionError e;
  e.rows.assign(static_cast<std::size_t>(rows), 0.0);
  if (rows == 0) return e;
  // ΔW and W stacked, so that one GEMM with H serves both traces; row chunks bound the scratch
  // to ~2 x 64 MiB whatever the layer.
  const std::int64_t chunk = std::clamp<std::int64_t>((std::int64_t{1} << 23) / d, 1, rows);
  Tensor dbuf = be.empty({2 * chunk, d}), tbuf = be.empty({2 * chunk, d});
  std::vector<double> dots(static_cast<std::size_t>(2 * chunk));
  const double half_n = 0.5 * static_cast<double>(nsamples);
  for (std::int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const auto c = std::min(chunk, rows - r0);
    Tensor D = view_of(dbuf, {2 * c, d}), T = view_of(tbuf, {2 * c, d});
    Tensor top = D.slice_rows(0, c), bottom = D.slice_rows(c, 2 * c);
    be.copy(w_pruned.slice_rows(r0, r0 + c), top);
    be.scale(top, -1.0f);
    be.add(top, w.slice_rows(r0, r0 + c));
    be.copy(w.slice_rows(r0, r0 + c), bottom);
    be.gemm(Trans::no, Trans::no, 1.0f, D, hessian, 0.0f, T);
    be.rowwise_dot(T, D, std::span<double>(dots.data(), static_cast<std::size_t>(2 * c)));
    for (std::int64_t i = 0; i < c; ++i) {
      e.rows[r0 + i] = half_n * dots[i];
      e.error += half_n * dots[i];
      e.dense += half_n * dots[c + i];
    }
  }
  e.rel = e.dense > 0 ? e.error / e.dense : (e.error == 0 ? 0.0 : std::numeric_limits<double>::infinity());
  return e;
}

namespace {

// SparseGPT: r.weight (the copy of the weight) factored (or o.factor, shared) and swept in place;
// r's mask, losses, damping and seconds filled.
void prune_sparsegpt(Backend& be, const InputStats* stats, const PruneOptions& o, const std::string& what,
                     PruneResult& r) {
  const auto rows = r.weight.size(0), cols = r.weight.size(1);
  SCALPEL_CHECK_INPUT(stats && stats->has_hessian() && stats->nsamples() > 0,
                      "{}: SparseGPT needs the Hessian of the inputs (InputStats with a Hessian, fed)", what);
  SCALPEL_CHECK_INPUT(o.blocksize >= 1, "{}: blocksize {} must be >= 1", what, o.blocksize);
  SCALPEL_CHECK_INPUT(o.percdamp > 0 && std::isfinite(o.percdamp), "{}: dampening {} must be > 0", what, o.percdamp);
  SCALPEL_CHECK_INPUT(o.max_damping_tries >= 1, "{}: max_damping_tries must be >= 1", what);
  Timer tf;
  SCALPEL_CHECK_INPUT(!o.isc || !o.pattern.is_nm(), "{}: the ISC saliency is for unstructured patterns", what);
  HinvFactor own;
  if (o.factor) {
    SCALPEL_CHECK(o.factor->hinv.defined() && o.factor->hinv.size(0) == cols && (!o.isc || o.factor->hdiag.defined()),
                  "{}: the shared factor does not fit", what);
    be.zero_dead_columns(stats->hessian(), r.weight);
  } else {
    own = sparsegpt_factor(be, stats->hessian(), &r.weight, o.percdamp, o.max_damping_tries, what, o.isc);
  }
  const HinvFactor& f = o.factor ? *o.factor : own;
  r.seconds.factorisation = tf.seconds();
  r.damping = f.damping;
  r.percdamp = f.percdamp;
  r.damping_tries = f.tries;
  r.dead = f.dead;
  Timer ts;
  Tensor losses = be.zeros({rows}, DType::f64);
  SweepOptions so;
  so.pattern = o.pattern;
  so.blocksize = o.blocksize;
  so.total_rows = o.total_rows;
  so.row_offset = o.row_offset;
  so.select = o.select;
  so.hdiag = o.isc ? &f.hdiag : nullptr;
  sparsegpt_sweep(be, r.weight, f.hinv, so, r.mask, losses);
  r.seconds.sweep = ts.seconds();
  r.blocksize = sparsegpt_blocksize(o.blocksize, o.pattern);
  const Tensor hl = be.download(losses);
  r.losses.assign(hl.data<double>(), hl.data<double>() + rows);
  if (!be.all_finite(r.weight))
    SCALPEL_RUNTIME_ERROR("{}: SparseGPT produced non-finite weights (damping {:g}); the Hessian is too "
                          "ill-conditioned: raise prune.dampening",
                          what, r.damping);
}

}  // namespace

PruneResult prune_linear(Backend& be, const Tensor& weight, const InputStats* stats, const PruneOptions& o) {
  const std::string what = o.name.empty() ? std::string("linear") : o.name;
  validate_pattern(o.pattern, what);
  SCALPEL_CHECK_INPUT(weight.defined() && weight.dim() == 2 && weight.dtype() == DType::f32,
                      "{}: weight must be a 2-D F32 tensor, got {} {}", what, shape_str(weight.shape()),
                      weight.defined() ? dtype_name(weight.dtype()) : "undefined");
  const auto rows = weight.size(0), cols = weight.size(1);
  if (stats)
    SCALPEL_CHECK_INPUT(stats->cols() == cols, "{}: statistics '{}' are for {} inputs, the weight has {} columns", what,
                        stats->name(), stats->cols(), cols);
  SCALPEL_CHECK_INPUT(be.all_finite(weight), "{}: the weight holds NaN or infinite values", what);

  PruneResult r;
  r.total = rows * cols;
  r.seconds.stats = stats ? stats->seconds() : 0.0;
  r.weight = be.empty({rows, cols});
  be.copy(weight, r.weight);
  r.mask = be.empty({rows, cols}, DType::u8);

  switch (o.method) {
    case Method::magnitude: {
      Timer t;
      magnitude_mask(be, r.weight, o.pattern, r.mask, o.select, o.total_rows);
      be.apply_mask(r.weight, r.mask);
      r.seconds.sweep = t.seconds();
      break;
    }
    case Method::wanda: {
      SCALPEL_CHECK_INPUT(stats && stats->has_col_norms(),
                          "{}: Wanda needs the column norms of the inputs (InputStats with col_norms)", what);
      Timer t;
      wanda_mask(be, r.weight, stats->col_norms(), o.pattern, r.mask);
      be.apply_mask(r.weight, r.mask);
      r.seconds.sweep = t.seconds();
      break;
    }
    case Method::sparsegpt:
      prune_sparsegpt(be, stats, o, what, r);
      break;
  }

  r.host_mask = be.download(r.mask);
  const std::uint8_t* m = r.host_mask.data<std::uint8_t>();
  std::int64_t pruned = 0;
#pragma omp parallel for reduction(+ : pruned) if (r.total > (1 << 20)) schedule(static)
  for (std::int64_t i = 0; i < r.total; ++i) pruned += m[i] == 0;
  r.pruned = pruned;
  r.sparsity = r.total ? static_cast<double>(r.pruned) / static_cast<double>(r.total) : 0.0;

  if (o.compute_error && stats && stats->has_hessian() && stats->nsamples() > 0) {
    Timer te;
    auto e = reconstruction_error(be, weight, r.weight, stats->hessian(), stats->nsamples());
    r.error = e.error;
    r.dense = e.dense;
    r.error_rel = e.rel;
    r.row_error = std::move(e.rows);
    r.seconds.error = te.seconds();
  }
  return r;
}

}  // namespace scalpel::prune
