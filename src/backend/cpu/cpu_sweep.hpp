// The CPU backend's SparseGPT/OBS sweep over one block of columns (Backend::obs_sweep_block), on
// raw host pointers; CpuBackend checks the tensors and forwards here. Private to src/backend.
#pragma once
#include <cstdint>

namespace scalpel::cpu {

// The sweep of columns [0, width) of the rows x d weights at w (row stride d; the block's first
// column), with U the block's diagonal tile of the upper inverse Cholesky factor (row stride d).
// Pruned weights (mask 0, or the prune_n smallest of every prune_m when prune_m > 0, which then
// writes the mask) become zero, the others take the OBS updates; err (rows x width) gets the
// scaled errors and losses[r] += ½ Σ err². Bits do not depend on the thread count.
void obs_sweep(float* w, std::uint8_t* mask, std::int64_t rows, std::int64_t d, const float* u, std::int64_t width,
               int prune_n, int prune_m, float* err, double* losses);

}  // namespace scalpel::cpu
