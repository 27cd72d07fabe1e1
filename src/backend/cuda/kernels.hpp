// The CUDA backend's own kernels (elementwise, row-wise, selection, the OBS sweep), declared with
// plain pointers so that only the .cu files need nvcc. Every launcher enqueues on the legacy
// default stream, as cuBLAS, cuSOLVER and NCCL do in this backend, so ops run in issue order; the
// caller checks cudaGetLastError() after a launch. Matrices are row-major, sizes are elements.
#pragma once
#include <cstdint>

namespace scalpel::cuda {

using i64 = std::int64_t;

// Conversions and fills.
void f16_to_f32(const std::uint16_t* in, float* out, i64 n);
void bf16_to_f32(const std::uint16_t* in, float* out, i64 n);
void f32_to_f16(const float* in, std::uint16_t* out, i64 n);   // round to nearest even
void f32_to_bf16(const float* in, std::uint16_t* out, i64 n);
void broadcast_rows(const float* row, float* out, i64 n, i64 cols);  // out[i, :] = row
void broadcast_rows_u16(const std::uint16_t* row, std::uint16_t* out, i64 n, i64 cols);  // 2-byte values
void accumulate_f64(const float* a, double* acc, i64 n);
void f64_to_f32(const double* acc, double scale, float* out, i64 n);
void accumulate_upper_f64(const float* a, double* acc, i64 d);
void upper_f64_to_f32(const double* acc, double scale, float* out, i64 d);  // upper triangle only

// Triangles of a square matrix.
void mirror_upper_to_lower(float* a, i64 n);  // a[i, j] = a[j, i] for i > j
void mirror_lower_to_upper(float* a, i64 n);
void zero_strict_lower(float* a, i64 n);
void zero_strict_upper(float* a, i64 n);
// Flat reversal in place (a -> J a J); with keep_upper, entries that land below the diagonal are
// zeroed (turns the reversed lower factor into the upper one).
void reverse_flat(float* a, i64 n, bool keep_upper);

// Row-wise.
void layer_norm(const float* x, const float* w, const float* b, float eps, float* out, i64 n, i64 d);
void rms_norm(const float* x, const float* w, float eps, float* out, i64 n, i64 d);
void causal_softmax(float* p, i64 matrices, i64 t);  // each t x t matrix, row i over columns <= i
// is_argmax may be null; else 1 where the target is the first index of the row's maximum.
void nll_rows(const float* logits, const std::int32_t* targets, double* out, std::uint8_t* is_argmax, i64 n, i64 v);
void rowwise_dot(const float* a, const float* b, double* out, i64 rows, i64 d);
void col_sq_norms(const float* x, float alpha, float beta, float* out, double* partial, i64 n, i64 d, i64 chunks);

// Elementwise.
void add(float* y, const float* x, i64 n);
void scale(float* y, float alpha, i64 n);
void relu(float* y, i64 n);
void gelu(float* y, i64 n);
void silu_mul(const float* g, const float* u, float* out, i64 n);
void rope(float* x, i64 rows, i64 seqlen, i64 heads, i64 head_dim, const float* cos, const float* sin);
void embedding(const std::int32_t* ids, const float* table, float* out, i64 n, i64 d);

// Backward (LLM Surgeon's gradients; kernels_backward.cu). dx may alias dy in the norms.
void layer_norm_backward(const float* x, const float* w, float eps, const float* dy, float* dx, i64 n, i64 d);
void rms_norm_backward(const float* x, const float* w, float eps, const float* dy, float* dx, i64 n, i64 d);
void relu_backward(const float* pre, float* dy, i64 n);
void gelu_backward(const float* pre, float* dy, i64 n);
void silu_mul_backward(const float* g, const float* u, const float* dout, float* dg, float* du, i64 n);
// dp (dO·Vᵀ per t x t matrix) becomes dS = P ∘ (dP - rowsum(P ∘ dP)) on the causal half, 0 above it.
void causal_softmax_backward(const float* p, float* dp, i64 matrices, i64 t);
void nll_backward_rows(float* logits, const std::int32_t* targets, float scale, double* loss, i64 n, i64 v);
void fill_lower_from_upper_f64(double* a, i64 n);  // a[i, j] = a[j, i] for i > j
// LLM Surgeon's index ops (Backend::gather and the rest), indices on the device.
void gather(const float* a, i64 lda, const i64* rows, i64 nr, const i64* cols, i64 nc, float* out, bool transposed);
void scatter(const float* v, const i64* rows, i64 nr, const i64* cols, i64 nc, float* a, i64 lda);
void gather_pairs(const float* a, i64 lda, const i64* i, const i64* j, i64 n, float* out);
void kron_pairs(const float* g, i64 ldg, const float* a, i64 lda, const i64* i, const i64* j, i64 n, float* out);
void rows_axpy(const float* a, const i64* src, const i64* dst, const float* coef, i64 n, i64 cols, float* out);

// Pruning.
// Dead diagonal entries (== 0) become 1 and are flagged; writes sum of the diagonal (after that)
// and the dead count into sums[0] and counts[0].
void hessian_diag(float* h, i64 d, std::uint8_t* dead, double* sum, long long* count);
void add_diag(float* h, i64 d, float v);
void zero_dead_columns(float* w, i64 rows, i64 d, const std::uint8_t* dead);
void zero_dead_columns_h(float* w, i64 rows, i64 d, const float* h);  // where H_jj == 0
void all_finite_f32(const float* p, i64 n, int* ok);
void all_finite_f64(const double* p, i64 n, int* ok);
void prune_scores(const float* w, const float* col, float* scores, i64 rows, i64 d);
// Counts of order-key digits among elements whose key matches `prefix` on the bits above `shift +
// bits`: hist[digit] for digit = (key >> shift) & (2^bits - 1). hist is zeroed here.
void key_histogram(const float* s, i64 n, int shift, int bits, std::uint32_t prefix, unsigned long long* hist);
void count_equal_rows(const float* s, i64 rows, i64 width, float v, long long* counts);
// mask[r, col0 + j] = 0 where the rule prunes s[r, j]: < v, plus == v while the row-major tie count
// (first[r] ties before row r) is below take (take >= rows * width: every tie; first may be null
// then, or when take <= 0).
void mask_threshold(const float* s, i64 rows, i64 width, float v, long long take, const long long* first,
                    std::uint8_t* mask, i64 mask_cols, i64 col0);
void mask_rows_smallest(const float* s, i64 rows, i64 d, i64 k, std::uint8_t* mask);
void mask_nm(const float* s, i64 rows, i64 d, int n, int m, std::uint8_t* mask);
void apply_mask(float* w, const std::uint8_t* mask, i64 n);
void obs_scores(const float* w, const float* hinv, const float* hdiag, i64 rows, i64 d, i64 col0, i64 width,
                float* scores);
void obs_sweep_block(float* w, const float* hinv, i64 rows, i64 d, i64 col0, i64 width, int prune_n, int prune_m,
                     std::uint8_t* mask, float* err, double* losses);

}  // namespace scalpel::cuda
