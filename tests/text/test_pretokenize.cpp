// GPT-2 pre-tokenization, UTF-8 helpers and added-token splitting on hand-made cases. Each
// expected split is worked out from the regex
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// with \s = Unicode White_Space, as Python's `regex` module applies it.
#include <gtest/gtest.h>

#include "scalpel/text/bpe.hpp"
#include "scalpel/text/special_tokens.hpp"
#include "scalpel/text/unicode.hpp"
#include "text_test_util.hpp"

namespace scalpel::text {
namespace {

using Pieces = std::vector<std::string>;

TEST(Gpt2Pretokenize, WordsAndLeadingSpaces) {
  EXPECT_EQ(gpt2_pretokenize("Hello world"), (Pieces{"Hello", " world"}));
  EXPECT_EQ(gpt2_pretokenize(" hello"), (Pieces{" hello"}));
  EXPECT_EQ(gpt2_pretokenize(""), Pieces{});
}

TEST(Gpt2Pretokenize, Contractions) {
  EXPECT_EQ(gpt2_pretokenize("I'm can't we've they'll he'd you're it's"),
            (Pieces{"I", "'m", " can", "'t", " we", "'ve", " they", "'ll", " he", "'d", " you", "'re", " it",
                    "'s"}));
  // Only lower-case suffixes are contractions; "'M" falls to the punctuation alternative.
  EXPECT_EQ(gpt2_pretokenize("I'M"), (Pieces{"I", "'", "M"}));
  EXPECT_EQ(gpt2_pretokenize("'sup"), (Pieces{"'s", "up"}));
  // "'" followed by a space is punctuation; the space then leads the next word.
  EXPECT_EQ(gpt2_pretokenize("dogs' bone"), (Pieces{"dogs", "'", " bone"}));
}

TEST(Gpt2Pretokenize, RunsOfSpaces) {
  // \s+(?!\S) backs off one space so that the last one prefixes the word.
  EXPECT_EQ(gpt2_pretokenize("a   b"), (Pieces{"a", "  ", " b"}));
  EXPECT_EQ(gpt2_pretokenize("  hello"), (Pieces{" ", " hello"}));
  // Trailing whitespace stays one piece.
  EXPECT_EQ(gpt2_pretokenize("a   "), (Pieces{"a", "   "}));
  EXPECT_EQ(gpt2_pretokenize("   "), (Pieces{"   "}));
}

TEST(Gpt2Pretokenize, Newlines) {
  // "\n\n" before a letter: \s+(?!\S) can only take the first "\n", then \s+ takes the second.
  EXPECT_EQ(gpt2_pretokenize("a\n\nb"), (Pieces{"a", "\n", "\n", "b"}));
  EXPECT_EQ(gpt2_pretokenize("a\n\n b"), (Pieces{"a", "\n\n", " b"}));
  EXPECT_EQ(gpt2_pretokenize("end.\n"), (Pieces{"end", ".", "\n"}));
  EXPECT_EQ(gpt2_pretokenize("a \tb"), (Pieces{"a", " ", "\t", "b"}));
}

TEST(Gpt2Pretokenize, DigitsAndPunctuation) {
  EXPECT_EQ(gpt2_pretokenize("abc 123 4567"), (Pieces{"abc", " 123", " 4567"}));
  EXPECT_EQ(gpt2_pretokenize("x2y"), (Pieces{"x", "2", "y"}));
  EXPECT_EQ(gpt2_pretokenize("Hello!!! ...ok?"), (Pieces{"Hello", "!!!", " ...", "ok", "?"}));
  EXPECT_EQ(gpt2_pretokenize("$3.50, (yes)"), (Pieces{"$", "3", ".", "50", ",", " (", "yes", ")"}));
  // Other numerals are \p{N}: Arabic-Indic digits (Nd), a vulgar fraction (No).
  EXPECT_EQ(gpt2_pretokenize("x \u0663\u0664"), (Pieces{"x", " \u0663\u0664"}));
  EXPECT_EQ(gpt2_pretokenize("a\u00BD"), (Pieces{"a", "\u00BD"}));
}

TEST(Gpt2Pretokenize, NonAsciiLetters) {
  EXPECT_EQ(gpt2_pretokenize("na\u00EFve caf\u00E9 \u03A9mega"),
            (Pieces{"na\u00EFve", " caf\u00E9", " \u03A9mega"}));
  EXPECT_EQ(gpt2_pretokenize("\u00FCber-cool"), (Pieces{"\u00FCber", "-", "cool"}));
  EXPECT_EQ(gpt2_pretokenize("\u65E5\u672C\u8A9E \u30C6\u30AD\u30B9\u30C8"),
            (Pieces{"\u65E5\u672C\u8A9E", " \u30C6\u30AD\u30B9\u30C8"}));
  // A combining mark (Mn) is neither L nor N: it splits off as "punctuation".
  EXPECT_EQ(gpt2_pretokenize("e\u0301t\u00E9"), (Pieces{"e", "\u0301", "t\u00E9"}));
  // Emoji (So) and "!" form one punctuation run.
  EXPECT_EQ(gpt2_pretokenize("hi \U0001F44B\U0001F3FD!"), (Pieces{"hi", " \U0001F44B\U0001F3FD!"}));
}

// "x " + c + "x" splits as {"x", " ", c, "x"} when c is \s and as {"x", " " + c, "x"} otherwise.
Pieces probe(const std::string& c) { return gpt2_pretokenize("x " + c + "x"); }
Pieces as_space(const std::string& c) { return {"x", " ", c, "x"}; }
Pieces as_other(const std::string& c) { return {"x", " " + c, "x"}; }

TEST(Gpt2Pretokenize, WhitespaceIsUnicodeWhiteSpace) {
  for (const char* c : {"\t", "\x0b", "\x0c", "\r", "\u0085", "\u00A0", "\u1680", "\u2000", "\u2007",
                        "\u200A", "\u2028", "\u2029", "\u202F", "\u205F", "\u3000"})
    EXPECT_EQ(probe(c), as_space(c)) << "U+" << std::hex << int(static_cast<unsigned char>(c[0]));
  // Not White_Space: the ASCII information separators (Python's str.isspace() would say yes),
  // ZERO WIDTH SPACE and MONGOLIAN VOWEL SEPARATOR (Cf; PCRE2's own \s would take U+180E).
  for (const char* c : {"\x1c", "\x1d", "\x1e", "\x1f", "\u200B", "\u180E", "\u2060", "\uFEFF"})
    EXPECT_EQ(probe(c), as_other(c)) << c;
  EXPECT_EQ(gpt2_pretokenize("a\u00A0b"), (Pieces{"a", "\u00A0", "b"}));
}

TEST(Gpt2Pretokenize, InvalidUtf8IsReplaced) {
  // Python's errors="replace": one U+FFFD per maximal ill-formed subpart; U+FFFD is So.
  EXPECT_EQ(gpt2_pretokenize("a\xff"
                             "b"),
            (Pieces{"a", "\uFFFD", "b"}));
  EXPECT_EQ(gpt2_pretokenize("a\xe2\x82"), (Pieces{"a", "\uFFFD"}));
  std::string with_nul("a\0b", 3);
  EXPECT_EQ(gpt2_pretokenize(with_nul), (Pieces{"a", std::string("\0", 1), "b"}));
}

TEST(Utf8, SanitizeMatchesPythonReplace) {
  EXPECT_EQ(sanitize_utf8("plain"), "plain");
  EXPECT_EQ(sanitize_utf8("\xe0\x80"), "\uFFFD\uFFFD");            // E0 needs A0..BF next
  EXPECT_EQ(sanitize_utf8("\xed\xa0\x80"), "\uFFFD\uFFFD\uFFFD");  // surrogate
  EXPECT_EQ(sanitize_utf8("\xf0\x9f\x98"), "\uFFFD");              // truncated 4-byte
  EXPECT_EQ(sanitize_utf8("\xf0\x9f\x98x"), "\uFFFDx");
  EXPECT_EQ(sanitize_utf8("\xc0\xaf"), "\uFFFD\uFFFD");                      // overlong
  EXPECT_EQ(sanitize_utf8("\xf4\x90\x80\x80"), "\uFFFD\uFFFD\uFFFD\uFFFD");  // > U+10FFFF
  EXPECT_TRUE(is_valid_utf8("\U0010FFFF"));
  EXPECT_EQ(first_invalid_utf8("ab\x80"), 2u);
}

TEST(Utf8, PythonStrip) {
  EXPECT_EQ(python_strip(" \t\x1c a b \u3000\n"), "a b");
  EXPECT_EQ(python_strip("\u200Bx\u200B"), "\u200Bx\u200B");  // U+200B is not whitespace
  EXPECT_EQ(python_lstrip("  x "), "x ");
  EXPECT_EQ(python_rstrip("  x \u00A0"), "  x");
  EXPECT_TRUE(is_python_space(0x1F));
  EXPECT_FALSE(is_unicode_white_space(0x1F));
}

TEST(AddedTokens, LeftmostLongestAndStripping) {
  std::vector<AddedToken> toks(3);
  toks[0].content = "<s>";
  toks[0].id = 1;
  toks[1].content = "</s>";
  toks[1].id = 2;
  toks[2].content = "<s>x";
  toks[2].id = 7;
  AddedTokenSplitter split(toks, StripWhitespace::python);
  std::vector<TextPiece> out;
  split.split("a<s>b</s><s>xy", out);
  ASSERT_EQ(out.size(), 6u);
  EXPECT_EQ(out[0].text, "a");
  EXPECT_EQ(out[1].token_id, 1);
  EXPECT_EQ(out[2].text, "b");
  EXPECT_EQ(out[3].token_id, 2);
  EXPECT_EQ(out[4].token_id, 7);  // longest match at the same start
  EXPECT_EQ(out[5].text, "y");

  std::vector<AddedToken> strip(1);
  strip[0].content = "<m>";
  strip[0].id = 5;
  strip[0].lstrip = true;
  strip[0].rstrip = true;
  AddedTokenSplitter s2(strip, StripWhitespace::python);
  out.clear();
  s2.split("a \x1c<m>  b <m> ", out);
  ASSERT_EQ(out.size(), 4u);
  EXPECT_EQ(out[0].text, "a");  // Python strip also eats \x1c
  EXPECT_EQ(out[1].token_id, 5);
  EXPECT_EQ(out[2].text, "b");
  EXPECT_EQ(out[3].token_id, 5);  // trailing " " stripped to nothing and dropped

  AddedTokenSplitter s3(strip, StripWhitespace::unicode);
  out.clear();
  s3.split("a \x1c<m>b", out);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].text, "a \x1c");  // \x1c is not White_Space
}

}  // namespace
}  // namespace scalpel::text
