// Float64 reference kernels and comparison helpers shared by the numerical tests. Written
// independently of the backends (plain loops, double precision) so a backend bug cannot hide in
// both sides of a comparison.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "scalpel/core/tensor.hpp"

namespace scalpel::test {

using Vec = std::vector<double>;

// Tolerances by compute type, in one place. fp32 kernels over dot products of length k carry a
// relative error of about sqrt(k) * 2^-24 (random-sign accumulation) ~ 1e-6 for k ~ 1000; 2e-5
// leaves room for the larger worst case of ordered summation and exp/log rounding.
struct Tol {
  static constexpr double f32 = 2e-5;
  static constexpr double f32_deep = 1e-4;  // whole decoder layers: several kernels in a row
};

inline Vec random_vec(std::size_t n, std::uint64_t seed, double scale = 1.0) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> d(0.0, scale);
  Vec v(n);
  for (auto& x : v) x = static_cast<double>(static_cast<float>(d(g)));  // representable in fp32
  return v;
}

// X Xᵀ/k + 0.1 I for a random X [n, 2n]: a symmetric positive definite matrix (a Hessian with
// damping; condition number about 60), rounded to fp32 values.
inline Vec random_spd(std::int64_t n, std::uint64_t seed) {
  const std::int64_t k = 2 * n;
  const Vec x = random_vec(static_cast<std::size_t>(n * k), seed);
  Vec h(static_cast<std::size_t>(n * n));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (std::int64_t q = 0; q < k; ++q) s += x[i * k + q] * x[j * k + q];
      h[i * n + j] = static_cast<double>(static_cast<float>(s / k + (i == j ? 0.1 : 0.0)));
    }
  return h;
}

inline Tensor to_tensor(const Vec& v, Shape shape) {
  Tensor t = Tensor::empty(std::move(shape));
  for (std::size_t i = 0; i < v.size(); ++i) t.f32()[i] = static_cast<float>(v[i]);
  return t;
}

inline Vec to_vec(const Tensor& t) {
  Vec v(static_cast<std::size_t>(t.numel()));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = t.f32()[i];
  return v;
}

// ||a - b||_F / ||b||_F.
inline double rel_err(const Vec& a, const Vec& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

#define EXPECT_REL_NEAR(got, want, tol)                                                       \
  do {                                                                                        \
    const double e_ = ::scalpel::test::rel_err((got), (want));                                \
    EXPECT_LT(e_, (tol)) << "relative Frobenius error " << e_ << " (tolerance " << (tol) << ")"; \
  } while (0)

// H[d, d] = scale * x^T x for x [n, d] (both triangles): the Hessian a syrk accumulates.
inline Vec ref_gram(const Vec& x, std::int64_t n, std::int64_t d, double scale) {
  Vec h(static_cast<std::size_t>(d * d), 0.0);
  for (std::int64_t i = 0; i < d; ++i)
    for (std::int64_t j = 0; j < d; ++j)
      for (std::int64_t t = 0; t < n; ++t) h[i * d + j] += scale * x[t * d + i] * x[t * d + j];
  return h;
}

// y[n, out] = x[n, in] W[out, in]^T + b
inline Vec ref_linear(const Vec& x, const Vec& w, const Vec* b, std::int64_t n, std::int64_t in, std::int64_t out) {
  Vec y(static_cast<std::size_t>(n * out));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t o = 0; o < out; ++o) {
      double s = b ? (*b)[o] : 0.0;
      for (std::int64_t k = 0; k < in; ++k) s += x[i * in + k] * w[o * in + k];
      y[i * out + o] = s;
    }
  return y;
}

inline Vec ref_layer_norm(const Vec& x, const Vec& w, const Vec& b, std::int64_t n, std::int64_t d, double eps) {
  Vec y(x.size());
  for (std::int64_t i = 0; i < n; ++i) {
    double m = 0, v = 0;
    for (std::int64_t j = 0; j < d; ++j) m += x[i * d + j];
    m /= d;
    for (std::int64_t j = 0; j < d; ++j) v += (x[i * d + j] - m) * (x[i * d + j] - m);
    v /= d;
    for (std::int64_t j = 0; j < d; ++j) y[i * d + j] = (x[i * d + j] - m) / std::sqrt(v + eps) * w[j] + b[j];
  }
  return y;
}

inline Vec ref_rms_norm(const Vec& x, const Vec& w, std::int64_t n, std::int64_t d, double eps) {
  Vec y(x.size());
  for (std::int64_t i = 0; i < n; ++i) {
    double s = 0;
    for (std::int64_t j = 0; j < d; ++j) s += x[i * d + j] * x[i * d + j];
    const double r = 1.0 / std::sqrt(s / d + eps);
    for (std::int64_t j = 0; j < d; ++j) y[i * d + j] = x[i * d + j] * r * w[j];
  }
  return y;
}

// HF rotate-half rotary embedding with positions t % seqlen, theta base.
inline void ref_rope(Vec& x, std::int64_t rows, std::int64_t seqlen, std::int64_t heads, std::int64_t hd, double theta) {
  const auto half = hd / 2;
  for (std::int64_t r = 0; r < rows; ++r) {
    const double p = static_cast<double>(r % seqlen);
    for (std::int64_t h = 0; h < heads; ++h) {
      double* v = x.data() + r * heads * hd + h * hd;
      for (std::int64_t i = 0; i < half; ++i) {
        const double f = p / std::pow(theta, 2.0 * i / hd);
        const double a = v[i], b = v[i + half];
        v[i] = a * std::cos(f) - b * std::sin(f);
        v[i + half] = b * std::cos(f) + a * std::sin(f);
      }
    }
  }
}

// Causal softmax attention with GQA; q [B*T, H*hd], k/v [B*T, KV*hd].
inline Vec ref_attention(const Vec& q, const Vec& k, const Vec& v, std::int64_t B, std::int64_t T, std::int64_t H,
                         std::int64_t KV, std::int64_t hd, double scale) {
  Vec out(q.size(), 0.0);
  const auto g = H / KV;
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t i = 0; i < T; ++i) {
        std::vector<double> s(static_cast<std::size_t>(i + 1));
        double m = -1e300;
        for (std::int64_t j = 0; j <= i; ++j) {
          double d = 0;
          for (std::int64_t c = 0; c < hd; ++c)
            d += q[(b * T + i) * H * hd + h * hd + c] * k[(b * T + j) * KV * hd + (h / g) * hd + c];
          s[j] = d * scale;
          m = std::max(m, s[j]);
        }
        double z = 0;
        for (auto& e : s) z += (e = std::exp(e - m));
        for (std::int64_t c = 0; c < hd; ++c) {
          double acc = 0;
          for (std::int64_t j = 0; j <= i; ++j) acc += s[j] / z * v[(b * T + j) * KV * hd + (h / g) * hd + c];
          out[(b * T + i) * H * hd + h * hd + c] = acc;
        }
      }
  return out;
}

}  // namespace scalpel::test
