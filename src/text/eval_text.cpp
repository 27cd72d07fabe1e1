// Evaluation texts built exactly as SparseGPT's datautils (and Wanda's lib/data.py) build them
// from the Hugging Face datasets, so perplexities are comparable with the papers' numbers.
#include "scalpel/text/eval_text.hpp"

#include <nlohmann/json.hpp>

#include "hf_files.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/text/unicode.hpp"

namespace scalpel::text {

namespace fs = std::filesystem;

namespace {

constexpr std::size_t kC4Documents = 1100;  // valdata[:1100] in get_c4 / get_c4_new

// The datasets read the files as Python str (UTF-8, strict): invalid bytes are an input error.
std::string read_utf8(const fs::path& path) {
  std::string text = detail::read_input_file(path);
  if (text.size() >= 2 && static_cast<unsigned char>(text[0]) == 0x1F &&
      static_cast<unsigned char>(text[1]) == 0x8B)
    SCALPEL_INPUT_ERROR("{}: file is gzip-compressed; decompress it first (gunzip)", path.string());
  if (const auto bad = first_invalid_utf8(text); bad != std::string_view::npos)
    SCALPEL_INPUT_ERROR("{}: not valid UTF-8 (byte {})", path.string(), bad);
  return text;
}

// " ".join(line.strip() for line in open(path)): Python's text mode turns \r\n and \r into \n
// (universal newlines) and iterates over \n-terminated lines; a final newline does not start an
// extra line. strip() removes str.isspace() characters.
std::string join_stripped_lines(const std::string& raw) {
  std::string text;
  text.reserve(raw.size());
  for (std::size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] == '\r') {
      text.push_back('\n');
      if (i + 1 < raw.size() && raw[i + 1] == '\n') ++i;
    } else {
      text.push_back(raw[i]);
    }
  }
  std::string out;
  out.reserve(text.size());
  std::size_t pos = 0;
  bool first = true;
  while (pos < text.size()) {
    std::size_t nl = text.find('\n', pos);
    const std::size_t end = nl == std::string::npos ? text.size() : nl + 1;
    if (!first) out.push_back(' ');
    first = false;
    out.append(python_strip(std::string_view(text).substr(pos, end - pos)));
    pos = end;
  }
  return out;
}

// ' '.join(valdata[:1100]['text']) over a JSON-lines shard.
std::string join_c4_documents(const std::string& raw, const fs::path& path) {
  std::string out;
  std::size_t docs = 0, line_no = 0, pos = 0;
  while (pos < raw.size() && docs < kC4Documents) {
    std::size_t nl = raw.find('\n', pos);
    if (nl == std::string::npos) nl = raw.size();
    const std::string_view line = std::string_view(raw).substr(pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (python_strip(line).empty()) continue;
    nlohmann::json doc;
    try {
      doc = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      SCALPEL_INPUT_ERROR("{}: line {}: malformed JSON: {}", path.string(), line_no, e.what());
    }
    if (!doc.is_object() || !doc.contains("text") || !doc["text"].is_string())
      SCALPEL_INPUT_ERROR("{}: line {}: expected an object with a string \"text\" field", path.string(),
                          line_no);
    if (docs > 0) out.push_back(' ');
    out += doc["text"].get<std::string>();
    ++docs;
  }
  return out;
}

}  // namespace

std::string read_eval_text(const std::string& preset, const fs::path& path) {
  std::string text;
  if (preset == "wikitext2" || preset == "text") {
    text = read_utf8(path);
  } else if (preset == "ptb") {
    text = join_stripped_lines(read_utf8(path));
  } else if (preset == "c4") {
    text = join_c4_documents(read_utf8(path), path);
  } else {
    SCALPEL_INPUT_ERROR("unknown evaluation preset \"{}\" for {} (wikitext2, ptb, c4 or text)", preset,
                        path.string());
  }
  return text;
}

std::string load_eval_text(const std::string& preset, const fs::path& path) {
  auto text = read_eval_text(preset, path);
  if (text.empty()) SCALPEL_INPUT_ERROR("{}: the evaluation text (preset {}) is empty", path.string(), preset);
  return text;
}

std::int64_t preset_token_limit(const std::string& preset, std::int64_t seqlen) {
  if (preset == "c4") {
    if (seqlen <= 0) SCALPEL_INPUT_ERROR("c4 preset: seqlen must be positive (got {})", seqlen);
    return 256 * seqlen;  // valenc[:, :(256 * seqlen)]
  }
  if (preset == "wikitext2" || preset == "ptb" || preset == "text") return -1;
  SCALPEL_INPUT_ERROR("unknown evaluation preset \"{}\" (wikitext2, ptb, c4 or text)", preset);
}

}  // namespace scalpel::text
