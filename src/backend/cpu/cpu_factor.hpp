// Cholesky factorisation and triangular inverse for the CPU backend, written as recursive blocked
// algorithms over BLAS-3 calls (strsm, strmm, ssyrk; the thread-independent ones of det_blas.hpp)
// with split points that depend only on the matrix size. OpenBLAS's own spotrf/spotri change their blocking with the thread count, and so
// their bits; these do not (tests/backend/test_thread_invariance.cpp), which is what makes a
// pruned model independent of how many ranks (and so threads per rank) computed it.
#pragma once
#include <cstdint>

namespace scalpel::cpu {

// Instantiated for float and double. In place, the lower Cholesky factor L (A = LLᵀ) of the symmetric positive definite row-major
// n x n matrix at a (leading dimension lda; only the lower triangle is read); the strict upper
// triangle is left as it was. Returns false when a pivot is not positive and finite.
template <class T>
bool potrf_lower(T* a, std::int64_t n, std::int64_t lda);

// In place, the inverse of the lower triangular row-major n x n matrix at a (non-zero diagonal);
// the strict upper triangle is not touched.
template <class T>
void trtri_lower(T* a, std::int64_t n, std::int64_t lda);

// In place, LᵀL (lower triangle) from the lower triangular L at a (LAPACK's lauum): with
// L = chol(A)⁻¹ this is A⁻¹. The strict upper triangle is not touched.
template <class T>
void lauum_lower(T* a, std::int64_t n, std::int64_t lda);

}  // namespace scalpel::cpu
