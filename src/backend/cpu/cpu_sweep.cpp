// The CPU OBS sweep (cpu_sweep.hpp). kLanes rows at a time are transposed into an L1-resident tile
// [width][kLanes]: every step of the sweep is then a vector op across rows (one division gives
// kLanes errors, one FMA per column updates kLanes rows), with no branches on the data. Rows past
// the end are padded with zero weights that are kept, so their errors are exactly zero. Every
// element sees the rounding sequence of the column-by-column reference loop.
#include "cpu_sweep.hpp"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <vector>

namespace scalpel::cpu {
namespace {

constexpr std::int64_t kLanes = 16;
// Columns are applied to the rest of the block kMaxChunk at a time; for N:M the chunk must divide
// M so that every group starts a chunk (its columns then hold all earlier updates).
constexpr std::int64_t kMaxChunk = 4;

// dst[j * ld + t] = src[t * ls + j] for a 16 x 16 block: the row tiles go in and out of their
// transposed layout with it (AVX-512 in-register transpose, scalar elsewhere).
#pragma GCC diagnostic push
// GCC 12's own _mm512_undefined_ps inside the unpack intrinsics trips this warning.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
inline void transpose16(const float* src, std::int64_t ls, float* dst, std::int64_t ld) {
#if defined(__AVX512F__)
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ls);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int h = 0; h < 16; h += 8)
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
    }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ld, r[i]);
#else
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) dst[j * ld + i] = src[i * ls + j];
#endif
}
#pragma GCC diagnostic pop

// What every thread reads: the block, its factor tile and the shape of the sweep.
struct Sweep {
  float* w;
  std::uint8_t* mask;
  const float* u;
  float* err;
  double* losses;
  std::int64_t rows, d, width;
  int prune_n, prune_m;
  std::int64_t chunk;  // columns applied together
  std::int64_t wv;     // columns moved by whole 16 x 16 blocks
  std::vector<float> dsq;  // U_jj²
};

// One thread's kLanes rows, transposed: weights T, kept flags K (1/0), errors ET.
class LaneTile {
 public:
  explicit LaneTile(const Sweep& s)
      : s_(s), t_(static_cast<std::size_t>(s.width * kLanes)), k_(t_.size()), et_(t_.size()),
        score_(static_cast<std::size_t>((s.prune_m > 0 ? s.prune_m : 1) * kLanes)) {}

  // Sweeps rows [r0, r0 + kLanes) (fewer at the end).
  void run(std::int64_t r0) {
    const std::int64_t nr = std::min(kLanes, s_.rows - r0);
    load(r0, nr);
    std::fill(loss_, loss_ + kLanes, 0.0f);
    for (std::int64_t i0 = 0; i0 < s_.width; i0 += s_.chunk) {
      const std::int64_t i1 = std::min(s_.width, i0 + s_.chunk);
      if (s_.prune_m > 0 && i0 % s_.prune_m == 0) choose_nm(i0, nr);
      float e[kMaxChunk][kLanes];
      sweep_chunk(i0, i1, e);
      apply_chunk(i0, i1, e);
    }
    store(r0, nr);
  }

 private:
  void load(std::int64_t r0, std::int64_t nr) {
    const std::int64_t d = s_.d, width = s_.width, m = s_.prune_m;
    const float* W = s_.w;
    const std::uint8_t* M = s_.mask;
    float *T = t_.data(), *K = k_.data();
    // 16 x 16 blocks through a row-major staging square.
    for (std::int64_t jb = 0; jb < s_.wv; jb += kLanes) {
      for (std::int64_t t = 0; t < kLanes; ++t) {
        const float* wr = W + (r0 + t) * d + jb;
        const std::uint8_t* mr = M + (r0 + t) * d + jb;
        for (std::int64_t j = 0; j < kLanes; ++j) {
          stage_w_[t * kLanes + j] = t < nr ? wr[j] : 0.0f;
          stage_k_[t * kLanes + j] = t >= nr || m > 0 || mr[j] != 0 ? 1.0f : 0.0f;
        }
      }
      transpose16(stage_w_, kLanes, T + jb * kLanes, kLanes);
      transpose16(stage_k_, kLanes, K + jb * kLanes, kLanes);
    }
    for (std::int64_t t = 0; t < kLanes; ++t)
      for (std::int64_t j = s_.wv; j < width; ++j) {
        T[j * kLanes + t] = t < nr ? W[(r0 + t) * d + j] : 0.0f;
        K[j * kLanes + t] = t >= nr || m > 0 || M[(r0 + t) * d + j] != 0 ? 1.0f : 0.0f;
      }
  }

  // N:M: ranks the group's scores w²/U_jj² (weights as updated so far: chunks start at every group,
  // so all earlier columns are applied) in every lane; prunes the prune_n smallest, ties to the
  // lower column.
  void choose_nm(std::int64_t i0, std::int64_t nr) {
    const std::int64_t len = std::min<std::int64_t>(s_.prune_m, s_.width - i0);
    const std::int64_t c = std::min<std::int64_t>(s_.prune_n, len);
    const float* tg = t_.data() + i0 * kLanes;
    float* kg = k_.data() + i0 * kLanes;
    float* S = score_.data();
    for (std::int64_t a = 0; a < len; ++a) {
      const float* ta = tg + a * kLanes;
      const float q = s_.dsq[i0 + a];
#pragma omp simd
      for (std::int64_t t = 0; t < kLanes; ++t) S[a * kLanes + t] = ta[t] * ta[t] / q;
    }
    for (std::int64_t a = 0; a < len; ++a) {
      float rank[kLanes] = {};
      for (std::int64_t b = 0; b < len; ++b) {
        const bool before = b < a;
#pragma omp simd
        for (std::int64_t t = 0; t < kLanes; ++t) {
          const float sa = S[a * kLanes + t], sb = S[b * kLanes + t];
          rank[t] += (sb < sa || (before && sb == sa)) ? 1.0f : 0.0f;
        }
      }
      float* ka = kg + a * kLanes;
#pragma omp simd
      for (std::int64_t t = 0; t < kLanes; ++t) ka[t] = rank[t] >= static_cast<float>(c) ? 1.0f : 0.0f;
    }
    for (std::int64_t t = nr; t < kLanes; ++t)
      for (std::int64_t a = 0; a < len; ++a) kg[a * kLanes + t] = 1.0f;  // padding stays kept
  }

  // The chunk's columns one by one, each updating the rest of the chunk; e gets their errors.
  void sweep_chunk(std::int64_t i0, std::int64_t i1, float (*e)[kLanes]) {
    const std::int64_t d = s_.d;
    for (std::int64_t i = i0; i < i1; ++i) {
      const float* u = s_.u + i * d;
      const float di = u[i];
      float* ti = t_.data() + i * kLanes;
      const float* ki = k_.data() + i * kLanes;
      float* ec = e[i - i0];
      float* ei = et_.data() + i * kLanes;
#pragma omp simd
      for (std::int64_t t = 0; t < kLanes; ++t) {
        const float wv = ti[t];
        const bool kept = ki[t] != 0.0f;
        ec[t] = kept ? 0.0f : wv / di;  // (w - q) / d with q = 0 when pruned, as the reference
        ti[t] = kept ? wv : 0.0f;
        ei[t] = ec[t];
        loss_[t] += ec[t] * ec[t];
      }
      for (std::int64_t j = i + 1; j < i1; ++j) {
        const float uj = u[j];
        float* tj = t_.data() + j * kLanes;
#pragma omp simd
        for (std::int64_t t = 0; t < kLanes; ++t) tj[t] -= ec[t] * uj;
      }
    }
  }

  // The chunk's errors on the columns after it: one load and store per column for up to kMaxChunk
  // FMAs, applied in column order.
  void apply_chunk(std::int64_t i0, std::int64_t i1, const float (*e)[kLanes]) {
    const std::int64_t d = s_.d, nc = i1 - i0;
    const float* u0 = s_.u + i0 * d;
    for (std::int64_t j = i1; j < s_.width; ++j) {
      float* tj = t_.data() + j * kLanes;
      if (nc == kMaxChunk) {
        const float a0 = u0[j], a1 = u0[d + j], a2 = u0[2 * d + j], a3 = u0[3 * d + j];
#pragma omp simd
        for (std::int64_t t = 0; t < kLanes; ++t) {
          float v = tj[t];
          v -= e[0][t] * a0;
          v -= e[1][t] * a1;
          v -= e[2][t] * a2;
          v -= e[3][t] * a3;
          tj[t] = v;
        }
      } else {
        for (std::int64_t c = 0; c < nc; ++c) {
          const float uc = u0[c * d + j];
#pragma omp simd
          for (std::int64_t t = 0; t < kLanes; ++t) tj[t] -= e[c][t] * uc;
        }
      }
    }
  }

  // Back to rows: weights, errors, the N:M mask chosen in the sweep, and the rows' losses.
  void store(std::int64_t r0, std::int64_t nr) {
    const std::int64_t d = s_.d, width = s_.width;
    const bool nm = s_.prune_m > 0;
    float *W = s_.w, *E = s_.err;
    std::uint8_t* M = s_.mask;
    const float *T = t_.data(), *K = k_.data(), *ET = et_.data();
    for (std::int64_t jb = 0; jb < s_.wv; jb += kLanes) {
      transpose16(T + jb * kLanes, kLanes, stage_w_, kLanes);
      transpose16(ET + jb * kLanes, kLanes, stage_k_, kLanes);
      for (std::int64_t t = 0; t < nr; ++t)
        for (std::int64_t j = 0; j < kLanes; ++j) {
          W[(r0 + t) * d + jb + j] = stage_w_[t * kLanes + j];
          E[(r0 + t) * width + jb + j] = stage_k_[t * kLanes + j];
        }
      if (nm) {
        transpose16(K + jb * kLanes, kLanes, stage_k_, kLanes);
        for (std::int64_t t = 0; t < nr; ++t)
          for (std::int64_t j = 0; j < kLanes; ++j) M[(r0 + t) * d + jb + j] = stage_k_[t * kLanes + j] != 0.0f;
      }
    }
    for (std::int64_t t = 0; t < nr; ++t) {
      for (std::int64_t j = s_.wv; j < width; ++j) {
        W[(r0 + t) * d + j] = T[j * kLanes + t];
        E[(r0 + t) * width + j] = ET[j * kLanes + t];
        if (nm) M[(r0 + t) * d + j] = K[j * kLanes + t] != 0.0f;
      }
      s_.losses[r0 + t] += static_cast<double>(loss_[t]) / 2;
    }
  }

  const Sweep& s_;
  std::vector<float> t_, k_, et_, score_;
  alignas(64) float stage_w_[kLanes * kLanes];
  alignas(64) float stage_k_[kLanes * kLanes];
  float loss_[kLanes];
};

}  // namespace

void obs_sweep(float* w, std::uint8_t* mask, std::int64_t rows, std::int64_t d, const float* u, std::int64_t width,
               int prune_n, int prune_m, float* err, double* losses) {
  if (rows == 0 || width == 0) return;
  Sweep s{w, mask, u, err, losses, rows, d, width, prune_n, prune_m, kMaxChunk, width - width % kLanes, {}};
  while (prune_m > 0 && prune_m % s.chunk != 0) --s.chunk;
  s.dsq.resize(static_cast<std::size_t>(width));
  for (std::int64_t j = 0; j < width; ++j) s.dsq[j] = u[j * d + j] * u[j * d + j];
#pragma omp parallel
  {
    LaneTile tile(s);
#pragma omp for schedule(static)
    for (std::int64_t r0 = 0; r0 < rows; r0 += kLanes) tile.run(r0);
  }
}

}  // namespace scalpel::cpu
