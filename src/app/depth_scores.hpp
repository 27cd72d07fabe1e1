// The math of `scalpel depth` (removing whole decoder blocks), with no MPI, files or backends:
// cosines of hidden states, each criterion's scores and choice (ShortGPT's Block Influence, the
// angular distance of Gromov et al., the perplexity greedy of SLEB / Shortened LLaMA, LaCo's
// merge schedule and its RDSC weight formula), the checks of depth.remove and depth.protect, and
// the renumbering of the kept blocks' tensor names. The driver (depth_run.cpp) feeds them hidden
// states and per-window sums it computes and gathers. Private to app.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace scalpel::app::depth {

// cos(a, b) of two rows of d floats, in float64; 0.5 when either norm is zero (ShortGPT's
// nan_to_num(nan=0.5) of the 0/0 it gets there).
double cosine(const float* a, const float* b, std::int64_t d);
// Σ_r cos(a_r, b_r) over `rows` rows of d (row-major), in row order.
double cosine_sum(const float* a, const float* b, std::int64_t rows, std::int64_t d);
// arccos(cos) / π, cos clamped to [-1, 1].
double angular_distance(double cos);
// BI_l = 1 - cos_sums[l] / tokens.
std::vector<double> block_influence(std::span<const double> cos_sums, double tokens);

// Blocks to remove: depth.remove as a count, or floor(fraction · layers) for a fraction < 1.
// Input Error naming depth.remove when that is 0 or leaves no block.
std::int64_t blocks_to_remove(double remove, std::int64_t layers);
// depth.protect as a mask over the layers (ppl: the first and last block when not given). Input
// Errors naming the key: an index past the last block, fewer unprotected blocks than n.
std::vector<bool> protected_mask(const std::vector<std::int64_t>& protect, bool protect_set, const std::string& criterion,
                                 std::int64_t layers, std::int64_t n);

// The n blocks of lowest score that are not protected, in ascending index order (ties: the lower
// index is removed first).
std::vector<std::int64_t> lowest_blocks(std::span<const double> scores, std::int64_t n, const std::vector<bool>& prot);
// The start l* of the n consecutive blocks to remove: argmin of d[l] (d holds d(l, n) for
// l = 0 .. L - n) over the windows l .. l+n-1 without a protected block (ties: lowest l); -1 when
// every window holds one.
std::int64_t angular_start(std::span<const double> d, std::int64_t n, const std::vector<bool>& prot);
// Gromov et al.'s simple rule: the n deepest blocks before the last, L-1-n .. L-2; -1 when one of
// them is protected (or n > L - 1).
std::int64_t deepest_start(std::int64_t layers, std::int64_t n, const std::vector<bool>& prot);
// Index of the smallest value (ties: the first); NaN never wins; -1 for none.
std::int64_t greedy_pick(std::span<const double> values);

// The perplexity greedy: n rounds; each scores every unprotected, not yet removed block (the
// callback returns the calibration perplexity with `removed` plus each candidate skipped, one per
// candidate) and removes the best. `rounds` receives each round's candidates and values.
struct GreedyRound {
  std::vector<std::int64_t> candidates;
  std::vector<double> values;
  std::int64_t removed = -1;
};
using RoundScorer = std::function<std::vector<double>(const std::vector<std::int64_t>& removed,
                                                      const std::vector<std::int64_t>& candidates)>;
std::vector<std::int64_t> greedy_remove(std::int64_t layers, std::int64_t n, const std::vector<bool>& prot,
                                        const RoundScorer& score, std::vector<GreedyRound>& rounds);

// LaCo's schedule (paper Algorithm 1) over the current blocks, each a group of original indices:
// l from (current count - C) down to 0; a candidate merges blocks l .. l+c-1 of the current model
// (c = C, or fewer so that at most n blocks are removed in all); no block of the group may be
// protected. similarity(l, c) scores the candidate; above the threshold it is accepted (accept(l,
// c), then l -= I), else l -= 1. Stops when n blocks are gone or l < 0.
struct LacoAttempt {
  std::int64_t start = 0, count = 0;    // in the current model's indices
  std::vector<std::int64_t> originals;  // original indices of the blocks merged
  double similarity = 0;
  bool accepted = false;
};
struct LacoOptions {
  std::int64_t merge = 2, interval = 1, remove = 1;
  double threshold = 0.45;
};
std::vector<LacoAttempt> laco_schedule(std::int64_t layers, const LacoOptions& o, const std::vector<bool>& prot,
                                       const std::function<double(std::int64_t, std::int64_t)>& similarity,
                                       const std::function<void(std::int64_t, std::int64_t)>& accept);

// RDSC: out = base + Σ_k (others[k] - base), elementwise in float64 with the original base in
// every difference, rounded to float once. out may alias base.
void rdsc_merge(std::span<const float> base, const std::vector<std::span<const float>>& others, std::span<float> out);

// A tensor name with its decoder block renumbered: names under one of `stems` ("model.layers.")
// followed by an index i become stem + new_index[i] (empty when new_index[i] < 0: dropped);
// other names are returned unchanged.
std::string renumber_block(const std::string& name, const std::vector<std::string>& stems,
                           const std::vector<std::int64_t>& new_index);

}  // namespace scalpel::app::depth
