// Statistics of a linear's inputs, accumulated over calibration batches exactly as the reference
// code does: SparseGPT's H = (2/n) Σ xᵀx and Wanda's per-column Σ x_j² / n, n counting sequences.
// One InputStats serves every linear that reads the same input (q/k/v; gate/up).
#pragma once
#include <cstdint>
#include <string>

#include <memory>

#include "scalpel/backend/backend.hpp"
#include "scalpel/dist/comm.hpp"
#include "scalpel/prune/exact_sum.hpp"

namespace scalpel::prune {

struct StatsKinds {
  bool hessian = true;     // SparseGPT, and the reconstruction error of any method
  bool col_norms = false;  // Wanda
};

// How batches are combined.
//  running: the references' running mean, H *= n/(n+b); H += (2/(n+b)) xᵀx (one process only).
//  sum:     H = (2/N) Σ xᵀx with N the total sequence count over all ranks, known in advance: each
//           batch's xᵀx (one fp32 syrk) is added into a float64 sum, reduce() adds the ranks'
//           float64 sums and rounds once to fp32. Rank counts then differ only by float64
//           reassociation (~1e-16), which almost never changes the rounded fp32 H: the pruned
//           weights match across rank counts far below 1e-6 (an fp32 sum gave 3% differences:
//           a few flipped mask entries change SparseGPT's later updates).
//  exact:   each batch's xᵀx is added exactly (ExactSum); reduce() sums exactly over the ranks
//           and scales once, so H is bitwise the same however the batches are spread over ranks
//           (`determinism: strict`).
enum class Accumulation { running, sum, exact };

// Sums a float64 tensor over the group in place: on the device with the communicator's device
// collectives (NCCL) where it has them, else through host memory.
void allreduce_f64(Backend& be, dist::Comm& group, Tensor& acc);

class InputStats {
 public:
  // `name` names the input in errors ("layer 3 self_attn.q_proj/k_proj/v_proj"). total_sequences
  // (sum, exact) is N, the sequences of every rank together.
  InputStats(Backend& be, std::int64_t cols, StatsKinds kinds, std::string name,
             Accumulation mode = Accumulation::running, std::int64_t total_sequences = 0);

  // Adds one batch: x [tokens, cols] on the backend, the tokens of `sequences` sequences. As the
  // references: H *= n/(n+b); n += b; H += (2/n) xᵀx (one syrk over all the batch's tokens), and
  // s *= n_old/n; s += ‖x_j‖²/n (running; the other modes as above). Input Error naming the
  // input on a column mismatch.
  void add_batch(const Tensor& x, std::int64_t sequences);
  // Combines the statistics of the ranks of `group` (sum, exact; every rank calls it, after its
  // last batch). Afterwards nsamples() is N and every rank holds the same statistics. Runtime
  // Error when the ranks' sequences do not add up to N.
  void reduce(dist::Comm& group);
  double reduce_seconds() const { return reduce_seconds_; }

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
  Accumulation mode_;
  std::int64_t total_ = 0;
  std::unique_ptr<ExactSum> exact_h_, exact_n_;
  Tensor scratch_h_, scratch_n_;  // sum, exact: one batch's xᵀx and ‖x_j‖²
  Tensor sum_h_, sum_n_;  // sum: the float64 sums on the backend's device (H: packed upper triangle)
  double reduce_seconds_ = 0;
  bool reduced_ = false;
  mutable Tensor h_, norms_;  // uninitialised until the first batch (zeroed if read before)
  mutable bool h_zeroed_ = false, norms_zeroed_ = false;
  std::int64_t nsamples_ = 0, tokens_ = 0;
  double seconds_ = 0;
};

}  // namespace scalpel::prune
