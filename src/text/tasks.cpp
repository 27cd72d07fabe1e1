// The zero-shot task presets of lm-evaluation-harness (lm_eval/tasks/<task>/*.yaml and utils.py),
// rewritten as functions from a dataset item to the harness's requests, plus its HFLM request
// encoding and its metrics. Templates are Jinja in the harness; here each is the string it renders.
// multiple_choice requests are (context, " " + choice) (target_delimiter " "); winogrande is the
// harness's one "multiple input" task: one context per option, one shared continuation.
#include "scalpel/text/tasks.hpp"

#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "hf_files.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/text/calibration.hpp"
#include "scalpel/text/unicode.hpp"

namespace scalpel::text {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// One line of the file, with the error context every message names.
struct Item {
  const json& j;
  const std::string& file;
  std::int64_t line;

  [[noreturn]] void fail(const std::string& what) const {
    SCALPEL_INPUT_ERROR("{}: line {}: {}", file, line, what);
  }
  const json& field(const char* name) const {
    const auto it = j.find(name);
    if (it == j.end()) fail(fmt::format("field '{}' is missing", name));
    if (it->is_null()) fail(fmt::format("field '{}' is null", name));
    return *it;
  }
  bool has(const char* name) const { return j.contains(name) && !j[name].is_null(); }
  std::string str(const char* name) const {
    const json& v = field(name);
    if (!v.is_string()) fail(fmt::format("field '{}' must be a string, got {}", name, v.dump()));
    return v.get<std::string>();
  }
  std::vector<std::string> strings(const json& v, const std::string& name) const {
    if (!v.is_array()) fail(fmt::format("field '{}' must be a list of strings", name));
    std::vector<std::string> out;
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_string()) fail(fmt::format("field '{}[{}]' must be a string, got {}", name, i, v[i].dump()));
      out.push_back(v[i].get<std::string>());
    }
    if (out.empty()) fail(fmt::format("field '{}' is an empty list", name));
    return out;
  }
  // The index of the right choice. Presets whose target is the raw field (`doc_to_target: label`)
  // take what Python would take for an index: an integer or a boolean. `rendered` presets (a
  // "{{label}}" template, HellaSwag) also take a string of digits, as the harness's isdigit +
  // literal_eval does (literal_eval refuses leading zeros). Out of range is an error here; the
  // harness would only warn and score the item 0.
  int label(const char* name, std::size_t choices, bool rendered = false) const {
    const json& v = field(name);
    constexpr long long kHuge = std::numeric_limits<long long>::max();  // past every choice count
    long long x = -1;
    const std::string s = v.is_string() ? v.get<std::string>() : "";
    if (v.is_number_unsigned()) {
      x = v.get<unsigned long long>() > static_cast<unsigned long long>(kHuge) ? kHuge : v.get<long long>();
    } else if (v.is_number_integer()) {
      x = v.get<long long>();
    } else if (v.is_boolean()) {
      x = v.get<bool>() ? 1 : 0;
    } else if (rendered && !s.empty() && s.find_first_not_of("0123456789") == std::string::npos) {
      if (s.size() > 1 && s[0] == '0')
        fail(fmt::format("field '{}' is {}: digits with a leading zero, which Python's literal_eval (how the harness "
                         "reads it) refuses", name, v.dump()));
      x = s.size() < 10 ? std::stoll(s) : kHuge;
    } else {
      fail(fmt::format("field '{}' must be {}, got {}", name,
                       rendered ? "an integer or a string of digits" : "an integer label", v.dump()));
    }
    if (x < 0 || x >= static_cast<long long>(choices))
      fail(fmt::format("field '{}' is {}, out of range for {} choices", name, v.dump(), choices));
    return static_cast<int>(x);
  }
  // choices.label.index(key): ARC and OpenBookQA name the answer by its label ("A", "1", ...).
  int keyed_label(const std::vector<std::string>& labels, const std::string& key, const char* name) const {
    for (std::size_t i = 0; i < labels.size(); ++i)
      if (labels[i] == key) return static_cast<int>(i);
    fail(fmt::format("field '{}' is \"{}\", which is not one of choices.label", name, key));
  }
};

// Python's str.replace(old, new): every non-overlapping occurrence, left to right.
std::string replace_all(std::string s, std::string_view from, std::string_view to) {
  std::string out;
  std::size_t pos = 0;
  for (std::size_t at; (at = s.find(from, pos)) != std::string::npos; pos = at + from.size()) {
    out.append(s, pos, at - pos);
    out.append(to);
  }
  out.append(s, pos);
  return out;
}

// re.sub("\\[.*?\\]", "", text): '.' does not match a newline, so a '[' whose next ']' comes after
// a newline starts no match. The delimiters are ASCII, so bytes can stand for code points.
std::string drop_bracketed(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size();) {
    if (s[i] == '[') {
      const auto close = s.find_first_of("]\n", i + 1);
      if (close != std::string::npos && s[close] == ']') {
        i = close + 1;
        continue;
      }
    }
    out += s[i++];
  }
  return out;
}

// hellaswag/utils.py preprocess().
std::string hellaswag_preprocess(const std::string& text) {
  std::string t(python_strip(text));
  t = replace_all(t, " [title]", ". ");
  t = drop_bracketed(t);
  return replace_all(t, "  ", " ");
}

// Removes the last code point (Python s[:-1]).
std::string drop_last_char(std::string s) {
  if (s.empty()) return s;
  std::size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  s.resize(i);
  return s;
}

// choice[0].lower() + choice[1:] (super_glue/copa/utils.py convert_choice).
std::string lower_first(const Item& it, const std::string& s, const char* name) {
  if (s.empty()) it.fail(fmt::format("field '{}' is empty", name));
  std::size_t i = 0;
  (void)next_code_point(s, i);
  return python_lower(s.substr(0, i)) + s.substr(i);
}

// A multiple-choice item whose requests are (context, " " + choice).
TaskDoc choice_doc(const Item& it, const std::string& context, std::vector<std::string> choices, int gold) {
  TaskDoc d;
  d.line = it.line;
  for (const auto& c : choices) d.requests.emplace_back(context, " " + c);
  d.choices = std::move(choices);
  d.gold = gold;
  return d;
}

TaskDoc doc_piqa(const Item& it) {
  std::vector<std::string> ch{it.str("sol1"), it.str("sol2")};
  return choice_doc(it, "Question: " + it.str("goal") + "\nAnswer:", ch, it.label("label", 2));
}

TaskDoc doc_hellaswag(const Item& it) {
  const std::string ctx = it.str("ctx_a") + " " + python_capitalize(it.str("ctx_b"));
  std::vector<std::string> endings = it.strings(it.field("endings"), "endings");
  for (auto& e : endings) e = hellaswag_preprocess(e);
  const int gold = it.label("label", endings.size(), /*rendered=*/true);
  return choice_doc(it, hellaswag_preprocess(it.str("activity_label") + ": " + ctx), endings, gold);
}

// ARC and OpenBookQA: choices {"text": [...], "label": [...]}, answerKey naming a label.
TaskDoc doc_keyed(const Item& it, const std::string& context, bool lstrip_key) {
  const json& c = it.field("choices");
  if (!c.is_object()) it.fail("field 'choices' must be an object with 'text' and 'label' lists");
  if (!c.contains("text")) it.fail("field 'choices.text' is missing");
  if (!c.contains("label")) it.fail("field 'choices.label' is missing");
  const auto text = it.strings(c["text"], "choices.text");
  const auto labels = it.strings(c["label"], "choices.label");
  if (labels.size() != text.size())
    it.fail(fmt::format("'choices.label' has {} entries for {} in 'choices.text'", labels.size(), text.size()));
  std::string key = it.str("answerKey");
  if (lstrip_key) key = std::string(python_lstrip(key));
  return choice_doc(it, context, text, it.keyed_label(labels, key, "answerKey"));
}

TaskDoc doc_arc(const Item& it) { return doc_keyed(it, "Question: " + it.str("question") + "\nAnswer:", false); }
TaskDoc doc_openbookqa(const Item& it) { return doc_keyed(it, it.str("question_stem"), true); }

// winogrande/preprocess_winogrande.py: the option fills the blank; the text after it is scored.
TaskDoc doc_winogrande(const Item& it) {
  const std::string sentence = it.str("sentence");
  const auto blank = sentence.find('_');
  if (blank == std::string::npos) it.fail("field 'sentence' has no '_' blank");
  const std::string answer = it.str("answer");
  if (answer != "1" && answer != "2") it.fail(fmt::format("field 'answer' is \"{}\", expected \"1\" or \"2\"", answer));
  TaskDoc d;
  d.line = it.line;
  const std::string target(python_strip(std::string_view(sentence).substr(blank + 1)));
  for (const char* opt : {"option1", "option2"}) {
    d.choices.push_back(sentence.substr(0, blank) + it.str(opt));
    d.requests.emplace_back(d.choices.back(), " " + target);
  }
  d.gold = answer == "1" ? 0 : 1;
  return d;
}

// super_glue boolq (label 0/1). google/boolq is not read: its passages lack super_glue's
// "Title -- " prefix, so its prompts would not be the harness's.
TaskDoc doc_boolq(const Item& it) {
  return choice_doc(it, it.str("passage") + "\nQuestion: " + it.str("question") + "?\nAnswer:", {"no", "yes"},
                    it.label("label", 2));
}

// glue rte (sentence1, sentence2); super_glue's premise / hypothesis read the same way.
TaskDoc doc_rte(const Item& it) {
  const bool glue = it.has("sentence1") || !it.has("premise");
  const std::string a = it.str(glue ? "sentence1" : "premise"), b = it.str(glue ? "sentence2" : "hypothesis");
  return choice_doc(it, a + "\nQuestion: " + b + " True or False?\nAnswer:", {"True", "False"}, it.label("label", 2));
}

// super_glue/copa/utils.py. The choices already start with a space and the target delimiter adds
// another, so the harness scores "  because..." with two spaces; reproduced as is.
TaskDoc doc_copa(const Item& it) {
  const std::string q = it.str("question");
  if (q != "cause" && q != "effect") it.fail(fmt::format("field 'question' is \"{}\", expected cause or effect", q));
  const std::string premise(python_strip(it.str("premise")));
  const std::string context = drop_last_char(premise) + (q == "cause" ? " because" : " therefore");
  std::vector<std::string> ch;
  for (const char* name : {"choice1", "choice2"}) {
    ch.emplace_back(" ");
    ch.back() += lower_first(it, it.str(name), name);
  }
  // The harness's gold is choices.index(target): the first equal choice.
  const int label = it.label("label", 2);
  return choice_doc(it, context, ch, ch[0] == ch[static_cast<std::size_t>(label)] ? 0 : label);
}

// lambada_openai: context = the text before its last ' ', continuation = " " + the last word.
TaskDoc doc_lambada(const Item& it) {
  const std::string text = it.str("text");
  const auto sp = text.rfind(' ');
  TaskDoc d;
  d.line = it.line;
  if (sp == std::string::npos)
    d.requests.emplace_back("", " " + text);
  else
    d.requests.emplace_back(text.substr(0, sp), text.substr(sp));
  return d;
}

// scalpel's generic format: {"context": str, "choices": [str, ...], "label": int}.
TaskDoc doc_mc(const Item& it) {
  auto choices = it.strings(it.field("choices"), "choices");
  for (std::size_t i = 0; i < choices.size(); ++i)
    if (choices[i].empty()) it.fail(fmt::format("field 'choices[{}]' is empty", i));
  const int gold = it.label("label", choices.size());
  return choice_doc(it, it.str("context"), std::move(choices), gold);
}

using DocFn = TaskDoc (*)(const Item&);

// Every preset with the function that turns its items into requests, in the README's order.
struct PresetEntry {
  TaskPreset preset;
  DocFn doc;
};

const std::vector<PresetEntry>& preset_table() {
  using O = TaskOutput;
  static const std::vector<PresetEntry> table{
      {{"piqa", O::multiple_choice, {"acc", "acc_norm"}}, doc_piqa},
      {{"hellaswag", O::multiple_choice, {"acc", "acc_norm"}}, doc_hellaswag},
      {{"arc_easy", O::multiple_choice, {"acc", "acc_norm"}}, doc_arc},
      {{"arc_challenge", O::multiple_choice, {"acc", "acc_norm"}}, doc_arc},
      {{"winogrande", O::multiple_choice, {"acc"}}, doc_winogrande},
      {{"boolq", O::multiple_choice, {"acc"}}, doc_boolq},
      {{"rte", O::multiple_choice, {"acc"}}, doc_rte},
      {{"openbookqa", O::multiple_choice, {"acc", "acc_norm"}}, doc_openbookqa},
      {{"copa", O::multiple_choice, {"acc"}}, doc_copa},
      {{"lambada", O::loglikelihood, {"perplexity", "acc"}}, doc_lambada},
      {{"mc", O::multiple_choice, {"acc", "acc_norm"}}, doc_mc}};
  return table;
}

DocFn doc_function(const std::string& preset) {
  for (const auto& e : preset_table())
    if (e.preset.name == preset) return e.doc;
  SCALPEL_CHECK(false, "no document function for preset {}", preset);
}

// Python's sum() of floats (Neumaier's compensated sum since CPython 3.12), and lm-eval's mean().
double python_sum(const std::vector<double>& x) {
  double s = 0, c = 0;
  for (double v : x) {
    const double t = s + v;
    c += std::abs(s) >= std::abs(v) ? (s - t) + v : (v - t) + s;
    s = t;
  }
  return s + c;
}
double python_mean(const std::vector<double>& x) { return python_sum(x) / static_cast<double>(x.size()); }

// lm-eval's sample_stddev: sqrt(sum((x - mean)^2) / (n - 1)).
double sample_stddev(const std::vector<double>& x) {
  const double mu = python_mean(x);
  std::vector<double> sq(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) sq[i] = (x[i] - mu) * (x[i] - mu);
  return std::sqrt(python_sum(sq) / static_cast<double>(x.size() - 1));
}

// lm-eval's bootstrap_stderr(perplexity, ll, iters=100000): 100 chunks of 1000 resamples, chunk i
// drawn by random.Random(i).choices(ll, k=n) (index floor(random() * n)); the sample standard
// deviation of exp(-mean) over the 100,000 resamples. The same draws as the harness's.
double bootstrap_ppl_stderr(const std::vector<double>& ll) {
  const auto n = ll.size();
  std::vector<double> res, sample(n);
  res.reserve(100000);
  for (std::uint64_t chunk = 0; chunk < 100; ++chunk) {
    PythonRandom rnd(chunk);
    for (int r = 0; r < 1000; ++r) {
      for (std::size_t k = 0; k < n; ++k)
        sample[k] = ll[static_cast<std::size_t>(std::floor(rnd.random() * static_cast<double>(n)))];
      res.push_back(std::exp(-python_mean(sample)));
    }
  }
  return sample_stddev(res);
}

// lm-eval's mean_stderr; NaN for a single item (the harness prints N/A).
double mean_stderr(const std::vector<double>& x) {
  if (x.size() < 2) return std::numeric_limits<double>::quiet_NaN();
  return sample_stddev(x) / std::sqrt(static_cast<double>(x.size()));
}

std::size_t code_points(const std::string& s) {
  std::size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

}  // namespace

const std::vector<TaskPreset>& task_presets() {
  static const std::vector<TaskPreset> presets = [] {
    std::vector<TaskPreset> out;
    for (const auto& e : preset_table()) out.push_back(e.preset);
    return out;
  }();
  return presets;
}

const TaskPreset& task_preset(const std::string& name) {
  std::string names;
  for (const auto& p : task_presets()) {
    if (p.name == name) return p;
    names += (names.empty() ? "" : ", ") + p.name;
  }
  SCALPEL_INPUT_ERROR("task preset '{}' is not one of {}", name, names);
}

std::vector<TaskDoc> load_task_docs(const TaskPreset& preset, const fs::path& path, std::int64_t max_items) {
  const std::string file = path.string();
  const std::string bytes = detail::read_input_file(path);
  const DocFn fn = doc_function(preset.name);
  std::vector<TaskDoc> docs;
  std::int64_t line = 0;
  for (std::size_t pos = 0; pos < bytes.size();) {
    const auto nl = bytes.find('\n', pos);
    std::string_view text(bytes.data() + pos, (nl == std::string::npos ? bytes.size() : nl) - pos);
    pos = nl == std::string::npos ? bytes.size() : nl + 1;
    ++line;
    if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
    if (text.find_first_not_of(" \t") == std::string_view::npos) continue;
    if (const auto bad = first_invalid_utf8(text); bad != std::string_view::npos)
      SCALPEL_INPUT_ERROR("{}: line {}: not valid UTF-8 (byte {} of the line)", file, line, bad);
    json j;
    try {
      j = json::parse(text);
    } catch (const json::parse_error& e) {
      SCALPEL_INPUT_ERROR("{}: line {}: malformed JSON: {}", file, line, e.what());
    }
    if (!j.is_object()) SCALPEL_INPUT_ERROR("{}: line {}: expected a JSON object, got {}", file, line, j.type_name());
    docs.push_back(fn(Item{j, file, line}));
    if (max_items > 0 && static_cast<std::int64_t>(docs.size()) >= max_items) break;
  }
  if (docs.empty()) SCALPEL_INPUT_ERROR("{}: no items (one JSON object per line)", file);
  return docs;
}

EncodedRequest encode_request(const Tokenizer& tok, const std::string& context, const std::string& continuation,
                              const HarnessEncoding& opt) {
  const std::int32_t prefix = tok.bos_token_id() >= 0 ? tok.bos_token_id() : tok.eos_token_id();
  // tok_encode: special tokens only with add_bos, and not for a text that already starts with
  // the prefix token's text (lm-eval >= 0.4.9.2's has_bos_prefix).
  const std::string prefix_text = prefix >= 0 ? tok.decode({prefix}) : std::string();
  auto enc = [&](const std::string& s) {
    const bool special = opt.add_bos && (prefix_text.empty() || !s.starts_with(prefix_text));
    return special ? tok.encode(s) : tok.encode_plain(s);
  };
  std::vector<std::int32_t> ctx, cont;
  // _encode_pair: trailing whitespace (str.rstrip) belongs to the continuation.
  const std::string_view kept = python_rstrip(context);
  if (context.empty()) {
    cont = tok.encode_plain(continuation);
    if (cont.empty()) SCALPEL_INPUT_ERROR("the context and the continuation are both empty");
    if (cont[0] == prefix) {
      ctx.assign(cont.begin(), cont.begin() + 1);
      cont.erase(cont.begin());
    } else {
      if (prefix < 0) SCALPEL_INPUT_ERROR("an empty context needs a BOS or EOS token, and the tokenizer has neither");
      ctx = {prefix};
    }
  } else {
    const std::string c(kept), rest = context.substr(kept.size()) + continuation;
    const auto whole = enc(c + rest);
    ctx = enc(c);
    const std::size_t n = std::min(ctx.size(), whole.size());
    cont.assign(whole.begin() + static_cast<std::ptrdiff_t>(n), whole.end());
    // The harness asserts both (HFLM._loglikelihood_tokens): stop with the item named instead.
    if (ctx.empty())
      SCALPEL_INPUT_ERROR("the context \"{}\" is only whitespace and encodes to no tokens", context);
    if (cont.empty()) SCALPEL_INPUT_ERROR("the continuation \"{}\" adds no tokens to the context's", continuation);
  }
  if (static_cast<std::int64_t>(cont.size()) > opt.max_length)
    SCALPEL_INPUT_ERROR("the continuation has {} tokens, more than the model's context of {}", cont.size(),
                        opt.max_length);
  EncodedRequest r;
  r.continuation = static_cast<std::int64_t>(cont.size());
  r.ids = std::move(ctx);
  r.ids.insert(r.ids.end(), cont.begin(), cont.end());
  const auto keep = static_cast<std::size_t>(opt.max_length + 1);
  if (r.ids.size() > keep) r.ids.erase(r.ids.begin(), r.ids.end() - static_cast<std::ptrdiff_t>(keep));
  return r;
}

TaskScores score_task(const TaskPreset& preset, const std::vector<TaskDoc>& docs, const std::vector<double>& loglik,
                      const std::vector<std::uint8_t>& greedy) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  TaskScores s;
  s.items = static_cast<std::int64_t>(docs.size());
  std::vector<double> acc, norm, ll;
  std::size_t r = 0;
  for (const auto& d : docs) {
    SCALPEL_CHECK(r + d.requests.size() <= loglik.size() && loglik.size() == greedy.size(),
                  "score_task: {} results for the requests", loglik.size());
    if (preset.output == TaskOutput::loglikelihood) {
      ll.push_back(loglik[r]);
      acc.push_back(greedy[r] ? 1.0 : 0.0);
    } else {
      std::size_t best = 0, best_norm = 0;
      auto normed = [&](std::size_t i) { return loglik[r + i] / static_cast<double>(code_points(d.choices[i])); };
      for (std::size_t i = 1; i < d.requests.size(); ++i) {
        if (loglik[r + i] > loglik[r + best]) best = i;
        if (normed(i) > normed(best_norm)) best_norm = i;
      }
      acc.push_back(static_cast<int>(best) == d.gold ? 1.0 : 0.0);
      norm.push_back(static_cast<int>(best_norm) == d.gold ? 1.0 : 0.0);
    }
    r += d.requests.size();
  }
  SCALPEL_CHECK(r == loglik.size(), "score_task: {} results for {} requests", loglik.size(), r);
  s.acc = python_mean(acc);
  s.acc_stderr = mean_stderr(acc);
  if (preset.output == TaskOutput::loglikelihood) {
    s.ppl = std::exp(-python_mean(ll));
    s.ppl_stderr = ll.size() < 2 ? nan : bootstrap_ppl_stderr(ll);
    s.acc_norm = s.acc_norm_stderr = nan;
  } else {
    s.acc_norm = python_mean(norm);
    s.acc_norm_stderr = mean_stderr(norm);
    s.ppl = s.ppl_stderr = nan;
  }
  return s;
}

}  // namespace scalpel::text
