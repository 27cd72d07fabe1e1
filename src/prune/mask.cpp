// Patterns, structure checks and mask bit packing. Plain host loops: these run on masks and
// checkpoint tensors already on the host, once per linear.
#include "scalpel/prune/mask.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "scalpel/core/error.hpp"

namespace scalpel::prune {

std::string Pattern::str() const {
  if (is_nm()) return fmt::format("{}:{}", n, m);
  return fmt::format("unstructured {:g}%", sparsity * 100);
}

Pattern Pattern::unstructured(double sparsity) {
  Pattern p;
  p.sparsity = sparsity;
  return p;
}

Pattern Pattern::nm(int n, int m) {
  Pattern p;
  p.n = n;
  p.m = m;
  p.sparsity = m > 0 ? static_cast<double>(n) / m : 0.0;
  return p;
}

Pattern Pattern::parse(const std::string& text, double sparsity, const std::string& what) {
  if (text == "unstructured") {
    Pattern p = unstructured(sparsity);
    validate_pattern(p, what);
    return p;
  }
  const auto colon = text.find(':');
  if (colon != std::string::npos) {
    try {
      std::size_t p1 = 0, p2 = 0;
      const int n = std::stoi(text.substr(0, colon), &p1);
      const int m = std::stoi(text.substr(colon + 1), &p2);
      if (p1 == colon && p2 == text.size() - colon - 1 && n > 0 && n < m) return nm(n, m);
    } catch (const std::exception&) {
    }
  }
  SCALPEL_INPUT_ERROR("{}: pattern '{}' is not 'unstructured' or N:M with 0 < N < M (N pruned of every M, e.g. 2:4)",
                      what, text);
}

void validate_pattern(const Pattern& p, const std::string& what) {
  if (p.is_nm()) {
    SCALPEL_CHECK_INPUT(p.n > 0 && p.n < p.m, "{}: N:M pattern {}:{} needs 0 < N < M", what, p.n, p.m);
  } else {
    SCALPEL_CHECK_INPUT(p.m == 0 && p.n == 0, "{}: N:M pattern {}:{} needs 0 < N < M", what, p.n, p.m);
    SCALPEL_CHECK_INPUT(p.sparsity >= 0.0 && p.sparsity < 1.0, "{}: sparsity {} is outside [0, 1)", what, p.sparsity);
  }
}

std::int64_t unstructured_count(std::int64_t numel, double sparsity) {
  return static_cast<std::int64_t>(static_cast<double>(numel) * sparsity);
}

std::int64_t nm_group_count(int n, int m, std::int64_t len) { return std::min<std::int64_t>(n, len); }

std::string StructureReport::describe() const {
  std::string s = fmt::format("{} x {}: {} zeros of {} ({:.4f}%)", rows, cols, zeros, total(), sparsity() * 100);
  if (groups > 0) {
    s += fmt::format(", {} N:M groups", groups);
    if (bad_groups > 0)
      s += fmt::format(", {} break the pattern (first at row {}, column {})", bad_groups, first_bad_row, first_bad_col);
  }
  return s;
}

namespace {

// Walks a row-major [rows, cols] array, counting "zeros" (is_zero) per N:M group; exact requires
// a group to hold exactly its count, otherwise at least.
template <class Z>
StructureReport check(std::int64_t rows, std::int64_t cols, const Pattern& p, bool exact, Z is_zero) {
  StructureReport r;
  r.rows = rows;
  r.cols = cols;
  const std::int64_t g = p.is_nm() ? p.m : std::max<std::int64_t>(cols, 1);
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t c0 = 0; c0 < cols; c0 += g) {
      const auto len = std::min(g, cols - c0);
      std::int64_t z = 0;
      for (std::int64_t j = c0; j < c0 + len; ++j) z += is_zero(i * cols + j) ? 1 : 0;
      r.zeros += z;
      if (!p.is_nm()) continue;
      ++r.groups;
      const auto want = nm_group_count(p.n, p.m, len);
      if (exact ? z != want : z < want) {
        if (r.bad_groups == 0) {
          r.first_bad_row = i;
          r.first_bad_col = c0;
        }
        ++r.bad_groups;
      }
    }
  return r;
}

void check_2d_host(const Tensor& t, const char* what) {
  SCALPEL_CHECK(t.defined() && t.device() == Device::cpu && t.dim() == 2, "{}: expected a 2-D host tensor, got {}",
                what, shape_str(t.shape()));
}

}  // namespace

StructureReport check_mask(const Tensor& mask, const Pattern& p) {
  check_2d_host(mask, "check_mask");
  SCALPEL_CHECK(mask.dtype() == DType::u8, "check_mask: mask is {}, expected U8", dtype_name(mask.dtype()));
  const std::uint8_t* m = mask.data<std::uint8_t>();
  return check(mask.size(0), mask.size(1), p, true, [m](std::int64_t i) { return m[i] == 0; });
}

StructureReport check_weight(const Tensor& w, const Pattern& p) {
  check_2d_host(w, "check_weight");
  const Tensor f = w.dtype() == DType::f32 ? w : w.to_f32();
  const float* x = f.f32();
  return check(w.size(0), w.size(1), p, false, [x](std::int64_t i) { return x[i] == 0.0f; });
}

std::int64_t count_unmasked_nonzeros(const Tensor& w, const Tensor& mask) {
  check_2d_host(w, "count_unmasked_nonzeros W");
  check_2d_host(mask, "count_unmasked_nonzeros mask");
  SCALPEL_CHECK(w.shape() == mask.shape() && mask.dtype() == DType::u8, "weight {} and mask {} ({})",
                shape_str(w.shape()), shape_str(mask.shape()), dtype_name(mask.dtype()));
  const Tensor f = w.dtype() == DType::f32 ? w : w.to_f32();
  const float* x = f.f32();
  const std::uint8_t* m = mask.data<std::uint8_t>();
  std::int64_t bad = 0;
  for (std::int64_t i = 0; i < w.numel(); ++i) bad += (m[i] == 0 && x[i] != 0.0f) ? 1 : 0;
  return bad;
}

std::vector<std::uint8_t> pack_mask(std::span<const std::uint8_t> mask) {
  std::vector<std::uint8_t> bits((mask.size() + 7) / 8, 0);
  for (std::size_t i = 0; i < mask.size(); ++i)
    if (mask[i]) bits[i / 8] |= static_cast<std::uint8_t>(1u << (i % 8));
  return bits;
}

std::vector<std::uint8_t> unpack_mask(std::span<const std::uint8_t> bits, std::int64_t n) {
  SCALPEL_CHECK_INPUT(n >= 0, "packed mask: negative length {}", n);
  const auto need = static_cast<std::size_t>((n + 7) / 8);
  SCALPEL_CHECK_INPUT(bits.size() == need, "packed mask holds {} bytes, {} entries need {}", bits.size(), n, need);
  if (n % 8) {
    const auto pad = static_cast<std::uint8_t>(bits[need - 1] >> (n % 8));
    SCALPEL_CHECK_INPUT(pad == 0, "packed mask: padding bits of the last byte are not zero (corrupt data?)");
  }
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) mask[i] = (bits[i / 8] >> (i % 8)) & 1u;
  return mask;
}

}  // namespace scalpel::prune
