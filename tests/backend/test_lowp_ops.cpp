// The low-precision forward's ops (backend.hpp's [lp]: f16 and bf16 activations) against a float64
// reference of the precision model: inputs are 2-byte values, the op is computed exactly (float64)
// from them, and the result is rounded once to the dtype. A backend's fp32 arithmetic may move a
// value across a rounding midpoint, so each element may differ from the rounded reference by at
// most half a 2-byte ulp of the exact value plus the fp32 error of its computation (`rel` times the
// magnitude of the terms that formed it). One body for every backend and both dtypes.
#include <gtest/gtest.h>

#include <cmath>
#include <tuple>

#include "../common/backends.hpp"
#include "../common/reference.hpp"
#include "scalpel/backend/backend.hpp"
#include "scalpel/core/error.hpp"

namespace scalpel::test {
namespace {

Vec rounded(Vec v, DType dt) {
  for (auto& x : v) x = round_to(dt, static_cast<float>(x));
  return v;
}

// The spacing of dt's values around |x| (its subnormal spacing near 0).
double ulp(DType dt, double x) {
  const int mant = dt == DType::f16 ? 10 : 7;
  const int min_exp = dt == DType::f16 ? -14 : -126;
  const int e = x == 0 ? min_exp : std::max(min_exp, static_cast<int>(std::floor(std::log2(std::fabs(x)))));
  return std::ldexp(1.0, e - mant);
}

// Every got[i] within half an ulp of want[i] (exact) plus rel * mag[i].
void expect_rounded(const Vec& got, const Vec& want, const Vec& mag, DType dt, double rel) {
  ASSERT_EQ(got.size(), want.size());
  std::size_t bad = 0, first = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double bound = 0.5 * ulp(dt, want[i]) + rel * mag[i];
    if (!(std::fabs(got[i] - want[i]) <= bound) && bad++ == 0) first = i;
  }
  EXPECT_EQ(bad, 0u) << "first at " << first << ": got " << got[first] << ", exact " << want[first] << " ("
                     << dtype_name(dt) << ")";
}

Vec abs_vec(Vec v) {
  for (auto& x : v) x = std::fabs(x);
  return v;
}

class LowpOps : public ::testing::TestWithParam<std::tuple<std::string, DType>> {
 protected:
  void SetUp() override {
    SCALPEL_BACKEND_OR_SKIP(be, std::get<0>(GetParam()), 2);
    dt = std::get<1>(GetParam());
  }
  // A device tensor of dtype dt holding v (whose values must be representable in it).
  Tensor low(const Vec& v, Shape s) {
    Tensor f = to_tensor(v, std::move(s)), h = Tensor::empty(f.shape(), dt);
    convert_from_f32(dt, f.f32(), h.raw(), static_cast<std::size_t>(f.numel()));
    return be->upload_exact(h);
  }
  Tensor out(Shape s) { return be->empty(s, dt); }
  Vec down(const Tensor& t) {
    EXPECT_EQ(t.dtype(), dt);
    return to_vec(be->download(t).to_f32());
  }
  Vec rnd(std::size_t n, std::uint64_t seed, double scale = 1.0) { return rounded(random_vec(n, seed, scale), dt); }

  std::unique_ptr<Backend> be;
  DType dt = DType::f16;
};

TEST_P(LowpOps, ConvertRoundsToNearestEvenAsTheHostDoes) {
  // Ties, values that round up into the next binade, subnormals, overflow, infinities, NaN.
  Vec v{1.0, 1.0 + std::ldexp(1.0, -11), 1.0 + 3 * std::ldexp(1.0, -11), 1.0 + std::ldexp(1.0, -8),
        -2047.5, 65519.0, 65520.0, 1e6, std::ldexp(1.0, -25), std::ldexp(3.0, -25), std::ldexp(1.0, -130),
        -0.0, 3.0e38, INFINITY, -INFINITY};
  Vec r = random_vec(4096, 1, 100.0);
  v.insert(v.end(), r.begin(), r.end());
  const auto n = static_cast<std::int64_t>(v.size());
  Tensor src = be->upload(to_tensor(v, {n})), dst = out({n}), back = be->empty({n});
  be->convert(src, dst);
  be->convert(dst, back);
  const Tensor host = be->download(dst), wide = be->download(back);
  for (std::int64_t i = 0; i < n; ++i) {
    const float x = static_cast<float>(v[i]);
    const auto want = dt == DType::f16 ? f32_to_f16(x) : f32_to_bf16(x);
    ASSERT_EQ(static_cast<const std::uint16_t*>(host.raw())[i], want) << "element " << i << " = " << x;
    ASSERT_EQ(wide.f32()[i], round_to(dt, x)) << "element " << i;
  }
  // NaN stays NaN.
  Tensor nan = be->upload(to_tensor({NAN}, {1})), nan_low = out({1}), nan_back = be->empty({1});
  be->convert(nan, nan_low);
  be->convert(nan_low, nan_back);
  EXPECT_TRUE(std::isnan(be->download(nan_back).f32()[0]));
  // Between the two 2-byte types (through fp32).
  const DType other = dt == DType::f16 ? DType::bf16 : DType::f16;
  Tensor o = be->empty({n}, other), o_back = be->empty({n});
  be->convert(dst, o);
  be->convert(o, o_back);
  const Tensor ob = be->download(o_back);
  for (std::int64_t i = 0; i < n; ++i) {
    const float want = round_to(other, round_to(dt, static_cast<float>(v[i])));
    if (std::isnan(want)) continue;
    ASSERT_EQ(ob.f32()[i], want) << "element " << i;
  }
}

TEST_P(LowpOps, LinearSumsInFp32AndRoundsOnce) {
  const std::int64_t n = 37, in = 200, out_f = 71;
  const auto x = rnd(n * in, 1), w = rnd(out_f * in, 2, 0.1), b = rnd(out_f, 3);
  Tensor y = out({n, out_f});
  const Tensor bt = low(b, {out_f});
  be->linear(low(x, {n, in}), low(w, {out_f, in}), &bt, y);
  const Vec mag = ref_linear(abs_vec(x), abs_vec(w), nullptr, n, in, out_f);
  expect_rounded(down(y), ref_linear(x, w, &b, n, in, out_f), mag, dt, 1e-6);
}

TEST_P(LowpOps, LinearRefusesMixedTwoByteTypes) {
  const DType other = dt == DType::f16 ? DType::bf16 : DType::f16;
  Tensor x = low(rnd(8, 1), {2, 4}), y = out({2, 3});
  Tensor w = be->zeros({3, 4}, other);
  EXPECT_THROW(be->linear(x, w, nullptr, y), Error);
}

TEST_P(LowpOps, SyrkOfTwoByteInputsIsTheFp32Hessian) {
  const std::int64_t n = 300, d = 45;
  const auto x = rnd(n * d, 7);
  const Vec want = ref_gram(x, n, d, 2.0 / n);
  Tensor h = be->zeros({d, d});
  be->syrk(2.0f / n, low(x, {n, d}), 0.0f, h);
  EXPECT_EQ(h.dtype(), DType::f32);
  // fp32 sums of exact products: the fp32 tolerance of the fp32 syrk test.
  EXPECT_REL_NEAR(to_vec(be->download(h)), want, Tol::f32);
  Tensor norms = be->empty({d});
  be->col_sq_norms(low(x, {n, d}), 1.0f, 0.0f, norms);
  Vec wn(static_cast<std::size_t>(d));
  for (std::int64_t j = 0; j < d; ++j) wn[j] = want[j * d + j] * n / 2.0;
  EXPECT_REL_NEAR(to_vec(be->download(norms)), wn, Tol::f32);
}

TEST_P(LowpOps, NormsRoundOnce) {
  const std::int64_t n = 13, d = 96;
  const auto x = rnd(n * d, 8, 3.0), w = rnd(d, 9), b = rnd(d, 10);
  const Tensor wt = low(w, {d}), bt = low(b, {d});
  Tensor y = out({n, d});
  be->layer_norm(low(x, {n, d}), &wt, &bt, 1e-5f, y);
  const Vec ln = ref_layer_norm(x, w, b, n, d, 1e-5);
  expect_rounded(down(y), ln, abs_vec(ln), dt, 1e-5);
  Tensor xr = low(x, {n, d});
  be->rms_norm(xr, wt, 1e-6f, xr);  // in place, as the decoder calls it
  const Vec rms = ref_rms_norm(x, w, n, d, 1e-6);
  expect_rounded(down(xr), rms, abs_vec(rms), dt, 1e-5);
}

TEST_P(LowpOps, ElementwiseRoundOnce) {
  const std::int64_t n = 1000;
  const auto g = rnd(n, 11, 2.0), u = rnd(n, 12);
  const Vec mag_g = abs_vec(g);
  Tensor o = out({n});
  be->silu_mul(low(g, {n}), low(u, {n}), o);
  Vec want(n);
  for (std::int64_t i = 0; i < n; ++i) want[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
  expect_rounded(down(o), want, abs_vec(want), dt, 1e-5);

  Tensor y = low(g, {n});
  be->add(y, low(u, {n}));
  for (std::int64_t i = 0; i < n; ++i) want[i] = g[i] + u[i];
  expect_rounded(down(y), want, abs_vec(want), dt, 1e-6);

  y = low(g, {n});
  be->scale(y, 0.125f);
  be->relu(y);
  for (std::int64_t i = 0; i < n; ++i) want[i] = std::max(0.0, g[i] * 0.125);
  expect_rounded(down(y), want, abs_vec(want), dt, 0.0);  // exact: a power of two

  y = low(g, {n});
  be->gelu(y);
  const double c = std::sqrt(2.0 / M_PI);
  for (std::int64_t i = 0; i < n; ++i)
    want[i] = 0.5 * g[i] * (1 + std::tanh(c * (g[i] + 0.044715 * std::pow(g[i], 3))));
  expect_rounded(down(y), want, mag_g, dt, 1e-5);
}

TEST_P(LowpOps, RopeRoundsOnce) {
  const std::int64_t B = 2, T = 7, H = 3, hd = 8;
  auto x = rnd(B * T * H * hd, 13);
  Tensor c = Tensor::empty({T, hd}), s = Tensor::empty({T, hd});
  for (std::int64_t p = 0; p < T; ++p)
    for (std::int64_t i = 0; i < hd; ++i) {
      const double f = static_cast<double>(p) / std::pow(10000.0, 2.0 * (i % (hd / 2)) / hd);
      c.f32()[p * hd + i] = static_cast<float>(std::cos(f));
      s.f32()[p * hd + i] = static_cast<float>(std::sin(f));
    }
  Tensor t = low(x, {B * T, H * hd});
  be->rope(t, T, H, hd, be->upload(c), be->upload(s));
  ref_rope(x, B * T, T, H, hd, 10000.0);
  // The tables are fp32 roundings of cos and sin: 1e-7 relative, times |a| + |b| <= 2 max|x|.
  expect_rounded(down(t), x, Vec(x.size(), 8.0), dt, 1e-6);
}

// Attention with probabilities rounded to dt before P·V, in float64 otherwise.
Vec ref_attention_lowp(const Vec& q, const Vec& k, const Vec& v, std::int64_t B, std::int64_t T, std::int64_t H,
                       std::int64_t KV, std::int64_t hd, double scale, DType dt, Vec& mag) {
  Vec out(q.size(), 0.0);
  mag.assign(q.size(), 0.0);
  const auto g = H / KV;
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t i = 0; i < T; ++i) {
        std::vector<double> s(static_cast<std::size_t>(i + 1));
        double m = -1e300, z = 0;
        for (std::int64_t j = 0; j <= i; ++j) {
          double d = 0;
          for (std::int64_t c = 0; c < hd; ++c)
            d += q[(b * T + i) * H * hd + h * hd + c] * k[(b * T + j) * KV * hd + (h / g) * hd + c];
          m = std::max(m, s[j] = d * scale);
        }
        for (auto& e : s) z += (e = std::exp(e - m));
        for (auto& e : s) e = round_to(dt, static_cast<float>(e / z));
        for (std::int64_t c = 0; c < hd; ++c) {
          double acc = 0, big = 0;
          for (std::int64_t j = 0; j <= i; ++j) {
            const double t = s[j] * v[(b * T + j) * KV * hd + (h / g) * hd + c];
            acc += t;
            big = std::max(big, std::fabs(t));
          }
          out[(b * T + i) * H * hd + h * hd + c] = acc;
          mag[(b * T + i) * H * hd + h * hd + c] = big;
        }
      }
  return out;
}

TEST_P(LowpOps, AttentionRoundsTheProbabilitiesAndTheOutput) {
  const std::int64_t B = 2, T = 19, H = 4, KV = 2, hd = 16;
  const auto q = rnd(B * T * H * hd, 14), k = rnd(B * T * KV * hd, 15), v = rnd(B * T * KV * hd, 16);
  Tensor o = out({B * T, H * hd});
  AttentionShape as{B, T, H, KV, hd, 0.25f};
  be->attention(low(q, {B * T, H * hd}), low(k, {B * T, KV * hd}), low(v, {B * T, KV * hd}), as, o);
  Vec mag;
  const Vec want = ref_attention_lowp(q, k, v, B, T, H, KV, hd, 0.25, dt, mag);
  // A probability whose fp32 value lands on the other side of a rounding midpoint changes one
  // term by an ulp of p (2^-10 of it for f16, 2^-7 for bf16): allow that once per output.
  expect_rounded(down(o), want, mag, dt, dt == DType::f16 ? 1e-3 : 8e-3);

  // One dtype for all four (the backends refuse a mix rather than guess where to round).
  Tensor o32 = be->empty({B * T, H * hd});
  EXPECT_THROW(be->attention(low(q, {B * T, H * hd}), low(k, {B * T, KV * hd}), low(v, {B * T, KV * hd}), as, o32),
               Error);
  Tensor probs = be->empty({B, H, T, T});
  EXPECT_THROW(be->attention(low(q, {B * T, H * hd}), low(k, {B * T, KV * hd}), low(v, {B * T, KV * hd}), as, o,
                             &probs),
               Error);
}

TEST_P(LowpOps, EmbeddingFromEitherTable) {
  const std::int64_t V = 11, d = 24;
  const auto tab = random_vec(V * d, 17);
  const std::vector<std::int32_t> ids{3, 0, 10, 3};
  Tensor o = out({4, d});
  be->embedding(ids, be->upload(to_tensor(tab, {V, d})), o);  // fp32 table: rows rounded
  const Vec got = down(o);
  Tensor o2 = out({4, d});
  be->embedding(ids, low(rounded(tab, dt), {V, d}), o2);  // 2-byte table: rows copied
  const Vec got2 = down(o2);
  for (std::size_t r = 0; r < ids.size(); ++r)
    for (std::int64_t j = 0; j < d; ++j) {
      const double want = round_to(dt, static_cast<float>(tab[ids[r] * d + j]));
      ASSERT_EQ(got[r * d + j], want);
      ASSERT_EQ(got2[r * d + j], want);
    }
}

std::string param_name(const ::testing::TestParamInfo<std::tuple<std::string, DType>>& info) {
  return std::get<0>(info.param) + "_" + (std::get<1>(info.param) == DType::f16 ? "f16" : "bf16");
}

INSTANTIATE_TEST_SUITE_P(All, LowpOps,
                         ::testing::Combine(::testing::ValuesIn(test_backends()),
                                            ::testing::Values(DType::f16, DType::bf16)),
                         param_name);

}  // namespace
}  // namespace scalpel::test
