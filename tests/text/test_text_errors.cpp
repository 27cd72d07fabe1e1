// Every malformed input gives a scalpel input Error that names the file (and the field or line)
// instead of a crash or silently different ids.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "scalpel/text/bpe.hpp"
#include "scalpel/text/eval_text.hpp"
#include "scalpel/text/sentencepiece.hpp"
#include "scalpel/text/tokenizer.hpp"
#include "text_test_util.hpp"

namespace scalpel::text {
namespace {

using nlohmann::json;
using testing::byte_level;
using testing::expect_input_error;
using testing::TempDir;
using testing::write_file;

// A valid byte-level vocabulary (bytes 0..255, then "ab") and its merges file.
json byte_vocab() {
  json v = json::object();
  for (int b = 0; b < 256; ++b) v[byte_level(std::string(1, static_cast<char>(b)))] = b;
  v["ab"] = 256;
  return v;
}

json valid_tokenizer_json() {
  return {{"model", {{"type", "BPE"}, {"vocab", byte_vocab()}, {"merges", json::array({"a b"})}}},
          {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
          {"post_processor", nullptr},
          {"decoder", {{"type", "ByteLevel"}}},
          {"added_tokens", json::array()}};
}

void write_slow(const TempDir& d, const std::string& vocab, const std::string& merges) {
  write_file(d / "vocab.json", vocab);
  write_file(d / "merges.txt", merges);
}

TEST(TextErrors, MissingFiles) {
  TempDir d;
  expect_input_error([&] { (void)Tokenizer::from_folder(d / "nope"); }, {"nope", "not found"});
  expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); },
                     {d.path().string(), "no tokenizer files"});
  write_file(d / "vocab.json", byte_vocab().dump());
  expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); }, {"merges.txt is missing"});
  expect_input_error([&] { (void)BpeTokenizer::from_tokenizer_json(d / "tokenizer.json"); },
                     {"tokenizer.json", "not found"});
  expect_input_error([&] { (void)SentencePieceTokenizer::from_folder(d.path()); },
                     {"tokenizer.model", "not found"});
}

TEST(TextErrors, VocabMergesProblems) {
  TempDir d;
  write_slow(d, "{\"a\": 1,", "#version: 0.2\n");
  expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); }, {"vocab.json", "malformed JSON"});

  json dup = byte_vocab();
  dup["zz"] = 5;
  write_slow(d, dup.dump(), "#version: 0.2\n");
  expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); }, {"vocab.json", "id 5"});

  json huge = byte_vocab();
  huge["far"] = 2000000000;  // would need a 2e9-entry table
  write_slow(d, huge.dump(), "#version: 0.2\n");
  expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); },
                     {"vocab.json", "\"far\"", "2000000000"});

  write_slow(d, json{{"a", "x"}}.dump(), "#version: 0.2\n");
  expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); }, {"vocab.json", "integer"});

  write_slow(d, byte_vocab().dump(), "#version: 0.2\na b c\n");
  expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); },
                     {"merges.txt", "line 2", "expected two tokens"});
  write_slow(d, byte_vocab().dump(), "#version: 0.2\nab\n");
  expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); }, {"merges.txt", "line 2"});
  write_slow(d, byte_vocab().dump(), "#version: 0.2\na b\nq \xE2\x82\xAC\n");
  expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); },
                     {"merges.txt", "line 3", "missing from vocab.json"});
  write_slow(d, byte_vocab().dump(), "#version: 0.2\na b\nb c\n");
  expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); }, {"merges.txt", "line 3", "\"bc\""});
  write_slow(d, byte_vocab().dump(), "#version: 0.2\n\xff\n");
  expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); }, {"merges.txt", "UTF-8"});

  json small = json::object();
  small["a"] = 0;
  write_slow(d, small.dump(), "#version: 0.2\n");
  expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); }, {"vocab.json", "byte 0x00"});

  write_slow(d, byte_vocab().dump(), "#version: 0.2\na b\n");
  write_file(d / "tokenizer_config.json", json{{"tokenizer_class", "BertTokenizer"}}.dump());
  expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); },
                     {"tokenizer_config.json", "BertTokenizer"});
  write_file(d / "tokenizer_config.json", json{{"add_bos_token", "yes"}}.dump());
  expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); },
                     {"tokenizer_config.json", "add_bos_token"});
  write_file(d / "tokenizer_config.json", "[1, 2");
  expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); },
                     {"tokenizer_config.json", "malformed JSON"});
  write_file(d / "tokenizer_config.json", "{}");
  write_file(d / "special_tokens_map.json",
             json{{"bos_token", {{"content", "<x>"}, {"single_word", true}}}}.dump());
  expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); },
                     {"special_tokens_map.json", "single_word"});
  fs::remove(d / "special_tokens_map.json");
  EXPECT_NO_THROW((void)Tokenizer::from_folder(d.path()));
}

TEST(TextErrors, TokenizerJsonProblems) {
  TempDir d;
  const fs::path f = d / "tokenizer.json";
  auto expect_field = [&](const json& tj, std::vector<std::string> needles) {
    write_file(f, tj.dump());
    needles.insert(needles.begin(), "tokenizer.json");
    expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); }, needles);
  };
  write_file(f, valid_tokenizer_json().dump());
  EXPECT_NO_THROW((void)Tokenizer::from_folder(d.path()));

  write_file(f, "{\"model\": ");
  expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); }, {"tokenizer.json", "malformed JSON"});

  json tj = valid_tokenizer_json();
  tj["model"]["type"] = "WordPiece";
  expect_field(tj, {"model.type", "WordPiece"});
  tj = valid_tokenizer_json();
  tj["model"]["dropout"] = 0.1;
  expect_field(tj, {"model.dropout"});
  tj = valid_tokenizer_json();
  tj["model"]["byte_fallback"] = true;
  expect_field(tj, {"model.byte_fallback"});
  tj = valid_tokenizer_json();
  tj["model"]["continuing_subword_prefix"] = "##";
  expect_field(tj, {"continuing_subword_prefix"});
  tj = valid_tokenizer_json();
  tj["normalizer"] = {{"type", "NFC"}};
  expect_field(tj, {"normalizer", "NFC"});
  tj = valid_tokenizer_json();
  tj["pre_tokenizer"] = {{"type", "Whitespace"}};
  expect_field(tj, {"pre_tokenizer", "Whitespace"});
  tj = valid_tokenizer_json();
  tj["pre_tokenizer"] = {{"type", 5}};  // wrong JSON type: still an input Error, not a json exception
  expect_field(tj, {"pre_tokenizer"});
  tj = valid_tokenizer_json();
  tj["normalizer"] = "NFC";
  expect_field(tj, {"normalizer"});
  tj = valid_tokenizer_json();
  tj["decoder"] = {{"type", "WordPiece"}};
  expect_field(tj, {"decoder", "WordPiece"});
  tj = valid_tokenizer_json();
  tj["post_processor"] = {{"type", "Weird"}};
  expect_field(tj, {"post_processor", "Weird"});
  tj = valid_tokenizer_json();
  tj["model"]["merges"] = json::array({"a b c"});
  expect_field(tj, {"model.merges[0]"});
  tj = valid_tokenizer_json();
  tj["model"]["merges"] = json::array({json::array({"a", "q\u20AC"})});
  expect_field(tj, {"model.merges[0]", "missing from model.vocab"});
  tj = valid_tokenizer_json();
  tj["model"]["merges"] = json::array({"b c"});
  expect_field(tj, {"model.merges[0]", "\"bc\""});
  tj = valid_tokenizer_json();
  tj["model"]["vocab"]["dup"] = 7;
  expect_field(tj, {"model.vocab", "id 7"});
  tj = valid_tokenizer_json();
  tj["added_tokens"] = json::array({{{"id", 3}, {"content", "<new>"}}});
  expect_field(tj, {"added_tokens", "<new>", "id 3"});
  tj = valid_tokenizer_json();
  tj["added_tokens"] = json::array({{{"id", 300}, {"content", "<w>"}, {"single_word", true}}});
  expect_field(tj, {"added_tokens[0]", "single_word"});
  tj = valid_tokenizer_json();
  tj["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", json::array({{{"SpecialToken", {{"id", "<q>"}}}}, {{"Sequence", {{"id", "A"}}}}})},
      {"special_tokens", json::object()}};
  expect_field(tj, {"post_processor", "<q>"});
}

TEST(TextErrors, CorruptSentencePieceModel) {
  TempDir d;
  write_file(d / "tokenizer.model", "this is not a protobuf \x01\x02\x03\xff\xfe");
  expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); }, {"tokenizer.model"});
  write_file(d / "tokenizer.model", "");
  expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); }, {"tokenizer.model", "empty"});
  const fs::path real = testing::shared_dir() / "models" / "llama-mini" / "tokenizer.model";
  if (fs::exists(real)) {
    std::string bytes = testing::read_all(real);
    write_file(d / "tokenizer.model", bytes.substr(0, bytes.size() / 2));  // truncated
    expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); }, {"tokenizer.model"});
    write_file(d / "tokenizer.model", bytes);
    // legacy=false is supported (test_hf_cases); a legacy that is not a boolean is not.
    write_file(d / "tokenizer_config.json", json{{"legacy", "no"}}.dump());
    expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); }, {"tokenizer_config.json", "legacy"});
    write_file(d / "tokenizer_config.json", json{{"add_prefix_space", 1}}.dump());
    expect_input_error([&] { (void)Tokenizer::from_folder(d.path()); },
                       {"tokenizer_config.json", "add_prefix_space"});
  }
}

TEST(TextErrors, EvalTextProblems) {
  TempDir d;
  expect_input_error([&] { (void)load_eval_text("wikitext2", d / "missing.txt"); },
                     {"missing.txt", "not found"});
  write_file(d / "empty.txt", "");
  expect_input_error([&] { (void)load_eval_text("text", d / "empty.txt"); }, {"empty.txt", "empty"});
  write_file(d / "blank.txt", "\n");
  expect_input_error([&] { (void)load_eval_text("ptb", d / "blank.txt"); }, {"blank.txt", "empty"});
  write_file(d / "bad.json", "{\"text\": \"a\"}\n{\"text\": \n");
  expect_input_error([&] { (void)load_eval_text("c4", d / "bad.json"); },
                     {"bad.json", "line 2", "malformed JSON"});
  write_file(d / "notext.json", "{\"text\": \"a\"}\n{\"body\": \"b\"}\n");
  expect_input_error([&] { (void)load_eval_text("c4", d / "notext.json"); },
                     {"notext.json", "line 2", "\"text\""});
  write_file(d / "latin1.txt", "caf\xe9\n");
  expect_input_error([&] { (void)load_eval_text("ptb", d / "latin1.txt"); },
                     {"latin1.txt", "UTF-8", "byte 3"});
  write_file(d / "c4.json.gz", std::string("\x1f\x8b\x08\x00", 4));
  expect_input_error([&] { (void)load_eval_text("c4", d / "c4.json.gz"); }, {"c4.json.gz", "gzip"});
  write_file(d / "ok.txt", "x");
  expect_input_error([&] { (void)load_eval_text("lambada", d / "ok.txt"); }, {"lambada", "ok.txt"});
}

}  // namespace
}  // namespace scalpel::text
