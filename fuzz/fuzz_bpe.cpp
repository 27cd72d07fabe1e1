// libFuzzer target for the byte-level BPE: arbitrary bytes through the GPT-2 pre-tokenizer,
// added-token splitting and both BPE loaders. Only scalpel::Error may escape encode/decode; any
// other exception, a crash, or a broken invariant (lossless pieces, loaders that disagree, a
// round trip that does not give the text back) aborts.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "scalpel/core/error.hpp"
#include "scalpel/text/bpe.hpp"
#include "scalpel/text/unicode.hpp"

namespace fs = std::filesystem;
using scalpel::text::BpeTokenizer;

namespace {

struct Pair {
  std::unique_ptr<BpeTokenizer> slow, fast;
};

std::string bl(const std::string& raw) {
  std::string out;
  for (unsigned char b : raw) scalpel::text::append_utf8(out, scalpel::text::gpt2_byte_to_char(b));
  return out;
}

void write(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary);
  out << s;
}

// A small tokenizer written as both vocab.json + merges.txt and tokenizer.json, with merges in
// an order a trainer could produce (each merge's parts exist before it), so both loaders must
// agree, plus the OPT-style special tokens </s> and <pad>.
Pair build_small(const fs::path& dir) {
  const std::vector<std::pair<std::string, std::string>> merges = {
      {" ", "t"},  {"h", "e"},   {" t", "he"}, {"i", "n"}, {" ", "a"},   {"e", "r"},
      {" ", " "},  {"  ", "  "}, {"o", "n"},   {"'", "s"}, {"\n", "\n"}, {"\xC3", "\xA9"},
      {"in", "g"}, {" a", "n"},  {" an", "d"}, {"1", "2"}};
  std::string vocab = "{\"<s>\": 0, \"<pad>\": 1, \"</s>\": 2, \"<unk>\": 3";
  int next = 4;
  auto add = [&](const std::string& tok) {
    std::string esc;
    for (char c : tok) {
      if (c == '"' || c == '\\') esc += '\\';
      esc += c;
    }
    vocab += ", \"" + esc + "\": " + std::to_string(next++);
  };
  for (int b = 0; b < 256; ++b) add(bl(std::string(1, static_cast<char>(b))));
  std::string merges_txt = "#version: 0.2\n", merges_json;
  for (const auto& [a, b] : merges) {
    add(bl(a + b));
    merges_txt += bl(a) + " " + bl(b) + "\n";
    std::string m = bl(a) + " " + bl(b), esc;
    for (char c : m) {
      if (c == '"' || c == '\\') esc += '\\';
      esc += c;
    }
    merges_json += std::string(merges_json.empty() ? "" : ", ") + "\"" + esc + "\"";
  }
  vocab += "}";
  write(dir / "vocab.json", vocab);
  write(dir / "merges.txt", merges_txt);
  write(dir / "special_tokens_map.json",
        R"({"bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>", "pad_token": "<pad>"})");
  write(dir / "tokenizer_config.json", R"({"tokenizer_class": "GPT2Tokenizer", "add_bos_token": true})");
  write(
      dir / "tokenizer.json",
      R"({"version": "1.0", "added_tokens": [)"
      R"({"id": 1, "content": "<pad>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": true, "special": true},)"
      R"({"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": true, "special": true}],)"
      R"("normalizer": null, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},)"
      R"("post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "</s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],)"
      R"("pair": [], "special_tokens": {"</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}},)"
      R"("decoder": {"type": "ByteLevel"}, "model": {"type": "BPE", "dropout": null, "unk_token": null, "byte_fallback": false, "vocab": )" +
          vocab + R"(, "merges": [)" + merges_json + "]}}");
  return {BpeTokenizer::from_vocab_merges(dir), BpeTokenizer::from_tokenizer_json(dir / "tokenizer.json")};
}

fs::path g_tmp;
std::vector<Pair>* g_tokenizers = nullptr;

void cleanup() {
  std::error_code ec;
  if (!g_tmp.empty()) fs::remove_all(g_tmp, ec);
}

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_bpe: invariant broken: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_tokenizers = new std::vector<Pair>();
  g_tmp = fs::temp_directory_path() / ("scalpel_fuzz_bpe_" + std::to_string(::getpid()));
  fs::create_directories(g_tmp);
  std::atexit(cleanup);
  g_tokenizers->push_back(build_small(g_tmp));
  // The shared opt-mini model too when it is there (same default place as SCALPEL_SHARED_DIR).
  const char* env = std::getenv("SCALPEL_SHARED_DIR");
  const fs::path shared =
      env ? fs::path(env) : fs::path(__FILE__).parent_path().parent_path().parent_path() / "shared";
  const fs::path opt = shared / "models" / "opt-mini";
  if (fs::exists(opt / "vocab.json") && fs::exists(opt / "tokenizer.json"))
    g_tokenizers->push_back(
        {BpeTokenizer::from_vocab_merges(opt), BpeTokenizer::from_tokenizer_json(opt / "tokenizer.json")});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const std::string clean = scalpel::text::sanitize_utf8(input);
  check(scalpel::text::is_valid_utf8(clean), "sanitize_utf8 output is valid UTF-8");
  try {
    std::string joined;
    for (const auto& p : scalpel::text::gpt2_pretokenize(input)) joined += p;
    check(joined == clean, "pre-tokens cover the (sanitized) input exactly");
    for (const Pair& t : *g_tokenizers) {
      const auto a = t.slow->encode(input);
      const auto b = t.fast->encode(input);
      check(a == b, "vocab.json+merges.txt and tokenizer.json give the same ids");
      check(!a.empty() && a[0] == 2, "leading </s>");
      for (auto id : a) check(id >= 0 && id < t.slow->vocab_size(), "ids inside the vocabulary");
      check(t.slow->decode(std::vector<std::int32_t>(a.begin() + 1, a.end())) == clean, "round trip");
    }
  } catch (const scalpel::Error&) {
    // Input errors are a valid outcome; anything else propagates and aborts the run.
  }
  return 0;
}
