// Shared by the benchmark executables: medians of repeated timings.
#pragma once
#include <algorithm>
#include <vector>

#include "scalpel/core/timer.hpp"

namespace scalpel::bench {

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const auto n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Median wall time of `repeats` calls of f (the caller warms up first).
template <class F>
double median_seconds(int repeats, F&& f) {
  std::vector<double> t;
  for (int r = 0; r < repeats; ++r) {
    Timer tm;
    f();
    t.push_back(tm.seconds());
  }
  return median(t);
}

}  // namespace scalpel::bench
