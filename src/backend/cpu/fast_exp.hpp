// A vectorisable exp for the CPU backend's softmax and log-sum-exp loops (private to src/backend).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace scalpel::cpu {

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

// log Σ_j exp(r[j] - m) for a row whose maximum is m: fp32 exponentials (vectorised), summed in
// fp32 chunks of 256 and then in double; each term carries 2^-24 relative error, far below what
// the fp32 logits themselves carry.
inline double log_sum_exp_shifted(const float* r, std::int64_t n, float m) {
  double sum = 0;
  for (std::int64_t j0 = 0; j0 < n; j0 += 256) {
    const std::int64_t j1 = std::min(n, j0 + 256);
    float part = 0;
#pragma omp simd reduction(+ : part)
    for (std::int64_t j = j0; j < j1; ++j) part += exp_nonpositive(r[j] - m);
    sum += part;
  }
  return std::log(sum);
}

}  // namespace scalpel::cpu
