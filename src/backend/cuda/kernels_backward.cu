// Kernels of LLM Surgeon on the GPU: the backward pass's transposed Jacobians of the norms, the
// activations, the causal softmax and the cross-entropy, as the CPU backend computes them
// (cpu_backward.cpp has the derivations), and the index gathers and scatters of the per-shot
// sub-problems. Row sums accumulate in double, one block per row, in a fixed order, so results
// repeat bit for bit.
#include <cuda_runtime.h>

#include <cmath>

#include "block_reduce.cuh"
#include "kernels.hpp"
#include "launch.cuh"

namespace scalpel::cuda {
namespace {

// dx = r·(ĝ - mean(ĝ) - x̂·mean(ĝ·x̂)), ĝ = dy·w, x̂ = (x - μ)·r. dx may alias dy: each thread reads
// dy[j] before it writes dx[j], after the block's sums.
__global__ void k_layer_norm_bw(const float* x, const float* w, float eps, const float* dy, float* dx, i64 n, i64 d) {
  for (i64 i = blockIdx.x; i < n; i += gridDim.x) {
    const float* r = x + i * d;
    const float* gy = dy + i * d;
    double s = 0;
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) s += r[j];
    const double mean = block_sum(s) / static_cast<double>(d);
    double v = 0;
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) v += (r[j] - mean) * (r[j] - mean);
    const double inv = 1.0 / sqrt(block_sum(v) / static_cast<double>(d) + static_cast<double>(eps));
    double mg = 0, mgx = 0;
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) {
      const double g = w ? static_cast<double>(gy[j]) * w[j] : static_cast<double>(gy[j]);
      mg += g;
      mgx += g * (r[j] - mean) * inv;
    }
    mg = block_sum(mg) / static_cast<double>(d);
    mgx = block_sum(mgx) / static_cast<double>(d);
    float* o = dx + i * d;
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) {
      const double g = w ? static_cast<double>(gy[j]) * w[j] : static_cast<double>(gy[j]);
      o[j] = static_cast<float>(inv * (g - mg - (r[j] - mean) * inv * mgx));
    }
  }
}

// dx = r·ĝ - x·r³·mean(ĝ·x), ĝ = dy·w, r = (mean(x²) + eps)^-½.
__global__ void k_rms_norm_bw(const float* x, const float* w, float eps, const float* dy, float* dx, i64 n, i64 d) {
  for (i64 i = blockIdx.x; i < n; i += gridDim.x) {
    const float* r = x + i * d;
    const float* gy = dy + i * d;
    double ss = 0, gx = 0;
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) {
      ss += static_cast<double>(r[j]) * r[j];
      gx += static_cast<double>(gy[j]) * w[j] * r[j];
    }
    ss = block_sum(ss);
    gx = block_sum(gx);
    const double inv = 1.0 / sqrt(ss / static_cast<double>(d) + static_cast<double>(eps));
    const double c = inv * inv * inv * gx / static_cast<double>(d);
    float* o = dx + i * d;
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) o[j] = static_cast<float>(inv * gy[j] * w[j] - c * r[j]);
  }
}

__global__ void k_relu_bw(const float* pre, float* dy, i64 n) {
  GRID_STRIDE(i, n) dy[i] = pre[i] > 0.0f ? dy[i] : 0.0f;
}

__global__ void k_gelu_bw(const float* pre, float* dy, i64 n) {
  const double c = 0.7978845608028654;  // sqrt(2 / pi)
  GRID_STRIDE(i, n) {
    const double v = pre[i], t = tanh(c * (v + 0.044715 * v * v * v));
    const double dg = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * v * v);
    dy[i] = static_cast<float>(dy[i] * dg);
  }
}

__global__ void k_silu_mul_bw(const float* g, const float* u, const float* d, float* dg, float* du, i64 n) {
  GRID_STRIDE(i, n) {
    const double gi = g[i], sig = 1.0 / (1.0 + exp(-gi)), di = d[i], ui = u[i];
    dg[i] = static_cast<float>(di * ui * sig * (1.0 + gi * (1.0 - sig)));
    du[i] = static_cast<float>(di * gi * sig);
  }
}

// Row i of every t x t matrix: dS = P ∘ (dP - Σ_j≤i P·dP), zero beyond the diagonal (the product
// dO·Vᵀ fills those entries, the masked softmax has no derivative there).
__global__ void k_softmax_bw(const float* p, float* dp, i64 rows, i64 t) {
  for (i64 g = blockIdx.x; g < rows; g += gridDim.x) {
    const i64 i = g % t;
    const float* pr = p + g * t;
    float* dr = dp + g * t;
    double dot = 0;
    for (i64 j = threadIdx.x; j <= i; j += blockDim.x) dot += static_cast<double>(pr[j]) * dr[j];
    const float c = static_cast<float>(block_sum(dot));
    for (i64 j = threadIdx.x; j < t; j += blockDim.x) dr[j] = j <= i ? pr[j] * (dr[j] - c) : 0.0f;
  }
}

// logits become scale·(softmax - onehot(target)); a row with target < 0 becomes 0 (loss 0).
__global__ void k_nll_bw(float* logits, const std::int32_t* targets, float scale, double* loss, i64 n, i64 v) {
  for (i64 i = blockIdx.x; i < n; i += gridDim.x) {
    float* r = logits + i * v;
    const std::int32_t t = targets[i];
    if (t < 0) {
      for (i64 j = threadIdx.x; j < v; j += blockDim.x) r[j] = 0.0f;
      if (threadIdx.x == 0) loss[i] = 0.0;
      continue;
    }
    const float zt = r[t];
    float m = -INFINITY;
    for (i64 j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, r[j]);
    m = block_max(m);
    double s = 0;
    for (i64 j = threadIdx.x; j < v; j += blockDim.x) {
      const float e = expf(r[j] - m);
      r[j] = e;
      s += e;
    }
    s = block_sum(s);
    if (threadIdx.x == 0) loss[i] = static_cast<double>(m) + log(s) - static_cast<double>(zt);
    const float f = static_cast<float>(static_cast<double>(scale) / s);
    for (i64 j = threadIdx.x; j < v; j += blockDim.x) r[j] = r[j] * f - (j == t ? scale : 0.0f);
  }
}

// a[i, j] = a[j, i] for i > j (row-major), float64.
__global__ void k_mirror_f64(double* a, i64 n) {
  GRID_STRIDE(p, n * n) {
    const i64 i = p / n, j = p % n;
    if (i > j) a[p] = a[j * n + i];
  }
}

__global__ void k_gather(const float* a, i64 lda, const i64* rows, i64 nr, const i64* cols, i64 nc, float* out,
                         bool transposed) {
  GRID_STRIDE(p, nr * nc) {
    const i64 i = p / nc, j = p % nc;
    const float v = a[rows[i] * lda + cols[j]];
    if (transposed) out[j * nr + i] = v;
    else out[p] = v;
  }
}
__global__ void k_scatter(const float* v, const i64* rows, i64 nr, const i64* cols, i64 nc, float* a, i64 lda) {
  GRID_STRIDE(p, nr * nc) a[rows[p / nc] * lda + cols[p % nc]] = v[p];
}
__global__ void k_gather_pairs(const float* a, i64 lda, const i64* i, const i64* j, i64 n, float* out) {
  GRID_STRIDE(k, n) out[k] = a[i[k] * lda + j[k]];
}
__global__ void k_kron_pairs(const float* g, i64 ldg, const float* a, i64 lda, const i64* i, const i64* j, i64 n,
                             float* out) {
  GRID_STRIDE(p, n * n) {
    const i64 x = p / n, y = p % n;
    out[p] = g[i[x] * ldg + i[y]] * a[j[x] * lda + j[y]];
  }
}

// One thread per column, the k's in order.
__global__ void k_rows_axpy(const float* a, const i64* src, const i64* dst, const float* coef, i64 n, i64 cols,
                            float* out) {
  GRID_STRIDE(c, cols) {
    for (i64 k = 0; k < n; ++k) out[dst[k] * cols + c] += coef[k] * a[src[k] * cols + c];
  }
}

}  // namespace

void layer_norm_backward(const float* x, const float* w, float eps, const float* dy, float* dx, i64 n, i64 d) {
  k_layer_norm_bw<<<row_blocks(n), kThreads>>>(x, w, eps, dy, dx, n, d);
}
void rms_norm_backward(const float* x, const float* w, float eps, const float* dy, float* dx, i64 n, i64 d) {
  k_rms_norm_bw<<<row_blocks(n), kThreads>>>(x, w, eps, dy, dx, n, d);
}
void relu_backward(const float* pre, float* dy, i64 n) { k_relu_bw<<<blocks_for(n), kThreads>>>(pre, dy, n); }
void gelu_backward(const float* pre, float* dy, i64 n) { k_gelu_bw<<<blocks_for(n), kThreads>>>(pre, dy, n); }
void silu_mul_backward(const float* g, const float* u, const float* dout, float* dg, float* du, i64 n) {
  k_silu_mul_bw<<<blocks_for(n), kThreads>>>(g, u, dout, dg, du, n);
}
void causal_softmax_backward(const float* p, float* dp, i64 matrices, i64 t) {
  k_softmax_bw<<<row_blocks(matrices * t), kThreads>>>(p, dp, matrices * t, t);
}
void nll_backward_rows(float* logits, const std::int32_t* targets, float scale, double* loss, i64 n, i64 v) {
  k_nll_bw<<<row_blocks(n), kThreads>>>(logits, targets, scale, loss, n, v);
}
void fill_lower_from_upper_f64(double* a, i64 n) { k_mirror_f64<<<blocks_for(n * n), kThreads>>>(a, n); }

void gather(const float* a, i64 lda, const i64* rows, i64 nr, const i64* cols, i64 nc, float* out, bool transposed) {
  k_gather<<<blocks_for(nr * nc), kThreads>>>(a, lda, rows, nr, cols, nc, out, transposed);
}
void scatter(const float* v, const i64* rows, i64 nr, const i64* cols, i64 nc, float* a, i64 lda) {
  k_scatter<<<blocks_for(nr * nc), kThreads>>>(v, rows, nr, cols, nc, a, lda);
}
void gather_pairs(const float* a, i64 lda, const i64* i, const i64* j, i64 n, float* out) {
  k_gather_pairs<<<blocks_for(n), kThreads>>>(a, lda, i, j, n, out);
}
void rows_axpy(const float* a, const i64* src, const i64* dst, const float* coef, i64 n, i64 cols, float* out) {
  k_rows_axpy<<<blocks_for(cols), kThreads>>>(a, src, dst, coef, n, cols, out);
}
void kron_pairs(const float* g, i64 ldg, const float* a, i64 lda, const i64* i, const i64* j, i64 n, float* out) {
  k_kron_pairs<<<blocks_for(n * n), kThreads>>>(g, ldg, a, lda, i, j, n, out);
}

}  // namespace scalpel::cuda
