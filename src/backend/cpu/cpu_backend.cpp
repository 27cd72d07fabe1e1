// CPU backend: OpenBLAS for the matrix work (sgemm, ssyrk; LAPACKE spotrf/spotri for the
// pruners' factorisations), OpenMP for the row-wise and elementwise loops. Reductions inside a
// row (norms, softmax, NLL) accumulate in double so that the fp32 results sit within a few ulps
// of a float64 reference.
#include <cblas.h>
#include <lapacke.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <span>
#include <vector>

#include "scalpel/backend/backend.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/core/float_order.hpp"
#include "../lowp.hpp"
#include "../op_checks.hpp"
#include "cpu_backward.hpp"
#include "fast_exp.hpp"
#include "cpu_factor.hpp"
#include "cpu_sweep.hpp"
#include "det_blas.hpp"

namespace scalpel {
namespace {

using cpu::exp_nonpositive;

void check_host_f32(const Tensor& t, const char* what) {
  SCALPEL_CHECK(t.defined() && t.device() == Device::cpu && t.dtype() == DType::f32,
                "{}: expected a host F32 tensor", what);
}

void check_2d(const Tensor& t, const char* what) {
  check_host_f32(t, what);
  SCALPEL_CHECK(t.dim() == 2, "{}: expected 2-D, got {}", what, shape_str(t.shape()));
}

void check_mask(const Tensor& t, const char* what) {
  SCALPEL_CHECK(t.defined() && t.device() == Device::cpu && t.dtype() == DType::u8 && t.dim() == 2,
                "{}: expected a host 2-D U8 tensor", what);
}

// N:M groups up to this width select on the stack.
constexpr std::int64_t kMaxGroup = 64;

// Marks the c smallest of s[0, len) as pruned (mask 0) and the rest kept, ties to the lower index:
// element a is pruned when fewer than c elements precede it in (score, index) order. O(len²) with
// no branches on the data, which beats sorting for the small groups of N:M patterns.
inline void select_group(const float* s, std::int64_t len, std::int64_t c, std::uint8_t* mask) {
  for (std::int64_t a = 0; a < len; ++a) {
    std::int64_t rank = 0;
    for (std::int64_t b = 0; b < len; ++b) rank += (s[b] < s[a]) | ((s[b] == s[a]) & (b < a));
    mask[a] = rank >= c;
  }
}

// Zeroes the strict lower (or upper) triangle of a row-major n x n matrix.
void zero_triangle(float* a, std::int64_t n, bool strict_lower) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    if (strict_lower)
      std::fill(a + i * n, a + i * n + i, 0.0f);
    else
      std::fill(a + i * n + i + 1, a + (i + 1) * n, 0.0f);
  }
}

// Copies one triangle of a row-major n x n matrix onto the other, in 64 x 64 tiles so that the
// transposed reads stay in cache.
void mirror_triangle(float* a, std::int64_t n, bool from_upper) {
  constexpr std::int64_t B = 64;
  const std::int64_t nb = (n + B - 1) / B;
#pragma omp parallel for schedule(dynamic, 1)
  for (std::int64_t bi = 0; bi < nb; ++bi)
    for (std::int64_t bj = 0; bj <= bi; ++bj)
      for (std::int64_t i = bi * B; i < std::min(n, (bi + 1) * B); ++i)
        for (std::int64_t j = bj * B; j < std::min(i, (bj + 1) * B); ++j) {
          // (i, j) lies in the strict lower triangle.
          if (from_upper)
            a[i * n + j] = a[j * n + i];
          else
            a[j * n + i] = a[i * n + j];
        }
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) { set_threads(threads); }

  std::string name() const override { return "cpu"; }
  Device device() const override { return Device::cpu; }

  void set_threads(int threads) override {
    if (threads <= 0) return;
    openblas_set_num_threads(threads);
    omp_set_num_threads(threads);
  }

  Tensor empty(const Shape& shape, DType dtype) override { return Tensor::empty(shape, dtype); }
  Tensor zeros(const Shape& shape, DType dtype) override { return Tensor::zeros(shape, dtype); }
  // Always a private copy: the source may be a read-only memory map of a checkpoint.
  Tensor upload(const Tensor& host) override {
    const auto t = host.dtype();
    const bool is_float = t == DType::f32 || t == DType::f16 || t == DType::bf16 || t == DType::f64;
    return t == DType::f32 || !is_float ? host.clone() : host.to_f32();  // masks and ids keep their type
  }
  Tensor download(const Tensor& t) override { return t; }
  Tensor upload_exact(const Tensor& host) override { return host.clone(); }
  void copy(const Tensor& src, Tensor& dst) override {
    SCALPEL_CHECK(src.nbytes() == dst.nbytes() && src.dtype() == dst.dtype(), "copy {} -> {}",
                  shape_str(src.shape()), shape_str(dst.shape()));
    std::memcpy(dst.raw(), src.raw(), src.nbytes());
  }
  void convert(const Tensor& src, Tensor& dst) override {
    SCALPEL_CHECK(src.numel() == dst.numel() && src.device() == Device::cpu && dst.device() == Device::cpu,
                  "convert {} -> {}", shape_str(src.shape()), shape_str(dst.shape()));
    const auto n = static_cast<std::size_t>(src.numel());
    if (src.dtype() == dst.dtype()) {
      std::memcpy(dst.raw(), src.raw(), src.nbytes());
    } else if (src.dtype() == DType::f32) {
      convert_from_f32(dst.dtype(), src.f32(), dst.raw(), n);
    } else if (dst.dtype() == DType::f32) {
      convert_to_f32(src.dtype(), src.raw(), dst.f32(), n);
    } else {
      const Tensor mid = src.to_f32();
      convert_from_f32(dst.dtype(), mid.f32(), dst.raw(), n);
    }
  }

  void accumulate_f64(const Tensor& a, Tensor& acc) override {
    check_host_f32(a, "accumulate_f64 a");
    SCALPEL_CHECK(acc.dtype() == DType::f64 && acc.numel() == a.numel(), "accumulate_f64 {} into {}",
                  shape_str(a.shape()), shape_str(acc.shape()));
    const float* v = a.f32();
    double* p = acc.f64();
    const auto n = a.numel();
#pragma omp parallel for simd schedule(static)
    for (std::int64_t i = 0; i < n; ++i) p[i] += static_cast<double>(v[i]);
  }

  void f64_to_f32(const Tensor& acc, double scale, Tensor& out) override {
    check_host_f32(out, "f64_to_f32 out");
    SCALPEL_CHECK(acc.dtype() == DType::f64 && acc.numel() == out.numel(), "f64_to_f32 {} into {}",
                  shape_str(acc.shape()), shape_str(out.shape()));
    const double* p = acc.f64();
    float* o = out.f32();
    const auto n = out.numel();
#pragma omp parallel for simd schedule(static)
    for (std::int64_t i = 0; i < n; ++i) o[i] = static_cast<float>(p[i] * scale);
  }

  void accumulate_upper_f64(const Tensor& a, Tensor& acc) override {
    check_2d(a, "accumulate_upper_f64 a");
    const auto d = a.size(0);
    SCALPEL_CHECK(a.size(1) == d && acc.dtype() == DType::f64 && acc.numel() == d * (d + 1) / 2,
                  "accumulate_upper_f64 {} into {}", shape_str(a.shape()), shape_str(acc.shape()));
    double* p = acc.f64();
    const float* src = a.f32();
#pragma omp parallel for schedule(dynamic, 16)
    for (std::int64_t i = 0; i < d; ++i) {
      double* row = p + (i * d - i * (i - 1) / 2);
      const float* r = src + i * d + i;
#pragma omp simd
      for (std::int64_t j = 0; j < d - i; ++j) row[j] += static_cast<double>(r[j]);
    }
  }

  void upper_f64_to_symmetric(const Tensor& acc, double scale, Tensor& out) override {
    check_2d(out, "upper_f64_to_symmetric out");
    const auto d = out.size(0);
    SCALPEL_CHECK(out.size(1) == d && acc.dtype() == DType::f64 && acc.numel() == d * (d + 1) / 2,
                  "upper_f64_to_symmetric {} into {}", shape_str(acc.shape()), shape_str(out.shape()));
    const double* a = acc.f64();
    float* o = out.f32();
#pragma omp parallel for schedule(dynamic, 16)
    for (std::int64_t i = 0; i < d; ++i) {
      const double* row = a + (i * d - i * (i - 1) / 2);
      for (std::int64_t j = i; j < d; ++j) o[i * d + j] = o[j * d + i] = static_cast<float>(row[j - i] * scale);
    }
  }

  void gemm(Trans ta, Trans tb, float alpha, const Tensor& a, const Tensor& b, float beta,
            Tensor& c) override {
    check_2d(a, "gemm A");
    check_2d(b, "gemm B");
    check_2d(c, "gemm C");
    const auto [m, n, k] = op_checks::gemm(ta, tb, a, b, c);
    if (m == 0 || n == 0) return;
    cpu::det_gemm<float>(ta == Trans::yes, tb == Trans::yes, m, n, k, alpha, a.f32(), a.size(1), b.f32(), b.size(1), beta,
                   c.f32(), c.size(1));
  }

  void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override {
    if (lowp::any({&x, &w, bias, &y})) {
      lowp::check_one_dtype({&x, &w, bias, &y}, "linear");
      lowp::F32Scope f(*this);
      linear(f.in(x), f.in(w), f.in(bias), f.out(y, false));
      return f.commit();
    }
    check_2d(x, "linear x");
    check_2d(w, "linear W");
    check_2d(y, "linear y");
    op_checks::linear(x, w, bias, y);
    const auto n = x.size(0), out = w.size(0);
    float beta = 0.0f;
    if (bias) {
      check_host_f32(*bias, "linear bias");
      const float* bp = bias->f32();
      float* yp = y.f32();
#pragma omp parallel for schedule(static)
      for (std::int64_t i = 0; i < n; ++i) std::memcpy(yp + i * out, bp, out * sizeof(float));
      beta = 1.0f;
    }
    gemm(Trans::no, Trans::yes, 1.0f, x, w, beta, y);
  }

  void syrk(float alpha, const Tensor& x, float beta, Tensor& h) override {
    if (lowp::any({&x})) {
      lowp::F32Scope f(*this);
      return syrk(alpha, f.in(x), beta, h);
    }
    check_2d(x, "syrk X");
    check_2d(h, "syrk H");
    op_checks::syrk(x, h);
    const auto n = x.size(0), d = x.size(1);
    float* hp = h.f32();
    cpu::det_syrk_upper_t<float>(d, n, alpha, x.f32(), d, beta, hp, d);
    // Mirror the upper triangle so consumers may read either (in cache-sized tiles).
    mirror_triangle(hp, d, /*from_upper=*/true);
  }

  void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, Tensor& out) override {
    if (lowp::any({&x, w, b, &out})) {
      lowp::check_one_dtype({&x, w, b, &out}, "layer_norm");
      lowp::F32Scope f(*this);
      layer_norm(f.in(x), f.in(w), f.in(b), eps, f.out(out, false));
      return f.commit();
    }
    check_2d(x, "layer_norm x");
    const auto n = x.size(0), d = x.size(1);
    SCALPEL_CHECK(out.numel() == x.numel(), "layer_norm out {}", shape_str(out.shape()));
    const float* wp = w ? w->f32() : nullptr;
    const float* bp = b ? b->f32() : nullptr;
    const float* xp = x.f32();
    float* op = out.f32();
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) {
      const float* r = xp + i * d;
      double mean = 0;
      for (std::int64_t j = 0; j < d; ++j) mean += r[j];
      mean /= static_cast<double>(d);
      double var = 0;
      for (std::int64_t j = 0; j < d; ++j) {
        const double c = r[j] - mean;
        var += c * c;
      }
      var /= static_cast<double>(d);  // biased, as torch.nn.LayerNorm
      const double inv = 1.0 / std::sqrt(var + eps);
      float* o = op + i * d;
      for (std::int64_t j = 0; j < d; ++j) {
        double v = (r[j] - mean) * inv;
        if (wp) v *= wp[j];
        if (bp) v += bp[j];
        o[j] = static_cast<float>(v);
      }
    }
  }

  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    if (lowp::any({&x, &w, &out})) {
      lowp::check_one_dtype({&x, &w, &out}, "rms_norm");
      lowp::F32Scope f(*this);
      rms_norm(f.in(x), f.in(w), eps, f.out(out, false));
      return f.commit();
    }
    check_2d(x, "rms_norm x");
    const auto n = x.size(0), d = x.size(1);
    SCALPEL_CHECK(w.numel() == d && out.numel() == x.numel(), "rms_norm shapes");
    const float* xp = x.f32();
    const float* wp = w.f32();
    float* op = out.f32();
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) {
      const float* r = xp + i * d;
      double ss = 0;
      for (std::int64_t j = 0; j < d; ++j) ss += static_cast<double>(r[j]) * r[j];
      const double inv = 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
      float* o = op + i * d;
      // HF casts the normalised value back to the input dtype before the weight multiply; with
      // fp32 compute that cast is the identity.
      for (std::int64_t j = 0; j < d; ++j) o[j] = wp[j] * static_cast<float>(r[j] * inv);
    }
  }

  void add(Tensor& y, const Tensor& x) override {
    SCALPEL_CHECK(y.numel() == x.numel(), "add {} += {}", shape_str(y.shape()), shape_str(x.shape()));
    if (lowp::any({&y, &x})) {
      lowp::check_one_dtype({&y, &x}, "add");
      lowp::F32Scope f(*this);
      add(f.out(y, true), f.in(x));
      return f.commit();
    }
    float* yp = y.f32();
    const float* xp = x.f32();
    const auto n = y.numel();
#pragma omp parallel for simd schedule(static)
    for (std::int64_t i = 0; i < n; ++i) yp[i] += xp[i];
  }

  void scale(Tensor& y, float alpha) override {
    if (lowp::any({&y})) {
      lowp::F32Scope f(*this);
      scale(f.out(y, true), alpha);
      return f.commit();
    }
    float* yp = y.f32();
    const auto n = y.numel();
#pragma omp parallel for simd schedule(static)
    for (std::int64_t i = 0; i < n; ++i) yp[i] *= alpha;
  }

  void relu(Tensor& y) override {
    if (lowp::any({&y})) {
      lowp::F32Scope f(*this);
      relu(f.out(y, true));
      return f.commit();
    }
    float* yp = y.f32();
    const auto n = y.numel();
#pragma omp parallel for simd schedule(static)
    for (std::int64_t i = 0; i < n; ++i) yp[i] = yp[i] > 0.0f || yp[i] != yp[i] ? yp[i] : 0.0f;  // NaN stays, as torch
  }

  void gelu(Tensor& y) override {
    if (lowp::any({&y})) {
      lowp::F32Scope f(*this);
      gelu(f.out(y, true));
      return f.commit();
    }
    float* yp = y.f32();
    const auto n = y.numel();
    const double c = std::sqrt(2.0 / M_PI);
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) {
      const double v = yp[i];
      yp[i] = static_cast<float>(0.5 * v * (1.0 + std::tanh(c * (v + 0.044715 * v * v * v))));
    }
  }

  void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) override {
    SCALPEL_CHECK(gate.numel() == up.numel() && out.numel() == up.numel(), "silu_mul shapes");
    if (lowp::any({&gate, &up, &out})) {
      lowp::check_one_dtype({&gate, &up, &out}, "silu_mul");
      lowp::F32Scope f(*this);
      silu_mul(f.in(gate), f.in(up), f.out(out, false));
      return f.commit();
    }
    const float* g = gate.f32();
    const float* u = up.f32();
    float* o = out.f32();
    const auto n = out.numel();
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }

  void rope(Tensor& x, std::int64_t seqlen, std::int64_t heads, std::int64_t head_dim,
            const Tensor& cos, const Tensor& sin) override {
    if (lowp::any({&x})) {
      lowp::F32Scope f(*this);
      rope(f.out(x, true), seqlen, heads, head_dim, cos, sin);
      return f.commit();
    }
    check_2d(x, "rope x");
    op_checks::rope(x, seqlen, heads, head_dim, cos);
    const auto rows = x.size(0), half = head_dim / 2;
    float* xp = x.f32();
    const float* c = cos.f32();
    const float* s = sin.f32();
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t pos = r % seqlen;
      const float* cr = c + pos * head_dim;
      const float* sr = s + pos * head_dim;
      for (std::int64_t h = 0; h < heads; ++h) {
        float* v = xp + r * heads * head_dim + h * head_dim;
        for (std::int64_t i = 0; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          // rotate_half(v) = cat(-v[half:], v[:half])
          v[i] = a * cr[i] - b * sr[i];
          v[i + half] = b * cr[i + half] + a * sr[i + half];
        }
      }
    }
  }

  void attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s,
                 Tensor& out, Tensor* probs) override {
    op_checks::attention(q, k, v, s, out, probs);
    if (lowp::any({&q, &k, &v, &out})) {
      lowp::check_one_dtype({&q, &k, &v, &out}, "attention");
      SCALPEL_CHECK(q.dtype() == k.dtype() && k.dtype() == v.dtype() && v.dtype() == out.dtype(),
                    "attention: q, k, v and out must share one dtype");
      SCALPEL_CHECK(!probs, "attention: probs are kept for fp32 forwards only (LLM Surgeon's backward)");
      lowp::F32Scope f(*this);
      attention_f32(f.in(q), f.in(k), f.in(v), s, f.out(out, false), nullptr, out.dtype());
      return f.commit();
    }
    attention_f32(q, k, v, s, out, probs, DType::f32);
  }

  // The attention in fp32; with a low-precision `round_probs`, the probabilities are rounded to
  // it before P·V (the low-precision forward's P is stored in its dtype).
  void attention_f32(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, Tensor& out,
                     Tensor* probs, DType round_probs) {
    for (const Tensor* t : {&q, &k, &v, static_cast<const Tensor*>(&out)}) check_host_f32(*t, "attention");
    const auto T = s.seqlen, H = s.heads, KV = s.kv_heads, hd = s.head_dim;
    const int ldq = static_cast<int>(H * hd), ldk = static_cast<int>(KV * hd);
    const std::int64_t group = H / KV;
    // One task per (sequence, head); inside a task, blocks of query rows only see the keys up to
    // their last row, which skips the masked half of q·kᵀ. BLAS calls inside the parallel region
    // run single-threaded (OpenMP OpenBLAS detects it), so the tasks use the cores.
    constexpr std::int64_t kRows = 64;
#pragma omp parallel
    {
      std::vector<float> scratch(probs ? 0 : static_cast<std::size_t>(T * T));
#pragma omp for collapse(2) schedule(dynamic, 1)
      for (std::int64_t b = 0; b < s.batch; ++b) {
        for (std::int64_t h = 0; h < H; ++h) {
          const float* qh = q.f32() + b * T * ldq + h * hd;
          const float* kh = k.f32() + b * T * ldk + (h / group) * hd;
          const float* vh = v.f32() + b * T * ldk + (h / group) * hd;
          float* oh = out.f32() + b * T * ldq + h * hd;
          float* p = probs ? probs->f32() + (b * H + h) * T * T : scratch.data();
          for (std::int64_t i0 = 0; i0 < T; i0 += kRows) {
            const std::int64_t i1 = std::min(T, i0 + kRows), rows = i1 - i0;
            float* pb = p + i0 * T;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows), static_cast<int>(i1),
                        static_cast<int>(hd), s.scale, qh + i0 * ldq, ldq, kh, ldk, 0.0f, pb, static_cast<int>(T));
            for (std::int64_t i = i0; i < i1; ++i) {
              float* row = p + i * T;
              float m = row[0];
              for (std::int64_t j = 1; j <= i; ++j) m = std::max(m, row[j]);
              float sum = 0;  // at most T terms in [0, 1]: fp32 keeps ~1e-7 relative
#pragma omp simd reduction(+ : sum)
              for (std::int64_t j = 0; j <= i; ++j) {
                row[j] = exp_nonpositive(row[j] - m);
                sum += row[j];
              }
              const float inv = 1.0f / sum;
              for (std::int64_t j = 0; j <= i; ++j) row[j] *= inv;
              if (round_probs != DType::f32)
                for (std::int64_t j = 0; j <= i; ++j) row[j] = round_to(round_probs, row[j]);
              std::fill(row + i + 1, row + T, 0.0f);  // masked: exp(finfo.min - max) == 0 exactly
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(rows), static_cast<int>(hd),
                        static_cast<int>(i1), 1.0f, pb, static_cast<int>(T), vh, ldk, 0.0f, oh + i0 * ldq, ldq);
          }
        }
      }
    }
  }

  void embedding(std::span<const std::int32_t> ids, const Tensor& table, Tensor& out) override {
    if (lowp::any({&table, &out})) {
      lowp::F32Scope f(*this);
      embedding(ids, f.in(table), f.out(out, false));
      return f.commit();
    }
    check_2d(table, "embedding table");
    op_checks::embedding(ids, table, out);
    const auto d = table.size(1);
    const float* tp = table.f32();
    float* op = out.f32();
    for (std::size_t i = 0; i < ids.size(); ++i) {
      std::memcpy(op + static_cast<std::int64_t>(i) * d, tp + static_cast<std::int64_t>(ids[i]) * d,
                  d * sizeof(float));
    }
  }

  void nll(const Tensor& logits, std::span<const std::int32_t> targets, std::span<double> out,
           std::span<std::uint8_t> is_argmax) override {
    check_2d(logits, "nll logits");
    op_checks::nll(logits, targets, out, is_argmax);
    const auto n = logits.size(0), V = logits.size(1);
    const float* lp = logits.f32();
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) {
      const float* r = lp + i * V;
      float m = r[0];
      for (std::int64_t j = 1; j < V; ++j) m = std::max(m, r[j]);
      const auto t = targets[static_cast<std::size_t>(i)];
      out[static_cast<std::size_t>(i)] = (m + cpu::log_sum_exp_shifted(r, V, m)) - static_cast<double>(r[t]);
      if (!is_argmax.empty()) {
        bool first_max = r[t] == m;
        for (std::int64_t j = 0; first_max && j < t; ++j) first_max = r[j] != m;
        is_argmax[static_cast<std::size_t>(i)] = first_max ? 1 : 0;
      }
    }
  }
  // ---- Backward (cpu_backward.cpp) ----
  void layer_norm_backward(const Tensor& x, const Tensor* w, float eps, const Tensor& dy, Tensor& dx) override {
    cpu::layer_norm_backward(x, w, eps, dy, dx);
  }
  void rms_norm_backward(const Tensor& x, const Tensor& w, float eps, const Tensor& dy, Tensor& dx) override {
    cpu::rms_norm_backward(x, w, eps, dy, dx);
  }
  void relu_backward(const Tensor& pre, Tensor& dy) override { cpu::relu_backward(pre, dy); }
  void gelu_backward(const Tensor& pre, Tensor& dy) override { cpu::gelu_backward(pre, dy); }
  void silu_mul_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor& dgate,
                         Tensor& dup) override {
    cpu::silu_mul_backward(gate, up, dout, dgate, dup);
  }
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs, const Tensor& dout,
                          const AttentionShape& s, Tensor& dq, Tensor& dk, Tensor& dv) override {
    cpu::attention_backward(q, k, v, probs, dout, s, dq, dk, dv);
  }
  void nll_backward(Tensor& logits, std::span<const std::int32_t> targets, float scale,
                    std::span<double> loss) override {
    cpu::nll_backward(logits, targets, scale, loss);
  }

  // ---- LLM Surgeon's linear algebra ----
  bool spd_inverse_f64(Tensor& a) override {
    SCALPEL_CHECK(a.dim() == 2 && a.size(0) == a.size(1) && a.dtype() == DType::f64 && a.device() == Device::cpu,
                  "spd_inverse_f64 of {} {}", dtype_name(a.dtype()), shape_str(a.shape()));
    const auto n = a.size(0);
    if (n == 0) return true;
    double* p = a.f64();
    if (!cpu::potrf_lower<double>(p, n, n)) return false;
    cpu::trtri_lower<double>(p, n, n);  // X = L⁻¹, lower
    cpu::lauum_lower<double>(p, n, n);  // a⁻¹ = XᵀX, lower triangle
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = i + 1; j < n; ++j) p[i * n + j] = p[j * n + i];
    for (std::int64_t i = 0; i < n * n; ++i)
      if (!std::isfinite(p[i])) return false;
    return true;
  }

  void cholesky_batch(std::span<Tensor> a, std::span<std::uint8_t> ok) override {
    SCALPEL_CHECK(ok.size() == a.size(), "cholesky_batch: {} flags for {} matrices", ok.size(), a.size());
    for (const auto& t : a) {
      check_2d(t, "cholesky_batch A");
      SCALPEL_CHECK(t.size(0) == t.size(1), "cholesky_batch of a non-square {}", shape_str(t.shape()));
    }
    // One single-threaded LAPACK factorisation per matrix (OpenBLAS runs single-threaded inside
    // a parallel region), so a factor is the same whatever the thread count.
#pragma omp parallel for schedule(dynamic, 1)
    for (std::size_t i = 0; i < a.size(); ++i) {
      const auto n = static_cast<lapack_int>(a[i].size(0));
      ok[i] = n == 0 || LAPACKE_spotrf_work(LAPACK_COL_MAJOR, 'U', n, a[i].f32(), n) == 0;  // row-major lower
    }
  }

  void cholesky_solve(const Tensor& l, Tensor& b) override {
    check_2d(l, "cholesky_solve L");
    check_host_f32(b, "cholesky_solve B");
    const auto n = l.size(0), k = n > 0 ? b.numel() / n : 0;
    SCALPEL_CHECK(l.size(1) == n && b.size(0) == n && b.numel() == n * k, "cholesky_solve L {} B {}",
                  shape_str(l.shape()), shape_str(b.shape()));
    if (n == 0 || k == 0) return;
    // Row-major L is column-major U = Lᵀ: potrs with 'U' solves UᵀU x = b, b column-major [n, k]
    // (a transposed copy of the row-major b unless k == 1).
    std::vector<float> bt(static_cast<std::size_t>(n * k));
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < k; ++j) bt[static_cast<std::size_t>(j * n + i)] = b.f32()[i * k + j];
    const int info = LAPACKE_spotrs_work(LAPACK_COL_MAJOR, 'U', static_cast<lapack_int>(n), static_cast<lapack_int>(k),
                                         l.f32(), static_cast<lapack_int>(n), bt.data(), static_cast<lapack_int>(n));
    SCALPEL_CHECK(info == 0, "spotrs info {}", info);
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < k; ++j) b.f32()[i * k + j] = bt[static_cast<std::size_t>(j * n + i)];
  }

  bool spd_solve(Tensor& a, Tensor& b) override {
    check_2d(a, "spd_solve A");
    check_host_f32(b, "spd_solve B");
    const auto n = a.size(0), k = b.numel() / std::max<std::int64_t>(n, 1);
    SCALPEL_CHECK(a.size(1) == n && b.size(0) == n && b.numel() == n * k, "spd_solve A {} B {}", shape_str(a.shape()),
                  shape_str(b.shape()));
    if (n == 0 || k == 0) return true;
    if (!cpu::potrf_lower<float>(a.f32(), n, n)) return false;
    // Rows of Bᵀ: Bᵀ L⁻ᵀ L⁻¹ = (A⁻¹ B)ᵀ.
    std::vector<float> bt(static_cast<std::size_t>(n * k));
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < k; ++j) bt[static_cast<std::size_t>(j * n + i)] = b.f32()[i * k + j];
    cpu::det_trsm_right_lower_t<float>(k, n, a.f32(), n, bt.data(), n);
    cpu::det_trsm_right_lower_n<float>(k, n, a.f32(), n, bt.data(), n);
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < k; ++j) b.f32()[i * k + j] = bt[static_cast<std::size_t>(j * n + i)];
    return all_finite(b);
  }

  void gather(const Tensor& a, std::span<const std::int64_t> rows, std::span<const std::int64_t> cols, Tensor& out,
              bool transposed) override {
    check_2d(a, "gather A");
    check_host_f32(out, "gather out");
    op_checks::gather(a, rows, cols, out, "gather");
    const auto nr = static_cast<std::int64_t>(rows.size()), nc = static_cast<std::int64_t>(cols.size()), ld = a.size(1);
    const float* src = a.f32();
    float* o = out.f32();
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < nr; ++i) {
      const float* row = src + rows[static_cast<std::size_t>(i)] * ld;
      for (std::int64_t j = 0; j < nc; ++j) {
        const float v = row[cols[static_cast<std::size_t>(j)]];
        if (transposed) o[j * nr + i] = v;
        else o[i * nc + j] = v;
      }
    }
  }
  void scatter(const Tensor& v, std::span<const std::int64_t> rows, std::span<const std::int64_t> cols,
               Tensor& a) override {
    check_2d(a, "scatter A");
    check_host_f32(v, "scatter values");
    op_checks::gather(a, rows, cols, v, "scatter");
    const auto nr = static_cast<std::int64_t>(rows.size()), nc = static_cast<std::int64_t>(cols.size()), ld = a.size(1);
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < nr; ++i) {
      float* row = a.f32() + rows[static_cast<std::size_t>(i)] * ld;
      for (std::int64_t j = 0; j < nc; ++j) row[cols[static_cast<std::size_t>(j)]] = v.f32()[i * nc + j];
    }
  }
  void gather_pairs(const Tensor& a, std::span<const std::int64_t> i, std::span<const std::int64_t> j,
                    Tensor& out) override {
    check_2d(a, "gather_pairs A");
    check_host_f32(out, "gather_pairs out");
    op_checks::pairs(a, i, j, out.numel(), "gather_pairs");
    for (std::size_t k = 0; k < i.size(); ++k) out.f32()[k] = a.f32()[i[k] * a.size(1) + j[k]];
  }
  // Column blocks of a fixed width (not a share per thread), so an entry takes the same code path
  // at any thread count.
  void rows_axpy(const Tensor& a, std::span<const std::int64_t> src, std::span<const std::int64_t> dst,
                 const Tensor& coef, Tensor& out) override {
    check_2d(a, "rows_axpy A");
    check_2d(out, "rows_axpy out");
    check_host_f32(coef, "rows_axpy coefficients");
    op_checks::rows_axpy(a, src, dst, coef, out);
    constexpr std::int64_t kBlock = 512;
    const auto cols = a.size(1), n = static_cast<std::int64_t>(src.size());
#pragma omp parallel for schedule(static)
    for (std::int64_t c0 = 0; c0 < cols; c0 += kBlock) {
      const std::int64_t w = std::min(kBlock, cols - c0);
      for (std::int64_t k = 0; k < n; ++k) {
        const float f = coef.f32()[k];
        const float* x = a.f32() + src[static_cast<std::size_t>(k)] * cols + c0;
        float* y = out.f32() + dst[static_cast<std::size_t>(k)] * cols + c0;
#pragma omp simd
        for (std::int64_t c = 0; c < w; ++c) y[c] += f * x[c];
      }
    }
  }
  void kron_pairs(const Tensor& g, const Tensor& a, std::span<const std::int64_t> i, std::span<const std::int64_t> j,
                  Tensor& out) override {
    check_2d(g, "kron_pairs G");
    check_2d(a, "kron_pairs A");
    check_host_f32(out, "kron_pairs out");
    op_checks::kron_pairs(g, a, i, j, out);
    const auto n = static_cast<std::int64_t>(i.size()), ldg = g.size(1), lda = a.size(1);
#pragma omp parallel for schedule(static)
    for (std::int64_t x = 0; x < n; ++x) {
      const float* gr = g.f32() + i[static_cast<std::size_t>(x)] * ldg;
      const float* ar = a.f32() + j[static_cast<std::size_t>(x)] * lda;
      float* o = out.f32() + x * n;
      for (std::int64_t y = 0; y < n; ++y) o[y] = gr[i[static_cast<std::size_t>(y)]] * ar[j[static_cast<std::size_t>(y)]];
    }
  }

  // ---- Pruning ops ----

  bool cholesky(Tensor& a, bool upper) override {
    check_2d(a, "cholesky A");
    const auto n = a.size(0);
    SCALPEL_CHECK(a.size(1) == n, "cholesky of a non-square {}", shape_str(a.shape()));
    if (n == 0) return true;
    float* p = a.f32();
    if (!cpu::potrf_lower<float>(p, n, n)) return false;
    if (upper)  // A = UᵀU with U = Lᵀ
      for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t j = i + 1; j < n; ++j) {
          p[i * n + j] = p[j * n + i];
          p[j * n + i] = 0.0f;
        }
    else
      zero_triangle(p, n, /*strict_lower=*/false);
    return true;
  }

  bool inverse_cholesky_upper(Tensor& a) override {
    check_2d(a, "inverse_cholesky_upper A");
    const auto n = a.size(0);
    SCALPEL_CHECK(a.size(1) == n, "inverse_cholesky_upper of a non-square {}", shape_str(a.shape()));
    if (n == 0) return true;
    float* p = a.f32();
    // Reversing the flat row-major array maps (i, j) to (n-1-i, n-1-j): it forms J a J, and later
    // turns the lower inverse factor into the upper U.
    std::reverse(p, p + n * n);
    if (!cpu::potrf_lower<float>(p, n, n)) return false;
    cpu::trtri_lower<float>(p, n, n);
    zero_triangle(p, n, /*strict_lower=*/false);
    std::reverse(p, p + n * n);
    return all_finite(a);
  }

  void gemm_block(Trans ta, Trans tb, float alpha, const Tensor& a, const Block& ba, const Tensor& b, const Block& bb,
                  float beta, Tensor& c, const Block& bc) override {
    check_host_f32(a, "gemm_block A");
    check_host_f32(b, "gemm_block B");
    check_host_f32(c, "gemm_block C");
    const auto [m, n, k] = op_checks::gemm_block(ta, tb, a, ba, b, bb, c, bc);
    if (m == 0 || n == 0) return;
    const auto at = [](const Tensor& t, const Block& x) { return t.f32() + x.r0 * t.size(1) + x.c0; };
    cpu::det_gemm<float>(ta == Trans::yes, tb == Trans::yes, m, n, k, alpha, at(a, ba), a.size(1), at(b, bb), b.size(1),
                         beta, c.f32() + bc.r0 * c.size(1) + bc.c0, c.size(1));
  }

  void copy_block(const Tensor& src, const Block& bs, Tensor& dst, std::int64_t r0, std::int64_t c0) override {
    check_host_f32(src, "copy_block src");
    check_host_f32(dst, "copy_block dst");
    op_checks::copy_block(src, bs, dst, r0, c0);
    const auto ls = src.size(1), ld = dst.size(1);
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < bs.rows; ++i)
      std::memmove(dst.f32() + (r0 + i) * ld + c0, src.f32() + (bs.r0 + i) * ls + bs.c0,
                   static_cast<std::size_t>(bs.cols) * sizeof(float));
  }

  void invert_lower(Tensor& a) override {
    check_2d(a, "invert_lower A");
    op_checks::square(a, "invert_lower");
    const auto n = a.size(0);
    if (n == 0) return;
    cpu::trtri_lower<float>(a.f32(), n, n);
    zero_triangle(a.f32(), n, /*strict_lower=*/false);
  }

  void flip(Tensor& a, bool keep_upper) override {
    check_2d(a, "flip A");
    op_checks::square(a, "flip");
    float* p = a.f32();
    std::reverse(p, p + a.numel());
    if (keep_upper) zero_triangle(p, a.size(0), /*strict_lower=*/true);
  }

  void cholesky_inverse(Tensor& f, bool upper) override {
    check_2d(f, "cholesky_inverse factor");
    const auto n = f.size(0);
    SCALPEL_CHECK(f.size(1) == n, "cholesky_inverse of a non-square {}", shape_str(f.shape()));
    if (n == 0) return;
    const int info = LAPACKE_spotri_work(LAPACK_COL_MAJOR, upper ? 'L' : 'U', static_cast<lapack_int>(n), f.f32(),
                                         static_cast<lapack_int>(n));
    // info > 0 means a zero on the factor's diagonal, which a successful cholesky() cannot leave.
    SCALPEL_CHECK(info == 0, "spotri info {}", info);
    // potri wrote the triangle it was given: row-major upper (upper) or lower; mirror it.
    mirror_triangle(f.f32(), n, /*from_upper=*/upper);
  }

  void col_sq_norms(const Tensor& x, float alpha, float beta, Tensor& out) override {
    if (lowp::any({&x})) {
      lowp::F32Scope f(*this);
      return col_sq_norms(f.in(x), alpha, beta, out);
    }
    check_2d(x, "col_sq_norms x");
    check_host_f32(out, "col_sq_norms out");
    op_checks::col_sq_norms(x, out);
    const auto n = x.size(0), d = x.size(1);
    const float* xp = x.f32();
    float* op = out.f32();
    // Each thread owns a range of columns and walks all rows: contiguous reads, no reduction
    // between threads, so the sums do not depend on the thread count.
#pragma omp parallel
    {
      const int nt = omp_get_num_threads(), t = omp_get_thread_num();
      const std::int64_t c0 = d * t / nt, c1 = d * (t + 1) / nt;
      std::vector<double> acc(static_cast<std::size_t>(c1 - c0), 0.0);
      double* ap = acc.data();
      for (std::int64_t i = 0; i < n; ++i) {
        const float* r = xp + i * d + c0;
#pragma omp simd
        for (std::int64_t j = 0; j < c1 - c0; ++j) ap[j] += static_cast<double>(r[j]) * r[j];
      }
      // beta == 0: out is not read (it may be uninitialised), as BLAS treats C.
      for (std::int64_t j = c0; j < c1; ++j)
        op[j] = static_cast<float>((beta == 0.0f ? 0.0 : static_cast<double>(beta) * op[j]) +
                                   static_cast<double>(alpha) * ap[j - c0]);
    }
  }

  HessianPrep hessian_prepare(Tensor& h, Tensor* w, float percdamp) override {
    check_2d(h, "hessian_prepare H");
    if (w) check_2d(*w, "hessian_prepare W");
    op_checks::hessian_prepare(h, w);
    const auto d = h.size(0);
    float* hp = h.f32();
    std::vector<std::int64_t> dead;
    for (std::int64_t j = 0; j < d; ++j)
      if (hp[j * d + j] == 0.0f) {
        hp[j * d + j] = 1.0f;
        dead.push_back(j);
      }
    if (w && !dead.empty()) {
      float* wp = w->f32();
      const auto rows = w->size(0);
#pragma omp parallel for schedule(static)
      for (std::int64_t r = 0; r < rows; ++r)
        for (const auto j : dead) wp[r * d + j] = 0.0f;
    }
    double sum = 0;
    for (std::int64_t j = 0; j < d; ++j) sum += hp[j * d + j];
    // fp32 like the reference's percdamp * torch.mean(torch.diag(H)).
    const float damp = d ? static_cast<float>(percdamp * (sum / static_cast<double>(d))) : 0.0f;
    for (std::int64_t j = 0; j < d; ++j) hp[j * d + j] += damp;
    return {damp, static_cast<std::int64_t>(dead.size())};
  }

  void zero_dead_columns(const Tensor& h, Tensor& w) override {
    check_2d(h, "zero_dead_columns H");
    check_2d(w, "zero_dead_columns W");
    op_checks::hessian_prepare(h, &w);
    const auto d = h.size(0), rows = w.size(0);
    std::vector<std::int64_t> dead;
    for (std::int64_t j = 0; j < d; ++j)
      if (h.f32()[j * d + j] == 0.0f) dead.push_back(j);
    if (dead.empty()) return;
    float* wp = w.f32();
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r)
      for (const auto j : dead) wp[r * d + j] = 0.0f;
  }

  bool all_finite(const Tensor& t) override {
    SCALPEL_CHECK(t.device() == Device::cpu, "all_finite of a device tensor");
    const auto n = t.numel();
    // Exponent bits all ones = inf or NaN; an or-reduction over the bits vectorises, a
    // short-circuit && does not.
    std::uint32_t bad = 0;
    if (t.dtype() == DType::f32) {
      const auto* p = static_cast<const std::uint32_t*>(t.raw());
#pragma omp parallel for simd reduction(| : bad) schedule(static)
      for (std::int64_t i = 0; i < n; ++i) bad |= (p[i] & 0x7f800000u) == 0x7f800000u;
    } else {
      const auto* p = static_cast<const std::uint64_t*>(t.raw());
#pragma omp parallel for simd reduction(| : bad) schedule(static)
      for (std::int64_t i = 0; i < n; ++i)
        bad |= (p[i] & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
    }
    return bad == 0;
  }

  void prune_scores(const Tensor& w, const Tensor* col, Tensor& scores) override {
    check_2d(w, "prune_scores W");
    check_2d(scores, "prune_scores scores");
    if (col) check_host_f32(*col, "prune_scores column statistic");
    op_checks::prune_scores(w, col, scores);
    const auto rows = w.size(0), d = w.size(1);
    const float* wp = w.f32();
    float* sp = scores.f32();
    if (!col) {
#pragma omp parallel for simd schedule(static)
      for (std::int64_t i = 0; i < rows * d; ++i) sp[i] = std::fabs(wp[i]);
      return;
    }
    std::vector<float> root(static_cast<std::size_t>(d));
    for (std::int64_t j = 0; j < d; ++j) root[j] = std::sqrt(col->f32()[j]);
    const float* rp = root.data();
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) {
#pragma omp simd
      for (std::int64_t j = 0; j < d; ++j) sp[r * d + j] = std::fabs(wp[r * d + j]) * rp[j];
    }
  }

  SelectThreshold kth_threshold(const Tensor& scores, std::int64_t k) override {
    check_host_f32(scores, "kth_threshold scores");
    const auto n = scores.numel();
    op_checks::kth(k, n);
    if (k == 0) return {-std::numeric_limits<float>::infinity(), 0};
    const float* s = scores.f32();
    // Radix selection on order-preserving keys: a histogram of the top bits (16 for large n:
    // 1/128 of an octave per bin, so the k-th value's bin holds a fraction of a percent of
    // continuous scores; fewer for small n, whose histogram would cost more than the data),
    // then the keys of that one bin are gathered and partially sorted. Two reads of the data,
    // the second with a branch that is almost never taken.
    int log2n = 0;
    while (log2n < 62 && (std::int64_t{1} << (log2n + 1)) <= n) ++log2n;
    const int kBits = std::clamp(log2n - 3, 8, 16);
    const std::uint32_t kBins = 1u << kBits;
    const bool par = n > (1 << 16);  // below that, a parallel region costs more than it saves
    std::vector<std::int64_t> hist(kBins, 0);
#pragma omp parallel if (par)
    {
      std::vector<std::uint32_t> local(kBins, 0);  // a thread counts < 2^32 of the n <= 2^31 x threads keys
#pragma omp for schedule(static) nowait
      for (std::int64_t i = 0; i < n; ++i) ++local[order_key(s[i]) >> (32 - kBits)];
#pragma omp critical
      for (std::uint32_t b = 0; b < kBins; ++b) hist[b] += local[b];
    }
    std::int64_t below = 0;
    std::uint32_t bin = 0;
    for (; bin < kBins; ++bin) {
      if (below + hist[bin] >= k) break;
      below += hist[bin];
    }
    std::vector<std::uint32_t> cand;
    cand.reserve(static_cast<std::size_t>(hist[bin]));
#pragma omp parallel if (par)
    {
      std::vector<std::uint32_t> local;
#pragma omp for schedule(static) nowait
      for (std::int64_t i = 0; i < n; ++i) {
        const auto key = order_key(s[i]);
        if ((key >> (32 - kBits)) == bin) local.push_back(key);
      }
#pragma omp critical
      cand.insert(cand.end(), local.begin(), local.end());
    }
    const auto need = k - below;  // 1 <= need <= cand.size()
    std::nth_element(cand.begin(), cand.begin() + (need - 1), cand.end());
    const std::uint32_t vkey = cand[static_cast<std::size_t>(need - 1)];
    std::int64_t less = below, equal = 0;
    for (const auto c : cand) {
      less += c < vkey;
      equal += c == vkey;
    }
    // Taking every tie (the usual case: a unique k-th value) is said with the largest count, so
    // that mask_threshold needs no pass to order the ties.
    const auto take = k - less;
    return {key_value(vkey), take == equal ? std::numeric_limits<std::int64_t>::max() : take};
  }

  void mask_threshold(const Tensor& scores, const SelectThreshold& t, Tensor& mask, std::int64_t col0) override {
    check_2d(scores, "mask_threshold scores");
    check_mask(mask, "mask_threshold mask");
    const auto rows = scores.size(0), width = scores.size(1), mc = mask.size(1);
    op_checks::mask_threshold(scores, mask, col0);
    const float* s = scores.f32();
    std::uint8_t* m = mask.data<std::uint8_t>();
    const float v = t.value;
    // Ties (== v) are taken in row-major order: count them per row first, so that every row knows
    // how many ties the rows before it took, and the rows can then be masked in parallel.
    if (t.take_equal >= rows * width) {  // every tie is taken: prune <= v
#pragma omp parallel for schedule(static)
      for (std::int64_t r = 0; r < rows; ++r) {
        const float* sr = s + r * width;
        std::uint8_t* mr = m + r * mc + col0;
        for (std::int64_t j = 0; j < width; ++j) mr[j] = !(sr[j] <= v);
      }
      return;
    }
    std::vector<std::int64_t> first(static_cast<std::size_t>(rows) + 1, 0);
    if (t.take_equal > 0) {
#pragma omp parallel for schedule(static)
      for (std::int64_t r = 0; r < rows; ++r) {
        std::int64_t c = 0;
        for (std::int64_t j = 0; j < width; ++j) c += s[r * width + j] == v;
        first[r + 1] = c;
      }
      for (std::int64_t r = 0; r < rows; ++r) first[r + 1] += first[r];
    }
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* sr = s + r * width;
      std::uint8_t* mr = m + r * mc + col0;
      if (t.take_equal <= first[r]) {  // no ties left for this row
        for (std::int64_t j = 0; j < width; ++j) mr[j] = !(sr[j] < v);
      } else {
        std::int64_t seen = first[r];
        for (std::int64_t j = 0; j < width; ++j) {
          const bool eq = sr[j] == v;
          mr[j] = !(sr[j] < v || (eq && seen < t.take_equal));
          seen += eq;
        }
      }
    }
  }

  void mask_rows_smallest(const Tensor& scores, std::int64_t k, Tensor& mask) override {
    check_2d(scores, "mask_rows_smallest scores");
    check_mask(mask, "mask_rows_smallest mask");
    op_checks::same_shape(mask, scores, "scores");
    const auto rows = scores.size(0), d = scores.size(1);
    SCALPEL_CHECK(k >= 0 && k <= d, "mask_rows_smallest k {} of {}", k, d);
    const float* s = scores.f32();
    std::uint8_t* m = mask.data<std::uint8_t>();
#pragma omp parallel
    {
      std::vector<std::int32_t> idx(static_cast<std::size_t>(d));
#pragma omp for schedule(static)
      for (std::int64_t r = 0; r < rows; ++r) {
        const float* sr = s + r * d;
        std::uint8_t* mr = m + r * d;
        std::fill(mr, mr + d, std::uint8_t{1});
        if (k == 0) continue;
        for (std::int64_t j = 0; j < d; ++j) idx[j] = static_cast<std::int32_t>(j);
        // (score, column) order: what a stable ascending sort of the row gives.
        std::nth_element(idx.begin(), idx.begin() + (k - 1), idx.end(), [sr](std::int32_t a, std::int32_t b) {
          return sr[a] < sr[b] || (sr[a] == sr[b] && a < b);
        });
        for (std::int64_t j = 0; j < k; ++j) mr[idx[j]] = 0;
      }
    }
  }

  void mask_nm(const Tensor& scores, int n, int m, Tensor& mask) override {
    check_2d(scores, "mask_nm scores");
    check_mask(mask, "mask_nm mask");
    op_checks::same_shape(mask, scores, "scores");
    SCALPEL_CHECK(n > 0 && n < m, "mask_nm {}:{}", n, m);
    const auto rows = scores.size(0), d = scores.size(1);
    const float* s = scores.f32();
    std::uint8_t* mk = mask.data<std::uint8_t>();
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t g = 0; g < d; g += m) {
        const auto len = std::min<std::int64_t>(m, d - g);
        select_group(s + r * d + g, len, std::min<std::int64_t>(n, len), mk + r * d + g);
      }
  }

  void apply_mask(Tensor& w, const Tensor& mask) override {
    check_2d(w, "apply_mask W");
    check_mask(mask, "apply_mask mask");
    op_checks::same_shape(mask, w, "W");
    float* wp = w.f32();
    const std::uint8_t* m = mask.data<std::uint8_t>();
    const auto n = w.numel();
#pragma omp parallel for simd schedule(static)
    for (std::int64_t i = 0; i < n; ++i) wp[i] = m[i] ? wp[i] : 0.0f;
  }

  void diagonal(const Tensor& a, Tensor& out) override {
    op_checks::diagonal(a, out);
    const auto n = a.size(0);
    for (std::int64_t i = 0; i < n; ++i) out.f32()[i] = a.f32()[i * n + i];
  }

  void obs_scores(const Tensor& w, const Tensor& hinv, std::int64_t col0, Tensor& scores, const Tensor* hdiag) override {
    check_2d(w, "obs_scores W");
    check_2d(hinv, "obs_scores Hinv");
    check_2d(scores, "obs_scores scores");
    op_checks::obs_scores(w, hinv, col0, scores, hdiag);
    const auto rows = w.size(0), d = w.size(1), width = scores.size(1);
    const float* wp = w.f32();
    const float* hp = hinv.f32();
    std::vector<float> dd(static_cast<std::size_t>(width));
    for (std::int64_t j = 0; j < width; ++j) {
      const float u = hp[(col0 + j) * d + col0 + j];
      dd[j] = u * u;
    }
    const float* dp = dd.data();
    float* sp = scores.f32();
    const float* hd = hdiag ? hdiag->f32() + col0 : nullptr;
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* wr = wp + r * d + col0;
      if (hd) {
#pragma omp simd
        for (std::int64_t j = 0; j < width; ++j) sp[r * width + j] = wr[j] * wr[j] / dp[j] + wr[j] * wr[j] * hd[j];
      } else {
#pragma omp simd
        for (std::int64_t j = 0; j < width; ++j) sp[r * width + j] = wr[j] * wr[j] / dp[j];
      }
    }
  }

  void obs_sweep_block(Tensor& w, const Tensor& hinv, std::int64_t col0, std::int64_t width, int prune_n, int prune_m,
                       Tensor& mask, Tensor& err, Tensor& losses) override {
    check_2d(w, "obs_sweep W");
    check_2d(hinv, "obs_sweep Hinv");
    check_2d(err, "obs_sweep err");
    check_mask(mask, "obs_sweep mask");
    op_checks::obs_sweep(w, hinv, col0, width, prune_n, prune_m, mask, err, losses);
    const auto d = w.size(1);
    cpu::obs_sweep(w.f32() + col0, mask.data<std::uint8_t>() + col0, w.size(0), d, hinv.f32() + col0 * d + col0, width,
                   prune_n, prune_m, err.f32(), losses.f64());
  }

  void obs_lazy_update(Tensor& w, const Tensor& err, const Tensor& hinv, std::int64_t col0, std::int64_t row0,
                       std::int64_t total_rows) override {
    check_2d(w, "obs_lazy W");
    check_2d(err, "obs_lazy err");
    check_2d(hinv, "obs_lazy Hinv");
    op_checks::obs_lazy(w, err, hinv, col0);
    const auto rows = w.size(0), d = w.size(1), width = err.size(1), c1 = col0 + width;
    if (rows == 0 || c1 == d || width == 0) return;
    const auto total = total_rows > 0 ? total_rows : row0 + rows;
    SCALPEL_CHECK(row0 >= 0 && row0 + rows <= total, "obs_lazy_update: rows [{}, {}) of {}", row0, row0 + rows, total);
    cpu::det_gemm_rows<float>(row0, rows, total, d - c1, width, -1.0f, err.f32(), width, hinv.f32() + col0 * d + c1, d,
                              1.0f, w.f32() + c1, d);
  }

  void rowwise_dot(const Tensor& a, const Tensor& b, std::span<double> out) override {
    check_2d(a, "rowwise_dot A");
    check_2d(b, "rowwise_dot B");
    op_checks::rowwise_dot(a, b, out);
    const auto rows = a.size(0), d = a.size(1);
    const float* ap = a.f32();
    const float* bp = b.f32();
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) {
      double s = 0;
#pragma omp simd reduction(+ : s)
      for (std::int64_t j = 0; j < d; ++j) s += static_cast<double>(ap[r * d + j]) * bp[r * d + j];
      out[static_cast<std::size_t>(r)] = s;
    }
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) { return std::make_unique<CpuBackend>(threads); }

}  // namespace scalpel
