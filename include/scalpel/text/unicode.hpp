// UTF-8 helpers shared by the tokenizers and the evaluation-text loaders: decoding with Python's
// errors="replace" policy (so invalid bytes behave as in a Python str read that way), and the two
// notions of "whitespace" that Hugging Face code relies on (Python str.isspace, Unicode White_Space).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace scalpel::text {

// True when `s` is well-formed UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF).
bool is_valid_utf8(std::string_view s);

// Offset of the first byte that makes `s` ill-formed UTF-8, or std::string_view::npos.
std::size_t first_invalid_utf8(std::string_view s);

// `s` with every ill-formed subsequence replaced by U+FFFD exactly as Python's
// bytes.decode("utf-8", errors="replace") does (one U+FFFD per maximal ill-formed subpart).
// Returns `s` unchanged when it is valid.
std::string sanitize_utf8(std::string_view s);

// Decodes the code point at s[i] of VALID UTF-8 and advances i past it.
char32_t next_code_point(std::string_view s, std::size_t& i);

// Appends the UTF-8 encoding of `cp` (a scalar value) to `out`.
void append_utf8(std::string& out, char32_t cp);

// Python's str.isspace(): Unicode White_Space plus U+001C..U+001F (bidi classes B/S).
bool is_python_space(char32_t cp);
// Unicode White_Space (Rust char::is_whitespace, Oniguruma and the `regex` module's \s).
bool is_unicode_white_space(char32_t cp);

// Python's str.strip() / lstrip() / rstrip() with no argument, on valid UTF-8.
std::string_view python_strip(std::string_view s);
std::string_view python_lstrip(std::string_view s);
std::string_view python_rstrip(std::string_view s);

// Python's str.lower() and str.capitalize() (first character titlecased, the rest lowered), with
// Unicode's full mappings ("ß".capitalize() == "Ss") and the final-sigma rule, on valid UTF-8.
std::string python_lower(std::string_view s);
std::string python_capitalize(std::string_view s);

}  // namespace scalpel::text
