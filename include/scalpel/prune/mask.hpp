// Sparsity patterns (unstructured, N:M), exact-structure checks of masks and pruned weights, and
// bit packing of masks for checkpoints: shared by the pruners, their tests and `scalpel inspect`.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "scalpel/core/tensor.hpp"

namespace scalpel::prune {

// What to prune. Unstructured: the fraction `sparsity` in [0, 1). N:M (m > 0): n pruned of every
// m consecutive input columns of a row, 0 < n < m, as SparseGPT's prunen/prunem (2:4 keeps 2 of 4).
struct Pattern {
  double sparsity = 0.5;
  int n = 0, m = 0;

  bool is_nm() const { return m > 0; }
  // The fraction a full matrix ends up with (N:M: n/m, up to a short last group).
  double target() const { return is_nm() ? static_cast<double>(n) / m : sparsity; }
  std::string str() const;  // "unstructured 50%" or "2:4"

  static Pattern unstructured(double sparsity);
  static Pattern nm(int n, int m);
  // "unstructured" (with `sparsity`) or "N:M"; input Error naming `what` when malformed.
  static Pattern parse(const std::string& text, double sparsity, const std::string& what);
};

// Input Error naming `what` when the pattern is out of range.
void validate_pattern(const Pattern& p, const std::string& what);

// Entries an unstructured selection prunes from `numel` scores: int(numel * sparsity) as the
// references compute it (double product, truncated).
std::int64_t unstructured_count(std::int64_t numel, double sparsity);

// Entries an N:M pattern prunes from a group of `len` columns: n for a full group; a shorter last
// group of a row (cols not a multiple of m) prunes min(n, len). The references run topk(n) over
// whatever slice is left, i.e. n of the short group (and fail when len < n); min(n, len) is that
// rule extended, and it keeps the hardware property: at most m - n entries kept per group.
std::int64_t nm_group_count(int n, int m, std::int64_t len);

// What a mask or a weight holds.
struct StructureReport {
  std::int64_t rows = 0, cols = 0;
  std::int64_t zeros = 0;       // mask: pruned entries; weight: entries == 0
  std::int64_t groups = 0;      // N:M groups checked
  std::int64_t bad_groups = 0;  // groups that break the pattern
  std::int64_t first_bad_row = -1, first_bad_col = -1;

  std::int64_t total() const { return rows * cols; }
  double sparsity() const { return total() ? static_cast<double>(zeros) / static_cast<double>(total()) : 0.0; }
  bool nm_ok() const { return bad_groups == 0; }
  std::string describe() const;
};

// Exact check of a mask (U8, 1 = kept; [rows, cols] on the host): counts the pruned entries and,
// for N:M, checks that every group prunes exactly nm_group_count entries.
StructureReport check_mask(const Tensor& mask, const Pattern& p);
// Check of a pruned weight (any float dtype, host): counts zeros and, for N:M, checks that every
// group has at least nm_group_count zeros (a weight may hold more: dead inputs, exact zeros).
// This is what `scalpel inspect` can verify of a checkpoint without its mask.
StructureReport check_weight(const Tensor& w, const Pattern& p);
// Entries that the mask prunes but the weight still holds (should be 0).
std::int64_t count_unmasked_nonzeros(const Tensor& w, const Tensor& mask);

// Bit i of the packed form is mask[i] != 0, least significant bit first within each byte (numpy's
// packbits(bitorder="little")); the last byte is zero-padded.
std::vector<std::uint8_t> pack_mask(std::span<const std::uint8_t> mask);
// The n bytes (0/1) of a packed mask; input Error when `bits` holds fewer than n bits or its
// padding bits are not zero (a truncated or corrupt dataset).
std::vector<std::uint8_t> unpack_mask(std::span<const std::uint8_t> bits, std::int64_t n);

}  // namespace scalpel::prune
