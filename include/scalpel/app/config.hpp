// The run configuration: a YAML file (yaml-cpp stays inside app) plus dotted key=value overrides,
// parsed into validated structs. Unknown keys and wrong types are input errors naming the key path.
#pragma once
#include <algorithm>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>
#include <string>
#include <vector>

namespace scalpel::app {

struct EvalSet {
  std::string name;    // label in outputs (default: the preset)
  std::string preset;  // wikitext2 | ptb | c4 | text
  std::string path;
};

// A zero-shot task: a JSON-lines file read through a preset (text/tasks.hpp).
struct EvalTask {
  std::string name;    // label in outputs (default: the preset)
  std::string preset;  // piqa | hellaswag | arc_easy | arc_challenge | winogrande | boolq | rte |
                       // openbookqa | copa | lambada | mc
  std::string path;
};

struct Config {
  std::string model;          // Hugging Face model folder
  std::string device = "cpu";
  int threads = 0;            // BLAS/OpenMP threads per rank; 0 = cores / ranks on the node
  std::int64_t weight_cache_mb = 8192;  // decoder layers kept resident up to this size

  // device: cuda only. TF32 (tensor-core fp32 with 10-bit mantissas): off (the reference's
  // setting), forward (the forward's GEMMs and attention), or all (the Hessians' products too).
  // forward_dtype: the dtype of the prune's calibration forward (magnitude, Wanda, SparseGPT) and
  // of the evaluation (`scalpel eval`, the prune's own): auto (the checkpoint's fp16/bf16, as the
  // reference runs it; fp32 for an fp32 checkpoint), fp32, fp16 or bf16. Hessians,
  // factorisations, sweeps and the LM head stay fp32.
  // Activations: where the calibration activations live between layers: device, host (staged to
  // the GPU a batch at a time), or auto (device when they fit beside the layer's working set).
  struct Cuda {
    std::string tf32 = "off";
    std::string activations = "auto";
    std::string forward_dtype = "auto";
  } cuda;
  // device: cpu only. forward_dtype fp32 (the default), or fp16 / bf16: the GPU's low-precision
  // forward with the same roundings, computed in fp32 and rounded (slower than fp32; for checking
  // a GPU run or reproducing its masks on a CPU).
  struct Cpu {
    std::string forward_dtype = "fp32";
  } cpu;

  // SentencePiece models: transformers (transformers 5's ids, the default) or sentencepiece
  // (sp.encode per piece, as the original LLaMA code); byte-level BPE is the same in both.
  struct Tokenizer {
    std::string mode = "transformers";
  } tokenizer;

  struct Eval {
    std::int64_t seqlen = 0;       // 0 = max_position_embeddings
    std::int64_t batch = 1;        // windows per forward pass
    std::int64_t max_windows = 0;  // 0 = all (a quick look at the first few)
    std::vector<EvalSet> sets;
    std::vector<EvalTask> tasks;   // zero-shot tasks, scored as lm-evaluation-harness does
    std::int64_t max_items = 0;    // tasks: 0 = every item; N = the first N of each file
    bool add_bos = false;          // tasks: add the tokenizer's special tokens (HFLM add_bos_token)
  } eval;

  struct Prune {
    std::string method = "sparsegpt";      // magnitude | wanda | sparsegpt | surgeon
    double sparsity = 0.5;                  // fraction pruned, in [0, 1) (unstructured, structured)
    std::string pattern = "unstructured";  // unstructured | N:M (N pruned of every M, e.g. 2:4) |
                                            // structured (surgeon: whole rows and columns)
    std::vector<std::string> targets;       // globs over linear names ("self_attn.*", "fc1"); empty = all
    std::string propagation = "pruned";    // inputs of the next layer: pruned | dense
    bool true_sequential = false;           // re-collect statistics after each sub-block
    double dampening = 0.01;                // SparseGPT: fraction of mean(diag H) added
    std::int64_t blocksize = 128;           // SparseGPT: columns per block
    // How the sparsity is spread over the layers (magnitude, Wanda, SparseGPT): uniform (every
    // linear gets prune.sparsity), owl (outlier-weighted per block) or sensitivity (per matrix,
    // from the loss Hessian's trace). README "Allocation".
    std::string allocation = "uniform";
  } prune;

  // prune.allocation: owl | sensitivity.
  struct Allocation {
    double owl_m = 5;             // OWL: outlier when a Wanda score exceeds owl_m x the block's mean
    double owl_lambda = 0.08;     // OWL: sparsities spread over [s - λ, s + λ] (N:M: weights per group)
    double alpha = 0.1;           // sensitivity: densities spread over [1 - s - α, 1 - s + α]
    std::int64_t hutchinson_samples = 8;  // sensitivity: Rademacher probes of the Hessian trace
    double epsilon = 1e-3;        // sensitivity: finite-difference step of Hv, relative to each matrix's RMS
    bool weighted = false;        // false: the paper's rank rule; true: rescaled so the parameter-weighted
                                  // sparsity is prune.sparsity
    std::string granularity = "block";  // block (one sparsity per decoder block) | matrix
    // sensitivity: a JSON file caching the trace estimate: read when it holds the estimate of this
    // model, calibration and probes; written otherwise (reuse it across sparsities). "" = none.
    std::string traces;
  } allocation;

  // SparseGPT's saliency inside the block sweep: obs (w²/[H⁻¹]²_mm, the reference) or isc
  // (w²·(H_mm + 1/[H⁻¹]_mm), the sensitivity paper's).
  // Factors at least split_width wide (0 = none) are made by all data ranks together in row
  // panels of `tile` rows (prune/split_factor.hpp), at every rank count, so that the bits do not
  // depend on it; narrower ones go whole to one rank each.
  struct SparseGpt {
    std::string saliency = "obs";
    std::int64_t split_width = 16384;
    std::int64_t tile = 1024;
  } sparsegpt;

  // `scalpel depth`: removing whole decoder blocks (README "Depth pruning").
  struct Depth {
    std::string criterion = "bi";   // bi (ShortGPT) | angular (Gromov et al.) | deepest (their simple rule) |
                                    // laco | ppl (SLEB-style greedy)
    double remove = 1;              // blocks to remove: a count (>= 1) or a fraction of the blocks (< 1)
    std::vector<std::int64_t> protect;  // blocks never removed; default: none, ppl: the first and the last
    bool protect_set = false;       // protect was given (even as [])
    std::int64_t merge = 2;         // laco: blocks combined per merge (C: block l and the C - 1 after it)
    std::int64_t interval = 1;      // laco: blocks skipped after an accepted merge (I)
    double threshold = 0.45;        // laco: cosine similarity a merge must keep (T)
    std::int64_t windows = 0;       // laco: calibration windows of the similarity check; 0 = all
    bool greedy = true;             // ppl: remove one block per round (SLEB); false: the n best of one
                                    // round (Shortened LLaMA's one-shot ranking)
  } depth;

  // LLM Surgeon (prune.method: surgeon): K shots at s_k = k·s/K, the Kronecker-factored curvature
  // re-estimated on the current model each shot (README "LLM Surgeon").
  struct Surgeon {
    std::int64_t shots = 40;
    std::vector<std::string> structures{"rows", "columns"};  // pattern structured: rows, columns
    double damp_g = 0.01, damp_a = 0.01;  // relative damping of G and A
    std::int64_t max_correlate = 2000;    // weights (rows or columns, structured) solved jointly; 0 = all
    bool addupdate = true;                // later chunks see the earlier chunks' updates
    std::string fisher = "empirical";     // empirical (true labels) | sampled (labels drawn from the model)
    std::string cost = "surgeon";         // surgeon | kobd | magnitude
    std::vector<std::int64_t> eval_shots;  // shots after which eval.sets are measured (the last always)
    // Every layer's forward intermediates are kept for the backward when they fit in this many MB
    // (one forward and one backward per batch); otherwise each layer's forward is recomputed.
    std::int64_t keep_activations_mb = 8192;
    // The mean calibration loss after the last shot (one more forward pass over the windows).
    bool final_loss = false;
  } surgeon;

  struct Calibration {
    std::string path = "data/corpus/calib.txt";
    std::int64_t nsamples = 128;
    std::int64_t seqlen = 0;    // 0 = max_position_embeddings
    std::uint64_t seed = 0;
    std::string offsets;        // file of window start offsets (overrides nsamples/seed)
    std::int64_t batch = 8;     // sequences per forward pass
  } calibration;

  struct Output {
    std::string dir = "runs/default";
    std::string metrics = "metrics.jsonl";  // relative to dir; "" disables
    std::string checkpoint = "ckpt";        // relative to dir: the resumable state
    std::string export_dir = "model";       // relative to dir: pruned model (safetensors); "" skips
    std::int64_t export_shard_mb = 5000;    // shard the export past this size
    int export_writers = 1;                 // ranks per node writing export shards (0: every rank)
    // Each linear's reconstruction error ‖ΔW Xᵀ‖² from its Hessian (4 rows d² FLOPs: at OPT-175B
    // widths about a fifth of a GPU layer's time); false leaves the metrics' error fields null.
    bool reconstruction_error = true;
  } output;

  // The process grid (DESIGN.md section 2) and the run's failure handling.
  struct Parallel {
    int stages = 1;                  // pipeline stages: contiguous layers each
    int data = 0;                    // ranks per stage (the data group); 0 = world / stages
    double memory_gb = 0;            // per-rank memory the plan must fit in; 0 = no limit
    double watchdog_seconds = 1800;  // abort when a rank makes no progress this long; 0 = off
  } parallel;
  // fast: statistics summed in floating point (rank-count invariance up to reassociation);
  // strict: summed exactly (integer accumulators), bitwise the same at any rank count.
  std::string determinism = "fast";

  struct Log {
    std::string level = "info";
    double progress_seconds = 5.0;  // interval between progress lines; 0 disables
  } log;

  // The top-level keys the file and the overrides gave (not a setting: neither printed nor
  // hashed); `scalpel plan` plans a depth job for a config with `depth:` and no `prune:`.
  std::vector<std::string> given;
  bool gave(const std::string& key) const { return std::find(given.begin(), given.end(), key) != given.end(); }
};

// Reads `path` (may be empty: defaults only), applies overrides ("eval.seqlen=256",
// "eval.sets=[{preset: ptb, path: p.txt}]"; values are YAML), and validates.
Config load_config(const std::string& path, const std::vector<std::string>& overrides);
// "2:4" -> {2, 4} (N pruned of every M), nullopt when malformed or not 0 < N < M.
std::optional<std::pair<int, int>> parse_nm(const std::string& pattern);
// The resolved configuration as YAML. readable: numbers to 15 significant digits, as a user
// writes them (--print-config); otherwise 17, every double exact (what config_hash hashes).
std::string dump_config(const Config& cfg, bool readable = false);
// A stable hash of the resolved configuration (hex), for metrics.
std::string config_hash(const Config& cfg);
// A stable hash of what decides a prune's weights alone (the prune and calibration sections and
// determinism): the checkpoint's identity, unchanged by any other setting, including settings a
// later release adds.
// forward_dtype: the calibration forward's resolved dtype when it is not fp32 ("" otherwise, which
// keeps the hashes of fp32 runs as they were).
std::string prune_identity_hash(const Config& cfg, const std::string& forward_dtype = "");
// What that hash covers, flat ("prune.sparsity": "0.5", ...): kept in the checkpoint so that a
// resume refused for another configuration names the keys that changed.
nlohmann::json prune_identity_settings(const Config& cfg, const std::string& forward_dtype = "");

}  // namespace scalpel::app
