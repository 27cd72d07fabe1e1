// Tokenizer::from_folder: picks the tokenizer files of a Hugging Face folder in the order
// transformers' AutoTokenizer effectively uses for these models (fast tokenizer.json first).
#include "scalpel/text/tokenizer.hpp"

#include <nlohmann/json.hpp>

#include "hf_files.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/core/log.hpp"
#include "scalpel/text/bpe.hpp"
#include "scalpel/text/sentencepiece.hpp"

namespace scalpel::text {

namespace fs = std::filesystem;

std::unique_ptr<Tokenizer> Tokenizer::from_folder(const fs::path& folder, TokenizerMode mode) {
  std::error_code ec;
  if (!fs::is_directory(folder, ec)) SCALPEL_INPUT_ERROR("{}: tokenizer folder not found", folder.string());
  const fs::path tj = folder / "tokenizer.json", vocab = folder / "vocab.json",
                 merges = folder / "merges.txt", model = folder / "tokenizer.model";
  const bool has_tj = fs::exists(tj, ec), has_vocab = fs::exists(vocab, ec),
             has_merges = fs::exists(merges, ec), has_model = fs::exists(model, ec);

  if (has_tj) {
    // LLaMA folders ship a tokenizer.json for LlamaTokenizerFast (Metaspace / byte_fallback BPE)
    // next to tokenizer.model; it is not byte-level, so tokenizer.model is used, with the rules
    // of `mode`. Any other non-byte-level tokenizer.json is an error from the BPE loader, which
    // names the unsupported field.
    const nlohmann::json root = detail::read_json(tj);
    const bool byte_level = root.is_object() && root.contains("pre_tokenizer") &&
                            detail::json_string(root["pre_tokenizer"], "type") == "ByteLevel";
    if (!byte_level && has_model) {
      log::info("{}: tokenizer.json is not byte-level BPE; using tokenizer.model", folder.string());
      return SentencePieceTokenizer::from_folder(folder, mode);
    }
    return BpeTokenizer::from_tokenizer_json(tj);
  }
  if (has_vocab || has_merges) {
    if (!has_vocab)
      SCALPEL_INPUT_ERROR("{}: merges.txt is present but vocab.json is missing", folder.string());
    if (!has_merges)
      SCALPEL_INPUT_ERROR("{}: vocab.json is present but merges.txt is missing", folder.string());
    return BpeTokenizer::from_vocab_merges(folder);
  }
  if (has_model) return SentencePieceTokenizer::from_folder(folder, mode);
  SCALPEL_INPUT_ERROR("{}: no tokenizer files (tokenizer.json, vocab.json + merges.txt, or tokenizer.model)",
                      folder.string());
}

}  // namespace scalpel::text
