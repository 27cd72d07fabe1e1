// Tokenizers that reproduce the Hugging Face ones id for id: byte-level BPE (GPT-2/OPT) from
// vocab.json + merges.txt or tokenizer.json, and SentencePiece (LLaMA) from tokenizer.model.
// encode() applies the model's convention for the start token (OPT: a leading </s>; LLaMA: <s>).
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace scalpel::text {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Ids of `text` as HF's tokenizer(text).input_ids gives them (special start token included).
  virtual std::vector<std::int32_t> encode(std::string_view text) const = 0;
  virtual std::string decode(const std::vector<std::int32_t>& ids) const = 0;
  virtual std::int64_t vocab_size() const = 0;
  virtual std::string kind() const = 0;  // "bpe(tokenizer.json)", "bpe(vocab.json+merges.txt)", "sentencepiece"

  // Picks the tokenizer of a Hugging Face folder: tokenizer.json, else vocab.json + merges.txt,
  // else tokenizer.model; reads tokenizer_config.json / special_tokens_map.json for the BOS
  // convention. Input Error naming the folder or file when none is usable or one is malformed.
  static std::unique_ptr<Tokenizer> from_folder(const std::filesystem::path& folder);
};

}  // namespace scalpel::text
