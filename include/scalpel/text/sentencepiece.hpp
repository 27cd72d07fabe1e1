// SentencePiece tokenizer (LLaMA) through libsentencepiece, with the rules of TokenizerMode:
// transformers 5's LlamaTokenizer by default, or raw sp.encode per piece (the original LLaMA code,
// transformers 4's slow LlamaTokenizer with legacy=True). Both split at added tokens first and add
// <s> / </s> as tokenizer_config.json asks.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "scalpel/text/special_tokens.hpp"
#include "scalpel/text/tokenizer.hpp"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace scalpel::text {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // Where transformers mode prepends "▁" to a piece that does not start with one (Metaspace's
  // prepend_scheme): every piece (legacy=true), the text's first piece (legacy=false), never
  // (add_prefix_space=false).
  enum class Prepend { always, first, never };

  // tokenizer.model in `folder`, with tokenizer_config.json / special_tokens_map.json when present.
  static std::unique_ptr<SentencePieceTokenizer> from_folder(const std::filesystem::path& folder,
                                                             TokenizerMode mode = TokenizerMode::transformers);
  ~SentencePieceTokenizer() override;

  std::vector<std::int32_t> encode(std::string_view text) const override;
  // sp.decode of the runs between special tokens; special tokens come out as their text (HF
  // decode with spaces_between_special_tokens=False). Input Error on an unknown id.
  std::string decode(const std::vector<std::int32_t>& ids) const override;
  std::int64_t vocab_size() const override { return vocab_size_; }
  std::string kind() const override;

  // Ids of `text` without <s>/</s>: special-token literals become their ids, every other piece is
  // encoded by the mode's rules.
  std::vector<std::int32_t> encode_plain(std::string_view text) const override;
  // Plain sp.EncodeAsIds of one string with the model as stored (dummy prefix included), no
  // special-token handling (invalid UTF-8 replaced).
  std::vector<std::int32_t> sp_encode(std::string_view text) const;

  TokenizerMode mode() const { return mode_; }
  Prepend prepend() const { return prepend_; }
  std::int32_t bos_id() const { return bos_id_; }  // -1 when there is none
  std::int32_t eos_id() const { return eos_id_; }
  std::int32_t bos_token_id() const override { return bos_id_; }
  std::int32_t eos_token_id() const override { return eos_id_; }
  bool adds_bos() const { return add_bos_; }
  bool adds_eos() const { return add_eos_; }
  const std::vector<AddedToken>& added_tokens() const { return splitter_.tokens(); }

 private:
  SentencePieceTokenizer();
  void encode_piece(std::string_view piece, bool at_start, std::vector<std::int32_t>& out) const;

  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;  // the model as stored
  // transformers mode: the same pieces with the normalizer replaced by HF's (none): no dummy
  // prefix, no whitespace removal, no character normalization.
  std::unique_ptr<sentencepiece::SentencePieceProcessor> bare_;
  std::filesystem::path model_file_;
  AddedTokenSplitter splitter_;
  std::vector<std::string> extra_pieces_;  // added tokens beyond the model's pieces
  std::vector<bool> is_added_;             // ids that decode as their literal text
  std::int64_t vocab_size_ = 0;
  std::int32_t bos_id_ = -1, eos_id_ = -1;
  bool add_bos_ = true, add_eos_ = false;
  TokenizerMode mode_ = TokenizerMode::transformers;
  Prepend prepend_ = Prepend::always;
};

}  // namespace scalpel::text
