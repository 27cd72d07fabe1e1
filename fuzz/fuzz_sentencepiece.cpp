// libFuzzer target for the SentencePiece tokenizer in both tokenizer modes (llama-mini's
// tokenizer.model from the shared folder, at legacy=true and legacy=false). Only scalpel::Error may
// escape; a crash, an id outside the vocabulary, or a broken cross-mode identity aborts:
//  * text without added-token literals: transformers mode equals sp.encode of the text with one
//    leading space (or "▁") removed, since both segment the same "▁"-prefixed string;
//  * such text gives the same ids at legacy=true and legacy=false (one piece, at offset 0);
//  * decode never fails on the ids encode gave.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "scalpel/core/error.hpp"
#include "scalpel/text/sentencepiece.hpp"
#include "scalpel/text/unicode.hpp"

namespace fs = std::filesystem;
using scalpel::text::SentencePieceTokenizer;
using scalpel::text::TokenizerMode;

namespace {

std::unique_ptr<SentencePieceTokenizer> g_hf, g_hf_nolegacy, g_sp;
fs::path g_tmp;

void cleanup() {
  std::error_code ec;
  if (!g_tmp.empty()) fs::remove_all(g_tmp, ec);
}

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_sentencepiece: invariant broken: %s\n", what);
    std::abort();
  }
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool has_added_literal(const std::string& s) {
  for (const auto& t : g_hf->added_tokens())
    if (s.find(t.content) != std::string::npos) return true;
  return false;
}

void check_ids(const SentencePieceTokenizer& t, const std::vector<std::int32_t>& ids) {
  check(!ids.empty() && ids[0] == t.bos_id(), "leading <s>");
  for (auto id : ids) check(id >= 0 && id < t.vocab_size(), "ids inside the vocabulary");
  (void)t.decode(ids);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* env = std::getenv("SCALPEL_SHARED_DIR");
  const fs::path shared =
      env ? fs::path(env) : fs::path(__FILE__).parent_path().parent_path().parent_path() / "shared";
  const fs::path llama = shared / "models" / "llama-mini";
  if (!fs::exists(llama / "tokenizer.model")) {
    std::fprintf(stderr, "fuzz_sentencepiece: %s/tokenizer.model not found (set SCALPEL_SHARED_DIR)\n",
                 llama.string().c_str());
    std::exit(2);
  }
  g_hf = SentencePieceTokenizer::from_folder(llama, TokenizerMode::transformers);
  g_sp = SentencePieceTokenizer::from_folder(llama, TokenizerMode::sentencepiece);
  g_tmp = fs::temp_directory_path() / ("scalpel_fuzz_sp_" + std::to_string(::getpid()));
  fs::create_directories(g_tmp);
  std::atexit(cleanup);
  fs::copy_file(llama / "tokenizer.model", g_tmp / "tokenizer.model");
  std::string cfg = slurp(llama / "tokenizer_config.json");
  const auto at = cfg.find("\"legacy\": true");
  check(at != std::string::npos, "llama-mini's tokenizer_config.json says \"legacy\": true");
  cfg.replace(at, 14, "\"legacy\": false");
  std::ofstream(g_tmp / "tokenizer_config.json") << cfg;
  g_hf_nolegacy = SentencePieceTokenizer::from_folder(g_tmp, TokenizerMode::transformers);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  try {
    const auto hf = g_hf->encode(input);
    const auto sp = g_sp->encode(input);
    const auto nolegacy = g_hf_nolegacy->encode(input);
    check_ids(*g_hf, hf);
    check_ids(*g_sp, sp);
    check_ids(*g_hf_nolegacy, nolegacy);
    const std::string clean = scalpel::text::sanitize_utf8(input);
    if (!has_added_literal(clean)) {
      check(hf == nolegacy, "legacy does not matter without added-token literals");
      std::string body = clean;
      if (body.starts_with(' '))
        body.erase(0, 1);
      else if (body.starts_with("\u2581"))
        body.erase(0, 3);
      if (!body.empty()) {  // sp.encode("") is [], while "▁" alone is one piece
        std::vector<std::int32_t> want{g_sp->bos_id()};
        const auto s = g_sp->sp_encode(body);
        want.insert(want.end(), s.begin(), s.end());
        check(hf == want, "transformers mode = sp.encode of the text less one leading space");
      }
    }
  } catch (const scalpel::Error&) {
    // Input errors are a valid outcome; anything else propagates and aborts the run.
  }
  return 0;
}
