// `scalpel plan` for prune.method: surgeon (LLM Surgeon's shots): per rank (every data rank holds
// the whole model; the calibration windows are split, and each pruned linear is scored and updated
// by one rank, as surgeon_run.cpp assigns them: by weight count, largest first to the least
// loaded; the figures are those of the busiest rank),
// the memory by term at the shot's peak, and the FLOPs and time of a shot and of the run, phase by
// phase. The terms follow surgeon_run.cpp:
//   weights      every decoder layer resident in fp32 (pruned layers never leave memory), embeddings
//                and head, and the pruned linears' host copies [R, C(+1)] that the shots update;
//   factor sums  A per input group (q/k/v and gate/up share one) and G per linear: the packed upper
//                triangle in float64 (fast) or three int64 bins (strict), plus one batch's fp32 syrk;
//   factors      one linear's A and G means in float64 at a time, while it is scored;
//   inverses     the Ĝ⁻¹ and Â⁻¹ in fp32 of the linears the rank owns, held from scoring to the update;
//   activations  keep (every layer's forward intermediates of a batch) or recompute (each layer's
//                input only, plus one layer's intermediates), as surgeon.keep_activations_mb decides;
//   chunks       8 chunk matrices of max_correlate² fp32 factorised together.
// surgeon.cost kobd scores with the factors' diagonals (no inverses, no chunk systems, no
// correlated update); magnitude needs no curvature at all (no backward, factor sums or factors).
// FLOPs: forward 2·params·tokens + attention, backward twice that (input gradients only; no weight
// gradients), a second forward when recomputing; factors T·d² per factor; float64 inverses n³
// (Cholesky, triangular inverse, LᵀL) per factor, at half the fp32 rate; chunk solves (1/3)·Q³ per
// chunk of Q = max_correlate weights, s_k·n/Q chunks at shot k.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <iostream>

#include "plan_common.hpp"
#include "run_common.hpp"
#include "scalpel/app/plan.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/dist/comm.hpp"

namespace scalpel::app {
namespace {

using json = nlohmann::json;
using I = std::int64_t;
using namespace plan_detail;

struct Sizes {
  I params = 0, pruned = 0;        // decoder linears' weights + biases; of them, the pruned targets
  I a_packed = 0, g_packed = 0;    // entries of the packed upper triangles (all factors)
  I largest_factor = 0;            // the largest C' or R
  double factor_flops = 0;         // per token: Σ d² over factors
  double inverse_flops = 0;        // Σ n³ over the busiest rank's linears' A and G
  I inverses_bytes = 0;            // Σ (R² + C'²) · 4 over its linears
  I rank_pruned = 0;               // the pruned weights of its linears (its share of the chunk solves)
  I largest_linear = 0;            // the most weights of one pruned linear
  double rank_cubes = 0;           // Σ numel³ over its linears (max_correlate 0: one chunk per linear)
};

// Per pruned linear of the model (layer by layer): its weight count and its inverses' FLOPs and
// bytes; then the busiest rank's sums under the run's assignment.
void assign_to_ranks(Sizes& z, const std::vector<double>& numel, const std::vector<double>& inv_flops,
                     const std::vector<I>& inv_bytes, int ranks) {
  const auto owners = dist::balance_parts(numel, ranks);
  std::vector<double> flops(static_cast<std::size_t>(ranks), 0.0), weights(flops), cubes(flops);
  std::vector<I> bytes(static_cast<std::size_t>(ranks), 0);
  for (std::size_t i = 0; i < owners.size(); ++i) {
    const auto r = static_cast<std::size_t>(owners[i]);
    flops[r] += inv_flops[i];
    bytes[r] += inv_bytes[i];
    weights[r] += numel[i];
    cubes[r] += std::pow(numel[i], 3);
    z.largest_linear = std::max(z.largest_linear, static_cast<I>(numel[i]));
  }
  const auto busiest = static_cast<std::size_t>(std::max_element(weights.begin(), weights.end()) - weights.begin());
  z.inverse_flops = flops[busiest];
  z.inverses_bytes = bytes[busiest];
  z.rank_pruned = static_cast<I>(weights[busiest]);
  z.rank_cubes = cubes[busiest];
}

Sizes sizes_of(const model::ModelSpec& spec, const Config& cfg, int ranks) {
  Sizes z;
  std::vector<double> numel, inv_flops;
  std::vector<I> inv_bytes;
  const auto groups = spec.linear_groups(cfg.prune.targets, "config: 'prune.targets'");
  if (const auto nm = cfg.prune.pattern != "unstructured" && cfg.prune.pattern != "structured"
                          ? parse_nm(cfg.prune.pattern)
                          : std::nullopt)
    check_nm_widths(groups, nm->first, nm->second);
  for (const auto& l : spec.linears()) z.params += l.out * (l.in + (l.bias ? 1 : 0));
  z.params *= spec.layers;
  for (const auto& g : groups) {
    const I c = g.linears.front().in + (g.linears.front().bias ? 1 : 0);
    z.a_packed += c * (c + 1) / 2;
    z.factor_flops += static_cast<double>(c) * static_cast<double>(c);
    for (const auto& l : g.linears) {
      const I r = l.out;
      z.pruned += r * c;
      z.g_packed += r * (r + 1) / 2;
      z.factor_flops += static_cast<double>(r) * static_cast<double>(r);
      numel.push_back(static_cast<double>(r * c));
      inv_flops.push_back(std::pow(static_cast<double>(r), 3) + std::pow(static_cast<double>(c), 3));
      inv_bytes.push_back((r * r + c * c) * 4);
      z.largest_factor = std::max({z.largest_factor, r, c});
    }
  }
  z.pruned *= spec.layers;
  z.a_packed *= spec.layers;
  z.g_packed *= spec.layers;
  z.factor_flops *= static_cast<double>(spec.layers);
  const auto per_layer = numel.size();
  for (I l = 1; l < spec.layers; ++l)
    for (std::size_t i = 0; i < per_layer; ++i) {
      numel.push_back(numel[i]);
      inv_flops.push_back(inv_flops[i]);
      inv_bytes.push_back(inv_bytes[i]);
    }
  assign_to_ranks(z, numel, inv_flops, inv_bytes, ranks);
  return z;
}


}  // namespace

namespace {

// Bytes per rank: the whole model, the factor sums, the activations (kept per layer, or recomputed
// from each layer's input), and in the update phase the inverses, factors and chunk solves.
struct SurgeonMemory {
  I layer_cache = 0, activations = 0, weights = 0, sums = 0, factors = 0, chunks = 0, inverses = 0;
  I curvature_peak = 0, update_peak = 0;
  bool keep = false;
};

SurgeonMemory surgeon_memory(const model::ModelSpec& spec, const Config& cfg, const Sizes& z, I B, I T) {
  SurgeonMemory m;
  const I e = spec.word_embed_proj_dim, V = spec.vocab_size, L = spec.layers;
  const bool curvature = cfg.surgeon.cost != "magnitude", inverses = cfg.surgeon.cost == "surgeon";
  const auto act = backward_activations(spec, B, T, cfg.surgeon.keep_activations_mb);
  m.layer_cache = act.layer_cache;
  m.keep = act.keep;
  // magnitude: no backward; the final calibration loss's forward holds one batch's residual
  // stream, one layer's intermediates and a window's logits.
  m.activations = curvature ? act.bytes : act.layer_cache + B * T * spec.hidden * 4 + T * V * 4;
  m.weights = spec.layer_params() * 4 * L + V * e * 4 * (spec.tie_embeddings ? 1 : 2) + z.params * 4;
  if (curvature) {
    m.sums = (z.a_packed + z.g_packed) * (cfg.determinism == "strict" ? 24 : 8) +
             z.largest_factor * z.largest_factor * 4;
    m.factors = 2 * z.largest_factor * z.largest_factor * 8;
  }
  // kobd scores from the factors' diagonals: no inverses, no correlated update.
  const I mc = cfg.surgeon.max_correlate > 0 ? cfg.surgeon.max_correlate : 0;
  // max_correlate 0 ("all"): a linear's removed weights are one system, s·n of them at the last
  // shot, its matrix held alone (unstructured and N:M; it was priced 0, and a run of opt-mini's
  // 50% never finished).
  const bool elements = cfg.prune.pattern != "structured";
  const auto nm = elements && cfg.prune.pattern != "unstructured" ? parse_nm(cfg.prune.pattern) : std::nullopt;
  const double s_final = nm ? static_cast<double>(nm->first) / nm->second : cfg.prune.sparsity;
  const auto all = static_cast<I>(std::ceil(s_final * static_cast<double>(z.largest_linear)));
  m.chunks = !inverses ? 0 : mc > 0 ? 8 * mc * mc * 4 : elements ? all * all * 4 : 0;
  m.inverses = inverses ? z.inverses_bytes : 0;
  m.curvature_peak = m.weights + m.sums + m.activations;
  m.update_peak = m.weights + m.inverses + m.factors + m.chunks;
  return m;
}

// FLOPs per rank: a shot's forward and backward, factor accumulation and inverses, and the chunk
// solves of all shots (they grow with the shot's sparsity).
struct SurgeonWork {
  double fwd_bwd = 0, factors = 0, inverses = 0, solve_total = 0, shot_flops = 0;
  bool curvature = true;
};

SurgeonWork surgeon_work(const model::ModelSpec& spec, const Config& cfg, const Sizes& z, I my_windows, I T,
                         bool keep) {
  SurgeonWork w;
  const I tokens = my_windows * T, L = spec.layers, K = cfg.surgeon.shots;
  const I qdim = spec.heads * spec.head_dim;
  const double lin = 2.0 * static_cast<double>(z.params) * static_cast<double>(tokens);
  const double attn = 2.0 * static_cast<double>(L) * static_cast<double>(my_windows) * T * T * qdim;  // causal half of 4·T²·qdim
  const double head = 2.0 * static_cast<double>(spec.vocab_size) * spec.word_embed_proj_dim * static_cast<double>(tokens);
  const double fwd = lin + attn + head;
  w.fwd_bwd = fwd * 3 + (keep ? 0.0 : lin + attn);
  w.factors = z.factor_flops * static_cast<double>(tokens);
  w.inverses = cfg.surgeon.cost == "surgeon" ? z.inverse_flops : 0.0;  // kobd: the factors' diagonals
  const I mc = cfg.surgeon.max_correlate > 0 ? cfg.surgeon.max_correlate : 0;
  const bool elements = cfg.prune.pattern != "structured", surgeon_cost = cfg.surgeon.cost == "surgeon";
  const auto nm = elements && cfg.prune.pattern != "unstructured" ? parse_nm(cfg.prune.pattern) : std::nullopt;
  const double s_final = nm ? static_cast<double>(nm->first) / nm->second : cfg.prune.sparsity;  // N:M reaches N/M
  for (I k = 1; k <= K; ++k) {
    const double q = s_final * static_cast<double>(k) / static_cast<double>(K) * static_cast<double>(z.rank_pruned);
    if (surgeon_cost && elements && mc > 0) w.solve_total += q / static_cast<double>(mc) * std::pow(static_cast<double>(mc), 3) / 3;
    // max_correlate 0: one system per linear, (s_k n)³/3 each.
    if (surgeon_cost && elements && mc == 0)
      w.solve_total += std::pow(s_final * static_cast<double>(k) / static_cast<double>(K), 3) * z.rank_cubes / 3;
  }
  w.curvature = cfg.surgeon.cost != "magnitude";
  w.shot_flops = w.curvature ? w.fwd_bwd + w.factors + 2 * w.inverses : 0;  // inverses at half the fp32 rate
  return w;
}

// The terms of the larger phase, which add up to the peak.
std::string peak_breakdown(const SurgeonMemory& m) {
  const auto b = [](I x) { return bytes_str(static_cast<double>(x)); };
  if (m.curvature_peak >= m.update_peak)
    return fmt::format("weights {}, factor sums {}, activations {}", b(m.weights), b(m.sums), b(m.activations));
  return fmt::format("weights {}, inverses {}, factors {}, chunk systems {}", b(m.weights), b(m.inverses),
                     b(m.factors), b(m.chunks));
}

}  // namespace

json make_surgeon_plan(const model::ModelSpec& spec, const PlanInput& in) {
  const Config& cfg = in.cfg;
  SCALPEL_CHECK_INPUT(in.world >= 1, "--ranks must be >= 1, got {}", in.world);
  SCALPEL_CHECK_INPUT(cfg.parallel.stages == 1, "config: 'parallel.stages' {}: LLM Surgeon runs data-parallel only "
                      "(parallel.stages: 1)", cfg.parallel.stages);
  const I T = cfg.calibration.seqlen > 0 ? cfg.calibration.seqlen : spec.max_positions;
  const I N = cfg.calibration.nsamples, B = cfg.calibration.batch, K = cfg.surgeon.shots, L = spec.layers;
  const I my_windows = (N + in.world - 1) / in.world;
  const auto z = sizes_of(spec, cfg, in.world);
  const SurgeonMemory m = surgeon_memory(spec, cfg, z, B, T);
  const I peak = std::max(m.curvature_peak, m.update_peak);
  std::string note;
  const double gflops = rank_gflops(cfg, in, note);
  const SurgeonWork w = surgeon_work(spec, cfg, z, my_windows, T, m.keep);
  const double run_seconds = (static_cast<double>(K) * w.shot_flops + w.solve_total) / (gflops * 1e9);
  return {{"kind", "surgeon"},
          {"model", {{"name", in.model_name}, {"layers", L}, {"hidden", spec.hidden}, {"ffn", spec.ffn},
                     {"params", z.params}, {"pruned_params", z.pruned}}},
          {"job", {{"shots", K}, {"pattern", cfg.prune.pattern}, {"cost", cfg.surgeon.cost},
                   {"max_correlate", cfg.surgeon.max_correlate}, {"determinism", cfg.determinism}}},
          {"grid", {{"stages", 1}, {"data", in.world}}},
          {"calibration", {{"windows", N}, {"seqlen", T}, {"batch", B}, {"windows_per_rank", my_windows}}},
          {"activations", {{"mode", m.keep ? "keep" : "recompute"}, {"layer_cache_bytes", m.layer_cache},
                           {"keep_activations_mb", cfg.surgeon.keep_activations_mb}}},
          {"rates", {{"gflops", gflops}, {"note", note}}},
          {"memory", {{"weights", m.weights}, {"factor_sums", m.sums}, {"activations", m.activations},
                      {"factors", m.factors}, {"inverses", m.inverses}, {"chunks", m.chunks},
                      {"curvature_peak", m.curvature_peak}, {"update_peak", m.update_peak}}},
          {"per_shot_flops", {{"forward_backward", w.curvature ? w.fwd_bwd : 0.0},
                              {"factors", w.curvature ? w.factors : 0.0},
                              {"inverses_f64", w.curvature ? w.inverses : 0.0}}},
          {"solve_flops_all_shots", w.solve_total},
          {"seconds", run_seconds},
          {"peak", {{"hint", "LLM Surgeon holds the whole model and every pruned linear's factors on each rank in "
                             "this release (data-parallel only): a smaller model, prune.targets, or a machine with "
                             "more memory"},
                    {"bytes", peak}, {"rank", 0}, {"stage", 0}, {"data_index", 0},
                    {"phase", m.curvature_peak >= m.update_peak ? "curvature" : "update"},
                    {"breakdown", peak_breakdown(m)}}}};
}

void print_surgeon_plan(const json& p) {
  const auto& m = p["memory"];
  const auto b = [](const json& v) { return bytes_str(static_cast<double>(v.get<I>())); };
  fmt::print("LLM Surgeon plan: {} ({} layers, {:.1f}M decoder params, {:.1f}M pruned), {} shots, {} pattern, {} cost\n",
             p["model"]["name"].get<std::string>(), p["model"]["layers"].get<I>(),
             p["model"]["params"].get<I>() / 1e6, p["model"]["pruned_params"].get<I>() / 1e6,
             p["job"]["shots"].get<I>(), p["job"]["pattern"].get<std::string>(), p["job"]["cost"].get<std::string>());
  fmt::print("ranks: {} (data-parallel; every rank holds the whole model), {} windows per rank x {} tokens\n",
             p["grid"]["data"].get<I>(), p["calibration"]["windows_per_rank"].get<I>(),
             p["calibration"]["seqlen"].get<I>());
  fmt::print("activations: {} (one layer's intermediates {}; surgeon.keep_activations_mb {})\n",
             p["activations"]["mode"].get<std::string>(), b(p["activations"]["layer_cache_bytes"]),
             p["activations"]["keep_activations_mb"].get<I>());
  fmt::print("memory per rank: weights {}, factor sums {}, activations {}, factors (one linear) {}, inverses {}, "
             "chunks {}\n", b(m["weights"]), b(m["factor_sums"]), b(m["activations"]), b(m["factors"]),
             b(m["inverses"]), b(m["chunks"]));
  fmt::print("peak {} ({} phase); curvature {}, update {}\n", b(p["peak"]["bytes"]),
             p["peak"]["phase"].get<std::string>(), b(m["curvature_peak"]), b(m["update_peak"]));
  const auto& f = p["per_shot_flops"];
  fmt::print("per shot: forward+backward {}, factors {}, float64 inverses {}; chunk solves over all shots {}\n",
             flops_str(f["forward_backward"].get<double>()), flops_str(f["factors"].get<double>()),
             flops_str(f["inverses_f64"].get<double>()), flops_str(p["solve_flops_all_shots"].get<double>()));
  fmt::print("estimated run: {} at {:.0f} GFLOP/s per rank ({})\n", seconds_str(p["seconds"].get<double>()),
             p["rates"]["gflops"].get<double>(), p["rates"]["note"].get<std::string>());
}

}  // namespace scalpel::app
