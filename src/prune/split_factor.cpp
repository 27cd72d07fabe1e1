// The shared factorisation (see split_factor.hpp). Panels are rows of the one n x n matrix every
// rank holds, which is A at the start, L (lower triangle) after the first phase and X = L⁻¹ after
// the second. The work on a panel's diagonal block, which every other rank waits for, is kept to
// its Cholesky factor and inverse: the updates of a diagonal block (A_ii - Σ L_ij L_ijᵀ) are made
// by the panel's owner as each L_ij appears, and X_i is summed in place from X_i = Σ_{m<i}
// (-L_ii⁻¹ L_im) X_m as the panels X_m arrive, so that no panel waits for a last product.
#include "scalpel/prune/split_factor.hpp"

#include <algorithm>
#include <span>
#include <vector>

#include "scalpel/core/error.hpp"

namespace scalpel::prune {
namespace {

struct Tiles {
  std::int64_t n = 0, t = 0, count = 0;
  std::int64_t r0(std::int64_t i) const { return i * t; }
  std::int64_t w(std::int64_t i) const { return std::min(t, n - i * t); }
};

// A [rows, cols] view at the start of a scratch buffer.
Tensor view_of(const Tensor& buf, std::int64_t rows, std::int64_t cols) {
  return buf.reshape({buf.numel()}).slice_rows(0, rows * cols).reshape({rows, cols});
}

struct Team {
  Backend& be;
  dist::Comm& comm;
  Tensor pack;  // one panel on its way (several ranks only)
  int owner(std::int64_t i) const { return panel_owner(i, comm.size()); }
  bool mine(std::int64_t i) const { return owner(i) == comm.rank(); }

  // The owner's flag, on every rank.
  bool agree(bool ok, int root) {
    if (comm.size() == 1) return ok;
    std::int64_t f = ok ? 1 : 0;
    comm.broadcast(std::as_writable_bytes(std::span(&f, 1)), root);
    return f != 0;
  }

  // Row panel i of h, its first r0(i) + w(i) columns (the lower part), from its owner to every
  // rank: by NCCL between GPUs that have it, else through host memory and MPI.
  void share(Tensor& h, const Tiles& tl, std::int64_t i) {
    if (comm.size() == 1) return;
    const Block b{tl.r0(i), 0, tl.w(i), tl.r0(i) + tl.w(i)};
    Tensor buf = view_of(pack, b.rows, b.cols);
    const int root = owner(i);
    if (comm.rank() == root) be.copy_block(h, b, buf, 0, 0);
    if (h.device() == Device::cuda && comm.device_collectives()) {  // NCCL, GPU to GPU
      comm.broadcast_device(static_cast<std::byte*>(buf.raw()), buf.nbytes(), root);
      if (comm.rank() != root) be.copy_block(buf, {0, 0, b.rows, b.cols}, h, b.r0, 0);
      return;
    }
    Tensor host = comm.rank() == root ? be.download(buf) : Tensor::empty({b.rows, b.cols});
    comm.broadcast(std::span<std::byte>(static_cast<std::byte*>(host.raw()), host.nbytes()), root);
    if (comm.rank() != root) be.copy_block(be.upload_exact(host), {0, 0, b.rows, b.cols}, h, b.r0, 0);
  }
};

// L_jj = chol of the diagonal block in place (its updates already made; strict upper zeroed).
bool factor_diagonal(Backend& be, Tensor& h, const Tiles& tl, std::int64_t j, const Tensor& scratch) {
  const auto c = tl.r0(j), w = tl.w(j);
  Tensor d = view_of(scratch, w, w);
  be.copy_block(h, {c, c, w, w}, d, 0, 0);
  if (!be.cholesky(d, /*upper=*/false)) return false;
  be.copy_block(d, {0, 0, w, w}, h, c, c);
  return true;
}

// L_ij = (A_ij - L_i,<j L_j,<jᵀ) L_jj⁻ᵀ for i > j, given linv = L_jj⁻¹; then its term off the
// diagonal block of row i: A_ii -= L_ij L_ijᵀ.
void solve_block(Backend& be, Tensor& h, const Tiles& tl, std::int64_t i, std::int64_t j, const Tensor& linv,
                 const Tensor& scratch) {
  const auto ci = tl.r0(i), wi = tl.w(i), c = tl.r0(j), w = tl.w(j);
  if (c > 0) be.gemm_block(Trans::no, Trans::yes, -1.0f, h, {ci, 0, wi, c}, h, {c, 0, w, c}, 1.0f, h, {ci, c, wi, w});
  Tensor t = view_of(scratch, wi, w);
  be.gemm_block(Trans::no, Trans::yes, 1.0f, h, {ci, c, wi, w}, linv, {0, 0, w, w}, 0.0f, t, {0, 0, wi, w});
  be.copy_block(t, {0, 0, wi, w}, h, ci, c);
  be.gemm_block(Trans::no, Trans::yes, -1.0f, h, {ci, c, wi, w}, h, {ci, c, wi, w}, 1.0f, h, {ci, ci, wi, wi});
}

// Phase 1: h = A becomes L (lower triangle), row panel by row panel. linv_own[i] keeps L_ii⁻¹ of
// this rank's panels for phase 2.
bool factor_rows(Team& team, Tensor& h, const Tiles& tl, const std::vector<Tensor>& scratch,
                 std::vector<Tensor>& linv_own) {
  Backend& be = team.be;
  for (std::int64_t j = 0; j < tl.count; ++j) {
    bool ok = true;
    if (team.mine(j)) ok = factor_diagonal(be, h, tl, j, scratch[0]);
    if (!team.agree(ok, team.owner(j))) return false;
    team.share(h, tl, j);
    // L_jj⁻¹ from the diagonal block every rank now holds (each computes it: w³/3 FLOPs).
    const auto c = tl.r0(j), w = tl.w(j);
    Tensor linv = view_of(scratch[1], w, w);
    be.copy_block(h, {c, c, w, w}, linv, 0, 0);
    be.invert_lower(linv);
    if (team.mine(j)) linv_own[static_cast<std::size_t>(j)] = clone_on(be, linv);
    for (std::int64_t i = j + 1; i < tl.count; ++i)
      if (team.mine(i)) solve_block(be, h, tl, i, j, linv, scratch[2]);
  }
  return true;
}

// Phase 2: X = L⁻¹ by row panels: X_ii = L_ii⁻¹ and X_i,<i = Σ_{m<i} (-L_ii⁻¹ L_im) X_m,<i. Once
// panel m of X is on every rank, each rank adds its term to its panels i > m, in place: block m
// of row i, which held L_im, is first written by this very term (after L_im was read), and the
// blocks before it add to what the earlier terms left.
void invert_rows(Team& team, Tensor& h, const Tiles& tl, std::vector<Tensor>& linv_own, const Tensor& scratch) {
  Backend& be = team.be;
  for (std::int64_t m = 0; m < tl.count; ++m) {
    const auto cm = tl.r0(m), wm = tl.w(m);
    if (team.mine(m)) {
      Tensor& linv = linv_own[static_cast<std::size_t>(m)];
      be.copy_block(linv, {0, 0, wm, wm}, h, cm, cm);  // X_mm; X_m,<m is complete
      linv = Tensor();
    }
    team.share(h, tl, m);
    for (std::int64_t i = m + 1; i < tl.count; ++i) {
      if (!team.mine(i)) continue;
      const auto ci = tl.r0(i), wi = tl.w(i);
      Tensor t = view_of(scratch, wi, wm);  // -L_ii⁻¹ L_im
      be.gemm_block(Trans::no, Trans::no, -1.0f, linv_own[static_cast<std::size_t>(i)], {0, 0, wi, wi}, h,
                    {ci, cm, wi, wm}, 0.0f, t, {0, 0, wi, wm});
      if (cm > 0)
        be.gemm_block(Trans::no, Trans::no, 1.0f, t, {0, 0, wi, wm}, h, {cm, 0, wm, cm}, 1.0f, h, {ci, 0, wi, cm});
      be.gemm_block(Trans::no, Trans::no, 1.0f, t, {0, 0, wi, wm}, h, {cm, cm, wm, wm}, 0.0f, h, {ci, cm, wi, wm});
    }
  }
}

}  // namespace

SharedFactorCost shared_factor_cost(std::int64_t n, std::int64_t tile, int ranks, int r) {
  SharedFactorCost c;
  if (n <= 0) return c;
  const auto t = std::min(std::max<std::int64_t>(tile, 1), n), count = (n + t - 1) / t;
  const auto w = [&](std::int64_t i) { return static_cast<double>(std::min(t, n - i * t)); };
  std::vector<double> later(static_cast<std::size_t>(ranks));  // each rank's work on panels after j
  for (std::int64_t j = 0; j < count; ++j) {
    const double cj = static_cast<double>(j * t), wj = w(j), cube = wj * wj * wj / 3.0;
    c.flops += cube;  // the tile's inverse, on every rank
    if (panel_owner(j, ranks) == r)
      c.flops += cube;  // its Cholesky factor
    else
      c.recv_bytes += 2.0 * wj * (cj + wj) * 4.0;
    // Per later panel i, in each phase: 2 w_i w (c + w) (update and solve; X's term) and
    // 2 w_i² w (the diagonal block's update; -L_ii⁻¹ L_ij).
    std::fill(later.begin(), later.end(), 0.0);
    for (std::int64_t i = j + 1; i < count; ++i)
      later[static_cast<std::size_t>(panel_owner(i, ranks))] += 2.0 * w(i) * wj * (cj + wj) + 2.0 * w(i) * w(i) * wj;
    c.flops += 2.0 * later[static_cast<std::size_t>(r)];
    // Each phase's step j: the owner's part (the others wait), then the busiest rank's.
    c.critical_flops += 2.0 * cube + 2.0 * *std::max_element(later.begin(), later.end());
  }
  return c;
}

bool shared_inverse_cholesky_upper(Backend& be, Tensor& h, std::int64_t tile, dist::Comm& team) {
  SCALPEL_CHECK(h.dim() == 2 && h.size(0) == h.size(1) && h.dtype() == DType::f32,
                "shared_inverse_cholesky_upper of {} {}", dtype_name(h.dtype()), shape_str(h.shape()));
  SCALPEL_CHECK(tile >= 1, "shared_inverse_cholesky_upper: tile {} must be >= 1", tile);
  const auto n = h.size(0);
  if (n == 0) return true;
  const auto t = std::min(tile, n);
  const Tiles tl{n, t, (n + t - 1) / t};
  Team tm{be, team, team.size() > 1 ? be.empty({t, n}) : Tensor()};
  const std::vector<Tensor> scratch{be.empty({t, t}), be.empty({t, t}), be.empty({t, t})};
  std::vector<Tensor> linv_own(static_cast<std::size_t>(tl.count));
  be.flip(h, /*keep_upper=*/false);  // A = J H J
  if (!factor_rows(tm, h, tl, scratch, linv_own)) return false;
  invert_rows(tm, h, tl, linv_own, scratch[2]);
  be.flip(h, /*keep_upper=*/true);  // U = J X J, X's strict upper triangle (what was left of A) zeroed
  return be.all_finite(h);
}

}  // namespace scalpel::prune
