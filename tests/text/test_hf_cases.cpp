// transformers' own ids: ../shared/tests/tokenizers/hf_cases.json holds 300 tricky strings with the
// ids transformers 5.17's AutoTokenizer gave for opt-mini (byte-level BPE), llama-mini (its config:
// legacy=true) and llama-mini with legacy=false. Every vector must come out of scalpel's default
// tokenizer.mode (transformers) exactly; the PTB test text must give transformers' 121,536 ids.
// tokenizer.mode sentencepiece keeps raw sp.encode per piece (the slow tokenizer's behaviour).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "scalpel/text/eval_text.hpp"
#include "scalpel/text/sentencepiece.hpp"
#include "scalpel/text/tokenizer.hpp"
#include "text_test_util.hpp"

namespace scalpel::text {
namespace {

using testing::read_all;
using testing::shared_dir;
using Ids = std::vector<std::int32_t>;

fs::path cases_file() { return shared_dir() / "tests" / "tokenizers" / "hf_cases.json"; }
fs::path model_dir(const std::string& name) { return shared_dir() / "models" / name; }

nlohmann::json load_cases() { return nlohmann::json::parse(read_all(cases_file())); }

// A copy of llama-mini's tokenizer files with one tokenizer_config.json key changed.
void llama_tokenizer_copy(const fs::path& dir, const std::string& key, const nlohmann::json& value) {
  const fs::path src = model_dir("llama-mini");
  for (const char* f : {"tokenizer.model", "special_tokens_map.json"}) fs::copy_file(src / f, dir / f);
  auto cfg = nlohmann::json::parse(read_all(src / "tokenizer_config.json"));
  cfg[key] = value;
  testing::write_file(dir / "tokenizer_config.json", cfg.dump(2));
}

// Every case of `column` through `tok`; reports the first few differences with their text.
void expect_all_cases(const Tokenizer& tok, const std::string& column) {
  const auto cases = load_cases();
  ASSERT_EQ(cases.size(), 300u);
  int wrong = 0;
  for (const auto& c : cases) {
    const auto text = c.at("text").get<std::string>();
    const auto want = c.at(column).get<Ids>();
    const Ids got = tok.encode(text);
    if (got != want && ++wrong <= 5)
      ADD_FAILURE() << column << " " << c.at("name").get<std::string>() << ": " << nlohmann::json(text).dump()
                    << "\n  transformers " << nlohmann::json(want).dump() << "\n  scalpel      "
                    << nlohmann::json(got).dump();
  }
  EXPECT_EQ(wrong, 0) << column << ": " << wrong << " of 300 differ";
}

class HfCases : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(cases_file())) GTEST_SKIP() << cases_file() << " not found (set SCALPEL_SHARED_DIR)";
  }
};

TEST_F(HfCases, OptMiniByteLevelBpe) { expect_all_cases(*Tokenizer::from_folder(model_dir("opt-mini")), "opt-mini"); }

TEST_F(HfCases, LlamaMiniLegacyTrue) {
  auto tok = Tokenizer::from_folder(model_dir("llama-mini"));
  EXPECT_EQ(tok->kind(), "sentencepiece(transformers)");
  expect_all_cases(*tok, "llama-mini");
}

TEST_F(HfCases, LlamaMiniLegacyFalse) {
  testing::TempDir dir;
  llama_tokenizer_copy(dir.path(), "legacy", false);
  auto tok = SentencePieceTokenizer::from_folder(dir.path());
  EXPECT_EQ(tok->prepend(), SentencePieceTokenizer::Prepend::first);
  expect_all_cases(*tok, "llama-mini legacy=false");
}

TEST_F(HfCases, TheIssueExamples) {
  auto hf = Tokenizer::from_folder(model_dir("llama-mini"));
  auto sp = Tokenizer::from_folder(model_dir("llama-mini"), TokenizerMode::sentencepiece);
  // A text that starts with a space gets no second "▁" (4007) in transformers; sp.encode adds one.
  EXPECT_EQ(hf->encode(" leading space"), (Ids{1, 1589, 282, 2619}));
  EXPECT_EQ(sp->encode(" leading space"), (Ids{1, 4007, 1589, 282, 2619}));
  // After a special token the piece " y" starts with a space: "▁y" (321), no extra "▁".
  EXPECT_EQ(hf->encode("x </s> y"), (Ids{1, 4007, 4041, 4007, 2, 321}));
  EXPECT_EQ(sp->encode("x </s> y"), (Ids{1, 4007, 4041, 4007, 2, 4007, 321}));
  // Without a space, legacy=true still prepends to every piece: "▁b" (271).
  EXPECT_EQ(hf->encode("a<unk>b"), (Ids{1, 261, 0, 271}));
}

TEST_F(HfCases, AddPrefixSpaceFalseNeverPrepends) {
  testing::TempDir dir;
  llama_tokenizer_copy(dir.path(), "add_prefix_space", false);
  auto tok = SentencePieceTokenizer::from_folder(dir.path());
  EXPECT_EQ(tok->prepend(), SentencePieceTokenizer::Prepend::never);
  auto legacy = Tokenizer::from_folder(model_dir("llama-mini"));
  // "leading" without its "▁": not the ids of " leading" or of the legacy pipeline.
  EXPECT_EQ(tok->encode(" leading space"), legacy->encode(" leading space"));
  EXPECT_NE(tok->encode("leading space"), legacy->encode("leading space"));
  EXPECT_EQ(tok->encode("a<unk>b"), (Ids{1, 4010, 0, 4028}));  // "a" and "b" without "▁"
}

TEST_F(HfCases, PtbTestTextCountsAsTransformers) {
  const fs::path ptb = shared_dir() / "data" / "ptb" / "ptb.test.txt";
  if (!fs::exists(ptb)) GTEST_SKIP() << ptb << " not found";
  const std::string text = load_eval_text("ptb", ptb.string());
  // transformers 5.17: 121,536 ids (the 4,794 literal "<unk>" become the unk token, and the pieces
  // after them start with a space, so they get no second "▁"). sp.encode per piece: 125,896.
  EXPECT_EQ(Tokenizer::from_folder(model_dir("llama-mini"))->encode(text).size(), 121536u);
  EXPECT_EQ(Tokenizer::from_folder(model_dir("llama-mini"), TokenizerMode::sentencepiece)->encode(text).size(),
            125896u);
}

}  // namespace
}  // namespace scalpel::text
