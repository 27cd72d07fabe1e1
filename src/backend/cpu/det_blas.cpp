// Thread-count-independent BLAS-3 (see det_blas.hpp).
#include "det_blas.hpp"

#include <cblas.h>

#include <algorithm>
#include <vector>

namespace scalpel::cpu {
namespace {

// OpenBLAS 0.3 computes products of up to 12 rows with other kernels, whose bits differ.
constexpr std::int64_t kMinRows = 16;

// Tile edge for a dimension of n: large enough that one BLAS call per tile runs near the
// threaded call's speed (1024 at d = 4096: syrk 0.92 and the sweep's GEMMs 1.3x of the threaded
// OpenBLAS calls; 256-wide tiles reached 0.64), small enough to give every thread work. Shapes
// alone decide it, never the thread count.
std::int64_t tile_for(std::int64_t n) { return n >= 4096 ? 1024 : n >= 1024 ? 512 : 256; }
std::int64_t tiles(std::int64_t n, std::int64_t t) { return (n + t - 1) / t; }
int I(std::int64_t v) { return static_cast<int>(v); }

// The CBLAS calls by element type.
template <class T>
struct Blas;
template <>
struct Blas<float> {
  static constexpr auto gemm = cblas_sgemm;
  static constexpr auto syrk = cblas_ssyrk;
  static constexpr auto trsm = cblas_strsm;
  static constexpr auto trmm = cblas_strmm;
};
template <>
struct Blas<double> {
  static constexpr auto gemm = cblas_dgemm;
  static constexpr auto syrk = cblas_dsyrk;
  static constexpr auto trsm = cblas_dtrsm;
  static constexpr auto trmm = cblas_dtrmm;
};

// A product of `count` rows computed inside one GEMM call of `rows` rows, the others zero, so that
// each row gets the bits it gets in a call of that height: op(A)'s row r is written by
// copy_a_row(r, dst) into padded row first + r, C's row r is c + r * ldc (nj columns).
template <class T, class CopyARow>
void padded_gemm(std::int64_t rows, std::int64_t first, std::int64_t count, std::int64_t nj, std::int64_t k, T alpha,
                 CopyARow copy_a_row, bool tb, const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
  std::vector<T> ap(static_cast<std::size_t>(rows * k), T{0}), cp(static_cast<std::size_t>(rows * nj), T{0});
  for (std::int64_t r = 0; r < count; ++r) {
    copy_a_row(r, ap.data() + (first + r) * k);
    if (beta != T{0}) std::copy(c + r * ldc, c + r * ldc + nj, cp.begin() + (first + r) * nj);
  }
  Blas<T>::gemm(CblasRowMajor, CblasNoTrans, tb ? CblasTrans : CblasNoTrans, I(rows), I(nj), I(k), alpha, ap.data(),
                I(k), b, I(ldb), beta, cp.data(), I(nj));
  for (std::int64_t r = 0; r < count; ++r)
    std::copy(cp.begin() + (first + r) * nj, cp.begin() + (first + r + 1) * nj, c + r * ldc);
}

}  // namespace

template <class T>
void det_gemm(bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a, std::int64_t lda,
              const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
  if (m == 0 || n == 0) return;
  const std::int64_t tr = tile_for(m), tc = tile_for(n), tm = tiles(m, tr), tn = tiles(n, tc);
#pragma omp parallel for schedule(dynamic) collapse(2)
  for (std::int64_t bi = 0; bi < tm; ++bi)
    for (std::int64_t bj = 0; bj < tn; ++bj) {
      const std::int64_t i0 = bi * tr, j0 = bj * tc;
      const std::int64_t mi = std::min(tr, m - i0), nj = std::min(tc, n - j0);
      const T* at = ta ? a + i0 : a + i0 * lda;  // rows i0.. of op(A)
      const T* bt = tb ? b + j0 * ldb : b + j0;  // columns j0.. of op(B)
      T* ct = c + i0 * ldc + j0;
      if (mi >= kMinRows) {
        Blas<T>::gemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, I(mi), I(nj),
                    I(k), alpha, at, I(lda), bt, I(ldb), beta, ct, I(ldc));
        continue;
      }
      // Fewer rows than OpenBLAS's small-matrix path takes over at: padded to kMinRows rows, so
      // that a row gets the bits it gets in a larger tile (a row slice of a matrix, computed on
      // another rank, must match the whole matrix).
      const auto op_a_row = [&](std::int64_t r, T* dst) {
        for (std::int64_t q = 0; q < k; ++q) dst[q] = ta ? at[q * lda + r] : at[r * lda + q];
      };
      padded_gemm(kMinRows, 0, mi, nj, k, alpha, op_a_row, tb, bt, ldb, beta, ct, ldc);
    }
}

template <class T>
void det_gemm_rows(std::int64_t row0, std::int64_t m, std::int64_t total, std::int64_t n, std::int64_t k, T alpha,
                   const T* a, std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
  if (m == 0 || n == 0) return;
  const std::int64_t t0 = row0 / kRowTile, tm = (row0 + m - 1) / kRowTile + 1 - t0;  // the global tiles met
  const std::int64_t tc = tile_for(n), tn = tiles(n, tc);
#pragma omp parallel for schedule(dynamic) collapse(2)
  for (std::int64_t bi = 0; bi < tm; ++bi)
    for (std::int64_t bj = 0; bj < tn; ++bj) {
      const std::int64_t s = (t0 + bi) * kRowTile, e = std::min(s + kRowTile, total), rows = e - s;
      const std::int64_t lo = std::max(s, row0), hi = std::min(e, row0 + m);  // the slice's own rows
      const std::int64_t j0 = bj * tc, nj = std::min(tc, n - j0);
      if (lo == s && hi == e) {
        Blas<T>::gemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, I(rows), I(nj), I(k), alpha, a + (s - row0) * lda,
                      I(lda), b + j0, I(ldb), beta, c + (s - row0) * ldc + j0, I(ldc));
        continue;
      }
      // A tile the slice covers in part: computed whole, the other ranks' rows zero.
      const auto a_row = [&](std::int64_t r, T* dst) {
        std::copy(a + (lo + r - row0) * lda, a + (lo + r - row0) * lda + k, dst);
      };
      padded_gemm(rows, lo - s, hi - lo, nj, k, alpha, a_row, false, b + j0, ldb, beta, c + (lo - row0) * ldc + j0, ldc);
    }
}

template <class T>
void det_syrk_upper_t(std::int64_t d, std::int64_t n, T alpha, const T* x, std::int64_t ldx, T beta, T* c,
                      std::int64_t ldc) {
  const std::int64_t ts = tile_for(d), t = tiles(d, ts);
#pragma omp parallel for schedule(dynamic) collapse(2)
  for (std::int64_t bi = 0; bi < t; ++bi)
    for (std::int64_t bj = 0; bj < t; ++bj) {
      if (bj < bi) continue;
      const std::int64_t i0 = bi * ts, j0 = bj * ts;
      const std::int64_t di = std::min(ts, d - i0), dj = std::min(ts, d - j0);
      if (bi == bj)
        Blas<T>::syrk(CblasRowMajor, CblasUpper, CblasTrans, I(di), I(n), alpha, x + i0, I(ldx), beta,
                    c + i0 * ldc + i0, I(ldc));
      else
        Blas<T>::gemm(CblasRowMajor, CblasTrans, CblasNoTrans, I(di), I(dj), I(n), alpha, x + i0, I(ldx), x + j0, I(ldx),
                    beta, c + i0 * ldc + j0, I(ldc));
    }
}

template <class T>
void det_syrk_lower_n(std::int64_t n, std::int64_t k, T alpha, const T* a, std::int64_t lda, T beta, T* c,
                      std::int64_t ldc) {
  const std::int64_t ts = tile_for(n), t = tiles(n, ts);
#pragma omp parallel for schedule(dynamic) collapse(2)
  for (std::int64_t bi = 0; bi < t; ++bi)
    for (std::int64_t bj = 0; bj < t; ++bj) {
      if (bj > bi) continue;
      const std::int64_t i0 = bi * ts, j0 = bj * ts;
      const std::int64_t ni = std::min(ts, n - i0), nj = std::min(ts, n - j0);
      if (bi == bj)
        Blas<T>::syrk(CblasRowMajor, CblasLower, CblasNoTrans, I(ni), I(k), alpha, a + i0 * lda, I(lda), beta,
                    c + i0 * ldc + i0, I(ldc));
      else
        Blas<T>::gemm(CblasRowMajor, CblasNoTrans, CblasTrans, I(ni), I(nj), I(k), alpha, a + i0 * lda, I(lda),
                    a + j0 * lda, I(lda), beta, c + i0 * ldc + j0, I(ldc));
    }
}

template <class T>
void det_trsm_right_lower_t(std::int64_t m, std::int64_t n, const T* l, std::int64_t ldl, T* b, std::int64_t ldb) {
  // Rows of B are independent.
  const std::int64_t ts = tile_for(m);
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t bi = 0; bi < tiles(m, ts); ++bi) {
    const std::int64_t i0 = bi * ts, mi = std::min(ts, m - i0);
    Blas<T>::trsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, I(mi), I(n), T{1}, l, I(ldl),
                b + i0 * ldb, I(ldb));
  }
}

template <class T>
void det_trsm_right_lower_n(std::int64_t m, std::int64_t n, const T* l, std::int64_t ldl, T* b, std::int64_t ldb) {
  // Rows of B are independent.
  const std::int64_t ts = tile_for(m);
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t bi = 0; bi < tiles(m, ts); ++bi) {
    const std::int64_t i0 = bi * ts, mi = std::min(ts, m - i0);
    Blas<T>::trsm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, I(mi), I(n), T{1}, l, I(ldl),
                  b + i0 * ldb, I(ldb));
  }
}

template <class T>
void det_trmm_left_lower_t(std::int64_t m, std::int64_t n, T alpha, const T* l, std::int64_t ldl, T* b,
                           std::int64_t ldb) {
  // Columns of B are independent.
  const std::int64_t ts = tile_for(n);
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t bj = 0; bj < tiles(n, ts); ++bj) {
    const std::int64_t j0 = bj * ts, nj = std::min(ts, n - j0);
    Blas<T>::trmm(CblasRowMajor, CblasLeft, CblasLower, CblasTrans, CblasNonUnit, I(m), I(nj), alpha, l, I(ldl),
                  b + j0, I(ldb));
  }
}

template <class T>
void det_syrk_lower_t(std::int64_t d, std::int64_t n, T alpha, const T* x, std::int64_t ldx, T beta, T* c,
                      std::int64_t ldc) {
  const std::int64_t ts = tile_for(d), t = tiles(d, ts);
#pragma omp parallel for schedule(dynamic) collapse(2)
  for (std::int64_t bi = 0; bi < t; ++bi)
    for (std::int64_t bj = 0; bj < t; ++bj) {
      if (bj > bi) continue;
      const std::int64_t i0 = bi * ts, j0 = bj * ts;
      const std::int64_t di = std::min(ts, d - i0), dj = std::min(ts, d - j0);
      if (bi == bj)
        Blas<T>::syrk(CblasRowMajor, CblasLower, CblasTrans, I(di), I(n), alpha, x + i0, I(ldx), beta,
                      c + i0 * ldc + i0, I(ldc));
      else
        Blas<T>::gemm(CblasRowMajor, CblasTrans, CblasNoTrans, I(di), I(dj), I(n), alpha, x + i0, I(ldx), x + j0,
                      I(ldx), beta, c + i0 * ldc + j0, I(ldc));
    }
}

template <class T>
void det_trmm_left_lower_n(std::int64_t m, std::int64_t n, T alpha, const T* l, std::int64_t ldl, T* b,
                           std::int64_t ldb) {
  // Columns of B are independent.
  const std::int64_t ts = tile_for(n);
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t bj = 0; bj < tiles(n, ts); ++bj) {
    const std::int64_t j0 = bj * ts, nj = std::min(ts, n - j0);
    Blas<T>::trmm(CblasRowMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit, I(m), I(nj), alpha, l, I(ldl),
                b + j0, I(ldb));
  }
}

template <class T>
void det_trmm_right_lower_n(std::int64_t m, std::int64_t n, T alpha, const T* l, std::int64_t ldl, T* b,
                            std::int64_t ldb) {
  // Rows of B are independent.
  const std::int64_t ts = tile_for(m);
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t bi = 0; bi < tiles(m, ts); ++bi) {
    const std::int64_t i0 = bi * ts, mi = std::min(ts, m - i0);
    Blas<T>::trmm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, I(mi), I(n), alpha, l, I(ldl),
                b + i0 * ldb, I(ldb));
  }
}

#define SCALPEL_DET_BLAS(T)                                                                                  \
  template void det_gemm<T>(bool, bool, std::int64_t, std::int64_t, std::int64_t, T, const T*, std::int64_t,       \
                            const T*, std::int64_t, T, T*, std::int64_t);                                          \
  template void det_gemm_rows<T>(std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t, T, const T*, \
                                 std::int64_t, const T*, std::int64_t, T, T*, std::int64_t);                       \
  template void det_syrk_upper_t<T>(std::int64_t, std::int64_t, T, const T*, std::int64_t, T, T*, std::int64_t);   \
  template void det_syrk_lower_n<T>(std::int64_t, std::int64_t, T, const T*, std::int64_t, T, T*, std::int64_t);   \
  template void det_trsm_right_lower_t<T>(std::int64_t, std::int64_t, const T*, std::int64_t, T*, std::int64_t);   \
  template void det_trsm_right_lower_n<T>(std::int64_t, std::int64_t, const T*, std::int64_t, T*, std::int64_t);   \
  template void det_trmm_left_lower_t<T>(std::int64_t, std::int64_t, T, const T*, std::int64_t, T*, std::int64_t); \
  template void det_syrk_lower_t<T>(std::int64_t, std::int64_t, T, const T*, std::int64_t, T, T*, std::int64_t);   \
  template void det_trmm_left_lower_n<T>(std::int64_t, std::int64_t, T, const T*, std::int64_t, T*, std::int64_t); \
  template void det_trmm_right_lower_n<T>(std::int64_t, std::int64_t, T, const T*, std::int64_t, T*, std::int64_t);
SCALPEL_DET_BLAS(float)
SCALPEL_DET_BLAS(double)
#undef SCALPEL_DET_BLAS

}  // namespace scalpel::cpu
