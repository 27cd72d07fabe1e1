// Evaluation texts and windows as the SparseGPT / Wanda papers build them.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace scalpel::text {

// Reads the evaluation text of a preset from `path`:
//  - "wikitext2": the file as is (the test split already joined with "\n\n");
//  - "ptb": the lines of ptb.test.txt, each stripped, joined with one space;
//  - "c4": a validation JSON-lines shard; the "text" of the first 1100 documents joined by a space;
//  - "text": any file, as is.
// Input Error naming the file for a missing or unreadable file, bad JSON (with its line) or an
// empty result.
std::string load_eval_text(const std::string& preset, const std::filesystem::path& path);
// The same text, empty allowed (`scalpel tokenize`: an empty file has ids, the tokenizer's BOS).
std::string read_eval_text(const std::string& preset, const std::filesystem::path& path);

// Token limit a preset imposes after tokenizing (c4: 256 * seqlen), or -1 for none.
std::int64_t preset_token_limit(const std::string& preset, std::int64_t seqlen);

}  // namespace scalpel::text
