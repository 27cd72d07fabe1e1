// Kronecker factor sums: one fp32 syrk per batch added into float64 (or exactly), the bias
// column's entries (Σ_t x_t and the token count) kept beside the d x d block and assembled when
// the mean is read.
#include "scalpel/prune/kfac.hpp"

#include <cmath>

#include "scalpel/core/error.hpp"
#include "scalpel/core/timer.hpp"

namespace scalpel::prune {

KroneckerFactor::KroneckerFactor(Backend& be, std::int64_t dim, bool ones_column, Accumulation mode, std::string name)
    : be_(be), dim_(dim), ones_(ones_column), mode_(mode), name_(std::move(name)) {
  SCALPEL_CHECK(dim > 0, "{}: width {}", name_, dim);
  SCALPEL_CHECK(mode != Accumulation::running, "{}: Kronecker factors are summed, not running means", name_);
  scratch_ = be_.empty({dim, dim});
  if (ones_) col_scratch_ = be_.empty({dim, 1});
  if (mode_ == Accumulation::sum) {
    sum_ = be_.zeros({dim * (dim + 1) / 2}, DType::f64);
    if (ones_) col_sum_ = be_.zeros({dim}, DType::f64);
  } else {
    exact_ = std::make_unique<ExactSum>(static_cast<std::size_t>(dim * (dim + 1) / 2));
    if (ones_) exact_col_ = std::make_unique<ExactSum>(static_cast<std::size_t>(dim));
  }
}

void KroneckerFactor::add(const Tensor& v) {
  SCALPEL_CHECK_INPUT(v.dim() == 2 && v.size(1) == dim_, "{}: batch {} does not have {} columns", name_,
                      shape_str(v.shape()), dim_);
  SCALPEL_CHECK(!reduced_, "{}: add() after reduce()", name_);
  if (v.size(0) == 0) return;
  if (!be_.all_finite(v)) SCALPEL_RUNTIME_ERROR("{}: non-finite values in a batch", name_);
  Timer t;
  be_.syrk(1.0f, v, 0.0f, scratch_);
  if (mode_ == Accumulation::sum) be_.accumulate_upper_f64(scratch_, sum_);
  else exact_->add_upper(be_.download(scratch_).f32(), dim_);
  if (ones_) {
    if (!ones_rows_.defined() || ones_rows_.size(0) != v.size(0)) {
      Tensor h = Tensor::empty({v.size(0), 1});
      for (std::int64_t i = 0; i < v.size(0); ++i) h.f32()[i] = 1.0f;
      ones_rows_ = be_.upload(h);
    }
    be_.gemm(Trans::yes, Trans::no, 1.0f, v, ones_rows_, 0.0f, col_scratch_);  // Σ_t v_t
    if (mode_ == Accumulation::sum) be_.accumulate_f64(col_scratch_, col_sum_);
    else exact_col_->add(be_.download(col_scratch_).f32());
  }
  tokens_ += v.size(0);
  seconds_ += t.seconds();
}

void KroneckerFactor::reduce(dist::Comm& group) {
  SCALPEL_CHECK(!reduced_, "{}: reduce() called twice", name_);
  group.allreduce_sum(std::span<std::int64_t>(&tokens_, 1));
  if (mode_ == Accumulation::sum) {
    allreduce_f64(be_, group, sum_);
    if (ones_) allreduce_f64(be_, group, col_sum_);
  } else {
    exact_->allreduce(group);
    if (ones_) exact_col_->allreduce(group);
  }
  scratch_ = col_scratch_ = ones_rows_ = Tensor();
  reduced_ = true;
}

Tensor KroneckerFactor::mean(std::int64_t tokens) const {
  SCALPEL_CHECK(reduced_, "{}: mean() before reduce()", name_);
  SCALPEL_CHECK(tokens > 0, "{}: mean over {} tokens", name_, tokens);
  const auto d = dim_, n = size();
  const double scale = 1.0 / static_cast<double>(tokens);
  Tensor out = Tensor::empty({n, n}, DType::f64);
  std::vector<double> block(static_cast<std::size_t>(d * d)), col(static_cast<std::size_t>(ones_ ? d : 0));
  if (mode_ == Accumulation::sum) {
    const Tensor s = be_.download(sum_);
    for (std::int64_t i = 0, k = 0; i < d; ++i)
      for (std::int64_t j = i; j < d; ++j, ++k)
        block[static_cast<std::size_t>(i * d + j)] = block[static_cast<std::size_t>(j * d + i)] = s.f64()[k] * scale;
    if (ones_) {
      const Tensor c = be_.download(col_sum_);
      for (std::int64_t i = 0; i < d; ++i) col[static_cast<std::size_t>(i)] = c.f64()[i] * scale;
    }
  } else {
    exact_->result_symmetric(block.data(), d, scale);
    if (ones_) exact_col_->result(col.data(), scale);
  }
  double* o = out.f64();
  for (std::int64_t i = 0; i < d; ++i)
    std::copy(block.begin() + i * d, block.begin() + (i + 1) * d, o + i * n);
  if (ones_) {
    for (std::int64_t i = 0; i < d; ++i) o[i * n + d] = o[d * n + i] = col[static_cast<std::size_t>(i)];
    o[d * n + d] = static_cast<double>(tokens_) * scale;
  }
  return out;
}

void rebalance_factors(Tensor& a, Tensor& g) {
  const auto norm = [](const Tensor& t) {
    double s = 0;
    for (std::int64_t i = 0; i < t.numel(); ++i) s += t.f64()[i] * t.f64()[i];
    return std::sqrt(s);
  };
  const double na = norm(a), ng = norm(g);
  const auto scale = [](Tensor& t, double f) {
    for (std::int64_t i = 0; i < t.numel(); ++i) t.f64()[i] *= f;
  };
  if (na == 0.0 || ng == 0.0) {
    scale(a, 0.0);
    scale(g, 0.0);
    return;
  }
  scale(g, std::sqrt(na / ng));
  scale(a, std::sqrt(ng / na));
}

}  // namespace scalpel::prune
