// Added / special tokens as Hugging Face handles them: the input text is cut at every literal
// occurrence of an added token before the model (BPE or SentencePiece) sees it, and the token
// becomes its own id. Shared by both tokenizer families.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace scalpel::text {

struct AddedToken {
  std::string content;
  std::int32_t id = -1;
  bool lstrip = false;     // eats the whitespace on its left
  bool rstrip = false;     // eats the whitespace on its right
  bool normalized = true;  // tokenizer.json: matched after normalization (second pass)
  bool special = true;
};

// A piece of input after the split: plain text (token_id < 0) or one added token.
struct TextPiece {
  std::string_view text;
  std::int32_t token_id = -1;
};

// Which characters lstrip/rstrip remove: Python's str.strip (slow transformers tokenizers) or
// Unicode White_Space (Rust char::is_whitespace, the `tokenizers` library).
enum class StripWhitespace { python, unicode };

class AddedTokenSplitter {
 public:
  AddedTokenSplitter() = default;
  AddedTokenSplitter(std::vector<AddedToken> tokens, StripWhitespace ws);

  // Appends the pieces of `text` (valid UTF-8) to `out`. Matches are leftmost-longest and do not
  // overlap, as transformers' Trie.split and the Aho-Corasick LeftmostLongest matcher of
  // `tokenizers` find them. Text pieces left empty by stripping are dropped, as transformers does.
  void split(std::string_view text, std::vector<TextPiece>& out) const;

  bool empty() const { return tokens_.empty(); }
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  std::vector<AddedToken> tokens_;  // longest content first, so the first hit is the longest
  std::array<bool, 256> first_byte_{};
  StripWhitespace ws_ = StripWhitespace::python;
};

}  // namespace scalpel::text
