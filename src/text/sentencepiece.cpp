// LLaMA's SentencePiece tokenizer with the exact ids of transformers' slow LlamaTokenizer.
//
// What transformers (4.31 .. 4.36, legacy=True) does for tokenizer(text):
//  * PreTrainedTokenizer.tokenize() cuts the text with tokens_trie.split() at every added token,
//    which includes the special tokens <s>, </s> and <unk> (all AddedToken(lstrip=False,
//    rstrip=False), so no whitespace is eaten around them), and drops chunks that end up empty;
//  * LlamaTokenizer.tokenize() with legacy=True defers to that, and _tokenize(chunk) is
//    sp_model.encode(chunk, out_type=str) for EACH non-special chunk separately, so every chunk,
//    including the one right after a special token, gets SentencePiece's dummy-prefix "▁";
//  * pieces are mapped back with piece_to_id (identical to EncodeAsIds: with byte_fallback no
//    piece is unknown), then build_inputs_with_special_tokens adds [bos] if add_bos_token and
//    [eos] if add_eos_token.
// So "a</s>b" -> [1] + sp("a") + [2] + sp("b"), and a text without special-token literals gives
// [1] + sp.EncodeAsIds(text). legacy=False (a different treatment after special tokens and an
// altered dummy prefix) is rejected rather than approximated.
#include "scalpel/text/sentencepiece.hpp"

#include <sentencepiece_processor.h>

#include <algorithm>

#include "hf_files.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/text/unicode.hpp"

namespace scalpel::text {

namespace fs = std::filesystem;

SentencePieceTokenizer::SentencePieceTokenizer()
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}
SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::unique_ptr<SentencePieceTokenizer> SentencePieceTokenizer::from_folder(const fs::path& folder) {
  std::unique_ptr<SentencePieceTokenizer> t(new SentencePieceTokenizer());
  t->model_file_ = folder / "tokenizer.model";
  const std::string mf = t->model_file_.string();
  const std::string bytes = detail::read_file(t->model_file_);
  if (bytes.empty()) SCALPEL_INPUT_ERROR("{}: file is empty", mf);
  const auto status = t->sp_->LoadFromSerializedProto(bytes);
  if (!status.ok()) SCALPEL_INPUT_ERROR("{}: not a usable SentencePiece model: {}", mf, status.ToString());
  const int pieces = t->sp_->GetPieceSize();
  if (pieces <= 0) SCALPEL_INPUT_ERROR("{}: the model has no pieces", mf);

  const detail::HfSpecialTokens cfg = detail::read_special_tokens(
      folder, {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}});
  const std::string cf = cfg.config_file.string();
  if (cfg.tokenizer_class && !cfg.tokenizer_class->starts_with("LlamaTokenizer"))
    SCALPEL_INPUT_ERROR(
        "{}: tokenizer_class \"{}\" is not supported with tokenizer.model (LlamaTokenizer only)", cf,
        *cfg.tokenizer_class);
  if (detail::json_bool(cfg.config, "legacy", cfg.config_file) == std::optional<bool>(false))
    SCALPEL_INPUT_ERROR(
        "{}: legacy=false is not supported (only the legacy LlamaTokenizer behaviour is reproduced)", cf);
  t->add_bos_ = detail::json_bool(cfg.config, "add_bos_token", cfg.config_file).value_or(true);
  t->add_eos_ = detail::json_bool(cfg.config, "add_eos_token", cfg.config_file).value_or(false);

  // Added tokens take the model's id for their piece, else an explicit id or the next free one.
  t->vocab_size_ = pieces;
  std::vector<AddedToken> added;
  auto have = [&](const std::string& c) {
    return std::any_of(added.begin(), added.end(), [&](const AddedToken& a) { return a.content == c; });
  };
  auto resolve = [&](AddedToken a, const fs::path& from) {
    if (a.content.empty() || have(a.content)) return;
    const int piece_id = t->sp_->PieceToId(a.content);
    const bool in_model = piece_id >= 0 && piece_id < pieces && t->sp_->IdToPiece(piece_id) == a.content;
    if (in_model) {
      if (a.id >= 0 && a.id != piece_id)
        SCALPEL_INPUT_ERROR("{}: token \"{}\" has id {} but {} gives it id {}", from.string(), a.content,
                            a.id, mf, piece_id);
      a.id = piece_id;
    } else {
      if (a.id < 0) a.id = static_cast<std::int32_t>(t->vocab_size_);
      if (a.id > detail::max_token_id(static_cast<std::size_t>(pieces)))
        SCALPEL_INPUT_ERROR("{}: token \"{}\" has id {}, far beyond the model's {} pieces", from.string(),
                            a.content, a.id, pieces);
      if (a.id < pieces)
        SCALPEL_INPUT_ERROR("{}: token \"{}\" has id {}, which is the model's piece \"{}\"", from.string(),
                            a.content, a.id, t->sp_->IdToPiece(a.id));
      if (a.id >= t->vocab_size_) {
        t->vocab_size_ = static_cast<std::int64_t>(a.id) + 1;
        t->extra_pieces_.resize(static_cast<std::size_t>(t->vocab_size_ - pieces));
      }
      auto& slot = t->extra_pieces_[static_cast<std::size_t>(a.id - pieces)];
      if (!slot.empty())
        SCALPEL_INPUT_ERROR("{}: id {} is given to both \"{}\" and \"{}\"", from.string(), a.id, slot,
                            a.content);
      slot = a.content;
    }
    added.push_back(std::move(a));
  };
  for (const auto& a : cfg.added_tokens_decoder) resolve(a, cfg.config_file);
  for (const auto& a : cfg.special) resolve(a, folder / "special_tokens_map.json");

  auto named_id = [&](const char* key) -> std::int32_t {
    auto it = cfg.named.find(key);
    if (it == cfg.named.end()) return -1;
    for (const auto& a : added)
      if (a.content == it->second) return a.id;
    return -1;
  };
  t->bos_id_ = named_id("bos_token");
  t->eos_id_ = named_id("eos_token");
  if (t->add_bos_ && t->bos_id_ < 0)
    SCALPEL_INPUT_ERROR("{}: add_bos_token is true but no bos_token is set", cf);
  if (t->add_eos_ && t->eos_id_ < 0)
    SCALPEL_INPUT_ERROR("{}: add_eos_token is true but no eos_token is set", cf);
  t->is_added_.assign(static_cast<std::size_t>(t->vocab_size_), false);
  for (const auto& a : added) t->is_added_[a.id] = true;
  t->splitter_ = AddedTokenSplitter(std::move(added), StripWhitespace::python);
  return t;
}

std::vector<std::int32_t> SentencePieceTokenizer::sp_encode(std::string_view text) const {
  const std::string clean = sanitize_utf8(text);
  std::vector<int> ids;
  const auto status = sp_->Encode(clean, &ids);
  if (!status.ok())
    SCALPEL_RUNTIME_ERROR("{}: SentencePiece encode failed: {}", model_file_.string(), status.ToString());
  return {ids.begin(), ids.end()};
}

std::vector<std::int32_t> SentencePieceTokenizer::encode_plain(std::string_view text) const {
  const std::string clean = sanitize_utf8(text);
  std::vector<TextPiece> pieces;
  splitter_.split(clean, pieces);
  std::vector<std::int32_t> out;
  out.reserve(clean.size() / 3 + 8);
  std::vector<int> ids;
  for (const auto& p : pieces) {
    if (p.token_id >= 0) {
      out.push_back(p.token_id);
      continue;
    }
    const auto status = sp_->Encode(std::string_view(p.text.data(), p.text.size()), &ids);
    if (!status.ok())
      SCALPEL_RUNTIME_ERROR("{}: SentencePiece encode failed: {}", model_file_.string(), status.ToString());
    out.insert(out.end(), ids.begin(), ids.end());
  }
  return out;
}

std::vector<std::int32_t> SentencePieceTokenizer::encode(std::string_view text) const {
  std::vector<std::int32_t> body = encode_plain(text);
  std::vector<std::int32_t> ids;
  ids.reserve(body.size() + 2);
  if (add_bos_) ids.push_back(bos_id_);
  ids.insert(ids.end(), body.begin(), body.end());
  if (add_eos_) ids.push_back(eos_id_);
  return ids;
}

std::string SentencePieceTokenizer::decode(const std::vector<std::int32_t>& ids) const {
  const int pieces = sp_->GetPieceSize();
  std::string out;
  std::vector<int> run;
  auto flush = [&] {
    if (run.empty()) return;
    std::string text;
    const auto status = sp_->Decode(run, &text);
    if (!status.ok())
      SCALPEL_RUNTIME_ERROR("{}: SentencePiece decode failed: {}", model_file_.string(), status.ToString());
    out += text;
    run.clear();
  };
  for (std::int32_t id : ids) {
    if (id < 0 || id >= vocab_size_)
      SCALPEL_INPUT_ERROR("{}: token id {} is not in the vocabulary (size {})", model_file_.string(), id,
                          vocab_size_);
    if (is_added_[id]) {
      flush();
      out += id < pieces ? sp_->IdToPiece(id) : extra_pieces_[id - pieces];
    } else if (id >= pieces) {  // a gap between added-token ids
      SCALPEL_INPUT_ERROR("{}: token id {} is not assigned to any token", model_file_.string(), id);
    } else {
      run.push_back(id);
    }
  }
  flush();
  return sanitize_utf8(out);
}

}  // namespace scalpel::text
