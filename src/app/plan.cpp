// `scalpel plan`: the cost of a prune job per rank, from config.json alone (DESIGN.md sections 2,
// 3 and 7), and the refusal of a job that will not fit parallel.memory_gb before it starts.
//
// The model of the distributed sequential prune it projects:
//  - Grid: world = stages x data; rank = stage x data + data_index (dist::make_grid). Stage s owns
//    the contiguous layers dist::block_range(layers, stages, s). The calibration windows (nsamples
//    x seqlen tokens) are cut into chunks of calibration.batch sequences, and the chunks are split
//    over the data ranks with block_range, so a data rank holds about chunks/data x batch sequences.
//  - Per layer, every rank of a stage: reads the whole layer (every rank runs the forward), runs
//    the statistics pass(es) over its sequences (one, or one per input group with
//    prune.true_sequential), all-reduces the statistics over its data group, factorises its share
//    of the Hessians (one per input group; the groups go to the data ranks greedily by d³, and each
//    factor is broadcast from its owner: app/factor_share.hpp; a group at least
//    sparsegpt.split_width wide is factorised by all of them in panels: prune/split_factor.hpp),
//    sweeps its row slice (rows / data) of every linear, all-gathers the pruned rows (stored dtype
//    + 1-byte mask), and runs the propagation pass.
//  - Stages run one after another: layer l+1 needs the outputs of the pruned layer l for every
//    calibration sequence, so a stage starts when the stage before has finished (its activations
//    are sent once per stage boundary). More stages cut each rank's reads, not the job's time.
//  - Memory is counted in phases (statistics pass, the prune of each input group, propagation);
//    the peak is the largest phase. The terms, in bytes:
//      (a) activations: the rank's tokens x hidden x F (F = 4 for the fp32 forward, 2 for fp16/bf16);
//          a second copy with dense propagation;
//      (b) the layer's weights in the forward dtype twice (dense + working copy), the next layer's
//          as stored (its prefetch: on the device with a GPU, in host memory on a CPU), the forward
//          temporaries of one chunk (batch x seqlen tokens x max(q/k/v width, ffn) x F x 3) and its
//          attention scores (batch x heads x seqlen x seqlen x 4, and x 2 more for a 2-byte P);
//      (c) statistics, per input group collected in the pass (all groups at once; one at a time
//          with true_sequential): while collecting, the d x d fp32 scratch each batch's x^T x
//          lands in plus the sum over the upper triangle, float64 (4 d (d+1) bytes) or with
//          determinism: strict exact bins (prune::ExactSum: 3 int64, 12 d (d+1) bytes); after the
//          all-reduce, the fp32 d x d Hessian; Wanda's d-vector likewise;
//      (d) SparseGPT's factorisation (one more d x d fp32; with several data ranks, the factors of
//          every group of the pass at once, owned or received; a shared factor also its scratch
//          and inverse diagonal tiles and a panel in flight) and the sweep's row slice
//          (rows/data x d x 4), its mask (1 byte per entry) and Err (rows/data x blocksize x 4);
//      (e) the gathered full pruned weight (rows x cols x 4 + mask);
//      plus the fp32 embeddings (stage 0) and head (last stage), and the decoder layers the weight
//      cache keeps besides the current one (up to weight_cache_mb).
//  - FLOPs per layer: forward 2 x tokens x linear weights + attention 4 x tokens x seqlen x width,
//    per pass; Hessians tokens x d^2 per group (syrk); factorisation 2/3 d^3 per group the rank
//    owns (potrf + trtri), and for a factor at least sparsegpt.split_width wide the rank's panels
//    (prune::shared_factor_cost), whose time follows the shared factor's critical path; the
//    sweep's lazy updates and in-block updates on the row slice; the reconstruction error
//    4 x rows/data x d^2 per linear. Time = FLOPs / rate + bytes / network + bytes / read, where
//    only a layer's read overlaps the work of the layer before (the prefetch); a 2-byte forward
//    on a GPU counts its FLOPs at 16x the rate (tensor cores), and its Hessians (full GEMMs of the
//    2-byte activations) at 8x. The rates are GEMM ceilings, so where norms, softmax and copies
//    weigh (small models) the run is slower: opt-mini, 2 cores, measured 3.0 s per layer against
//    1.9 s planned.
//  - prune.allocation adds its pass before the layers (allocation_plan): its time to the job's,
//    and its memory as one more phase, which for the sensitivity estimate is often the peak.
#include "scalpel/app/plan.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <sstream>
#include <thread>

#include "scalpel/core/error.hpp"
#include "scalpel/dist/comm.hpp"
#include "scalpel/io/hf_checkpoint.hpp"
#include "scalpel/prune/split_factor.hpp"
#include "scalpel/text/calibration.hpp"
#include "allocation_run.hpp"
#include "factor_share.hpp"
#include "plan_common.hpp"
#include "run_common.hpp"

namespace fs = std::filesystem;

namespace scalpel::app {
namespace {

using json = nlohmann::json;
using I = std::int64_t;
using namespace plan_detail;

constexpr double kNetGbps = 12.5;            // 100 Gb/s per rank
constexpr double kReadGbps = 2;              // per rank, from the checkpoint's filesystem
constexpr double kWriteGbps = 2;             // per rank, the export's writes

I ceil_div(I a, I b) { return (a + b - 1) / b; }

// A group of target linears that read the same input (one Hessian).
struct Group {
  int id = 0;
  I cols = 0;
  std::vector<model::LinearSpec> linears;
  std::string label;  // "q_proj/k_proj/v_proj"
};

// The linears this job prunes, grouped by shared input, as prune_run selects them.
std::vector<Group> target_groups(const model::ModelSpec& spec, const std::vector<std::string>& globs) {
  std::vector<Group> out;
  for (const auto& g : spec.linear_groups(globs, "config: 'prune.targets'")) {
    Group o{g.input_group, g.linears.front().in, g.linears, ""};
    for (const auto& l : g.linears) {
      const auto dot = l.name.rfind('.');
      if (!o.label.empty()) o.label += '/';
      o.label += l.name.substr(dot == std::string::npos ? 0 : dot + 1);
    }
    out.push_back(std::move(o));
  }
  return out;
}

struct TensorRef {
  std::string name;  // canonical (ModelSpec) name
  I numel = 0;
};

std::vector<TensorRef> layer_tensors(const model::ModelSpec& spec, I layer) {
  std::vector<TensorRef> t;
  const auto p = spec.layer_prefix(layer);
  for (const auto& l : spec.linears()) {
    t.push_back({p + l.name + ".weight", l.out * l.in});
    if (l.bias) t.push_back({p + l.name + ".bias", l.out});
  }
  for (const auto& n : spec.layer_norm_tensors()) t.push_back({p + n, spec.hidden});
  return t;
}

// What stage 0 needs before layer 0: token (and OPT position) embeddings, OPT's project_in.
std::vector<TensorRef> first_stage_tensors(const model::ModelSpec& spec) {
  std::vector<TensorRef> t{{spec.embed_tokens_name(), spec.vocab_size * spec.word_embed_proj_dim}};
  if (spec.family == model::Family::opt) {
    t.push_back({"model.decoder.embed_positions.weight", (spec.max_positions + spec.position_offset) * spec.hidden});
    if (spec.word_embed_proj_dim != spec.hidden)
      t.push_back({"model.decoder.project_in.weight", spec.hidden * spec.word_embed_proj_dim});
  }
  return t;
}

// What the last stage needs after the last layer (the evaluation): final norm, project_out, head.
// A tied head is the embedding table, which stage 0 already holds when it is also the last stage.
std::vector<TensorRef> last_stage_tensors(const model::ModelSpec& spec, bool also_first) {
  std::vector<TensorRef> t;
  if (spec.final_norm) {
    const auto p = spec.final_norm_prefix();
    if (spec.family == model::Family::llama || spec.norm_affine) t.push_back({p + ".weight", spec.hidden});
    if (spec.family == model::Family::opt && spec.norm_affine) t.push_back({p + ".bias", spec.hidden});
  }
  if (spec.family == model::Family::opt && spec.word_embed_proj_dim != spec.hidden)
    t.push_back({"model.decoder.project_out.weight", spec.hidden * spec.word_embed_proj_dim});
  if (!spec.tie_embeddings)
    t.push_back({"lm_head.weight", spec.vocab_size * spec.word_embed_proj_dim});
  else if (!also_first)
    t.push_back({spec.embed_tokens_name(), spec.vocab_size * spec.word_embed_proj_dim});
  return t;
}

I numel_of(const std::vector<TensorRef>& ts) {
  I n = 0;
  for (const auto& t : ts) n += t.numel;
  return n;
}

std::string range_str(I first, I last) {
  return first == last ? fmt::format("{}", first) : fmt::format("{}-{}", first, last);
}

int torch_dtype_bytes(const std::string& s) {
  if (s == "float16" || s == "half" || s == "fp16" || s == "bfloat16" || s == "bf16") return 2;
  if (s == "float32" || s == "float" || s == "fp32") return 4;
  if (s == "float64" || s == "double") return 8;
  return 0;
}

// FLOPs of the SparseGPT sweep's lazy updates, summed exactly over the column blocks:
// after block [c0, c1) the remaining columns get W[:, c1:] -= Err U[block, c1:].
double lazy_update_flops(I rows, I cols, I bs) {
  double f = 0;
  for (I c0 = 0; c0 < cols; c0 += bs) {
    const I c1 = std::min(cols, c0 + bs);
    f += 2.0 * static_cast<double>(rows) * static_cast<double>(c1 - c0) * static_cast<double>(cols - c1);
  }
  return f;
}

}  // namespace

PlanModel load_plan_model(const std::string& folder) {
  const fs::path dir(folder);
  SCALPEL_CHECK_INPUT(fs::is_directory(dir), "{}: not a model folder ({})", folder,
                      fs::exists(dir) ? "it is a file; name the folder that holds config.json" : "no such directory");
  const fs::path cfg_path = dir / "config.json";
  std::ifstream in(cfg_path, std::ios::binary);
  SCALPEL_CHECK_INPUT(in, "{}: cannot open (missing or unreadable)", cfg_path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  json cfg;
  try {
    cfg = json::parse(ss.str());
  } catch (const json::exception& e) {
    SCALPEL_INPUT_ERROR("{}: not valid JSON: {}", cfg_path.string(), e.what());
  }
  PlanModel pm;
  pm.spec = model::ModelSpec::from_config(cfg, cfg_path.string());
  // The stored dtype: torch_dtype (newer transformers write "dtype"); absent means float32, as
  // from_pretrained assumes.
  const char* key = cfg.contains("torch_dtype") ? "torch_dtype" : "dtype";
  if (auto it = cfg.find(key); it != cfg.end() && !it->is_null()) {
    SCALPEL_CHECK_INPUT(it->is_string(), "{}: key '{}' has the wrong type (not a string): {}", cfg_path.string(), key,
                        it->dump());
    pm.dtype_name = it->get<std::string>();
    pm.dtype_bytes = torch_dtype_bytes(pm.dtype_name);
    SCALPEL_CHECK_INPUT(pm.dtype_bytes > 0, "{}: '{}' is '{}', expected float16, bfloat16 or float32",
                        cfg_path.string(), key, pm.dtype_name);
  } else {
    pm.dtype_name = "float32 (torch_dtype absent)";
    pm.dtype_bytes = 4;
  }
  // Stored sizes from the safetensors headers when the weights are there (headers only).
  if (fs::exists(dir / "model.safetensors") || fs::exists(dir / "model.safetensors.index.json")) {
    const io::HfCheckpoint ck(dir);
    check_layer_tensors(ck, pm.spec);  // a plan of weights config.json does not describe is no plan
    auto add = [&](const std::vector<TensorRef>& ts) {
      for (const auto& t : ts) {
        const auto stored = ck.resolve(t.name);
        if (stored.empty()) continue;
        const auto& info = ck.info(stored);
        pm.tensor_bytes[t.name] = static_cast<I>(info.end - info.begin);
      }
    };
    for (I l = 0; l < pm.spec.layers; ++l) add(layer_tensors(pm.spec, l));
    add(first_stage_tensors(pm.spec));
    add(last_stage_tensors(pm.spec, false));
  }
  return pm;
}

// Bytes per element of the calibration forward's weights and activations: 2 for a low-precision
// forward (cuda.forward_dtype fp16/bf16, or auto on a 2-byte checkpoint; cpu.forward_dtype), 4 for fp32.
I forward_bytes(const PlanInput& in) {
  const Config& cfg = in.cfg;
  if (cfg.prune.method == "surgeon") return 4;
  const std::string& want = cfg.device == "cuda" ? cfg.cuda.forward_dtype : cfg.cpu.forward_dtype;
  if (want == "fp16" || want == "bf16") return 2;
  return want == "auto" && in.dtype_bytes == 2 ? 2 : 4;
}

namespace {

// ---- make_plan in parts: the job, the rates, the per-layer terms every rank shares, a stage's
// reads and writes, and per rank its memory phases, its FLOPs and its times. ----

// The grid (dist::grid_data, as the run checks it), the job's settings and the stored
// sizes.
struct Job {
  const model::ModelSpec& spec;
  const PlanInput& in;
  const Config& cfg;
  int S = 1, D = 1;
  bool sparsegpt = false, wanda = false, strict = false;
  bool hessian = false;  // collected: SparseGPT's input, every method's reconstruction error
  // cuda.activations host: the calibration activations live in host memory, a batch at a time on
  // the GPU (make_plan decides auto as the run does, with parallel.memory_gb for the GPU's memory).
  bool host_activations = false;
  I copies = 1, T = 0, N = 0, B = 0, bs = 0, chunks = 0;
  std::vector<Group> groups;

  Job(const model::ModelSpec& sp, const PlanInput& pi) : spec(sp), in(pi), cfg(pi.cfg) {
    SCALPEL_CHECK_INPUT(in.world >= 1, "--ranks must be >= 1, got {}", in.world);
    S = cfg.parallel.stages;
    D = dist::grid_data(in.world, S, cfg.parallel.data);
    SCALPEL_CHECK_INPUT(S <= spec.layers, "config: 'parallel.stages' {} exceeds the model's {} layers (a stage owns at "
                        "least one layer)", S, spec.layers);
    sparsegpt = cfg.prune.method == "sparsegpt";
    wanda = cfg.prune.method == "wanda";
    hessian = sparsegpt || cfg.output.reconstruction_error;
    host_activations = cfg.device == "cuda" && cfg.cuda.activations == "host";
    strict = cfg.determinism == "strict";
    copies = cfg.prune.propagation == "dense" ? 2 : 1;
    T = cfg.calibration.seqlen > 0 ? cfg.calibration.seqlen : spec.max_positions;
    SCALPEL_CHECK_INPUT(T <= spec.max_positions,
                        "config: 'calibration.seqlen' {} exceeds the model's max_position_embeddings {}", T,
                        spec.max_positions);
    N = cfg.calibration.nsamples;
    B = cfg.calibration.batch;
    bs = cfg.prune.blocksize;
    chunks = ceil_div(N, B);
    // As the prune refuses it (run_common's calibration_shard): every data rank needs a batch.
    SCALPEL_CHECK_INPUT(chunks >= D,
                        "config: {} calibration windows make {} batches of 'calibration.batch' {}, fewer than the {} "
                        "ranks of a data group: lower calibration.batch or use fewer ranks per stage",
                        N, chunks, B, D);
    groups = target_groups(spec, cfg.prune.targets);
    if (const auto nm = parse_nm(cfg.prune.pattern))  // as the prune refuses it
      check_nm_widths(spec.linear_groups(cfg.prune.targets, "config: 'prune.targets'"), nm->first, nm->second);
  }
  // Factors made by all data ranks together (prune/split_factor.hpp).
  bool shared_factor(I width) const {
    return sparsegpt && cfg.sparsegpt.split_width > 0 && width >= cfg.sparsegpt.split_width;
  }
  I stored(const TensorRef& t) const {
    auto it = in.tensor_bytes.find(t.name);
    return it != in.tensor_bytes.end() ? it->second : t.numel * in.dtype_bytes;
  }
  I stored_sum(const std::vector<TensorRef>& ts) const {
    I b = 0;
    for (const auto& t : ts) b += stored(t);
    return b;
  }
};

struct Rates {
  double gflops = 0, forward_gflops = 0, stats_gflops = 0, net = 0, rd = 0, wr = 0;
  std::string note = "given";
  I fb = 4;  // bytes per forward value
};

Rates plan_rates(const Job& job) {
  const Config& cfg = job.cfg;
  Rates r;
  r.gflops = job.in.gflops;
  if (r.gflops <= 0) {
    if (cfg.device == "cuda") {
      r.gflops = kCudaGflops;
      r.note = "cuda default: an A100's FP32 peak without TF32";
    } else {
      int threads = cfg.threads;
      if (threads <= 0) {
        const int cores = std::max(1u, std::thread::hardware_concurrency());
        threads = std::max(1, cores / std::min(cores, job.in.world));
        r.note = fmt::format("cpu default: {} GFLOP/s x {} thread(s); threads 0 = this machine's {} cores / ranks",
                             kCpuGflopsPerThread, threads, cores);
      } else {
        r.note = fmt::format("cpu default: {} GFLOP/s x {} thread(s)", kCpuGflopsPerThread, threads);
      }
      r.gflops = kCpuGflopsPerThread * threads;
    }
  }
  // A 2-byte forward on a GPU runs its GEMMs on tensor cores: an A100's dense FP16 peak is 16x its
  // FP32 peak (312 against 19.5 TFLOP/s), the ratio applied to the forward's FLOPs.
  r.fb = forward_bytes(job.in);
  const bool tensor_cores = r.fb == 2 && cfg.device == "cuda";
  r.forward_gflops = r.gflops * (tensor_cores ? 16.0 : 1.0);
  // The Hessians of 2-byte activations: one full tensor-core GEMM (twice SYRK's FLOPs) per batch.
  r.stats_gflops = tensor_cores ? r.forward_gflops / 2 : r.gflops;
  r.net = job.in.net_gbps > 0 ? job.in.net_gbps : kNetGbps;
  r.rd = job.in.read_gbps > 0 ? job.in.read_gbps : kReadGbps;
  r.wr = job.in.write_gbps > 0 ? job.in.write_gbps : kWriteGbps;
  return r;
}

// Per layer, the same on every rank: each input group's memory terms and traffic, the
// statistics passes and who factorises what.
struct LayerModel {
  I linear_weights = 0, qkv_out = 0, layer32 = 0, allreduce_bytes = 0, allgather_bytes = 0, forward_passes = 0;
  json groups_json = json::array();
  // stats_bytes: what the statistics of an input hold while collected (until the all-reduce);
  // kept_bytes: what stays while its linears are pruned (strict: the bins are freed once reduced
  // into the fp32 Hessian; the scratch stays with the statistics object).
  std::vector<I> stats_bytes, kept_bytes, factor_bytes, sweep_bytes, gathered_bytes;
  std::vector<std::vector<std::size_t>> passes;
  std::vector<int> owner;  // the data rank that factorises each group (-1: all of them, shared)
};

// One input group's terms, appended to lm.
void add_group(const Job& job, const Group& g, LayerModel& lm) {
  const Config& cfg = job.cfg;
  const I d = g.cols, D = job.D, bs = job.bs;
  const bool wanda = job.wanda, sparsegpt = job.sparsegpt;
  // (c) while collected: each batch's fp32 xᵀx (scratch) and the running sum over the upper
  // triangle: float64 (fast: 8 bytes per entry) or exact bins (strict: 3 int64); Wanda's vector
  // likewise. Once reduced, only the fp32 Hessian (and vector) stays. No Hessian without SparseGPT
  // or the reconstruction error.
  const I h = job.hessian ? 1 : 0;
  const I kept = h * d * d * 4 + (wanda ? d * 4 : 0);
  const I acc = job.strict ? h * 12 * d * (d + 1) + (wanda ? 24 * d : 0) : h * 4 * d * (d + 1) + (wanda ? 8 * d : 0);
  const I st = std::max(h * d * d * 4 + (wanda ? d * 4 : 0) + acc, kept + acc);  // accumulating / finishing
  // Summed over the data group: the float64 sums, or the exact bins; with more than one data
  // rank, unstructured thresholds are chosen over all rows by three all-reduced histograms of
  // 4096 + 1024 + 1024 int64 (per 128-column block for SparseGPT, per matrix for magnitude).
  I ar = acc;
  const bool unstructured = cfg.prune.pattern == "unstructured";
  if (D > 1 && unstructured && (sparsegpt || cfg.prune.method == "magnitude"))
    ar += static_cast<I>(g.linears.size()) * (sparsegpt ? ceil_div(d, bs) : 1) * 6144 * 8;
  I sweep = 0, gathered = 0;
  json lin = json::array();
  for (const auto& l : g.linears) {
    const I rs = ceil_div(l.out, D);  // the largest row slice
    sweep = std::max(sweep, rs * d * 4 + rs * d + (sparsegpt ? rs * bs * 4 : 0));
    gathered = std::max(gathered, l.out * d * (4 + job.in.dtype_bytes + 1));  // stored + mask on the host, fp32 on the device
    lm.allgather_bytes += l.out * d * (job.in.dtype_bytes + 1);  // rows in the stored dtype + 1-byte mask
    lin.push_back({{"name", l.name}, {"rows", l.out}, {"cols", l.in}, {"row_slice", rs}});
  }
  // A shared factor (split_factor.hpp) also holds three tile x tile scratch tiles, the inverse
  // diagonal tiles of the rank's panels, and with several ranks one panel in flight (two
  // through host memory).
  const I tile = std::min(cfg.sparsegpt.tile, d);
  const I own_tiles = ceil_div(ceil_div(d, tile), D);
  const I factor = !sparsegpt ? 0
                              : d * d * 4 + (job.shared_factor(d)
                                                 ? (3 + own_tiles) * tile * tile * 4 + (D > 1 ? 2 * tile * d * 4 : 0)
                                                 : 0);
  lm.stats_bytes.push_back(st);
  lm.kept_bytes.push_back(kept);
  lm.factor_bytes.push_back(factor);
  lm.sweep_bytes.push_back(sweep);
  lm.gathered_bytes.push_back(gathered);
  lm.allreduce_bytes += ar;
  lm.groups_json.push_back({{"label", g.label},
                            {"linears", lin},
                            {"cols", d},
                            {"statistics_bytes", st},
                            {"statistics_kept_bytes", kept},
                            {"factorisation_bytes", factor},
                            {"sweep_bytes", sweep},
                            {"gathered_bytes", gathered},
                            {"allreduce_bytes", ar}});
}

LayerModel layer_model(const Job& job, const Rates& rates) {
  LayerModel lm;
  for (const auto& l : job.spec.linears()) {
    lm.linear_weights += l.out * l.in;
    if (l.input_group == 0) lm.qkv_out += l.out;
  }
  lm.layer32 = job.spec.layer_params() * rates.fb;  // one copy of a decoder layer in the forward dtype
  for (const auto& g : job.groups) add_group(job, g, lm);
  // Statistics passes: all groups at once, or one per group with true_sequential.
  const auto& groups = job.groups;
  if (job.cfg.prune.true_sequential) {
    for (std::size_t i = 0; i < groups.size(); ++i) lm.passes.push_back({i});
  } else {
    lm.passes.emplace_back();
    for (std::size_t i = 0; i < groups.size(); ++i) lm.passes.back().push_back(i);
  }
  // Statistics pass(es) + propagation; magnitude without the reconstruction error collects nothing.
  const bool any_stats = job.hessian || job.wanda;
  lm.forward_passes = (any_stats ? static_cast<I>(lm.passes.size()) : 0) + 1;
  // Per pass, as the prune assigns them: whole factors greedily, shared ones to all.
  lm.owner.assign(groups.size(), -1);
  for (const auto& p : lm.passes) {
    std::vector<I> widths;
    std::vector<std::size_t> whole;
    for (auto i : p)
      if (!job.shared_factor(groups[i].cols)) {
        widths.push_back(groups[i].cols);
        whole.push_back(i);
      }
    const auto o = factor_owners(widths, job.D);
    for (std::size_t k = 0; k < whole.size(); ++k) lm.owner[whole[k]] = o[k];
  }
  return lm;
}

// A stage's layers, reads, writes, embeddings/head and weight cache.
struct StageModel {
  dist::Range layers;
  I nl = 0, read_layers = 0, read_extra = 0, embed32 = 0, write_layers = 0, cache = 0, next_layer = 0;
};

StageModel stage_model(const Job& job, const LayerModel& lm, int s) {
  const auto& spec = job.spec;
  StageModel st;
  st.layers = dist::block_range(spec.layers, job.S, s);
  const auto& lr = st.layers;
  st.nl = lr.end - lr.begin;
  for (I l = lr.begin; l < lr.end; ++l) st.read_layers += job.stored_sum(layer_tensors(spec, l));
  if (s == 0) {
    const auto first = first_stage_tensors(spec);
    st.read_extra += job.stored_sum(first);
    st.embed32 += numel_of(first) * 4;
  }
  if (s == job.S - 1) {
    const auto last = last_stage_tensors(spec, s == 0);
    st.read_extra += job.stored_sum(last);
    st.embed32 += numel_of(last) * 4;
  }
  // The stage's writer (data index 0): pruned weights as stored + packed masks.
  for (I l = lr.begin; l < lr.end; ++l)
    for (const auto& g : job.groups)
      for (const auto& lin : g.linears)
        st.write_layers += job.stored({spec.layer_prefix(l) + lin.name + ".weight", lin.out * lin.in}) +
                           ceil_div(lin.out * lin.in, 8);
  const I cache_layers = lm.layer32 > 0 ? std::min<I>((job.cfg.weight_cache_mb << 20) / lm.layer32, st.nl) : 0;
  st.cache = std::max<I>(0, cache_layers - 1) * lm.layer32;
  st.next_layer = st.nl > 1 ? job.stored_sum(layer_tensors(spec, lr.begin)) : 0;  // prefetched, as stored
  return st;
}

// ---- The export (output.export set): the model's tensors in name order, packed greedily into
// shards of output.export_shard_mb (a larger tensor alone), as app/export.cpp packs them; writer
// w of W writes shards w, w + W, ... (W: output.export_writers on each node of ranks_per_node
// ranks; 0: every rank). A writer reads each tensor of its shards once (a pruned one from the
// checkpoint, the others from the source) and writes it; it holds one shard's tensors.

// Stored bytes of every tensor of the model, by name (the export's order).
std::map<std::string, I> export_tensors(const Job& job) {
  const auto& spec = job.spec;
  std::map<std::string, I> all;
  for (const auto& t : first_stage_tensors(spec)) all[t.name] = job.stored(t);
  for (const auto& t : last_stage_tensors(spec, true)) all[t.name] = job.stored(t);
  for (I l = 0; l < spec.layers; ++l)
    for (const auto& t : layer_tensors(spec, l)) all[t.name] = job.stored(t);
  return all;
}

// Ranks on a node: ranks_per_node (at most the world), or the whole world on one node.
int ranks_per_node(const Job& job) {
  return job.in.ranks_per_node > 0 ? std::min(job.in.ranks_per_node, job.in.world) : job.in.world;
}

// Writers: per node min(export_writers, the node's ranks); 0: every rank.
int export_writers(const Job& job) {
  const int world = job.in.world, per = job.cfg.output.export_writers;
  if (per == 0) return world;
  const int rpn = ranks_per_node(job);
  int writers = 0;
  for (int first = 0; first < world; first += rpn) writers += std::min(per, std::min(rpn, world - first));
  return writers;
}

json export_model(const Job& job, const Rates& rates) {
  if (job.cfg.output.export_dir.empty()) return nullptr;
  const I shard_bytes = job.cfg.output.export_shard_mb << 20;
  std::vector<I> shards{0};
  for (const auto& [name, bytes] : export_tensors(job)) {
    if (shards.back() > 0 && shards.back() + bytes > shard_bytes) shards.push_back(0);
    shards.back() += bytes;
  }
  const int W = export_writers(job);
  I busiest = 0, largest = 0;
  for (std::size_t w = 0; w < static_cast<std::size_t>(W) && w < shards.size(); ++w) {
    I mine = 0;
    for (std::size_t i = w; i < shards.size(); i += static_cast<std::size_t>(W)) {
      mine += shards[i];
      largest = std::max(largest, shards[i]);
    }
    busiest = std::max(busiest, mine);
  }
  const double b = static_cast<double>(busiest);
  return {{"writers", W},
          {"writers_per_node", job.cfg.output.export_writers},
          {"ranks_per_node", ranks_per_node(job)},
          {"shards", shards.size()},
          {"shard_bytes", shard_bytes},
          {"writer_bytes", busiest},
          {"writer_memory_bytes", largest},
          {"seconds", b / (rates.rd * kGB) + b / (rates.wr * kGB)}};
}

// A rank's memory: the base terms, then every phase of a layer (statistics, the prune of each
// group, propagation); the largest phase is its peak.
struct RankMemory {
  json memory;
  I peak = -1;
  std::string peak_phase, peak_terms;
};

RankMemory rank_memory(const Job& job, const Rates& rates, const LayerModel& lm, const StageModel& st, I tok,
                       I chunk) {
  const auto& spec = job.spec;
  const I fb = rates.fb, T = job.T, D = job.D;
  // Staged on the host: the batch under way, its input and output, on the GPU.
  const I all_act = tok * spec.hidden * fb * job.copies;
  const I act = job.host_activations ? std::min(all_act, 2 * chunk * T * spec.hidden * fb * job.copies) : all_act;
  const I weights = 2 * lm.layer32;
  const I fwd = chunk * T * std::max(lm.qkv_out, spec.ffn) * fb * 3;
  const I attn = chunk * spec.heads * T * T * (fb == 2 ? 6 : 4);  // 2-byte: fp32 scores + 2-byte P
  const I base = act + weights + st.next_layer + st.embed32 + st.cache;
  RankMemory m;
  json phases = json::object();
  I stats_max = 0, factor_max = 0, sweep_max = 0, gathered_max = 0;
  // A phase: its terms (name, bytes) on top of the base ones.
  auto phase = [&](const std::string& name, const std::vector<std::pair<const char*, I>>& terms) {
    I bytes = base;
    std::string text = fmt::format("activations {}, layer weights {}", bytes_str(act), bytes_str(weights));
    if (st.next_layer) text += fmt::format(", next layer {}", bytes_str(st.next_layer));
    for (const auto& [what, b] : terms) {
      bytes += b;
      if (b) text += fmt::format(", {} {}", what, bytes_str(b));
    }
    if (st.embed32) text += fmt::format(", embeddings/head {}", bytes_str(st.embed32));
    if (st.cache) text += fmt::format(", weight cache {}", bytes_str(st.cache));
    phases[name] = bytes;
    if (bytes > m.peak) {
      m.peak = bytes;
      m.peak_phase = name;
      m.peak_terms = text;
    }
  };
  for (const auto& p : lm.passes) {
    I stats = 0, kept = 0, pass_factors = 0;  // several data ranks: every factor of the pass from its start
    for (auto i : p) {
      stats += lm.stats_bytes[i];
      kept += lm.kept_bytes[i];
      pass_factors += lm.factor_bytes[i];
    }
    stats_max = std::max(stats_max, stats);
    phase(job.cfg.prune.true_sequential ? "statistics " + job.groups[p.front()].label : "statistics",
          {{"statistics", stats}, {"forward temporaries", fwd}, {"attention scores", attn}});
    for (auto i : p) {
      const I factors = D > 1 ? pass_factors : lm.factor_bytes[i];
      factor_max = std::max(factor_max, factors);
      sweep_max = std::max(sweep_max, lm.sweep_bytes[i]);
      gathered_max = std::max(gathered_max, lm.gathered_bytes[i]);
      phase("prune " + job.groups[i].label, {{"statistics", kept},
                                             {"factorisation", factors},
                                             {"sweep", lm.sweep_bytes[i]},
                                             {"gathered weight", lm.gathered_bytes[i]}});
    }
  }
  phase("propagation", {{"forward temporaries", fwd}, {"attention scores", attn}});
  m.memory = {{"activations", act},       {"layer_weights", weights},  {"next_layer", st.next_layer},
              {"forward_temporaries", fwd}, {"attention_scores", attn}, {"statistics", stats_max},
              {"factorisation", factor_max}, {"sweep", sweep_max},      {"gathered", gathered_max},
              {"embeddings_head", st.embed32}, {"weight_cache", st.cache}, {"phases", phases},
              {"peak", m.peak},             {"peak_phase", m.peak_phase},
              {"activations_host", job.host_activations ? all_act : 0}};
  return m;
}

// A rank's FLOPs per layer, and the bytes of factors (or shared factors' panels) it receives.
struct RankWork {
  double forward = 0, stats = 0, factor = 0, factor_path = 0, sweep = 0, error = 0;
  I factor_recv = 0;
  double total() const { return forward + stats + factor + sweep + error; }
};

RankWork rank_work(const Job& job, const LayerModel& lm, I tok, int d) {
  const Config& cfg = job.cfg;
  const I D = job.D, bs = job.bs;
  RankWork w;
  const double t = static_cast<double>(tok);
  w.forward = static_cast<double>(lm.forward_passes) *
              (2.0 * t * lm.linear_weights + 4.0 * t * job.T * static_cast<double>(job.spec.heads * job.spec.head_dim));
  for (std::size_t gi = 0; gi < job.groups.size(); ++gi) {
    const auto& g = job.groups[gi];
    const double dd = static_cast<double>(g.cols);
    w.stats += (job.hessian ? t * dd * dd : 0.0) + (job.wanda ? 2.0 * t * dd : 0.0);
    if (job.sparsegpt && lm.owner[gi] < 0) {
      // Shared: this rank's panels, every diagonal tile's inverse, the other ranks' panels; the
      // time follows the critical path (factor_path).
      const auto sc = prune::shared_factor_cost(g.cols, cfg.sparsegpt.tile, job.D, d);
      w.factor += sc.flops;
      w.factor_path += sc.critical_flops;
      w.factor_recv += static_cast<I>(sc.recv_bytes);
    } else if (job.sparsegpt && lm.owner[gi] == d) {
      w.factor += 2.0 / 3.0 * dd * dd * dd;
      w.factor_path += 2.0 / 3.0 * dd * dd * dd;
    } else if (job.sparsegpt) {
      w.factor_recv += lm.factor_bytes[gi];
    }
    for (const auto& l : g.linears) {
      const I rs = ceil_div(l.out, D);
      w.sweep += job.sparsegpt ? lazy_update_flops(rs, g.cols, bs) + static_cast<double>(rs) * dd * (bs - 1)
                               : 2.0 * static_cast<double>(rs) * dd;
      if (cfg.output.reconstruction_error) w.error += 4.0 * static_cast<double>(rs) * dd * dd;
    }
  }
  return w;
}

// One rank's record: memory, reads and writes, traffic, FLOPs and seconds per layer and for its
// stage.
json rank_record(const Job& job, const Rates& rates, const LayerModel& lm, const StageModel& st, int s, int d) {
  const I D = job.D;
  const auto cr = dist::block_range(job.chunks, job.D, d);
  const I nseq = std::min(job.N, cr.end * job.B) - std::min(job.N, cr.begin * job.B);
  const I tok = nseq * job.T;
  const auto mem = rank_memory(job, rates, lm, st, tok, std::min(job.B, nseq));
  const auto w = rank_work(job, lm, tok, d);

  // Communication per layer (ring all-reduce: 2 (D-1)/D of the buffer sent per rank; an
  // all-gather receives the (D-1)/D of the matrices this rank did not prune).
  const double frac = static_cast<double>(D - 1) / D;
  const double ar_sent = 2.0 * frac * static_cast<double>(lm.allreduce_bytes);
  const double ag_recv = frac * static_cast<double>(lm.allgather_bytes);
  const I boundary = tok * job.spec.hidden * rates.fb * job.copies;
  const I send = s < job.S - 1 ? boundary : 0, recv = s > 0 ? boundary : 0;

  const double nl = static_cast<double>(st.nl);
  const double read_per_layer = st.nl > 0 ? static_cast<double>(st.read_layers) / nl : 0;
  const double sl_compute = (w.total() - w.forward - w.stats - w.factor + w.factor_path) / (rates.gflops * 1e9) +
                            w.forward / (rates.forward_gflops * 1e9) + w.stats / (rates.stats_gflops * 1e9);
  const double sl_comm = (ar_sent + ag_recv + static_cast<double>(w.factor_recv)) / (rates.net * kGB);
  const double sl_read = read_per_layer / (rates.rd * kGB);
  const double s_compute = sl_compute * nl;
  const double s_comm = sl_comm * nl + static_cast<double>(send + recv) / (rates.net * kGB);
  const double s_read = static_cast<double>(st.read_layers + st.read_extra) / (rates.rd * kGB);
  // Model::prefetch reads (and uploads) the next layer while one works: past the first layer,
  // a layer costs the longer of its work and the next one's read.
  const double sl_work = sl_compute + sl_comm;
  const double sl_total = st.nl > 1 ? std::max(sl_work, sl_read) : sl_work + sl_read;
  const double s_read_hidden = static_cast<double>(std::max<I>(st.nl - 1, 0)) * std::min(sl_work, sl_read);
  const double s_total = s_compute + s_comm + s_read - s_read_hidden;

  return {{"rank", s * D + d},
          {"stage", s},
          {"data_index", d},
          {"layers", {st.layers.begin, st.layers.end}},
          {"sequences", nseq},
          {"tokens", tok},
          {"memory", mem.memory},
          {"peak_terms", mem.peak_terms},
          {"io",
           {{"read_bytes", st.read_layers + st.read_extra},
            {"read_layers_bytes", st.read_layers},
            {"read_embeddings_head_bytes", st.read_extra},
            {"write_bytes", d == 0 ? st.write_layers : 0}}},
          {"comm_per_layer",
           {{"allreduce_bytes", lm.allreduce_bytes},
            {"allreduce_sent_bytes", ar_sent},
            {"allgather_bytes", lm.allgather_bytes},
            {"allgather_received_bytes", ag_recv},
            {"factor_broadcast_received_bytes", w.factor_recv}}},
          {"stage_boundary", {{"send_bytes", send}, {"recv_bytes", recv}}},
          {"flops_per_layer",
           {{"forward", w.forward},
            {"statistics", w.stats},
            {"factorisation", w.factor},
            {"factorisation_critical_path", w.factor_path},
            {"sweep", w.sweep},
            {"error", w.error},
            {"total", w.total()}}},
          {"seconds_per_layer", {{"compute", sl_compute}, {"comm", sl_comm}, {"read", sl_read}, {"total", sl_total}}},
          {"seconds",
           {{"compute", s_compute},
            {"comm", s_comm},
            {"read", s_read},
            {"read_hidden", s_read_hidden},
            {"total", s_total}}}};
}

// ---- The allocation pass before the layers (prune.allocation), on data rank 0 (the most windows).
//  - sensitivity: every rank holds the whole model in fp32 (the dense weights, a perturbed copy of
//    every target, and while a layer's copy is replaced the next one), a probe direction or two,
//    and a backward pass's activations (app/allocation_run.cpp keeps every layer's intermediates
//    and the V·a of every target when they fit in surgeon.keep_activations_mb); 2 forward+backward
//    passes per probe, each also 2·targets·tokens for the V·a products, at the fp32 rate.
//  - owl: one dense fp32 forward through the stage's layers with the Wanda column norms: the
//    stage's activations, one layer's weights, a chunk's temporaries.
json allocation_plan(const Job& job, const Rates& rates, const LayerModel& lm) {
  const auto& spec = job.spec;
  const auto& cfg = job.cfg;
  if (cfg.prune.allocation != "sensitivity" && cfg.prune.allocation != "owl") return nullptr;
  const auto cr = dist::block_range(job.chunks, job.D, 0);
  const I nseq = std::min(job.N, cr.end * job.B), B = std::min(job.B, nseq), T = job.T, L = spec.layers;
  const I tok = nseq * T;
  const auto b = [](I x) { return bytes_str(static_cast<double>(x)); };
  const I outside = (spec.total_params() - L * spec.layer_params()) * 4;  // embeddings, head, final norm
  const double attn = 2.0 * static_cast<double>(nseq) * T * T * static_cast<double>(spec.heads * spec.head_dim);
  if (cfg.prune.allocation == "owl") {
    const I act = tok * spec.hidden * 4;
    const I fwd = B * T * std::max(lm.qkv_out, spec.ffn) * 4 * 3 + B * spec.heads * T * T * 4;
    const I bytes = act + lm.layer32 + fwd + outside;
    const double flops = static_cast<double>(L) / job.S * (2.0 * static_cast<double>(tok * lm.linear_weights) + attn);
    return {{"method", "owl"},
            {"bytes", bytes},
            {"breakdown", fmt::format("activations {}, layer weights {}, forward temporaries {}, embeddings/head {}",
                                      b(act), b(lm.layer32), b(fwd), b(outside))},
            {"flops", flops},
            {"seconds", flops / (rates.gflops * 1e9)}};
  }
  I targets = 0, layer_targets = 0, largest = 0, y_bytes = 0;
  for (const auto& g : job.groups)
    for (const auto& lin : g.linears) {
      layer_targets += lin.out * lin.in * 4;
      largest = std::max(largest, lin.out * lin.in * 4);
      y_bytes += lin.out * B * T * 4;
    }
  targets = layer_targets * L;
  const auto act = backward_activations(spec, B, T, cfg.surgeon.keep_activations_mb, y_bytes * L);
  const I activations = act.bytes + (act.keep ? 0 : y_bytes);  // recomputing: one layer's V·a at a time
  const I dense = L * spec.layer_params() * 4 + outside;
  const I bytes = dense + targets + layer_targets + 2 * largest + activations;
  const double lin = 2.0 * static_cast<double>(tok) * static_cast<double>(L * lm.linear_weights);
  const double head = 2.0 * static_cast<double>(tok) * static_cast<double>(spec.vocab_size * spec.word_embed_proj_dim);
  const double fwd = lin + static_cast<double>(L) * attn + head;
  const double pass = 3 * fwd + (act.keep ? 0.0 : lin + static_cast<double>(L) * attn) +
                      2.0 * static_cast<double>(tok) * static_cast<double>(targets / 4);
  const double flops = 2.0 * static_cast<double>(cfg.allocation.hutchinson_samples) * pass;
  return {{"method", "sensitivity"},
          {"probes", cfg.allocation.hutchinson_samples},
          {"passes", 2 * cfg.allocation.hutchinson_samples},
          {"activations_mode", act.keep ? "keep" : "recompute"},
          {"bytes", bytes},
          {"breakdown", fmt::format("dense weights {}, perturbed targets {}, probe directions {}, activations {} ({})",
                                    b(dense), b(targets + layer_targets), b(2 * largest), b(activations),
                                    act.keep ? "kept" : "recomputed")},
          {"flops", flops},
          {"seconds", flops / (rates.gflops * 1e9)}};
}

// The model, job, grid, calibration, rates and per-layer sections of the plan.
json plan_header(const Job& job, const Rates& rates, const LayerModel& lm) {
  const auto& spec = job.spec;
  const Config& cfg = job.cfg;
  I stored_total = 0;
  for (I l = 0; l < spec.layers; ++l) stored_total += job.stored_sum(layer_tensors(spec, l));
  stored_total += job.stored_sum(first_stage_tensors(spec)) + job.stored_sum(last_stage_tensors(spec, true));
  const auto nm = parse_nm(cfg.prune.pattern);
  json plan;
  plan["model"] = {{"name", job.in.model_name},
                   {"model_type", spec.model_type},
                   {"layers", spec.layers},
                   {"hidden", spec.hidden},
                   {"ffn", spec.ffn},
                   {"heads", spec.heads},
                   {"kv_heads", spec.kv_heads},
                   {"vocab", spec.vocab_size},
                   {"params", spec.total_params()},
                   {"dtype", job.in.dtype_name},
                   {"dtype_bytes", job.in.dtype_bytes},
                   {"stored_bytes", stored_total},
                   {"sizes_from", job.in.tensor_bytes.empty() ? "config.json" : "safetensors headers"}};
  plan["job"] = {{"method", cfg.prune.method},
                 {"sparsity", cfg.prune.sparsity},
                 {"pattern", cfg.prune.pattern},
                 {"label", nm ? cfg.prune.pattern : fmt::format("{:g}%", cfg.prune.sparsity * 100)},
                 {"propagation", cfg.prune.propagation},
                 {"true_sequential", cfg.prune.true_sequential},
                 {"determinism", cfg.determinism},
                 {"device", cfg.device},
                 {"activations", cfg.device != "cuda" ? "host" : job.host_activations ? "host (staged per batch)" : "GPU"},
                 {"blocksize", job.bs},
                 {"weight_cache_mb", cfg.weight_cache_mb}};
  plan["grid"] = {{"world", job.in.world}, {"stages", job.S}, {"data", job.D}};
  plan["calibration"] = {
      {"nsamples", job.N}, {"seqlen", job.T}, {"batch", job.B}, {"chunks", job.chunks}, {"tokens", job.N * job.T}};
  plan["rates"] = {{"gflops", rates.gflops},
                   {"gflops_note", rates.note},
                   {"forward_gflops", rates.forward_gflops},
                   {"statistics_gflops", rates.stats_gflops},
                   {"forward_bytes", rates.fb},
                   {"net_gbps", rates.net},
                   {"read_gbps", rates.rd},
                   {"write_gbps", rates.wr}};
  plan["per_layer"] = {{"groups", lm.groups_json},
                       {"linear_params", lm.linear_weights},
                       {"layer_params", spec.layer_params()},
                       {"forward_passes", lm.forward_passes},
                       {"allreduce_bytes", lm.allreduce_bytes},
                       {"allgather_bytes", lm.allgather_bytes}};
  return plan;
}

}  // namespace

json make_plan(const model::ModelSpec& spec, const PlanInput& in) {
  // cuda.activations auto on a GPU: the run stages them on the host when the planned peak exceeds
  // 90% of the GPU's memory; the plan takes parallel.memory_gb for it.
  const auto& c = in.cfg;
  if (c.device == "cuda" && c.cuda.activations == "auto" && c.parallel.memory_gb > 0) {
    PlanInput device = in, host = in;
    device.cfg.cuda.activations = "device";
    host.cfg.cuda.activations = "host";
    auto p = make_plan(spec, device);
    if (static_cast<double>(p["peak"]["bytes"].get<I>()) <= 0.9 * c.parallel.memory_gb * kGB) return p;
    p = make_plan(spec, host);
    p["job"]["activations"] = "host (staged per batch: cuda.activations auto, the peak on the GPU above 90% of "
                              "parallel.memory_gb)";
    return p;
  }
  const Job job(spec, in);
  const Rates rates = plan_rates(job);
  const LayerModel lm = layer_model(job, rates);
  json plan = plan_header(job, rates, lm);

  json ranks = json::array(), stages = json::array();
  json peak = {{"bytes", -1}};
  I total_read = 0;
  double total_allreduce_sent = 0, total_gather_recv = 0, job_seconds = 0;
  for (int s = 0; s < job.S; ++s) {
    const StageModel st = stage_model(job, lm, s);
    double stage_seconds = 0;
    for (int d = 0; d < job.D; ++d) {
      json r = rank_record(job, rates, lm, st, s, d);
      stage_seconds = std::max(stage_seconds, r["seconds"]["total"].get<double>());
      total_read += r["io"]["read_bytes"].get<I>();
      total_allreduce_sent += r["comm_per_layer"]["allreduce_sent_bytes"].get<double>() * static_cast<double>(st.nl);
      total_gather_recv += r["comm_per_layer"]["allgather_received_bytes"].get<double>() * static_cast<double>(st.nl);
      const I rank_peak = r["memory"]["peak"].get<I>();
      if (rank_peak > peak["bytes"].get<I>())
        peak = {{"bytes", rank_peak},
                {"gb", rank_peak / kGB},
                {"rank", s * job.D + d},
                {"stage", s},
                {"data_index", d},
                {"phase", r["memory"]["peak_phase"]},
                {"breakdown", r["peak_terms"]}};
      r.erase("peak_terms");
      ranks.push_back(std::move(r));
    }
    stages.push_back({{"stage", s},
                      {"layers", {st.layers.begin, st.layers.end}},
                      {"ranks", {s * job.D, s * job.D + job.D - 1}},
                      {"seconds", stage_seconds}});
    job_seconds += stage_seconds;
  }
  // The allocation runs before the layers, on every rank alike (sensitivity: one stage).
  plan["allocation"] = allocation_plan(job, rates, lm);
  double alloc_seconds = 0;
  if (!plan["allocation"].is_null()) {
    const auto& a = plan["allocation"];
    alloc_seconds = a["seconds"].get<double>();
    if (a["bytes"].get<I>() > peak["bytes"].get<I>())
      peak = {{"bytes", a["bytes"]},
              {"gb", a["bytes"].get<I>() / kGB},
              {"rank", 0},
              {"stage", 0},
              {"data_index", 0},
              {"phase", fmt::format("allocation ({})", a["method"].get<std::string>())},
              {"breakdown", a["breakdown"]},
              {"hint", a["method"] == "owl"
                           ? "OWL's dense pass holds the rank's calibration activations in fp32: more data ranks "
                             "(parallel.data) split them, fewer calibration windows shrink them"
                           : "the sensitivity estimate holds the whole model in fp32 with a perturbed copy of every "
                             "target on every rank: prune.allocation: owl, fewer prune.targets, a lower "
                             "surgeon.keep_activations_mb (recomputes the forward), a machine with more memory, or "
                             "an allocation.traces file holding the estimate (made where it fits: the run then "
                             "reads it and the estimate is no phase of the run)"}};
  }
  job_seconds += alloc_seconds;
  const double limit = job.cfg.parallel.memory_gb;
  plan["ranks"] = std::move(ranks);
  plan["stages"] = std::move(stages);
  plan["peak"] = peak;
  plan["export"] = export_model(job, rates);
  const double export_seconds = plan["export"].is_null() ? 0.0 : plan["export"]["seconds"].get<double>();
  plan["totals"] = {{"read_bytes", total_read},
                    {"allreduce_sent_bytes", total_allreduce_sent},
                    {"allgather_received_bytes", total_gather_recv},
                    {"seconds", job_seconds},
                    {"allocation_seconds", alloc_seconds},
                    {"hours", job_seconds / 3600},
                    {"export_seconds", export_seconds},
                    {"seconds_with_export", job_seconds + export_seconds}};
  plan["limit_gb"] = limit;
  plan["fits"] = limit <= 0 || static_cast<double>(peak["bytes"].get<I>()) <= limit * kGB;
  plan["warnings"] = json::array();  // none left (idle data ranks became an input error); kept for JSON readers
  return plan;
}

void check_plan_fits(const json& plan, const Config& cfg) {
  const double limit = cfg.parallel.memory_gb;
  if (limit <= 0) return;
  const auto& p = plan.at("peak");
  const double need = static_cast<double>(p.at("bytes").get<I>());
  if (need <= limit * kGB) return;
  SCALPEL_INPUT_ERROR(
      "config: 'parallel.memory_gb' is {:g} GB per rank, but rank {} (stage {}, data index {}) needs {:.2f} GB at its "
      "peak ({}: {}); {}",
      limit, p.at("rank").get<int>(), p.at("stage").get<int>(), p.at("data_index").get<int>(), need / kGB,
      p.at("phase").get<std::string>(), p.at("breakdown").get<std::string>(), p.value("hint", std::string(
      "more data ranks (parallel.data) split the activations and row slices, a smaller calibration.batch shrinks the "
      "forward temporaries, prune.true_sequential keeps one group's statistics at a time") +
      (cfg.device == "cuda" && cfg.cuda.activations == "device"
           ? ", cuda.activations: host (or auto) keeps the activations in host memory, a batch at a time on the GPU"
           : "")));
}

namespace {

constexpr int kLabelWidth = 30;

// The model, job, grid and rates, a line each.
void print_plan_header(const json& p) {
  const auto& m = p["model"];
  const auto& job = p["job"];
  const auto& grid = p["grid"];
  const auto& cal = p["calibration"];
  const auto& rates = p["rates"];
  const int S = grid["stages"], D = grid["data"];
  const double params = m["params"].get<double>();
  fmt::print("scalpel plan: {} ({}, {} layers, hidden {}, ffn {}, {} heads, {} params, {} stored as {}; "
             "sizes from {})\n",
             m["name"].get<std::string>(), m["model_type"].get<std::string>(), m["layers"].get<I>(),
             m["hidden"].get<I>(), m["ffn"].get<I>(), m["heads"].get<I>(),
             params >= 1e9 ? fmt::format("{:.2f} B", params / 1e9) : fmt::format("{:.2f} M", params / 1e6),
             bytes_str(m["stored_bytes"].get<double>()), m["dtype"].get<std::string>(),
             m["sizes_from"].get<std::string>());
  fmt::print("job: {} {}, propagation {}{}, determinism {}, device {}{}\n", job["method"].get<std::string>(),
             job["label"].get<std::string>(), job["propagation"].get<std::string>(),
             job["true_sequential"].get<bool>() ? ", true_sequential" : "", job["determinism"].get<std::string>(),
             job["device"].get<std::string>(),
             job["device"] == "cuda" ? ", activations on the " + job["activations"].get<std::string>() : "");
  fmt::print("grid: {} rank(s) = {} stage(s) x {} data; calibration {} x {} tokens in {} chunk(s) of {}\n",
             grid["world"].get<int>(), S, D, cal["nsamples"].get<I>(), cal["seqlen"].get<I>(),
             cal["chunks"].get<I>(), cal["batch"].get<I>());
  fmt::print("rates per rank: {:g} GFLOP/s ({}), network {:g} GB/s, read {:g} GB/s\n", rates["gflops"].get<double>(),
             rates["gflops_note"].get<std::string>(), rates["net_gbps"].get<double>(),
             rates["read_gbps"].get<double>());
}

// Memory per rank class: consecutive ranks with the same sequences and memory figures (one
// column each, at most 8).
void print_plan_memory(const json& p) {
  struct Cls {
    std::size_t first, last;
  };
  std::vector<Cls> cls;
  const auto& ranks = p["ranks"];
  for (std::size_t i = 0; i < ranks.size(); ++i) {
    if (!cls.empty() && ranks[cls.back().first]["sequences"] == ranks[i]["sequences"] &&
        ranks[cls.back().first]["memory"] == ranks[i]["memory"])
      cls.back().last = i;
    else
      cls.push_back({i, i});
  }
  const std::size_t kMaxCols = 8;
  if (cls.size() > kMaxCols) cls.resize(kMaxCols);  // the JSON output has every rank

  const int lw = kLabelWidth, cw = 16;
  auto row = [&](const std::string& label, auto&& cell) {
    std::string line = fmt::format("  {:<{}}", label, lw);
    for (const auto& c : cls) line += fmt::format("{:>{}}", cell(ranks[c.first]), cw);
    fmt::print("{}\n", line);
  };
  auto span_row = [&](const std::string& label, auto&& cell) {  // cell(first rank, last rank)
    std::string line = fmt::format("  {:<{}}", label, lw);
    for (const auto& c : cls) line += fmt::format("{:>{}}", cell(ranks[c.first], ranks[c.last]), cw);
    fmt::print("{}\n", line);
  };
  fmt::print("\nmemory per rank (GB = 1e9 bytes; peak = the largest phase of a layer)\n");
  span_row("ranks", [](const json& a, const json& b) { return range_str(a["rank"].get<I>(), b["rank"].get<I>()); });
  span_row("stages", [](const json& a, const json& b) { return range_str(a["stage"].get<I>(), b["stage"].get<I>()); });
  span_row("layers", [](const json& a, const json& b) {
    return range_str(a["layers"][0].get<I>(), b["layers"][1].get<I>() - 1);
  });
  row("calibration sequences", [](const json& r) { return fmt::format("{}", r["sequences"].get<I>()); });
  auto mem = [&](const char* label, const char* key) {
    row(label, [key](const json& r) { return bytes_str(r["memory"][key].get<double>()); });
  };
  mem("(a) activations", "activations");
  if (ranks.size() > 0 && ranks[0]["memory"].value("activations_host", I{0}) > 0)
    mem("    in host memory", "activations_host");
  mem("(b) layer weights (x2)", "layer_weights");
  mem("    next layer (prefetch)", "next_layer");
  mem("    forward temporaries", "forward_temporaries");
  mem("    attention scores", "attention_scores");
  mem("(c) statistics", "statistics");
  mem("(d) factorisation", "factorisation");
  mem("    sweep slice + mask + Err", "sweep");
  mem("(e) gathered pruned weight", "gathered");
  mem("    embeddings / head (fp32)", "embeddings_head");
  mem("    weight cache", "weight_cache");
  mem("peak", "peak");
  row("  at", [](const json& r) { return r["memory"]["peak_phase"].get<std::string>(); });
  if (p["ranks"].size() > 0 && cls.back().last + 1 < ranks.size())
    fmt::print("  (first {} rank groups shown; --json lists every rank)\n", kMaxCols);
}

// The busiest rank's layer: FLOPs, bytes and seconds of each phase.
void print_plan_layer(const json& p) {
  const auto& ranks = p["ranks"];
  const auto& rates = p["rates"];
  const int D = p["grid"]["data"];
  const int lw = kLabelWidth;
  std::size_t busiest = 0;
  auto layer_s = [&](std::size_t i) { return ranks[i]["seconds_per_layer"]["total"].get<double>(); };
  for (std::size_t i = 0; i < ranks.size(); ++i)
    if (layer_s(i) > layer_s(busiest)) busiest = i;
  const auto& r = ranks[busiest];
  const auto& f = r["flops_per_layer"];
  const auto& c = r["comm_per_layer"];
  const double gf = rates["gflops"].get<double>() * 1e9, net = rates["net_gbps"].get<double>() * kGB,
               rd = rates["read_gbps"].get<double>() * kGB;
  fmt::print("\nper layer, rank {} ({} sequences = {} tokens; every rank of its stage does the same up to its "
             "share of the sequences)\n",
             r["rank"].get<int>(), r["sequences"].get<I>(), r["tokens"].get<I>());
  fmt::print("  {:<{}}{:>14}{:>14}{:>12}\n", "", lw, "FLOP", "bytes", "seconds");
  auto frow = [&](const std::string& label, double flops, const std::string& note, double rate = 0) {
    const double s = flops / (rate > 0 ? rate : gf);
    fmt::print("  {:<{}}{:>14}{:>14}{:>12}{}\n", label, lw, flops_str(flops), "", seconds_str(s), note);
  };
  auto brow = [&](const std::string& label, double bytes, double rate, const std::string& note) {
    fmt::print("  {:<{}}{:>14}{:>14}{:>12}{}\n", label, lw, "", bytes_str(bytes), seconds_str(bytes / rate), note);
  };
  const double fwd_gf = rates["forward_gflops"].get<double>() * 1e9;
  frow(fmt::format("forward (x{})", p["per_layer"]["forward_passes"].get<I>()), f["forward"].get<double>(),
       rates["forward_bytes"].get<I>() == 2 ? fmt::format("  (2-byte forward at {:g} GFLOP/s)", fwd_gf / 1e9) : "",
       fwd_gf);
  const double stats_gf = rates["statistics_gflops"].get<double>() * 1e9;
  frow("statistics (syrk)", f["statistics"].get<double>(),
       stats_gf != gf ? "  (2-byte activations: one tensor-core GEMM, twice the FLOPs)" : "", stats_gf);
  {
    // A shared factor's ranks meet at every panel: its time follows its critical path.
    const double own = f["factorisation"].get<double>(), path = f["factorisation_critical_path"].get<double>();
    fmt::print("  {:<{}}{:>14}{:>14}{:>12}{}\n", "factorisation", lw, flops_str(own), "", seconds_str(path / gf),
               D == 1       ? ""
               : path > own ? fmt::format("  (this rank's share; time: the shared factors' critical path, {})",
                                          flops_str(path))
                            : fmt::format("  (this rank's share; the {} data ranks split the groups)", D));
  }
  frow(D > 1 ? fmt::format("sweep (rows / {})", D) : "sweep", f["sweep"].get<double>(), "");
  frow("reconstruction error", f["error"].get<double>(), "");
  brow("all-reduce (statistics)", c["allreduce_sent_bytes"].get<double>(), net,
       fmt::format("  (sent, ring; buffer {})", bytes_str(c["allreduce_bytes"].get<double>())));
  brow("all-gather (pruned rows)", c["allgather_received_bytes"].get<double>(), net,
       fmt::format("  (received, of {})", bytes_str(c["allgather_bytes"].get<double>())));
  if (D > 1)
    brow("factor broadcast", c["factor_broadcast_received_bytes"].get<double>(), net,
         "  (received: factors from their owners, panels of the shared ones)");
  brow("read (safetensors)", r["seconds_per_layer"]["read"].get<double>() * rd, rd,
       r["layers"][1].get<I>() - r["layers"][0].get<I>() > 1 ? "  (the next layer's, during this one's work)" : "");
  fmt::print("  {:<{}}{:>14}{:>14}{:>12}\n", "total", lw, flops_str(f["total"].get<double>()), "",
             seconds_str(r["seconds_per_layer"]["total"].get<double>()));
}

// Each stage's time (its slowest rank), the totals and the memory limit.
void print_plan_job(const json& p) {
  const auto& ranks = p["ranks"];
  fmt::print("\nwhole job (stages run one after another: each needs the pruned outputs of the one before)\n");
  for (const auto& st : p["stages"]) {
    const int s = st["stage"];
    // The slowest rank of the stage decides it.
    const json* slow = nullptr;
    for (const auto& rr : ranks)
      if (rr["stage"].get<int>() == s &&
          (!slow || rr["seconds"]["total"].get<double>() > (*slow)["seconds"]["total"].get<double>()))
        slow = &rr;
    const auto& sec = (*slow)["seconds"];
    fmt::print("  stage {}: ranks {}, layers {}: {} (compute {}, communication {}, read {}, {} of it behind the work); "
               "reads {} per rank{}\n",
               s,
               range_str(st["ranks"][0].get<I>(), st["ranks"][1].get<I>()),
               range_str(st["layers"][0].get<I>(), st["layers"][1].get<I>() - 1),
               seconds_str(sec["total"].get<double>()),
               seconds_str(sec["compute"].get<double>()), seconds_str(sec["comm"].get<double>()),
               seconds_str(sec["read"].get<double>()), seconds_str(sec["read_hidden"].get<double>()),
               bytes_str((*slow)["io"]["read_bytes"].get<double>()),
               (*slow)["io"]["write_bytes"].get<I>() > 0
                   ? fmt::format(", writes {}", bytes_str((*slow)["io"]["write_bytes"].get<double>()))
                   : "");
  }
  if (const auto& a = p["allocation"]; !a.is_null()) {
    const bool sens = a["method"] == "sensitivity";
    fmt::print("  allocation ({}{}), before the layers: {}; {} per rank ({})\n", a["method"].get<std::string>(),
               sens ? fmt::format(", {} probes = {} forward+backward passes, activations {}", a["probes"].get<I>(),
                                  a["passes"].get<I>(), a["activations_mode"].get<std::string>())
                    : std::string(", one dense forward"),
               seconds_str(a["seconds"].get<double>()), bytes_str(a["bytes"].get<double>()),
               a["breakdown"].get<std::string>());
  }
  if (p.contains("allocation_read"))
    fmt::print("  allocation (sensitivity): the estimate is read whole from {}, no pass before the layers\n",
               p["allocation_read"].get<std::string>());
  const auto& ex = p["export"];
  if (!ex.is_null()) {
    const int per = ex["writers_per_node"].get<int>();
    fmt::print("  export: {} shard(s) of up to {} by {} writer(s) ({} per node of {} ranks: output.export_writers, "
               "--ranks-per-node); the busiest reads and writes {}: {} at the read and write rates, holding a "
               "shard ({})\n",
               ex["shards"].get<I>(), bytes_str(ex["shard_bytes"].get<double>()), ex["writers"].get<int>(),
               per == 0 ? std::string("all") : std::to_string(per), ex["ranks_per_node"].get<int>(),
               bytes_str(ex["writer_bytes"].get<double>()), seconds_str(ex["seconds"].get<double>()),
               bytes_str(ex["writer_memory_bytes"].get<double>()));
  }
  const auto& pk = p["peak"];
  const auto& tot = p["totals"];
  fmt::print("  total: {} for the prune{} (evaluation not included); {} read by all ranks; peak memory {} "
             "(rank {}, {})\n",
             seconds_str(tot["seconds"].get<double>()),
             ex.is_null() ? std::string(", no export")
                          : fmt::format(", {} with the export", seconds_str(tot["seconds_with_export"].get<double>())),
             bytes_str(tot["read_bytes"].get<double>()), bytes_str(pk["bytes"].get<double>()), pk["rank"].get<int>(),
             pk["phase"].get<std::string>());
  const double limit = p["limit_gb"];
  if (limit > 0)
    fmt::print("  parallel.memory_gb {:g}: {}\n", limit,
               p["fits"].get<bool>()
                   ? fmt::format("fits ({:.0f}% of it at the peak)", 100 * pk["gb"].get<double>() / limit)
                   : "does NOT fit");
  else
    fmt::print("  parallel.memory_gb 0: no limit checked\n");
}

// The plan as tables: memory per rank class, the per-layer work of the busiest rank, and the
// whole job.
void print_plan(const json& p) {
  print_plan_header(p);
  print_plan_memory(p);
  print_plan_layer(p);
  print_plan_job(p);
}

// The file a sensitivity allocation will read its whole estimate from (allocation.traces, or the
// probes kept in the checkpoint), checked as the run checks it, against the calibration windows'
// ids; empty when the run estimates (or for another allocation). The text is tokenized only when
// such a file exists.
std::string sensitivity_estimate_file(const Config& cfg, const model::ModelSpec& spec) {
  if (cfg.prune.allocation != "sensitivity") return "";
  const auto probes = (fs::path(cfg.output.dir) / cfg.output.checkpoint / kSensitivityProbesFile).string();
  std::error_code ec;
  const bool traces = !cfg.allocation.traces.empty() && fs::exists(cfg.allocation.traces, ec);
  if (!traces && !fs::exists(probes, ec)) return "";
  const auto calib = calibration_windows(cfg, spec, *make_tokenizer(cfg));
  const auto groups = spec.linear_groups(cfg.prune.targets, "config: 'prune.targets'");
  if (traces && sensitivity_estimate_kept(cfg, groups, calib, "")) return cfg.allocation.traces;
  Config probes_only = cfg;  // each file read once: the traces were checked above
  probes_only.allocation.traces.clear();
  return sensitivity_estimate_kept(probes_only, groups, calib, probes) ? probes : "";
}

}  // namespace

int run_plan(const Config& cfg, PlanInput in, bool as_json) {
  if (cfg.model.empty()) SCALPEL_INPUT_ERROR("config: 'model' (a Hugging Face model folder) is required");
  const auto pm = load_plan_model(cfg.model);
  in.cfg = cfg;
  in.dtype_bytes = pm.dtype_bytes;
  in.dtype_name = pm.dtype_name;
  in.tensor_bytes = pm.tensor_bytes;
  in.model_name = cfg.model;
  // An offsets file fixes the number of windows, read as the prune reads it ('#' lines are
  // comments; they were counted as windows); their range against the text is the run's check.
  if (!cfg.calibration.offsets.empty())
    in.cfg.calibration.nsamples = static_cast<I>(
        text::read_window_offsets(cfg.calibration.offsets, std::numeric_limits<std::int64_t>::max(), 0).size());
  const bool surgeon = !in.depth && cfg.prune.method == "surgeon";
  // A sensitivity estimate the run will read whole is no phase of it (the run's own check).
  const auto estimate = in.depth || surgeon ? std::string() : sensitivity_estimate_file(cfg, pm.spec);
  if (!estimate.empty()) in.cfg.prune.allocation = Config{}.prune.allocation;
  auto plan = in.depth ? make_depth_plan(pm.spec, in)
              : surgeon ? make_surgeon_plan(pm.spec, in)
                        : make_plan(pm.spec, in);
  if (!estimate.empty()) plan["allocation_read"] = estimate;
  if (as_json)
    std::cout << plan.dump(2) << '\n';
  else if (in.depth)
    print_depth_plan(plan);
  else if (surgeon)
    print_surgeon_plan(plan);
  else
    print_plan(plan);
  std::cout.flush();
  std::fflush(stdout);
  check_plan_fits(plan, cfg);
  return kExitOk;
}

}  // namespace scalpel::app
