// Distributed k-th selection over ranks (see select.hpp).
#include "scalpel/prune/select.hpp"

#include <array>
#include <cstring>
#include <limits>

#include "scalpel/core/error.hpp"
#include "scalpel/core/float_order.hpp"

namespace scalpel::prune {
SelectThreshold select_over(dist::Comm& group, Backend& be, const Tensor& scores, std::int64_t k) {
  if (group.size() == 1) return be.kth_threshold(scores, k);
  const Tensor host = be.download(scores);
  const float* s = host.f32();
  const std::int64_t n = host.numel();
  std::int64_t total = n;
  group.allreduce_sum(std::span<std::int64_t>(&total, 1));
  SCALPEL_CHECK(k >= 0 && k <= total, "select_over: k {} of {} scores", k, total);
  if (k == 0) return {-std::numeric_limits<float>::infinity(), 0};

  // Rounds of (bits, shift): the key's top 12 bits, then the next 10, then the last 10.
  constexpr std::array<std::pair<int, int>, 3> kRounds{{{12, 20}, {10, 10}, {10, 0}}};
  std::uint32_t prefix = 0;        // key bits fixed so far (above the current round's shift)
  std::uint32_t prefix_mask = 0;   // which bits those are
  std::int64_t below = 0;          // scores (all ranks) whose key is below the prefix's range
  for (const auto& [bits, shift] : kRounds) {
    const std::size_t bins = std::size_t{1} << bits;
    std::vector<std::int64_t> hist(bins, 0);
    for (std::int64_t i = 0; i < n; ++i) {
      const auto key = order_key(s[i]);
      if ((key & prefix_mask) == prefix) ++hist[(key >> shift) & (bins - 1)];
    }
    group.allreduce_sum(std::span<std::int64_t>(hist));
    std::size_t b = 0;
    while (below + hist[b] < k) below += hist[b++];  // the k-th smallest lies in bin b
    prefix |= static_cast<std::uint32_t>(b) << shift;
    prefix_mask |= static_cast<std::uint32_t>(bins - 1) << shift;
  }
  // prefix is now the k-th smallest key; `below` scores are smaller, need = k - below ties go.
  std::int64_t equal = 0;
  for (std::int64_t i = 0; i < n; ++i) equal += order_key(s[i]) == prefix;
  const auto counts = group.allgather(equal);
  std::int64_t before = 0, all_equal = 0;
  for (int r = 0; r < group.size(); ++r) {
    if (r < group.rank()) before += counts[static_cast<std::size_t>(r)];
    all_equal += counts[static_cast<std::size_t>(r)];
  }
  const std::int64_t need = k - below;
  SCALPEL_CHECK(need >= 1 && need <= all_equal, "select_over: {} ties needed of {}", need, all_equal);
  const std::int64_t take = std::clamp<std::int64_t>(need - before, 0, equal);
  return {key_value(prefix), take == equal ? std::numeric_limits<std::int64_t>::max() : take};
}

BlockSelect group_select(dist::Comm& group) {
  return [&group](Backend& be, const Tensor& scores, std::int64_t k) { return select_over(group, be, scores, k); };
}

}  // namespace scalpel::prune
