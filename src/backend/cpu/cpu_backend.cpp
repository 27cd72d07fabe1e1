// CPU backend: OpenBLAS for the matrix work (sgemm, ssyrk), OpenMP for the row-wise and
// elementwise loops. Reductions inside a row (norms, softmax, NLL) accumulate in double so that
// the fp32 results sit within a few ulps of a float64 reference.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "scalpel/backend/backend.hpp"
#include "scalpel/core/error.hpp"

namespace scalpel {
namespace {

// exp for x <= 0 (softmax and log-sum-exp after subtracting the maximum), written so that the
// compiler vectorises the loops that call it: Cody-Waite reduction x = n ln2 + r and the Cephes
// degree-5 polynomial, within 2 ulp of expf on [-87, 0]; below -87 it returns ~1e-38, which is 0
// next to the row's maximum term 1. glibc's expf is not vectorised without -ffast-math.
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const std::int32_t bits = (static_cast<std::int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return y * scale;
}

void check_host_f32(const Tensor& t, const char* what) {
  SCALPEL_CHECK(t.defined() && t.device() == Device::cpu && t.dtype() == DType::f32,
                "{}: expected a host F32 tensor", what);
}

void check_2d(const Tensor& t, const char* what) {
  check_host_f32(t, what);
  SCALPEL_CHECK(t.dim() == 2, "{}: expected 2-D, got {}", what, shape_str(t.shape()));
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
  Tensor upload(const Tensor& host) override { return host.dtype() == DType::f32 ? host.clone() : host.to_f32(); }
  Tensor download(const Tensor& t) override { return t; }
  void copy(const Tensor& src, Tensor& dst) override {
    SCALPEL_CHECK(src.nbytes() == dst.nbytes() && src.dtype() == dst.dtype(), "copy {} -> {}",
                  shape_str(src.shape()), shape_str(dst.shape()));
    std::memcpy(dst.raw(), src.raw(), src.nbytes());
  }

  void gemm(Trans ta, Trans tb, float alpha, const Tensor& a, const Tensor& b, float beta,
            Tensor& c) override {
    check_2d(a, "gemm A");
    check_2d(b, "gemm B");
    check_2d(c, "gemm C");
    const auto m = ta == Trans::no ? a.size(0) : a.size(1);
    const auto k = ta == Trans::no ? a.size(1) : a.size(0);
    const auto kb = tb == Trans::no ? b.size(0) : b.size(1);
    const auto n = tb == Trans::no ? b.size(1) : b.size(0);
    SCALPEL_CHECK(k == kb && c.size(0) == m && c.size(1) == n, "gemm shapes {}{} x {}{} -> {}",
                  shape_str(a.shape()), ta == Trans::yes ? "^T" : "", shape_str(b.shape()),
                  tb == Trans::yes ? "^T" : "", shape_str(c.shape()));
    if (m == 0 || n == 0) return;
    cblas_sgemm(CblasRowMajor, ta == Trans::yes ? CblasTrans : CblasNoTrans,
                tb == Trans::yes ? CblasTrans : CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
                static_cast<int>(k), alpha, a.f32(), static_cast<int>(a.size(1)), b.f32(),
                static_cast<int>(b.size(1)), beta, c.f32(), static_cast<int>(c.size(1)));
  }

  void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override {
    check_2d(x, "linear x");
    check_2d(w, "linear W");
    check_2d(y, "linear y");
    const auto n = x.size(0), out = w.size(0);
    SCALPEL_CHECK(x.size(1) == w.size(1) && y.size(0) == n && y.size(1) == out,
                  "linear x {} W {} y {}", shape_str(x.shape()), shape_str(w.shape()), shape_str(y.shape()));
    float beta = 0.0f;
    if (bias) {
      check_host_f32(*bias, "linear bias");
      SCALPEL_CHECK(bias->numel() == out, "bias {} for {} outputs", shape_str(bias->shape()), out);
      const float* bp = bias->f32();
      float* yp = y.f32();
#pragma omp parallel for schedule(static)
      for (std::int64_t i = 0; i < n; ++i) std::memcpy(yp + i * out, bp, out * sizeof(float));
      beta = 1.0f;
    }
    gemm(Trans::no, Trans::yes, 1.0f, x, w, beta, y);
  }

  void syrk(float alpha, const Tensor& x, float beta, Tensor& h) override {
    check_2d(x, "syrk X");
    check_2d(h, "syrk H");
    const auto n = x.size(0), d = x.size(1);
    SCALPEL_CHECK(h.size(0) == d && h.size(1) == d, "syrk X {} H {}", shape_str(x.shape()),
                  shape_str(h.shape()));
    float* hp = h.f32();
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, static_cast<int>(d), static_cast<int>(n),
                alpha, x.f32(), static_cast<int>(d), beta, hp, static_cast<int>(d));
    // Mirror the upper triangle so consumers may read either.
#pragma omp parallel for schedule(dynamic, 16)
    for (std::int64_t i = 0; i < d; ++i)
      for (std::int64_t j = 0; j < i; ++j) hp[i * d + j] = hp[j * d + i];
  }

  void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, Tensor& out) override {
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
    float* yp = y.f32();
    const float* xp = x.f32();
    const auto n = y.numel();
#pragma omp parallel for simd schedule(static)
    for (std::int64_t i = 0; i < n; ++i) yp[i] += xp[i];
  }

  void scale(Tensor& y, float alpha) override {
    float* yp = y.f32();
    const auto n = y.numel();
#pragma omp parallel for simd schedule(static)
    for (std::int64_t i = 0; i < n; ++i) yp[i] *= alpha;
  }

  void relu(Tensor& y) override {
    float* yp = y.f32();
    const auto n = y.numel();
#pragma omp parallel for simd schedule(static)
    for (std::int64_t i = 0; i < n; ++i) yp[i] = yp[i] > 0.0f ? yp[i] : 0.0f;
  }

  void gelu(Tensor& y) override {
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
    const float* g = gate.f32();
    const float* u = up.f32();
    float* o = out.f32();
    const auto n = out.numel();
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }

  void rope(Tensor& x, std::int64_t seqlen, std::int64_t heads, std::int64_t head_dim,
            const Tensor& cos, const Tensor& sin) override {
    check_2d(x, "rope x");
    SCALPEL_CHECK(x.size(1) == heads * head_dim && x.size(0) % seqlen == 0 && head_dim % 2 == 0,
                  "rope x {} heads {} head_dim {} seqlen {}", shape_str(x.shape()), heads, head_dim, seqlen);
    SCALPEL_CHECK(cos.size(0) >= seqlen && cos.size(1) == head_dim, "rope table {}", shape_str(cos.shape()));
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
    const auto T = s.seqlen, H = s.heads, KV = s.kv_heads, hd = s.head_dim;
    SCALPEL_CHECK(H % KV == 0, "heads {} not a multiple of kv heads {}", H, KV);
    SCALPEL_CHECK(q.size(0) == s.batch * T && q.size(1) == H * hd && k.size(1) == KV * hd &&
                      v.size(1) == KV * hd && k.size(0) == q.size(0) && out.numel() == q.numel(),
                  "attention q {} k {} v {}", shape_str(q.shape()), shape_str(k.shape()), shape_str(v.shape()));
    if (probs)
      SCALPEL_CHECK(probs->numel() == s.batch * H * T * T, "attention probs {}", shape_str(probs->shape()));
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
    check_2d(table, "embedding table");
    const auto vocab = table.size(0), d = table.size(1);
    SCALPEL_CHECK(out.numel() == static_cast<std::int64_t>(ids.size()) * d, "embedding out {}",
                  shape_str(out.shape()));
    const float* tp = table.f32();
    float* op = out.f32();
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] >= vocab)
        SCALPEL_INPUT_ERROR("token id {} at position {} is outside the vocabulary of {}", ids[i], i, vocab);
      std::memcpy(op + static_cast<std::int64_t>(i) * d, tp + static_cast<std::int64_t>(ids[i]) * d,
                  d * sizeof(float));
    }
  }

  void nll(const Tensor& logits, std::span<const std::int32_t> targets, std::span<double> out) override {
    check_2d(logits, "nll logits");
    const auto n = logits.size(0), V = logits.size(1);
    SCALPEL_CHECK(static_cast<std::int64_t>(targets.size()) == n && static_cast<std::int64_t>(out.size()) == n,
                  "nll: {} rows, {} targets", n, targets.size());
    const float* lp = logits.f32();
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) {
      const float* r = lp + i * V;
      float m = r[0];
      for (std::int64_t j = 1; j < V; ++j) m = std::max(m, r[j]);
      // fp32 exponentials (vectorised), summed in fp32 chunks of 256 and then in double: each
      // term carries 2^-24 relative error, far below what the fp32 logits themselves carry.
      double sum = 0;
      for (std::int64_t j0 = 0; j0 < V; j0 += 256) {
        const std::int64_t j1 = std::min(V, j0 + 256);
        float part = 0;
#pragma omp simd reduction(+ : part)
        for (std::int64_t j = j0; j < j1; ++j) part += exp_nonpositive(r[j] - m);
        sum += part;
      }
      const auto t = targets[static_cast<std::size_t>(i)];
      out[static_cast<std::size_t>(i)] = (m + std::log(sum)) - static_cast<double>(r[t]);
    }
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) { return std::make_unique<CpuBackend>(threads); }

}  // namespace scalpel
