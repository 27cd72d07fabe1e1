// Statistics of a linear's inputs, accumulated over calibration batches exactly as the reference
// code does: SparseGPT's H = (2/n) Σ xᵀx and Wanda's per-column Σ x_j² / n, n counting sequences.
// One InputStats serves every linear that reads the same input (q/k/v; gate/up).
#pragma once
#include <cstdint>
#include <string>

#include "scalpel/backend/backend.hpp"

namespace scalpel::prune {

struct StatsKinds {
  bool hessian = true;     // SparseGPT, and the reconstruction error of any method
  bool col_norms = false;  // Wanda
};

class InputStats {
 public:
  // `name` names the input in errors ("layer 3 self_attn.q_proj/k_proj/v_proj").
  InputStats(Backend& be, std::int64_t cols, StatsKinds kinds, std::string name);

  // Adds one batch: x [tokens, cols] on the backend, the tokens of `sequences` sequences. As the
  // references: H *= n/(n+b); n += b; H += (2/n) xᵀx (one syrk over all the batch's tokens), and
  // s *= n_old/n; s += ‖x_j‖²/n. Input Error naming the input on a column mismatch.
  void add_batch(const Tensor& x, std::int64_t sequences);

  bool has_hessian() const { return kinds_.hessian; }
  bool has_col_norms() const { return kinds_.col_norms; }
  const Tensor& hessian() const;    // [cols, cols], both triangles
  const Tensor& col_norms() const;  // [cols], Wanda's scaler_row
  std::int64_t cols() const { return cols_; }
  std::int64_t nsamples() const { return nsamples_; }  // sequences seen
  std::int64_t tokens() const { return tokens_; }
  double seconds() const { return seconds_; }  // time spent in add_batch
  const std::string& name() const { return name_; }

 private:
  Backend& be_;
  std::int64_t cols_;
  StatsKinds kinds_;
  std::string name_;
  mutable Tensor h_, norms_;  // uninitialised until the first batch (zeroed if read before)
  mutable bool h_zeroed_ = false, norms_zeroed_ = false;
  std::int64_t nsamples_ = 0, tokens_ = 0;
  double seconds_ = 0;
};

}  // namespace scalpel::prune
