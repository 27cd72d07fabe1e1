// Float64 central differences for the backward tests: the gradient of φ(x) = <r, f(x)> for a
// float64 function f, every component (small inputs) or along one direction (large ones).
// Truncation error is O(h²·f''') ~ 1e-10 at h = 1e-5 for the smooth functions tested, and the
// rounding error ~ 1e-16/h ~ 1e-11: both far below the fp32 backward's ~1e-6 that is compared.
#pragma once
#include <functional>

#include "reference.hpp"

namespace scalpel::test {

inline double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// ∂<r, f(x)>/∂x, component by component.
inline Vec fd_gradient(const std::function<Vec(const Vec&)>& f, const Vec& x, const Vec& r, double h = 1e-5) {
  Vec g(x.size()), xp = x;
  for (std::size_t i = 0; i < x.size(); ++i) {
    xp[i] = x[i] + h;
    const double up = dot(r, f(xp));
    xp[i] = x[i] - h;
    const double down = dot(r, f(xp));
    xp[i] = x[i];
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

// d/dε φ(ε) at 0 for a scalar function of a step ε.
inline double fd_directional(const std::function<double(double)>& phi, double h = 1e-5) {
  return (phi(h) - phi(-h)) / (2 * h);
}

}  // namespace scalpel::test
