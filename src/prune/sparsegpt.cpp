// SparseGPT (Frantar & Alistarh 2023) as IST-DASLab/sparsegpt's fasterprune computes it: the
// damped inverse-Hessian factor, then column blocks swept with the OBS update, BLAS-2 inside a
// block and one GEMM (the lazy update) across blocks. Selection of the unstructured block mask is
// a callback so that a distributed run can choose the threshold over all ranks' rows.
#include <algorithm>
#include <cmath>

#include "scalpel/core/error.hpp"
#include "scalpel/core/log.hpp"
#include "scalpel/prune/pruner.hpp"

namespace scalpel::prune {

namespace {

Tensor view_of(const Tensor& buf, const Shape& shape) {
  return buf.reshape({buf.numel()}).slice_rows(0, shape_numel(shape)).reshape(shape);
}

}  // namespace

std::int64_t sparsegpt_blocksize(std::int64_t blocksize, const Pattern& p) {
  if (!p.is_nm()) return std::max<std::int64_t>(blocksize, 1);
  return std::max<std::int64_t>(p.m, blocksize - blocksize % p.m);
}

HinvFactor sparsegpt_factor(Backend& be, const Tensor& hessian, Tensor* w, double percdamp, int max_tries,
                            const std::string& name, bool keep_diagonal, const std::function<bool(Tensor&)>& factorise) {
  SCALPEL_CHECK(hessian.dim() == 2 && hessian.size(0) == hessian.size(1), "{}: Hessian {}", name,
                shape_str(hessian.shape()));
  SCALPEL_CHECK_INPUT(be.all_finite(hessian),
                      "{}: the Hessian holds NaN or infinite values (the layer's inputs overflowed, or a linear "
                      "left out of prune.targets holds NaN?)", name);
  const auto d = hessian.size(0);
  double pd = percdamp;
  for (int t = 1; t <= max_tries; ++t) {
    Tensor h = be.empty({d, d});
    be.copy(hessian, h);
    const auto prep = be.hessian_prepare(h, w, static_cast<float>(pd));
    Tensor hdiag;
    if (keep_diagonal) {
      hdiag = be.empty({d});
      be.diagonal(h, hdiag);
    }
    // U with H⁻¹ = UᵀU, the reference's torch.linalg.cholesky, cholesky_inverse,
    // cholesky(upper=True) in one backend op (see Backend::inverse_cholesky_upper). A pivot that
    // only just passes can still leave inf in U, which the op reports as a failure too.
    const bool ok = factorise ? factorise(h) : be.inverse_cholesky_upper(h);
    if (ok) {
      if (t > 1)
        log::warn("{}: factorised with damping {:g} ({:g} x mean diag H) after {} tries", name, prep.damp, pd, t);
      HinvFactor f;
      f.hinv = std::move(h);
      f.damping = prep.damp;
      f.percdamp = pd;
      f.tries = t;
      f.dead = prep.dead;
      f.hdiag = std::move(hdiag);
      return f;
    }
    log::warn("{}: Hessian not positive definite with damping {:g} ({:g} x mean diag H); retrying with {:g} x", name,
              prep.damp, pd, pd * 10);
    pd *= 10;
  }
  SCALPEL_RUNTIME_ERROR("{}: the Hessian could not be factorised after {} tries (damping up to {:g} x mean diag H)",
                        name, max_tries, pd / 10);
}

void sparsegpt_sweep(Backend& be, Tensor& w, const Tensor& hinv, const SweepOptions& o, Tensor& mask, Tensor& losses) {
  const auto rows = w.size(0), d = w.size(1);
  SCALPEL_CHECK(hinv.size(0) == d && hinv.size(1) == d && mask.shape() == w.shape() && losses.numel() == rows,
                "sparsegpt_sweep W {} Hinv {} mask {} losses {}", shape_str(w.shape()), shape_str(hinv.shape()),
                shape_str(mask.shape()), shape_str(losses.shape()));
  const auto& p = o.pattern;
  const auto bs = sparsegpt_blocksize(o.blocksize, p);
  const auto total_rows = o.total_rows > 0 ? o.total_rows : rows;
  // Scratch for the widest block, reused by every block (narrower views for the last one).
  Tensor err_buf = be.empty({rows, std::min(bs, d)});
  Tensor score_buf = p.is_nm() ? Tensor() : be.empty({rows, std::min(bs, d)});
  for (std::int64_t c0 = 0; c0 < d; c0 += bs) {
    const auto width = std::min(bs, d - c0);
    Tensor err = view_of(err_buf, {rows, width});
    if (!p.is_nm()) {
      // The block's mask from w²/U_jj² of the weights as the previous blocks left them, one
      // threshold over every row of the block.
      Tensor scores = view_of(score_buf, {rows, width});
      be.obs_scores(w, hinv, c0, scores, o.hdiag);
      const auto t = o.select(be, scores, unstructured_count(total_rows * width, p.sparsity));
      be.mask_threshold(scores, t, mask, c0);
    }
    be.obs_sweep_block(w, hinv, c0, width, p.n, p.m, mask, err, losses);
    be.obs_lazy_update(w, err, hinv, c0, o.row_offset, total_rows);
  }
}

}  // namespace scalpel::prune
