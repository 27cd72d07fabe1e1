// YAML -> Config with strict checking: every key is known, every value has the expected type,
// every error names the key path (and the file it came from).
#include "scalpel/app/config.hpp"

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <set>

#include "scalpel/core/error.hpp"
#include "scalpel/core/paths.hpp"
#include "scalpel/core/log.hpp"
#include "scalpel/text/tasks.hpp"

namespace scalpel::app {
namespace {

// A section or list given with no value ("prune:" with nothing under it, "~"): something
// forgotten, refused as a key with no value is (it silently meant all the defaults).
void refuse_null(const YAML::Node& node, const std::string& source, const std::string& key, const char* what) {
  if (node && node.IsNull())
    SCALPEL_INPUT_ERROR("{}: '{}' has no value (YAML null); give its {}, or leave it out for the defaults", source,
                        key, what);
}

// Reads one YAML map, remembering which keys were used, so that leftovers are reported.
class MapReader {
 public:
  MapReader(const YAML::Node& node, std::string path, const std::string& source)
      : node_(node), path_(std::move(path)), source_(source) {
    if (!path_.empty()) refuse_null(node_, source_, path_, "keys");
    if (node_ && !node_.IsNull() && !node_.IsMap())
      SCALPEL_INPUT_ERROR("{}: '{}' must be a mapping", source_, path_.empty() ? "<top>" : path_);
  }

  std::string key(const std::string& k) const { return path_.empty() ? k : path_ + "." + k; }

  template <class T>
  void get(const std::string& k, T& out) {
    used_.insert(k);
    if (!node_ || !node_.IsMap()) return;
    const YAML::Node v = node_[k];
    if (!v) return;
    // "dir:" with nothing after it: a value forgotten, not the default asked for.
    if (v.IsNull())
      SCALPEL_INPUT_ERROR("{}: '{}' has no value (YAML null); give one, or leave the key out for its default",
                          source_, key(k));
    if (!v.IsScalar())
      SCALPEL_INPUT_ERROR("{}: '{}' must be a scalar, got a {}", source_, key(k), v.IsMap() ? "mapping" : "list");
    // A quoted scalar is a string in YAML ("0.5", 'true'): not a number or a boolean, as its type
    // says (it was converted).
    if constexpr (std::is_arithmetic_v<T>)
      if (v.Tag() == "!")
        SCALPEL_INPUT_ERROR("{}: '{}' must be {}, got the quoted string '{}' (write it without quotes)", source_,
                            key(k), std::is_same_v<T, bool> ? "a boolean" : std::is_integral_v<T> ? "an integer"
                                                                                                  : "a number",
                            v.Scalar());
    long long integer = 0;  // range-checked below, outside the conversion's catch
    unsigned long long uinteger = 0;  // the same for unsigned settings (a seed up to 2^64 - 1)
    try {
      if constexpr (std::is_same_v<T, bool>) {
        out = v.as<bool>();
      } else if constexpr (std::is_integral_v<T>) {
        const auto s = v.as<std::string>();
        std::size_t pos = 0;
        if (std::is_unsigned_v<T> && !s.empty() && s[0] != '-')
          uinteger = std::stoull(s, &pos);
        else
          integer = std::stoll(s, &pos);
        if (pos != s.size()) throw std::invalid_argument(s);
      } else if constexpr (std::is_floating_point_v<T>) {
        const auto s = v.as<std::string>();
        std::size_t pos = 0;
        const double x = std::stod(s, &pos);
        if (pos != s.size() || !std::isfinite(x)) throw std::invalid_argument(s);  // "inf", "nan": no setting's
        out = static_cast<T>(x);
      } else {
        out = v.as<std::string>();
      }
    } catch (const std::exception&) {
      const char* want = std::is_same_v<T, bool> ? "a boolean"
                         : std::is_integral_v<T> ? "an integer"
                         : std::is_floating_point_v<T> ? "a finite number" : "a string";
      SCALPEL_INPUT_ERROR("{}: '{}' must be {}, got '{}'", source_, key(k), want, v.Scalar());
    }
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      // A value the setting's type cannot hold is refused, not wrapped (threads 4294967297 was 1).
      using L = std::numeric_limits<T>;
      if constexpr (std::is_unsigned_v<T>) {
        if (integer == 0 && uinteger <= static_cast<unsigned long long>(L::max())) {
          out = static_cast<T>(uinteger);
          return;
        }
        if (integer == 0)
          SCALPEL_INPUT_ERROR("{}: '{}' is {}, outside {}..{}", source_, key(k), uinteger, L::min(), L::max());
      }
      if (integer < static_cast<long long>(L::min()) ||
          (integer > 0 && static_cast<unsigned long long>(integer) > static_cast<unsigned long long>(L::max())))
        SCALPEL_INPUT_ERROR("{}: '{}' is {}, outside {}..{}", source_, key(k), integer, L::min(), L::max());
      out = static_cast<T>(integer);
    }
  }

  YAML::Node child(const std::string& k) {
    used_.insert(k);
    return node_ && node_.IsMap() ? node_[k] : YAML::Node(YAML::NodeType::Undefined);  // absent, not null
  }

  // Unknown keys, and keys given twice (YAML forbids it; yaml-cpp would silently keep the first).
  void finish() const {
    if (!node_ || !node_.IsMap()) return;
    std::set<std::string> seen;
    for (const auto& kv : node_) {
      if (!kv.first.IsScalar())
        SCALPEL_INPUT_ERROR("{}: line {}: a key of '{}' is {}, not a name", source_, kv.first.Mark().line + 1,
                            path_.empty() ? "<top>" : path_,
                            kv.first.IsMap() ? "a mapping" : kv.first.IsSequence() ? "a list" : "null");
      const auto k = kv.first.Scalar();
      if (!used_.count(k)) SCALPEL_INPUT_ERROR("{}: unknown key '{}'", source_, key(k));
      if (!seen.insert(k).second)
        SCALPEL_INPUT_ERROR("{}: key '{}' is given twice; keep one", source_, key(k));
    }
  }

 private:
  YAML::Node node_;
  std::string path_;
  const std::string& source_;
  std::set<std::string> used_;
};

// Every key of the mapping `src` set in the mapping `dst`, sections merged key by key; `path` is
// dst's dotted name for the errors (a key given twice in src, which the merge would hide).
void merge_into(YAML::Node dst, const YAML::Node& src, const std::string& path) {
  std::set<std::string> seen;
  for (const auto& kv : src) {
    const auto k = kv.first.Scalar();
    if (!seen.insert(k).second)
      SCALPEL_INPUT_ERROR("override '{}': key '{}.{}' is given twice; keep one", path, path, k);
    YAML::Node at = dst[k];
    if (at && at.IsMap() && kv.second.IsMap())
      merge_into(at, kv.second, path + "." + k);
    else
      dst[k] = kv.second;
  }
}

// Sets `dotted` in `root` to the YAML value `text`, creating maps on the way; numeric parts index
// lists ("eval.sets.0.path=x"); a mapping merges into the section it names.
void apply_override(YAML::Node root, const std::string& spec) {
  const auto eq = spec.find('=');
  if (eq == std::string::npos || eq == 0)
    SCALPEL_INPUT_ERROR("override '{}' is not of the form key=value", spec);
  const std::string dotted = spec.substr(0, eq), text = spec.substr(eq + 1);
  YAML::Node value;
  try {
    value = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    SCALPEL_INPUT_ERROR("override '{}': value is not valid YAML: {}", dotted, e.what());
  }
  if (text.empty()) {
    value = YAML::Node(text);  // "output.export=": the empty string (no export)
  } else if (!value || value.IsNull()) {
    // "~" or "null": a value forgotten, as in a file (where it is an error too), not the text "~".
    SCALPEL_INPUT_ERROR("override '{}': '{}' is YAML null, no value; give one, or leave the key out for its default",
                        dotted, text);
  }
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (true) {
    const auto dot = dotted.find('.', start);
    parts.push_back(dotted.substr(start, dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  // The dotted name of the first k parts ("<top>" for none).
  const auto first = [&](std::size_t k) {
    std::string s;
    for (std::size_t j = 0; j < k; ++j) s += (j ? "." : "") + parts[j];
    return s.empty() ? std::string("<top>") : s;
  };
  std::vector<YAML::Node> chain{root};
  for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node cur = chain.back();
    const auto& p = parts[i];
    if (p.empty()) SCALPEL_INPUT_ERROR("override '{}': empty key part", dotted);
    YAML::Node next;
    if (cur.IsSequence()) {
      std::size_t idx = 0;
      try {
        idx = std::stoul(p);
      } catch (...) {
        SCALPEL_INPUT_ERROR("override '{}': '{}' indexes a list, so it must be a number", dotted, p);
      }
      if (idx >= cur.size()) SCALPEL_INPUT_ERROR("override '{}': index {} past the list of {}", dotted, idx, cur.size());
      next = cur[idx];
    } else {
      if (cur.IsScalar()) SCALPEL_INPUT_ERROR("override '{}': '{}' is a value, not a mapping", dotted, first(i));
      next = cur[p];
      if (!next || next.IsNull()) {
        cur[p] = YAML::Node(YAML::NodeType::Map);
        next = cur[p];
      }
    }
    chain.push_back(next);
  }
  YAML::Node last = chain.back();
  if (last.IsScalar())
    SCALPEL_INPUT_ERROR("override '{}': '{}' is a value, not a mapping", dotted, first(parts.size() - 1));
  if (last.IsSequence()) {
    std::size_t idx = 0;
    try {
      idx = std::stoul(parts.back());
    } catch (...) {
      SCALPEL_INPUT_ERROR("override '{}': '{}' indexes a list, so it must be a number", dotted, parts.back());
    }
    if (idx >= last.size()) SCALPEL_INPUT_ERROR("override '{}': index {} past the list", dotted, idx);
    if (YAML::Node at = last[idx]; at.IsMap() && value.IsMap())
      merge_into(at, value, dotted);  // "eval.sets.0={path: x}" sets path, keeping the set's other keys
    else
      last[idx] = value;
  } else if (YAML::Node at = last[parts.back()]; at && at.IsMap() && value.IsMap()) {
    merge_into(at, value, dotted);  // "surgeon={shots: 3}" sets shots, keeping the section's other keys
  } else {
    last[parts.back()] = value;
  }
}

void read_string_list(const YAML::Node& node, const std::string& source, const std::string& key,
                      std::vector<std::string>& out) {
  refuse_null(node, source, key, "list");
  if (!node) return;
  if (node.IsScalar()) {
    out = {node.Scalar()};
    return;
  }
  if (!node.IsSequence()) SCALPEL_INPUT_ERROR("{}: '{}' must be a list of strings", source, key);
  out.clear();
  for (std::size_t i = 0; i < node.size(); ++i) {
    if (!node[i].IsScalar()) SCALPEL_INPUT_ERROR("{}: '{}.{}' must be a string", source, key, i);
    if (std::find(out.begin(), out.end(), node[i].Scalar()) != out.end())
      SCALPEL_INPUT_ERROR("{}: '{}' names '{}' twice; keep one", source, key, node[i].Scalar());
    out.push_back(node[i].Scalar());
  }
}

void read_int_list(const YAML::Node& node, const std::string& source, const std::string& key,
                   std::vector<std::int64_t>& out) {
  refuse_null(node, source, key, "list");
  if (!node) return;
  if (!node.IsSequence()) SCALPEL_INPUT_ERROR("{}: '{}' must be a list of integers", source, key);
  out.clear();
  for (std::size_t i = 0; i < node.size(); ++i) {
    try {
      out.push_back(node[i].as<std::int64_t>());
    } catch (const YAML::Exception&) {
      SCALPEL_INPUT_ERROR("{}: '{}.{}' must be an integer", source, key, i);
    }
  }
}

void validate_allocation(const Config& c, const std::string& source) {
  const auto& a = c.allocation;
  const auto& alloc = c.prune.allocation;
  if (alloc != "uniform" && alloc != "owl" && alloc != "sensitivity")
    SCALPEL_INPUT_ERROR("{}: 'prune.allocation' is '{}', expected uniform, owl or sensitivity", source, alloc);
  if (alloc != "uniform" && c.prune.method == "surgeon")
    SCALPEL_INPUT_ERROR("{}: 'prune.allocation' {} is for magnitude, wanda and sparsegpt (LLM Surgeon allocates "
                        "globally by itself)", source, alloc);
  if (!(a.owl_m > 0)) SCALPEL_INPUT_ERROR("{}: 'allocation.owl_m' must be > 0", source);
  if (!(a.owl_lambda >= 0)) SCALPEL_INPUT_ERROR("{}: 'allocation.owl_lambda' must be >= 0", source);
  if (!(a.alpha >= 0 && a.alpha < 1)) SCALPEL_INPUT_ERROR("{}: 'allocation.alpha' must be in [0, 1)", source);
  if (a.hutchinson_samples < 1) SCALPEL_INPUT_ERROR("{}: 'allocation.hutchinson_samples' must be >= 1", source);
  // A step as large as the weights' RMS measures nothing local (and 1e30 overflowed fp32).
  if (!(a.epsilon > 0 && a.epsilon <= 1))
    SCALPEL_INPUT_ERROR("{}: 'allocation.epsilon' {} must be in (0, 1] (a step relative to each matrix's RMS)", source,
                        a.epsilon);
  if (a.granularity != "block" && a.granularity != "matrix")
    SCALPEL_INPUT_ERROR("{}: 'allocation.granularity' is '{}', expected block or matrix", source, a.granularity);
  if (alloc == "owl" && a.granularity == "matrix")
    SCALPEL_INPUT_ERROR("{}: 'allocation.granularity' matrix is for prune.allocation: sensitivity (OWL gives one "
                        "sparsity per block)", source);
  if (alloc == "sensitivity" && c.parallel.stages > 1)
    SCALPEL_INPUT_ERROR("{}: 'prune.allocation' sensitivity runs with parallel.stages: 1 only (its passes go through "
                        "the whole model; data ranks are fine)", source);
  if (alloc == "sensitivity" && c.prune.pattern != "unstructured")
    SCALPEL_INPUT_ERROR("{}: 'prune.allocation' sensitivity needs prune.pattern: unstructured (OWL has an N:M rule)",
                        source);
  // The plain rule spreads the sparsities evenly over [p - alpha, p + alpha]: known before the
  // estimate (the weighted rule's shift is checked after it).
  const double p = c.prune.sparsity;
  if (alloc == "sensitivity" && !a.weighted && a.alpha > 0 && !(p - a.alpha >= 0 && p + a.alpha < 1))
    SCALPEL_INPUT_ERROR("{}: 'allocation.alpha' {} with prune.sparsity {} spreads the sparsities over [{:g}, {:g}], "
                        "outside [0, 1); lower it",
                        source, a.alpha, p, p - a.alpha, p + a.alpha);
  if (alloc == "sensitivity" && !a.traces.empty()) {
    // Read or written after an estimate of minutes: a path that cannot be written stops the job now.
    const std::filesystem::path t(a.traces);
    const auto parent = t.parent_path().empty() ? std::filesystem::path(".") : t.parent_path();
    std::error_code ec;
    if (std::filesystem::is_directory(t, ec))
      SCALPEL_INPUT_ERROR("{}: 'allocation.traces' {} is a folder; name a file", source, a.traces);
    if (!std::filesystem::is_directory(parent, ec))
      SCALPEL_INPUT_ERROR("{}: 'allocation.traces' {}: the folder {} does not exist", source, a.traces,
                          parent.string());
  }
  if (c.sparsegpt.saliency != "obs" && c.sparsegpt.saliency != "isc")
    SCALPEL_INPUT_ERROR("{}: 'sparsegpt.saliency' is '{}', expected obs or isc", source, c.sparsegpt.saliency);
  if (c.sparsegpt.split_width < 0)
    SCALPEL_INPUT_ERROR("{}: 'sparsegpt.split_width' is {}, expected >= 0 (0: never split a factor)", source,
                        c.sparsegpt.split_width);
  if (c.sparsegpt.tile < 1)
    SCALPEL_INPUT_ERROR("{}: 'sparsegpt.tile' is {}, expected >= 1", source, c.sparsegpt.tile);
  if (c.sparsegpt.saliency == "isc" && (c.prune.method != "sparsegpt" || c.prune.pattern != "unstructured"))
    SCALPEL_INPUT_ERROR("{}: 'sparsegpt.saliency' isc needs prune.method: sparsegpt and prune.pattern: unstructured",
                        source);
}

void validate_depth(const Config& c, const std::string& source) {
  const auto& d = c.depth;
  if (d.criterion != "bi" && d.criterion != "angular" && d.criterion != "deepest" && d.criterion != "laco" &&
      d.criterion != "ppl")
    SCALPEL_INPUT_ERROR("{}: 'depth.criterion' is '{}', expected bi, angular, deepest, laco or ppl", source,
                        d.criterion);
  if (!(d.remove > 0) || (d.remove >= 1 && d.remove != std::floor(d.remove)))
    SCALPEL_INPUT_ERROR("{}: 'depth.remove' is {}, expected a block count (an integer >= 1) or a fraction in (0, 1)",
                        source, d.remove);
  for (const auto b : d.protect)
    if (b < 0) SCALPEL_INPUT_ERROR("{}: 'depth.protect' has {}, expected block indices >= 0", source, b);
  if (d.merge < 2) SCALPEL_INPUT_ERROR("{}: 'depth.merge' must be >= 2 (a block and at least one after it)", source);
  if (d.interval < 1) SCALPEL_INPUT_ERROR("{}: 'depth.interval' must be >= 1", source);
  if (!(d.threshold >= -1 && d.threshold <= 1))
    SCALPEL_INPUT_ERROR("{}: 'depth.threshold' must be a cosine similarity in [-1, 1]", source);
  if (d.windows < 0) SCALPEL_INPUT_ERROR("{}: 'depth.windows' must be >= 0 (0 = all)", source);
}

void validate_surgeon(const Config& c, const std::string& source) {
  const auto& s = c.surgeon;
  if (s.shots < 1) SCALPEL_INPUT_ERROR("{}: 'surgeon.shots' must be >= 1", source);
  // Each shot is a pass over the calibration windows, a curvature estimate and a checkpoint: the
  // paper's schedules take 5 to 40. Billions were accepted (and committed shots that removed nothing).
  if (s.shots > 1000)
    SCALPEL_INPUT_ERROR("{}: 'surgeon.shots' {} exceeds 1000 (each shot is a pass over the calibration windows and a "
                        "checkpoint; the paper's schedules take 5 to 40)", source, s.shots);
  for (const auto& [key, v] : {std::pair{"damp_g", s.damp_g}, std::pair{"damp_a", s.damp_a}})
    if (!(v > 0)) SCALPEL_INPUT_ERROR("{}: 'surgeon.{}' is {}, it must be > 0", source, key, v);
  if (s.keep_activations_mb < 0) SCALPEL_INPUT_ERROR("{}: 'surgeon.keep_activations_mb' must be >= 0", source);
  if (s.max_correlate < 0) SCALPEL_INPUT_ERROR("{}: 'surgeon.max_correlate' must be >= 0 (0 = all at once)", source);
  if (s.fisher != "empirical" && s.fisher != "sampled")
    SCALPEL_INPUT_ERROR("{}: 'surgeon.fisher' is '{}', expected empirical or sampled", source, s.fisher);
  if (s.cost != "surgeon" && s.cost != "kobd" && s.cost != "magnitude")
    SCALPEL_INPUT_ERROR("{}: 'surgeon.cost' is '{}', expected surgeon, kobd or magnitude", source, s.cost);
  if (s.structures.empty()) SCALPEL_INPUT_ERROR("{}: 'surgeon.structures' is empty, expected rows and/or columns", source);
  for (const auto& x : s.structures)
    if (x != "rows" && x != "columns")
      SCALPEL_INPUT_ERROR("{}: 'surgeon.structures' has '{}', expected rows and/or columns", source, x);
  // Both, in any order: what the default names (a pattern other than structured ignores it).
  const auto names = [&](const char* x) { return std::find(s.structures.begin(), s.structures.end(), x) != s.structures.end(); };
  const bool default_structures = names("rows") && names("columns");
  if (c.prune.method == "surgeon" && c.prune.pattern != "structured" && !default_structures)
    SCALPEL_INPUT_ERROR("{}: 'surgeon.structures' {} needs prune.pattern: structured (pattern '{}' removes single "
                        "weights)", source, fmt::format("[{}]", fmt::join(s.structures, ", ")), c.prune.pattern);
  for (const auto k : s.eval_shots)
    if (k < 1 || k > s.shots)
      SCALPEL_INPUT_ERROR("{}: 'surgeon.eval_shots' has {}, outside the shots 1..{}", source, k, s.shots);
}

// A list of {name, preset, path} maps under eval.<key>; `check_preset` returns the error message
// for an unknown preset ("" for a known one).
template <class Item>
void read_preset_list(const YAML::Node& node, const std::string& source, const std::string& key,
                      const std::function<std::string(const std::string&)>& check_preset, std::vector<Item>& items) {
  refuse_null(node, source, "eval." + key, "list");
  if (!node) return;
  if (!node.IsSequence()) SCALPEL_INPUT_ERROR("{}: 'eval.{}' must be a list", source, key);
  items.clear();
  for (std::size_t i = 0; i < node.size(); ++i) {
    MapReader r(node[i], fmt::format("eval.{}.{}", key, i), source);
    Item item;
    r.get("name", item.name);
    r.get("preset", item.preset);
    r.get("path", item.path);
    r.finish();
    if (const auto err = check_preset(item.preset); !err.empty())
      SCALPEL_INPUT_ERROR("{}: 'eval.{}.{}.preset' {}", source, key, i, err);
    if (item.path.empty()) SCALPEL_INPUT_ERROR("{}: 'eval.{}.{}.path' is required", source, key, i);
    items.push_back(item);
  }
}

// Unnamed sets and tasks are called by their preset, or preset/file-stem where a preset repeats,
// with #2, #3... where that still repeats (--text gives no way to name them). Two entries given
// the same name (their lines and metrics records could not be told apart) are refused.
template <class Item>
void name_items(std::vector<Item>& items, const std::string& source, const std::string& key) {
  std::set<std::string> seen;
  for (const auto& t : items)
    if (!t.name.empty() && !seen.insert(t.name).second)
      SCALPEL_INPUT_ERROR("{}: 'eval.{}' has two entries named '{}'; give them names of their own", source, key,
                          t.name);
  for (auto& t : items) {
    if (!t.name.empty()) continue;
    const auto same = std::count_if(items.begin(), items.end(), [&](const Item& o) { return o.preset == t.preset; });
    const auto base = same > 1 ? t.preset + "/" + std::filesystem::path(t.path).stem().string() : t.preset;
    t.name = base;
    for (int n = 2; !seen.insert(t.name).second; ++n) t.name = base + "#" + std::to_string(n);
  }
  for (const auto& t : items)  // given or made from a file name: a line break would split its result line
    for (const char ch : t.name)
      if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f)
        SCALPEL_INPUT_ERROR("{}: 'eval.{}' has a name with a control character ({}); use a name on one line", source,
                            key, nlohmann::json(t.name).dump());
}

void read_sets(const YAML::Node& node, const std::string& source, std::vector<EvalSet>& sets) {
  read_preset_list<EvalSet>(node, source, "sets", [](const std::string& p) {
    static const std::set<std::string> presets{"wikitext2", "ptb", "c4", "text"};
    return presets.count(p) ? std::string() : fmt::format("is '{}', expected wikitext2, ptb, c4 or text", p);
  }, sets);
  name_items(sets, source, "sets");
}

void read_tasks(const YAML::Node& node, const std::string& source, std::vector<EvalTask>& tasks) {
  read_preset_list<EvalTask>(node, source, "tasks", [](const std::string& p) {
    std::string names;
    for (const auto& t : text::task_presets()) {
      if (t.name == p) return std::string();
      names += (names.empty() ? "" : ", ") + t.name;
    }
    return fmt::format("is '{}', expected one of {}", p, names);
  }, tasks);
  name_items(tasks, source, "tasks");
}

// The sections of the config file, each read into its part of Config (unknown keys are errors).
void read_device_sections(MapReader& top, const std::string& source, Config& c) {
  {
    MapReader r(top.child("cuda"), "cuda", source);
    r.get("tf32", c.cuda.tf32);
    r.get("activations", c.cuda.activations);
    r.get("forward_dtype", c.cuda.forward_dtype);
    r.finish();
  }
  {
    MapReader r(top.child("cpu"), "cpu", source);
    r.get("forward_dtype", c.cpu.forward_dtype);
    r.finish();
  }
  {
    MapReader r(top.child("tokenizer"), "tokenizer", source);
    r.get("mode", c.tokenizer.mode);
    r.finish();
  }
  {
    MapReader r(top.child("eval"), "eval", source);
    r.get("seqlen", c.eval.seqlen);
    r.get("batch", c.eval.batch);
    r.get("max_windows", c.eval.max_windows);
    read_sets(r.child("sets"), source, c.eval.sets);
    read_tasks(r.child("tasks"), source, c.eval.tasks);
    r.get("max_items", c.eval.max_items);
    r.get("add_bos", c.eval.add_bos);
    r.finish();
  }
}

void read_prune_sections(MapReader& top, const std::string& source, Config& c) {
  {
    MapReader r(top.child("prune"), "prune", source);
    r.get("method", c.prune.method);
    r.get("sparsity", c.prune.sparsity);
    r.get("pattern", c.prune.pattern);
    read_string_list(r.child("targets"), source, "prune.targets", c.prune.targets);
    r.get("propagation", c.prune.propagation);
    r.get("true_sequential", c.prune.true_sequential);
    r.get("dampening", c.prune.dampening);
    r.get("blocksize", c.prune.blocksize);
    r.get("allocation", c.prune.allocation);
    r.finish();
  }
  {
    MapReader r(top.child("allocation"), "allocation", source);
    r.get("owl_m", c.allocation.owl_m);
    r.get("owl_lambda", c.allocation.owl_lambda);
    r.get("alpha", c.allocation.alpha);
    r.get("hutchinson_samples", c.allocation.hutchinson_samples);
    r.get("epsilon", c.allocation.epsilon);
    r.get("weighted", c.allocation.weighted);
    r.get("granularity", c.allocation.granularity);
    r.get("traces", c.allocation.traces);
    r.finish();
  }
  {
    MapReader r(top.child("sparsegpt"), "sparsegpt", source);
    r.get("saliency", c.sparsegpt.saliency);
    r.get("split_width", c.sparsegpt.split_width);
    r.get("tile", c.sparsegpt.tile);
    r.finish();
  }
}

void read_method_sections(MapReader& top, const std::string& source, Config& c) {
  {
    MapReader r(top.child("depth"), "depth", source);
    r.get("criterion", c.depth.criterion);
    r.get("remove", c.depth.remove);
    const auto protect = r.child("protect");
    if (protect && !protect.IsNull()) c.depth.protect_set = true;
    read_int_list(protect, source, "depth.protect", c.depth.protect);
    r.get("merge", c.depth.merge);
    r.get("interval", c.depth.interval);
    r.get("threshold", c.depth.threshold);
    r.get("windows", c.depth.windows);
    r.get("greedy", c.depth.greedy);
    r.finish();
  }
  {
    MapReader r(top.child("surgeon"), "surgeon", source);
    r.get("shots", c.surgeon.shots);
    read_string_list(r.child("structures"), source, "surgeon.structures", c.surgeon.structures);
    r.get("damp_g", c.surgeon.damp_g);
    r.get("damp_a", c.surgeon.damp_a);
    r.get("max_correlate", c.surgeon.max_correlate);
    r.get("addupdate", c.surgeon.addupdate);
    r.get("fisher", c.surgeon.fisher);
    r.get("cost", c.surgeon.cost);
    read_int_list(r.child("eval_shots"), source, "surgeon.eval_shots", c.surgeon.eval_shots);
    r.get("keep_activations_mb", c.surgeon.keep_activations_mb);
    r.get("final_loss", c.surgeon.final_loss);
    r.finish();
  }
}

void read_run_sections(MapReader& top, const std::string& source, Config& c) {
  {
    MapReader r(top.child("calibration"), "calibration", source);
    r.get("path", c.calibration.path);
    r.get("nsamples", c.calibration.nsamples);
    r.get("seqlen", c.calibration.seqlen);
    r.get("seed", c.calibration.seed);
    r.get("offsets", c.calibration.offsets);
    r.get("batch", c.calibration.batch);
    r.finish();
  }
  {
    MapReader r(top.child("output"), "output", source);
    r.get("dir", c.output.dir);
    r.get("metrics", c.output.metrics);
    r.get("checkpoint", c.output.checkpoint);
    r.get("export", c.output.export_dir);
    r.get("export_shard_mb", c.output.export_shard_mb);
    r.get("export_writers", c.output.export_writers);
    r.get("reconstruction_error", c.output.reconstruction_error);
    r.finish();
  }
  {
    MapReader r(top.child("parallel"), "parallel", source);
    r.get("stages", c.parallel.stages);
    r.get("data", c.parallel.data);
    r.get("memory_gb", c.parallel.memory_gb);
    r.get("watchdog_seconds", c.parallel.watchdog_seconds);
    r.finish();
  }
  top.get("determinism", c.determinism);
  {
    MapReader r(top.child("log"), "log", source);
    r.get("level", c.log.level);
    r.get("progress_seconds", c.log.progress_seconds);
    r.finish();
  }
}

// Checks of the values that no section's own validator covers.
void validate_device(const Config& c, const std::string& source) {
  if (c.device != "cpu" && c.device != "cuda")
    SCALPEL_INPUT_ERROR("{}: 'device' is '{}', expected cpu or cuda", source, c.device);
  if (c.threads < 0) SCALPEL_INPUT_ERROR("{}: 'threads' must be >= 0", source);
  if (c.cuda.tf32 != "off" && c.cuda.tf32 != "forward" && c.cuda.tf32 != "all")
    SCALPEL_INPUT_ERROR("{}: 'cuda.tf32' is '{}', expected off, forward or all", source, c.cuda.tf32);
  if (c.cuda.activations != "auto" && c.cuda.activations != "device" && c.cuda.activations != "host")
    SCALPEL_INPUT_ERROR("{}: 'cuda.activations' is '{}', expected auto, device or host", source, c.cuda.activations);
  if (c.cuda.forward_dtype != "auto" && c.cuda.forward_dtype != "fp32" && c.cuda.forward_dtype != "fp16" &&
      c.cuda.forward_dtype != "bf16")
    SCALPEL_INPUT_ERROR("{}: 'cuda.forward_dtype' is '{}', expected auto, fp32, fp16 or bf16", source,
                        c.cuda.forward_dtype);
  if (c.cpu.forward_dtype != "fp32" && c.cpu.forward_dtype != "fp16" && c.cpu.forward_dtype != "bf16")
    SCALPEL_INPUT_ERROR("{}: 'cpu.forward_dtype' is '{}', expected fp32, fp16 or bf16", source, c.cpu.forward_dtype);
  if (c.tokenizer.mode != "transformers" && c.tokenizer.mode != "sentencepiece")
    SCALPEL_INPUT_ERROR("{}: 'tokenizer.mode' is '{}', expected transformers or sentencepiece", source,
                        c.tokenizer.mode);
  if (c.weight_cache_mb < 0) SCALPEL_INPUT_ERROR("{}: 'weight_cache_mb' must be >= 0", source);
  if (c.eval.seqlen < 0 || c.eval.seqlen == 1) SCALPEL_INPUT_ERROR("{}: 'eval.seqlen' must be 0 (model maximum) or >= 2", source);
  if (c.eval.batch < 1) SCALPEL_INPUT_ERROR("{}: 'eval.batch' must be >= 1", source);
  if (c.eval.max_windows < 0) SCALPEL_INPUT_ERROR("{}: 'eval.max_windows' must be >= 0", source);
  if (c.eval.max_items < 0) SCALPEL_INPUT_ERROR("{}: 'eval.max_items' must be >= 0", source);
  if (c.log.progress_seconds < 0) SCALPEL_INPUT_ERROR("{}: 'log.progress_seconds' must be >= 0", source);
}

void validate_prune(const Config& c, const std::string& source) {
  static const std::set<std::string> methods{"magnitude", "wanda", "sparsegpt", "surgeon"};
  if (!methods.count(c.prune.method))
    SCALPEL_INPUT_ERROR("{}: 'prune.method' is '{}', expected magnitude, wanda, sparsegpt or surgeon", source,
                        c.prune.method);
  if (!(c.prune.sparsity >= 0 && c.prune.sparsity < 1))
    SCALPEL_INPUT_ERROR("{}: 'prune.sparsity' must be in [0, 1), got {}", source, c.prune.sparsity);
  if (c.prune.pattern == "structured" && c.prune.method != "surgeon")
    SCALPEL_INPUT_ERROR("{}: 'prune.pattern' structured (whole rows and columns) needs prune.method: surgeon", source);
  validate_surgeon(c, source);
  validate_allocation(c, source);
  validate_depth(c, source);
  if (c.prune.pattern != "unstructured" && c.prune.pattern != "structured") {
    const auto nm = parse_nm(c.prune.pattern);
    if (!nm)
      SCALPEL_INPUT_ERROR("{}: 'prune.pattern' is '{}', expected unstructured{} or N:M with 0 < N < M (e.g. 2:4)",
                          source, c.prune.pattern, c.prune.method == "surgeon" ? ", structured" : "");
    // Every method prunes N of M: another sparsity than N/M (the default 0.5 aside) would be ignored.
    const double nm_sparsity = static_cast<double>(nm->first) / static_cast<double>(nm->second);
    if (c.prune.sparsity != 0.5 && c.prune.sparsity != 0.0 && std::abs(c.prune.sparsity - nm_sparsity) > 1e-12)
      SCALPEL_INPUT_ERROR("{}: 'prune.sparsity' {} with prune.pattern {}: an N:M prune reaches N/M = {:g}, not another "
                          "fraction (leave prune.sparsity out)", source, c.prune.sparsity, c.prune.pattern, nm_sparsity);
  }
  if (c.prune.propagation != "pruned" && c.prune.propagation != "dense")
    SCALPEL_INPUT_ERROR("{}: 'prune.propagation' is '{}', expected pruned or dense", source, c.prune.propagation);
  if (!(c.prune.dampening > 0)) SCALPEL_INPUT_ERROR("{}: 'prune.dampening' must be > 0", source);
  if (c.prune.blocksize < 1) SCALPEL_INPUT_ERROR("{}: 'prune.blocksize' must be >= 1", source);
}

// True when `inner` is `outer` or lies inside it (lexically, after normalisation).
bool within(const std::filesystem::path& outer, const std::filesystem::path& inner) {
  return path_within(outer.lexically_normal(), inner.lexically_normal());
}

// The export replaces its folder: it must not be the run folder or hold the checkpoint or the
// metrics file; the metrics file must not be the checkpoint's folder either.
void check_output_paths(const Config& c, const std::string& source) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::absolute(c.output.dir.empty() ? "." : c.output.dir);
  const fs::path ck = dir / c.output.checkpoint;
  // The checkpoint is a folder of its own inside the run folder (its cleanup removes files no
  // commit records; the run folder holds the metrics and the export).
  if (within(ck, dir))
    SCALPEL_INPUT_ERROR("{}: 'output.checkpoint' is '{}', the run folder itself{}; name a folder of its own inside "
                        "output.dir (the default is ckpt)", source, c.output.checkpoint,
                        within(dir, ck) ? "" : " or a folder holding it");
  if (!c.output.metrics.empty() && within(ck, dir / c.output.metrics))
    SCALPEL_INPUT_ERROR("{}: 'output.metrics' is '{}', the checkpoint folder '{}' or inside it; name a file of its own "
                        "(the default is metrics.jsonl)", source, c.output.metrics, c.output.checkpoint);
  if (c.output.export_dir.empty()) return;
  const fs::path ex = dir / c.output.export_dir;
  if (!c.output.metrics.empty() && within(ex, dir / c.output.metrics) && !within(ex, dir))
    SCALPEL_INPUT_ERROR("{}: 'output.export' is '{}' and 'output.metrics' '{}': the export would replace the metrics "
                        "file; name each its own path", source, c.output.export_dir, c.output.metrics);
  if (within(ex, dir) || within(ex, ck))
    SCALPEL_INPUT_ERROR("{}: 'output.export' is '{}': the export replaces that folder, which would take the {} with it; "
                        "name a folder of its own (the default is model)",
                        source, c.output.export_dir, within(ex, dir) ? "run folder" : "checkpoint");
  if (within(ck, ex))
    SCALPEL_INPUT_ERROR("{}: 'output.export' is '{}', inside the checkpoint folder '{}'; name a folder beside it",
                        source, c.output.export_dir, c.output.checkpoint);
}

void validate_run(const Config& c, const std::string& source) {
  if (c.output.dir.empty())
    SCALPEL_INPUT_ERROR("{}: 'output.dir' is empty; name the run's folder ('.' for the working directory)", source);
  if (c.output.checkpoint.empty())
    SCALPEL_INPUT_ERROR("{}: 'output.checkpoint' is empty; name the checkpoint's folder inside output.dir (the "
                        "default is ckpt)", source);
  if (c.calibration.nsamples < 1) SCALPEL_INPUT_ERROR("{}: 'calibration.nsamples' must be >= 1", source);
  if (c.calibration.seqlen < 0 || c.calibration.seqlen == 1)
    SCALPEL_INPUT_ERROR("{}: 'calibration.seqlen' must be 0 (model maximum) or >= 2", source);
  if (c.calibration.batch < 1) SCALPEL_INPUT_ERROR("{}: 'calibration.batch' must be >= 1", source);
  if (c.parallel.stages < 1) SCALPEL_INPUT_ERROR("{}: 'parallel.stages' must be >= 1", source);
  if (c.parallel.data < 0) SCALPEL_INPUT_ERROR("{}: 'parallel.data' must be >= 0 (0 = world / stages)", source);
  if (!(c.parallel.memory_gb >= 0)) SCALPEL_INPUT_ERROR("{}: 'parallel.memory_gb' must be >= 0", source);
  if (!(c.parallel.watchdog_seconds >= 0))
    SCALPEL_INPUT_ERROR("{}: 'parallel.watchdog_seconds' must be >= 0 (0 = off)", source);
  if (!log::valid_level(c.log.level))
    SCALPEL_INPUT_ERROR("{}: 'log.level' is '{}', expected trace, debug, info, warn, error or off", source,
                        c.log.level);
  if (c.determinism != "fast" && c.determinism != "strict")
    SCALPEL_INPUT_ERROR("{}: 'determinism' is '{}', expected fast or strict", source, c.determinism);
  if (c.output.export_shard_mb < 1) SCALPEL_INPUT_ERROR("{}: 'output.export_shard_mb' must be >= 1", source);
  if (c.output.export_writers < 0)
    SCALPEL_INPUT_ERROR("{}: 'output.export_writers' must be >= 0 (ranks per node; 0 = every rank)", source);
  check_output_paths(c, source);
}

}  // namespace

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  YAML::Node root;
  // Errors name where the values came from: the file, the key=value arguments, or both.
  const std::string source = path.empty() ? (overrides.empty() ? "<defaults>" : "command line")
                                          : (overrides.empty() ? path : path + " or the command line");
  if (!path.empty()) {
    if (std::filesystem::is_directory(path))
      SCALPEL_INPUT_ERROR("{}: is a folder, not a config file (a model folder goes with --model)", path);
    try {
      auto docs = YAML::LoadAllFromFile(path);
      std::erase_if(docs, [](const YAML::Node& d) { return !d || d.IsNull(); });  // a trailing '---'
      if (docs.size() > 1)
        SCALPEL_INPUT_ERROR("{}: holds {} YAML documents ('---' separated); a config is one", path, docs.size());
      if (!docs.empty()) root = docs.front();
    } catch (const YAML::BadFile&) {
      SCALPEL_INPUT_ERROR("{}: cannot read the config file", path);
    } catch (const YAML::Exception& e) {
      SCALPEL_INPUT_ERROR("{}: not valid YAML: {}", path, e.what());
    }
  }
  if (!root || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  for (const auto& o : overrides) apply_override(root, o);

  Config c;
  MapReader top(root, "", source);
  if (root.IsMap())
    for (const auto& kv : root)
      if (kv.first.IsScalar()) c.given.push_back(kv.first.Scalar());  // other keys: top.finish() names them
  top.get("model", c.model);
  top.get("device", c.device);
  top.get("threads", c.threads);
  top.get("weight_cache_mb", c.weight_cache_mb);
  read_device_sections(top, source, c);
  read_prune_sections(top, source, c);
  read_method_sections(top, source, c);
  read_run_sections(top, source, c);
  top.finish();

  validate_device(c, source);
  validate_prune(c, source);
  validate_run(c, source);
  return c;
}

std::optional<std::pair<int, int>> parse_nm(const std::string& pattern) {
  const auto colon = pattern.find(':');
  if (colon == std::string::npos) return std::nullopt;
  try {
    std::size_t p1 = 0, p2 = 0;
    const int n = std::stoi(pattern.substr(0, colon), &p1);
    const int m = std::stoi(pattern.substr(colon + 1), &p2);
    if (p1 != colon || p2 != pattern.size() - colon - 1 || n <= 0 || m <= n) return std::nullopt;
    return std::make_pair(n, m);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

namespace {

// all: also the keys that do not decide the weights (a dump for the user, not an identity).
void emit_surgeon(YAML::Emitter& e, const Config& c, bool all) {
  e << YAML::Key << "surgeon" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "shots" << YAML::Value << c.surgeon.shots;
  e << YAML::Key << "structures" << YAML::Value << YAML::Flow << c.surgeon.structures;
  e << YAML::Key << "damp_g" << YAML::Value << c.surgeon.damp_g;
  e << YAML::Key << "damp_a" << YAML::Value << c.surgeon.damp_a;
  e << YAML::Key << "max_correlate" << YAML::Value << c.surgeon.max_correlate;
  e << YAML::Key << "addupdate" << YAML::Value << c.surgeon.addupdate;
  e << YAML::Key << "fisher" << YAML::Value << c.surgeon.fisher;
  e << YAML::Key << "cost" << YAML::Value << c.surgeon.cost;
  if (all) {
    e << YAML::Key << "eval_shots" << YAML::Value << YAML::Flow << c.surgeon.eval_shots;
    e << YAML::Key << "keep_activations_mb" << YAML::Value << c.surgeon.keep_activations_mb;
    e << YAML::Key << "final_loss" << YAML::Value << c.surgeon.final_loss;
  }
  e << YAML::EndMap;
}

void emit_allocation(YAML::Emitter& e, const Config& c, bool all) {
  const auto& a = c.allocation;
  e << YAML::Key << "allocation" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "owl_m" << YAML::Value << a.owl_m;
  e << YAML::Key << "owl_lambda" << YAML::Value << a.owl_lambda;
  e << YAML::Key << "alpha" << YAML::Value << a.alpha;
  e << YAML::Key << "hutchinson_samples" << YAML::Value << a.hutchinson_samples;
  e << YAML::Key << "epsilon" << YAML::Value << a.epsilon;
  e << YAML::Key << "weighted" << YAML::Value << a.weighted;
  e << YAML::Key << "granularity" << YAML::Value << a.granularity;
  if (!a.traces.empty() || all) e << YAML::Key << "traces" << YAML::Value << a.traces;
  e << YAML::EndMap;
}

void emit_depth(YAML::Emitter& e, const Config& c) {
  const auto& d = c.depth;
  e << YAML::Key << "depth" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "criterion" << YAML::Value << d.criterion;
  e << YAML::Key << "remove" << YAML::Value << d.remove;
  if (d.protect_set) e << YAML::Key << "protect" << YAML::Value << YAML::Flow << d.protect;
  e << YAML::Key << "merge" << YAML::Value << d.merge;
  e << YAML::Key << "interval" << YAML::Value << d.interval;
  e << YAML::Key << "threshold" << YAML::Value << d.threshold;
  e << YAML::Key << "windows" << YAML::Value << d.windows;
  e << YAML::Key << "greedy" << YAML::Value << d.greedy;
  e << YAML::EndMap;
}

// The sections that decide a prune's weights, in dump_config's layout. The surgeon section only
// for a surgeon prune, so that adding it left every other checkpoint's identity as it was (and
// likewise the allocation and sparsegpt keys at their defaults). all: every key, for
// --print-config, which is not an identity.
void emit_prune_sections(YAML::Emitter& e, const Config& c, bool all = false) {
  if (c.prune.method == "surgeon" || all) emit_surgeon(e, c, all);
  e << YAML::Key << "prune" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "method" << YAML::Value << c.prune.method;
  e << YAML::Key << "sparsity" << YAML::Value << c.prune.sparsity;
  e << YAML::Key << "pattern" << YAML::Value << c.prune.pattern;
  e << YAML::Key << "targets" << YAML::Value << YAML::Flow << c.prune.targets;
  e << YAML::Key << "propagation" << YAML::Value << c.prune.propagation;
  e << YAML::Key << "true_sequential" << YAML::Value << c.prune.true_sequential;
  e << YAML::Key << "dampening" << YAML::Value << c.prune.dampening;
  e << YAML::Key << "blocksize" << YAML::Value << c.prune.blocksize;
  if (c.prune.allocation != "uniform" || all) e << YAML::Key << "allocation" << YAML::Value << c.prune.allocation;
  e << YAML::EndMap;
  if (c.prune.allocation != "uniform" || all) emit_allocation(e, c, all);
  // Only what differs from the behaviour before the keys existed (saliency obs, every factor
  // whole: split_width 0), so that those checkpoints keep their identity; a prune's identity
  // passes split_width 0 when no factor of its model is that wide (prune_config_hash).
  const bool split = c.sparsegpt.split_width != 0 || all;
  if (c.sparsegpt.saliency != "obs" || split) {
    e << YAML::Key << "sparsegpt" << YAML::Value << YAML::BeginMap;
    if (c.sparsegpt.saliency != "obs" || all) e << YAML::Key << "saliency" << YAML::Value << c.sparsegpt.saliency;
    if (split) {
      e << YAML::Key << "split_width" << YAML::Value << c.sparsegpt.split_width;
      e << YAML::Key << "tile" << YAML::Value << c.sparsegpt.tile;
    }
    e << YAML::EndMap;
  }
  e << YAML::Key << "calibration" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "path" << YAML::Value << c.calibration.path;
  e << YAML::Key << "nsamples" << YAML::Value << c.calibration.nsamples;
  e << YAML::Key << "seqlen" << YAML::Value << c.calibration.seqlen;
  e << YAML::Key << "seed" << YAML::Value << c.calibration.seed;
  e << YAML::Key << "offsets" << YAML::Value << c.calibration.offsets;
  e << YAML::Key << "batch" << YAML::Value << c.calibration.batch;
  e << YAML::EndMap;
}

std::string fnv1a_hex(const std::string& text) {
  // FNV-1a 64 over canonical YAML: stable across runs and machines.
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : text) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return fmt::format("{:016x}", h);
}

}  // namespace

std::string dump_config(const Config& c, bool readable) {
  YAML::Emitter e;
  // 15 significant digits print every decimal of up to 15 digits as written (0.6, not the 17-digit
  // 0.59999999999999998 that round-trips the double); the hash keeps the 17.
  if (readable) e.SetDoublePrecision(15);
  e << YAML::BeginMap;
  e << YAML::Key << "model" << YAML::Value << c.model;
  e << YAML::Key << "device" << YAML::Value << c.device;
  e << YAML::Key << "threads" << YAML::Value << c.threads;
  e << YAML::Key << "weight_cache_mb" << YAML::Value << c.weight_cache_mb;
  e << YAML::Key << "cuda" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "tf32" << YAML::Value << c.cuda.tf32;
  e << YAML::Key << "activations" << YAML::Value << c.cuda.activations;
  e << YAML::Key << "forward_dtype" << YAML::Value << c.cuda.forward_dtype;
  e << YAML::EndMap;
  e << YAML::Key << "cpu" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "forward_dtype" << YAML::Value << c.cpu.forward_dtype;
  e << YAML::EndMap;
  e << YAML::Key << "tokenizer" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "mode" << YAML::Value << c.tokenizer.mode;
  e << YAML::EndMap;
  e << YAML::Key << "eval" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "seqlen" << YAML::Value << c.eval.seqlen;
  e << YAML::Key << "batch" << YAML::Value << c.eval.batch;
  e << YAML::Key << "max_windows" << YAML::Value << c.eval.max_windows;
  e << YAML::Key << "sets" << YAML::Value << YAML::BeginSeq;
  for (const auto& s : c.eval.sets) {
    e << YAML::BeginMap << YAML::Key << "name" << YAML::Value << s.name << YAML::Key << "preset" << YAML::Value
      << s.preset << YAML::Key << "path" << YAML::Value << s.path << YAML::EndMap;
  }
  e << YAML::EndSeq;
  e << YAML::Key << "tasks" << YAML::Value << YAML::BeginSeq;
  for (const auto& t : c.eval.tasks) {
    e << YAML::BeginMap << YAML::Key << "name" << YAML::Value << t.name << YAML::Key << "preset" << YAML::Value
      << t.preset << YAML::Key << "path" << YAML::Value << t.path << YAML::EndMap;
  }
  e << YAML::EndSeq;
  e << YAML::Key << "max_items" << YAML::Value << c.eval.max_items;
  e << YAML::Key << "add_bos" << YAML::Value << c.eval.add_bos;
  e << YAML::EndMap;
  emit_prune_sections(e, c, /*all=*/true);
  emit_depth(e, c);
  e << YAML::Key << "output" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "dir" << YAML::Value << c.output.dir;
  e << YAML::Key << "metrics" << YAML::Value << c.output.metrics;
  e << YAML::Key << "checkpoint" << YAML::Value << c.output.checkpoint;
  e << YAML::Key << "export" << YAML::Value << c.output.export_dir;
  e << YAML::Key << "export_shard_mb" << YAML::Value << c.output.export_shard_mb;
  e << YAML::Key << "export_writers" << YAML::Value << c.output.export_writers;
  e << YAML::Key << "reconstruction_error" << YAML::Value << c.output.reconstruction_error;
  e << YAML::EndMap;
  e << YAML::Key << "parallel" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "stages" << YAML::Value << c.parallel.stages;
  e << YAML::Key << "data" << YAML::Value << c.parallel.data;
  e << YAML::Key << "memory_gb" << YAML::Value << c.parallel.memory_gb;
  e << YAML::Key << "watchdog_seconds" << YAML::Value << c.parallel.watchdog_seconds;
  e << YAML::EndMap;
  e << YAML::Key << "determinism" << YAML::Value << c.determinism;
  e << YAML::Key << "log" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "level" << YAML::Value << c.log.level;
  e << YAML::Key << "progress_seconds" << YAML::Value << c.log.progress_seconds;
  e << YAML::EndMap << YAML::EndMap;
  return std::string(e.c_str()) + "\n";
}

std::string config_hash(const Config& c) { return fnv1a_hex(dump_config(c)); }

namespace {

std::string prune_identity_text(const Config& c, const std::string& forward_dtype) {
  YAML::Emitter e;
  e << YAML::BeginMap;
  emit_prune_sections(e, c);
  e << YAML::Key << "determinism" << YAML::Value << c.determinism;
  if (!forward_dtype.empty()) e << YAML::Key << "forward_dtype" << YAML::Value << forward_dtype;
  e << YAML::EndMap;
  return e.c_str();
}

// A YAML tree as dotted keys to scalar text (lists in flow form).
void flatten(const YAML::Node& n, const std::string& prefix, nlohmann::json& out) {
  if (n.IsMap()) {
    for (const auto& kv : n) flatten(kv.second, prefix.empty() ? kv.first.Scalar() : prefix + "." + kv.first.Scalar(), out);
    return;
  }
  if (n.IsScalar()) {
    // Numbers in their shortest exact form (0.6, not the 17 digits the hash text holds).
    std::string s = n.Scalar();
    char* end = nullptr;
    const double x = std::strtod(s.c_str(), &end);
    if (!s.empty() && end == s.c_str() + s.size() && s.find_first_of(".eE") != std::string::npos)
      s = nlohmann::json(x).dump();
    out[prefix] = s;
    return;
  }
  YAML::Emitter e;
  e << YAML::Flow << n;
  out[prefix] = e.c_str();
}

}  // namespace

std::string prune_identity_hash(const Config& c, const std::string& forward_dtype) {
  return fnv1a_hex(prune_identity_text(c, forward_dtype) + "\n");
}

nlohmann::json prune_identity_settings(const Config& c, const std::string& forward_dtype) {
  nlohmann::json out = nlohmann::json::object();
  flatten(YAML::Load(prune_identity_text(c, forward_dtype)), "", out);
  return out;
}

}  // namespace scalpel::app
