// Pruning one linear layer: magnitude, Wanda and SparseGPT as their reference implementations
// compute them (IST-DASLab/sparsegpt fasterprune; locuslab/wanda prune_magnitude, prune_wanda),
// with the heavy loops in Backend ops. The SparseGPT pieces are exposed separately so that a
// distributed run can factor once and sweep row slices with a block threshold chosen globally.
//
// Where scalpel differs from the reference code, on purpose:
//  - Unstructured counts are exact. The references prune `score <= sorted[int(numel * s)]`,
//    i.e. int(numel * s) + 1 entries (plus any ties; one entry even at s = 0); scalpel prunes
//    exactly int(numel * s) (magnitude: whole matrix; SparseGPT: per block of all rows; Wanda
//    already prunes exactly int(cols * s) per row), ties broken in row-major order.
//  - N:M ties (torch.topk leaves them unspecified) go to the lower column.
//  - A last group shorter than M (cols not a multiple of M) prunes min(N, its length): the
//    references' topk(N) over the short slice, which they cannot do when it is shorter than N.
//  - SparseGPT's block width is rounded down to a multiple of M for N:M, so groups never
//    straddle blocks and stay aligned to global columns (the reference restarts its groups at
//    every block edge when M does not divide the block size, e.g. 1:3 with 128).
//  - A Hessian that fails to factorise gets 10x the damping and another try, instead of an error.
#pragma once
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "scalpel/backend/backend.hpp"
#include "scalpel/prune/mask.hpp"
#include "scalpel/prune/stats.hpp"

namespace scalpel::prune {

enum class Method { magnitude, wanda, sparsegpt };
std::string_view method_name(Method m);
// "magnitude" | "wanda" | "sparsegpt"; input Error naming `what` otherwise.
Method parse_method(const std::string& text, const std::string& what);

// Chooses the rule that prunes exactly k of `scores` over all row slices (k counts every rank's
// rows). Single process: the backend's kth_threshold on the local scores.
using BlockSelect = std::function<SelectThreshold(Backend&, const Tensor& scores, std::int64_t k)>;
SelectThreshold local_select(Backend& be, const Tensor& scores, std::int64_t k);

struct HinvFactor;

struct PruneOptions {
  Method method = Method::sparsegpt;
  Pattern pattern;
  std::int64_t blocksize = 128;  // SparseGPT: columns per block (rounded down to a multiple of M for N:M)
  double percdamp = 0.01;        // SparseGPT: damping = percdamp * mean(diag H)
  int max_damping_tries = 10;    // SparseGPT: factorisations tried, damping x10 after each failure
  // SparseGPT: the factor of these statistics' Hessian made already (shared by the linears of an
  // input group, possibly on another rank); null = factorise here.
  const HinvFactor* factor = nullptr;
  bool compute_error = true;     // reconstruction error from the Hessian (skipped without one)
  // Row-parallel pruning: the weight given is a row slice of a matrix of total_rows rows (0 = the
  // slice is the whole matrix) whose other slices are pruned by other ranks at the same time;
  // `select` chooses the whole-matrix (magnitude) and per-block (SparseGPT) thresholds over all
  // slices. Row-wise rules (Wanda, N:M) need neither.
  std::int64_t total_rows = 0;
  std::int64_t row_offset = 0;  // the slice's first row in the whole matrix
  BlockSelect select = local_select;
  std::string name;              // names the linear in errors and warnings ("layer 3 fc1")
  // SparseGPT, unstructured: the ISC saliency w²·(H_jj + 1/[H⁻¹]_jj) of the sensitivity paper
  // (arXiv 2310.09499) in place of the reference's w²/[H⁻¹]_jj, H the damped Hessian.
  bool isc = false;
};

struct PhaseSeconds {
  double stats = 0;          // accumulating the input statistics (from InputStats)
  double factorisation = 0;  // SparseGPT: damping, chol, cholesky_inverse, chol
  double sweep = 0;          // scores, selection and weight update (the whole prune for magnitude/Wanda)
  double error = 0;          // reconstruction error
};

struct PruneResult {
  Tensor weight;                  // pruned fp32 [rows, cols], on the backend
  Tensor mask;                    // U8 [rows, cols], 1 = kept
  Tensor host_mask;               // the same on the host (downloaded once, to count the zeros)
  std::vector<double> losses;     // SparseGPT: per row Σ (w - q)² / (2 d²), as the reference's Losses
  std::vector<double> row_error;  // per row ‖(W - W')_r Xᵀ‖² (when the error was computed)
  // ‖(W - W')Xᵀ‖_F², ‖W Xᵀ‖_F² and their ratio, from H without X: (n/2) tr(ΔW H ΔWᵀ). NaN when
  // not computed (no Hessian, or compute_error off).
  double error = std::numeric_limits<double>::quiet_NaN();
  double dense = std::numeric_limits<double>::quiet_NaN();
  double error_rel = std::numeric_limits<double>::quiet_NaN();
  std::int64_t pruned = 0, total = 0;  // mask zeros and entries
  double sparsity = 0;
  double damping = 0;            // SparseGPT: the absolute damping λ that factorised
  double percdamp = 0;           // ... as a fraction of mean(diag H)
  int damping_tries = 0;         // factorisations tried (1 unless H needed more damping)
  std::int64_t dead = 0;         // SparseGPT: inputs with H_jj == 0 (weights zeroed)
  std::int64_t blocksize = 0;    // SparseGPT: the block width used
  PhaseSeconds seconds;
};

// Prunes `weight` (fp32 [rows, cols] on the backend, or a row slice: see PruneOptions; left
// unchanged) with `options`. Counts, losses and errors are the slice's. Magnitude
// needs no statistics; Wanda needs col_norms, SparseGPT a Hessian (input Errors naming the linear
// otherwise). The error is computed when stats hold a Hessian and options.compute_error is set.
PruneResult prune_linear(Backend& be, const Tensor& weight, const InputStats* stats, const PruneOptions& options);

// Exactly how many entries prune_linear's mask prunes for a rows x cols weight: N:M per group;
// unstructured int(numel * s) for magnitude, int(cols * s) per row for Wanda, and
// int(rows * width * s) per block of columns for SparseGPT (its per-block selection).
std::int64_t expected_pruned(std::int64_t rows, std::int64_t cols, const Pattern& p, Method method,
                             std::int64_t blocksize = 128);

// ---- Magnitude and Wanda masks (no weight update) ----


// Magnitude: unstructured prunes the int(numel * s) smallest |w| over the whole matrix (ties in
// row-major order; total_rows counts the rows of all slices, 0 = w's rows); N:M per group.
void magnitude_mask(Backend& be, const Tensor& w, const Pattern& p, Tensor& mask, const BlockSelect& select = local_select,
                    std::int64_t total_rows = 0);
// Wanda: score |W_ij| sqrt(s_j); unstructured prunes int(cols * s) per output row (stable order);
// N:M per group.
void wanda_mask(Backend& be, const Tensor& w, const Tensor& col_norms, const Pattern& p, Tensor& mask);

// ---- SparseGPT in pieces ----

struct HinvFactor {
  Tensor hinv;           // U, upper, H⁻¹ = UᵀU (of the prepared, damped H)
  double damping = 0;    // absolute λ added to the diagonal
  double percdamp = 0;   // λ / mean(diag H)
  int tries = 0;
  std::int64_t dead = 0;
  Tensor hdiag;          // the damped H's diagonal [d] (when asked for: the ISC saliency)
};
// The reference's factorisation: copy H; dead inputs H_jj = 1 (and W[:, j] = 0 when w, a weight
// or a row slice of it, is given); λ = percdamp·mean(diag H) on the diagonal; chol (lower),
// cholesky_inverse, chol upper. A failed factorisation (not positive definite, or a non-finite
// result) restarts with λ x10, logging a warning naming `name`; after max_tries a runtime Error.
// `factorise` turns the damped H into U in place (false: not positive definite or not finite);
// empty = Backend::inverse_cholesky_upper (split_factor.hpp's shares the work over ranks).
HinvFactor sparsegpt_factor(Backend& be, const Tensor& hessian, Tensor* w, double percdamp, int max_tries,
                            const std::string& name, bool keep_diagonal = false,
                            const std::function<bool(Tensor&)>& factorise = {});

// Block width the sweep uses: blocksize rounded down to a multiple of M for N:M (at least M), so
// that every N:M group lies inside one block and groups stay aligned to global columns (the
// reference cuts groups at block edges when M does not divide its blocksize).
std::int64_t sparsegpt_blocksize(std::int64_t blocksize, const Pattern& p);

struct SweepOptions {
  Pattern pattern;
  std::int64_t blocksize = 128;
  std::int64_t total_rows = 0;  // rows of all slices (unstructured block counts); 0 = w's rows
  std::int64_t row_offset = 0;  // where w's first row lies among them
  BlockSelect select = local_select;
  const Tensor* hdiag = nullptr;  // unstructured: the ISC saliency with this damped diag H (see PruneOptions)
};
// The OBS sweep of w (a weight or a row slice) in place against hinv: per block, the unstructured
// mask from w²/U_jj² over all rows of the block (select), or N:M inside the sweep; the in-block
// BLAS-2 sweep; then the lazy BLAS-3 update of the columns right of the block. mask (U8, like w)
// and losses (f64 [rows], accumulated) are written.
void sparsegpt_sweep(Backend& be, Tensor& w, const Tensor& hinv, const SweepOptions& options, Tensor& mask,
                     Tensor& losses);

// ---- Reconstruction error without X ----

struct ReconstructionError {
  double error = 0, dense = 0, rel = 0;  // ‖(W−W')Xᵀ‖_F², ‖W Xᵀ‖_F², error / dense
  std::vector<double> rows;              // per-row error
};
// With H = (2/n) XᵀX: ‖A Xᵀ‖_F² = (n/2) tr(A H Aᵀ), evaluated by GEMMs over row chunks.
ReconstructionError reconstruction_error(Backend& be, const Tensor& w, const Tensor& w_pruned, const Tensor& hessian,
                                         std::int64_t nsamples);

}  // namespace scalpel::prune
