// Binned exact summation (see exact_sum.hpp).
#include "scalpel/prune/exact_sum.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "scalpel/core/error.hpp"

namespace scalpel::prune {
namespace {

constexpr int kW = 32;        // bits per bin
constexpr int kK = 3;         // bins kept
constexpr int kOffset = 200;  // bit position of 2^0 on the grid (the smallest denormal's LSB is > 0)

// v = m * 2^(p - kOffset) with |m| < 2^24 an integer and p >= 0 the grid position of its LSB.
inline void split(float v, std::int64_t& m, int& p) {
  int e = 0;
  const double f = std::frexp(static_cast<double>(v), &e);  // v = f 2^e, 0.5 <= |f| < 1
  m = static_cast<std::int64_t>(std::ldexp(f, 24));          // exact: a float has 24 bits
  p = e - 24 + kOffset;
}

// The grid bin holding the most significant bit of v (v != 0).
inline int top_bin(float v) {
  std::int64_t m;
  int p;
  split(v, m, p);
  return (p + 23) / kW;
}

// The signed digit of v in grid bin b: the bits [bW, bW + W) of |v| on the grid, with v's sign.
inline std::int64_t digit(std::int64_t m, int p, int b) {
  const int s = p - b * kW;
  const std::uint64_t a = static_cast<std::uint64_t>(m < 0 ? -m : m);
  std::uint64_t d;
  if (s >= kW || s <= -24)
    return 0;
  else if (s >= 0)
    d = (a << s) & 0xffffffffull;
  else
    d = (a >> -s) & 0xffffffffull;
  return m < 0 ? -static_cast<std::int64_t>(d) : static_cast<std::int64_t>(d);
}

// bins[k][i] += the digits of v in the window's three bins (top t, t-1, t-2).
inline void add_digits(std::int64_t* b0, std::int64_t* b1, std::int64_t* b2, std::size_t i, float v, int t) {
  std::int64_t m;
  int p;
  split(v, m, p);
  b0[i] += digit(m, p, t);
  b1[i] += digit(m, p, t - 1);
  b2[i] += digit(m, p, t - 2);
}

}  // namespace

ExactSum::ExactSum(std::size_t n) : n_(n), bins_(static_cast<std::size_t>(kK) * n, 0) {}

void ExactSum::raise_top(int top) {
  if (top <= top_) return;
  const int shift = top_ < 0 ? kK : top - top_;
  // Bin k (k bins below the top) moves to k + shift; bins pushed past the window are dropped whole.
  for (int k = kK - 1; k >= 0; --k) {
    std::int64_t* dst = bins_.data() + static_cast<std::size_t>(k) * n_;
    if (k - shift >= 0) {
      const std::int64_t* src = bins_.data() + static_cast<std::size_t>(k - shift) * n_;
      std::memcpy(dst, src, n_ * sizeof(std::int64_t));
    } else {
      std::fill(dst, dst + n_, 0);
    }
  }
  top_ = top;
}

void ExactSum::add(const float* v) {
  float big = 0.0f;
  for (std::size_t i = 0; i < n_; ++i) big = std::max(big, std::fabs(v[i]));
  SCALPEL_CHECK(std::isfinite(big), "ExactSum: non-finite value");
  if (big == 0.0f) return;
  raise_top(top_bin(big));
  std::int64_t* b0 = bins_.data();
  std::int64_t* b1 = b0 + n_;
  std::int64_t* b2 = b1 + n_;
  const int t = top_;
#pragma omp parallel for schedule(static)
  for (std::size_t i = 0; i < n_; ++i) {
    if (v[i] != 0.0f) add_digits(b0, b1, b2, i, v[i], t);
  }
}

void ExactSum::add_upper(const float* a, std::int64_t d) {
  SCALPEL_CHECK(static_cast<std::size_t>(d * (d + 1) / 2) == n_, "ExactSum of {} entries: upper triangle of {}", n_,
                d);
  float big = 0.0f;
  for (std::int64_t i = 0; i < d; ++i)
    for (std::int64_t j = i; j < d; ++j) big = std::max(big, std::fabs(a[i * d + j]));
  SCALPEL_CHECK(std::isfinite(big), "ExactSum: non-finite value");
  if (big == 0.0f) return;
  raise_top(top_bin(big));
  std::int64_t* b0 = bins_.data();
  std::int64_t* b1 = b0 + n_;
  std::int64_t* b2 = b1 + n_;
  const int t = top_;
#pragma omp parallel for schedule(dynamic, 16)
  for (std::int64_t i = 0; i < d; ++i) {
    // Packed row i of the upper triangle starts at i*d - i(i-1)/2.
    const std::size_t base = static_cast<std::size_t>(i * d - i * (i - 1) / 2);
    for (std::int64_t j = i; j < d; ++j) {
      const float v = a[i * d + j];
      if (v != 0.0f) add_digits(b0, b1, b2, base + static_cast<std::size_t>(j - i), v, t);
    }
  }
}

void ExactSum::allreduce(dist::Comm& comm) {
  if (comm.size() == 1) return;
  std::int64_t top = top_;
  comm.allreduce_max(std::span<std::int64_t>(&top, 1));
  if (top < 0) return;  // nothing added anywhere
  raise_top(static_cast<int>(top));
  comm.allreduce_sum(std::span<std::int64_t>(bins_));
}

double ExactSum::value(std::size_t i) const {
  if (top_ < 0) return 0.0;
  // Exact in 128 bits (|bin| < 2^63 and the top bin holds < 2^31 digits of 32 bits, so the top
  // bin times 2^64 stays below 2^127), then one rounding to double.
  const __int128 total = (static_cast<__int128>(bins_[i]) << (2 * kW)) +
                         (static_cast<__int128>(bins_[n_ + i]) << kW) + static_cast<__int128>(bins_[2 * n_ + i]);
  return std::ldexp(static_cast<double>(total), (top_ - (kK - 1)) * kW - kOffset);
}

namespace {
template <class T>
void symmetric_from_upper(const ExactSum& e, T* out, std::int64_t d, double scale,
                          double (*value)(const ExactSum&, std::size_t)) {
  SCALPEL_CHECK(static_cast<std::size_t>(d * (d + 1) / 2) == e.size(), "ExactSum of {} entries: upper triangle of {}",
                e.size(), d);
#pragma omp parallel for schedule(dynamic, 16)
  for (std::int64_t i = 0; i < d; ++i) {
    const std::size_t base = static_cast<std::size_t>(i * d - i * (i - 1) / 2);
    for (std::int64_t j = i; j < d; ++j) {
      const T v = static_cast<T>(value(e, base + static_cast<std::size_t>(j - i)) * scale);
      out[i * d + j] = v;
      out[j * d + i] = v;
    }
  }
}
}  // namespace

double ExactSum::entry(const ExactSum& e, std::size_t i) { return e.value(i); }

void ExactSum::result(float* out, double scale) const {
#pragma omp parallel for schedule(static)
  for (std::size_t i = 0; i < n_; ++i) out[i] = static_cast<float>(value(i) * scale);
}

void ExactSum::result(double* out, double scale) const {
#pragma omp parallel for schedule(static)
  for (std::size_t i = 0; i < n_; ++i) out[i] = value(i) * scale;
}

void ExactSum::result_symmetric(float* out, std::int64_t d, double scale) const {
  symmetric_from_upper(*this, out, d, scale, &ExactSum::entry);
}

void ExactSum::result_symmetric(double* out, std::int64_t d, double scale) const {
  symmetric_from_upper(*this, out, d, scale, &ExactSum::entry);
}

}  // namespace scalpel::prune
