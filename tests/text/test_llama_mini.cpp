// The shared llama-mini SentencePiece tokenizer in tokenizer.mode sentencepiece: <s> convention,
// special-token literals split before sp.encode (each chunk with its own dummy prefix, as
// transformers 4's slow LlamaTokenizer with legacy=True does), round trips, and the README's count
// of 3,857,394 tokens for corpus/train.txt encoded paragraph by paragraph. The default
// (transformers) mode is checked against transformers' own ids in test_hf_cases.cpp.
#include <gtest/gtest.h>

#include "scalpel/text/sentencepiece.hpp"
#include "scalpel/text/tokenizer.hpp"
#include "text_test_util.hpp"

namespace scalpel::text {
namespace {

using testing::read_all;
using testing::shared_dir;
using Ids = std::vector<std::int32_t>;

class LlamaMini : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (fs::exists(folder() / "tokenizer.model"))
      sp_ = SentencePieceTokenizer::from_folder(folder(), TokenizerMode::sentencepiece).release();
  }
  static void TearDownTestSuite() {
    delete sp_;
    sp_ = nullptr;
  }
  void SetUp() override {
    if (sp_ == nullptr)
      GTEST_SKIP() << "llama-mini not found under " << folder() << " (set SCALPEL_SHARED_DIR)";
  }
  static fs::path folder() { return shared_dir() / "models" / "llama-mini"; }
  static fs::path data(const std::string& rel) { return shared_dir() / "data" / rel; }
  static Ids cat(std::initializer_list<Ids> parts) {
    Ids out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
  }
  static inline SentencePieceTokenizer* sp_ = nullptr;
};

TEST_F(LlamaMini, FolderAndConventions) {
  auto t = Tokenizer::from_folder(folder(), TokenizerMode::sentencepiece);
  EXPECT_EQ(t->kind(), "sentencepiece(sp.encode)");
  EXPECT_EQ(Tokenizer::from_folder(folder())->kind(), "sentencepiece(transformers)");
  EXPECT_EQ(t->vocab_size(), 4096);
  EXPECT_EQ(sp_->bos_id(), 1);
  EXPECT_EQ(sp_->eos_id(), 2);
  EXPECT_TRUE(sp_->adds_bos());
  EXPECT_FALSE(sp_->adds_eos());
  const std::string text = "The quick brown fox.\nIt jumped over 12 dogs, caf\u00E9!";
  EXPECT_EQ(t->encode(text), cat({{1}, sp_->sp_encode(text)}));
  // Newlines and characters outside the vocabulary become byte pieces (<0x0A> is id 3 + 10).
  const Ids nl = sp_->sp_encode("a\nb");
  EXPECT_NE(std::find(nl.begin(), nl.end(), 3 + 0x0A), nl.end());
  EXPECT_EQ(t->encode(""), (Ids{1}));
}

TEST_F(LlamaMini, SpecialTokenLiteralsSplitFirst) {
  // Each chunk between special tokens is encoded on its own, so "world" after </s> gets the
  // dummy-prefix space ("▁world"), and no whitespace is stripped around the special tokens.
  EXPECT_EQ(sp_->encode("Hello</s>world"), cat({{1}, sp_->sp_encode("Hello"), {2}, sp_->sp_encode("world")}));
  EXPECT_EQ(sp_->encode("a <unk> b"), cat({{1}, sp_->sp_encode("a "), {0}, sp_->sp_encode(" b")}));
  EXPECT_EQ(sp_->encode("<s><s>x"), cat({{1, 1, 1}, sp_->sp_encode("x")}));
  // Different from encoding the literal as text.
  EXPECT_NE(sp_->encode("a <unk> b"), cat({{1}, sp_->sp_encode("a <unk> b")}));
  EXPECT_EQ(sp_->decode(sp_->encode("Hello</s>world")), "<s>Hello</s>world");
}

TEST_F(LlamaMini, RoundTripAndWholeText) {
  const fs::path p = data("corpus/calib.txt");
  if (!fs::exists(p)) GTEST_SKIP() << p << " not found";
  const std::string text = read_all(p);
  const Ids ids = sp_->encode(text);
  EXPECT_EQ(ids, cat({{1}, sp_->sp_encode(text)}));
  EXPECT_EQ(sp_->decode(Ids(ids.begin() + 1, ids.end())), text);
  testing::expect_input_error([&] { (void)sp_->decode({4096}); }, {"4096"});
}

TEST_F(LlamaMini, TrainTxtParagraphCountFromReadme) {
  // The README's recipe: split train.txt at every "\n\n" (Python str.split, so the last chunk
  // keeps the file's final "\n"), encode chunk + "\n\n" for every chunk, one leading <s>.
  // Variants give 3,857,393 (trailing newlines stripped from chunks) or 3,857,392 (last chunk
  // without the added "\n\n"), so the count pins the recipe down.
  const fs::path p = data("corpus/train.txt");
  if (!fs::exists(p)) GTEST_SKIP() << p << " not found";
  const std::string text = read_all(p);
  std::size_t total = 1, pos = 0, chunks = 0;
  while (true) {
    const std::size_t k = text.find("\n\n", pos);
    const std::string chunk = text.substr(pos, k == std::string::npos ? std::string::npos : k - pos);
    total += sp_->sp_encode(chunk + "\n\n").size();
    ++chunks;
    if (k == std::string::npos) break;
    pos = k + 2;
  }
  EXPECT_EQ(chunks, 28703u);
  EXPECT_EQ(total, 3857394u);
}

}  // namespace
}  // namespace scalpel::text
