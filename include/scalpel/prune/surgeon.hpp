// LLM Surgeon's per-shot pruning (Qualcomm-AI-research/llm-surgeon: pruner.py, threshold.py,
// sparsify.py; ../shared/docs/METHODS.md section 1): from each linear's weight and its
// Kronecker factors, the dead rows and columns, the damped inverses, the cost of every element,
// N:M group or row and column, one threshold over all linears of the model, and the correlated
// OBS update of what is removed. The caller (the surgeon driver) collects the factors, runs the
// schedule and owns the model; nothing here sees a model, a file or a rank.
//
// Where scalpel differs from the released code, on purpose (README "LLM Surgeon"):
//  - Unstructured and N:M counts are exact: a shot removes exactly floor(s·n) weights (blocks),
//    ties in linear then row-major order; the reference removes every cost <= sorted[floor(s·n)]
//    (one more, plus ties).
//  - N:M groups are the real groups of M input columns of the full matrix, with dead columns
//    counted at cost 0, so the result is exactly N:M; the reference builds its mask after dead
//    columns are squeezed out (groups shift) and, without a bias, drops a real column.
//  - Structured: the largest threshold whose removals (rows, columns and their overlap, ties
//    included) stay within floor(s·Σ R·C); the reference may stop inside a run of equal costs.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "scalpel/backend/backend.hpp"

namespace scalpel::prune::surgeon {

enum class Cost { surgeon, kobd, magnitude };
enum class Shape { element, nm, structured };

struct Options {
  Shape shape = Shape::element;
  int n = 2, m = 4;                  // N:M
  bool rows = true, columns = true;  // structured: which structures may be removed
  Cost cost = Cost::surgeon;
  double damp_g = 0.01, damp_a = 0.01;  // X̂ = X + damp·mean(diag X)·I
  std::int64_t max_correlate = 2000;    // entries (rows, for structured) solved jointly; 0 = all
  bool addupdate = true;                // later chunks see earlier chunks' updates
};

// One linear in a shot. w: host f32 [R, C'] with the bias as the last column when has_bias
// (C' = C + 1); a [C', C'] and g [R, R]: host f64 factors, rebalanced, undamped (unused and may
// be empty for Cost::magnitude).
struct Linear {
  std::string name;  // "layer 3 fc1", for errors
  Tensor w;
  bool has_bias = false;
  Tensor a, g;
};

// What score() leaves for the selection and the update.
struct Scored {
  std::vector<std::int64_t> rows, cols;  // alive rows and columns (full indices, increasing)
  Tensor ginv, ainv;                     // f32 inverses of the damped alive sub-factors (surgeon)
  std::vector<float> cost;               // element, N:M: [R * C'], 0 where dead
  std::vector<float> row_cost, col_cost; // structured: [R], [C'], 0 where dead
};

// Zeroes the dead rows (all-zero weight row or G_rr = 0) and columns (all-zero column or A_cc = 0)
// of l.w, inverts the damped alive sub-factors in float64 (surgeon cost) and computes the costs
// from l.w as it is at the start of the shot. Runtime Error naming the linear when a factor is
// not finite or a damped factor is not positive definite.
Scored score(Backend& be, Linear& l, const Options& o);

// What one shot removes from one linear.
struct Removal {
  std::vector<std::uint8_t> mask;          // element, N:M: [R * C'], 1 = remove
  std::vector<std::int64_t> rows, cols;    // structured: full indices, increasing
  std::int64_t removed = 0;                // weights (biases included) this removal covers
};

// One selection over all linears for the target fraction `sparsity` of Σ R·C' (N:M: of the
// groups, as sparsity·M/N of them). Returns one Removal per linear and the threshold (the cost
// of the last element, group or structure taken; -inf when nothing is taken).
std::vector<Removal> select(const std::vector<Linear>& ls, const std::vector<Scored>& sc, const Options& o,
                            double sparsity, double& threshold);

// Removes r from l.w: the correlated update of the remaining weights (surgeon cost), then exact
// zeros. Runtime Error naming the linear when a chunk's system is not positive definite.
void update(Backend& be, Linear& l, const Scored& s, const Removal& r, const Options& o);

}  // namespace scalpel::prune::surgeon
