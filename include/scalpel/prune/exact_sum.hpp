// Order-independent exact summation of float arrays, for `determinism: strict`: the sum of the
// same values comes out bitwise the same whatever the order of the additions and however they are
// split over ranks (the ReproBLAS idea of binned accumulation, with integer bins).
//
// Every value is cut into W = 32-bit digits on one fixed grid of absolute bit positions; an
// accumulator keeps, for each entry, the sums of the digits in the K = 3 grid bins below the top
// bin of the largest value seen (a window shared by all entries). Integer additions are exact and
// associative, and a bin that falls out of the window as larger values arrive is dropped whole, so
// what is kept never depends on the order. Digits below the window are truncated: each value
// loses at most 2^-64 of the largest value, far below float precision. Sums stay exact for up to
// 2^31 additions per entry. Memory: 3 int64 per entry (6x a float array).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "scalpel/dist/comm.hpp"

namespace scalpel::prune {

class ExactSum {
 public:
  explicit ExactSum(std::size_t n);
  std::size_t size() const { return n_; }
  // sum[i] += v[i] for the n values (NaN/inf: internal error; callers check finiteness first).
  void add(const float* v);
  // Same, for the upper triangle (j >= i) of a row-major d x d matrix; n must be d(d+1)/2.
  void add_upper(const float* a, std::int64_t d);
  // Sums the accumulators of every rank of `comm` (exact: integers), leaving the total on all.
  void allreduce(dist::Comm& comm);
  // out[i] = float(sum[i] * scale): the exact sum rounded once to double, scaled, rounded to float.
  void result(float* out, double scale) const;
  // Both triangles of the d x d matrix whose upper triangle was added with add_upper.
  void result_symmetric(float* out, std::int64_t d, double scale) const;
  // The same, rounded once to double (out[i] = sum[i] * scale).
  void result(double* out, double scale) const;
  void result_symmetric(double* out, std::int64_t d, double scale) const;

 private:
  static double entry(const ExactSum& e, std::size_t i);  // value(i), for the result helpers
  void raise_top(int top);
  double value(std::size_t i) const;
  std::size_t n_;
  int top_ = -1;                    // grid index of the window's top bin; -1 = nothing added
  std::vector<std::int64_t> bins_;  // [3][n]: bins top, top-1, top-2
};

}  // namespace scalpel::prune
