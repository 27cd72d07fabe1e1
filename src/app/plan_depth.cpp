// `scalpel plan` for a `scalpel depth` job (a config with a `depth:` section and no `prune:`
// one, or `plan --depth`): per rank (data-parallel; every rank holds the whole model, as
// depth_run.cpp does), the memory at the criterion's pass and the work of its passes over the
// calibration windows, then the read of the model and the write of the export. The terms follow
// depth_run.cpp, every pass in fp32:
//   blocks       every decoder block resident in fp32 (a rank runs any block on any window);
//   embeddings   the token (and OPT's position) embeddings and an untied head, fp32;
//   activations  the batch's residual stream, plus the criterion's own: bi two host snapshots of
//                it, angular each depth's last-token rows, ppl every kept block's input (a
//                candidate's pass starts there) and one window's logits, laco the dense model's
//                final hidden states of its windows, the merges kept and the candidate (at most
//                n + 1 merged blocks) and the first attempt's dense pass;
//   forward      a batch's temporaries (the widest of q/k/v and the MLP, x3) and attention scores.
// Work, counted in block passes of one window (2·params·T + 2·T²·q FLOPs) and head passes
// (2·V·e·T): bi and angular L per window; deepest none; ppl per round k the kept L-k blocks once
// and each candidate's blocks after it (on average half the kept ones) plus its head, one round
// when depth.greedy is false; laco the dense pass and at most L-C+1 attempts of the whole stack
// over depth.windows windows (an upper bound: a merge kept removes blocks and skips positions).
// The evaluation after the export is not included, as in the prune's plan.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "depth_checks.hpp"
#include "plan_common.hpp"
#include "run_common.hpp"
#include "scalpel/app/plan.hpp"
#include "scalpel/core/error.hpp"

namespace scalpel::app {
namespace {

using json = nlohmann::json;
using I = std::int64_t;
using namespace plan_detail;

// Passes of one window through one block, and through the head, that a rank makes.
struct DepthWork {
  double block_passes = 0, head_passes = 0;
  std::string note;
};

DepthWork depth_work(const Config& cfg, I L, I n, I protected_blocks, I my_windows, I laco_windows) {
  DepthWork w;
  const auto& c = cfg.depth.criterion;
  const auto win = static_cast<double>(my_windows);
  if (c == "bi" || c == "angular") {
    w.block_passes = static_cast<double>(L) * win;
    w.note = "one pass of every block over the windows";
  } else if (c == "ppl") {
    const I rounds = cfg.depth.greedy ? n : 1;
    for (I k = 0; k < rounds; ++k) {
      const I kept = L - k, candidates = kept - protected_blocks;
      w.block_passes += (static_cast<double>(kept) + static_cast<double>(candidates) * (kept - 1) / 2.0) * win;
      w.head_passes += static_cast<double>(candidates) * win;
    }
    w.note = fmt::format("{} round(s); each candidate's pass runs the blocks after it (about half)", rounds);
  } else if (c == "laco") {
    const I attempts = std::max<I>(0, L - cfg.depth.merge + 1);
    w.block_passes = static_cast<double>(L * (1 + attempts)) * static_cast<double>(laco_windows);
    w.note = fmt::format("the dense pass and at most {} attempts of the whole stack over {} window(s)", attempts,
                         laco_windows);
  } else {
    w.note = "deepest: no pass over the windows";
  }
  return w;
}

// The criterion's own activations on top of the batch's residual stream (bytes).
I criterion_activations(const Config& cfg, const model::ModelSpec& spec, I B, I T, I laco_windows, I n) {
  const I d = spec.hidden, L = spec.layers, x = B * T * d * 4;
  const auto& c = cfg.depth.criterion;
  if (c == "bi") return 2 * x;
  if (c == "angular") return (L + 1) * B * d * 4 + x;
  if (c == "ppl") return L * x + x + (T - 1) * spec.vocab_size * 4 + B * (T - 1) * 8;
  // laco: every merge kept so far and the candidate (at most n + 1 merged blocks: a merge removes
  // at least one block), and the first attempt's dense pass beside it.
  if (c == "laco") return laco_windows * T * d * 4 + (n + 1) * spec.layer_params() * 4 + 2 * x;
  return 0;
}

}  // namespace

json make_depth_plan(const model::ModelSpec& spec, const PlanInput& in) {
  const Config& cfg = in.cfg;
  SCALPEL_CHECK_INPUT(in.world >= 1, "--ranks must be >= 1, got {}", in.world);
  I n = 0;
  const auto prot = check_depth(cfg, spec, n, in.world);
  const bool passes = cfg.depth.criterion != "deepest";
  const I L = spec.layers, d = spec.hidden, e = spec.word_embed_proj_dim, V = spec.vocab_size;
  const I T = cfg.calibration.seqlen > 0 ? cfg.calibration.seqlen : spec.max_positions;
  const I N = passes ? cfg.calibration.nsamples : 0, B = cfg.calibration.batch;
  // Whole batches per rank, rank 0 the busiest (the run's split; too few batches: its error).
  const I mine = passes ? calibration_shard(N, B, in.world, 0).count() : 0;
  const I laco_all = cfg.depth.windows > 0 ? std::min(cfg.depth.windows, N) : N;
  if (cfg.depth.criterion == "laco") check_laco_windows(cfg, N, in.world);  // the run's message
  const I laco_mine = cfg.depth.criterion == "laco" ? calibration_shard(laco_all, B, in.world, 0).count() : 0;
  I protected_blocks = 0;
  for (const bool p : prot) protected_blocks += p ? 1 : 0;

  // Memory per rank.
  const I blocks = spec.layer_params() * 4 * L;
  const I embeddings = (spec.total_params() - spec.layer_params() * L) * 4;
  const I qkv = (spec.heads + 2 * spec.kv_heads) * spec.head_dim;
  const I batch = B * T * d * 4;
  const I own = criterion_activations(cfg, spec, B, T, laco_mine, n);
  const I forward = passes ? B * T * std::max(qkv, spec.ffn) * 4 * 3 : 0;
  const I scores = passes ? B * spec.heads * T * T * 4 : 0;
  const I activations = passes ? batch + own : 0;
  const I peak = blocks + embeddings + activations + forward + scores;

  // Work and time per rank.
  const auto w = depth_work(cfg, L, n, protected_blocks, mine, laco_mine);
  const double block_flops = 2.0 * static_cast<double>(spec.layer_params()) * T +
                             2.0 * static_cast<double>(T) * T * spec.heads * spec.head_dim;
  const double head_flops = 2.0 * static_cast<double>(V) * e * T;
  const double flops = w.block_passes * block_flops + w.head_passes * head_flops;
  std::string note;
  const double gflops = rank_gflops(cfg, in, note);
  const double read_gbps = in.read_gbps > 0 ? in.read_gbps : 2, write_gbps = in.write_gbps > 0 ? in.write_gbps : 2;
  const double stored = static_cast<double>(spec.total_params()) * in.dtype_bytes;
  // The export: the model less the n removed blocks (embeddings and head stay).
  const double exported =
      cfg.output.export_dir.empty() ? 0.0 : stored - static_cast<double>(n * spec.layer_params() * in.dtype_bytes);
  const double compute_s = flops / (gflops * 1e9);
  const double read_s = stored / (read_gbps * 1e9), write_s = exported / (write_gbps * 1e9);
  return {{"kind", "depth"},
          {"model", {{"name", in.model_name}, {"family", spec.model_type}, {"layers", L}, {"hidden", d},
                     {"ffn", spec.ffn}, {"heads", spec.heads}, {"params", spec.total_params()},
                     {"dtype", in.dtype_name}}},
          {"job", {{"criterion", cfg.depth.criterion}, {"remove", n}, {"protected", protected_blocks},
                   {"greedy", cfg.depth.greedy}, {"merge", cfg.depth.merge}}},
          {"grid", {{"stages", 1}, {"data", in.world}}},
          {"calibration", {{"windows", N}, {"seqlen", T}, {"batch", B}, {"windows_per_rank", mine},
                           {"laco_windows_per_rank", laco_mine}}},
          {"rates", {{"gflops", gflops}, {"note", note}, {"read_gbps", read_gbps}, {"write_gbps", write_gbps}}},
          {"memory", {{"blocks_fp32", blocks}, {"embeddings_head", embeddings}, {"activations", activations},
                      {"forward_temporaries", forward}, {"attention_scores", scores}}},
          {"work", {{"block_passes", w.block_passes}, {"head_passes", w.head_passes}, {"flops", flops},
                    {"note", w.note}}},
          {"io", {{"read_bytes", stored}, {"export_bytes", exported}}},
          {"seconds", {{"passes", compute_s}, {"read", read_s}, {"export", write_s},
                       {"total", compute_s + read_s + write_s}}},
          {"peak", {{"hint", "scalpel depth holds the whole model in fp32 on each rank (data-parallel only): a "
                             "machine with more memory, or fewer calibration.batch windows per pass"},
                    {"bytes", peak}, {"rank", 0}, {"stage", 0}, {"data_index", 0},
                    {"phase", passes ? cfg.depth.criterion + " pass" : "load"},
                    {"breakdown", fmt::format("blocks {}, embeddings/head {}, activations {}, forward temporaries {}, "
                                              "attention scores {}", bytes_str(static_cast<double>(blocks)),
                                              bytes_str(static_cast<double>(embeddings)),
                                              bytes_str(static_cast<double>(activations)),
                                              bytes_str(static_cast<double>(forward)),
                                              bytes_str(static_cast<double>(scores)))}}}};
}

void print_depth_plan(const json& p) {
  const auto& m = p["model"];
  const auto& j = p["job"];
  const auto& c = p["calibration"];
  const auto& s = p["seconds"];
  fmt::print("depth plan: {} ({}, {} blocks, hidden {}, ffn {}, {} heads, {:.2f} M params stored as {})\n",
             m["name"].get<std::string>(), m["family"].get<std::string>(), m["layers"].get<I>(),
             m["hidden"].get<I>(), m["ffn"].get<I>(), m["heads"].get<I>(), m["params"].get<I>() / 1e6,
             m["dtype"].get<std::string>());
  fmt::print("job: depth.criterion {}, remove {} block(s), {} protected\n", j["criterion"].get<std::string>(),
             j["remove"].get<I>(), j["protected"].get<I>());
  fmt::print("ranks: {} (data-parallel; every rank holds the whole model), {} of {} windows on rank 0 x {} tokens\n",
             p["grid"]["data"].get<I>(), c["windows_per_rank"].get<I>(), c["windows"].get<I>(), c["seqlen"].get<I>());
  fmt::print("memory per rank: peak {} ({})\n", bytes_str(p["peak"]["bytes"].get<double>()),
             p["peak"]["breakdown"].get<std::string>());
  const auto& w = p["work"];
  fmt::print("passes per rank: {:.0f} block passes and {:.0f} head passes of a window ({}): {}\n",
             w["block_passes"].get<double>(), w["head_passes"].get<double>(), w["note"].get<std::string>(),
             flops_str(w["flops"].get<double>()));
  fmt::print("estimated run: {} (passes {} at {:.0f} GFLOP/s per rank, {}; read {} at {:g} GB/s; export {} at {:g} "
             "GB/s); evaluation not included\n",
             seconds_str(s["total"].get<double>()), seconds_str(s["passes"].get<double>()),
             p["rates"]["gflops"].get<double>(), p["rates"]["note"].get<std::string>(),
             bytes_str(p["io"]["read_bytes"].get<double>()), p["rates"]["read_gbps"].get<double>(),
             bytes_str(p["io"]["export_bytes"].get<double>()), p["rates"]["write_gbps"].get<double>());
}

}  // namespace scalpel::app
