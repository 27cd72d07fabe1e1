// Evaluation-text presets: PTB joined exactly as SparseGPT joins it (checked byte for byte
// against the shared ptb.test.joined.txt), C4 JSON lines, WikiText-2 as is, and token limits.
#include <gtest/gtest.h>

#include "scalpel/text/eval_text.hpp"
#include "text_test_util.hpp"

namespace scalpel::text {
namespace {

using testing::read_all;
using testing::shared_dir;
using testing::TempDir;
using testing::write_file;

TEST(EvalText, PtbPresetEqualsSharedJoinedFile) {
  const fs::path raw = shared_dir() / "data" / "ptb" / "ptb.test.txt";
  const fs::path joined = shared_dir() / "data" / "ptb" / "ptb.test.joined.txt";
  if (!fs::exists(raw) || !fs::exists(joined)) GTEST_SKIP() << "PTB files not found under " << shared_dir();
  const std::string got = load_eval_text("ptb", raw);
  const std::string want = read_all(joined);
  EXPECT_EQ(got.size(), want.size());
  EXPECT_TRUE(got == want) << "ptb preset differs from ptb.test.joined.txt";
}

TEST(EvalText, PtbJoinFollowsPython) {
  TempDir d;
  // CRLF and lone CR are newlines (universal newlines); strip() removes \x1c and U+3000 too; an
  // empty line still contributes an empty string; a final newline adds no line.
  write_file(d / "p.txt",
             " a b \r\n\x1c"
             "c\u3000\rd\n\n e \n");
  EXPECT_EQ(load_eval_text("ptb", d / "p.txt"), "a b c d  e");
}

TEST(EvalText, WikitextAndTextAreVerbatim) {
  TempDir d;
  write_file(d / "w.txt", " = Title = \n\n text\n");
  EXPECT_EQ(load_eval_text("wikitext2", d / "w.txt"), " = Title = \n\n text\n");
  EXPECT_EQ(load_eval_text("text", d / "w.txt"), " = Title = \n\n text\n");
  const fs::path wiki = shared_dir() / "data" / "wikitext2" / "wiki.test.raw.joined.txt";
  if (fs::exists(wiki)) {
    EXPECT_EQ(load_eval_text("wikitext2", wiki).size(), 1296370u);
  }
}

TEST(EvalText, C4JoinsFirst1100Documents) {
  TempDir d;
  std::string lines;
  for (int i = 0; i < 1105; ++i)
    lines +=
        "{\"text\": \"doc " + std::to_string(i) + "\\nline\", \"timestamp\": \"2019\", \"url\": \"u\"}\n";
  write_file(d / "c4.json", lines);
  const std::string text = load_eval_text("c4", d / "c4.json");
  EXPECT_EQ(text.substr(0, 24), "doc 0\nline doc 1\nline do");
  EXPECT_NE(text.find("doc 1099\nline"), std::string::npos);
  EXPECT_EQ(text.find("doc 1100"), std::string::npos);
  EXPECT_EQ(text.back(), 'e');  // joined with ' ', nothing after the last document
  write_file(d / "small.json", "{\"text\": \"a\"}\n\n{\"text\": \"b \\u00e9\"}\n");
  EXPECT_EQ(load_eval_text("c4", d / "small.json"), "a b \u00E9");
}

TEST(EvalText, TokenLimits) {
  EXPECT_EQ(preset_token_limit("c4", 2048), 256 * 2048);
  EXPECT_EQ(preset_token_limit("wikitext2", 2048), -1);
  EXPECT_EQ(preset_token_limit("ptb", 512), -1);
  EXPECT_EQ(preset_token_limit("text", 512), -1);
  testing::expect_input_error([] { (void)preset_token_limit("lambada", 512); }, {"lambada"});
}

}  // namespace
}  // namespace scalpel::text
