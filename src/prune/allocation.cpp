// Layer-wise sparsity allocation (see allocation.hpp): OWL's outlier ratios and its two rules,
// and the sensitivity paper's rank rule.
#include "scalpel/prune/allocation.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "scalpel/core/error.hpp"

namespace scalpel::prune {

void OutlierCounter::add(const Tensor& weight, const Tensor& col_norms) {
  const Tensor w = weight.to_f32();
  const auto rows = w.size(0), cols = w.size(1);
  if (col_norms.numel() != cols)
    SCALPEL_INPUT_ERROR("OWL: weight [{}, {}] against {} column norms", rows, cols, col_norms.numel());
  Tensor scale = Tensor::empty({cols});
  const Tensor s = col_norms.to_f32();
  for (std::int64_t j = 0; j < cols; ++j) scale.f32()[j] = std::sqrt(s.f32()[j]);  // fp32, as torch.sqrt
  // The mean of all scores, in float64 (the reference's fp32 torch.mean differs by rounding only).
  double sum = 0;
#pragma omp parallel for reduction(+ : sum) schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* wr = w.f32() + r * cols;
    double row = 0;
    for (std::int64_t j = 0; j < cols; ++j) row += static_cast<double>(std::fabs(wr[j]) * scale.f32()[j]);
    sum += row;
  }
  sum_ += sum;
  numel_ += rows * cols;
  weights_.push_back(w);
  scales_.push_back(scale);
}

double OutlierCounter::ratio(double m) const {
  if (numel_ == 0) return 0;
  const auto threshold = static_cast<float>(static_cast<float>(sum_ / static_cast<double>(numel_)) * m);
  std::int64_t count = 0;
  for (std::size_t i = 0; i < weights_.size(); ++i) {
    const Tensor& w = weights_[i];
    const float* sc = scales_[i].f32();
    const auto rows = w.size(0), cols = w.size(1);
#pragma omp parallel for reduction(+ : count) schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* wr = w.f32() + r * cols;
      for (std::int64_t j = 0; j < cols; ++j) count += std::fabs(wr[j]) * sc[j] > threshold ? 1 : 0;
    }
  }
  return static_cast<double>(count) / static_cast<double>(numel_) * 100.0;
}

namespace {

// (D − min D)/(max D − min D)·scale, or zeros when every D is the same.
std::vector<double> normalised(const std::vector<double>& d, double scale) {
  std::vector<double> r(d.size(), 0.0);
  if (d.empty()) return r;
  const auto [lo, hi] = std::minmax_element(d.begin(), d.end());
  if (!(*hi > *lo)) return r;
  for (std::size_t i = 0; i < d.size(); ++i) r[i] = (d[i] - *lo) * (1.0 / (*hi - *lo) * scale);
  return r;
}

double mean_of(const std::vector<double>& v) {
  return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

}  // namespace

std::vector<double> owl_sparsities(const std::vector<double>& outlier_ratio, double sparsity, double lambda,
                                   const std::string& key, std::vector<std::size_t>* clamped) {
  const auto r = normalised(outlier_ratio, lambda * 2);
  const double mean = mean_of(r);
  std::vector<double> s(r.size());
  for (std::size_t l = 0; l < r.size(); ++l) {
    s[l] = 1.0 - (r[l] - mean + (1.0 - sparsity));
    if (s[l] <= 0) {
      s[l] = 0.01;
      if (clamped) clamped->push_back(l);
    }
    if (!(s[l] < 1))
      SCALPEL_INPUT_ERROR("config: '{}' {} gives block {} the sparsity {:.4f} (outside [0, 1)); lower it", key,
                          lambda, l, s[l]);
  }
  return s;
}

std::vector<int> owl_nm(const std::vector<double>& outlier_ratio, int n, int m, double lambda, const std::string& key) {
  const auto r = normalised(outlier_ratio, lambda);
  const double mean = mean_of(r);
  std::vector<int> out(r.size());
  for (std::size_t l = 0; l < r.size(); ++l) {
    const double shift = std::nearbyint(r[l] - mean);  // half to even, as np.round
    out[l] = n - static_cast<int>(shift);
    if (out[l] < 0 || out[l] >= m)
      SCALPEL_INPUT_ERROR("config: '{}' {} gives block {} {}:{} (N outside [0, {})); lower it", key, lambda, l, out[l],
                          m, m);
  }
  return out;
}

double weighted_sparsity(const std::vector<double>& sparsity, const std::vector<std::int64_t>& params) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < sparsity.size(); ++i) {
    num += static_cast<double>(params.at(i)) * sparsity[i];
    den += static_cast<double>(params.at(i));
  }
  return den > 0 ? num / den : 0.0;
}

std::vector<double> sensitivity_sparsities(const std::vector<double>& sensitivity, double p, double alpha,
                                           bool weighted, const std::vector<std::int64_t>& params,
                                           const std::string& key) {
  const auto n = sensitivity.size();
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return sensitivity[a] < sensitivity[b]; });
  std::vector<double> s(n, p);
  const auto density = [&](std::size_t rank) {
    return (1.0 - p - alpha) + static_cast<double>(rank) * 2.0 * alpha / static_cast<double>(n - 1);
  };
  // Equal sensitivities share the mean density of their ranks: the same score, the same sparsity
  // (a degenerate estimate, every trace 0, is then uniform instead of ordered by index). Distinct
  // scores get their rank's density, as the reference's argsort gives them.
  for (std::size_t first = 0; first < n && n > 1;) {
    std::size_t last = first + 1;
    while (last < n && sensitivity[order[last]] == sensitivity[order[first]]) ++last;
    double mean = 0;
    for (std::size_t r = first; r < last; ++r) mean += density(r);
    mean /= static_cast<double>(last - first);
    for (std::size_t r = first; r < last; ++r) s[order[r]] = 1.0 - mean;
    first = last;
  }
  double shift = 0;
  if (weighted && n > 0) {
    shift = p - weighted_sparsity(s, params);
    for (auto& x : s) x += shift;
  }
  for (std::size_t i = 0; i < n; ++i)
    if (!(s[i] >= 0 && s[i] < 1))
      SCALPEL_INPUT_ERROR("config: '{}' {} with prune.sparsity {} gives unit {} (0-based, in the allocation record's "
                          "order) the sparsity {:.4f} (outside [0, 1)){}; lower it", key, alpha, p, i, s[i],
                          weighted ? fmt::format(", after allocation.weighted's shift of {:+.4f} to reach the target "
                                                 "by parameters", shift)
                                   : std::string());
  return s;
}

}  // namespace scalpel::prune
