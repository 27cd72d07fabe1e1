// Splitting input text at added tokens (see special_tokens.hpp for the HF behaviour reproduced).
// A first-byte filter keeps the scan cheap on long texts where special tokens are rare.
#include "scalpel/text/special_tokens.hpp"

#include <algorithm>

#include "scalpel/text/unicode.hpp"

namespace scalpel::text {
namespace {

bool is_space(char32_t cp, StripWhitespace ws) {
  return ws == StripWhitespace::python ? is_python_space(cp) : is_unicode_white_space(cp);
}

std::string_view strip_left(std::string_view s, StripWhitespace ws) {
  std::size_t i = 0;
  while (i < s.size()) {
    std::size_t j = i;
    if (!is_space(next_code_point(s, j), ws)) break;
    i = j;
  }
  return s.substr(i);
}

std::string_view strip_right(std::string_view s, StripWhitespace ws) {
  std::size_t end = s.size();
  while (end > 0) {
    std::size_t start = end - 1;
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    std::size_t j = start;
    if (!is_space(next_code_point(s, j), ws)) break;
    end = start;
  }
  return s.substr(0, end);
}

}  // namespace

AddedTokenSplitter::AddedTokenSplitter(std::vector<AddedToken> tokens, StripWhitespace ws) : ws_(ws) {
  // Empty contents can never be matched (HF skips them too).
  std::erase_if(tokens, [](const AddedToken& t) { return t.content.empty(); });
  std::stable_sort(tokens.begin(), tokens.end(), [](const AddedToken& a, const AddedToken& b) {
    return a.content.size() > b.content.size();
  });
  tokens_ = std::move(tokens);
  for (const auto& t : tokens_) first_byte_[static_cast<unsigned char>(t.content[0])] = true;
}

void AddedTokenSplitter::split(std::string_view text, std::vector<TextPiece>& out) const {
  if (tokens_.empty()) {
    if (!text.empty()) out.push_back({text, -1});
    return;
  }
  struct Match {
    std::size_t begin, end;
    const AddedToken* token;
  };
  std::vector<Match> matches;
  for (std::size_t i = 0; i < text.size();) {
    const AddedToken* hit = nullptr;
    if (first_byte_[static_cast<unsigned char>(text[i])]) {
      for (const auto& t : tokens_) {
        if (text.compare(i, t.content.size(), t.content) == 0) {
          hit = &t;
          break;
        }
      }
    }
    if (hit) {
      matches.push_back({i, i + hit->content.size(), hit});
      i += hit->content.size();
    } else {
      ++i;
    }
  }
  std::size_t pos = 0;
  for (std::size_t m = 0; m < matches.size(); ++m) {
    std::string_view left = text.substr(pos, matches[m].begin - pos);
    // rstrip of the previous token eats the start of this text; lstrip of this token its end.
    if (m > 0 && matches[m - 1].token->rstrip) left = strip_left(left, ws_);
    if (matches[m].token->lstrip) left = strip_right(left, ws_);
    if (!left.empty()) out.push_back({left, -1});
    out.push_back({text.substr(matches[m].begin, matches[m].end - matches[m].begin), matches[m].token->id});
    pos = matches[m].end;
  }
  std::string_view tail = text.substr(pos);
  if (!matches.empty() && matches.back().token->rstrip) tail = strip_left(tail, ws_);
  if (!tail.empty()) out.push_back({tail, -1});
}

}  // namespace scalpel::text
