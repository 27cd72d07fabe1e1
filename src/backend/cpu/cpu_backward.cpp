// Backward kernels of the CPU backend: the transposed Jacobians of the forward's norms,
// activations, attention and cross-entropy. Derivations are in the comments beside each; the
// tests (tests/backend/test_backward_ops.cpp) check each against float64 finite differences.
#include "cpu_backward.hpp"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "scalpel/core/error.hpp"
#include "../op_checks.hpp"
#include "fast_exp.hpp"

namespace scalpel::cpu {
namespace {

void check_same(const Tensor& a, const Tensor& b, const char* what) {
  SCALPEL_CHECK(a.defined() && b.defined() && a.device() == Device::cpu && b.device() == Device::cpu &&
                    a.dtype() == DType::f32 && b.dtype() == DType::f32 && a.numel() == b.numel(),
                "{}: host F32 tensors of equal size expected, got {} and {}", what, shape_str(a.shape()),
                shape_str(b.shape()));
}

}  // namespace

// y = (x - μ)·r·w + b with r = (var + eps)^-½. With ĝ = dy·w and x̂ = (x - μ)·r:
// dx = r·(ĝ - mean(ĝ) - x̂·mean(ĝ·x̂)).
void layer_norm_backward(const Tensor& x, const Tensor* w, float eps, const Tensor& dy, Tensor& dx) {
  check_same(x, dy, "layer_norm_backward");
  check_same(x, dx, "layer_norm_backward dx");
  SCALPEL_CHECK(x.dim() == 2, "layer_norm_backward x {}", shape_str(x.shape()));
  const auto n = x.size(0), d = x.size(1);
  if (w) SCALPEL_CHECK(w->numel() == d, "layer_norm_backward w {}", shape_str(w->shape()));
  const float* wp = w ? w->f32() : nullptr;
#pragma omp parallel
  {
    std::vector<double> g(static_cast<std::size_t>(d)), xh(static_cast<std::size_t>(d));
#pragma omp for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) {
      const float* r = x.f32() + i * d;
      const float* gy = dy.f32() + i * d;
      double mean = 0, var = 0;
      for (std::int64_t j = 0; j < d; ++j) mean += r[j];
      mean /= static_cast<double>(d);
      for (std::int64_t j = 0; j < d; ++j) var += (r[j] - mean) * (r[j] - mean);
      const double inv = 1.0 / std::sqrt(var / static_cast<double>(d) + eps);
      double mg = 0, mgx = 0;
      for (std::int64_t j = 0; j < d; ++j) {
        g[j] = wp ? static_cast<double>(gy[j]) * wp[j] : gy[j];
        xh[j] = (r[j] - mean) * inv;
        mg += g[j];
        mgx += g[j] * xh[j];
      }
      mg /= static_cast<double>(d);
      mgx /= static_cast<double>(d);
      float* o = dx.f32() + i * d;
      for (std::int64_t j = 0; j < d; ++j) o[j] = static_cast<float>(inv * (g[j] - mg - xh[j] * mgx));
    }
  }
}

// y = w·x·r with r = (mean(x²) + eps)^-½. With ĝ = dy·w: dx = r·ĝ - x·r³·mean(ĝ·x).
void rms_norm_backward(const Tensor& x, const Tensor& w, float eps, const Tensor& dy, Tensor& dx) {
  check_same(x, dy, "rms_norm_backward");
  check_same(x, dx, "rms_norm_backward dx");
  SCALPEL_CHECK(x.dim() == 2 && w.numel() == x.size(1), "rms_norm_backward x {} w {}", shape_str(x.shape()),
                shape_str(w.shape()));
  const auto n = x.size(0), d = x.size(1);
  const float* wp = w.f32();
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    const float* r = x.f32() + i * d;
    const float* gy = dy.f32() + i * d;
    double ss = 0, gx = 0;
    for (std::int64_t j = 0; j < d; ++j) {
      ss += static_cast<double>(r[j]) * r[j];
      gx += static_cast<double>(gy[j]) * wp[j] * r[j];
    }
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
    const double c = inv * inv * inv * gx / static_cast<double>(d);
    float* o = dx.f32() + i * d;
    for (std::int64_t j = 0; j < d; ++j) o[j] = static_cast<float>(inv * gy[j] * wp[j] - c * r[j]);
  }
}

void relu_backward(const Tensor& pre, Tensor& dy) {
  check_same(pre, dy, "relu_backward");
  const float* p = pre.f32();
  float* g = dy.f32();
  const auto n = dy.numel();
#pragma omp parallel for simd schedule(static)
  for (std::int64_t i = 0; i < n; ++i) g[i] = p[i] > 0.0f ? g[i] : 0.0f;
}

// gelu(v) = ½v(1 + tanh u), u = c(v + 0.044715 v³): gelu' = ½(1 + tanh u) + ½v(1 - tanh² u)·c(1 + 3·0.044715 v²).
void gelu_backward(const Tensor& pre, Tensor& dy) {
  check_same(pre, dy, "gelu_backward");
  const double c = std::sqrt(2.0 / M_PI);
  const float* p = pre.f32();
  float* g = dy.f32();
  const auto n = dy.numel();
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    const double v = p[i], t = std::tanh(c * (v + 0.044715 * v * v * v));
    const double dg = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * v * v);
    g[i] = static_cast<float>(g[i] * dg);
  }
}

// out = silu(g)·u, silu(g) = g·σ(g): dup = dout·silu(g); dgate = dout·u·σ(g)(1 + g(1 - σ(g))).
void silu_mul_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor& dgate, Tensor& dup) {
  check_same(gate, up, "silu_mul_backward");
  check_same(gate, dout, "silu_mul_backward dout");
  check_same(gate, dgate, "silu_mul_backward dgate");
  check_same(gate, dup, "silu_mul_backward dup");
  const float* g = gate.f32();
  const float* u = up.f32();
  const float* d = dout.f32();
  float* dg = dgate.f32();
  float* du = dup.f32();
  const auto n = gate.numel();
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    const double gi = g[i], sig = 1.0 / (1.0 + std::exp(-gi)), di = d[i];
    const double ui = u[i];
    dg[i] = static_cast<float>(di * ui * sig * (1.0 + gi * (1.0 - sig)));
    du[i] = static_cast<float>(di * gi * sig);
  }
}

// Per (sequence, head), with P the kept probabilities and O = P·V:
//   dV += Pᵀ·dO;  dP = dO·Vᵀ;  dS = P ∘ (dP - rowsum(P ∘ dP));  dQ = scale·dS·K;  dK += scale·dSᵀ·Q.
// Query rows go in blocks of 64 that only meet the keys up to their last row (the causal half),
// as the forward does. Tasks are (sequence, kv head), looping over the query heads that share it,
// so the sums into a shared dK/dV never race.
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs, const Tensor& dout,
                        const AttentionShape& s, Tensor& dq, Tensor& dk, Tensor& dv) {
  op_checks::attention(q, k, v, s, dout, &probs);
  SCALPEL_CHECK(dq.numel() == q.numel() && dk.numel() == k.numel() && dv.numel() == v.numel(),
                "attention_backward gradient shapes");
  const auto T = s.seqlen, H = s.heads, KV = s.kv_heads, hd = s.head_dim, group = H / KV;
  const int ldq = static_cast<int>(H * hd), ldk = static_cast<int>(KV * hd), t = static_cast<int>(T),
            h_d = static_cast<int>(hd);
  constexpr std::int64_t kRows = 64;
  std::fill(dk.f32(), dk.f32() + dk.numel(), 0.0f);
  std::fill(dv.f32(), dv.f32() + dv.numel(), 0.0f);
#pragma omp parallel
  {
    std::vector<float> dp(static_cast<std::size_t>(kRows * T));
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (std::int64_t b = 0; b < s.batch; ++b) {
      for (std::int64_t kvh = 0; kvh < KV; ++kvh) {
        const float* kh = k.f32() + b * T * ldk + kvh * hd;
        const float* vh = v.f32() + b * T * ldk + kvh * hd;
        float* dkh = dk.f32() + b * T * ldk + kvh * hd;
        float* dvh = dv.f32() + b * T * ldk + kvh * hd;
        for (std::int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
          const float* p = probs.f32() + (b * H + h) * T * T;
          const float* qh = q.f32() + b * T * ldq + h * hd;
          const float* doh = dout.f32() + b * T * ldq + h * hd;
          float* dqh = dq.f32() + b * T * ldq + h * hd;
          for (std::int64_t i0 = 0; i0 < T; i0 += kRows) {
            const std::int64_t i1 = std::min(T, i0 + kRows);
            const int rows = static_cast<int>(i1 - i0), keys = static_cast<int>(i1);
            const float* pb = p + i0 * T;
            // dV[0:i1] += P[i0:i1, 0:i1]ᵀ dO[i0:i1];  dP = dO[i0:i1] V[0:i1]ᵀ.
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, keys, h_d, rows, 1.0f, pb, t, doh + i0 * ldq, ldq,
                        1.0f, dvh, ldk);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, h_d, 1.0f, doh + i0 * ldq, ldq, vh, ldk,
                        0.0f, dp.data(), keys);
            for (std::int64_t i = i0; i < i1; ++i) {
              const float* pr = p + i * T;
              float* dr = dp.data() + (i - i0) * keys;
              double dot = 0;
              for (std::int64_t j = 0; j <= i; ++j) dot += static_cast<double>(pr[j]) * dr[j];
              const auto c = static_cast<float>(dot);
              for (std::int64_t j = 0; j <= i; ++j) dr[j] = pr[j] * (dr[j] - c);
              std::fill(dr + i + 1, dr + keys, 0.0f);
            }
            // dQ[i0:i1] = scale dS K[0:i1];  dK[0:i1] += scale dSᵀ Q[i0:i1].
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, h_d, keys, s.scale, dp.data(), keys, kh, ldk,
                        0.0f, dqh + i0 * ldq, ldq);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, keys, h_d, rows, s.scale, dp.data(), keys,
                        qh + i0 * ldq, ldq, 1.0f, dkh, ldk);
          }
        }
      }
    }
  }
}

// d(-log softmax(z)_t)/dz = softmax(z) - onehot(t).
void nll_backward(Tensor& logits, std::span<const std::int32_t> targets, float scale, std::span<double> loss) {
  SCALPEL_CHECK(logits.dim() == 2 && logits.dtype() == DType::f32 && logits.device() == Device::cpu,
                "nll_backward logits {}", shape_str(logits.shape()));
  const auto n = logits.size(0), V = logits.size(1);
  SCALPEL_CHECK(static_cast<std::int64_t>(targets.size()) == n && static_cast<std::int64_t>(loss.size()) == n,
                "nll_backward: {} targets, {} losses for {} rows", targets.size(), loss.size(), n);
  for (const auto t : targets) SCALPEL_CHECK(t < V, "nll_backward target {} of vocab {}", t, V);
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    float* r = logits.f32() + i * V;
    const auto t = targets[static_cast<std::size_t>(i)];
    if (t < 0) {
      std::fill(r, r + V, 0.0f);
      loss[static_cast<std::size_t>(i)] = 0.0;
      continue;
    }
    const float m = *std::max_element(r, r + V), zt = r[t];
    // One pass of fp32 exponentials (vectorised, 2 ulp) kept in place and summed in fp32 chunks
    // of 256, then in double (as the forward's nll); then one scaling pass.
    double sum = 0;
    for (std::int64_t j0 = 0; j0 < V; j0 += 256) {
      const std::int64_t j1 = std::min(V, j0 + 256);
      float part = 0;
#pragma omp simd reduction(+ : part)
      for (std::int64_t j = j0; j < j1; ++j) {
        r[j] = exp_nonpositive(r[j] - m);
        part += r[j];
      }
      sum += part;
    }
    loss[static_cast<std::size_t>(i)] = m + std::log(sum) - static_cast<double>(zt);
    const auto f = static_cast<float>(scale / sum);
#pragma omp simd
    for (std::int64_t j = 0; j < V; ++j) r[j] *= f;
    r[t] -= scale;
  }
}

}  // namespace scalpel::cpu
