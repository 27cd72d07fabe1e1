// Internal: reading the small JSON/text files of a Hugging Face tokenizer folder, with input Errors
// that name the file, and the special-token settings of tokenizer_config.json and
// special_tokens_map.json resolved the way transformers' from_pretrained merges them.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "scalpel/text/special_tokens.hpp"

namespace scalpel::text::detail {

namespace fs = std::filesystem;

// Whole file as bytes; input Error naming it when missing or unreadable.
std::string read_file(const fs::path& path);
// The same for an evaluation text or task file, which a run reads more than once (its check
// before any work, then its evaluation): a file that is not a regular file (a pipe, a FIFO,
// /dev/stdin, <(...)) is read once per process and its bytes kept for the later reads.
std::string read_input_file(const fs::path& path);

// Parses JSON text read from `path`; input Error with the parser's position on failure.
nlohmann::json parse_json(const std::string& text, const fs::path& path);
nlohmann::json read_json(const fs::path& path);

// obj[key] when obj is an object and that field is a string, else `otherwise` (never throws).
std::string json_string(const nlohmann::json& obj, const char* key, const std::string& otherwise = "");

// Largest token id accepted for a table of `count` tokens: ids may leave gaps, but a stray huge
// id must not make the id -> token table allocate gigabytes.
std::int64_t max_token_id(std::size_t count);

// Reads a boolean field, input Error naming file and key when it has another type.
std::optional<bool> json_bool(const nlohmann::json& obj, const char* key, const fs::path& file);

// Special-token settings of a folder (either file may be absent).
struct HfSpecialTokens {
  fs::path config_file;  // tokenizer_config.json (may not exist)
  nlohmann::json config = nlohmann::json::object();
  // bos_token, eos_token, unk_token, sep_token, pad_token, cls_token, mask_token, then the
  // additional_special_tokens, in that order; special_tokens_map.json overrides the config.
  // `id` is -1: the tokenizer resolves it against its vocabulary.
  std::vector<AddedToken> special;
  std::map<std::string, std::string> named;  // "bos_token" -> content, for the tokens set
  // tokenizer_config.json "added_tokens_decoder" (transformers >= 4.34), with ids and flags.
  std::vector<AddedToken> added_tokens_decoder;
  std::optional<std::string> tokenizer_class;
};

// `defaults` gives the content for keys that neither file sets (the tokenizer class defaults,
// e.g. GPT-2's "<|endoftext|>"); a key whose value is null stays unset.
HfSpecialTokens read_special_tokens(const fs::path& folder,
                                    const std::map<std::string, std::string>& defaults);

}  // namespace scalpel::text::detail
