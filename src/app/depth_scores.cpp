// The math of `scalpel depth` (see depth_scores.hpp): scores, choices, LaCo's schedule and merge,
// and the renumbering of tensor names. No MPI, files or backends here.
#include "depth_scores.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <numeric>

#include "scalpel/core/error.hpp"

namespace scalpel::app::depth {

double cosine(const float* a, const float* b, std::int64_t d) {
  double dot = 0, na = 0, nb = 0;
  for (std::int64_t i = 0; i < d; ++i) {
    const double x = a[i], y = b[i];
    dot += x * y;
    na += x * x;
    nb += y * y;
  }
  if (na == 0 || nb == 0) return 0.5;
  return dot / (std::sqrt(na) * std::sqrt(nb));
}

double cosine_sum(const float* a, const float* b, std::int64_t rows, std::int64_t d) {
  double s = 0;
  for (std::int64_t r = 0; r < rows; ++r) s += cosine(a + r * d, b + r * d, d);
  return s;
}

double angular_distance(double cos) { return std::acos(std::clamp(cos, -1.0, 1.0)) / std::numbers::pi; }

std::vector<double> block_influence(std::span<const double> cos_sums, double tokens) {
  std::vector<double> bi;
  for (const double s : cos_sums) bi.push_back(1.0 - s / tokens);
  return bi;
}

std::int64_t blocks_to_remove(double remove, std::int64_t layers) {
  // A count past the model (1e30 too, which no integer holds: it was called "less than one block").
  if (remove >= static_cast<double>(layers))
    SCALPEL_INPUT_ERROR("config: 'depth.remove' asks for {} of the model's {} blocks: at least one block must remain",
                        remove, layers);
  const auto n = remove >= 1 ? static_cast<std::int64_t>(remove)
                             : static_cast<std::int64_t>(std::floor(remove * static_cast<double>(layers)));
  if (n < 1)
    SCALPEL_INPUT_ERROR("config: 'depth.remove' {} of the model's {} blocks is less than one block", remove, layers);
  if (n >= layers)
    SCALPEL_INPUT_ERROR("config: 'depth.remove' asks for {} of the model's {} blocks: at least one block must remain",
                        n, layers);
  return n;
}

std::vector<bool> protected_mask(const std::vector<std::int64_t>& protect, bool protect_set, const std::string& criterion,
                                 std::int64_t layers, std::int64_t n) {
  std::vector<bool> mask(static_cast<std::size_t>(layers), false);
  std::vector<std::int64_t> list = protect;
  if (!protect_set && criterion == "ppl") list = {0, layers - 1};
  for (const auto b : list) {
    if (b < 0 || b >= layers)
      SCALPEL_INPUT_ERROR("config: 'depth.protect' names block {}, but the model has {} blocks (0..{})", b, layers,
                          layers - 1);
    mask[static_cast<std::size_t>(b)] = true;
  }
  const auto free = std::count(mask.begin(), mask.end(), false);
  if (n > free)
    SCALPEL_INPUT_ERROR("config: 'depth.remove' asks for {} blocks, but only {} of the {} blocks are not in "
                        "'depth.protect'{}", n, free, layers,
                        protect_set ? "" : " (ppl protects the first and the last block unless depth.protect is given)");
  return mask;
}

std::vector<std::int64_t> lowest_blocks(std::span<const double> scores, std::int64_t n, const std::vector<bool>& prot) {
  std::vector<std::int64_t> order;
  for (std::size_t i = 0; i < scores.size(); ++i)
    if (!prot[i]) order.push_back(static_cast<std::int64_t>(i));
  std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) {
    return scores[static_cast<std::size_t>(a)] < scores[static_cast<std::size_t>(b)];
  });
  SCALPEL_CHECK(static_cast<std::int64_t>(order.size()) >= n, "lowest_blocks: {} candidates for {}", order.size(), n);
  order.resize(static_cast<std::size_t>(n));
  std::sort(order.begin(), order.end());
  return order;
}

std::int64_t deepest_start(std::int64_t layers, std::int64_t n, const std::vector<bool>& prot) {
  const auto start = layers - 1 - n;
  if (start < 0) return -1;
  for (std::int64_t l = start; l < start + n; ++l)
    if (prot[static_cast<std::size_t>(l)]) return -1;
  return start;
}

std::int64_t angular_start(std::span<const double> d, std::int64_t n, const std::vector<bool>& prot) {
  std::int64_t best = -1;
  for (std::int64_t l = 0; l < static_cast<std::int64_t>(d.size()); ++l) {
    bool free = true;
    for (std::int64_t k = l; k < l + n; ++k) free = free && !prot[static_cast<std::size_t>(k)];
    if (free && (best < 0 || d[static_cast<std::size_t>(l)] < d[static_cast<std::size_t>(best)])) best = l;
  }
  return best;
}

std::int64_t greedy_pick(std::span<const double> values) {
  std::int64_t best = -1;
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(values.size()); ++i) {
    const double v = values[static_cast<std::size_t>(i)];
    if (!std::isnan(v) && (best < 0 || v < values[static_cast<std::size_t>(best)])) best = i;
  }
  return best;
}

std::vector<std::int64_t> greedy_remove(std::int64_t layers, std::int64_t n, const std::vector<bool>& prot,
                                        const RoundScorer& score, std::vector<GreedyRound>& rounds) {
  std::vector<std::int64_t> removed;
  for (std::int64_t round = 0; round < n; ++round) {
    GreedyRound r;
    for (std::int64_t b = 0; b < layers; ++b)
      if (!prot[static_cast<std::size_t>(b)] && std::find(removed.begin(), removed.end(), b) == removed.end())
        r.candidates.push_back(b);
    r.values = score(removed, r.candidates);
    const auto pick = greedy_pick(r.values);
    if (pick < 0) SCALPEL_RUNTIME_ERROR("depth ppl: round {}: every candidate's perplexity is NaN", round);
    r.removed = r.candidates[static_cast<std::size_t>(pick)];
    removed.push_back(r.removed);
    rounds.push_back(std::move(r));
  }
  std::sort(removed.begin(), removed.end());
  return removed;
}

std::vector<LacoAttempt> laco_schedule(std::int64_t layers, const LacoOptions& o, const std::vector<bool>& prot,
                                       const std::function<double(std::int64_t, std::int64_t)>& similarity,
                                       const std::function<void(std::int64_t, std::int64_t)>& accept) {
  std::vector<std::vector<std::int64_t>> groups(static_cast<std::size_t>(layers));
  for (std::int64_t i = 0; i < layers; ++i) groups[static_cast<std::size_t>(i)] = {i};
  std::vector<LacoAttempt> attempts;
  std::int64_t removed = 0;
  for (std::int64_t l = layers - o.merge; l >= 0 && removed < o.remove;) {
    const auto cur = static_cast<std::int64_t>(groups.size());
    const auto count = std::min({o.merge, o.remove - removed + 1, cur - l});
    LacoAttempt a{l, count, {}, 0, false};
    bool free = count >= 2;
    for (std::int64_t k = l; k < l + count; ++k)
      for (const auto b : groups[static_cast<std::size_t>(k)]) {
        a.originals.push_back(b);
        free = free && !prot[static_cast<std::size_t>(b)];
      }
    if (!free) {
      --l;
      continue;
    }
    a.similarity = similarity(l, count);
    a.accepted = a.similarity > o.threshold;
    attempts.push_back(a);
    if (!a.accepted) {
      --l;
      continue;
    }
    accept(l, count);
    auto& g = groups[static_cast<std::size_t>(l)];
    g = a.originals;
    groups.erase(groups.begin() + l + 1, groups.begin() + l + count);
    removed += count - 1;
    l -= o.interval;
  }
  return attempts;
}

void rdsc_merge(std::span<const float> base, const std::vector<std::span<const float>>& others, std::span<float> out) {
  for (const auto& o : others)
    SCALPEL_CHECK(o.size() == base.size(), "rdsc_merge: {} elements against {}", o.size(), base.size());
  SCALPEL_CHECK(out.size() == base.size(), "rdsc_merge: out {} against {}", out.size(), base.size());
  for (std::size_t i = 0; i < base.size(); ++i) {
    const double b = base[i];
    double v = b;
    for (const auto& o : others) v += static_cast<double>(o[i]) - b;
    out[i] = static_cast<float>(v);
  }
}

std::string renumber_block(const std::string& name, const std::vector<std::string>& stems,
                           const std::vector<std::int64_t>& new_index) {
  for (const auto& stem : stems) {
    if (name.compare(0, stem.size(), stem) != 0) continue;
    const auto dot = name.find('.', stem.size());
    const auto digits = name.substr(stem.size(), dot == std::string::npos ? std::string::npos : dot - stem.size());
    if (digits.empty() || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
      continue;
    const auto i = std::stoll(digits);
    if (i >= static_cast<std::int64_t>(new_index.size())) return name;
    const auto to = new_index[static_cast<std::size_t>(i)];
    if (to < 0) return "";
    return stem + std::to_string(to) + (dot == std::string::npos ? "" : name.substr(dot));
  }
  return name;
}

}  // namespace scalpel::app::depth
