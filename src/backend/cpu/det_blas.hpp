// BLAS-3 calls whose results do not depend on the thread count. OpenBLAS's threaded level-3
// routines change how they block the inner (K) dimension with the number of threads for some
// shapes (sgemm with K = 688 gives different bits at 1 and 2 threads), so a prune at 1 rank x 2
// threads and at 2 ranks x 1 thread would differ. These split the output into tiles sized by the shape alone (256 to 1024)
// (or independent rows/columns for the triangular ops) and run one single-threaded BLAS call per
// tile in an OpenMP loop (OpenBLAS runs single-threaded inside a parallel region): every output
// element is computed by the same call at any thread count. Calls of few rows are padded past
// OpenBLAS's small-matrix kernels; a row slice computed on another rank gets the whole matrix's
// bits through det_gemm_rows, which is told where the slice starts. Row-major, plain CBLAS
// arguments.
#pragma once
#include <cstdint>

namespace scalpel::cpu {

// Instantiated for float and double. C = alpha op(A) op(B) + beta C; C is m x n.
template <class T>
void det_gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a,
              std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc);
// det_gemm (no transposes) for rows [row0, row0 + m) of a matrix of `total` rows whose other rows
// other ranks compute: a row gets exactly the bits of the whole matrix's computation. OpenBLAS's
// bits for a row depend on the call it is computed in (its Haswell/Zen sgemm computes the last
// M mod 12 rows of a call with other bits; small-matrix kernels take short calls), so every row
// is computed in the same call as in the whole matrix: the rows are cut into global tiles of
// kRowTile rows from row 0 (the last ends at `total`), and a tile the slice covers only in part
// is computed whole with zero rows standing for the rows other ranks hold.
inline constexpr std::int64_t kRowTile = 256;
template <class T>
void det_gemm_rows(std::int64_t row0, std::int64_t m, std::int64_t total, std::int64_t n, std::int64_t k, T alpha,
                   const T* a, std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc);
// Upper triangle of C (d x d) = alpha XᵀX + beta C, X n x d (lower triangle of C: see det_syrk_lower_t).
template <class T>
void det_syrk_lower_t(std::int64_t d, std::int64_t n, T alpha, const T* x, std::int64_t ldx, T beta, T* c,
                      std::int64_t ldc);
// Upper triangle of C (d x d) = alpha XᵀX + beta C, X n x d.
template <class T>
void det_syrk_upper_t(std::int64_t d, std::int64_t n, T alpha, const T* x, std::int64_t ldx, T beta, T* c,
                      std::int64_t ldc);
// Lower triangle of C (n x n) = alpha A Aᵀ + beta C, A n x k.
template <class T>
void det_syrk_lower_n(std::int64_t n, std::int64_t k, T alpha, const T* a, std::int64_t lda, T beta, T* c,
                      std::int64_t ldc);
// B (m x n) <- B L⁻ᵀ, L lower n x n.
template <class T>
void det_trsm_right_lower_t(std::int64_t m, std::int64_t n, const T* l, std::int64_t ldl, T* b, std::int64_t ldb);
// B (m x n) <- B L⁻¹, L lower n x n.
template <class T>
void det_trsm_right_lower_n(std::int64_t m, std::int64_t n, const T* l, std::int64_t ldl, T* b, std::int64_t ldb);
// B (m x n) <- alpha Lᵀ B, L lower m x m.
template <class T>
void det_trmm_left_lower_t(std::int64_t m, std::int64_t n, T alpha, const T* l, std::int64_t ldl, T* b,
                           std::int64_t ldb);
// B (m x n) <- alpha L B, L lower m x m.
template <class T>
void det_trmm_left_lower_n(std::int64_t m, std::int64_t n, T alpha, const T* l, std::int64_t ldl, T* b,
                           std::int64_t ldb);
// B (m x n) <- alpha B L, L lower n x n.
template <class T>
void det_trmm_right_lower_n(std::int64_t m, std::int64_t n, T alpha, const T* l, std::int64_t ldl, T* b,
                            std::int64_t ldb);

}  // namespace scalpel::cpu
