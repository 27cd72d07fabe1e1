// LLM Surgeon's global selection (threshold.py): one threshold over the costs of every linear of
// the model per shot, for elements, N:M groups, or rows and columns with their overlap counted.
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numeric>

#include "scalpel/core/error.hpp"
#include "scalpel/prune/surgeon.hpp"

namespace scalpel::prune::surgeon {
namespace {

constexpr double kNothing = -std::numeric_limits<double>::infinity();

// The rule taking exactly k of `costs` (concatenated in linear then row-major order): every cost
// below `value` and the first `equal` costs equal to it.
struct Take {
  float value = 0;
  std::int64_t equal = 0;
};

// Takes the costs by value (a caller that no longer needs them moves them in): the count below
// the k-th does not depend on their order, so it is taken on the partitioned copy.
Take kth(std::vector<float> c, std::int64_t k) {
  if (k <= 0) return {-std::numeric_limits<float>::infinity(), 0};
  std::nth_element(c.begin(), c.begin() + (k - 1), c.end());
  const float v = c[static_cast<std::size_t>(k - 1)];
  const auto below = std::count_if(c.begin(), c.begin() + (k - 1), [v](float x) { return x < v; });
  return {v, k - below};
}

bool taken(float cost, Take& t) {
  if (cost < t.value) return true;
  if (cost == t.value && t.equal > 0) {
    --t.equal;
    return true;
  }
  return false;
}

std::vector<Removal> select_elements(const std::vector<Linear>& ls, const std::vector<Scored>& sc, double s,
                                     double& threshold) {
  std::vector<float> all;
  for (const auto& x : sc) all.insert(all.end(), x.cost.begin(), x.cost.end());
  const auto n = static_cast<std::int64_t>(all.size());
  const auto k = std::min(n, static_cast<std::int64_t>(std::floor(s * static_cast<double>(n))));
  Take t = kth(std::move(all), k);
  threshold = k > 0 ? t.value : kNothing;
  std::vector<Removal> out(ls.size());
  for (std::size_t i = 0; i < ls.size(); ++i) {
    out[i].mask.assign(sc[i].cost.size(), 0);
    for (std::size_t j = 0; j < sc[i].cost.size(); ++j)
      if (taken(sc[i].cost[j], t)) {
        out[i].mask[j] = 1;
        ++out[i].removed;
      }
  }
  return out;
}

// Groups of m real input columns (the bias column excluded); a group's cost is the sum of its n
// smallest element costs (ties: lower column first).
struct Groups {
  std::int64_t rows = 0, per_row = 0, stride = 0;
};

Groups groups_of(const Linear& l, int m) {
  const auto C = l.w.size(1) - (l.has_bias ? 1 : 0);
  if (C % m != 0)
    SCALPEL_INPUT_ERROR("{}: {} input columns are not a multiple of M = {} (prune.pattern N:M)", l.name, C, m);
  return {l.w.size(0), C / m, l.w.size(1)};
}

std::array<int, 64> smallest_order(const float* c, int m) {
  std::array<int, 64> idx{};
  std::iota(idx.begin(), idx.begin() + m, 0);
  std::stable_sort(idx.begin(), idx.begin() + m, [c](int a, int b) { return c[a] < c[b]; });
  return idx;
}

std::vector<Removal> select_groups(const std::vector<Linear>& ls, const std::vector<Scored>& sc, const Options& o,
                                   double s, double& threshold) {
  SCALPEL_CHECK(o.m >= 1 && o.m <= 64 && o.n >= 1 && o.n <= o.m, "N:M {}:{}", o.n, o.m);
  std::vector<float> all;
  std::vector<Groups> gs;
  for (std::size_t i = 0; i < ls.size(); ++i) {
    gs.push_back(groups_of(ls[i], o.m));
    const auto& g = gs.back();
    for (std::int64_t r = 0; r < g.rows; ++r)
      for (std::int64_t b = 0; b < g.per_row; ++b) {
        const float* c = sc[i].cost.data() + r * g.stride + b * o.m;
        const auto ord = smallest_order(c, o.m);
        float sum = 0;
        for (int q = 0; q < o.n; ++q) sum += c[ord[static_cast<std::size_t>(q)]];
        all.push_back(sum);
      }
  }
  const auto nb = static_cast<std::int64_t>(all.size());
  const double frac = s * static_cast<double>(o.m) / static_cast<double>(o.n);
  const auto k = std::min(nb, static_cast<std::int64_t>(std::floor(frac * static_cast<double>(nb))));
  Take t = kth(all, k);
  threshold = k > 0 ? t.value : kNothing;
  std::vector<Removal> out(ls.size());
  std::size_t at = 0;
  for (std::size_t i = 0; i < ls.size(); ++i) {
    const auto& g = gs[i];
    out[i].mask.assign(sc[i].cost.size(), 0);
    for (std::int64_t r = 0; r < g.rows; ++r)
      for (std::int64_t b = 0; b < g.per_row; ++b, ++at) {
        if (!taken(all[at], t)) continue;
        const auto base = r * g.stride + b * o.m;
        const auto ord = smallest_order(sc[i].cost.data() + base, o.m);
        for (int q = 0; q < o.n; ++q) out[i].mask[static_cast<std::size_t>(base + ord[static_cast<std::size_t>(q)])] = 1;
        out[i].removed += o.n;
      }
  }
  return out;
}

// Rows and columns: removed(τ) = Σ r·C + c·R - r·c over linears, r and c the structures with cost <= τ.
struct Sorted {
  std::vector<float> rows, cols;
  std::int64_t R = 0, C = 0;
};

std::int64_t removed_at(const std::vector<Sorted>& ss, float tau) {
  std::int64_t total = 0;
  for (const auto& x : ss) {
    const auto r = std::upper_bound(x.rows.begin(), x.rows.end(), tau) - x.rows.begin();
    const auto c = std::upper_bound(x.cols.begin(), x.cols.end(), tau) - x.cols.begin();
    total += r * x.C + c * x.R - r * c;
  }
  return total;
}

std::vector<Removal> select_structures(const std::vector<Linear>& ls, const std::vector<Scored>& sc,
                                       const Options& o, double s, double& threshold) {
  std::vector<Sorted> ss;
  std::vector<float> values;
  std::int64_t total = 0;
  for (std::size_t i = 0; i < ls.size(); ++i) {
    Sorted x{o.rows ? sc[i].row_cost : std::vector<float>{}, o.columns ? sc[i].col_cost : std::vector<float>{},
             ls[i].w.size(0), ls[i].w.size(1)};
    std::sort(x.rows.begin(), x.rows.end());
    std::sort(x.cols.begin(), x.cols.end());
    values.insert(values.end(), x.rows.begin(), x.rows.end());
    values.insert(values.end(), x.cols.begin(), x.cols.end());
    total += x.R * x.C;
    ss.push_back(std::move(x));
  }
  std::sort(values.begin(), values.end());
  values.erase(std::unique(values.begin(), values.end()), values.end());
  const auto target = static_cast<std::int64_t>(std::floor(s * static_cast<double>(total)));
  // Largest τ among the costs with removed(τ) <= target (removed is non-decreasing in τ).
  const auto it = std::partition_point(values.begin(), values.end(),
                                       [&](float v) { return removed_at(ss, v) <= target; });
  const bool any = it != values.begin();
  const float tau = any ? *(it - 1) : 0.0f;
  threshold = any ? tau : kNothing;
  std::vector<Removal> out(ls.size());
  for (std::size_t i = 0; i < ls.size(); ++i) {
    const auto R = ls[i].w.size(0), C = ls[i].w.size(1);
    if (!any) continue;
    if (o.rows)
      for (std::int64_t r = 0; r < R; ++r)
        if (sc[i].row_cost[static_cast<std::size_t>(r)] <= tau) out[i].rows.push_back(r);
    if (o.columns)
      for (std::int64_t c = 0; c < C; ++c)
        if (sc[i].col_cost[static_cast<std::size_t>(c)] <= tau) out[i].cols.push_back(c);
    const auto r = static_cast<std::int64_t>(out[i].rows.size()), c = static_cast<std::int64_t>(out[i].cols.size());
    out[i].removed = r * C + c * R - r * c;
  }
  return out;
}

}  // namespace

std::vector<Removal> select(const std::vector<Linear>& ls, const std::vector<Scored>& sc, const Options& o,
                            double sparsity, double& threshold) {
  SCALPEL_CHECK(ls.size() == sc.size(), "{} linears, {} scored", ls.size(), sc.size());
  SCALPEL_CHECK(sparsity >= 0.0 && sparsity <= 1.0, "sparsity {}", sparsity);
  switch (o.shape) {
    case Shape::element: return select_elements(ls, sc, sparsity, threshold);
    case Shape::nm: return select_groups(ls, sc, o, sparsity, threshold);
    case Shape::structured: return select_structures(ls, sc, o, sparsity, threshold);
  }
  SCALPEL_CHECK(false, "unknown shape");
}

}  // namespace scalpel::prune::surgeon
