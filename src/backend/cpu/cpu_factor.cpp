// Recursive blocked Cholesky and triangular inverse (see cpu_factor.hpp). The recursion halves the
// matrix at a multiple of the leaf size until a leaf fits, so the BLAS-3 calls are as large as
// possible (their K is half the matrix, not a narrow panel); leaves run a small kernel with double
// accumulators in a fixed order.
#include "cpu_factor.hpp"

#include <cmath>

#include "det_blas.hpp"

namespace scalpel::cpu {
namespace {

constexpr std::int64_t kLeaf = 96;

// Where to split n rows: half, rounded to a multiple of the leaf size.
std::int64_t split_point(std::int64_t n) {
  const std::int64_t h = (n / 2 + kLeaf - 1) / kLeaf * kLeaf;
  return h < n ? h : n / 2;
}

template <class T>
bool potrf_leaf(T* a, std::int64_t n, std::int64_t lda) {
  for (std::int64_t j = 0; j < n; ++j) {
    T* rj = a + j * lda;
    double d = rj[j];
    for (std::int64_t k = 0; k < j; ++k) d -= static_cast<double>(rj[k]) * rj[k];
    if (!(d > 0.0) || !std::isfinite(d)) return false;
    const double ljj = std::sqrt(d);
    rj[j] = static_cast<T>(ljj);
    for (std::int64_t i = j + 1; i < n; ++i) {
      T* ri = a + i * lda;
      double s = ri[j];
      for (std::int64_t k = 0; k < j; ++k) s -= static_cast<double>(ri[k]) * rj[k];
      ri[j] = static_cast<T>(s / ljj);
    }
  }
  return true;
}

template <class T>
void trtri_leaf(T* a, std::int64_t n, std::int64_t lda) {
  // Column by column from the left: X_ij = -(L_ij X_jj + Σ_{j<k<i} L_ik X_kj) / L_ii for i > j,
  // rows in increasing order. The L entries it reads (row i right of column j, and L_ii) belong to
  // columns not yet processed, so they are still L; X_jj = 1/L_jj is written last.
  for (std::int64_t j = 0; j < n; ++j) {
    const double xjj = 1.0 / a[j * lda + j];
    for (std::int64_t i = j + 1; i < n; ++i) {
      double s = static_cast<double>(a[i * lda + j]) * xjj;
      for (std::int64_t k = j + 1; k < i; ++k) s += static_cast<double>(a[i * lda + k]) * a[k * lda + j];
      a[i * lda + j] = static_cast<T>(-s / a[i * lda + i]);
    }
    a[j * lda + j] = static_cast<T>(xjj);
  }
}

}  // namespace

template <class T>
bool potrf_lower(T* a, std::int64_t n, std::int64_t lda) {
  if (n <= kLeaf) return potrf_leaf(a, n, lda);
  const std::int64_t n1 = split_point(n), n2 = n - n1;
  T* a11 = a;
  T* a21 = a + n1 * lda;
  T* a22 = a + n1 * lda + n1;
  if (!potrf_lower(a11, n1, lda)) return false;
  // A21 <- A21 L11⁻ᵀ; A22 <- A22 - A21 A21ᵀ (lower triangle).
  det_trsm_right_lower_t<T>(n2, n1, a11, lda, a21, lda);
  det_syrk_lower_n<T>(n2, n1, T{-1}, a21, lda, T{1}, a22, lda);
  return potrf_lower(a22, n2, lda);
}

template <class T>
void trtri_lower(T* a, std::int64_t n, std::int64_t lda) {
  if (n <= kLeaf) return trtri_leaf(a, n, lda);
  const std::int64_t n1 = split_point(n), n2 = n - n1;
  T* a11 = a;
  T* a21 = a + n1 * lda;
  T* a22 = a + n1 * lda + n1;
  // inv([L11 0; L21 L22]) = [X11 0; -X22 L21 X11, X22].
  trtri_lower(a22, n2, lda);
  det_trmm_left_lower_n<T>(n2, n1, T{-1}, a22, lda, a21, lda);
  trtri_lower(a11, n1, lda);
  det_trmm_right_lower_n<T>(n2, n1, T{1}, a11, lda, a21, lda);
}

namespace {

template <class T>
void lauum_leaf(T* a, std::int64_t n, std::int64_t lda) {
  // (LᵀL)_ij = Σ_{k >= i} L_ki L_kj for j <= i; row i only reads rows k >= i, so rows in
  // increasing order overwrite what is no longer needed.
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j <= i; ++j) {
      double s = 0;
      for (std::int64_t k = i; k < n; ++k) s += static_cast<double>(a[k * lda + i]) * a[k * lda + j];
      a[i * lda + j] = static_cast<T>(s);
    }
}

}  // namespace

template <class T>
void lauum_lower(T* a, std::int64_t n, std::int64_t lda) {
  if (n <= kLeaf) return lauum_leaf(a, n, lda);
  const std::int64_t n1 = split_point(n), n2 = n - n1;
  T* a11 = a;
  T* a21 = a + n1 * lda;
  T* a22 = a + n1 * lda + n1;
  // [L11 0; L21 L22]ᵀ[L11 0; L21 L22] = [L11ᵀL11 + L21ᵀL21, .; L22ᵀL21, L22ᵀL22].
  lauum_lower(a11, n1, lda);
  det_syrk_lower_t<T>(n1, n2, T{1}, a21, lda, T{1}, a11, lda);
  det_trmm_left_lower_t<T>(n2, n1, T{1}, a22, lda, a21, lda);
  lauum_lower(a22, n2, lda);
}

template void lauum_lower<float>(float*, std::int64_t, std::int64_t);
template void lauum_lower<double>(double*, std::int64_t, std::int64_t);
template bool potrf_lower<float>(float*, std::int64_t, std::int64_t);
template bool potrf_lower<double>(double*, std::int64_t, std::int64_t);
template void trtri_lower<float>(float*, std::int64_t, std::int64_t);
template void trtri_lower<double>(double*, std::int64_t, std::int64_t);

}  // namespace scalpel::cpu
