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

// How SentencePiece models (tokenizer.model) turn text into ids. Byte-level BPE has one behaviour.
//  transformers:  transformers 5's LlamaTokenizer (the default): split at added tokens, then per
//                 piece spaces become "▁" and a "▁" is prepended only where the piece does not
//                 start with one (legacy=true: every piece; legacy=false: the text's first piece;
//                 add_prefix_space=false: none), then BPE without SentencePiece's dummy prefix.
//  sentencepiece: SentencePieceProcessor.encode of each piece between added tokens, as the original
//                 LLaMA code and transformers 4's slow LlamaTokenizer (legacy) do on plain text.
enum class TokenizerMode { transformers, sentencepiece };

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Ids of `text` as HF's tokenizer(text).input_ids gives them (special start token included).
  virtual std::vector<std::int32_t> encode(std::string_view text) const = 0;
  // The same without the tokens added around the text (add_special_tokens=False).
  virtual std::vector<std::int32_t> encode_plain(std::string_view text) const = 0;
  // tokenizer.bos_token_id / eos_token_id as transformers reports them; -1 when unset.
  virtual std::int32_t bos_token_id() const = 0;
  virtual std::int32_t eos_token_id() const = 0;
  virtual std::string decode(const std::vector<std::int32_t>& ids) const = 0;
  virtual std::int64_t vocab_size() const = 0;
  virtual std::string kind() const = 0;  // "bpe(tokenizer.json)", "bpe(vocab.json+merges.txt)", "sentencepiece"

  // Picks the tokenizer of a Hugging Face folder: tokenizer.json, else vocab.json + merges.txt,
  // else tokenizer.model; reads tokenizer_config.json / special_tokens_map.json for the BOS
  // convention. Input Error naming the folder or file when none is usable or one is malformed.
  static std::unique_ptr<Tokenizer> from_folder(const std::filesystem::path& folder,
                                                TokenizerMode mode = TokenizerMode::transformers);
};

}  // namespace scalpel::text
