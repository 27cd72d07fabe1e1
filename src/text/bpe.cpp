// Byte-level BPE with Hugging Face's exact ids: GPT-2 regex pre-tokenization (PCRE2, JIT when
// available), bytes_to_unicode mapping, rank-ordered merges, added-token splitting and the
// BOS convention read from the files (tokenizer.json post_processor, tokenizer_config.json).
#include "scalpel/text/bpe.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <functional>
#include <nlohmann/json.hpp>
#include <queue>

#include "hf_files.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/core/log.hpp"
#include "scalpel/text/unicode.hpp"

namespace scalpel::text {

namespace fs = std::filesystem;
using nlohmann::json;

// ---------------------------------------------------------------------------------------------
// bytes_to_unicode

namespace {

struct ByteMap {
  char32_t byte_to_char[256];
  std::string byte_utf8[256];
  std::int16_t char_to_byte[512];  // every image code point is below U+0144

  ByteMap() {
    // Printable Latin-1 bytes stand for themselves; the other 68 bytes are shifted to U+0100.. in
    // byte order, so that no vocabulary string holds whitespace or control characters.
    std::fill(std::begin(char_to_byte), std::end(char_to_byte), std::int16_t{-1});
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      byte_to_char[b] = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      append_utf8(byte_utf8[b], byte_to_char[b]);
      char_to_byte[byte_to_char[b]] = static_cast<std::int16_t>(b);
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

// The pair of ids (a, b) packed as one hash key.
std::uint64_t pair_key(std::int32_t a, std::int32_t b) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
}

// Byte-level decoding of one vocabulary string; like the `tokenizers` ByteLevel decoder, a token
// holding a character outside the byte alphabet decodes to its own UTF-8 bytes.
std::string byte_decode_token(std::string_view token) {
  const ByteMap& m = byte_map();
  std::string out;
  if (!is_valid_utf8(token)) return std::string(token);
  for (std::size_t i = 0; i < token.size();) {
    const char32_t cp = next_code_point(token, i);
    if (cp >= 512 || m.char_to_byte[cp] < 0) return std::string(token);
    out.push_back(static_cast<char>(m.char_to_byte[cp]));
  }
  return out;
}

}  // namespace

char32_t gpt2_byte_to_char(std::uint8_t b) { return byte_map().byte_to_char[b]; }

// ---------------------------------------------------------------------------------------------
// GPT-2 pre-tokenization

// The pattern with \s spelt out. PCRE2's \s under PCRE2_UCP is \p{Z} + \h + \v, which also
// holds U+180E (MONGOLIAN VOWEL SEPARATOR, Cf since Unicode 6.3); Python's `regex` module (slow
// tokenizer) and Oniguruma (`tokenizers`) both use the White_Space property, which does not. The
// explicit class below is White_Space: \t \n \v \f \r, space, U+0085, U+00A0, U+1680,
// U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000. It excludes U+001C..U+001F (which
// Python's str.isspace() and the `re` module would accept) and U+200B (ZERO WIDTH SPACE, Cf).
// \p{L} and \p{N} are general categories in all three engines; only the Unicode version of their
// tables can differ (PCRE2 10.42 has Unicode 14).
#define SCALPEL_WS                                                                                           \
  "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}" \
  "\\x{3000}"
static constexpr const char* kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" SCALPEL_WS "\\p{L}\\p{N}]+|[" SCALPEL_WS
    "]+(?![^" SCALPEL_WS "])|[" SCALPEL_WS "]+";
#undef SCALPEL_WS

namespace {

// The compiled pattern; one instance serves every tokenizer (matching is const and thread-safe,
// each call has its own match data).
class Gpt2Splitter {
 public:
  Gpt2Splitter() {
    int err = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kGpt2Pattern), PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP, &err, &offset, nullptr);
    if (code_ == nullptr) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      SCALPEL_THROW(ErrorKind::internal, "GPT-2 pattern does not compile at {}: {}", offset,
                    reinterpret_cast<const char*>(msg));
    }
    std::uint32_t have_jit = 0;
    pcre2_config(PCRE2_CONFIG_JIT, &have_jit);
    jit_ = have_jit != 0 && pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  }
  ~Gpt2Splitter() { pcre2_code_free(code_); }
  Gpt2Splitter(const Gpt2Splitter&) = delete;
  Gpt2Splitter& operator=(const Gpt2Splitter&) = delete;

  // Calls f(piece) for each pre-token of valid UTF-8 `s`, in order.
  template <class F>
  void split(std::string_view s, F&& f) const {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    if (md == nullptr) SCALPEL_RUNTIME_ERROR("out of memory for PCRE2 match data");
    struct Guard {
      pcre2_match_data* md;
      ~Guard() { pcre2_match_data_free(md); }
    } guard{md};
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
    std::size_t pos = 0;
    while (pos < s.size()) {
      int rc = jit_ ? pcre2_jit_match(code_, subject, s.size(), pos, 0, md, nullptr)
                    : pcre2_match(code_, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc < 0 && rc != PCRE2_ERROR_NOMATCH && jit_)  // e.g. JIT stack exhausted: interpret
        rc = pcre2_match(code_, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) {
        // Cannot happen (the alternatives cover every code point), but the remainder would be
        // one piece, as the `tokenizers` Isolated split behaviour keeps unmatched text.
        f(s.substr(pos));
        return;
      }
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        SCALPEL_RUNTIME_ERROR("GPT-2 pre-tokenizer failed at byte {}: {}", pos,
                              reinterpret_cast<const char*>(msg));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const std::size_t begin = ov[0], end = ov[1];
      if (begin > pos) f(s.substr(pos, begin - pos));
      if (end > begin) {
        f(s.substr(begin, end - begin));
        pos = end;
      } else {  // an empty match cannot happen either; step one code point to guarantee progress
        std::size_t next = begin;
        next_code_point(s, next);
        f(s.substr(begin, next - begin));
        pos = next;
      }
    }
  }

 private:
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

const Gpt2Splitter& shared_splitter() {
  static const Gpt2Splitter s;
  return s;
}
}  // namespace

std::vector<std::string> gpt2_pretokenize(std::string_view text) {
  const std::string clean = sanitize_utf8(text);
  std::vector<std::string> out;
  shared_splitter().split(clean, [&](std::string_view piece) { out.emplace_back(piece); });
  return out;
}

// ---------------------------------------------------------------------------------------------
// BpeTokenizer: encoding

BpeTokenizer::BpeTokenizer() = default;
BpeTokenizer::~BpeTokenizer() = default;

namespace {
// Bounded so that adversarial input cannot grow it without limit (real text has far fewer
// distinct words: train.txt has under 100k).
constexpr std::size_t kCacheEntries = 1 << 18;
constexpr std::size_t kCacheWordBytes = 128;

// The vocabulary id of the whole pre-token (its bytes as vocabulary characters), or -1.
std::int32_t whole_word_id(std::string_view bytes,
                           const std::unordered_map<std::string, std::int32_t>& token_to_id) {
  std::string word;
  for (unsigned char b : bytes) word += byte_map().byte_utf8[b];
  const auto it = token_to_id.find(word);
  return it == token_to_id.end() ? -1 : it->second;
}

// The merges of one pre-token. Symbols in a doubly linked list; candidate merges in a min-heap
// keyed by (rank, position). A heap entry is stale when its symbols changed since it was pushed;
// it is re-validated by looking the current pair up again. Both orders cost O(n log n), so long
// pre-tokens (a run of a million spaces) stay cheap. MergeMap is BpeTokenizer's
// (left id << 32 | right id) -> {rank, id} map.
template <class MergeMap>
class WordMerger {
 public:
  using Merge = typename MergeMap::mapped_type;

  WordMerger(std::string_view bytes, const std::int32_t (&byte_id)[256], const MergeMap& merges)
      : merges_(merges), sym_(bytes.size()), prev_(bytes.size()), next_(bytes.size()) {
    const std::size_t n = bytes.size();
    for (std::size_t i = 0; i < n; ++i) {
      sym_[i] = byte_id[static_cast<unsigned char>(bytes[i])];
      prev_[i] = static_cast<std::int64_t>(i) - 1;
      next_[i] = i + 1 < n ? static_cast<std::int64_t>(i + 1) : -1;
    }
    for (std::size_t i = 0; i + 1 < n; ++i) push_pair(static_cast<std::int64_t>(i));
  }

  // tokenizers' Word::merge_all(): one merge at a time, the lowest rank first, then the leftmost.
  void merge_rank_then_position() {
    while (!heap_.empty()) {
      const Cand c = heap_.top();
      heap_.pop();
      if (const Merge* m = current(c)) merge_at(c.second, *m);
    }
  }

  // GPT2Tokenizer.bpe(): take the lowest-ranked pair present and merge all its occurrences left
  // to right (non-overlapping) before looking again. The entries of one rank pop in position
  // order; a merge cannot create another pair of the same rank (the merged symbol differs from
  // both parts), so the batch is complete when it is taken.
  void merge_all_of_lowest_rank() {
    std::vector<std::int64_t> batch;
    while (!heap_.empty()) {
      const std::uint32_t rank = heap_.top().first;
      batch.clear();
      while (!heap_.empty() && heap_.top().first == rank) {
        batch.push_back(heap_.top().second);
        heap_.pop();
      }
      for (std::int64_t p : batch)
        if (const Merge* m = current({rank, p})) merge_at(p, *m);
    }
  }

  // Appends the remaining symbols, in order.
  void append_to(std::vector<std::int32_t>& out) const {
    for (std::int64_t p = 0; p >= 0; p = next_[p]) out.push_back(sym_[p]);
  }

 private:
  using Cand = std::pair<std::uint32_t, std::int64_t>;  // (rank, position of the left symbol)

  void push_pair(std::int64_t p) {
    if (p < 0) return;
    const std::int64_t q = next_[p];
    if (q < 0) return;
    if (auto it = merges_.find(pair_key(sym_[p], sym_[q])); it != merges_.end())
      heap_.emplace(it->second.rank, p);
  }

  // The merge of candidate `c` when its pair is still there, else null (a stale entry).
  const Merge* current(const Cand& c) const {
    const std::int64_t p = c.second;
    if (sym_[p] < 0 || next_[p] < 0) return nullptr;
    auto it = merges_.find(pair_key(sym_[p], sym_[next_[p]]));
    if (it == merges_.end() || it->second.rank != c.first) return nullptr;
    return &it->second;
  }

  void merge_at(std::int64_t p, const Merge& m) {
    const std::int64_t q = next_[p];
    sym_[p] = m.id;
    sym_[q] = -1;
    next_[p] = next_[q];
    if (next_[q] >= 0) prev_[next_[q]] = p;
    push_pair(prev_[p]);
    push_pair(p);
  }

  const MergeMap& merges_;
  std::vector<std::int32_t> sym_;
  std::vector<std::int64_t> prev_, next_;
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap_;
};

}  // namespace

void BpeTokenizer::bpe_word(std::string_view bytes, std::vector<std::int32_t>& out) const {
  const std::size_t n = bytes.size();
  if (n == 0) return;
  const bool cacheable = n <= kCacheWordBytes;
  if (cacheable) {
    std::lock_guard lock(cache_mutex_);
    if (auto it = cache_.find(bytes); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<std::int32_t> result;
  if (ignore_merges_) {
    // tokenizers' BPE with ignore_merges takes a pre-token that is itself a vocabulary entry whole.
    if (const std::int32_t id = whole_word_id(bytes, token_to_id_); id >= 0) result.push_back(id);
  }
  if (result.empty()) {
    WordMerger merger(bytes, byte_id_, merges_);
    if (order_ == MergeOrder::rank_then_position)
      merger.merge_rank_then_position();
    else
      merger.merge_all_of_lowest_rank();
    merger.append_to(result);
  }
  out.insert(out.end(), result.begin(), result.end());
  if (cacheable) {
    std::lock_guard lock(cache_mutex_);
    if (cache_.size() < kCacheEntries) cache_.emplace(std::string(bytes), std::move(result));
  }
}

void BpeTokenizer::encode_text(std::string_view text, std::vector<std::int32_t>& out) const {
  if (text.empty()) return;
  std::string prefixed;
  if (add_prefix_space_ && prefix_space_per_piece_ && text.front() != ' ') {
    prefixed = " ";
    prefixed += text;
    text = prefixed;
  }
  if (use_regex_) {
    shared_splitter().split(text, [&](std::string_view piece) { bpe_word(piece, out); });
  } else {
    bpe_word(text, out);
  }
}

std::vector<std::int32_t> BpeTokenizer::encode_plain(std::string_view text) const {
  std::string clean = sanitize_utf8(text);
  if (add_prefix_space_ && !prefix_space_per_piece_) clean.insert(0, 1, ' ');  // GPT2Tokenizer: once
  std::vector<TextPiece> pieces;
  splitter_.split(clean, pieces);
  if (!second_pass_.empty()) {
    std::vector<TextPiece> refined;
    for (const auto& p : pieces) {
      if (p.token_id >= 0)
        refined.push_back(p);
      else
        second_pass_.split(p.text, refined);
    }
    pieces.swap(refined);
  }
  std::vector<std::int32_t> ids;
  ids.reserve(clean.size() / 3 + 8);
  for (const auto& p : pieces) {
    if (p.token_id >= 0)
      ids.push_back(p.token_id);
    else
      encode_text(p.text, ids);
  }
  return ids;
}

std::vector<std::int32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<std::int32_t> body = encode_plain(text);
  std::vector<std::int32_t> ids;
  ids.reserve(prefix_.size() + body.size() + suffix_.size());
  ids.insert(ids.end(), prefix_.begin(), prefix_.end());
  ids.insert(ids.end(), body.begin(), body.end());
  ids.insert(ids.end(), suffix_.begin(), suffix_.end());
  return ids;
}

std::string BpeTokenizer::decode(const std::vector<std::int32_t>& ids) const {
  std::string bytes;
  for (std::int32_t id : ids) {
    if (id < 0 || static_cast<std::size_t>(id) >= id_to_token_.size() || id_to_token_[id].empty())
      SCALPEL_INPUT_ERROR("{}: token id {} is not in the vocabulary (size {})", kind_, id,
                          id_to_token_.size());
    bytes += id_bytes_[id];
  }
  return sanitize_utf8(bytes);
}

std::int32_t BpeTokenizer::token_to_id(std::string_view token) const {
  auto it = token_to_id_.find(std::string(token));
  return it == token_to_id_.end() ? -1 : it->second;
}

const std::string& BpeTokenizer::id_to_token(std::int32_t id) const {
  static const std::string empty;
  if (id < 0 || static_cast<std::size_t>(id) >= id_to_token_.size()) return empty;
  return id_to_token_[id];
}

// ---------------------------------------------------------------------------------------------
// BpeTokenizer: loading

namespace {

std::int32_t json_id(const json& v, const fs::path& file, const std::string& what) {
  if (!v.is_number_integer()) SCALPEL_INPUT_ERROR("{}: {} must be an integer id", file.string(), what);
  const auto id = v.get<std::int64_t>();
  if (id < 0 || id > INT32_MAX) SCALPEL_INPUT_ERROR("{}: {} has id {} out of range", file.string(), what, id);
  return static_cast<std::int32_t>(id);
}

void load_vocab(const json& vocab, const fs::path& file, const std::string& field,
                std::vector<std::string>& id_to_token,
                std::unordered_map<std::string, std::int32_t>& token_to_id) {
  if (!vocab.is_object())
    SCALPEL_INPUT_ERROR("{}: {} must be an object of token -> id", file.string(), field);
  if (vocab.empty()) SCALPEL_INPUT_ERROR("{}: {} is empty", file.string(), field);
  for (const auto& [token, v] : vocab.items()) {
    const std::int32_t id = json_id(v, file, fmt::format("{} entry \"{}\"", field, token));
    if (id > detail::max_token_id(vocab.size()))
      SCALPEL_INPUT_ERROR("{}: {} entry \"{}\" has id {}, far beyond the {} tokens", file.string(), field,
                          token, id, vocab.size());
    if (token.empty()) SCALPEL_INPUT_ERROR("{}: {} holds an empty token (id {})", file.string(), field, id);
    if (static_cast<std::size_t>(id) >= id_to_token.size())
      id_to_token.resize(static_cast<std::size_t>(id) + 1);
    if (!id_to_token[id].empty())
      SCALPEL_INPUT_ERROR("{}: {} gives id {} to both \"{}\" and \"{}\"", file.string(), field, id,
                          id_to_token[id], token);
    id_to_token[id] = token;
    token_to_id.emplace(token, id);
  }
}

}  // namespace

std::int32_t BpeTokenizer::add_token_id(const std::string& token, std::int32_t id, const fs::path& file,
                                        const std::string& where) {
  // An added token keeps the id the vocabulary has for its content; a new content takes the given
  // id, or the next free one (transformers' _add_tokens) when id < 0.
  if (auto it = token_to_id_.find(token); it != token_to_id_.end()) {
    if (id >= 0 && id != it->second)
      SCALPEL_INPUT_ERROR("{}: {}: added token \"{}\" has id {} but the vocabulary gives it id {}",
                          file.string(), where, token, id, it->second);
    return it->second;
  }
  if (id < 0) id = static_cast<std::int32_t>(id_to_token_.size());
  if (id > detail::max_token_id(token_to_id_.size()))
    SCALPEL_INPUT_ERROR("{}: {}: added token \"{}\" has id {}, far beyond the {} tokens", file.string(),
                        where, token, id, token_to_id_.size());
  if (static_cast<std::size_t>(id) >= id_to_token_.size())
    id_to_token_.resize(static_cast<std::size_t>(id) + 1);
  if (!id_to_token_[id].empty())
    SCALPEL_INPUT_ERROR("{}: {}: added token \"{}\" has id {}, which belongs to \"{}\"", file.string(), where,
                        token, id, id_to_token_[id]);
  id_to_token_[id] = token;
  token_to_id_.emplace(token, id);
  return id;
}

void BpeTokenizer::set_named_ids(const std::map<std::string, std::string>& named) {
  auto id_of = [&](const char* key) -> std::int32_t {
    const auto n = named.find(key);
    if (n == named.end()) return -1;
    const auto t = token_to_id_.find(n->second);
    return t == token_to_id_.end() ? -1 : t->second;
  };
  bos_id_ = id_of("bos_token");
  eos_id_ = id_of("eos_token");
}

void BpeTokenizer::finish_setup(const fs::path& file) {
  const ByteMap& m = byte_map();
  for (int b = 0; b < 256; ++b) {
    auto it = token_to_id_.find(m.byte_utf8[b]);
    if (it == token_to_id_.end())
      SCALPEL_INPUT_ERROR(
          "{}: the vocabulary has no token for byte 0x{:02X} (\"{}\"), so it is not a byte-level BPE",
          file.string(), b, m.byte_utf8[b]);
    byte_id_[b] = it->second;
  }
  std::vector<bool> is_added(id_to_token_.size(), false);
  auto mark = [&](const AddedTokenSplitter& s) {
    for (const auto& t : s.tokens()) is_added[t.id] = true;
  };
  mark(splitter_);
  mark(second_pass_);
  id_bytes_.resize(id_to_token_.size());
  for (std::size_t id = 0; id < id_to_token_.size(); ++id)
    id_bytes_[id] = is_added[id] ? id_to_token_[id] : byte_decode_token(id_to_token_[id]);
  for (std::int32_t id : prefix_)
    SCALPEL_CHECK(static_cast<std::size_t>(id) < id_to_token_.size(), "prefix id {}", id);
  for (std::int32_t id : suffix_)
    SCALPEL_CHECK(static_cast<std::size_t>(id) < id_to_token_.size(), "suffix id {}", id);
  (void)shared_splitter();  // compile the pattern now, so a PCRE2 problem surfaces at load time
}

namespace {

// RobertaProcessing / BertProcessing: a single sequence is cls A sep.
void parse_cls_sep(const json& pp, const fs::path& file, const std::string& field,
                   std::vector<std::int32_t>& prefix, std::vector<std::int32_t>& suffix) {
  auto special = [&](const char* key) {
    const auto it = pp.find(key);
    if (it == pp.end() || !it->is_array() || it->size() != 2 || !(*it)[1].is_number_integer())
      SCALPEL_INPUT_ERROR("{}: {}.{} must be [token, id]", file.string(), field, key);
    return json_id((*it)[1], file, fmt::format("{}.{}", field, key));
  };
  prefix.push_back(special("cls"));
  suffix.insert(suffix.begin(), special("sep"));
}

// The ids of one {"SpecialToken": {"id": name}} item of TemplateProcessing's "single", looked up
// in its "special_tokens", appended to `ids`.
void append_template_special(const json& pp, const json& item, const fs::path& file, const std::string& field,
                             std::vector<std::int32_t>& ids) {
  const auto& st = item["SpecialToken"];
  if (!st.is_object() || !st.contains("id") || !st["id"].is_string())
    SCALPEL_INPUT_ERROR("{}: {}.single has a SpecialToken without an id", file.string(), field);
  const std::string name = st["id"].get<std::string>();
  const auto specials = pp.find("special_tokens");
  if (specials == pp.end() || !specials->is_object() || !specials->contains(name))
    SCALPEL_INPUT_ERROR("{}: {}.special_tokens lacks \"{}\"", file.string(), field, name);
  const auto& entry = (*specials)[name];
  if (!entry.is_object() || !entry.contains("ids") || !entry["ids"].is_array())
    SCALPEL_INPUT_ERROR("{}: {}.special_tokens[\"{}\"].ids must be a list", file.string(), field, name);
  for (const auto& v : entry["ids"])
    ids.push_back(json_id(v, file, fmt::format("{}.special_tokens[\"{}\"]", field, name)));
}

// TemplateProcessing: the special tokens of "single" before and after sequence A.
void parse_template(const json& pp, const fs::path& file, const std::string& field,
                    std::vector<std::int32_t>& prefix, std::vector<std::int32_t>& suffix) {
  const auto single = pp.find("single");
  if (single == pp.end() || !single->is_array())
    SCALPEL_INPUT_ERROR("{}: {}.single must be a list", file.string(), field);
  std::vector<std::int32_t> before, after;
  bool seen_a = false;
  for (const auto& item : *single) {
    if (item.is_object() && item.contains("Sequence")) {
      const auto& seq = item["Sequence"];
      if (!seq.is_object() || detail::json_string(seq, "id") != "A" || seen_a)
        SCALPEL_INPUT_ERROR("{}: {}.single must hold sequence A exactly once", file.string(), field);
      seen_a = true;
    } else if (item.is_object() && item.contains("SpecialToken")) {
      append_template_special(pp, item, file, field, seen_a ? after : before);
    } else {
      SCALPEL_INPUT_ERROR("{}: {}.single holds an item that is neither Sequence nor SpecialToken",
                          file.string(), field);
    }
  }
  if (!seen_a) SCALPEL_INPUT_ERROR("{}: {}.single has no sequence A", file.string(), field);
  prefix.insert(prefix.end(), before.begin(), before.end());
  suffix.insert(suffix.begin(), after.begin(), after.end());
}

// The post-processor of tokenizer.json as the ids it puts before and after a single sequence.
void parse_post_processor(const json& pp, const fs::path& file, const std::string& field,
                          std::vector<std::int32_t>& prefix, std::vector<std::int32_t>& suffix) {
  if (pp.is_null()) return;
  if (!pp.is_object() || !pp.contains("type") || !pp["type"].is_string())
    SCALPEL_INPUT_ERROR("{}: {} has no \"type\"", file.string(), field);
  const std::string type = pp["type"].get<std::string>();
  if (type == "ByteLevel") return;  // only trims offsets
  if (type == "Sequence") {
    if (!pp.contains("processors") || !pp["processors"].is_array())
      SCALPEL_INPUT_ERROR("{}: {}.processors must be a list", file.string(), field);
    std::size_t i = 0;
    for (const auto& p : pp["processors"])
      parse_post_processor(p, file, fmt::format("{}.processors[{}]", field, i++), prefix, suffix);
    return;
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    parse_cls_sep(pp, file, field, prefix, suffix);
    return;
  }
  if (type == "TemplateProcessing") {
    parse_template(pp, file, field, prefix, suffix);
    return;
  }
  SCALPEL_INPUT_ERROR(
      "{}: {} type \"{}\" is not supported (ByteLevel, TemplateProcessing, RobertaProcessing, "
      "BertProcessing or Sequence)",
      file.string(), field, type);
}

// "a b" (legacy string form) or ["a", "b"].
std::pair<std::string, std::string> parse_json_merge(const json& m, const fs::path& file, std::size_t index) {
  if (m.is_string()) {
    const std::string s = m.get<std::string>();
    const auto sp = s.find(' ');
    if (sp == std::string::npos || sp == 0 || sp + 1 == s.size() || s.find(' ', sp + 1) != std::string::npos)
      SCALPEL_INPUT_ERROR("{}: model.merges[{}] \"{}\" is not two tokens separated by one space",
                          file.string(), index, s);
    return {s.substr(0, sp), s.substr(sp + 1)};
  }
  if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string() &&
      !m[0].get<std::string>().empty() && !m[1].get<std::string>().empty())
    return {m[0].get<std::string>(), m[1].get<std::string>()};
  SCALPEL_INPUT_ERROR("{}: model.merges[{}] must be \"a b\" or [\"a\", \"b\"]", file.string(), index);
}

using TokenIds = std::unordered_map<std::string, std::int32_t>;

// tokenizer.json's "model" after the checks that it is a byte-level BPE this loader reproduces.
const json& checked_json_model(const json& root, const fs::path& file) {
  const std::string f = file.string();
  const auto model_it = root.find("model");
  if (model_it == root.end() || !model_it->is_object()) SCALPEL_INPUT_ERROR("{}: no \"model\" object", f);
  const json& model = *model_it;
  const std::string type =
      model.contains("type") && model["type"].is_string() ? model["type"].get<std::string>() : "BPE";
  if (type != "BPE")
    SCALPEL_INPUT_ERROR("{}: model.type \"{}\" is not supported (only byte-level \"BPE\")", f, type);
  if (model.contains("dropout") && !model["dropout"].is_null())
    SCALPEL_INPUT_ERROR("{}: model.dropout is set; BPE dropout is not supported", f);
  if (detail::json_bool(model, "byte_fallback", file).value_or(false))
    SCALPEL_INPUT_ERROR("{}: model.byte_fallback is true; only byte-level BPE is supported", f);
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && !model[key].is_null() &&
        !(model[key].is_string() && model[key].get<std::string>().empty()))
      SCALPEL_INPUT_ERROR("{}: model.{} is set; it is not supported", f, key);
  }
  return model;
}

// model.merges into `merges` (BpeTokenizer's pair -> {rank, id} map), ranked by position.
template <class MergeMap>
void load_json_merges(const json& model, const fs::path& file, const TokenIds& token_to_id,
                      MergeMap& merges) {
  const std::string f = file.string();
  if (!model.contains("merges") || !model["merges"].is_array())
    SCALPEL_INPUT_ERROR("{}: model.merges must be a list", f);
  const json& list = model["merges"];
  merges.reserve(list.size());
  for (std::size_t i = 0; i < list.size(); ++i) {
    const auto [a, b] = parse_json_merge(list[i], file, i);
    auto ia = token_to_id.find(a), ib = token_to_id.find(b), ir = token_to_id.find(a + b);
    if (ia == token_to_id.end() || ib == token_to_id.end())
      SCALPEL_INPUT_ERROR("{}: model.merges[{}] \"{} {}\" uses a token missing from model.vocab", f, i, a, b);
    if (ir == token_to_id.end())
      SCALPEL_INPUT_ERROR(
          "{}: model.merges[{}] \"{} {}\": the merged token \"{}\" is missing from model.vocab", f, i, a, b,
          a + b);
    // A repeated pair keeps its last rank, as both transformers and tokenizers build the map.
    merges[pair_key(ia->second, ib->second)] = {static_cast<std::uint32_t>(i), ir->second};
  }
}

struct ByteLevelOptions {
  bool add_prefix_space = true;
  bool use_regex = true;
};

// tokenizer.json's normalizer (null only), pre_tokenizer (ByteLevel, whose options are returned)
// and decoder (ByteLevel or null).
ByteLevelOptions read_byte_level_options(const json& root, const fs::path& file) {
  const std::string f = file.string();
  if (root.contains("normalizer") && !root["normalizer"].is_null())
    SCALPEL_INPUT_ERROR("{}: normalizer is set ({}); only null is supported", f,
                        detail::json_string(root["normalizer"], "type", "?"));
  const auto pre = root.find("pre_tokenizer");
  if (pre == root.end() || !pre->is_object() || detail::json_string(*pre, "type") != "ByteLevel")
    SCALPEL_INPUT_ERROR(
        "{}: pre_tokenizer must be ByteLevel (got {})", f,
        pre == root.end() || pre->is_null() ? std::string("null") : detail::json_string(*pre, "type", "?"));
  ByteLevelOptions options;
  options.add_prefix_space = detail::json_bool(*pre, "add_prefix_space", file).value_or(true);
  options.use_regex = detail::json_bool(*pre, "use_regex", file).value_or(true);
  if (const auto dec = root.find("decoder");
      dec != root.end() && !dec->is_null() && detail::json_string(*dec, "type") != "ByteLevel")
    SCALPEL_INPUT_ERROR("{}: decoder must be ByteLevel or null (got {})", f,
                        detail::json_string(*dec, "type", "?"));
  return options;
}

// BpeTokenizer::add_token_id(content, id, file, where): the id an added token ends up with.
using AddTokenId =
    std::function<std::int32_t(const std::string&, std::int32_t, const fs::path&, const std::string&)>;

// Appends `a` with the id that add_id gives it for `id` (-1: the next free one), unless its
// content is empty or already among `added`.
void add_if_new(std::vector<AddedToken>& added, AddedToken a, std::int32_t id, const fs::path& from,
                const std::string& where, const AddTokenId& add_id) {
  const bool have =
      std::any_of(added.begin(), added.end(), [&](const AddedToken& t) { return t.content == a.content; });
  if (have || a.content.empty()) return;
  a.id = add_id(a.content, id, from, where);
  added.push_back(std::move(a));
}

// One entry of tokenizer.json's "added_tokens", with the id the file gives it.
AddedToken parse_json_added_token(const json& e, const fs::path& file, const std::string& where) {
  const std::string f = file.string();
  if (!e.is_object() || !e.contains("content") || !e["content"].is_string() || !e.contains("id"))
    SCALPEL_INPUT_ERROR("{}: {} needs \"id\" and \"content\"", f, where);
  AddedToken a;
  a.content = e["content"].get<std::string>();
  a.id = json_id(e["id"], file, where);
  a.lstrip = detail::json_bool(e, "lstrip", file).value_or(false);
  a.rstrip = detail::json_bool(e, "rstrip", file).value_or(false);
  a.normalized = detail::json_bool(e, "normalized", file).value_or(true);
  a.special = detail::json_bool(e, "special", file).value_or(false);
  if (detail::json_bool(e, "single_word", file).value_or(false))
    SCALPEL_INPUT_ERROR("{}: {} (\"{}\") sets single_word, which is not supported", f, where, a.content);
  if (a.content.empty()) SCALPEL_INPUT_ERROR("{}: {} has empty content", f, where);
  return a;
}

// tokenizer.json's "added_tokens", all of them in file order, with their ids in the vocabulary.
std::vector<AddedToken> read_json_added_tokens(const json& root, const fs::path& file,
                                               const AddTokenId& add_id) {
  std::vector<AddedToken> added;
  const auto at = root.find("added_tokens");
  if (at == root.end() || at->is_null()) return added;
  if (!at->is_array()) SCALPEL_INPUT_ERROR("{}: added_tokens must be a list", file.string());
  for (std::size_t i = 0; i < at->size(); ++i) {
    const std::string where = fmt::format("added_tokens[{}]", i);
    AddedToken a = parse_json_added_token((*at)[i], file, where);
    a.id = add_id(a.content, a.id, file, where);
    added.push_back(std::move(a));
  }
  return added;
}

// Input Error unless each id the post-processor adds is a token of the vocabulary.
void check_post_processor_ids(const std::vector<std::int32_t>& prefix,
                              const std::vector<std::int32_t>& suffix,
                              const std::vector<std::string>& id_to_token, const fs::path& file) {
  for (const auto* ids : {&prefix, &suffix})
    for (std::int32_t id : *ids)
      if (static_cast<std::size_t>(id) >= id_to_token.size() || id_to_token[id].empty())
        SCALPEL_INPUT_ERROR("{}: post_processor adds id {}, which is not in the vocabulary", file.string(),
                            id);
}

}  // namespace

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_tokenizer_json(const fs::path& file) {
  std::unique_ptr<BpeTokenizer> t(new BpeTokenizer());
  t->kind_ = "bpe(tokenizer.json)";
  t->order_ = MergeOrder::rank_then_position;
  t->prefix_space_per_piece_ = true;
  const json root = detail::read_json(file);
  if (!root.is_object()) SCALPEL_INPUT_ERROR("{}: expected a JSON object", file.string());

  // --- model
  const json& model = checked_json_model(root, file);
  t->ignore_merges_ = detail::json_bool(model, "ignore_merges", file).value_or(false);
  if (!model.contains("vocab")) SCALPEL_INPUT_ERROR("{}: model.vocab is missing", file.string());
  load_vocab(model["vocab"], file, "model.vocab", t->id_to_token_, t->token_to_id_);
  load_json_merges(model, file, t->token_to_id_, t->merges_);

  // --- normalizer / pre-tokenizer / decoder / post-processor
  const ByteLevelOptions byte_level = read_byte_level_options(root, file);
  t->add_prefix_space_ = byte_level.add_prefix_space;
  t->use_regex_ = byte_level.use_regex;
  if (const auto pp = root.find("post_processor"); pp != root.end())
    parse_post_processor(*pp, file, "post_processor", t->prefix_, t->suffix_);

  // --- added tokens: the file's own, then special tokens of the folder's configs not among them
  const AddTokenId add_id = [&t](const std::string& token, std::int32_t id, const fs::path& from,
                                 const std::string& where) {
    return t->add_token_id(token, id, from, where);
  };
  std::vector<AddedToken> added = read_json_added_tokens(root, file, add_id);
  const detail::HfSpecialTokens cfg = detail::read_special_tokens(file.parent_path(), {});
  for (const AddedToken& a : cfg.added_tokens_decoder)
    add_if_new(added, a, a.id, cfg.config_file, "added_tokens_decoder", add_id);
  for (AddedToken a : cfg.special) {
    a.normalized = false;  // AddedToken(content, special=True) in tokenizers
    add_if_new(added, std::move(a), -1, file.parent_path() / "special_tokens_map.json", "special token",
               add_id);
  }
  // tokenizers matches non-normalized added tokens on the raw text first, then the normalized
  // ones on what is left (the same text here, since there is no normalizer).
  std::vector<AddedToken> raw, normalized;
  for (auto& a : added) (a.normalized ? normalized : raw).push_back(std::move(a));
  t->splitter_ = AddedTokenSplitter(std::move(raw), StripWhitespace::unicode);
  t->second_pass_ = AddedTokenSplitter(std::move(normalized), StripWhitespace::unicode);
  check_post_processor_ids(t->prefix_, t->suffix_, t->id_to_token_, file);
  t->set_named_ids(cfg.named);
  t->finish_setup(file);
  return t;
}

namespace {

// `text` cut at every '\n', as Python's str.split("\n") does (the part after the last newline
// included, empty or not).
std::vector<std::string_view> split_lines(std::string_view text) {
  std::vector<std::string_view> lines;
  for (std::size_t pos = 0;;) {
    const auto nl = text.find('\n', pos);
    if (nl == std::string_view::npos) {
      lines.push_back(text.substr(pos));
      break;
    }
    lines.push_back(text.substr(pos, nl - pos));
    pos = nl + 1;
  }
  return lines;
}

// Python's str.split(): the fields between runs of Python whitespace.
std::vector<std::string_view> python_split(std::string_view line) {
  std::vector<std::string_view> parts;
  std::string_view rest = python_strip(line);
  while (!rest.empty()) {
    std::size_t end = 0;
    while (end < rest.size()) {
      std::size_t j = end;
      if (is_python_space(next_code_point(rest, j))) break;
      end = j;
    }
    parts.push_back(rest.substr(0, end));
    rest = python_lstrip(rest.substr(end));
  }
  return parts;
}

// merges.txt into `merges` (BpeTokenizer's pair -> {rank, id} map), ranked by line.
// GPT2Tokenizer reads merges as read().split("\n")[1:-1]: the first line is the "#version"
// header whatever it holds, and whatever follows the last newline is dropped. Reproduced as is
// (with a warning) so that the ranks match transformers exactly.
template <class MergeMap>
void load_merges_txt(const fs::path& merges_file, const TokenIds& token_to_id, MergeMap& merges) {
  const std::string text = detail::read_file(merges_file);
  const std::string mf = merges_file.string();
  if (!is_valid_utf8(text))
    SCALPEL_INPUT_ERROR("{}: not valid UTF-8 (at byte {})", mf, first_invalid_utf8(text));
  const std::vector<std::string_view> lines = split_lines(text);
  if (!lines.empty() && !lines.front().starts_with("#version"))
    log::warn("{}: first line is not a #version header; it is skipped, as transformers does", mf);
  if (lines.size() >= 2 && !python_strip(lines.back()).empty())
    log::warn("{}: the last line has no newline; it is ignored, as transformers does", mf);
  std::uint32_t rank = 0;
  for (std::size_t ln = 1; ln + 1 < lines.size(); ++ln) {
    const std::vector<std::string_view> parts = python_split(lines[ln]);
    if (parts.empty()) {  // a blank line only shifts later ranks, which keeps their order
      ++rank;
      continue;
    }
    if (parts.size() != 2)
      SCALPEL_INPUT_ERROR("{}: line {} holds {} fields, expected two tokens", mf, ln + 1, parts.size());
    const std::string a(parts[0]), b(parts[1]);
    auto ia = token_to_id.find(a), ib = token_to_id.find(b), ir = token_to_id.find(a + b);
    if (ia == token_to_id.end() || ib == token_to_id.end())
      SCALPEL_INPUT_ERROR("{}: line {} \"{} {}\" uses a token missing from vocab.json", mf, ln + 1, a, b);
    if (ir == token_to_id.end())
      SCALPEL_INPUT_ERROR("{}: line {} \"{} {}\": the merged token \"{}\" is missing from vocab.json", mf,
                          ln + 1, a, b, a + b);
    merges[pair_key(ia->second, ib->second)] = {rank++, ir->second};
  }
}

// The folder's special tokens, GPT2Tokenizer's defaults unless the configs say otherwise;
// Input Error when tokenizer_config.json names another tokenizer class.
detail::HfSpecialTokens read_gpt2_special_tokens(const fs::path& folder) {
  const std::string gpt2_eot = "<|endoftext|>";
  detail::HfSpecialTokens cfg = detail::read_special_tokens(
      folder, {{"bos_token", gpt2_eot}, {"eos_token", gpt2_eot}, {"unk_token", gpt2_eot}});
  if (cfg.tokenizer_class && *cfg.tokenizer_class != "GPT2Tokenizer" &&
      *cfg.tokenizer_class != "GPT2TokenizerFast")
    SCALPEL_INPUT_ERROR(
        "{}: tokenizer_class \"{}\" is not supported with vocab.json + merges.txt (GPT2Tokenizer only)",
        cfg.config_file.string(), *cfg.tokenizer_class);
  return cfg;
}

// The entries of added_tokens.json (token -> id), when the file exists, appended in id order
// (as transformers adds them) unless already among `added`.
void add_added_tokens_file(const fs::path& added_file, std::vector<AddedToken>& added,
                           const AddTokenId& add_id) {
  std::error_code ec;
  if (!fs::exists(added_file, ec)) return;
  const json extra = detail::read_json(added_file);
  if (!extra.is_object()) SCALPEL_INPUT_ERROR("{}: expected an object of token -> id", added_file.string());
  std::vector<std::pair<std::int32_t, std::string>> order;
  for (const auto& [content, v] : extra.items())
    order.emplace_back(json_id(v, added_file, "\"" + content + "\""), content);
  std::sort(order.begin(), order.end());
  for (const auto& [id, content] : order) {
    AddedToken a;
    a.content = content;
    a.special = false;
    add_if_new(added, std::move(a), id, added_file, "entry", add_id);
  }
}

// The id of the configs' bos_token, which add_bos_token puts before every text.
std::int32_t bos_prefix_id(const detail::HfSpecialTokens& cfg, const TokenIds& token_to_id) {
  auto bos = cfg.named.find("bos_token");
  if (bos == cfg.named.end())
    SCALPEL_INPUT_ERROR("{}: add_bos_token is true but no bos_token is set", cfg.config_file.string());
  auto id = token_to_id.find(bos->second);
  if (id == token_to_id.end())
    SCALPEL_INPUT_ERROR("{}: add_bos_token is true but bos_token \"{}\" is not a token",
                        cfg.config_file.string(), bos->second);
  return id->second;
}

}  // namespace

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_vocab_merges(const fs::path& folder) {
  std::unique_ptr<BpeTokenizer> t(new BpeTokenizer());
  t->kind_ = "bpe(vocab.json+merges.txt)";
  t->order_ = MergeOrder::all_of_lowest_rank;
  t->prefix_space_per_piece_ = false;
  const fs::path vocab_file = folder / "vocab.json";
  load_vocab(detail::read_json(vocab_file), vocab_file, "vocab", t->id_to_token_, t->token_to_id_);
  load_merges_txt(folder / "merges.txt", t->token_to_id_, t->merges_);

  const detail::HfSpecialTokens cfg = read_gpt2_special_tokens(folder);
  t->add_prefix_space_ = detail::json_bool(cfg.config, "add_prefix_space", cfg.config_file).value_or(false);
  const bool add_bos = detail::json_bool(cfg.config, "add_bos_token", cfg.config_file).value_or(false);

  const AddTokenId add_id = [&t](const std::string& token, std::int32_t id, const fs::path& from,
                                 const std::string& where) {
    return t->add_token_id(token, id, from, where);
  };
  std::vector<AddedToken> added;
  for (const AddedToken& a : cfg.added_tokens_decoder)
    add_if_new(added, a, a.id, cfg.config_file, "added_tokens_decoder", add_id);
  add_added_tokens_file(folder / "added_tokens.json", added, add_id);
  for (const AddedToken& a : cfg.special)
    add_if_new(added, a, -1, folder / "special_tokens_map.json", "special token", add_id);
  if (add_bos) t->prefix_.push_back(bos_prefix_id(cfg, t->token_to_id_));
  t->splitter_ = AddedTokenSplitter(std::move(added), StripWhitespace::python);
  t->set_named_ids(cfg.named);
  t->finish_setup(vocab_file);
  return t;
}

}  // namespace scalpel::text
