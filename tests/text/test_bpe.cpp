// Byte-level BPE on small hand-made folders, written both as vocab.json + merges.txt and as
// tokenizer.json: merge semantics of each Hugging Face implementation, added tokens with
// lstrip/rstrip, BOS conventions, add_prefix_space, ignore_merges and decoding.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "scalpel/text/bpe.hpp"
#include "text_test_util.hpp"

namespace scalpel::text {
namespace {

using nlohmann::json;
using testing::byte_level;
using testing::TempDir;
using testing::write_file;
using Ids = std::vector<std::int32_t>;
using Merges = std::vector<std::pair<std::string, std::string>>;

// Bytes take ids 0..255 in byte order; each merge result (and each extra token) takes the next id.
struct TinyBpe {
  std::vector<std::pair<std::string, std::string>> merges;  // raw byte strings
  std::vector<std::string> extra;                           // raw byte strings added to the vocab
  json vocab = json::object();

  TinyBpe(std::vector<std::pair<std::string, std::string>> m, std::vector<std::string> x = {})
      : merges(std::move(m)), extra(std::move(x)) {
    for (int b = 0; b < 256; ++b) vocab[byte_level(std::string(1, static_cast<char>(b)))] = b;
    int next = 256;
    auto add = [&](const std::string& raw) {
      const std::string t = byte_level(raw);
      if (!vocab.contains(t)) vocab[t] = next++;
    };
    for (const auto& [a, b] : merges) add(a + b);
    for (const auto& e : extra) add(e);
  }
  std::int32_t id(const std::string& raw) const { return vocab.at(byte_level(raw)).get<std::int32_t>(); }

  void write_slow(const fs::path& dir, const json& config = json::object()) const {
    write_file(dir / "vocab.json", vocab.dump());
    std::string m = "#version: 0.2\n";
    for (const auto& [a, b] : merges) m += byte_level(a) + " " + byte_level(b) + "\n";
    write_file(dir / "merges.txt", m);
    write_file(dir / "tokenizer_config.json", config.dump());
  }
  json fast_json() const {
    json m = json::array();
    for (const auto& [a, b] : merges) m.push_back(byte_level(a) + " " + byte_level(b));
    return {
        {"version", "1.0"},
        {"added_tokens", json::array()},
        {"normalizer", nullptr},
        {"pre_tokenizer",
         {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
        {"post_processor", nullptr},
        {"decoder",
         {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
        {"model",
         {{"type", "BPE"},
          {"dropout", nullptr},
          {"unk_token", nullptr},
          {"byte_fallback", false},
          {"vocab", vocab},
          {"merges", m}}}};
  }
  void write_fast(const fs::path& dir, const json& tj) const {
    write_file(dir / "tokenizer.json", tj.dump());
  }
};

TEST(BpeMerges, EachLoaderFollowsItsHuggingFaceCounterpart) {
  // merges: (ab, a) has rank 0 and (a, b) rank 1, which a trained merges file never does.
  // GPT2Tokenizer.bpe() merges every (a, b) of "abab" first -> [ab, ab]; tokenizers pops (a,b)@0,
  // then the new (ab, a)@0 of lower rank -> [aba, b].
  TinyBpe t(Merges{{"ab", "a"}, {"a", "b"}});
  TempDir slow, fast;
  t.write_slow(slow.path());
  t.write_fast(fast.path(), t.fast_json());
  auto s = BpeTokenizer::from_vocab_merges(slow.path());
  auto f = BpeTokenizer::from_tokenizer_json(fast / "tokenizer.json");
  EXPECT_EQ(s->encode("abab"), (Ids{t.id("ab"), t.id("ab")}));
  EXPECT_EQ(f->encode("abab"), (Ids{t.id("aba"), t.id("b")}));
  // Overlapping occurrences merge left to right in both.
  TinyBpe aa(Merges{{"a", "a"}});
  TempDir s2, f2;
  aa.write_slow(s2.path());
  aa.write_fast(f2.path(), aa.fast_json());
  const Ids expect{aa.id("aa"), aa.id("aa"), aa.id("a")};
  EXPECT_EQ(BpeTokenizer::from_vocab_merges(s2.path())->encode("aaaaa"), expect);
  EXPECT_EQ(BpeTokenizer::from_tokenizer_json(f2 / "tokenizer.json")->encode("aaaaa"), expect);
}

TEST(BpeMerges, TrainedStyleMergesAgreeAndRoundTrip) {
  TinyBpe t(
      Merges{{"h", "e"}, {"l", "l"}, {" ", "t"}, {"he", "ll"}, {"hell", "o"}, {" t", "he"}, {"o", "!"}});
  TempDir slow, fast;
  t.write_slow(slow.path());
  t.write_fast(fast.path(), t.fast_json());
  auto s = BpeTokenizer::from_vocab_merges(slow.path());
  auto f = BpeTokenizer::from_tokenizer_json(fast / "tokenizer.json");
  EXPECT_EQ(s->encode("hello the hello!"),
            (Ids{t.id("hello"), t.id(" the"), t.id(" "), t.id("hello"), t.id("!")}));
  for (const std::string text :
       {"hello the hello!", "", "  hello\n\nthe\u00E9 \xF0\x9F\x98\x80 12 'll", "aaa   "}) {
    EXPECT_EQ(s->encode(text), f->encode(text)) << text;
    EXPECT_EQ(s->decode(s->encode(text)), text);
  }
  // Without special tokens in the configs, GPT2Tokenizer's default "<|endoftext|>" (bos, eos,
  // unk) is added after the vocabulary, as transformers does.
  EXPECT_EQ(s->vocab_size(), static_cast<std::int64_t>(t.vocab.size()) + 1);
  EXPECT_EQ(s->token_to_id("<|endoftext|>"), static_cast<std::int32_t>(t.vocab.size()));
  EXPECT_EQ(f->vocab_size(), static_cast<std::int64_t>(t.vocab.size()));
  EXPECT_EQ(s->kind(), "bpe(vocab.json+merges.txt)");
  EXPECT_EQ(f->kind(), "bpe(tokenizer.json)");
  // Decoding half of a UTF-8 sequence gives U+FFFD, as errors="replace" does.
  EXPECT_EQ(s->decode({0xC3}), "\uFFFD");
  testing::expect_input_error([&] { (void)s->decode({100000}); }, {"100000"});
}

TEST(BpeSpecialTokens, StripFlagsBosAndPrefixSpace) {
  TinyBpe t(Merges{{" ", "b"}});
  const std::int32_t m_id = 300, bos_id = 301;
  // Slow: tokenizer_config.json with added_tokens_decoder (transformers >= 4.34) and add_bos_token.
  TempDir slow;
  t.write_slow(slow.path(), json{{"add_bos_token", true},
                                 {"bos_token", "<B>"},
                                 {"added_tokens_decoder",
                                  {{std::to_string(m_id),
                                    {{"content", "<m>"},
                                     {"lstrip", true},
                                     {"rstrip", true},
                                     {"normalized", false},
                                     {"single_word", false},
                                     {"special", true}}},
                                   {std::to_string(bos_id),
                                    {{"content", "<B>"},
                                     {"lstrip", false},
                                     {"rstrip", false},
                                     {"normalized", false},
                                     {"single_word", false},
                                     {"special", true}}}}}});
  // Fast: the same tokens as added_tokens, BOS from a TemplateProcessing post-processor.
  json tj = t.fast_json();
  tj["added_tokens"] = json::array({{{"id", m_id},
                                     {"content", "<m>"},
                                     {"single_word", false},
                                     {"lstrip", true},
                                     {"rstrip", true},
                                     {"normalized", false},
                                     {"special", true}},
                                    {{"id", bos_id},
                                     {"content", "<B>"},
                                     {"single_word", false},
                                     {"lstrip", false},
                                     {"rstrip", false},
                                     {"normalized", true},
                                     {"special", true}}});
  tj["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", json::array({{{"SpecialToken", {{"id", "<B>"}, {"type_id", 0}}}},
                              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
      {"pair", json::array()},
      {"special_tokens", {{"<B>", {{"id", "<B>"}, {"ids", {bos_id}}, {"tokens", {"<B>"}}}}}}};
  TempDir fast;
  t.write_fast(fast.path(), tj);
  auto s = BpeTokenizer::from_vocab_merges(slow.path());
  auto f = BpeTokenizer::from_tokenizer_json(fast / "tokenizer.json");
  // "<m>" eats the spaces on both sides; "<B>" in the text is its id; no space eaten around it.
  const Ids expect{bos_id, t.id("a"), m_id, t.id("b"), bos_id, t.id(" b")};
  EXPECT_EQ(s->encode("a  <m>  b<B> b"), expect);
  EXPECT_EQ(f->encode("a  <m>  b<B> b"), expect);
  EXPECT_EQ(s->prefix_ids(), (Ids{bos_id}));
  EXPECT_EQ(f->prefix_ids(), (Ids{bos_id}));
  EXPECT_EQ(s->decode(s->encode("x<m>y")), "<B>x<m>y");
  EXPECT_EQ(s->vocab_size(), bos_id + 2);  // + GPT2Tokenizer's default eos/unk "<|endoftext|>"

  // add_prefix_space: transformers prepends one space to the whole text, tokenizers to every
  // piece between added tokens.
  TempDir slow2, fast2;
  t.write_slow(slow2.path(), json{{"add_prefix_space", true},
                                  {"added_tokens_decoder",
                                   {{std::to_string(m_id), {{"content", "<m>"}, {"special", true}}}}}});
  json tj2 = t.fast_json();
  tj2["pre_tokenizer"]["add_prefix_space"] = true;
  tj2["added_tokens"] = json::array({{{"id", m_id}, {"content", "<m>"}, {"special", true}}});
  t.write_fast(fast2.path(), tj2);
  EXPECT_EQ(BpeTokenizer::from_vocab_merges(slow2.path())->encode("b<m>b"),
            (Ids{t.id(" b"), m_id, t.id("b")}));
  EXPECT_EQ(BpeTokenizer::from_tokenizer_json(fast2 / "tokenizer.json")->encode("b<m>b"),
            (Ids{t.id(" b"), m_id, t.id(" b")}));
}

TEST(BpeTokenizerJson, RobertaProcessingAndIgnoreMerges) {
  TinyBpe t(Merges{{"a", "b"}}, {"abc", "<s>", "</s>"});
  json tj = t.fast_json();
  tj["post_processor"] = {{"type", "RobertaProcessing"},
                          {"sep", {"</s>", t.id("</s>")}},
                          {"cls", {"<s>", t.id("<s>")}},
                          {"trim_offsets", true},
                          {"add_prefix_space", false}};
  TempDir d;
  t.write_fast(d.path(), tj);
  auto f = BpeTokenizer::from_tokenizer_json(d / "tokenizer.json");
  EXPECT_EQ(f->encode("abc"), (Ids{t.id("<s>"), t.id("ab"), t.id("c"), t.id("</s>")}));
  tj["model"]["ignore_merges"] = true;
  t.write_fast(d.path(), tj);
  f = BpeTokenizer::from_tokenizer_json(d / "tokenizer.json");
  EXPECT_EQ(f->encode_plain("abc abc"), (Ids{t.id("abc"), t.id(" "), t.id("ab"), t.id("c")}));
}

TEST(BpeTokenizer, LongPreTokensStayFast) {
  // A million-byte pre-token (one run of spaces, one run of letters) must not go quadratic.
  TinyBpe t(Merges{{" ", " "}, {"  ", "  "}, {"a", "a"}, {"aa", "aa"}});
  TempDir d;
  t.write_slow(d.path());
  auto s = BpeTokenizer::from_vocab_merges(d.path());
  const auto ids = s->encode(std::string(1 << 20, ' ') + std::string(1 << 20, 'a'));
  // Pieces: 2^20-1 spaces (the last space leads the word), then " " + 2^20 "a". The spaces give
  // 2^18-1 quads, a pair and a single; the word gives " " and 2^18 quads.
  EXPECT_EQ(ids.size(), (1u << 19) + 2u);
}

}  // namespace
}  // namespace scalpel::text
