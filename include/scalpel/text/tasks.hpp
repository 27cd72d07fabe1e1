// Zero-shot tasks as EleutherAI's lm-evaluation-harness builds and scores them: the items of a
// JSON-lines file (a Hugging Face dataset export, or scalpel's generic `mc` format) become
// (context, continuation) log-likelihood requests through the preset's prompt template; a request
// becomes token ids as the harness's HFLM encodes it; per-request log-likelihoods become acc,
// acc_norm (or LAMBADA's perplexity) with the harness's standard errors.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "scalpel/text/tokenizer.hpp"

namespace scalpel::text {

enum class TaskOutput {
  multiple_choice,  // one request per choice; acc = argmax of the summed log-likelihoods
  loglikelihood,    // one request per item (LAMBADA): perplexity and greedy accuracy
};

struct TaskPreset {
  std::string name;             // piqa, hellaswag, arc_easy, ..., lambada, mc
  TaskOutput output = TaskOutput::multiple_choice;
  std::vector<std::string> reported;  // the metrics the harness's task reports
};

// Every preset, in the order the README lists them.
const std::vector<TaskPreset>& task_presets();
// The preset called `name`; input Error listing the presets when there is none.
const TaskPreset& task_preset(const std::string& name);

// One item of a task: its requests, and what scores them.
struct TaskDoc {
  std::int64_t line = 0;  // 1-based line in the file
  std::vector<std::pair<std::string, std::string>> requests;  // (context, continuation)
  std::vector<std::string> choices;  // the harness's doc_to_choice: lengths for acc_norm
  int gold = -1;                     // multiple choice: the right request
};

// Reads `path` (one JSON object a line; blank lines skipped) through `preset`; at most
// `max_items` items (0 = all). Input Error naming the file, line and field for invalid UTF-8,
// malformed JSON, a missing or mistyped field, an empty choice list or choice, a label out of
// range, and for a file without items.
std::vector<TaskDoc> load_task_docs(const TaskPreset& preset, const std::filesystem::path& path,
                                    std::int64_t max_items = 0);

// How the harness's HFLM turns a request into ids.
struct HarnessEncoding {
  bool add_bos = false;            // add the tokenizer's special tokens (HFLM add_bos_token=True)
  std::int64_t max_length = 2048;  // the model's context: longer inputs lose tokens on the left
};

// A request as token ids: `ids` is (context + continuation)[-(max_length + 1):]; the model reads
// ids[:-1] and the last `continuation` ids are the scored targets.
struct EncodedRequest {
  std::vector<std::int32_t> ids;
  std::int64_t continuation = 0;
};

// The harness's encoding: trailing whitespace of the context moves to the continuation; the
// context and context + continuation are encoded and the continuation's ids are the tail; an empty
// context becomes the tokenizer's BOS id (EOS without one), unless the continuation already starts
// with it. Input Error where the harness stops on an assertion (a context of whitespace only, a
// continuation that adds no token, both empty) and when the continuation alone is longer than
// max_length.
EncodedRequest encode_request(const Tokenizer& tok, const std::string& context, const std::string& continuation,
                              const HarnessEncoding& opt);

// Aggregated scores of a task, as the harness prints them (NaN where a metric does not apply or,
// for standard errors, when there is a single item).
struct TaskScores {
  std::int64_t items = 0;
  double acc = 0, acc_stderr = 0;
  double acc_norm = 0, acc_norm_stderr = 0;  // multiple choice: argmax of loglik / characters
  double ppl = 0, ppl_stderr = 0;            // loglikelihood tasks: exp(-mean loglik)
};

// The harness's process_results and aggregation: `loglik` and `greedy` hold one entry per request,
// the documents' requests in order. acc_norm divides by the choice's length in characters (Python
// len: code points), ties go to the first choice (numpy argmax), standard errors are the sample
// standard deviation over sqrt(n); the perplexity's is the harness's bootstrap (100,000 resamples
// drawn with CPython's generator seeded as the harness seeds it, so the same figure).
TaskScores score_task(const TaskPreset& preset, const std::vector<TaskDoc>& docs, const std::vector<double>& loglik,
                      const std::vector<std::uint8_t>& greedy);

}  // namespace scalpel::text
