// Input statistics: the running Hessian and column norms, each one backend op per batch.
#include "scalpel/prune/stats.hpp"

#include "scalpel/core/error.hpp"
#include "scalpel/core/timer.hpp"

namespace scalpel::prune {

InputStats::InputStats(Backend& be, std::int64_t cols, StatsKinds kinds, std::string name, Accumulation mode,
                       std::int64_t total_sequences)
    : be_(be), cols_(cols), kinds_(kinds), name_(std::move(name)), mode_(mode), total_(total_sequences) {
  SCALPEL_CHECK(cols > 0, "{}: {} input columns", name_, cols);
  SCALPEL_CHECK(kinds.hessian || kinds.col_norms, "{}: no statistic requested", name_);
  SCALPEL_CHECK(mode == Accumulation::running || total_sequences > 0, "{}: total sequences {} for a summed mode",
                name_, total_sequences);
  if (mode_ == Accumulation::exact) {
    if (kinds_.hessian) {
      exact_h_ = std::make_unique<ExactSum>(static_cast<std::size_t>(cols * (cols + 1) / 2));
      scratch_h_ = be_.empty({cols, cols});
    }
    if (kinds_.col_norms) {
      exact_n_ = std::make_unique<ExactSum>(static_cast<std::size_t>(cols));
      scratch_n_ = be_.empty({cols});
    }
  }
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
  if (mode_ != Accumulation::running) {
    SCALPEL_CHECK(nsamples_ + sequences <= total_, "{}: {} sequences added, more than the {} announced", name_,
                  nsamples_ + sequences, total_);
    if (mode_ == Accumulation::sum) {
      // Σ (2/N) xᵀx: the first batch overwrites (beta 0: the output is not read), later ones add.
      const float beta = nsamples_ == 0 ? 0.0f : 1.0f;
      if (kinds_.hessian) be_.syrk(static_cast<float>(2.0 / static_cast<double>(total_)), x, beta, h_);
      if (kinds_.col_norms) be_.col_sq_norms(x, static_cast<float>(1.0 / static_cast<double>(total_)), beta, norms_);
    } else {
      if (kinds_.hessian) {
        be_.syrk(1.0f, x, 0.0f, scratch_h_);
        const Tensor host = be_.download(scratch_h_);
        exact_h_->add_upper(host.f32(), cols_);
      }
      if (kinds_.col_norms) {
        be_.col_sq_norms(x, 1.0f, 0.0f, scratch_n_);
        const Tensor host = be_.download(scratch_n_);
        exact_n_->add(host.f32());
      }
    }
    nsamples_ += sequences;
    tokens_ += x.size(0);
    seconds_ += t.seconds();
    return;
  }
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

namespace {

// Sums a float tensor over the group in place (host memory; other devices go through the host).
void allreduce_tensor(Backend& be, Tensor& t, dist::Comm& group) {
  if (t.device() == Device::cpu) {
    group.allreduce_sum(std::span<float>(t.f32(), static_cast<std::size_t>(t.numel())));
    return;
  }
  Tensor host = be.download(t);
  group.allreduce_sum(std::span<float>(host.f32(), static_cast<std::size_t>(host.numel())));
  t = be.upload(host);
}

// The exact sums, scaled, into t (full symmetric matrix when `symmetric`).
void exact_result(Backend& be, const ExactSum& e, Tensor& t, double scale, bool symmetric) {
  Tensor host = Tensor::empty(t.shape(), DType::f32);
  if (symmetric)
    e.result_symmetric(host.f32(), t.size(0), scale);
  else
    e.result(host.f32(), scale);
  if (t.device() == Device::cpu)
    std::copy(host.f32(), host.f32() + host.numel(), t.f32());
  else
    t = be.upload(host);
}

}  // namespace

void InputStats::reduce(dist::Comm& group) {
  SCALPEL_CHECK(mode_ != Accumulation::running, "{}: running statistics cannot be reduced over ranks", name_);
  Timer t;
  std::int64_t n = nsamples_, tokens = tokens_;
  group.allreduce_sum(std::span<std::int64_t>(&n, 1));
  group.allreduce_sum(std::span<std::int64_t>(&tokens, 1));
  if (n != total_)
    SCALPEL_RUNTIME_ERROR("{}: the ranks saw {} sequences together, expected {}", name_, n, total_);
  if (mode_ == Accumulation::sum) {
    // A rank without batches contributes zeros (its tensors were never written).
    if (kinds_.hessian) {
      if (nsamples_ == 0) h_ = be_.zeros(h_.shape());
      allreduce_tensor(be_, h_, group);
    }
    if (kinds_.col_norms) {
      if (nsamples_ == 0) norms_ = be_.zeros(norms_.shape());
      allreduce_tensor(be_, norms_, group);
    }
  } else {
    if (kinds_.hessian) {
      exact_h_->allreduce(group);
      exact_result(be_, *exact_h_, h_, 2.0 / static_cast<double>(total_), true);
      exact_h_.reset();
      scratch_h_ = Tensor();
    }
    if (kinds_.col_norms) {
      exact_n_->allreduce(group);
      exact_result(be_, *exact_n_, norms_, 1.0 / static_cast<double>(total_), false);
      exact_n_.reset();
      scratch_n_ = Tensor();
    }
  }
  nsamples_ = n;
  tokens_ = tokens;
  h_zeroed_ = norms_zeroed_ = true;  // written: never zero them on read
  reduce_seconds_ += t.seconds();
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
