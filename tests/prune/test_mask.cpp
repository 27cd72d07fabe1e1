// Patterns, the exact-structure checker and mask bit packing: the pieces the pruners' tests and
// `scalpel inspect` rely on, so they are checked on hand-made cases first.
#include <gtest/gtest.h>

#include "scalpel/core/error.hpp"
#include "scalpel/prune/mask.hpp"
#include "scalpel/prune/pruner.hpp"

namespace scalpel::test {
namespace {

using namespace scalpel::prune;

std::string input_error(auto&& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::input);
    return e.what();
  }
  return "no error";
}

TEST(Pattern, ParsesAndValidates) {
  const auto p = Pattern::parse("2:4", 0.9, "cfg");
  EXPECT_TRUE(p.is_nm());
  EXPECT_EQ(p.n, 2);
  EXPECT_EQ(p.m, 4);
  EXPECT_EQ(p.str(), "2:4");
  EXPECT_DOUBLE_EQ(Pattern::parse("unstructured", 0.7, "cfg").sparsity, 0.7);
  EXPECT_NE(input_error([] { Pattern::parse("4:4", 0.5, "layer 3 fc1"); }).find("layer 3 fc1"), std::string::npos);
  EXPECT_NE(input_error([] { Pattern::parse("2-4", 0.5, "cfg"); }).find("'2-4'"), std::string::npos);
  EXPECT_NE(input_error([] { Pattern::parse("unstructured", 1.0, "fc2"); }).find("outside [0, 1)"), std::string::npos);
  EXPECT_NE(input_error([] { validate_pattern(Pattern::nm(0, 4), "q_proj"); }).find("q_proj"), std::string::npos);
}

TEST(Pattern, CountsFollowTheReferences) {
  // int(numel * sparsity) in double, as Python computes it.
  EXPECT_EQ(unstructured_count(19200, 0.7), 13440);
  EXPECT_EQ(unstructured_count(10, 0.29), 2);
  EXPECT_EQ(unstructured_count(100, 0.0), 0);
  EXPECT_EQ(nm_group_count(2, 4, 4), 2);
  EXPECT_EQ(nm_group_count(2, 4, 3), 2);  // topk(2) over the short last slice
  EXPECT_EQ(nm_group_count(3, 4, 2), 2);
  // 64 x 300 at 4:8: 37 full groups (4 each) and a tail of 4 (4 pruned) per row.
  EXPECT_EQ(expected_pruned(64, 300, Pattern::nm(4, 8), Method::sparsegpt), 64 * (37 * 4 + 4));
  // SparseGPT counts per block of 128 columns: 2 x int(64*128*0.7) + int(64*44*0.7).
  EXPECT_EQ(expected_pruned(64, 300, Pattern::unstructured(0.7), Method::sparsegpt, 128), 2 * 5734 + 1971);
  EXPECT_EQ(expected_pruned(64, 300, Pattern::unstructured(0.7), Method::wanda), 64 * 210);
  EXPECT_EQ(expected_pruned(64, 300, Pattern::unstructured(0.7), Method::magnitude), 13440);
  // N:M blocks are rounded down to a multiple of M so groups never straddle two blocks.
  EXPECT_EQ(sparsegpt_blocksize(128, Pattern::nm(1, 3)), 126);
  EXPECT_EQ(sparsegpt_blocksize(2, Pattern::nm(2, 4)), 4);
  EXPECT_EQ(sparsegpt_blocksize(128, Pattern::unstructured(0.5)), 128);
}

TEST(Structure, MaskCheckIsExactAndWeightCheckIsAtLeast) {
  // 2 rows x 6 columns at 1:4: groups [0, 4) and a tail [4, 6) pruning 1 each.
  Tensor mask = Tensor::empty({2, 6}, DType::u8);
  const std::uint8_t good[12] = {1, 0, 1, 1, 0, 1, /**/ 0, 1, 1, 1, 1, 0};
  std::copy(good, good + 12, mask.data<std::uint8_t>());
  auto r = check_mask(mask, Pattern::nm(1, 4));
  EXPECT_TRUE(r.nm_ok()) << r.describe();
  EXPECT_EQ(r.zeros, 4);
  EXPECT_EQ(r.groups, 4);
  mask.data<std::uint8_t>()[7] = 0;  // row 1, group 0 now prunes 2: exact check fails
  r = check_mask(mask, Pattern::nm(1, 4));
  EXPECT_EQ(r.bad_groups, 1);
  EXPECT_EQ(r.first_bad_row, 1);
  EXPECT_EQ(r.first_bad_col, 0);
  EXPECT_NE(r.describe().find("break the pattern"), std::string::npos);

  const float wv[12] = {1, 0, 2, 3, 0, 0, /**/ 0, 0, 1, 1, 0, 2};
  Tensor w = Tensor::from(wv, {2, 6});
  r = check_weight(w, Pattern::nm(1, 4));  // extra zeros are allowed in a weight...
  EXPECT_TRUE(r.nm_ok()) << r.describe();
  EXPECT_EQ(r.zeros, 6);
  w.f32()[4] = 5;
  w.f32()[5] = 6;  // ...missing ones are not: row 0's tail has no zero left
  r = check_weight(w, Pattern::nm(1, 4));
  EXPECT_EQ(r.bad_groups, 1);
  EXPECT_EQ(r.first_bad_row, 0);
  EXPECT_EQ(r.first_bad_col, 4);
  // Unstructured: just the count.
  r = check_weight(w, Pattern::unstructured(0.5));
  EXPECT_EQ(r.groups, 0);
  EXPECT_EQ(r.zeros, 4);
  EXPECT_EQ(count_unmasked_nonzeros(w, mask), 2);  // mask prunes (0, 4) and (1, 5): 5 and 2 remain
}

TEST(MaskPacking, RoundTripsAndRejectsCorruptData) {
  std::vector<std::uint8_t> mask(21);
  for (std::size_t i = 0; i < mask.size(); ++i) mask[i] = (i * 5 + 1) % 3 == 0;
  const auto bits = pack_mask(mask);
  ASSERT_EQ(bits.size(), 3u);
  // LSB first: mask[0..7] -> bits[0] bit 0..7.
  std::uint8_t b0 = 0;
  for (int i = 0; i < 8; ++i) b0 |= static_cast<std::uint8_t>(mask[i] << i);
  EXPECT_EQ(bits[0], b0);
  EXPECT_EQ(unpack_mask(bits, 21), mask);
  auto bad = bits;
  bad[2] |= 0x80;  // a padding bit set
  EXPECT_NE(input_error([&] { unpack_mask(bad, 21); }).find("padding"), std::string::npos);
  EXPECT_NE(input_error([&] { unpack_mask(std::span(bits).first(2), 21); }).find("21 entries need 3"),
            std::string::npos);
  EXPECT_TRUE(pack_mask({}).empty());
  EXPECT_TRUE(unpack_mask({}, 0).empty());
}

}  // namespace
}  // namespace scalpel::test
