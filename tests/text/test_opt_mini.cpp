// The shared opt-mini tokenizer: both loaders agree on real texts, the OPT layout (ids 0..3
// special, 4..259 bytes), </s> prepended once, "<unk>" encoded as plain text, exact round trips,
// and the README's independent figure of 3,419,489 ids for corpus/train.txt.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "scalpel/text/bpe.hpp"
#include "scalpel/text/tokenizer.hpp"
#include "text_test_util.hpp"

namespace scalpel::text {
namespace {

using testing::byte_level;
using testing::read_all;
using testing::shared_dir;
using Ids = std::vector<std::int32_t>;

class OptMini : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(folder() / "vocab.json") || !fs::exists(folder() / "tokenizer.json")) return;
    slow_ = BpeTokenizer::from_vocab_merges(folder()).release();
    fast_ = BpeTokenizer::from_tokenizer_json(folder() / "tokenizer.json").release();
  }
  static void TearDownTestSuite() {
    delete slow_;
    delete fast_;
    slow_ = fast_ = nullptr;
  }
  void SetUp() override {
    if (slow_ == nullptr)
      GTEST_SKIP() << "opt-mini not found under " << folder() << " (set SCALPEL_SHARED_DIR)";
  }
  static fs::path folder() { return shared_dir() / "models" / "opt-mini"; }
  static fs::path data(const std::string& rel) { return shared_dir() / "data" / rel; }
  static inline BpeTokenizer* slow_ = nullptr;
  static inline BpeTokenizer* fast_ = nullptr;
};

TEST_F(OptMini, FromFolderPrefersTokenizerJson) {
  auto t = Tokenizer::from_folder(folder());
  EXPECT_EQ(t->kind(), "bpe(tokenizer.json)");
  EXPECT_EQ(t->vocab_size(), 8192);
  EXPECT_EQ(slow_->vocab_size(), 8192);
}

TEST_F(OptMini, ByteTokensAndSpecialLayout) {
  for (int b = 0; b < 256; ++b) {
    const std::string tok = byte_level(std::string(1, static_cast<char>(b)));
    EXPECT_EQ(slow_->token_to_id(tok), 4 + b) << b;
    EXPECT_EQ(fast_->token_to_id(tok), 4 + b) << b;
  }
  EXPECT_EQ(slow_->token_to_id("<s>"), 0);
  EXPECT_EQ(slow_->token_to_id("<pad>"), 1);
  EXPECT_EQ(slow_->token_to_id("</s>"), 2);
  EXPECT_EQ(slow_->token_to_id("<unk>"), 3);
  EXPECT_EQ(slow_->prefix_ids(), (Ids{2}));
  EXPECT_EQ(fast_->prefix_ids(), (Ids{2}));
  EXPECT_TRUE(slow_->suffix_ids().empty());
  EXPECT_TRUE(fast_->suffix_ids().empty());
}

TEST_F(OptMini, SpecialTokenLiterals) {
  const Ids hello = slow_->encode_plain("Hello"), world = slow_->encode_plain("world");
  Ids expect{2};
  expect.insert(expect.end(), hello.begin(), hello.end());
  expect.push_back(2);
  expect.insert(expect.end(), world.begin(), world.end());
  expect.push_back(1);
  for (const BpeTokenizer* t : {slow_, fast_}) {
    EXPECT_EQ(t->encode("Hello</s>world<pad>"), expect) << t->kind();
    // <unk> and <s> are ordinary vocabulary entries here: encoded as bytes, never ids 3 / 0.
    const Ids unk = t->encode("a <unk> b <s>");
    EXPECT_EQ(std::count(unk.begin(), unk.end(), 3), 0);
    EXPECT_EQ(std::count(unk.begin(), unk.end(), 0), 0);
    EXPECT_EQ(t->decode(unk), "</s>a <unk> b <s>");
  }
  EXPECT_EQ(slow_->encode(""), (Ids{2}));
  EXPECT_EQ(fast_->encode(""), (Ids{2}));
}

TEST_F(OptMini, LoadersAgreeOnRealTexts) {
  for (const char* rel : {"corpus/calib.txt", "corpus/heldout.txt", "wikitext2/wiki.test.raw.joined.txt",
                          "ptb/ptb.test.joined.txt"}) {
    if (!fs::exists(data(rel))) GTEST_SKIP() << data(rel) << " not found";
    const std::string text = read_all(data(rel));
    const Ids a = slow_->encode(text), b = fast_->encode(text);
    EXPECT_EQ(a, b) << rel;
    ASSERT_FALSE(a.empty());
    EXPECT_EQ(a[0], 2);
    EXPECT_EQ(std::count(a.begin(), a.end(), 2), 1) << rel;  // the leading </s> only
    // Round trip: decoding gives the text back after the leading </s>.
    EXPECT_EQ(slow_->decode(Ids(a.begin() + 1, a.end())), text) << rel;
    EXPECT_EQ(fast_->decode(a), "</s>" + text) << rel;
  }
}

TEST_F(OptMini, TrainTxtCountFromReadme) {
  const fs::path p = data("corpus/train.txt");
  if (!fs::exists(p)) GTEST_SKIP() << p << " not found";
  const std::string text = read_all(p);
  for (const BpeTokenizer* t : {slow_, fast_}) {
    const auto t0 = std::chrono::steady_clock::now();
    const Ids ids = t->encode(text);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("[ info ] %s: train.txt (%zu bytes) -> %zu ids in %.2f s\n", t->kind().c_str(), text.size(),
                ids.size(), s);
    EXPECT_EQ(ids.size(), 3419489u) << t->kind();
    EXPECT_EQ(ids[0], 2);
  }
}

TEST_F(OptMini, ConcurrentEncodesAgree) {
  const fs::path p = data("corpus/heldout.txt");
  if (!fs::exists(p)) GTEST_SKIP() << p << " not found";
  const std::string text = read_all(p);
  const Ids ref = slow_->encode(text);
  Ids a, b;
  std::thread ta([&] { a = fast_->encode(text); });
  std::thread tb([&] { b = fast_->encode(text); });
  ta.join();
  tb.join();
  EXPECT_EQ(a, ref);
  EXPECT_EQ(b, ref);
}

}  // namespace
}  // namespace scalpel::text
