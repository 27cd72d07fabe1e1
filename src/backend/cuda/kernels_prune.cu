// Kernels for the pruners: Hessian preparation, scores, radix selection on order-preserving keys,
// masks (threshold, per-row, N:M) and SparseGPT's OBS sweep (one warp per weight row, the row's
// block of columns in shared memory). Tie rules are the cpu backend's: row-major for a global
// threshold, lower column first within a row or an N:M group.
#include <cub/block/block_scan.cuh>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "block_reduce.cuh"
#include "kernels.hpp"
#include "launch.cuh"

namespace scalpel::cuda {
namespace {

// core/float_order.hpp's order_key, on the device.
__device__ __forceinline__ std::uint32_t key_of(float f) {
  std::uint32_t b = __float_as_uint(f);
  if ((b & 0x7fffffffu) == 0) b = 0;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__global__ void k_hessian_diag(float* h, i64 d, std::uint8_t* dead, double* sum, long long* count) {
  double s = 0;
  double c = 0;
  for (i64 j = threadIdx.x; j < d; j += blockDim.x) {
    float v = h[j * d + j];
    const bool is_dead = v == 0.0f;
    if (is_dead) {
      v = 1.0f;
      h[j * d + j] = v;
    }
    dead[j] = is_dead;
    c += is_dead;
    s += v;
  }
  s = block_sum(s);
  c = block_sum(c);
  if (threadIdx.x == 0) {
    *sum = s;
    *count = static_cast<long long>(c);
  }
}
__global__ void k_add_diag(float* h, i64 d, float v) { GRID_STRIDE(j, d) h[j * d + j] += v; }
// W[:, j] = 0 where H_jj == 0, read from H itself.
__global__ void k_zero_dead_h(float* w, i64 rows, i64 d, const float* h) {
  GRID_STRIDE(p, rows * d) {
    const i64 j = p % d;
    if (h[j * d + j] == 0.0f) w[p] = 0.0f;
  }
}
__global__ void k_zero_dead(float* w, i64 rows, i64 d, const std::uint8_t* dead) {
  GRID_STRIDE(p, rows * d) if (dead[p % d]) w[p] = 0.0f;
}

template <class T>
__global__ void k_all_finite(const T* p, i64 n, int* ok) {
  bool good = true;
  GRID_STRIDE(i, n) good = good && isfinite(p[i]);
  if (!good) *ok = 0;
}

__global__ void k_prune_scores(const float* w, const float* col, float* s, i64 rows, i64 d) {
  GRID_STRIDE(p, rows * d) s[p] = col ? fabsf(w[p]) * sqrtf(col[p % d]) : fabsf(w[p]);
}

// Histogram of one digit in shared memory (bits <= 11), merged into the global counts.
__global__ void k_key_hist(const float* s, i64 n, int shift, int bits, std::uint32_t prefix, unsigned long long* hist) {
  extern __shared__ unsigned local[];
  const int bins = 1 << bits;
  for (int b = threadIdx.x; b < bins; b += blockDim.x) local[b] = 0;
  __syncthreads();
  const int high = shift + bits;  // bits above the digit must match the prefix
  GRID_STRIDE(i, n) {
    const std::uint32_t k = key_of(s[i]);
    if (high >= 32 || (k >> high) == prefix) atomicAdd(&local[(k >> shift) & (bins - 1)], 1u);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < bins; b += blockDim.x)
    if (local[b]) atomicAdd(&hist[b], static_cast<unsigned long long>(local[b]));
}

__global__ void k_count_equal(const float* s, i64 rows, i64 width, float v, long long* counts) {
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    double c = 0;
    for (i64 j = threadIdx.x; j < width; j += blockDim.x) c += s[r * width + j] == v;
    c = block_sum(c);
    if (threadIdx.x == 0) counts[r] = static_cast<long long>(c);
  }
}

__global__ void k_mask_threshold(const float* s, i64 rows, i64 width, float v, long long take, const long long* first,
                                 std::uint8_t* mask, i64 mc, i64 col0) {
  const bool all_ties = take >= rows * width;
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* sr = s + r * width;
    std::uint8_t* mr = mask + r * mc + col0;
    if (all_ties) {
      for (i64 j = threadIdx.x; j < width; j += blockDim.x) mr[j] = !(sr[j] <= v);
    } else if (take <= 0 || first == nullptr || take <= first[r]) {
      for (i64 j = threadIdx.x; j < width; j += blockDim.x) mr[j] = !(sr[j] < v);
    } else if (threadIdx.x == 0) {  // this row takes ties: in column order (rare: rows around the k-th value)
      long long seen = first[r];
      for (i64 j = 0; j < width; ++j) {
        const bool eq = sr[j] == v;
        mr[j] = !(sr[j] < v || (eq && seen < take));
        seen += eq;
      }
    }
  }
}

// Per row: the k smallest (score, column) pairs are pruned. Four 8-bit radix passes find the k-th
// smallest key and how many keys lie below it; a block scan then hands the remaining prunes to the
// equal keys in column order.
__global__ void k_rows_smallest(const float* s, i64 rows, i64 d, i64 k, std::uint8_t* mask) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ unsigned hist[256];
  __shared__ std::uint32_t s_prefix;
  __shared__ long long s_need;
  __shared__ long long s_offset;
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* sr = s + r * d;
    std::uint8_t* mr = mask + r * d;
    if (k == 0) {
      for (i64 j = threadIdx.x; j < d; j += blockDim.x) mr[j] = 1;
      continue;
    }
    if (threadIdx.x == 0) {
      s_prefix = 0;
      s_need = k;
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
      __syncthreads();
      const int high = shift + 8;
      const std::uint32_t prefix = s_prefix;
      for (i64 j = threadIdx.x; j < d; j += blockDim.x) {
        const std::uint32_t key = key_of(sr[j]);
        if (high >= 32 || (key >> high) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        long long need = s_need;
        unsigned b = 0;
        for (; b < 255; ++b) {
          if (static_cast<long long>(hist[b]) >= need) break;
          need -= hist[b];
        }
        s_prefix = (prefix << 8) | b;
        s_need = need;  // prunes left among keys equal to the prefix so far
      }
      __syncthreads();
    }
    const std::uint32_t vkey = s_prefix;
    const long long need = s_need;  // how many of the keys == vkey are pruned, lowest columns first
    if (threadIdx.x == 0) s_offset = 0;
    __syncthreads();
    for (i64 j0 = 0; j0 < d; j0 += blockDim.x) {
      const i64 j = j0 + threadIdx.x;
      const std::uint32_t key = j < d ? key_of(sr[j]) : 0xffffffffu;
      const int eq = (j < d && key == vkey) ? 1 : 0;
      int before = 0, total = 0;
      Scan(scan_tmp).ExclusiveSum(eq, before, total);
      const long long rank = s_offset + before;
      if (j < d) mr[j] = !(key < vkey || (eq && rank < need));
      __syncthreads();
      if (threadIdx.x == 0) s_offset += total;
      __syncthreads();
    }
  }
}

__global__ void k_mask_nm(const float* s, i64 rows, i64 d, int n, int m, std::uint8_t* mask) {
  const i64 groups = (d + m - 1) / m;
  GRID_STRIDE(p, rows * groups) {
    const i64 r = p / groups, g = (p % groups) * m;
    const i64 len = min(static_cast<i64>(m), d - g), c = min(static_cast<i64>(n), len);
    const float* sg = s + r * d + g;
    for (i64 a = 0; a < len; ++a) {
      i64 rank = 0;
      for (i64 b = 0; b < len; ++b) rank += (sg[b] < sg[a]) | ((sg[b] == sg[a]) & (b < a));
      mask[r * d + g + a] = rank >= c;
    }
  }
}

__global__ void k_apply_mask(float* w, const std::uint8_t* m, i64 n) { GRID_STRIDE(i, n) w[i] = m[i] ? w[i] : 0.0f; }

__global__ void k_obs_scores(const float* w, const float* u, const float* hdiag, i64 rows, i64 d, i64 col0, i64 width,
                             float* s) {
  GRID_STRIDE(p, rows * width) {
    const i64 r = p / width, j = p % width;
    const float uj = u[(col0 + j) * d + col0 + j];
    const float wv = w[r * d + col0 + j];
    s[p] = hdiag ? wv * wv / (uj * uj) + wv * wv * hdiag[col0 + j] : wv * wv / (uj * uj);
  }
}

// One warp per row. The row's block [col0, col0 + width) and its mask sit in shared memory; for
// each column i in order every lane computes the same error e = w_i / U_ii (0 when kept), lane 0
// stores it, and the lanes update the later columns j with w_j -= e * U_ij, the reference's order.
constexpr int kSweepWarps = 8;

__global__ void k_obs_sweep(float* w, const float* u, i64 rows, i64 d, i64 col0, i64 width, int pn, int pm,
                            std::uint8_t* mask, float* err, double* losses) {
  extern __shared__ unsigned char smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* sw = reinterpret_cast<float*>(smem) + warp * width;
  std::uint8_t* sk = reinterpret_cast<std::uint8_t*>(reinterpret_cast<float*>(smem) + kSweepWarps * width) + warp * width;
  const i64 r = blockIdx.x * static_cast<i64>(kSweepWarps) + warp;
  if (r >= rows) return;  // whole warps leave together; the kernel has no block-wide barrier
  float* wr = w + r * d + col0;
  std::uint8_t* mr = mask + r * d + col0;
  for (i64 j = lane; j < width; j += 32) {
    sw[j] = wr[j];
    sk[j] = pm > 0 ? 1 : mr[j];
  }
  __syncwarp();
  const float* ub = u + col0 * d + col0;  // the block's diagonal tile, row stride d
  float loss = 0.0f;
  for (i64 i = 0; i < width; ++i) {
    if (pm > 0 && i % pm == 0) {
      const i64 len = min(static_cast<i64>(pm), width - i), c = min(static_cast<i64>(pn), len);
      for (i64 a = lane; a < len; a += 32) {
        const float ua = ub[(i + a) * d + i + a];
        const float sa = sw[i + a] * sw[i + a] / (ua * ua);
        i64 rank = 0;
        for (i64 b = 0; b < len; ++b) {
          const float ubb = ub[(i + b) * d + i + b];
          const float sb = sw[i + b] * sw[i + b] / (ubb * ubb);
          rank += (sb < sa) || (b < a && sb == sa);
        }
        sk[i + a] = rank >= c;
      }
      __syncwarp();
    }
    const float wi = sw[i];
    const bool kept = sk[i] != 0;
    const float* ui = ub + i * d;
    const float e = kept ? 0.0f : wi / ui[i];
    __syncwarp();
    if (lane == 0) {
      sw[i] = kept ? wi : 0.0f;
      err[r * width + i] = e;
      loss += e * e;
    }
    for (i64 j = i + 1 + lane; j < width; j += 32) sw[j] -= e * ui[j];
    __syncwarp();
  }
  for (i64 j = lane; j < width; j += 32) {
    wr[j] = sw[j];
    if (pm > 0) mr[j] = sk[j];
  }
  if (lane == 0) losses[r] += static_cast<double>(loss) / 2;
}

}  // namespace

void hessian_diag(float* h, i64 d, std::uint8_t* dead, double* sum, long long* count) {
  k_hessian_diag<<<1, 1024>>>(h, d, dead, sum, count);
}
void add_diag(float* h, i64 d, float v) { k_add_diag<<<blocks_for(d), kThreads>>>(h, d, v); }
void zero_dead_columns_h(float* w, i64 rows, i64 d, const float* h) {
  k_zero_dead_h<<<blocks_for(rows * d), kThreads>>>(w, rows, d, h);
}
void zero_dead_columns(float* w, i64 rows, i64 d, const std::uint8_t* dead) {
  k_zero_dead<<<blocks_for(rows * d), kThreads>>>(w, rows, d, dead);
}
void all_finite_f32(const float* p, i64 n, int* ok) { k_all_finite<<<blocks_for(n), kThreads>>>(p, n, ok); }
void all_finite_f64(const double* p, i64 n, int* ok) { k_all_finite<<<blocks_for(n), kThreads>>>(p, n, ok); }
void prune_scores(const float* w, const float* col, float* scores, i64 rows, i64 d) {
  k_prune_scores<<<blocks_for(rows * d), kThreads>>>(w, col, scores, rows, d);
}
void key_histogram(const float* s, i64 n, int shift, int bits, std::uint32_t prefix, unsigned long long* hist) {
  cudaMemsetAsync(hist, 0, sizeof(unsigned long long) << bits);
  const i64 blocks = std::min<i64>(blocks_for(n), 4 * 132 * 4);  // enough to fill a GPU; fewer shared merges
  k_key_hist<<<static_cast<unsigned>(blocks), kThreads, sizeof(unsigned) << bits>>>(s, n, shift, bits, prefix, hist);
}
void count_equal_rows(const float* s, i64 rows, i64 width, float v, long long* counts) {
  k_count_equal<<<row_blocks(rows), kThreads>>>(s, rows, width, v, counts);
}
void mask_threshold(const float* s, i64 rows, i64 width, float v, long long take, const long long* first,
                    std::uint8_t* mask, i64 mask_cols, i64 col0) {
  k_mask_threshold<<<row_blocks(rows), kThreads>>>(s, rows, width, v, take, first, mask, mask_cols, col0);
}
void mask_rows_smallest(const float* s, i64 rows, i64 d, i64 k, std::uint8_t* mask) {
  k_rows_smallest<<<row_blocks(rows), kThreads>>>(s, rows, d, k, mask);
}
void mask_nm(const float* s, i64 rows, i64 d, int n, int m, std::uint8_t* mask) {
  k_mask_nm<<<blocks_for(rows * ((d + m - 1) / m)), kThreads>>>(s, rows, d, n, m, mask);
}
void apply_mask(float* w, const std::uint8_t* mask, i64 n) { k_apply_mask<<<blocks_for(n), kThreads>>>(w, mask, n); }
void obs_scores(const float* w, const float* hinv, const float* hdiag, i64 rows, i64 d, i64 col0, i64 width,
                float* scores) {
  k_obs_scores<<<blocks_for(rows * width), kThreads>>>(w, hinv, hdiag, rows, d, col0, width, scores);
}
void obs_sweep_block(float* w, const float* hinv, i64 rows, i64 d, i64 col0, i64 width, int prune_n, int prune_m,
                     std::uint8_t* mask, float* err, double* losses) {
  const std::size_t shared = static_cast<std::size_t>(width) * kSweepWarps * (sizeof(float) + 1);
  static std::size_t opted = 48 << 10;
  if (shared > opted) {
    cudaFuncSetAttribute(k_obs_sweep, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared));
    opted = shared;
  }
  const auto blocks = static_cast<unsigned>((rows + kSweepWarps - 1) / kSweepWarps);
  k_obs_sweep<<<blocks, kSweepWarps * 32, shared>>>(w, hinv, rows, d, col0, width, prune_n, prune_m, mask, err, losses);
}

}  // namespace scalpel::cuda
