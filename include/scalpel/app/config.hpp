// The run configuration: a YAML file (yaml-cpp stays inside app) plus dotted key=value overrides,
// parsed into validated structs. Unknown keys and wrong types are input errors naming the key path.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace scalpel::app {

struct EvalSet {
  std::string name;    // label in outputs (default: the preset)
  std::string preset;  // wikitext2 | ptb | c4 | text
  std::string path;
};

struct Config {
  std::string model;          // Hugging Face model folder
  std::string device = "cpu";
  int threads = 0;            // BLAS/OpenMP threads per rank; 0 = cores / ranks on the node
  std::int64_t weight_cache_mb = 8192;  // decoder layers kept resident up to this size

  struct Eval {
    std::int64_t seqlen = 0;       // 0 = max_position_embeddings
    std::int64_t batch = 1;        // windows per forward pass
    std::int64_t max_windows = 0;  // 0 = all (a quick look at the first few)
    std::vector<EvalSet> sets;
  } eval;

  struct Output {
    std::string dir = "runs/default";
    std::string metrics = "metrics.jsonl";  // relative to dir; "" disables
  } output;

  struct Log {
    std::string level = "info";
    double progress_seconds = 5.0;  // interval between progress lines; 0 disables
  } log;
};

// Reads `path` (may be empty: defaults only), applies overrides ("eval.seqlen=256",
// "eval.sets=[{preset: ptb, path: p.txt}]"; values are YAML), and validates.
Config load_config(const std::string& path, const std::vector<std::string>& overrides);
// The resolved configuration as YAML.
std::string dump_config(const Config& cfg);
// A stable hash of the resolved configuration (hex), for manifests and metrics.
std::string config_hash(const Config& cfg);

}  // namespace scalpel::app
