// Kernels for the forward pass and the statistics: conversions, float64 sums, triangles,
// normalisations, softmax, NLL and the elementwise activations. Row reductions accumulate in
// double, as the cpu backend does, so both sit within a few fp32 ulps of a float64 reference.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "block_reduce.cuh"
#include "kernels.hpp"
#include "launch.cuh"

namespace scalpel::cuda {
namespace {

__global__ void k_f16(const std::uint16_t* in, float* out, i64 n) {
  GRID_STRIDE(i, n) out[i] = __half2float(__ushort_as_half(in[i]));
}
__global__ void k_bf16(const std::uint16_t* in, float* out, i64 n) {
  GRID_STRIDE(i, n) out[i] = __bfloat162float(__ushort_as_bfloat16(in[i]));
}
__global__ void k_to_f16(const float* in, std::uint16_t* out, i64 n) {
  GRID_STRIDE(i, n) out[i] = __half_as_ushort(__float2half_rn(in[i]));
}
__global__ void k_to_bf16(const float* in, std::uint16_t* out, i64 n) {
  GRID_STRIDE(i, n) out[i] = __bfloat16_as_ushort(__float2bfloat16_rn(in[i]));
}
__global__ void k_broadcast_rows(const float* row, float* out, i64 n, i64 cols) {
  GRID_STRIDE(i, n * cols) out[i] = row[i % cols];
}
__global__ void k_broadcast_rows_u16(const std::uint16_t* row, std::uint16_t* out, i64 n, i64 cols) {
  GRID_STRIDE(i, n * cols) out[i] = row[i % cols];
}
__global__ void k_acc_f64(const float* a, double* acc, i64 n) {
  GRID_STRIDE(i, n) acc[i] += static_cast<double>(a[i]);
}
__global__ void k_f64_to_f32(const double* acc, double scale, float* out, i64 n) {
  GRID_STRIDE(i, n) out[i] = static_cast<float>(acc[i] * scale);
}
// One block per row i of the packed upper triangle (row i holds columns i..d-1).
__global__ void k_acc_upper(const float* a, double* acc, i64 d) {
  for (i64 i = blockIdx.x; i < d; i += gridDim.x) {
    double* row = acc + (i * d - i * (i - 1) / 2);
    const float* src = a + i * d + i;
    for (i64 j = threadIdx.x; j < d - i; j += blockDim.x) row[j] += static_cast<double>(src[j]);
  }
}
__global__ void k_upper_to_f32(const double* acc, double scale, float* out, i64 d) {
  for (i64 i = blockIdx.x; i < d; i += gridDim.x) {
    const double* row = acc + (i * d - i * (i - 1) / 2);
    float* dst = out + i * d + i;
    for (i64 j = threadIdx.x; j < d - i; j += blockDim.x) dst[j] = static_cast<float>(row[j] * scale);
  }
}

// 32 x 32 tiles below the diagonal (bi >= bj): the lower tile takes the transposed upper one (or
// the other way), staged through shared memory so both reads and writes are coalesced.
template <bool kUpperToLower>
__global__ void k_mirror(float* a, i64 n) {
  __shared__ float tile[32][33];
  const i64 bi = blockIdx.y, bj = blockIdx.x;
  if (bj > bi) return;
  const int tx = threadIdx.x, ty = threadIdx.y;  // 32 x 8
  // Source tile: rows bj*32.., cols bi*32.. (upper) when filling the lower tile (bi, bj).
  const i64 sr0 = kUpperToLower ? bj * 32 : bi * 32, sc0 = kUpperToLower ? bi * 32 : bj * 32;
  for (int r = ty; r < 32; r += 8) {
    const i64 row = sr0 + r, col = sc0 + tx;
    if (row < n && col < n) tile[r][tx] = a[row * n + col];
  }
  __syncthreads();
  for (int r = ty; r < 32; r += 8) {
    const i64 row = sc0 + r, col = sr0 + tx;  // destination = transpose
    const bool strict = kUpperToLower ? row > col : row < col;
    if (row < n && col < n && strict) a[row * n + col] = tile[tx][r];
  }
}

__global__ void k_zero_tri(float* a, i64 n, bool lower) {
  GRID_STRIDE(p, n * n) {
    const i64 i = p / n, j = p % n;
    if (lower ? j < i : j > i) a[p] = 0.0f;
  }
}

// Swaps p and n²-1-p; with keep_upper an element that ends up at (i, j) with i > j becomes 0.
__global__ void k_reverse(float* a, i64 n, bool keep_upper) {
  const i64 total = n * n, half = (total + 1) / 2;
  GRID_STRIDE(p, half) {
    const i64 q = total - 1 - p;
    const float vp = a[p], vq = a[q];
    const i64 ip = p / n, jp = p % n;  // p's (i, j); q is (n-1-i, n-1-j)
    // p receives vq; it sits in the upper triangle iff ip <= jp, and then q (the mirror) iff ip >= jp.
    a[p] = (!keep_upper || ip <= jp) ? vq : 0.0f;
    if (q != p) a[q] = (!keep_upper || ip >= jp) ? vp : 0.0f;
  }
}

__global__ void k_layer_norm(const float* x, const float* w, const float* b, float eps, float* out, i64 n, i64 d) {
  for (i64 i = blockIdx.x; i < n; i += gridDim.x) {
    const float* r = x + i * d;
    double s = 0;
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) s += r[j];
    const double mean = block_sum(s) / static_cast<double>(d);
    double v = 0;
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) {
      const double c = r[j] - mean;
      v += c * c;
    }
    const double var = block_sum(v) / static_cast<double>(d);
    const double inv = 1.0 / sqrt(var + static_cast<double>(eps));
    float* o = out + i * d;
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) {
      double y = (r[j] - mean) * inv;
      if (w) y *= w[j];
      if (b) y += b[j];
      o[j] = static_cast<float>(y);
    }
  }
}

__global__ void k_rms_norm(const float* x, const float* w, float eps, float* out, i64 n, i64 d) {
  for (i64 i = blockIdx.x; i < n; i += gridDim.x) {
    const float* r = x + i * d;
    double s = 0;
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) s += static_cast<double>(r[j]) * r[j];
    const double inv = 1.0 / sqrt(block_sum(s) / static_cast<double>(d) + static_cast<double>(eps));
    float* o = out + i * d;
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) o[j] = w[j] * static_cast<float>(r[j] * inv);
  }
}

// One block per row of every t x t matrix: row i keeps columns 0..i (exp(x - max) / sum), the rest
// become exact zeros, as the masked softmax of the reference gives.
__global__ void k_causal_softmax(float* p, i64 rows, i64 t) {
  for (i64 g = blockIdx.x; g < rows; g += gridDim.x) {
    const i64 i = g % t;
    float* r = p + g * t;
    float m = -INFINITY;
    for (i64 j = threadIdx.x; j <= i; j += blockDim.x) m = fmaxf(m, r[j]);
    m = block_max(m);
    float s = 0;
    for (i64 j = threadIdx.x; j <= i; j += blockDim.x) {
      const float e = expf(r[j] - m);
      r[j] = e;
      s += e;
    }
    const float inv = 1.0f / block_sum_f(s);
    for (i64 j = threadIdx.x; j < t; j += blockDim.x) r[j] = j <= i ? r[j] * inv : 0.0f;
  }
}

__global__ void k_nll(const float* logits, const std::int32_t* targets, double* out, std::uint8_t* is_argmax,
                      i64 n, i64 v) {
  for (i64 i = blockIdx.x; i < n; i += gridDim.x) {
    const float* r = logits + i * v;
    float m = -INFINITY;
    for (i64 j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, r[j]);
    m = block_max(m);
    double s = 0;
    for (i64 j = threadIdx.x; j < v; j += blockDim.x) s += static_cast<double>(expf(r[j] - m));
    s = block_sum(s);
    if (is_argmax) {
      // The first index holding the maximum (torch.argmax's tie rule), as the minimum such index
      // (a float holds every index exactly: vocabularies are far below 2^24).
      float first = static_cast<float>(v);
      for (i64 j = threadIdx.x; j < v; j += blockDim.x)
        if (r[j] == m) first = fminf(first, static_cast<float>(j));
      first = -block_max(-first);
      if (threadIdx.x == 0) is_argmax[i] = static_cast<i64>(first) == targets[i] ? 1 : 0;
    }
    if (threadIdx.x == 0) out[i] = (static_cast<double>(m) + log(s)) - static_cast<double>(r[targets[i]]);
  }
}

__global__ void k_rowwise_dot(const float* a, const float* b, double* out, i64 rows, i64 d) {
  for (i64 i = blockIdx.x; i < rows; i += gridDim.x) {
    double s = 0;
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) s += static_cast<double>(a[i * d + j]) * b[i * d + j];
    s = block_sum(s);
    if (threadIdx.x == 0) out[i] = s;
  }
}

// Column sums of squares in two deterministic steps: chunk c of the rows into partial[c, :], then
// the chunks in order.
__global__ void k_colsq_partial(const float* x, double* partial, i64 n, i64 d, i64 rows_per_chunk) {
  const i64 j = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x;
  const i64 c = blockIdx.y;
  if (j >= d) return;
  const i64 r0 = c * rows_per_chunk, r1 = min(n, r0 + rows_per_chunk);
  double s = 0;
  for (i64 r = r0; r < r1; ++r) {
    const double v = x[r * d + j];
    s += v * v;
  }
  partial[c * d + j] = s;
}
__global__ void k_colsq_final(const double* partial, float alpha, float beta, float* out, i64 d, i64 chunks) {
  GRID_STRIDE(j, d) {
    double s = 0;
    for (i64 c = 0; c < chunks; ++c) s += partial[c * d + j];
    out[j] = static_cast<float>((beta == 0.0f ? 0.0 : static_cast<double>(beta) * out[j]) + static_cast<double>(alpha) * s);
  }
}

__global__ void k_add(float* y, const float* x, i64 n) { GRID_STRIDE(i, n) y[i] += x[i]; }
__global__ void k_scale(float* y, float a, i64 n) { GRID_STRIDE(i, n) y[i] *= a; }
// NaN stays NaN, as torch.relu (a NaN weight is not hidden by the activation).
__global__ void k_relu(float* y, i64 n) { GRID_STRIDE(i, n) y[i] = y[i] > 0.0f || isnan(y[i]) ? y[i] : 0.0f; }
__global__ void k_gelu(float* y, i64 n) {
  const double c = 0.7978845608028654;  // sqrt(2 / pi)
  GRID_STRIDE(i, n) {
    const double v = y[i];
    y[i] = static_cast<float>(0.5 * v * (1.0 + tanh(c * (v + 0.044715 * v * v * v))));
  }
}
__global__ void k_silu_mul(const float* g, const float* u, float* o, i64 n) {
  GRID_STRIDE(i, n) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}
__global__ void k_rope(float* x, i64 rows, i64 seqlen, i64 heads, i64 hd, const float* c, const float* s) {
  const i64 half = hd / 2;
  GRID_STRIDE(p, rows * heads * half) {
    const i64 i = p % half, h = (p / half) % heads, r = p / (half * heads);
    const i64 pos = r % seqlen;
    float* v = x + r * heads * hd + h * hd;
    const float a = v[i], b = v[i + half];
    v[i] = a * c[pos * hd + i] - b * s[pos * hd + i];
    v[i + half] = b * c[pos * hd + i + half] + a * s[pos * hd + i + half];
  }
}
__global__ void k_embedding(const std::int32_t* ids, const float* table, float* out, i64 n, i64 d) {
  GRID_STRIDE(p, n * d) out[p] = table[static_cast<i64>(ids[p / d]) * d + p % d];
}


}  // namespace

void f16_to_f32(const std::uint16_t* in, float* out, i64 n) { k_f16<<<blocks_for(n), kThreads>>>(in, out, n); }
void bf16_to_f32(const std::uint16_t* in, float* out, i64 n) { k_bf16<<<blocks_for(n), kThreads>>>(in, out, n); }
void f32_to_f16(const float* in, std::uint16_t* out, i64 n) { k_to_f16<<<blocks_for(n), kThreads>>>(in, out, n); }
void f32_to_bf16(const float* in, std::uint16_t* out, i64 n) { k_to_bf16<<<blocks_for(n), kThreads>>>(in, out, n); }
void broadcast_rows(const float* row, float* out, i64 n, i64 cols) {
  k_broadcast_rows<<<blocks_for(n * cols), kThreads>>>(row, out, n, cols);
}
void broadcast_rows_u16(const std::uint16_t* row, std::uint16_t* out, i64 n, i64 cols) {
  k_broadcast_rows_u16<<<blocks_for(n * cols), kThreads>>>(row, out, n, cols);
}
void accumulate_f64(const float* a, double* acc, i64 n) { k_acc_f64<<<blocks_for(n), kThreads>>>(a, acc, n); }
void f64_to_f32(const double* acc, double scale, float* out, i64 n) {
  k_f64_to_f32<<<blocks_for(n), kThreads>>>(acc, scale, out, n);
}
void accumulate_upper_f64(const float* a, double* acc, i64 d) { k_acc_upper<<<row_blocks(d), kThreads>>>(a, acc, d); }
void upper_f64_to_f32(const double* acc, double scale, float* out, i64 d) {
  k_upper_to_f32<<<row_blocks(d), kThreads>>>(acc, scale, out, d);
}
void mirror_upper_to_lower(float* a, i64 n) {
  const unsigned t = static_cast<unsigned>((n + 31) / 32);
  k_mirror<true><<<dim3(t, t), dim3(32, 8)>>>(a, n);
}
void mirror_lower_to_upper(float* a, i64 n) {
  const unsigned t = static_cast<unsigned>((n + 31) / 32);
  k_mirror<false><<<dim3(t, t), dim3(32, 8)>>>(a, n);
}
void zero_strict_lower(float* a, i64 n) { k_zero_tri<<<blocks_for(n * n), kThreads>>>(a, n, true); }
void zero_strict_upper(float* a, i64 n) { k_zero_tri<<<blocks_for(n * n), kThreads>>>(a, n, false); }
void reverse_flat(float* a, i64 n, bool keep_upper) {
  k_reverse<<<blocks_for((n * n + 1) / 2), kThreads>>>(a, n, keep_upper);
}
void layer_norm(const float* x, const float* w, const float* b, float eps, float* out, i64 n, i64 d) {
  k_layer_norm<<<row_blocks(n), kThreads>>>(x, w, b, eps, out, n, d);
}
void rms_norm(const float* x, const float* w, float eps, float* out, i64 n, i64 d) {
  k_rms_norm<<<row_blocks(n), kThreads>>>(x, w, eps, out, n, d);
}
void causal_softmax(float* p, i64 matrices, i64 t) { k_causal_softmax<<<row_blocks(matrices * t), kThreads>>>(p, matrices * t, t); }
void nll_rows(const float* logits, const std::int32_t* targets, double* out, std::uint8_t* is_argmax, i64 n, i64 v) {
  k_nll<<<row_blocks(n), kThreads>>>(logits, targets, out, is_argmax, n, v);
}
void rowwise_dot(const float* a, const float* b, double* out, i64 rows, i64 d) {
  k_rowwise_dot<<<row_blocks(rows), kThreads>>>(a, b, out, rows, d);
}
void col_sq_norms(const float* x, float alpha, float beta, float* out, double* partial, i64 n, i64 d, i64 chunks) {
  const i64 per = (n + chunks - 1) / chunks;
  k_colsq_partial<<<dim3(static_cast<unsigned>((d + kThreads - 1) / kThreads), static_cast<unsigned>(chunks)), kThreads>>>(
      x, partial, n, d, per);
  k_colsq_final<<<blocks_for(d), kThreads>>>(partial, alpha, beta, out, d, chunks);
}
void add(float* y, const float* x, i64 n) { k_add<<<blocks_for(n), kThreads>>>(y, x, n); }
void scale(float* y, float alpha, i64 n) { k_scale<<<blocks_for(n), kThreads>>>(y, alpha, n); }
void relu(float* y, i64 n) { k_relu<<<blocks_for(n), kThreads>>>(y, n); }
void gelu(float* y, i64 n) { k_gelu<<<blocks_for(n), kThreads>>>(y, n); }
void silu_mul(const float* g, const float* u, float* out, i64 n) { k_silu_mul<<<blocks_for(n), kThreads>>>(g, u, out, n); }
void rope(float* x, i64 rows, i64 seqlen, i64 heads, i64 head_dim, const float* cos, const float* sin) {
  k_rope<<<blocks_for(rows * heads * head_dim / 2), kThreads>>>(x, rows, seqlen, heads, head_dim, cos, sin);
}
void embedding(const std::int32_t* ids, const float* table, float* out, i64 n, i64 d) {
  k_embedding<<<blocks_for(n * d), kThreads>>>(ids, table, out, n, d);
}

}  // namespace scalpel::cuda
