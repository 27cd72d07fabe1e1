// LLaMA's SentencePiece tokenizer, with the ids of transformers in either of two modes.
//
// Both modes first cut the text at every added token (<s>, </s>, <unk> and the added tokens of
// tokenizer_config.json), as transformers does, and drop pieces left empty; then:
//
// sentencepiece mode, transformers 4.31..4.36's slow LlamaTokenizer with legacy=True (and the
// original LLaMA code on text without special-token literals): each piece is passed to
// sp_model.encode on its own, so every piece, including one right after a special token or one
// that starts with a space, gets SentencePiece's dummy-prefix "▁". lstrip/rstrip use Python's
// str.strip whitespace.
//
// transformers mode, transformers 5's LlamaTokenizer (a `tokenizers` pipeline built from
// tokenizer.model: no normalizer; Metaspace pre-tokenizer with replacement "▁", split=false and a
// prepend_scheme; BPE with byte fallback over the model's pieces): each piece has its spaces
// replaced by "▁", then gets a "▁" in front only when it does not already start with one and the
// scheme asks for it (always: legacy=true; first: legacy=false, only the piece at offset 0 of the
// text; never: add_prefix_space=false); the result is segmented as a whole. That segmentation is
// SentencePiece's BPE on the same string with the normalizer switched off (no dummy prefix, no
// whitespace removal, no character map), which is what the `bare_` processor runs: SentencePiece's
// BPE encoder also merges over the whole normalized string (no word split), taking the pair whose
// merged piece scores highest, leftmost first, and the pipeline's merges are ranked by those same
// scores. lstrip/rstrip use Unicode White_Space, as `tokenizers` does.
// Checked against transformers 5.17's ids for 300 strings at both legacy settings and for the PTB
// test text (121,536 ids) in the tests.
//
// Ids are then [bos] + pieces + [eos] as add_bos_token / add_eos_token say.
#include "scalpel/text/sentencepiece.hpp"

#include <sentencepiece_processor.h>

#include <algorithm>

#include "hf_files.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/core/log.hpp"
#include "scalpel/text/unicode.hpp"

namespace scalpel::text {

namespace fs = std::filesystem;

namespace {

// Length of the protobuf field starting at bytes[pos] (tag included), or 0 when malformed.
std::size_t proto_field_size(std::string_view bytes, std::size_t pos, std::uint64_t& field) {
  auto varint = [&](std::size_t& p, std::uint64_t& v) {
    v = 0;
    for (int shift = 0; shift < 64 && p < bytes.size(); shift += 7) {
      const auto b = static_cast<unsigned char>(bytes[p++]);
      v |= static_cast<std::uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  };
  std::size_t p = pos;
  std::uint64_t tag = 0, v = 0;
  if (!varint(p, tag)) return 0;
  field = tag >> 3;
  switch (tag & 7) {
    case 0: if (!varint(p, v)) return 0; break;
    case 1: p += 8; break;
    case 2: if (!varint(p, v) || v > bytes.size() - p) return 0; p += v; break;
    case 5: p += 4; break;
    default: return 0;
  }
  return p <= bytes.size() ? p - pos : 0;
}

// The serialized ModelProto with HF's normalizer instead of the stored one: NormalizerSpec (field 3)
// becomes {name "identity", no charsmap, add_dummy_prefix false, remove_extra_whitespaces false,
// escape_whitespaces true}, and the self-test samples (field 4), which were recorded with the old
// normalizer and would fail the load, are dropped. Empty when the bytes are not a protobuf message.
std::string without_normalizer(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() + 32);
  for (std::size_t pos = 0; pos < bytes.size();) {
    std::uint64_t field = 0;
    const std::size_t n = proto_field_size(bytes, pos, field);
    if (n == 0) return {};
    if (field != 3 && field != 4) out.append(bytes.substr(pos, n));
    pos += n;
  }
  static const char spec[] = "\x0a\x08identity\x12\x00\x18\x00\x20\x00\x28\x01";
  const std::string_view inner(spec, sizeof spec - 1);
  out += '\x1a';
  out += static_cast<char>(inner.size());
  out.append(inner);
  return out;
}

// Loads tokenizer.model into `sp` and, in transformers mode, the same model without its
// normalizer into `bare`; returns the number of pieces.
int load_model(const fs::path& model_file, TokenizerMode mode, sentencepiece::SentencePieceProcessor& sp,
               sentencepiece::SentencePieceProcessor& bare) {
  const std::string mf = model_file.string();
  const std::string bytes = detail::read_file(model_file);
  if (bytes.empty()) SCALPEL_INPUT_ERROR("{}: file is empty", mf);
  const auto status = sp.LoadFromSerializedProto(bytes);
  if (!status.ok()) SCALPEL_INPUT_ERROR("{}: not a usable SentencePiece model: {}", mf, status.ToString());
  const int pieces = sp.GetPieceSize();
  if (pieces <= 0) SCALPEL_INPUT_ERROR("{}: the model has no pieces", mf);
  if (mode == TokenizerMode::transformers) {
    const std::string stripped = without_normalizer(bytes);
    const auto st = stripped.empty() ? sentencepiece::util::Status(sentencepiece::util::StatusCode::kDataLoss,
                                                                   "malformed protobuf")
                                     : bare.LoadFromSerializedProto(stripped);
    if (!st.ok())
      SCALPEL_INPUT_ERROR("{}: cannot rebuild the model without its normalizer: {}", mf, st.ToString());
  }
  return pieces;
}

// Where transformers mode prepends "▁", from tokenizer_config.json: transformers reads
// legacy=None as True (with a warning) and add_prefix_space as True.
SentencePieceTokenizer::Prepend read_prepend(const detail::HfSpecialTokens& cfg, TokenizerMode mode) {
  using Prepend = SentencePieceTokenizer::Prepend;
  const bool legacy = detail::json_bool(cfg.config, "legacy", cfg.config_file).value_or(true);
  const bool prefix_space = detail::json_bool(cfg.config, "add_prefix_space", cfg.config_file).value_or(true);
  if (mode == TokenizerMode::sentencepiece && (!legacy || !prefix_space))
    log::info("{}: legacy={} add_prefix_space={} are transformers settings; tokenizer.mode sentencepiece "
              "encodes with sp.encode as stored", cfg.config_file.string(), legacy, prefix_space);
  return !prefix_space ? Prepend::never : legacy ? Prepend::always : Prepend::first;
}

// Gives the added tokens their ids: the model's id for a content that is one of its pieces, else
// the explicit id or the next free one, past the model's pieces.
class AddedTokenIds {
 public:
  AddedTokenIds(const sentencepiece::SentencePieceProcessor& sp, int pieces, std::string model_file)
      : sp_(sp), pieces_(pieces), model_file_(std::move(model_file)), vocab_size_(pieces) {}

  // Adds `a` (from the config `from`) unless its content is empty or already added.
  void add(AddedToken a, const fs::path& from) {
    if (a.content.empty() || has(a.content)) return;
    const int piece_id = sp_.PieceToId(a.content);
    const bool in_model = piece_id >= 0 && piece_id < pieces_ && sp_.IdToPiece(piece_id) == a.content;
    if (in_model) {
      if (a.id >= 0 && a.id != piece_id)
        SCALPEL_INPUT_ERROR("{}: token \"{}\" has id {} but {} gives it id {}", from.string(), a.content,
                            a.id, model_file_, piece_id);
      a.id = piece_id;
    } else {
      if (a.id < 0) a.id = static_cast<std::int32_t>(vocab_size_);
      claim_extra_id(a, from);
    }
    added_.push_back(std::move(a));
  }

  // The id of the added token the configs name `key` ("bos_token"), or -1.
  std::int32_t named_id(const std::map<std::string, std::string>& named, const char* key) const {
    auto it = named.find(key);
    if (it == named.end()) return -1;
    for (const auto& a : added_)
      if (a.content == it->second) return a.id;
    return -1;
  }

  std::int64_t vocab_size() const { return vocab_size_; }
  std::vector<AddedToken> take_added() { return std::move(added_); }
  std::vector<std::string> take_extra_pieces() { return std::move(extra_pieces_); }

 private:
  bool has(const std::string& content) const {
    return std::any_of(added_.begin(), added_.end(),
                       [&](const AddedToken& a) { return a.content == content; });
  }

  // Records id a.id, beyond the model's pieces, for a.content.
  void claim_extra_id(const AddedToken& a, const fs::path& from) {
    if (a.id > detail::max_token_id(static_cast<std::size_t>(pieces_)))
      SCALPEL_INPUT_ERROR("{}: token \"{}\" has id {}, far beyond the model's {} pieces", from.string(),
                          a.content, a.id, pieces_);
    if (a.id < pieces_)
      SCALPEL_INPUT_ERROR("{}: token \"{}\" has id {}, which is the model's piece \"{}\"", from.string(),
                          a.content, a.id, sp_.IdToPiece(a.id));
    if (a.id >= vocab_size_) {
      vocab_size_ = static_cast<std::int64_t>(a.id) + 1;
      extra_pieces_.resize(static_cast<std::size_t>(vocab_size_ - pieces_));
    }
    auto& slot = extra_pieces_[static_cast<std::size_t>(a.id - pieces_)];
    if (!slot.empty())
      SCALPEL_INPUT_ERROR("{}: id {} is given to both \"{}\" and \"{}\"", from.string(), a.id, slot,
                          a.content);
    slot = a.content;
  }

  const sentencepiece::SentencePieceProcessor& sp_;
  const int pieces_;
  const std::string model_file_;
  std::vector<AddedToken> added_;
  std::vector<std::string> extra_pieces_;  // contents of the ids from pieces_ on
  std::int64_t vocab_size_;
};

}  // namespace

SentencePieceTokenizer::SentencePieceTokenizer()
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()),
      bare_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}
SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::unique_ptr<SentencePieceTokenizer> SentencePieceTokenizer::from_folder(const fs::path& folder,
                                                                           TokenizerMode mode) {
  std::unique_ptr<SentencePieceTokenizer> t(new SentencePieceTokenizer());
  t->mode_ = mode;
  t->model_file_ = folder / "tokenizer.model";
  const int pieces = load_model(t->model_file_, mode, *t->sp_, *t->bare_);

  const detail::HfSpecialTokens cfg = detail::read_special_tokens(
      folder, {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}});
  const std::string cf = cfg.config_file.string();
  if (cfg.tokenizer_class && !cfg.tokenizer_class->starts_with("LlamaTokenizer"))
    SCALPEL_INPUT_ERROR(
        "{}: tokenizer_class \"{}\" is not supported with tokenizer.model (LlamaTokenizer only)", cf,
        *cfg.tokenizer_class);
  t->prepend_ = read_prepend(cfg, mode);
  t->add_bos_ = detail::json_bool(cfg.config, "add_bos_token", cfg.config_file).value_or(true);
  t->add_eos_ = detail::json_bool(cfg.config, "add_eos_token", cfg.config_file).value_or(false);

  AddedTokenIds ids(*t->sp_, pieces, t->model_file_.string());
  for (const auto& a : cfg.added_tokens_decoder) ids.add(a, cfg.config_file);
  for (const auto& a : cfg.special) ids.add(a, folder / "special_tokens_map.json");
  t->vocab_size_ = ids.vocab_size();
  t->bos_id_ = ids.named_id(cfg.named, "bos_token");
  t->eos_id_ = ids.named_id(cfg.named, "eos_token");
  if (t->add_bos_ && t->bos_id_ < 0)
    SCALPEL_INPUT_ERROR("{}: add_bos_token is true but no bos_token is set", cf);
  if (t->add_eos_ && t->eos_id_ < 0)
    SCALPEL_INPUT_ERROR("{}: add_eos_token is true but no eos_token is set", cf);
  t->extra_pieces_ = ids.take_extra_pieces();
  std::vector<AddedToken> added = ids.take_added();
  t->is_added_.assign(static_cast<std::size_t>(t->vocab_size_), false);
  for (const auto& a : added) t->is_added_[a.id] = true;
  t->splitter_ = AddedTokenSplitter(std::move(added), mode == TokenizerMode::transformers
                                                         ? StripWhitespace::unicode
                                                         : StripWhitespace::python);
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

std::string SentencePieceTokenizer::kind() const {
  return mode_ == TokenizerMode::transformers ? "sentencepiece(transformers)" : "sentencepiece(sp.encode)";
}

void SentencePieceTokenizer::encode_piece(std::string_view piece, bool at_start, std::vector<std::int32_t>& out) const {
  static constexpr std::string_view kMeta = "\u2581";
  std::vector<int> ids;
  sentencepiece::util::Status status;
  if (mode_ == TokenizerMode::sentencepiece) {
    status = sp_->Encode(piece, &ids);
  } else {
    std::string s;
    s.reserve(piece.size() + 16);
    const bool prepend = !piece.starts_with(' ') && !piece.starts_with(kMeta) &&
                         (prepend_ == Prepend::always || (prepend_ == Prepend::first && at_start));
    if (prepend) s += kMeta;
    for (char c : piece) {
      if (c == ' ')
        s += kMeta;
      else
        s += c;
    }
    status = bare_->Encode(s, &ids);
  }
  if (!status.ok())
    SCALPEL_RUNTIME_ERROR("{}: SentencePiece encode failed: {}", model_file_.string(), status.ToString());
  out.insert(out.end(), ids.begin(), ids.end());
}

std::vector<std::int32_t> SentencePieceTokenizer::encode_plain(std::string_view text) const {
  const std::string clean = sanitize_utf8(text);
  std::vector<TextPiece> pieces;
  splitter_.split(clean, pieces);
  std::vector<std::int32_t> out;
  out.reserve(clean.size() / 3 + 8);
  for (const auto& p : pieces) {
    if (p.token_id >= 0)
      out.push_back(p.token_id);
    else
      encode_piece(p.text, p.text.data() == clean.data(), out);
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
