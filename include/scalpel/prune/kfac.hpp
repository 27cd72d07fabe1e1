// LLM Surgeon's Kronecker factors (curvature.py of Qualcomm-AI-research/llm-surgeon): for a
// linear y = x·Wᵀ + b, A = Σ ã ãᵀ / (N·T) over its inputs ã = [x; 1] (the trailing 1 only with a
// bias: the bias is the weight's last column) and G = Σ g gᵀ / (N·T) over g = ∂L/∂y, every token of
// every calibration window (the last position, whose g is 0, included), then rebalanced so that
// ‖A‖_F = ‖G‖_F. One KroneckerFactor holds one of the two sums; linears that read the same input
// (q/k/v, gate/up) share one A.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "scalpel/backend/backend.hpp"
#include "scalpel/dist/comm.hpp"
#include "scalpel/prune/exact_sum.hpp"
#include "scalpel/prune/stats.hpp"

namespace scalpel::prune {

class KroneckerFactor {
 public:
  // dim: the rows' width; ones_column: append ã's trailing 1 (A of a linear with a bias), making
  // the factor (dim + 1)². mode: sum (float64 sums of each batch's fp32 syrk) or exact (ExactSum:
  // bitwise the same however batches are spread over ranks, `determinism: strict`).
  KroneckerFactor(Backend& be, std::int64_t dim, bool ones_column, Accumulation mode, std::string name);

  // Adds Σ v vᵀ over the rows of v [tokens, dim] (on the backend). Input Error naming the factor
  // on a width mismatch; Runtime Error when v holds NaN or infinity (NaN gradients are zeroed by
  // the caller first, as the reference does).
  void add(const Tensor& v);
  // Sums over the ranks of `group`; every rank then holds the total. Call once, after the last add.
  void reduce(dist::Comm& group);
  // The reduced sum divided by `tokens` (N·T over all ranks), a host f64 [size, size].
  Tensor mean(std::int64_t tokens) const;

  std::int64_t size() const { return dim_ + (ones_ ? 1 : 0); }
  std::int64_t tokens() const { return tokens_; }  // rows added on this rank (all ranks after reduce)
  const std::string& name() const { return name_; }
  double seconds() const { return seconds_; }

 private:
  Backend& be_;
  std::int64_t dim_;
  bool ones_;
  Accumulation mode_;
  std::string name_;
  Tensor scratch_, col_scratch_, ones_rows_;  // one batch's vᵀv and Σ_t v_t; a column of ones
  Tensor sum_, col_sum_;                      // sum: packed upper triangle and column sums, f64
  std::unique_ptr<ExactSum> exact_, exact_col_;
  std::int64_t tokens_ = 0;
  bool reduced_ = false;
  double seconds_ = 0;
};

// The reference's rebalancing in place (host f64): G ← G·sqrt(‖A‖/‖G‖), A ← A·sqrt(‖G‖/‖A‖), both
// Frobenius norms; both become zero when either norm is 0.
void rebalance_factors(Tensor& a, Tensor& g);

}  // namespace scalpel::prune
