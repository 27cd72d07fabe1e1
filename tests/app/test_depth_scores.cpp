// Unit tests of the math of `scalpel depth` (src/app/depth_scores.cpp), on hand-made inputs:
// cosines with a zero-norm token, Block Influence, the angular argmin with protected blocks, the
// perplexity greedy, LaCo's schedule and RDSC formula, the depth.remove / depth.protect checks and
// the renumbering of tensor names.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "../../src/app/depth_scores.hpp"
#include "scalpel/core/error.hpp"

namespace {

using namespace scalpel::app::depth;

TEST(DepthScores, CosineAndBlockInfluenceWithAZeroNormToken) {
  // Three tokens of d = 2: parallel (cos 1), orthogonal (cos 0), and an input of zero norm, which
  // counts 0.5 as ShortGPT's nan_to_num(0.5) makes it.
  const float a[] = {1, 2, 1, 0, 0, 0};
  const float b[] = {2, 4, 0, 3, 5, 1};
  EXPECT_DOUBLE_EQ(cosine(a, b, 2), 1.0);
  EXPECT_DOUBLE_EQ(cosine(a + 2, b + 2, 2), 0.0);
  EXPECT_DOUBLE_EQ(cosine(a + 4, b + 4, 2), 0.5);
  EXPECT_DOUBLE_EQ(cosine(b + 4, a + 4, 2), 0.5);  // either side of zero norm
  EXPECT_DOUBLE_EQ(cosine_sum(a, b, 3, 2), 1.5);
  // Two blocks over those 3 tokens: sums 1.5 and 3 -> BI 0.5 and 0.
  const double sums[] = {1.5, 3.0};
  const auto bi = block_influence(sums, 3.0);
  ASSERT_EQ(bi.size(), 2u);
  EXPECT_DOUBLE_EQ(bi[0], 0.5);
  EXPECT_DOUBLE_EQ(bi[1], 0.0);
  // Opposite vectors: cos -1, angular distance 1; orthogonal: 0.5.
  const float c[] = {1, 1}, e[] = {-2, -2};
  EXPECT_DOUBLE_EQ(cosine(c, e, 2), -1.0);
  EXPECT_DOUBLE_EQ(angular_distance(-1.0), 1.0);
  EXPECT_DOUBLE_EQ(angular_distance(0.0), 0.5);
  EXPECT_DOUBLE_EQ(angular_distance(1.0 + 1e-15), 0.0);  // clamped, never NaN
}

TEST(DepthScores, LowestBlocksSkipProtectedAndBreakTiesByIndex) {
  const std::vector<double> bi{0.9, 0.1, 0.2, 0.1, 0.05, 0.7};
  const std::vector<bool> none(6, false);
  EXPECT_EQ(lowest_blocks(bi, 2, none), (std::vector<std::int64_t>{1, 4}));  // 0.05, then the first 0.1
  EXPECT_EQ(lowest_blocks(bi, 3, none), (std::vector<std::int64_t>{1, 3, 4}));
  std::vector<bool> prot(6, false);
  prot[4] = true;
  EXPECT_EQ(lowest_blocks(bi, 2, prot), (std::vector<std::int64_t>{1, 3}));
}

TEST(DepthScores, AngularArgminAvoidsWindowsWithAProtectedBlock) {
  // d(l, 2) for l = 0..4 of a 6-block model: the minimum is at l = 3 (blocks 3, 4).
  const std::vector<double> d{0.4, 0.3, 0.2, 0.1, 0.15};
  std::vector<bool> prot(6, false);
  EXPECT_EQ(angular_start(d, 2, prot), 3);
  prot[4] = true;  // excludes l = 3 and l = 4
  EXPECT_EQ(angular_start(d, 2, prot), 2);
  prot[2] = true;  // excludes l = 1, 2 as well: only l = 0 is left
  EXPECT_EQ(angular_start(d, 2, prot), 0);
  prot[0] = true;
  EXPECT_EQ(angular_start(d, 2, prot), -1);
  const std::vector<double> tie{0.2, 0.1, 0.1};
  EXPECT_EQ(angular_start(tie, 1, std::vector<bool>(3, false)), 1);  // ties: lowest l
}

TEST(DepthScores, DeepestBeforeTheLast) {
  const std::vector<bool> none(12, false);
  EXPECT_EQ(deepest_start(12, 3, none), 8);  // blocks 8, 9, 10; 11 (the last) stays
  EXPECT_EQ(deepest_start(4, 3, std::vector<bool>(4, false)), 0);
  EXPECT_EQ(deepest_start(4, 4, std::vector<bool>(4, false)), -1);
  std::vector<bool> prot = none;
  prot[9] = true;
  EXPECT_EQ(deepest_start(12, 3, prot), -1);
  prot[9] = false;
  prot[11] = true;  // the last block is never among them
  EXPECT_EQ(deepest_start(12, 3, prot), 8);
}

TEST(DepthScores, GreedyRemovesTheCheapestBlockEachRound) {
  EXPECT_EQ(greedy_pick(std::vector<double>{3, 1, 1, 2}), 1);
  EXPECT_EQ(greedy_pick(std::vector<double>{NAN, 5, 4}), 2);
  EXPECT_EQ(greedy_pick(std::vector<double>{}), -1);
  // A model of 5 blocks whose perplexity is 10 + the sum of the removed blocks' costs, except that
  // removing 1 and 2 together costs little: the greedy takes 3 first (cheapest alone), then 2.
  const double cost[] = {100, 5, 6, 1, 100};
  auto score = [&](const std::vector<std::int64_t>& removed, const std::vector<std::int64_t>& cands) {
    std::vector<double> v;
    for (const auto c : cands) {
      double p = 10 + cost[c];
      for (const auto r : removed) p += cost[r];
      v.push_back(p);
    }
    return v;
  };
  std::vector<bool> prot(5, false);
  prot[0] = prot[4] = true;
  std::vector<GreedyRound> rounds;
  EXPECT_EQ(greedy_remove(5, 2, prot, score, rounds), (std::vector<std::int64_t>{1, 3}));
  ASSERT_EQ(rounds.size(), 2u);
  EXPECT_EQ(rounds[0].candidates, (std::vector<std::int64_t>{1, 2, 3}));
  EXPECT_EQ(rounds[0].values, (std::vector<double>{15, 16, 11}));
  EXPECT_EQ(rounds[0].removed, 3);
  EXPECT_EQ(rounds[1].candidates, (std::vector<std::int64_t>{1, 2}));
  EXPECT_EQ(rounds[1].removed, 1);
}

TEST(DepthScores, RdscMergeUsesTheOriginalBaseInEveryDifference) {
  // theta_l + (theta_{l+1} - theta_l) + (theta_{l+2} - theta_l) = theta_{l+1} + theta_{l+2} - theta_l.
  const std::vector<float> base{1, 2, -3}, o1{4, 0, 1}, o2{0.5f, 2, -1};
  std::vector<float> out(3);
  rdsc_merge(base, {o1, o2}, out);
  EXPECT_EQ(out, (std::vector<float>{3.5f, 0, 3}));  // (4+0.5-1, 0+2-2, 1-1+3)
  // In place, as the notebooks would do it, must give the same (the base is read before writing).
  std::vector<float> inplace = base;
  rdsc_merge(inplace, {o1, o2}, inplace);
  EXPECT_EQ(inplace, out);
  // Two blocks: the merge is the second block's weights.
  rdsc_merge(base, {o1}, out);
  EXPECT_EQ(out, o1);
}

TEST(DepthScores, LacoScheduleAcceptsAboveThresholdAndStopsAtRemove) {
  // 8 blocks, C = 3, I = 2, T = 0.5, remove 3. Similarity: high for starts 5 and 1, low elsewhere.
  std::vector<std::pair<std::int64_t, std::int64_t>> asked, accepted;
  auto sim = [&](std::int64_t l, std::int64_t c) {
    asked.emplace_back(l, c);
    return l == 5 || l == 1 ? 0.9 : 0.1;
  };
  auto acc = [&](std::int64_t l, std::int64_t c) { accepted.emplace_back(l, c); };
  const LacoOptions o{3, 2, 3, 0.5};
  const auto attempts = laco_schedule(8, o, std::vector<bool>(8, false), sim, acc);
  // l = 5: accepted (blocks 5, 6, 7 -> one; 2 removed); l = 3: count min(3, 3-2+1=2) = 2, rejected;
  // l = 2: rejected; l = 1: count 2, accepted (blocks 1, 2): 3 removed, stop.
  const std::vector<std::pair<std::int64_t, std::int64_t>> want_asked{{5, 3}, {3, 2}, {2, 2}, {1, 2}};
  EXPECT_EQ(asked, want_asked);
  EXPECT_EQ(accepted, (std::vector<std::pair<std::int64_t, std::int64_t>>{{5, 3}, {1, 2}}));
  ASSERT_EQ(attempts.size(), 4u);
  EXPECT_EQ(attempts[0].originals, (std::vector<std::int64_t>{5, 6, 7}));
  EXPECT_TRUE(attempts[3].accepted);
  EXPECT_EQ(attempts[3].originals, (std::vector<std::int64_t>{1, 2}));
  // A protected block is never part of a merge: with block 6 protected, starts 5 and 4 (which
  // hold it) are skipped without being scored.
  asked.clear();
  std::vector<bool> prot(8, false);
  prot[6] = true;
  const LacoOptions one{3, 1, 2, 0.5};
  laco_schedule(8, one, prot, [&](std::int64_t l, std::int64_t c) { asked.emplace_back(l, c); return 0.0; },
                [](std::int64_t, std::int64_t) {});
  EXPECT_EQ(asked.front(), (std::pair<std::int64_t, std::int64_t>{3, 3}));
  EXPECT_EQ(asked.size(), 4u);  // l = 3, 2, 1, 0
}

TEST(DepthScores, RemoveAndProtectChecksNameTheKey) {
  EXPECT_EQ(blocks_to_remove(2, 12), 2);
  EXPECT_EQ(blocks_to_remove(0.25, 12), 3);
  EXPECT_EQ(blocks_to_remove(0.3, 12), 3);  // floor: never more than asked
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const scalpel::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([] { blocks_to_remove(0.05, 12); }).find("'depth.remove'"), std::string::npos);
  EXPECT_NE(message([] { blocks_to_remove(4, 4); }).find("'depth.remove'"), std::string::npos);
  // A count no integer holds is past the model, not "less than one block" (its cast overflowed).
  EXPECT_NE(message([] { blocks_to_remove(1e30, 4); }).find("at least one block must remain"), std::string::npos);
  EXPECT_NE(message([] { protected_mask({5}, true, "bi", 4, 1); }).find("'depth.protect'"), std::string::npos);
  // ppl protects the first and the last block by default: 2 of 4 are free.
  const auto m = protected_mask({}, false, "ppl", 4, 2);
  EXPECT_EQ(m, (std::vector<bool>{true, false, false, true}));
  EXPECT_NE(message([] { protected_mask({}, false, "ppl", 4, 3); }).find("'depth.remove'"), std::string::npos);
  EXPECT_EQ(protected_mask({}, true, "ppl", 4, 3), std::vector<bool>(4, false));  // protect: [] given
}

TEST(DepthScores, RenumberBlockNames) {
  const std::vector<std::string> stems{"model.decoder.layers.", "decoder.layers."};
  const std::vector<std::int64_t> to{0, -1, 1, -1, 2};
  EXPECT_EQ(renumber_block("model.decoder.layers.2.fc1.weight", stems, to), "model.decoder.layers.1.fc1.weight");
  EXPECT_EQ(renumber_block("decoder.layers.4.self_attn.q_proj.bias", stems, to), "decoder.layers.2.self_attn.q_proj.bias");
  EXPECT_EQ(renumber_block("model.decoder.layers.3.fc2.weight", stems, to), "");
  EXPECT_EQ(renumber_block("model.decoder.final_layer_norm.weight", stems, to), "model.decoder.final_layer_norm.weight");
  EXPECT_EQ(renumber_block("model.decoder.layers.x.fc1", stems, to), "model.decoder.layers.x.fc1");
}

}  // namespace
