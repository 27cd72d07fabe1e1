// Input statistics: the running Hessian and column norms, each one backend op per batch.
#include "scalpel/prune/stats.hpp"

#include "scalpel/core/error.hpp"
#include "scalpel/core/timer.hpp"

namespace scalpel::prune {

void allreduce_f64(Backend& be, dist::Comm& group, Tensor& acc) {
  if (group.size() == 1) return;
  const auto n = static_cast<std::size_t>(acc.numel());
  if (acc.device() == Device::cpu) {
    group.allreduce_sum(std::span<double>(acc.f64(), n));
  } else if (group.device_collectives()) {
    be.synchronize();
    group.allreduce_sum_device(acc.data<double>(), n);
  } else {
    Tensor host = be.download(acc);
    group.allreduce_sum(std::span<double>(host.f64(), n));
    acc = be.upload_exact(host);
  }
}

InputStats::InputStats(Backend& be, std::int64_t cols, StatsKinds kinds, std::string name, Accumulation mode,
                       std::int64_t total_sequences)
    : be_(be), cols_(cols), kinds_(kinds), name_(std::move(name)), mode_(mode), total_(total_sequences) {
  SCALPEL_CHECK(cols > 0, "{}: {} input columns", name_, cols);
  SCALPEL_CHECK(kinds.hessian || kinds.col_norms, "{}: no statistic requested", name_);
  SCALPEL_CHECK(mode == Accumulation::running || total_sequences > 0, "{}: total sequences {} for a summed mode",
                name_, total_sequences);
  if (mode_ != Accumulation::running) {
    if (kinds_.hessian) scratch_h_ = be_.empty({cols, cols});
    if (kinds_.col_norms) scratch_n_ = be_.empty({cols});
  }
  if (mode_ == Accumulation::exact) {
    if (kinds_.hessian) exact_h_ = std::make_unique<ExactSum>(static_cast<std::size_t>(cols * (cols + 1) / 2));
    if (kinds_.col_norms) exact_n_ = std::make_unique<ExactSum>(static_cast<std::size_t>(cols));
  }
  if (mode_ == Accumulation::sum) {
    if (kinds_.hessian) sum_h_ = be_.zeros({cols * (cols + 1) / 2}, DType::f64);  // upper triangle
    if (kinds_.col_norms) sum_n_ = be_.zeros({cols}, DType::f64);
  }
  // Not zero-filled: the first batch has beta = n_old/n_new = 0, and neither syrk (BLAS: C is
  // not read when beta is 0) nor col_sq_norms reads the output then. Zero-filling cost 50 ms at
  // d = 4096 (12% of a 4096-token syrk). Read before any batch, they are zeroed on demand.
  // Summed modes allocate the fp32 results in reduce(), once the batch scratch is freed.
  if (mode_ == Accumulation::running) {
    if (kinds_.hessian) h_ = be_.empty({cols, cols});
    if (kinds_.col_norms) norms_ = be_.empty({cols});
  }
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
    if (kinds_.hessian) {
      be_.syrk(1.0f, x, 0.0f, scratch_h_);
      if (mode_ == Accumulation::sum)
        be_.accumulate_upper_f64(scratch_h_, sum_h_);
      else
        exact_h_->add_upper(be_.download(scratch_h_).f32(), cols_);  // exact sums live on the host
    }
    if (kinds_.col_norms) {
      be_.col_sq_norms(x, 1.0f, 0.0f, scratch_n_);
      if (mode_ == Accumulation::sum)
        be_.accumulate_f64(scratch_n_, sum_n_);
      else
        exact_n_->add(be_.download(scratch_n_).f32());
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

void InputStats::reduce(dist::Comm& group) {
  SCALPEL_CHECK(mode_ != Accumulation::running, "{}: running statistics cannot be reduced over ranks", name_);
  SCALPEL_CHECK(!reduced_, "{}: reduce() called twice", name_);
  Timer t;
  std::int64_t n = nsamples_, tokens = tokens_;
  group.allreduce_sum(std::span<std::int64_t>(&n, 1));
  group.allreduce_sum(std::span<std::int64_t>(&tokens, 1));
  if (n != total_)
    SCALPEL_RUNTIME_ERROR("{}: the ranks saw {} sequences together, expected {}", name_, n, total_);
  // The batch scratch goes first, then the fp32 results are filled.
  scratch_h_ = scratch_n_ = Tensor();
  const double hscale = 2.0 / static_cast<double>(total_), nscale = 1.0 / static_cast<double>(total_);
  if (kinds_.hessian) {
    if (mode_ == Accumulation::sum) {
      // float64 sums over the ranks, then one rounding to fp32 with the 2/N scale.
      allreduce_f64(be_, group, sum_h_);
      h_ = be_.empty({cols_, cols_});
      be_.upper_f64_to_symmetric(sum_h_, hscale, h_);
      sum_h_ = Tensor();
    } else {
      Tensor host = Tensor::empty({cols_, cols_}, DType::f32);
      exact_h_->allreduce(group);
      exact_h_->result_symmetric(host.f32(), cols_, hscale);
      exact_h_.reset();
      h_ = be_.upload(host);
    }
  }
  if (kinds_.col_norms) {
    if (mode_ == Accumulation::sum) {
      allreduce_f64(be_, group, sum_n_);
      norms_ = be_.empty({cols_});
      be_.f64_to_f32(sum_n_, nscale, norms_);
      sum_n_ = Tensor();
    } else {
      Tensor host = Tensor::empty({cols_}, DType::f32);
      exact_n_->allreduce(group);
      exact_n_->result(host.f32(), nscale);
      exact_n_.reset();
      norms_ = be_.upload(host);
    }
  }
  nsamples_ = n;
  tokens_ = tokens;
  h_zeroed_ = norms_zeroed_ = true;  // written: never zero them on read
  reduced_ = true;
  reduce_seconds_ += t.seconds();
}

const Tensor& InputStats::hessian() const {
  SCALPEL_CHECK(kinds_.hessian, "{}: the Hessian was not collected", name_);
  SCALPEL_CHECK(mode_ == Accumulation::running || reduced_, "{}: summed statistics read before reduce()", name_);
  if (nsamples_ == 0 && !h_zeroed_) {
    h_ = be_.zeros({cols_, cols_});
    h_zeroed_ = true;
  }
  return h_;
}

const Tensor& InputStats::col_norms() const {
  SCALPEL_CHECK(kinds_.col_norms, "{}: column norms were not collected", name_);
  SCALPEL_CHECK(mode_ == Accumulation::running || reduced_, "{}: summed statistics read before reduce()", name_);
  if (nsamples_ == 0 && !norms_zeroed_) {
    norms_ = be_.zeros({cols_});
    norms_zeroed_ = true;
  }
  return norms_;
}

}  // namespace scalpel::prune
