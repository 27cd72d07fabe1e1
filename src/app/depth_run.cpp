// `scalpel depth`: removes whole decoder blocks (README "Depth pruning"). The calibration windows
// run through the dense model split over the ranks (whole batches per rank, as the prune drivers
// split them); per-window sums are gathered to every rank and added in window order, so scores and
// choices do not depend on the rank count. The criteria (depth.criterion):
//   bi       ShortGPT's Block Influence, 1 - mean cos(block input, block output) over every token
//   angular  Gromov et al.: arccos(cos(x_l, x_{l+n}))/π at each sequence's last token; the n
//            consecutive blocks from the argmin go
//   deepest  Gromov et al.'s simple rule: the n deepest blocks before the last (no scores)
//   ppl      SLEB-style greedy: each round removes the block whose removal leaves the lowest
//            calibration perplexity
//   laco     LaCo's merge schedule: blocks merged by RDSC while the final hidden states stay close
//            (cosine) to the dense model's
// The math lives in depth_scores.cpp; this file computes hidden states, gathers sums, writes the
// metrics record, the export (blocks dropped and renumbered, config.json rewritten) and evaluates
// the result. The progress (scores, rounds, attempts, export, evaluation count) is kept in
// depth_state's file after each unit, so a stopped or killed run goes on from there.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>

#include "depth_checks.hpp"
#include "depth_scores.hpp"
#include "depth_state.hpp"
#include "root_work.hpp"
#include "run_common.hpp"
#include "scalpel/app/commands.hpp"
#include "scalpel/app/export.hpp"
#include "scalpel/app/plan.hpp"
#include "scalpel/app/run_control.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/core/log.hpp"
#include "scalpel/core/timer.hpp"
#include "scalpel/io/checkpoint_shard.hpp"
#include "scalpel/io/hf_checkpoint.hpp"
#include "scalpel/io/manifest.hpp"

namespace fs = std::filesystem;

namespace scalpel::app {
namespace {

using Block = std::shared_ptr<const model::LayerWeights>;

// What every pass over the calibration windows needs.
struct DepthRun {
  const Config& cfg;
  dist::Comm& world;
  Backend& be;
  model::Model& m;
  const io::HfCheckpoint& src;
  const CalibrationWindows& calib;
  std::optional<model::RopeTables> rope;
  std::vector<Block> blocks;  // the dense model's blocks
  DepthState* state;  // the progress kept for a rerun
  Metrics* metrics;
  std::string hash;  // the whole config's, as the metrics records carry it
  int threads = 0;   // per rank, as the evaluation records carry it
};

// Thrown on every rank alike (stop_requested agrees through an all-reduce) when a signal asked
// for a stop between two ppl rounds or LaCo attempts; run_depth ends with exit code 75.
struct DepthStopped {};

// Whether a signal asked for a stop after `unit` `done` of `total` (kept in the state file).
void stop_point(DepthRun& r, const char* unit, std::int64_t done, std::int64_t total) {
  const auto what = fmt::format("kept in {}", r.state->path().string());
  if (stop_requested(r.world, {unit, done, total, done, what.c_str()}, r.hash, *r.metrics)) throw DepthStopped{};
}

// The numbers kept under `key` when they are `size` of them (any size: 0), else none (a state
// that does not fit this run is recomputed, with a warning).
std::optional<std::vector<double>> kept_numbers(const nlohmann::json& j, std::size_t size, const std::string& what) {
  if (j.is_null()) return std::nullopt;
  try {
    auto v = numbers_from(j, what);
    if (size == 0 || v.size() == size) return v;
  } catch (const Error&) {
  }
  log::warn("depth: the kept {} do not fit this run; computing them anew", what);
  return std::nullopt;
}

// The scores of a one-pass criterion (bi, angular): kept by an earlier run, or computed and kept.
template <class F>
std::vector<double> kept_scores(DepthRun& r, std::size_t size, F&& compute) {
  if (auto v = kept_numbers(r.state->at("scores"), size, "scores")) {
    log::info("depth: the {} scores kept in {}", r.cfg.depth.criterion, r.state->path().string());
    return *v;
  }
  auto v = compute();
  r.state->keep("scores", exact_numbers(v));
  return v;
}

const model::ModelSpec& spec_of(DepthRun& r) { return r.m.spec(); }

// A host snapshot of a tensor (the CPU backend's download aliases the device buffer).
Tensor snapshot(Backend& be, const Tensor& x) { return be.download(x).clone(); }

void run_block(DepthRun& r, const Block& w, Tensor& x, std::int64_t b) {
  model::decoder_layer_forward(r.be, spec_of(r), *w, x, b, r.calib.seqlen, r.rope ? &*r.rope : nullptr);
}

void run_stack(DepthRun& r, const std::vector<Block>& stack, Tensor& x, std::int64_t b) {
  for (const auto& w : stack) run_block(r, w, x, b);
}

// Calls fn(first window, count, ids) for each batch of the windows [0, nwin) this rank holds.
// A pass that outlasts log.progress_seconds says how far rank 0 is (`what`: the pass's name).
template <class F>
void for_my_batches(DepthRun& r, std::int64_t nwin, const char* what, F&& fn) {
  const auto batch = r.cfg.calibration.batch;
  const auto mine = calibration_shard(nwin, batch, r.world.size(), r.world.rank());
  Progress progress(what, mine.count(), r.world.size() > 1 ? "windows of rank 0" : "windows",
                    r.cfg.log.progress_seconds, r.world.is_root());
  for (std::int64_t s0 = mine.begin; s0 < mine.end; s0 += batch) {
    const auto b = std::min(batch, mine.end - s0);
    fn(s0, b, r.calib.windows(s0, b));
    const auto done = s0 + b - mine.begin;
    if (s0 + b < mine.end) progress.update(done, done * r.calib.seqlen);  // no line for a pass's end
  }
}

// Every rank's rows of `width` per-window values, concatenated in window order on every rank,
// summed column by column in that order (the same bits at any rank count).
std::vector<double> sum_windows(dist::Comm& comm, const std::vector<double>& mine, std::size_t width) {
  const auto all = detail::allgather_vector(mine, comm);
  std::vector<double> sums(width, 0.0);
  for (std::size_t i = 0; i < all.size(); ++i) sums[i % width] += all[i];
  return sums;
}

std::vector<double> bi_scores(DepthRun& r) {
  const auto L = spec_of(r).layers, T = r.calib.seqlen, d = spec_of(r).hidden;
  std::vector<double> mine;
  for_my_batches(r, r.calib.nseq, "depth bi", [&](std::int64_t, std::int64_t b, std::span<const std::int32_t> ids) {
    Tensor x = r.m.embed(ids, b, T);
    Tensor prev = snapshot(r.be, x);
    std::vector<double> rows(static_cast<std::size_t>(b * L));
    for (std::int64_t l = 0; l < L; ++l) {
      run_block(r, r.blocks[static_cast<std::size_t>(l)], x, b);
      Tensor next = snapshot(r.be, x);
      for (std::int64_t w = 0; w < b; ++w)
        rows[static_cast<std::size_t>(w * L + l)] = depth::cosine_sum(prev.f32() + w * T * d, next.f32() + w * T * d, T, d);
      prev = next;
    }
    mine.insert(mine.end(), rows.begin(), rows.end());
  });
  const auto sums = sum_windows(r.world, mine, static_cast<std::size_t>(L));
  return depth::block_influence(sums, static_cast<double>(r.calib.nseq * T));
}

// d(l, n) for l = 0 .. L - n, averaged over the sequences (last token of each).
std::vector<double> angular_scores(DepthRun& r, std::int64_t n) {
  const auto L = spec_of(r).layers, T = r.calib.seqlen, d = spec_of(r).hidden, width = L - n + 1;
  std::vector<double> mine;
  for_my_batches(r, r.calib.nseq, "depth angular", [&](std::int64_t, std::int64_t b, std::span<const std::int32_t> ids) {
    Tensor x = r.m.embed(ids, b, T);
    std::vector<float> last(static_cast<std::size_t>((L + 1) * b * d));  // [depth][window][d]
    for (std::int64_t l = 0; l <= L; ++l) {
      if (l > 0) run_block(r, r.blocks[static_cast<std::size_t>(l - 1)], x, b);
      const Tensor h = r.be.download(x);
      for (std::int64_t w = 0; w < b; ++w)
        std::copy_n(h.f32() + (w * T + T - 1) * d, d, last.data() + (l * b + w) * d);
    }
    for (std::int64_t w = 0; w < b; ++w)
      for (std::int64_t s = 0; s < width; ++s)
        mine.push_back(depth::angular_distance(
            depth::cosine(last.data() + (s * b + w) * d, last.data() + ((s + n) * b + w) * d, d)));
  });
  auto sums = sum_windows(r.world, mine, static_cast<std::size_t>(width));
  for (auto& s : sums) s /= static_cast<double>(r.calib.nseq);
  return sums;
}

// One greedy round: the calibration perplexity with `removed` and each candidate skipped. Each
// batch runs the current model once, keeping every block's input; a candidate's pass starts from
// its block's input.
std::vector<double> ppl_round(DepthRun& r, const std::vector<std::int64_t>& removed,
                              const std::vector<std::int64_t>& candidates) {
  const auto L = spec_of(r).layers, T = r.calib.seqlen;
  std::vector<std::int64_t> kept;
  for (std::int64_t l = 0; l < L; ++l)
    if (std::find(removed.begin(), removed.end(), l) == removed.end()) kept.push_back(l);
  const auto nc = candidates.size();
  std::vector<double> mine, nll;
  for_my_batches(r, r.calib.nseq, "ppl round", [&](std::int64_t, std::int64_t b, std::span<const std::int32_t> ids) {
    Tensor x = r.m.embed(ids, b, T);
    std::vector<Tensor> inputs;
    for (const auto l : kept) {
      Tensor in = r.be.empty(x.shape());
      r.be.copy(x, in);
      inputs.push_back(in);
      run_block(r, r.blocks[static_cast<std::size_t>(l)], x, b);
    }
    std::vector<double> rows(static_cast<std::size_t>(b) * nc);
    nll.assign(static_cast<std::size_t>(b * (T - 1)), 0.0);
    for (std::size_t c = 0; c < nc; ++c) {
      const auto p = static_cast<std::size_t>(std::find(kept.begin(), kept.end(), candidates[c]) - kept.begin());
      Tensor y = r.be.empty(x.shape());
      r.be.copy(inputs[p], y);
      for (std::size_t q = p + 1; q < kept.size(); ++q) run_block(r, r.blocks[static_cast<std::size_t>(kept[q])], y, b);
      r.m.head_nll(y, ids, b, T, nll);
      for (std::int64_t w = 0; w < b; ++w) {
        double s = 0;
        for (std::int64_t t = 0; t < T - 1; ++t) s += nll[static_cast<std::size_t>(w * (T - 1) + t)];
        rows[static_cast<std::size_t>(w) * nc + c] = s;
      }
    }
    mine.insert(mine.end(), rows.begin(), rows.end());
  });
  auto sums = sum_windows(r.world, mine, nc);
  for (auto& s : sums) s = std::exp(s / static_cast<double>(r.calib.nseq * (T - 1)));
  return sums;
}

// ---- LaCo ----

// RDSC of a group of blocks into its first (`first`: its original index, whose stored dtypes the
// merged tensors are rounded to, so the scored model is the exported one): every linear weight
// and bias merged, the norms of the first block.
Block merge_blocks(DepthRun& r, const std::vector<Block>& group, std::int64_t first) {
  const auto& spec = spec_of(r);
  auto merged = std::make_shared<model::LayerWeights>(*group[0]);
  for (const auto& lin : spec.linears())
    for (const std::string suffix : {".weight", ".bias"}) {
      if (suffix == ".bias" && !lin.bias) continue;
      const auto name = lin.name + suffix;
      const Tensor base = r.be.download(group[0]->at(name));
      std::vector<Tensor> others;
      std::vector<std::span<const float>> spans;
      for (std::size_t k = 1; k < group.size(); ++k) others.push_back(r.be.download(group[k]->at(name)));
      for (const auto& o : others) spans.emplace_back(o.f32(), static_cast<std::size_t>(o.numel()));
      Tensor out = Tensor::empty(base.shape());
      const auto n = static_cast<std::size_t>(base.numel());
      depth::rdsc_merge({base.f32(), n}, spans, {out.f32(), n});
      Tensor stored = Tensor::empty(base.shape(), r.src.info(spec.layer_prefix(first) + name).dtype);
      convert_from_f32(stored.dtype(), out.f32(), stored.raw(), n);
      merged->tensors[name] = r.be.upload(stored);
    }
  return merged;
}

// The current model of LaCo's schedule: its blocks, each with the original indices it holds.
struct LacoState {
  std::vector<Block> blocks;
  std::vector<std::vector<std::int64_t>> groups;
  std::vector<Tensor> dense;  // per batch of this rank: the dense model's last block output (host)
  std::int64_t windows = 0;
  Block candidate;            // the merged block of the last candidate scored (null: not merged yet)
  std::size_t attempt = 0;    // attempts scored (or read from the kept ones) so far
};

std::vector<Block> merged_stack(const LacoState& s, std::int64_t l, std::int64_t count, const Block& merged) {
  std::vector<Block> stack = s.blocks;
  stack[static_cast<std::size_t>(l)] = merged;
  stack.erase(stack.begin() + l + 1, stack.begin() + l + count);
  return stack;
}

// Mean over the tokens of the first s.windows windows of cos(candidate's, dense model's last
// block output).
double laco_similarity(DepthRun& r, LacoState& s, const std::vector<Block>& stack) {
  const auto T = r.calib.seqlen, d = spec_of(r).hidden;
  const bool first = s.dense.empty();
  std::vector<double> mine;
  std::size_t batch = 0;
  for_my_batches(r, s.windows, "laco attempt", [&](std::int64_t, std::int64_t b, std::span<const std::int32_t> ids) {
    Tensor x = r.m.embed(ids, b, T);
    if (first) {
      Tensor y = r.m.embed(ids, b, T);
      run_stack(r, r.blocks, y, b);
      s.dense.push_back(snapshot(r.be, y));
    }
    run_stack(r, stack, x, b);
    const Tensor h = r.be.download(x);
    const Tensor& ref = s.dense[batch++];
    for (std::int64_t w = 0; w < b; ++w)
      mine.push_back(depth::cosine_sum(h.f32() + w * T * d, ref.f32() + w * T * d, T, d));
  });
  return sum_windows(r.world, mine, 1)[0] / static_cast<double>(s.windows * T);
}

// The similarity of LaCo attempt `at` (current blocks l .. l+count-1), when an earlier run kept it.
std::optional<double> kept_attempt(DepthRun& r, std::size_t at, std::int64_t l, std::int64_t count) {
  const auto& attempts = r.state->at("attempts");
  if (!attempts.is_array() || at >= attempts.size()) return std::nullopt;
  const auto& k = attempts[at];
  if (!k.is_object() || k.value("start", nlohmann::json()) != nlohmann::json(l) ||
      k.value("count", nlohmann::json()) != nlohmann::json(count))
    return std::nullopt;
  const auto v = kept_numbers(k.value("similarity", nlohmann::json()), 1, "laco attempt");
  if (!v) return std::nullopt;
  log::info("laco: merging current blocks {}..{}: similarity {:.6f} kept in {}", l, l + count - 1, (*v)[0],
            r.state->path().string());
  return (*v)[0];
}

std::vector<depth::LacoAttempt> laco_run(DepthRun& r, LacoState& s, std::int64_t n, const std::vector<bool>& prot) {
  const auto& d = r.cfg.depth;
  s.blocks = r.blocks;
  for (std::int64_t l = 0; l < spec_of(r).layers; ++l) s.groups.push_back({l});
  s.windows = d.windows > 0 ? std::min(d.windows, r.calib.nseq) : r.calib.nseq;
  const depth::LacoOptions o{d.merge, d.interval, n, d.threshold};
  auto merge = [&](std::int64_t l, std::int64_t count) {
    const std::vector<Block> group(s.blocks.begin() + l, s.blocks.begin() + l + count);
    return merge_blocks(r, group, s.groups[static_cast<std::size_t>(l)][0]);
  };
  auto similarity = [&](std::int64_t l, std::int64_t count) {
    const auto at = s.attempt++;
    if (const auto kept = kept_attempt(r, at, l, count)) {  // merged only if accepted
      s.candidate = nullptr;
      return *kept;
    }
    s.candidate = merge(l, count);
    const double sim = laco_similarity(r, s, merged_stack(s, l, count, s.candidate));
    log::info("laco: merging current blocks {}..{} gives similarity {:.6f}", l, l + count - 1, sim);
    auto kept = r.state->at("attempts");
    if (!kept.is_array()) kept = nlohmann::json::array();
    kept.erase(kept.begin() + std::min(at, kept.size()), kept.end());
    kept.push_back({{"start", l}, {"count", count}, {"similarity", exact_numbers({sim})}});
    r.state->keep("attempts", std::move(kept));
    stop_point(r, "attempt", static_cast<std::int64_t>(at) + 1, 0);
    return sim;
  };
  auto accept = [&](std::int64_t l, std::int64_t count) {
    if (!s.candidate) s.candidate = merge(l, count);
    s.blocks = merged_stack(s, l, count, s.candidate);
    auto& g = s.groups[static_cast<std::size_t>(l)];
    for (std::int64_t k = l + 1; k < l + count; ++k)
      g.insert(g.end(), s.groups[static_cast<std::size_t>(k)].begin(), s.groups[static_cast<std::size_t>(k)].end());
    s.groups.erase(s.groups.begin() + l + 1, s.groups.begin() + l + count);
  };
  return depth::laco_schedule(spec_of(r).layers, o, prot, similarity, accept);
}

// ---- Choice, export, evaluation ----

// What a criterion decided: the original blocks removed and those kept, in order, with the
// weights of kept blocks that differ from the checkpoint's (LaCo's merged blocks; null otherwise).
struct Outcome {
  std::vector<double> scores;
  std::vector<std::int64_t> removed, kept;
  std::vector<Block> kept_weights;
  nlohmann::json details = nlohmann::json::object();
};

nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); }

nlohmann::json numbers(const std::vector<double>& v) {
  nlohmann::json a = nlohmann::json::array();
  for (const double x : v) a.push_back(number_or_null(x));
  return a;
}

void keep_the_rest(Outcome& o, std::int64_t layers) {
  std::sort(o.removed.begin(), o.removed.end());
  for (std::int64_t l = 0; l < layers; ++l)
    if (!std::binary_search(o.removed.begin(), o.removed.end(), l)) o.kept.push_back(l);
  o.kept_weights.assign(o.kept.size(), nullptr);
}

// The perplexities of the round after `removed`, when an earlier run kept that round (the same
// blocks removed before it and the same candidates).
std::optional<std::vector<double>> kept_round(DepthRun& r, const std::vector<std::int64_t>& removed,
                                              const std::vector<std::int64_t>& candidates) {
  const auto& rounds = r.state->at("rounds");
  if (!rounds.is_array() || removed.size() >= rounds.size()) return std::nullopt;
  const auto& k = rounds[removed.size()];
  if (!k.is_object() || k.value("removed", nlohmann::json()) != nlohmann::json(removed) ||
      k.value("candidates", nlohmann::json()) != nlohmann::json(candidates))
    return std::nullopt;
  auto v = kept_numbers(k.value("ppl", nlohmann::json()), candidates.size(), "ppl round");
  if (v) log::info("ppl round {}: kept in {}", removed.size() + 1, r.state->path().string());
  return v;
}

// ppl: the per-block scores are the first round's (null for protected blocks); every round goes
// to the details. --scores-only, and depth.greedy false (remove the n best of that round), run
// the first round alone.
Outcome choose_ppl(DepthRun& r, std::int64_t n, const std::vector<bool>& prot, bool scores_only) {
  Outcome o;
  std::vector<depth::GreedyRound> rounds;
  const bool one_round = scores_only || !r.cfg.depth.greedy;
  const std::int64_t total = one_round ? 1 : n;
  auto scorer = [&](const std::vector<std::int64_t>& removed, const std::vector<std::int64_t>& candidates) {
    if (auto v = kept_round(r, removed, candidates)) return *v;
    auto v = ppl_round(r, removed, candidates);
    log::info("ppl round {}: {} candidates, best perplexity {:.4f}", removed.size() + 1, candidates.size(),
              *std::min_element(v.begin(), v.end()));
    auto kept = r.state->at("rounds");
    if (!kept.is_array()) kept = nlohmann::json::array();
    kept.erase(kept.begin() + std::min(removed.size(), kept.size()), kept.end());
    kept.push_back({{"removed", removed}, {"candidates", candidates}, {"ppl", exact_numbers(v)}});
    r.state->keep("rounds", std::move(kept));
    stop_point(r, "round", static_cast<std::int64_t>(removed.size()) + 1, total);
    return v;
  };
  o.removed = depth::greedy_remove(spec_of(r).layers, one_round ? 1 : n, prot, scorer, rounds);
  o.scores.assign(static_cast<std::size_t>(spec_of(r).layers), std::nan(""));
  for (std::size_t c = 0; c < rounds[0].candidates.size(); ++c)
    o.scores[static_cast<std::size_t>(rounds[0].candidates[c])] = rounds[0].values[c];
  // One-shot (Shortened LLaMA): the n blocks whose removal alone costs least (protected: NaN, never).
  if (!r.cfg.depth.greedy && !scores_only) {
    std::vector<double> ranked = o.scores;
    for (auto& v : ranked)
      if (std::isnan(v)) v = std::numeric_limits<double>::infinity();
    o.removed = depth::lowest_blocks(ranked, n, prot);
  }
  o.details["rounds"] = nlohmann::json::array();
  for (const auto& g : rounds)
    o.details["rounds"].push_back({{"candidates", g.candidates}, {"ppl", numbers(g.values)}, {"removed", g.removed}});
  // The one-shot ranking's single round removed the n blocks, not its greedy pick alone.
  if (!r.cfg.depth.greedy && !scores_only) o.details["rounds"][0]["removed"] = o.removed;
  return o;
}

Outcome choose_laco(DepthRun& r, std::int64_t n, const std::vector<bool>& prot) {
  Outcome o;
  LacoState s;
  const auto attempts = laco_run(r, s, n, prot);
  o.details["attempts"] = nlohmann::json::array();
  for (const auto& a : attempts) {
    o.scores.push_back(a.similarity);
    o.details["attempts"].push_back({{"start", a.start}, {"count", a.count}, {"blocks", a.originals},
                                     {"similarity", a.similarity}, {"accepted", a.accepted}});
  }
  o.details["windows"] = s.windows;
  o.details["merged"] = nlohmann::json::array();
  for (std::size_t i = 0; i < s.groups.size(); ++i) {
    const auto& g = s.groups[i];
    o.kept.push_back(g[0]);
    o.kept_weights.push_back(g.size() > 1 ? s.blocks[i] : nullptr);
    if (g.size() > 1) o.details["merged"].push_back(g);
    o.removed.insert(o.removed.end(), g.begin() + 1, g.end());
  }
  std::sort(o.removed.begin(), o.removed.end());
  return o;
}

Outcome choose(DepthRun& r, std::int64_t n, const std::vector<bool>& prot, bool scores_only) {
  const auto& c = r.cfg.depth.criterion;
  if (c == "ppl") {
    auto o = choose_ppl(r, n, prot, scores_only);
    if (!scores_only) keep_the_rest(o, spec_of(r).layers);
    return o;
  }
  if (c == "laco") return choose_laco(r, n, prot);
  Outcome o;
  if (c == "bi") {
    o.scores = kept_scores(r, static_cast<std::size_t>(spec_of(r).layers), [&] { return bi_scores(r); });
    o.removed = depth::lowest_blocks(o.scores, n, prot);
  } else if (c == "deepest") {  // no scores: the rule needs no pass over the windows
    const auto start = depth::deepest_start(spec_of(r).layers, n, prot);
    for (std::int64_t k = start; k < start + n; ++k) o.removed.push_back(k);
  } else {
    o.scores = kept_scores(r, static_cast<std::size_t>(spec_of(r).layers - n + 1), [&] { return angular_scores(r, n); });
    const auto start = depth::angular_start(o.scores, n, prot);
    for (std::int64_t k = start; k < start + n; ++k) o.removed.push_back(k);
  }
  keep_the_rest(o, spec_of(r).layers);
  return o;
}

// The prefixes of decoder block names, with and without "model." (how checkpoints store them
// varies): "model.decoder.layers." and "decoder.layers.".
std::vector<std::string> block_stems(const model::ModelSpec& spec) {
  auto stem = spec.layer_prefix(0);
  stem.resize(stem.size() - 2);  // drop "0."
  const std::string m = "model.";
  return {stem, stem.compare(0, m.size(), m) == 0 ? stem.substr(m.size()) : m + stem};
}

// The pruned model's blocks read from the checkpoint under their original names.
class RenumberedSource final : public model::WeightSource {
 public:
  RenumberedSource(std::shared_ptr<const io::HfCheckpoint> c, std::vector<std::string> stems, std::vector<std::int64_t> to_orig)
      : ckpt_(std::move(c)), stems_(std::move(stems)), to_orig_(std::move(to_orig)) {}
  bool has(const std::string& name) const override { return ckpt_->has(original(name)); }
  Tensor load(const std::string& name) const override { return ckpt_->view(original(name)); }

 private:
  std::string original(const std::string& name) const { return depth::renumber_block(name, stems_, to_orig_); }
  std::shared_ptr<const io::HfCheckpoint> ckpt_;
  std::vector<std::string> stems_;
  std::vector<std::int64_t> to_orig_;
};

// config.json of the pruned model: num_hidden_layers, per-block lists ("layer_types": arrays of
// one entry per block under a key naming layers) reduced to the kept blocks, and the record of
// what was removed.
nlohmann::json depth_config(nlohmann::json c, const Outcome& o, std::int64_t layers, const Config& cfg) {
  c["num_hidden_layers"] = static_cast<std::int64_t>(o.kept.size());
  for (auto& [key, v] : c.items()) {
    if (!v.is_array() || static_cast<std::int64_t>(v.size()) != layers || key.find("layer") == std::string::npos) continue;
    nlohmann::json kept = nlohmann::json::array();
    for (const auto l : o.kept) kept.push_back(v[static_cast<std::size_t>(l)]);
    v = kept;
  }
  // A model depth-pruned before keeps that record under "previous" (its indices are those of the
  // model before it), so the chain back to the original stays readable.
  nlohmann::json previous = c.contains("scalpel_depth") ? c["scalpel_depth"] : nlohmann::json();
  c["scalpel_depth"] = {{"criterion", cfg.depth.criterion}, {"removed", o.removed}, {"kept", o.kept},
                        {"original_num_hidden_layers", layers}};
  if (o.details.contains("merged")) c["scalpel_depth"]["merged"] = o.details["merged"];
  if (!previous.is_null()) c["scalpel_depth"]["previous"] = std::move(previous);
  return c;
}

void export_depth(DepthRun& r, const Outcome& o, const fs::path& dest) {
  const auto& spec = spec_of(r);
  std::vector<std::int64_t> new_index(static_cast<std::size_t>(spec.layers), -1);
  for (std::size_t i = 0; i < o.kept.size(); ++i) new_index[static_cast<std::size_t>(o.kept[i])] = static_cast<std::int64_t>(i);
  const auto stems = block_stems(spec);
  ExportRewrite rw;
  rw.rename = [&](const std::string& name) { return depth::renumber_block(name, stems, new_index); };
  for (std::size_t i = 0; i < o.kept.size(); ++i) {
    if (!o.kept_weights[i]) continue;
    for (const auto& [name, t] : o.kept_weights[i]->tensors) {
      const auto stored = r.src.resolve(spec.layer_prefix(o.kept[i]) + name);
      rw.replaced[rw.rename(stored)] = to_storage(r.be, t, r.src.info(stored).dtype);
    }
  }
  rw.config = depth_config(r.src.config(), o, spec.layers, r.cfg);
  export_hf_rewritten(r.src, rw, dest, r.cfg.output.export_shard_mb << 20);
}

// The pruned model in memory (the export's blocks): every eval.sets text and eval.tasks task.
// False when a stop signal ended the evaluation between two sets or tasks.
bool evaluate_pruned(DepthRun& r, std::shared_ptr<const io::HfCheckpoint> src, const Outcome& o,
                     const EvalInputs& eval_inputs, Metrics& metrics, const nlohmann::json& extra) {
  auto spec = spec_of(r);
  spec.layers = static_cast<std::int64_t>(o.kept.size());
  auto source = std::make_shared<RenumberedSource>(std::move(src), block_stems(spec), o.kept);
  model::Model pruned(spec, source, r.be, static_cast<std::size_t>(r.cfg.weight_cache_mb) << 20);
  for (std::size_t i = 0; i < o.kept.size(); ++i)
    if (o.kept_weights[i]) pruned.set_layer_weights(static_cast<std::int64_t>(i), o.kept_weights[i]);
  // The sets and tasks an earlier run of this config evaluated are in the metrics: skipped.
  const auto resume = evaluation_resume(r.cfg, r.world, r.state->at("evaluation"),
                                        [&r](const nlohmann::json& j) { r.state->keep("evaluation", j); });
  return evaluate_config(pruned, eval_inputs, r.cfg, r.world, metrics, extra, {},
                         evaluation_stop(r.world, r.hash, metrics), resume);
}

// What the state keeps of an export: its folder, shard size and files (name: bytes).
nlohmann::json export_record(const fs::path& dest, std::int64_t shard_mb) {
  nlohmann::json files = nlohmann::json::object();
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dest, ec))
    if (e.is_regular_file(ec)) files[e.path().filename().string()] = static_cast<std::int64_t>(e.file_size(ec));
  return {{"dir", dest.string()}, {"shard_mb", shard_mb}, {"files", files}};
}

// Whether `dest` holds the export of outcome `o` that an earlier run wrote: the state names the
// folder and this run's shard size, its files are there with their sizes, and its config.json
// records the same blocks. Then it is not written again.
bool export_kept(DepthRun& r, const Outcome& o, const fs::path& dest) {
  const auto& kept = r.state->at("exported");
  if (!kept.is_object() || kept.value("dir", "") != dest.string() ||
      kept.value("shard_mb", std::int64_t{-1}) != r.cfg.output.export_shard_mb ||
      kept.value("files", nlohmann::json()) != export_record(dest, r.cfg.output.export_shard_mb)["files"])
    return false;
  try {
    const auto c = nlohmann::json::parse(std::ifstream(dest / "config.json"));
    const auto want = depth_config(r.src.config(), o, spec_of(r).layers, r.cfg);
    return c.at("scalpel_depth") == want.at("scalpel_depth") && c.at("num_hidden_layers") == want.at("num_hidden_layers");
  } catch (const std::exception&) {
    return false;  // gone or changed since: written again
  }
}

// The export of `o` into output.dir/output.export (rank 0), unless an earlier run wrote it.
void export_once(DepthRun& r, const Outcome& o) {
  if (!r.world.is_root() || r.cfg.output.export_dir.empty()) return;
  const auto dest = fs::path(r.cfg.output.dir) / r.cfg.output.export_dir;
  if (export_kept(r, o, dest)) {
    log::info("depth: the export in {} is this run's (kept in {}); not written again", dest.string(),
              r.state->path().string());
    return;
  }
  r.state->keep("exported", nullptr);
  export_depth(r, o, dest);
  r.state->keep("exported", export_record(dest, r.cfg.output.export_shard_mb));
  log::info("exported the model without those blocks to {}", dest.string());
}

// What the kept progress belongs to: the model (its fingerprint) and what decides the scores and
// the choice (the depth section, the calibration windows' ids, determinism).
nlohmann::json depth_identity(const Config& cfg, const CalibrationWindows& calib) {
  Config c;
  c.depth = cfg.depth;
  c.calibration = cfg.calibration;
  c.calibration.path = io::digest_bytes(calib.ids.data(), calib.ids.size() * sizeof(std::int32_t));
  c.calibration.offsets.clear();
  c.determinism = cfg.determinism;
  return {{"model", io::model_fingerprint(cfg.model)}, {"settings", config_hash(c)}};
}

nlohmann::json depth_record(DepthRun& r, const Outcome& o, bool scores_only, double seconds, std::int64_t n) {
  nlohmann::json rec{{"event", "depth"},
                     {"criterion", r.cfg.depth.criterion},
                     {"remove", n},  // asked (laco may remove fewer)
                     {"scores", numbers(o.scores)},
                     {"scores_only", scores_only},
                     {"model", r.cfg.model},
                     {"original_blocks", spec_of(r).layers},
                     {"calibration", {{"windows", r.calib.nseq}, {"seqlen", r.calib.seqlen}, {"seed", r.cfg.calibration.seed}}},
                     {"seconds", seconds},
                     {"ranks", r.world.size()},
                     {"config_hash", r.hash}};
  if (!scores_only) {
    rec["removed"] = o.removed;
    rec["kept"] = o.kept;
    rec["remaining_blocks"] = static_cast<std::int64_t>(o.kept.size());
  } else if (r.cfg.depth.criterion != "ppl") {
    rec["would_remove"] = o.removed;  // ppl: only the first round ran
  }
  rec.update(o.details);
  return rec;
}


// The record's scores and choice, printed (rank 0) and written to the metrics.
nlohmann::json report(DepthRun& r, const Outcome& o, bool scores_only, double seconds, std::int64_t n) {
  auto rec = depth_record(r, o, scores_only, seconds, n);
  rec["resumed"] = r.state->resumed();
  if (r.world.is_root()) {
    fmt::print("{}\n", rec.dump());
    std::fflush(stdout);
  }
  r.metrics->write(rec);  // before a stop's record, which refers to it
  return rec;
}

// After the scoring: the export and the evaluation of the pruned model (exit code 75 when a stop
// signal ended it).
int remove_and_evaluate(DepthRun& r, std::shared_ptr<const io::HfCheckpoint> src, const Outcome& o,
                        const EvalInputs& eval_inputs) {
  const auto& cfg = r.cfg;
  // No merge kept: the export would be the model itself. The scores are in the metrics.
  if (cfg.depth.criterion == "laco" && o.removed.empty())
    SCALPEL_INPUT_ERROR("config: 'depth.threshold' {}: laco kept no merge (no merged model's similarity to the dense "
                        "one reached it; the depth record lists each attempt's), so nothing is removed and nothing "
                        "exported; lower depth.threshold", cfg.depth.threshold);
  const auto kept_in = fmt::format("the scores kept in {}; nothing exported", r.state->path().string());
  if (stop_requested(r.world, {"scoring", 1, 1, 1, kept_in.c_str()}, r.hash, *r.metrics)) return kExitInterrupted;
  log::info("removed blocks {} of {}; {} remain", nlohmann::json(o.removed).dump(), spec_of(r).layers, o.kept.size());
  export_once(r, o);
  r.world.barrier();
  if (cfg.eval.sets.empty() && cfg.eval.tasks.empty()) return kExitOk;
  const nlohmann::json extra{{"depth", true}, {"removed", o.removed}, {"threads", r.threads}, {"config_hash", r.hash},
                             {"forward_dtype", dtype_name(DType::f32)}};  // every depth pass runs in fp32
  return evaluate_pruned(r, std::move(src), o, eval_inputs, *r.metrics, extra)
             ? kExitOk
             : kExitInterrupted;
}

// Before any work, on every rank: enough batches of the calibration windows for the ranks (an
// input Error naming calibration.batch otherwise), for laco's windows too.
void check_windows(const Config& cfg, dist::Comm& world, const CalibrationWindows& calib) {
  (void)calibration_shard(calib.nseq, cfg.calibration.batch, world.size(), world.rank());
  if (cfg.depth.criterion != "laco" || cfg.depth.windows <= 0) return;
  if (cfg.depth.windows > calib.nseq && world.is_root())
    log::warn("depth.windows {} exceeds the {} calibration windows: laco compares on all {}", cfg.depth.windows,
              calib.nseq, calib.nseq);
  check_laco_windows(cfg, calib.nseq, world.size());
}

// What every rank reads and checks alike before any work (on_every_rank: an error is printed once).
struct DepthInputs {
  std::shared_ptr<const io::HfCheckpoint> src;
  model::ModelSpec spec;
  std::int64_t n = 0;  // blocks to remove
  std::vector<bool> prot;
  std::unique_ptr<text::Tokenizer> tok;
  CalibrationWindows calib;
};

DepthInputs depth_inputs(const Config& cfg, dist::Comm& world) {
  auto src = open_model(cfg);
  auto spec = model_spec(*src);
  std::int64_t n = 0;
  auto prot = check_depth(cfg, spec, n, world.size());
  // The plan's memory model decides before any work whether the job fits, as `scalpel plan` does.
  if (cfg.parallel.memory_gb > 0) check_plan_fits(depth_plan_of_job(cfg, world.size()), cfg);
  auto tok = make_tokenizer(cfg);
  // deepest makes no pass over the windows: it reads no calibration text.
  const bool passes = cfg.depth.criterion != "deepest";
  auto calib = passes ? calibration_windows(cfg, spec, *tok) : CalibrationWindows{};
  if (passes) check_windows(cfg, world, calib);
  return {std::move(src), std::move(spec), n, std::move(prot), std::move(tok), std::move(calib)};
}

}  // namespace

std::vector<bool> check_depth(const Config& cfg, const model::ModelSpec& spec, std::int64_t& n, int ranks) {
  if (cfg.parallel.stages > 1)
    SCALPEL_INPUT_ERROR("config: 'parallel.stages' {}: scalpel depth runs data-parallel only (every rank holds the "
                        "model); use parallel.stages: 1", cfg.parallel.stages);
  if (cfg.parallel.data != 0 && cfg.parallel.data != ranks)  // as prune and plan refuse it
    SCALPEL_INPUT_ERROR("config: 'parallel.stages' 1 x 'parallel.data' {} = {} ranks, but the job has {} (world = "
                        "stages x data)", cfg.parallel.data, cfg.parallel.data, ranks);
  n = depth::blocks_to_remove(cfg.depth.remove, spec.layers);
  auto prot = depth::protected_mask(cfg.depth.protect, cfg.depth.protect_set, cfg.depth.criterion, spec.layers, n);
  if (cfg.depth.criterion == "angular" &&
      depth::angular_start(std::vector<double>(static_cast<std::size_t>(spec.layers - n + 1), 0.0), n, prot) < 0)
    SCALPEL_INPUT_ERROR("config: 'depth.protect' leaves no {} consecutive unprotected blocks for depth.criterion "
                        "angular", n);
  if (cfg.depth.criterion == "deepest" && depth::deepest_start(spec.layers, n, prot) < 0)
    SCALPEL_INPUT_ERROR("config: 'depth.remove' {} with depth.criterion deepest needs blocks {}..{} (the deepest before "
                        "the last) to exist and be outside 'depth.protect'", n, spec.layers - 1 - n, spec.layers - 2);
  if (cfg.depth.criterion == "laco" && cfg.depth.merge > spec.layers)
    SCALPEL_INPUT_ERROR("config: 'depth.merge' {} exceeds the model's {} blocks", cfg.depth.merge, spec.layers);
  return prot;
}

void check_laco_windows(const Config& cfg, std::int64_t nseq, int ranks) {
  if (cfg.depth.criterion != "laco" || cfg.depth.windows <= 0) return;
  const auto windows = std::min(cfg.depth.windows, nseq), batch = cfg.calibration.batch;
  if ((windows + batch - 1) / batch < ranks)
    SCALPEL_INPUT_ERROR("config: 'depth.windows' {} makes {} batches of 'calibration.batch' {}, fewer than the {} "
                        "ranks: raise depth.windows (0 = all), lower calibration.batch or use fewer ranks",
                        cfg.depth.windows, (windows + batch - 1) / batch, batch, ranks);
}

int run_depth(const Config& cfg, dist::Comm& world, const NodePlace& place, bool scores_only, bool restart) {
  Timer timer;
  // SIGTERM/SIGUSR1 stop the run with exit code 75 (the batch scripts requeue on it) after a ppl
  // round or LaCo attempt, after the scoring, or between evaluation sets; the progress is kept in
  // the state file and the rerun goes on from there.
  install_stop_signals();
  set_interrupt_note(kDepthInterruptNote);
  auto in = detail::on_every_rank(world, [&] { return depth_inputs(cfg, world); });
  const auto& [src, spec, n, prot, tok, calib] = in;
  const bool passes = cfg.depth.criterion != "deepest";
  detail::on_root(world, [&] { check_layer_tensors(cfg.model, spec); });
  EvalInputs eval_inputs;
  if (!scores_only) eval_inputs = check_run_end(world, cfg, spec, *tok);
  auto backend = detail::on_every_rank(world, [&] { return make_rank_backend(cfg, place); });  // no GPU: said once
  // Opened before the scoring: a metrics file that cannot be written fails now, not after it.
  Metrics metrics;
  if (world.is_root() && !cfg.output.metrics.empty()) metrics = Metrics((fs::path(cfg.output.dir) / cfg.output.metrics).string());
  const auto identity = depth_identity(cfg, calib);
  DepthState state(world, fs::path(cfg.output.dir) / cfg.output.checkpoint / kDepthStateFile, identity, cfg.model,
                   restart);
  model::Model m(spec, checkpoint_source(src), *backend, static_cast<std::size_t>(cfg.weight_cache_mb) << 20);
  // The records' config_hash is the settings' the state belongs to (not paths, threads or the
  // evaluation), so a resumed or relocated run's records carry the hash of the run never stopped.
  DepthRun r{cfg, world, *backend, m, *src, calib, std::nullopt, {}, &state, &metrics,
             identity.at("settings").get<std::string>(),
             threads_per_rank(cfg.threads, place.local_ranks)};
  if (spec.family == model::Family::llama && passes) r.rope = model::make_rope_tables(*backend, spec, calib.seqlen);
  for (std::int64_t l = 0; l < spec.layers; ++l) r.blocks.push_back(m.layer_weights(l));
  log::info("depth {} ({}, {} blocks): criterion {}, remove {}{}; {}{} rank(s)", cfg.model, spec.model_type,
            spec.layers, cfg.depth.criterion, n, scores_only ? " (scores only)" : "",
            calib.nseq == 0 ? std::string()  // deepest: no pass over windows
                            : fmt::format("{} calibration windows x {} tokens from {}; ", calib.nseq, calib.seqlen,
                                          calib.source),
            world.size());
  try {
    const auto o = choose(r, n, prot, scores_only);
    if (!scores_only && static_cast<std::int64_t>(o.removed.size()) < n && !o.removed.empty())
      log::warn("laco removed {} of the {} blocks asked: no further merge kept a similarity above depth.threshold {}",
                o.removed.size(), n, cfg.depth.threshold);
    report(r, o, scores_only, timer.seconds(), n);
    return scores_only ? kExitOk : remove_and_evaluate(r, src, o, eval_inputs);
  } catch (const DepthStopped&) {
    return kExitInterrupted;
  }
}

}  // namespace scalpel::app
