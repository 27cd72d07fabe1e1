// The Backend interface: every numerical kernel the model and the pruners use, on tensors that
// live on the backend's device. `cpu` (OpenBLAS + LAPACKE + OpenMP) is always built; a `cuda`
// backend (cuBLAS, cuSOLVER, kernels) fills the same table when the toolkit is found. Ops marked
// (optional) may throw "not supported" on a backend that lacks them.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "scalpel/core/tensor.hpp"

namespace scalpel {

enum class Trans : std::uint8_t { no, yes };

// Attention geometry for a batch of `batch` sequences of `seqlen` tokens laid out row-major as
// [batch * seqlen, heads * head_dim] (q) and [batch * seqlen, kv_heads * head_dim] (k, v).
struct AttentionShape {
  std::int64_t batch = 1, seqlen = 0, heads = 0, kv_heads = 0, head_dim = 0;
  float scale = 1.0f;  // applied to q·k (OPT folds it into q beforehand and passes 1)
};

// The k smallest scores of a tensor as a rule a row slice can apply on its own: prune every score
// < value, and the first `take_equal` scores == value in row-major order (a count at least the
// number of ties, such as INT64_MAX, takes them all). Across ranks (rows split), `value` is a
// global selection and each rank gets its share of the ties.
struct SelectThreshold {
  float value = 0.0f;
  std::int64_t take_equal = 0;
};

// A rectangle of a 2-D row-major tensor: rows [r0, r0 + rows), columns [c0, c0 + cols).
struct Block {
  std::int64_t r0 = 0, c0 = 0, rows = 0, cols = 0;
};

// What hessian_prepare did: the damping added to the diagonal, and how many inputs were dead.
struct HessianPrep {
  double damp = 0.0;
  std::int64_t dead = 0;
};

// How make_backend sets a backend up. `local_rank` picks the GPU (local_rank % visible devices:
// one rank per GPU); TF32 lets cuBLAS round fp32 GEMM inputs to 10-bit mantissas on tensor cores
// (about 8x the fp32 rate on an A100/H100), off by default as in the reference, separately for
// the forward's GEMMs and the Hessian's SYRK. The cpu backend ignores all but `threads`.
struct BackendOptions {
  int threads = 0;
  int local_rank = 0;
  bool tf32_forward = false;
  bool tf32_hessian = false;
};

// Copies host tensors to a backend's device from a background thread, so that the reads and
// the copies of the next layer's weights overlap the current layer's work (Model::prefetch). On a
// GPU the bytes go through pinned staging buffers on a copy stream of their own; on the cpu
// backend the "copy" is the read itself. One batch at a time (calls from several threads wait for
// each other); the backend must outlive it.
class Uploader {
 public:
  virtual ~Uploader() = default;
  // Copies of `host` (dtypes and shapes unchanged) on the device, complete when this returns.
  virtual std::vector<Tensor> upload(const std::vector<Tensor>& host) = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual Device device() const = 0;

  // Memory. upload() turns a host tensor of any float dtype into an fp32 tensor on the device
  // (integer and U8 tensors, such as masks, keep their dtype; an f16/bf16 tensor already on the
  // device is widened there); download() brings a device tensor to the host, dtype unchanged.
  virtual Tensor empty(const Shape& shape, DType dtype = DType::f32) = 0;
  virtual Tensor zeros(const Shape& shape, DType dtype = DType::f32) = 0;
  virtual Tensor upload(const Tensor& host) = 0;
  virtual Tensor download(const Tensor& t) = 0;
  // A device copy of a host tensor with its dtype unchanged (f64 sums, ids).
  virtual Tensor upload_exact(const Tensor& host) = 0;
  virtual void copy(const Tensor& src, Tensor& dst) = 0;
  // dst = src rounded (or widened) to dst's dtype, both on the device, of f32, f16 or bf16, same
  // numel; round to nearest even, as torch's .to(dtype).
  virtual void convert(const Tensor& src, Tensor& dst) = 0;
  // An Uploader for this backend (the default: host copies, for a backend whose device is the host).
  virtual std::shared_ptr<Uploader> make_uploader();
  // Waits until every op enqueued so far has finished (a no-op on a synchronous backend).
  virtual void synchronize() {}
  // Bytes of the device's own memory (a GPU's), 0 for the host's.
  virtual std::int64_t memory_bytes() const { return 0; }

  // Float64 sums (the summed statistics): acc += a elementwise (a f32, acc f64, same numel), and
  // out = float(acc * scale).
  virtual void accumulate_f64(const Tensor& a, Tensor& acc) = 0;
  virtual void f64_to_f32(const Tensor& acc, double scale, Tensor& out) = 0;
  // The same for a symmetric a [d, d] whose upper triangle is summed into acc, packed row by row
  // (d(d+1)/2 f64: row i holds a[i, i..d)); out [d, d] receives both triangles.
  virtual void accumulate_upper_f64(const Tensor& a, Tensor& acc) = 0;
  virtual void upper_f64_to_symmetric(const Tensor& acc, double scale, Tensor& out) = 0;

  // ---- The forward. Every op below takes fp32 tensors; those marked [lp] also take the forward's
  // low-precision activations (f16 or bf16, one dtype per call, weights in that dtype or fp32),
  // with the reference's precision model (a torch forward in the checkpoint's dtype): products of
  // 2-byte inputs summed in fp32 (tensor cores on a GPU), every other op computed in fp32 from
  // its widened inputs, and each output rounded once to its tensor's dtype. The cpu backend
  // computes the same roundings (slowly), so it is the GPU's reference. ----

  // C = alpha * op(A) * op(B) + beta * C, all fp32 2-D.
  virtual void gemm(Trans ta, Trans tb, float alpha, const Tensor& a, const Tensor& b, float beta,
                    Tensor& c) = 0;
  // y = x * W^T (+ bias): x [n, in], W [out, in] (PyTorch layout), y [n, out]. [lp] x, W, bias
  // and y in one dtype: the bias is added to the fp32 sum before its rounding (torch's addmm).
  virtual void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) = 0;
  // H = alpha * X^T X + beta * H for X [n, d], H [d, d]; both triangles are filled. [lp] X (H
  // stays fp32: the products of 2-byte values are exact in fp32, so H is the reference's
  // x.float() Hessian up to summation order).
  virtual void syrk(float alpha, const Tensor& x, float beta, Tensor& h) = 0;

  // Row-wise normalisations over the last dim of x [n, d] (out may alias x). [lp]
  virtual void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, Tensor& out) = 0;
  virtual void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) = 0;

  // Elementwise. [lp]
  virtual void add(Tensor& y, const Tensor& x) = 0;  // y += x
  virtual void scale(Tensor& y, float alpha) = 0;    // y *= alpha
  virtual void relu(Tensor& y) = 0;
  virtual void gelu(Tensor& y) = 0;                  // tanh approximation ("gelu_new")
  virtual void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) = 0;  // silu(gate) * up

  // Rotary embedding (HF rotate_half convention) in place on x [batch*seqlen, heads*head_dim],
  // positions 0..seqlen-1 in every sequence; cos/sin tables [seqlen, head_dim] fp32. [lp] x
  virtual void rope(Tensor& x, std::int64_t seqlen, std::int64_t heads, std::int64_t head_dim,
                    const Tensor& cos, const Tensor& sin) = 0;
  // Causal softmax attention; out has q's shape. kv heads are shared by heads/kv_heads query
  // heads (GQA). probs, if given ([batch, heads, seqlen, seqlen]), receives the attention weights
  // (kept for a backward pass). [lp] q, k, v and out, without probs: the scores are summed in
  // fp32, the softmax is computed in fp32 and rounded to the dtype before P·V (HF's upcast softmax).
  virtual void attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s,
                         Tensor& out, Tensor* probs = nullptr) = 0;

  // out[i, :] = table[ids[i], :] (table [vocab, d]). [lp] table and out (any float dtypes).
  virtual void embedding(std::span<const std::int32_t> ids, const Tensor& table, Tensor& out) = 0;
  // Negative log-likelihood of targets under softmax(logits) per row, in float64, logits [n, V].
  // is_argmax (optional, n entries): 1 where the target is the row's argmax, the first index of
  // the maximum as torch.argmax picks it (the zero-shot tasks' greedy check), else 0.
  virtual void nll(const Tensor& logits, std::span<const std::int32_t> targets, std::span<double> out,
                   std::span<std::uint8_t> is_argmax = {}) = 0;

  // ---- Backward (LLM Surgeon's gradients; optional). dy is the gradient of the loss with respect
  // to an op's output; each writes the gradient with respect to its input. Weight gradients are
  // never formed (the curvature needs only the gradients at the linears' outputs). ----

  // dx for out = layer_norm(x, w, b) (w may be null); dx may alias dy.
  virtual void layer_norm_backward(const Tensor& x, const Tensor* w, float eps, const Tensor& dy, Tensor& dx);
  // dx for out = rms_norm(x, w); dx may alias dy.
  virtual void rms_norm_backward(const Tensor& x, const Tensor& w, float eps, const Tensor& dy, Tensor& dx);
  // dy *= relu'(pre) or gelu'(pre) (tanh approximation), pre the activation's input.
  virtual void relu_backward(const Tensor& pre, Tensor& dy);
  virtual void gelu_backward(const Tensor& pre, Tensor& dy);
  // For out = silu(gate) * up: dgate and dup from dout.
  virtual void silu_mul_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor& dgate,
                                 Tensor& dup);
  // For attention(q, k, v, s, out, probs): dq, dk, dv from dout and the probs it kept (GQA: a kv
  // head's gradient sums over the query heads sharing it).
  virtual void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs,
                                  const Tensor& dout, const AttentionShape& s, Tensor& dq, Tensor& dk, Tensor& dv);
  // Cross-entropy's gradient in place: logits [n, V] become scale * (softmax(row) - onehot(target))
  // per row; a row whose target is negative (a position that predicts nothing) becomes 0. loss[i]
  // receives the row's NLL (0 for those rows), in float64.
  virtual void nll_backward(Tensor& logits, std::span<const std::int32_t> targets, float scale,
                            std::span<double> loss);

  // ---- LLM Surgeon's linear algebra (optional) ----

  // In place, the inverse of a symmetric positive definite f64 a [n, n] by Cholesky in float64
  // (both triangles filled). Returns false (a then undefined) when a is not numerically positive
  // definite. Bitwise the same at any thread count.
  virtual bool spd_inverse_f64(Tensor& a);
  // b [n, k] becomes a⁻¹ b for a symmetric positive definite f32 a [n, n] (overwritten by its
  // Cholesky factor), in fp32. Returns false when a is not numerically positive definite.
  virtual bool spd_solve(Tensor& a, Tensor& b);
  // Many independent systems at once (LLM Surgeon's chunks): each a[i] [n_i, n_i], symmetric
  // positive definite f32, becomes its lower Cholesky factor L (a = LLᵀ; the strict upper triangle
  // undefined). ok[i] = 0 where a[i] is not numerically positive definite. Each factor's bits do
  // not depend on the thread count or on the other matrices of the batch.
  virtual void cholesky_batch(std::span<Tensor> a, std::span<std::uint8_t> ok);
  // b [n, k] becomes (LLᵀ)⁻¹ b for a factor l from cholesky_batch.
  virtual void cholesky_solve(const Tensor& l, Tensor& b);
  // Index gathers and scatters of LLM Surgeon's sub-problems on f32 2-D tensors, the indices in
  // host memory. out [rows.size(), cols.size()] = a[rows, cols], or with `transposed` its
  // transpose [cols.size(), rows.size()].
  virtual void gather(const Tensor& a, std::span<const std::int64_t> rows, std::span<const std::int64_t> cols,
                      Tensor& out, bool transposed);
  // a[rows, cols] = v, v [rows.size(), cols.size()].
  virtual void scatter(const Tensor& v, std::span<const std::int64_t> rows, std::span<const std::int64_t> cols,
                       Tensor& a);
  // out[k] = a[i[k], j[k]] (out holds i.size() values).
  virtual void gather_pairs(const Tensor& a, std::span<const std::int64_t> i, std::span<const std::int64_t> j,
                            Tensor& out);
  // out [n, n], n = i.size(): out[x, y] = g[i[x], i[y]] · a[j[x], j[y]], the entries of G ⊗ A at
  // the (row, column) pairs (i, j) of a weight matrix.
  virtual void kron_pairs(const Tensor& g, const Tensor& a, std::span<const std::int64_t> i,
                          std::span<const std::int64_t> j, Tensor& out);
  // out[dst[k], :] += coef[k] · a[src[k], :] for k = 0, 1, ... in that order (each entry's sum in
  // the order of k, at any thread count); coef holds src.size() values, out has a's columns. The
  // product S·a of a matrix S with one non-zero per column (LLM Surgeon's Λ·Â⁻¹), in 2·k·cols FLOPs.
  virtual void rows_axpy(const Tensor& a, std::span<const std::int64_t> src, std::span<const std::int64_t> dst,
                         const Tensor& coef, Tensor& out);

  // ---- Pruning (SparseGPT, Wanda, magnitude). Masks are DType::u8 tensors, 1 = kept. ----

  // Cholesky factorisation in place of a symmetric positive definite a [n, n]: upper (a = UᵀU) or
  // lower (a = LLᵀ); the other triangle is zeroed. Returns false (a then undefined) when a is not
  // numerically positive definite.
  virtual bool cholesky(Tensor& a, bool upper) = 0;
  // From a factor as cholesky(a, upper) left it, the inverse of the factored matrix in place,
  // both triangles filled (LAPACK potri).
  virtual void cholesky_inverse(Tensor& factor, bool upper) = 0;
  // The tile ops of the shared factorisation (prune/split_factor.hpp), fp32, TF32 never. On
  // rectangles of 2-D tensors: C[bc] = alpha op(A[ba]) op(B[bb]) + beta C[bc] (bc must not overlap
  // ba or bb: refused);
  virtual void gemm_block(Trans ta, Trans tb, float alpha, const Tensor& a, const Block& ba, const Tensor& b,
                          const Block& bb, float beta, Tensor& c, const Block& bc) = 0;
  // dst[r0 + i, c0 + j] = src[bs.r0 + i, bs.c0 + j] (the two blocks must not overlap);
  virtual void copy_block(const Tensor& src, const Block& bs, Tensor& dst, std::int64_t r0, std::int64_t c0) = 0;
  // the inverse of the lower triangular square a in place (only its lower triangle is read), the
  // strict upper triangle zeroed;
  virtual void invert_lower(Tensor& a) = 0;
  // the square a with its elements in reverse order (a[i, j] <- a[n-1-i, n-1-j]: J a J), then with
  // keep_upper the strict lower triangle zeroed.
  virtual void flip(Tensor& a, bool keep_upper) = 0;
  // SparseGPT's factor in place: a [n, n] symmetric positive definite becomes U, upper, with
  // a⁻¹ = UᵀU (the strict lower triangle zeroed). The same U as the reference's chol, cholesky_inverse,
  // chol(upper) (it is unique), computed as J·chol_lower(J a J)⁻¹·J with J the reversal: one
  // factorisation and one triangular inverse, half the reference's FLOPs. Returns false (a then
  // undefined) when a is not numerically positive definite or U is not finite. Bitwise the same
  // at any thread count.
  virtual bool inverse_cholesky_upper(Tensor& a) = 0;
  // out[j] = beta * out[j] + alpha * Σ_t x[t, j]² for x [n, d] ([lp]), out [d] fp32 (sums in double); out
  // is not read when beta == 0 (as BLAS treats C).
  virtual void col_sq_norms(const Tensor& x, float alpha, float beta, Tensor& out) = 0;
  // SparseGPT's preparation of H [d, d] in place: dead inputs (H_jj == 0) get H_jj = 1 and, when
  // w [rows, d] is given, W[:, j] = 0; then damp = percdamp * mean(diag H) is added to the diagonal.
  virtual HessianPrep hessian_prepare(Tensor& h, Tensor* w, float percdamp) = 0;
  // W[:, j] = 0 wherever H_jj == 0: hessian_prepare's dead inputs on a weight (or a row slice of
  // one) whose factor was prepared elsewhere (h [d, d] is left as it is).
  virtual void zero_dead_columns(const Tensor& h, Tensor& w) = 0;
  // True when no element is NaN or infinite (f32 or f64).
  virtual bool all_finite(const Tensor& t) = 0;
  // scores = |w| (col == nullptr: magnitude) or |w_ij| * sqrt(col_j) (Wanda), w and scores [rows, d].
  virtual void prune_scores(const Tensor& w, const Tensor* col, Tensor& scores) = 0;
  // The rule that prunes exactly the k smallest of `scores` (ties in row-major order), 0 <= k <= numel.
  virtual SelectThreshold kth_threshold(const Tensor& scores, std::int64_t k) = 0;
  // mask[r, col0 + j] = 0 where t prunes scores[r, j], else 1; scores [rows, width], mask [rows, >= col0 + width].
  virtual void mask_threshold(const Tensor& scores, const SelectThreshold& t, Tensor& mask, std::int64_t col0) = 0;
  // Per row, prune the k smallest scores (ties: lower column first, as a stable sort).
  virtual void mask_rows_smallest(const Tensor& scores, std::int64_t k, Tensor& mask) = 0;
  // N:M: in every group of m consecutive columns of a row (groups start at multiples of m), prune the
  // n smallest (ties: lower column first); a last group shorter than m prunes min(n, its length).
  virtual void mask_nm(const Tensor& scores, int n, int m, Tensor& mask) = 0;
  // w *= mask (pruned entries become exact zeros).
  virtual void apply_mask(Tensor& w, const Tensor& mask) = 0;
  // SparseGPT block scores: scores[r, j] = W[r, col0+j]² / Hinv[col0+j, col0+j]², scores [rows, width].
  // With hdiag ([d]: the damped Hessian's diagonal) the ISC saliency of the sensitivity paper:
  // W² / Hinv_jj² + W² · hdiag[col0+j].
  virtual void obs_scores(const Tensor& w, const Tensor& hinv, std::int64_t col0, Tensor& scores,
                          const Tensor* hdiag) = 0;
  // out [n] = the diagonal of a [n, n] (fp32).
  virtual void diagonal(const Tensor& a, Tensor& out);
  // SparseGPT's sweep of columns [col0, col0 + width) of w [rows, d] against the upper factor hinv
  // [d, d] (H⁻¹ = UᵀU). For each column i in order: (prune_m > 0, i - col0 a multiple of prune_m)
  // mark the prune_n smallest w²/U_ii² of the row's next prune_m (already updated) columns in mask;
  // then err = w_i·(pruned)/U_ii, w_i = kept ? w_i : 0, W[r, i+1:col0+width] -= err·U[i, i+1:...].
  // prune_m == 0: the mask block is read as given. err [rows, width] receives the errors; losses
  // [rows] (f64) accumulates Σ err²/2. Rows are independent (a row slice may run alone).
  virtual void obs_sweep_block(Tensor& w, const Tensor& hinv, std::int64_t col0, std::int64_t width, int prune_n,
                               int prune_m, Tensor& mask, Tensor& err, Tensor& losses) = 0;
  // SparseGPT's lazy update after a block: W[:, c1:] -= err · U[col0:c1, c1:], c1 = col0 + err.cols (one GEMM).
  // row0, total_rows: where w's first row lies in the whole matrix, and its rows, when w is a row
  // slice another rank's slices complete (0, 0: w is the whole matrix); a backend whose GEMM bits
  // depend on the call a row is computed in (CPU: OpenBLAS) computes every row in the call the
  // whole matrix's update computes it in.
  virtual void obs_lazy_update(Tensor& w, const Tensor& err, const Tensor& hinv, std::int64_t col0, std::int64_t row0,
                               std::int64_t total_rows) = 0;
  // out[r] = Σ_j a[r, j] b[r, j] in double, a and b [rows, d].
  virtual void rowwise_dot(const Tensor& a, const Tensor& b, std::span<double> out) = 0;

  // Threads this backend uses for BLAS and loops (cpu); 0 = leave as is.
  virtual void set_threads(int threads) = 0;
};

std::unique_ptr<Backend> make_cpu_backend(int threads = 0);
// "cpu" or "cuda"; input Error naming the device when it is not built in or not present.
std::unique_ptr<Backend> make_backend(const std::string& device, const BackendOptions& options);
std::unique_ptr<Backend> make_backend(const std::string& device, int threads = 0);
// A deep copy of t on the backend's device.
Tensor clone_on(Backend& be, const Tensor& t);
// A host tensor where the backend computes, for reading: t itself on the cpu backend (no copy), a
// device copy (be.upload) otherwise.
Tensor view_on(Backend& be, const Tensor& host);
// t as a tensor of dtype dt (f32, f16, bf16) on the backend's device: t itself when it already is
// one, else a converted copy (a host tensor travels in its own dtype and converts there).
Tensor as_dtype_on(Backend& be, const Tensor& t, DType dt);

// What this build can run: cuda_built() says the CUDA backend was compiled in; cuda_devices()
// counts the GPUs the driver shows (0 without a driver or a GPU, or in a CPU-only build), and
// cuda_status() says why in words.
bool cuda_built();
int cuda_devices();
std::string cuda_status();

}  // namespace scalpel
