// Python's str.lower() and str.capitalize() on UTF-8: the full case mappings and the final-sigma
// rule of CPython's unicodeobject.c, with the data of scripts/gen_unicode_case.py. The zero-shot
// task presets need them to build prompts byte for byte as lm-evaluation-harness does (HellaSwag
// capitalizes ctx_b, COPA lowers the first letter of each choice).
#include <algorithm>
#include <vector>

#include "scalpel/text/unicode.hpp"

namespace scalpel::text {
namespace {

struct CaseMapping {
  char32_t cp;
  std::uint8_t length;
  char32_t to[3];
};
struct CodeRange {
  char32_t first, last;
};

#include "unicode_case.inc"

template <std::size_t N>
const CaseMapping* find_mapping(const CaseMapping (&table)[N], char32_t cp) {
  const auto* it = std::lower_bound(std::begin(table), std::end(table), cp,
                                    [](const CaseMapping& m, char32_t c) { return m.cp < c; });
  return it != std::end(table) && it->cp == cp ? it : nullptr;
}

template <std::size_t N>
bool in_ranges(const CodeRange (&table)[N], char32_t cp) {
  const auto* it = std::upper_bound(std::begin(table), std::end(table), cp,
                                    [](char32_t c, const CodeRange& r) { return c < r.first; });
  return it != std::begin(table) && cp <= std::prev(it)->last;
}

template <std::size_t N>
void append_mapped(const CaseMapping (&table)[N], char32_t cp, std::string& out) {
  if (const auto* m = find_mapping(table, cp))
    for (int k = 0; k < m->length; ++k) append_utf8(out, m->to[k]);
  else
    append_utf8(out, cp);
}

std::vector<char32_t> decode(std::string_view s) {
  std::vector<char32_t> cps;
  cps.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) cps.push_back(next_code_point(s, i));
  return cps;
}

// CPython's handle_capital_sigma: U+03A3 lowers to final sigma U+03C2 when a cased letter precedes
// it and none follows (case-ignorable characters skipped on both sides), else to U+03C3.
char32_t lower_sigma(const std::vector<char32_t>& cps, std::size_t i) {
  std::size_t j = i;
  while (j > 0 && in_ranges(kCaseIgnorable, cps[j - 1])) --j;
  if (j == 0 || !in_ranges(kCased, cps[j - 1])) return 0x3C3;
  std::size_t k = i + 1;
  while (k < cps.size() && in_ranges(kCaseIgnorable, cps[k])) ++k;
  return k == cps.size() || !in_ranges(kCased, cps[k]) ? 0x3C2 : 0x3C3;
}

void append_lower(const std::vector<char32_t>& cps, std::size_t i, std::string& out) {
  if (cps[i] == 0x3A3)
    append_utf8(out, lower_sigma(cps, i));
  else if (cps[i] < 0x80)
    out += static_cast<char>(cps[i] >= 'A' && cps[i] <= 'Z' ? cps[i] + ('a' - 'A') : cps[i]);
  else
    append_mapped(kLower, cps[i], out);
}

}  // namespace

std::string python_lower(std::string_view s) {
  const auto cps = decode(s);
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < cps.size(); ++i) append_lower(cps, i, out);
  return out;
}

std::string python_capitalize(std::string_view s) {
  const auto cps = decode(s);
  std::string out;
  out.reserve(s.size());
  if (cps.empty()) return out;
  append_mapped(kTitle, cps[0], out);
  for (std::size_t i = 1; i < cps.size(); ++i) append_lower(cps, i, out);
  return out;
}

}  // namespace scalpel::text
