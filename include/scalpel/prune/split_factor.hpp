// SparseGPT's factor of a wide Hessian made by the ranks of a team together, instead of by one of
// them while the others wait: fc2's 49152-wide factor of OPT-175B is 64 times the work of each
// 12288-wide one, so giving whole factors to ranks leaves the owner of fc2 the slowest rank of
// every layer. The matrix is cut into row panels of `tile` rows, dealt to the ranks back and forth
// (panel_owner). With A = J H J (J the reversal), the Cholesky factor A = LLᵀ and then X = L⁻¹ are
// formed panel by panel, each finished panel sent to every rank (n²/2 values per phase), and
// U = J X J is upper triangular with H⁻¹ = UᵀU: Backend::inverse_cholesky_upper's result up to
// rounding. Every tile op's shapes and inputs depend on n and the tile alone, so U has the same
// bits at any number of ranks (one rank included) and threads.
#pragma once
#include <cstdint>

#include "scalpel/backend/backend.hpp"
#include "scalpel/dist/comm.hpp"

namespace scalpel::prune {

// The rank that owns row panel i: 0, 1, ..., ranks-1, then ranks-1, ..., 0, and so on. A panel's
// work grows with its index squared, so dealing them back and forth evens the ranks out (at 48
// panels over 8 ranks the busiest rank has 8% more than the least busy; dealt round robin, 55%).
inline int panel_owner(std::int64_t i, int ranks) {
  const std::int64_t round = i / ranks;
  const int pos = static_cast<int>(i % ranks);
  return round % 2 == 0 ? pos : ranks - 1 - pos;
}

// The work and traffic of rank r of `ranks` in shared_inverse_cholesky_upper of width n, step by
// step: panel j (rows [c, c + w)) costs its owner its Cholesky factor w³/3 and every rank its
// inverse w³/3; each later panel i of the rank, in each of the two phases, 2 w_i w (c + w) (the
// update and solve; X's term) and 2 w_i² w (the diagonal block's update; -L_ii⁻¹ L_ij).
// Received: the other ranks' panels, w (c + w) fp32 values each, twice. The ranks meet at every
// panel's broadcast, so the time follows the critical path: per panel and phase, its owner's
// diagonal work (the others wait), then the busiest rank's work on its later panels;
// critical_flops counts that (the same on every rank; the broadcasts' latency is not in it).
// (scalpel plan, bench_layer.)
struct SharedFactorCost {
  double flops = 0, recv_bytes = 0, critical_flops = 0;
};
SharedFactorCost shared_factor_cost(std::int64_t n, std::int64_t tile, int ranks, int r);

// In place: h, the damped Hessian [n, n] (the same on every rank of `team`), becomes U on every
// rank. Returns false, on every rank alike, when a pivot is not positive or U is not finite (h is
// then undefined). Memory: h itself, three tile x tile scratch tiles and the inverse diagonal
// tiles of this rank's panels, and with several ranks one panel (tile x n) in flight (two through
// host memory); the work per rank is about (2/3 n³) / ranks.
bool shared_inverse_cholesky_upper(Backend& be, Tensor& h, std::int64_t tile, dist::Comm& team);

}  // namespace scalpel::prune
