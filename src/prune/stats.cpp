// Input statistics: the running Hessian and column norms, each one backend op per batch.
#include "scalpel/prune/stats.hpp"

#include "scalpel/core/error.hpp"
#include "scalpel/core/timer.hpp"

namespace scalpel::prune {

InputStats::InputStats(Backend& be, std::int64_t cols, StatsKinds kinds, std::string name)
    : be_(be), cols_(cols), kinds_(kinds), name_(std::move(name)) {
  SCALPEL_CHECK(cols > 0, "{}: {} input columns", name_, cols);
  SCALPEL_CHECK(kinds.hessian || kinds.col_norms, "{}: no statistic requested", name_);
  // Not zero-filled: the first batch has beta = n_old/n_new = 0, and neither syrk (BLAS: C is
  // not read when beta is 0) nor col_sq_norms reads the output then. Zero-filling cost 50 ms at
  // d = 4096 (12% of a 4096-token syrk). Read before any batch, they are zeroed on demand.
  if (kinds_.hessian) h_ = be_.empty({cols, cols});
  if (kinds_.col_norms) norms_ = be_.empty({cols});
}

void InputStats::add_batch(const Tensor& x, std::int64_t sequences) {
  SCALPEL_CHECK_INPUT(x.dim() == 2 && x.size(1) == cols_, "{}: input batch {} does not have {} columns", name_,
                      shape_str(x.shape()), cols_);
  SCALPEL_CHECK_INPUT(sequences >= 1 && x.size(0) >= 1, "{}: empty input batch ({} sequences, {} tokens)", name_,
                      sequences, x.size(0));
  Timer t;
  const std::int64_t before = nsamples_, after = nsamples_ + sequences;
  // The reference rescales the running mean by n_old/n_new and adds the new batch with weight
  // 2/n_new (Hessian) or 1/n_new (column norms): one syrk over every token of the batch.
  const double keep = static_cast<double>(before) / static_cast<double>(after);
  if (kinds_.hessian) be_.syrk(static_cast<float>(2.0 / static_cast<double>(after)), x, static_cast<float>(keep), h_);
  if (kinds_.col_norms)
    be_.col_sq_norms(x, static_cast<float>(1.0 / static_cast<double>(after)), static_cast<float>(keep), norms_);
  nsamples_ = after;
  tokens_ += x.size(0);
  seconds_ += t.seconds();
}

const Tensor& InputStats::hessian() const {
  SCALPEL_CHECK(kinds_.hessian, "{}: the Hessian was not collected", name_);
  if (nsamples_ == 0 && !h_zeroed_) {
    h_ = be_.zeros(h_.shape());
    h_zeroed_ = true;
  }
  return h_;
}

const Tensor& InputStats::col_norms() const {
  SCALPEL_CHECK(kinds_.col_norms, "{}: column norms were not collected", name_);
  if (nsamples_ == 0 && !norms_zeroed_) {
    norms_ = be_.zeros(norms_.shape());
    norms_zeroed_ = true;
  }
  return norms_;
}

}  // namespace scalpel::prune
