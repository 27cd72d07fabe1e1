// Reading Hugging Face tokenizer side files (tokenizer_config.json, special_tokens_map.json) with
// input Errors that name the file and field; see hf_files.hpp for the merge rules reproduced.
#include "hf_files.hpp"

#include <fstream>
#include <map>
#include <mutex>
#include <sstream>

#include "scalpel/core/error.hpp"
#include "scalpel/text/unicode.hpp"

namespace scalpel::text::detail {

std::string read_file(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) SCALPEL_INPUT_ERROR("{}: file not found", path.string());
  if (fs::is_directory(path, ec)) SCALPEL_INPUT_ERROR("{}: is a directory, expected a file", path.string());
  std::ifstream in(path, std::ios::binary);
  if (!in) SCALPEL_INPUT_ERROR("{}: cannot open for reading", path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) SCALPEL_INPUT_ERROR("{}: read error", path.string());
  return std::move(ss).str();
}

std::string read_input_file(const fs::path& path) {
  std::error_code ec;
  const auto st = fs::status(path, ec);
  if (ec || fs::is_regular_file(st) || fs::is_directory(st)) return read_file(path);  // errors named there
  // A pipe, a FIFO, /dev/stdin: what the first read got, for every later one.
  static std::mutex mu;
  static std::map<std::string, std::string> once;
  const std::lock_guard<std::mutex> lock(mu);
  const auto key = path.string();
  if (auto it = once.find(key); it != once.end()) return it->second;
  return once.emplace(key, read_file(path)).first->second;
}

nlohmann::json parse_json(const std::string& text, const fs::path& path) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    SCALPEL_INPUT_ERROR("{}: malformed JSON: {}", path.string(), e.what());
  }
}

nlohmann::json read_json(const fs::path& path) { return parse_json(read_file(path), path); }

std::string json_string(const nlohmann::json& obj, const char* key, const std::string& otherwise) {
  if (!obj.is_object()) return otherwise;
  auto it = obj.find(key);
  return it != obj.end() && it->is_string() ? it->get<std::string>() : otherwise;
}

std::int64_t max_token_id(std::size_t count) { return 2 * static_cast<std::int64_t>(count) + 65536; }

std::optional<bool> json_bool(const nlohmann::json& obj, const char* key, const fs::path& file) {
  if (!obj.is_object()) return std::nullopt;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  if (!it->is_boolean()) SCALPEL_INPUT_ERROR("{}: field \"{}\" must be true or false", file.string(), key);
  return it->get<bool>();
}

namespace {

// A special token given as a string or as a serialized AddedToken object.
AddedToken parse_token_value(const nlohmann::json& v, const fs::path& file, const std::string& key) {
  AddedToken t;
  if (v.is_string()) {
    t.content = v.get<std::string>();
    // transformers wraps plain strings as AddedToken(lstrip=False, rstrip=False); normalized does
    // not matter here because these tokenizers have no normalizer.
  } else if (v.is_object()) {
    auto c = v.find("content");
    if (c == v.end() || !c->is_string())
      SCALPEL_INPUT_ERROR("{}: \"{}\" has no string \"content\"", file.string(), key);
    t.content = c->get<std::string>();
    t.lstrip = json_bool(v, "lstrip", file).value_or(false);
    t.rstrip = json_bool(v, "rstrip", file).value_or(false);
    t.normalized = json_bool(v, "normalized", file).value_or(true);
    t.special = json_bool(v, "special", file).value_or(true);
    if (json_bool(v, "single_word", file).value_or(false))
      SCALPEL_INPUT_ERROR("{}: \"{}\" sets single_word, which scalpel does not support", file.string(), key);
  } else {
    SCALPEL_INPUT_ERROR("{}: \"{}\" must be a string or a token object", file.string(), key);
  }
  if (!is_valid_utf8(t.content)) SCALPEL_INPUT_ERROR("{}: \"{}\" is not valid UTF-8", file.string(), key);
  return t;
}

constexpr const char* kSpecialKeys[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                        "pad_token", "cls_token", "mask_token"};

// A JSON object file of the folder, or an empty object when it is absent.
nlohmann::json read_object_file(const fs::path& file) {
  std::error_code ec;
  if (!fs::exists(file, ec)) return nlohmann::json::object();
  nlohmann::json j = read_json(file);
  if (!j.is_object()) SCALPEL_INPUT_ERROR("{}: expected a JSON object", file.string());
  return j;
}

// The two files a special token can come from; from_pretrained lets special_tokens_map.json
// override tokenizer_config.json key by key.
struct SpecialSources {
  const nlohmann::json& map;
  const fs::path& map_file;
  const nlohmann::json& config;
  const fs::path& config_file;

  const nlohmann::json* lookup(const std::string& key, fs::path& from) const {
    if (auto it = map.find(key); it != map.end()) {
      from = map_file;
      return &*it;
    }
    if (auto it = config.find(key); it != config.end()) {
      from = config_file;
      return &*it;
    }
    return nullptr;
  }
};

// bos_token ... mask_token (a missing one from `defaults`, a null one left out), then the
// additional special tokens.
void read_named_specials(const SpecialSources& src, const std::map<std::string, std::string>& defaults,
                         HfSpecialTokens& out) {
  for (const char* key : kSpecialKeys) {
    fs::path from;
    const nlohmann::json* v = src.lookup(key, from);
    AddedToken t;
    if (v == nullptr) {
      auto d = defaults.find(key);
      if (d == defaults.end()) continue;
      t.content = d->second;
    } else if (v->is_null()) {
      continue;
    } else {
      t = parse_token_value(*v, from, key);
    }
    out.named[key] = t.content;
    out.special.push_back(std::move(t));
  }
  fs::path from;
  if (const nlohmann::json* v = src.lookup("additional_special_tokens", from); v && !v->is_null()) {
    if (!v->is_array())
      SCALPEL_INPUT_ERROR("{}: \"additional_special_tokens\" must be a list", from.string());
    for (const auto& e : *v) out.special.push_back(parse_token_value(e, from, "additional_special_tokens"));
  }
}

// tokenizer_config.json's added_tokens_decoder: {"id": token}.
void read_added_tokens_decoder(HfSpecialTokens& out) {
  auto it = out.config.find("added_tokens_decoder");
  if (it == out.config.end() || it->is_null()) return;
  if (!it->is_object())
    SCALPEL_INPUT_ERROR("{}: \"added_tokens_decoder\" must be an object", out.config_file.string());
  for (const auto& [key, value] : it->items()) {
    AddedToken t = parse_token_value(value, out.config_file, "added_tokens_decoder." + key);
    try {
      std::size_t used = 0;
      const long id = std::stol(key, &used);
      if (used != key.size() || id < 0 || id > INT32_MAX) throw std::out_of_range(key);
      t.id = static_cast<std::int32_t>(id);
    } catch (const std::exception&) {
      SCALPEL_INPUT_ERROR("{}: \"added_tokens_decoder\" key \"{}\" is not a token id", out.config_file.string(),
                          key);
    }
    out.added_tokens_decoder.push_back(std::move(t));
  }
}

}  // namespace

HfSpecialTokens read_special_tokens(const fs::path& folder,
                                    const std::map<std::string, std::string>& defaults) {
  HfSpecialTokens out;
  out.config_file = folder / "tokenizer_config.json";
  out.config = read_object_file(out.config_file);
  const fs::path map_file = folder / "special_tokens_map.json";
  const nlohmann::json map = read_object_file(map_file);
  if (auto it = out.config.find("tokenizer_class"); it != out.config.end() && it->is_string())
    out.tokenizer_class = it->get<std::string>();
  read_named_specials({map, map_file, out.config, out.config_file}, defaults, out);
  read_added_tokens_decoder(out);
  return out;
}

}  // namespace scalpel::text::detail
