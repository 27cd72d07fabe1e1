// Byte-level BPE (GPT-2 / OPT) that reproduces the Hugging Face ids: the slow GPT2Tokenizer from
// vocab.json + merges.txt and the `tokenizers` BPE from tokenizer.json. Exposed beyond the
// Tokenizer interface so tests and tools can reach the pre-tokenizer and the un-prefixed ids.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "scalpel/text/special_tokens.hpp"
#include "scalpel/text/tokenizer.hpp"

namespace scalpel::text {

// Splits valid UTF-8 with the GPT-2 pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// with \s meaning Unicode White_Space, as Python's `regex` module and Oniguruma define it.
// Invalid UTF-8 is first replaced as sanitize_utf8() does. The pieces cover the input exactly.
std::vector<std::string> gpt2_pretokenize(std::string_view text);

// GPT-2's bytes_to_unicode(): the code point that stands for byte b in vocab/merges strings.
char32_t gpt2_byte_to_char(std::uint8_t b);

// encode() = prefix_ids() + encode_plain(text) + suffix_ids(). encode_plain cuts the text at the
// literal contents of the added tokens first (leftmost-longest; lstrip/rstrip honoured), then
// pre-tokenizes and BPE-encodes every other piece on its own, as both HF implementations do.
// The two loaders differ where transformers and tokenizers differ: merge order when a merges
// file is not trainer-consistent, add_prefix_space (once per text vs once per piece), the
// whitespace that lstrip/rstrip remove, and tokenizer.json's two-pass added-token matching
// (normalized=false tokens first). On real GPT-2/OPT files they give identical ids.
class BpeTokenizer final : public Tokenizer {
 public:
  // tokenizer.json of the `tokenizers` library (model BPE, ByteLevel pre-tokenizer). Special
  // tokens named in tokenizer_config.json / special_tokens_map.json next to it and missing from
  // "added_tokens" are added, as PreTrainedTokenizerFast does.
  static std::unique_ptr<BpeTokenizer> from_tokenizer_json(const std::filesystem::path& file);
  // vocab.json + merges.txt of the slow GPT2Tokenizer in `folder`, with its tokenizer_config.json,
  // special_tokens_map.json and added_tokens.json when present.
  static std::unique_ptr<BpeTokenizer> from_vocab_merges(const std::filesystem::path& folder);

  ~BpeTokenizer() override;

  std::vector<std::int32_t> encode(std::string_view text) const override;
  // HF decode with clean_up_tokenization_spaces=False and no spaces around special tokens:
  // the exact inverse of encode (added tokens come out as their text). Bytes that do not form
  // UTF-8 are replaced as Python's errors="replace" does. Input Error on an unknown id.
  std::string decode(const std::vector<std::int32_t>& ids) const override;
  std::int64_t vocab_size() const override { return static_cast<std::int64_t>(id_to_token_.size()); }
  std::string kind() const override { return kind_; }

  // Ids of `text` without the tokens the post-processor / add_bos_token adds.
  std::vector<std::int32_t> encode_plain(std::string_view text) const override;
  std::int32_t bos_token_id() const override { return bos_id_; }
  std::int32_t eos_token_id() const override { return eos_id_; }
  // Tokens added around every encoded text (OPT: prefix {2}, suffix {}).
  const std::vector<std::int32_t>& prefix_ids() const { return prefix_; }
  const std::vector<std::int32_t>& suffix_ids() const { return suffix_; }
  // Vocabulary access: -1 when `token` is unknown; the empty string for an unused id.
  std::int32_t token_to_id(std::string_view token) const;
  const std::string& id_to_token(std::int32_t id) const;
  const std::vector<AddedToken>& added_tokens() const { return splitter_.tokens(); }

 private:
  BpeTokenizer();
  struct Merge {
    std::uint32_t rank;
    std::int32_t id;
  };
  enum class MergeOrder {
    all_of_lowest_rank,  // transformers' GPT2Tokenizer.bpe(): every occurrence of the best pair
    rank_then_position,  // tokenizers' Word::merge_all(): one merge at a time from a heap
  };

  void finish_setup(const std::filesystem::path& file);
  // bos_id_ / eos_id_ from the configs' named special tokens ("bos_token" -> content).
  void set_named_ids(const std::map<std::string, std::string>& named);
  void bpe_word(std::string_view bytes, std::vector<std::int32_t>& out) const;
  void encode_text(std::string_view text, std::vector<std::int32_t>& out) const;
  std::int32_t add_token_id(const std::string& token, std::int32_t id, const std::filesystem::path& file,
                            const std::string& where);

  std::string kind_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<std::string, std::int32_t> token_to_id_;
  std::unordered_map<std::uint64_t, Merge> merges_;  // (left id << 32 | right id) -> merge
  std::int32_t byte_id_[256] = {};
  std::vector<std::string> id_bytes_;  // what each id decodes to
  AddedTokenSplitter splitter_;
  AddedTokenSplitter second_pass_;  // tokenizer.json: normalized added tokens
  std::vector<std::int32_t> prefix_, suffix_;
  MergeOrder order_ = MergeOrder::all_of_lowest_rank;
  bool add_prefix_space_ = false;
  bool prefix_space_per_piece_ = false;  // tokenizers adds it to every piece, transformers once
  bool use_regex_ = true;
  bool ignore_merges_ = false;
  std::int32_t bos_id_ = -1, eos_id_ = -1;  // the configs' bos_token / eos_token, when tokens

  // Pre-token bytes -> ids. Shared by all encode() calls; guarded because encode() is const.
  struct StringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<std::int32_t>, StringHash, std::equal_to<>> cache_;
};

}  // namespace scalpel::text
