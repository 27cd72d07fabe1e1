// `scalpel prune` with prune.method: surgeon, LLM Surgeon's whole-model shots (its own driver: the
// layer-by-layer loop of prune_run.cpp does not fit a method whose every shot needs the gradient
// of the global loss). Per shot k of K, at the target s_k = k·s/K:
//   curvature  every rank runs Model::backward over its calibration windows (whole batches, as the
//              layer-by-layer driver splits them), the Kronecker factors are summed over the ranks
//   score      dead rows and columns, damped float64 inverses, costs from the weights at the
//              start of the shot (every rank computes the same from the same sums)
//   select     one threshold over every pruned linear of the model
//   update     the correlated updates; the model's weights are replaced in memory (fp32)
//   commit     world rank 0 writes the shot's weights (fp32, exact) to <ckpt>/shot-KKKKK and then
//              names it in <ckpt>/shots.json: a rerun resumes after the last committed shot,
//              bitwise equal to a run that never stopped.
// After the last shot the weights are rounded to the checkpoint's dtype, exported and evaluated.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <optional>

#include "scalpel/app/commands.hpp"
#include "scalpel/app/export.hpp"
#include "scalpel/app/plan.hpp"
#include "scalpel/app/progress.hpp"
#include "scalpel/app/run_control.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/core/log.hpp"
#include "scalpel/core/timer.hpp"
#include "scalpel/io/hf_checkpoint.hpp"
#include "scalpel/io/manifest.hpp"
#include "scalpel/io/shot_checkpoint.hpp"
#include "scalpel/prune/surgeon.hpp"
#include "root_work.hpp"
#include "run_common.hpp"
#include "surgeon_curvature.hpp"

namespace fs = std::filesystem;

namespace scalpel::app {
namespace {

namespace sg = prune::surgeon;

sg::Options surgeon_options(const Config& cfg) {
  sg::Options o;
  const auto& s = cfg.surgeon;
  if (cfg.prune.pattern == "structured") {
    o.shape = sg::Shape::structured;
    o.rows = std::count(s.structures.begin(), s.structures.end(), "rows") > 0;
    o.columns = std::count(s.structures.begin(), s.structures.end(), "columns") > 0;
  } else if (cfg.prune.pattern != "unstructured") {
    const auto nm = parse_nm(cfg.prune.pattern);
    o.shape = sg::Shape::nm;
    o.n = nm->first;
    o.m = nm->second;
  }
  o.cost = s.cost == "kobd" ? sg::Cost::kobd : s.cost == "magnitude" ? sg::Cost::magnitude : sg::Cost::surgeon;
  o.damp_g = s.damp_g;
  o.damp_a = s.damp_a;
  o.max_correlate = s.max_correlate;
  o.addupdate = s.addupdate;
  return o;
}

// The final fraction pruned: N/M for N:M, prune.sparsity otherwise.
double final_sparsity(const Config& cfg, const sg::Options& o) {
  return o.shape == sg::Shape::nm ? static_cast<double>(o.n) / o.m : cfg.prune.sparsity;
}

std::vector<SurgeonTarget> targets_of(const model::ModelSpec& spec, const Config& cfg, const sg::Options& o) {
  const auto groups = spec.linear_groups(cfg.prune.targets, "config: 'prune.targets'");
  if (o.shape == sg::Shape::nm) check_nm_widths(groups, o.n, o.m);
  std::vector<SurgeonTarget> out;
  for (std::int64_t l = 0; l < spec.layers; ++l)
    for (const auto& g : groups)
      for (const auto& lin : g.linears) out.push_back({l, lin});
  return out;
}

// The linear's weight [out, in] and bias [out] (host, any float dtype; b undefined without a
// bias) joined as fp32 [out, in (+1)], the bias as the last column.
Tensor join_bias(const Tensor& w, const Tensor& b, const model::LinearSpec& lin) {
  const Tensor wf = w.dtype() == DType::f32 ? w : w.to_f32();
  const Tensor bf = !lin.bias ? Tensor() : b.dtype() == DType::f32 ? b : b.to_f32();
  const auto R = lin.out, C = lin.in + (lin.bias ? 1 : 0);
  Tensor out = Tensor::empty({R, C});
  for (std::int64_t r = 0; r < R; ++r) {
    std::copy(wf.f32() + r * lin.in, wf.f32() + (r + 1) * lin.in, out.f32() + r * C);
    if (lin.bias) out.f32()[r * C + lin.in] = bf.f32()[r];
  }
  return out;
}

Tensor weight_with_bias(Backend& be, const model::LayerWeights& w, const model::LinearSpec& lin) {
  return join_bias(be.download(w.at(lin.name + ".weight")),
                   lin.bias ? be.download(w.at(lin.name + ".bias")) : Tensor(), lin);
}

// Splits weight_with_bias's layout back into the layer's tensors (host f32).
std::pair<Tensor, Tensor> split_bias(const Tensor& wb, const model::LinearSpec& lin) {
  const auto R = lin.out, C = wb.size(1);
  Tensor w = Tensor::empty({R, lin.in}), b = lin.bias ? Tensor::empty({R}) : Tensor();
  for (std::int64_t r = 0; r < R; ++r) {
    std::copy(wb.f32() + r * C, wb.f32() + r * C + lin.in, w.f32() + r * lin.in);
    if (lin.bias) b.f32()[r] = wb.f32()[r * C + lin.in];
  }
  return {w, b};
}

// Replaces the targets' tensors in the model's layers (host f32 weights with bias columns).
void install(model::Model& m, Backend& be, const std::vector<SurgeonTarget>& targets, const std::vector<Tensor>& wbs) {
  std::map<std::int64_t, std::shared_ptr<model::LayerWeights>> layers;
  for (std::size_t i = 0; i < targets.size(); ++i) {
    const auto& t = targets[i];
    auto& lw = layers[t.layer];
    if (!lw) lw = std::make_shared<model::LayerWeights>(*m.layer_weights(t.layer));
    const auto [w, b] = split_bias(wbs[i], t.linear);
    lw->tensors[t.linear.name + ".weight"] = be.upload(w);
    if (t.linear.bias) lw->tensors[t.linear.name + ".bias"] = be.upload(b);
  }
  for (auto& [l, lw] : layers) m.set_layer_weights(l, lw);
}

// The targets' tensors per layer as checkpoint records (fp32: a resumed run continues bitwise).
std::vector<std::vector<io::TensorRecord>> shot_records(const std::vector<SurgeonTarget>& targets,
                                                        const std::vector<Tensor>& wbs, std::int64_t layers) {
  std::vector<std::vector<io::TensorRecord>> out(static_cast<std::size_t>(layers));
  for (std::size_t i = 0; i < targets.size(); ++i) {
    const auto [w, b] = split_bias(wbs[i], targets[i].linear);
    auto& recs = out[static_cast<std::size_t>(targets[i].layer)];
    io::TensorRecord rw;
    rw.name = targets[i].linear.name + ".weight";
    rw.data = w;
    recs.push_back(std::move(rw));
    if (targets[i].linear.bias) {
      io::TensorRecord rb;
      rb.name = targets[i].linear.name + ".bias";
      rb.data = b;
      recs.push_back(std::move(rb));
    }
  }
  return out;
}

// Loads the weights of a committed shot into wbs (and so into the model).
std::vector<Tensor> read_shot(const io::Checkpoint& ck, const std::vector<SurgeonTarget>& targets) {
  std::vector<Tensor> wbs;
  std::int64_t cached = -1;
  io::LayerData data;
  for (const auto& t : targets) {
    if (t.layer != cached) {
      data = ck.read_layer(t.layer);
      cached = t.layer;
    }
    const auto& lin = t.linear;
    Tensor wb = join_bias(data.at(lin.name + ".weight").data,
                          lin.bias ? data.at(lin.name + ".bias").data : Tensor(), lin);
    wbs.push_back(std::move(wb));
  }
  return wbs;
}

std::int64_t zeros_of(const std::vector<Tensor>& wbs) {
  std::int64_t z = 0;
  for (const auto& w : wbs)
    for (std::int64_t i = 0; i < w.numel(); ++i) z += w.f32()[i] == 0.0f;
  return z;
}

// Per-linear figures of the weight (bias excluded) and bias after a shot, fp32: zeros, rows and
// columns entirely zero, sum and sum of squares (float64), as the reference's tables count them.
nlohmann::json linear_stats(const Tensor& wb, const model::LinearSpec& lin, std::int64_t removed) {
  const auto R = lin.out, C = wb.size(1);
  std::int64_t zw = 0, zb = 0, zr = 0, zc = 0;
  double sum = 0, sumsq = 0;
  std::vector<std::uint8_t> col_nz(static_cast<std::size_t>(lin.in), 0);
  for (std::int64_t r = 0; r < R; ++r) {
    std::int64_t row_zeros = 0;
    for (std::int64_t c = 0; c < lin.in; ++c) {
      const float v = wb.f32()[r * C + c];
      row_zeros += v == 0.0f;
      if (v != 0.0f) col_nz[static_cast<std::size_t>(c)] = 1;
      sum += v;
      sumsq += static_cast<double>(v) * v;
    }
    zw += row_zeros;
    zr += row_zeros == lin.in;
    if (lin.bias) zb += wb.f32()[r * C + lin.in] == 0.0f;
  }
  for (const auto nz : col_nz) zc += nz == 0;
  return {{"removed", removed}, {"zero_w", zw}, {"zero_b", zb}, {"zero_rows", zr}, {"zero_cols", zc},
          {"w_sum", sum}, {"w_sumsq", sumsq}};
}

// A host tensor's values all finite (the cpu backend's threaded check where it computes).
bool all_finite_host(Backend& be, const Tensor& t) {
  if (be.device() == Device::cpu) return be.all_finite(t);
  for (std::int64_t i = 0; i < t.numel(); ++i)
    if (!std::isfinite(t.f32()[i])) return false;
  return true;
}

std::int64_t weights_of(const std::vector<Tensor>& wbs) {
  std::int64_t n = 0;
  for (const auto& w : wbs) n += w.numel();
  return n;
}

}  // namespace

// Everything a shot needs, set up once by run_surgeon.
struct SurgeonRun {
  const Config& cfg;
  dist::Comm& world;
  dist::Comm& group;
  Backend& be;
  model::Model& m;
  const CalibrationWindows& calib;
  WindowRange shard;
  std::vector<SurgeonTarget> targets;
  sg::Options opt;
  prune::Accumulation accumulation;
  Metrics& metrics;
  Watchdog& watchdog;
  std::string config_hash;
  std::vector<Tensor> wbs_final;  // the targets' weights after the last shot
  int threads = 0;                // per rank, as the evaluation records carry it
};

namespace {

// The mean over the data group of per-window values, `mine` this rank's windows in order (the
// shards are consecutive in rank order): gathered and added in window order, so the mean has the
// same bits at any rank count (an all-reduce of partial sums changed its last digit).
double mean_in_window_order(dist::Comm& group, const std::vector<double>& mine) {
  const auto all = detail::allgather_vector(mine, group);
  double sum = 0;
  for (const double v : all) sum += v;
  return sum / static_cast<double>(all.size());
}

// The shot's curvature pass over this rank's batches, summed over the data group; returns the
// mean calibration loss of the model the shot starts from.
double curvature_pass(SurgeonRun& r, ShotCurvature& curv, nlohmann::json& phases) {
  Timer t;
  std::vector<double> losses_mine;
  const auto batch = r.cfg.calibration.batch;
  const bool keep = r.m.spec().layers * r.m.layer_cache_bytes(batch, r.calib.seqlen) <=
                    (r.cfg.surgeon.keep_activations_mb << 20);
  for (std::int64_t s0 = r.shard.begin; s0 < r.shard.end; s0 += batch) {
    const auto b = std::min(batch, r.shard.end - s0);
    const auto losses = r.m.backward(r.calib.windows(s0, b), b, r.calib.seqlen, curv.taps(s0), keep);
    losses_mine.insert(losses_mine.end(), losses.begin(), losses.end());
    r.watchdog.beat("curvature", -1);
  }
  phases["forward_backward_s"] = t.seconds() - curv.seconds();
  phases["factors_s"] = curv.seconds();
  t = Timer();
  curv.reduce(r.group);
  const double loss = mean_in_window_order(r.group, losses_mine);
  phases["reduce_s"] = t.seconds();
  return loss;
}

// Which data rank scores and updates each target: by weight count, largest first to the least
// loaded. The owner alone holds the target's inverses (from scoring to its update).
std::vector<int> target_owners(const SurgeonRun& r, const std::vector<Tensor>& wbs) {
  std::vector<double> costs;
  for (const auto& w : wbs) costs.push_back(static_cast<double>(w.numel()));
  return dist::balance_parts(costs, r.group.size());
}

// Scores every target from its weights at the start of the shot, each on its owner (one linear's
// float64 factors exist there at a time; curv is null for the magnitude cost); the alive rows and
// columns and the costs, not the inverses, are broadcast to every rank for the selection.
std::vector<sg::Scored> score_all(SurgeonRun& r, std::int64_t shot, ShotCurvature* curv, std::vector<sg::Linear>& lins,
                                  const std::vector<Tensor>& wbs, const std::vector<int>& owners,
                                  nlohmann::json& phases) {
  const auto tokens = r.calib.nseq * r.calib.seqlen;
  std::vector<sg::Scored> scored(r.targets.size());
  for (std::size_t i = 0; i < r.targets.size(); ++i) {
    lins[i].name = fmt::format("shot {} {}", shot, r.targets[i].label());
    lins[i].w = wbs[i];
    lins[i].has_bias = r.targets[i].linear.bias;
  }
  double means_s = 0;
  Timer t;
  detail::owned_work(
      r.group, owners, "scored",
      [&](std::size_t i) {
        r.watchdog.beat("score", r.targets[i].layer);
        if (curv) {
          Timer tm;
          std::tie(lins[i].a, lins[i].g) = curv->factors(i, tokens);
          means_s += tm.seconds();
        }
        scored[i] = sg::score(r.be, lins[i], r.opt);
        lins[i].a = lins[i].g = Tensor();  // the update needs the f32 inverses only
      },
      [&](std::size_t i, int root) {
        r.watchdog.beat("share scores", r.targets[i].layer);
        auto& s = scored[i];
        detail::broadcast_vector(s.rows, r.group, root);
        detail::broadcast_vector(s.cols, r.group, root);
        detail::broadcast_vector(s.cost, r.group, root);
        detail::broadcast_vector(s.row_cost, r.group, root);
        detail::broadcast_vector(s.col_cost, r.group, root);
      },
      [&] { r.watchdog.suspend("waiting for the other ranks' scores"); });
  phases["means_s"] = means_s;
  phases["score_s"] = t.seconds() - means_s;
  return scored;
}

// The updates of every target, each on its owner (which holds its inverses), and the updated
// weights broadcast: an update depends only on its linear's weight, inverses and removal, and its
// bits not on the rank or thread count that computes it, so the model is the same at any rank count.
void update_all(SurgeonRun& r, std::vector<sg::Linear>& lins, const std::vector<sg::Scored>& scored,
                const std::vector<sg::Removal>& removal, const std::vector<int>& owners) {
  detail::owned_work(
      r.group, owners, "updated",
      [&](std::size_t i) {
        r.watchdog.beat("update", r.targets[i].layer);
        sg::update(r.be, lins[i], scored[i], removal[i], r.opt);
      },
      [&](std::size_t i, int root) {
        r.watchdog.beat("share updates", r.targets[i].layer);
        r.group.broadcast(std::span<std::byte>(static_cast<std::byte*>(lins[i].w.raw()), lins[i].w.nbytes()), root);
      },
      [&] { r.watchdog.suspend("waiting for the other ranks' updates"); });
}

// One shot: curvature, scores, selection, updates. Returns the shot's metrics record; wbs holds the
// targets' weights before (in) and after (out) the shot.
nlohmann::json run_shot(SurgeonRun& r, std::int64_t shot, std::vector<Tensor>& wbs) {
  const auto K = r.cfg.surgeon.shots;
  const double target = final_sparsity(r.cfg, r.opt) * static_cast<double>(shot) / static_cast<double>(K);
  nlohmann::json phases = nlohmann::json::object();
  std::vector<sg::Linear> lins(r.targets.size());
  double loss = std::nan("");
  std::optional<ShotCurvature> curv;
  if (r.opt.cost != sg::Cost::magnitude) {
    r.watchdog.beat("curvature", -1);
    curv.emplace(r.be, r.targets, r.accumulation, shot, r.cfg.surgeon.fisher == "sampled", r.cfg.calibration.seed);
    loss = curvature_pass(r, *curv, phases);
  }
  const auto owners = target_owners(r, wbs);
  const auto scored = score_all(r, shot, curv ? &*curv : nullptr, lins, wbs, owners, phases);
  curv.reset();
  Timer t;
  double threshold = 0;
  const auto removal = sg::select(lins, scored, r.opt, target, threshold);
  phases["select_s"] = t.seconds();
  t = Timer();
  update_all(r, lins, scored, removal, owners);
  phases["update_s"] = t.seconds();
  nlohmann::json removed = nlohmann::json::object(), per_linear = nlohmann::json::object();
  for (std::size_t i = 0; i < lins.size(); ++i) {
    removed[r.targets[i].label()] = removal[i].removed;
    wbs[i] = lins[i].w;
  }
  for (std::size_t i = 0; i < lins.size(); ++i) {
    if (!all_finite_host(r.be, wbs[i])) SCALPEL_RUNTIME_ERROR("shot {} {}: non-finite weights after the update", shot,
                                                         r.targets[i].label());
    per_linear[r.targets[i].label()] = linear_stats(wbs[i], r.targets[i].linear, removal[i].removed);
  }
  const auto zeros = zeros_of(wbs), total = weights_of(wbs);
  return {{"event", "shot"},
          {"shot", shot},
          {"shots", K},
          {"target", target},
          {"reached", static_cast<double>(zeros) / static_cast<double>(total)},
          {"zeros", zeros},
          {"weights", total},
          {"threshold", std::isfinite(threshold) ? nlohmann::json(threshold) : nlohmann::json(nullptr)},
          {"calibration_loss_before", std::isfinite(loss) ? nlohmann::json(loss) : nlohmann::json(nullptr)},
          {"removed", removed},
          {"linears", per_linear},
          {"seconds", phases}};
}

}  // namespace
namespace {

// The mean next-token loss of the calibration windows (the reference's per-window loss), over the
// ranks' shards.
double calibration_loss(SurgeonRun& r) {
  std::vector<double> mine;
  const auto batch = r.cfg.calibration.batch, T = r.calib.seqlen;
  std::vector<double> nll(static_cast<std::size_t>(batch * (T - 1)));
  for (std::int64_t s0 = r.shard.begin; s0 < r.shard.end; s0 += batch) {
    const auto b = std::min(batch, r.shard.end - s0);
    r.m.window_nll(r.calib.windows(s0, b), b, T, std::span<double>(nll).first(static_cast<std::size_t>(b * (T - 1))));
    for (std::int64_t w = 0; w < b; ++w) {
      double s = 0;
      for (std::int64_t t = 0; t < T - 1; ++t) s += nll[static_cast<std::size_t>(w * (T - 1) + t)];
      mine.push_back(s / static_cast<double>(T - 1));
    }
  }
  return mean_in_window_order(r.group, mine);
}

void log_shot(const nlohmann::json& rec) {
  const auto& sec = rec.at("seconds");
  double total = 0;
  for (const auto& [k, v] : sec.items()) total += v.get<double>();
  log::info("shot {}/{}: target {:.2f}%, reached {:.2f}%, threshold {}, calibration loss before {}, {:.1f} s",
            rec.at("shot").get<std::int64_t>(), rec.at("shots").get<std::int64_t>(), 100 * rec.at("target").get<double>(),
            100 * rec.at("reached").get<double>(), rec.at("threshold").dump(), rec.at("calibration_loss_before").dump(),
            total);
}

// The summary of the run: this one's, or, for a state complete before it (exported, its summary
// recorded), the summary of the run that completed it, marked so in the record (as the layer-wise
// prune's). first: the first shot this run pruned (resumed_at_shot when above 1).
nlohmann::json surgeon_summary(SurgeonRun& r, io::ShotCheckpoint& state, nlohmann::json summary, bool exported,
                               double export_s, double seconds, std::int64_t first) {
  summary["export_s"] = exported ? nlohmann::json(export_s) : nlohmann::json(nullptr);
  summary["seconds"] = seconds;
  if (first > 1) summary["resumed_at_shot"] = first;
  const bool was_complete = state.exported() && state.pointer()["summary"].is_object();
  if (was_complete) summary = state.pointer()["summary"];
  else state.record_summary(summary);  // after the export: `scalpel inspect` says complete from here
  const auto zeros = summary.value("zeros", std::int64_t{0}), total = summary.value("weights", std::int64_t{1});
  const auto from = summary.value("resumed_at_shot", std::int64_t{0});
  const auto K = r.cfg.surgeon.shots;
  log::info("pruned: {} of {} target weights and biases zero ({:.2f}%) in {:.1f} s on {} rank(s){}{}", zeros, total,
            100.0 * static_cast<double>(zeros) / static_cast<double>(total), summary.value("seconds", 0.0),
            summary.value("ranks", 0),
            from > K ? " (every shot committed before: this run exported)"
                     : from > 1 ? fmt::format(" (shots {}..{}: the run resumed)", from, K) : std::string(),
            was_complete ? ", by the run that completed the checkpoint" : "");
  if (was_complete) summary["complete_before_this_run"] = true;
  return summary;
}

// After the last shot: weights rounded to the checkpoint's dtype (what the export holds and what
// is evaluated), the export, the summary record and the evaluation. first: the first shot this
// run pruned.
int finish_surgeon(SurgeonRun& r, io::ShotCheckpoint& state, const io::HfCheckpoint& src, const model::ModelSpec& spec,
                   const EvalInputs& eval_inputs, const Timer& total_timer, std::int64_t first) {
  r.watchdog.beat("export", -1);
  std::map<std::string, Tensor> replaced;
  std::vector<Tensor> rounded;
  for (std::size_t i = 0; i < r.targets.size(); ++i) {
    const auto& t = r.targets[i];
    const auto [w, b] = split_bias(r.wbs_final[i], t.linear);
    std::map<std::string, Tensor> parts{{".weight", w}, {".bias", b}};
    for (auto& [suffix, part] : parts) {
      if (!part.defined()) continue;
      const auto name = spec.layer_prefix(t.layer) + t.linear.name + suffix;
      Tensor stored = Tensor::empty(part.shape(), src.info(name).dtype);
      convert_from_f32(stored.dtype(), part.f32(), stored.raw(), static_cast<std::size_t>(part.numel()));
      replaced[name] = stored;
      part = stored;
    }
    Tensor wb = join_bias(parts.at(".weight"), parts.at(".bias"), t.linear);  // the rounded values, as exported
    rounded.push_back(std::move(wb));
  }
  install(r.m, r.be, r.targets, rounded);
  const double loss = r.cfg.surgeon.final_loss ? calibration_loss(r) : std::nan("");
  const auto zeros = zeros_of(rounded), total = weights_of(rounded);
  nlohmann::json summary = {{"method", "surgeon"}, {"cost", r.cfg.surgeon.cost}, {"pattern", r.cfg.prune.pattern},
                            {"shots", r.cfg.surgeon.shots}, {"zeros", zeros}, {"weights", total},
                            {"sparsity", static_cast<double>(zeros) / static_cast<double>(total)},
                            {"calibration_loss", std::isfinite(loss) ? nlohmann::json(loss) : nlohmann::json(nullptr)},
                            {"ranks", r.world.size()}};
  // Rank 0 alone writes the export, with no heartbeat to give, and the others wait for it.
  r.watchdog.suspend("summary and export");
  if (r.world.is_root()) {
    if (std::isfinite(loss)) log::info("calibration loss of the pruned model {:.6f}", loss);
    Timer et;
    const bool exporting = !r.cfg.output.export_dir.empty();
    if (exporting) {
      const auto dest = fs::path(r.cfg.output.dir) / r.cfg.output.export_dir;
      export_hf_folder(src, replaced, dest, r.cfg.output.export_shard_mb << 20);
      log::info("exported the pruned model to {} ({:.1f} s)", dest.string(), et.seconds());
    }
    summary = surgeon_summary(r, state, summary, exporting, et.seconds(), total_timer.seconds(), first);
    r.metrics.write({{"event", "prune"}, {"config_hash", r.config_hash}, {"summary", summary}});
  }
  r.world.barrier();
  if (r.cfg.eval.sets.empty() && r.cfg.eval.tasks.empty()) return kExitOk;
  r.watchdog.beat("evaluate", -1);
  const auto K = r.cfg.surgeon.shots;
  if (stop_requested(r.world, {"shot", K, K, K, "committed and exported"}, r.config_hash, r.metrics))
    return kExitInterrupted;
  // A stop between sets is resumed from the shot state's pointer file, as the prune's from its
  // manifest.
  nlohmann::json kept;
  if (r.world.is_root()) kept = state.pointer().value("evaluation", kept);
  if (kept.is_object() && kept.contains("shot")) kept = nullptr;  // an eval_shots evaluation's (evaluate_shot)
  auto resume = evaluation_resume(r.cfg, r.world, kept, [&state](const nlohmann::json& e) { state.record_evaluation(e); });
  const bool done = evaluate_config(
      r.m, eval_inputs, r.cfg, r.world, r.metrics, {{"pruned", true}, {"threads", r.threads}, {"config_hash", r.config_hash}},
      evaluation_heartbeat(r.watchdog), evaluation_stop(r.world, r.config_hash, r.metrics), resume);
  return done ? kExitOk : kExitInterrupted;
}

// What LLM Surgeon cannot run with in this release: pipeline stages, a 2-byte forward.
void check_surgeon_config(const Config& cfg) {
  if (cfg.model.empty()) SCALPEL_INPUT_ERROR("config: 'model' (a Hugging Face model folder) is required");
  if (cfg.parallel.stages != 1)
    SCALPEL_INPUT_ERROR("config: 'parallel.stages' {}: LLM Surgeon runs data-parallel only in this release "
                        "(parallel.stages: 1)", cfg.parallel.stages);
  const auto& fd = cfg.device == "cuda" ? cfg.cuda.forward_dtype : cfg.cpu.forward_dtype;
  if (fd == "fp16" || fd == "bf16")
    SCALPEL_INPUT_ERROR("config: '{}.forward_dtype' {}: LLM Surgeon's gradients need the fp32 forward ({})",
                        cfg.device, fd, cfg.device == "cuda" ? "fp32, or auto" : "fp32");
}

// The shot checkpoint: created or resumed by world rank 0, then read by the others.
io::ShotCheckpoint open_shot_state(const Config& cfg, dist::Comm& world, const dist::Grid& grid,
                                   const model::ModelSpec& spec, const std::string& config_hash,
                                   nlohmann::json settings, bool restart) {
  const fs::path ckpt_dir = fs::path(cfg.output.dir) / cfg.output.checkpoint;
  io::CheckpointIdentity id;
  id.model = cfg.model;
  id.model_fingerprint = io::model_fingerprint(cfg.model);
  id.config_hash = config_hash;
  id.settings = std::move(settings);
  id.grid = {{"stages", 1}, {"data", grid.data}, {"determinism", cfg.determinism}};
  id.num_layers = spec.layers;
  std::optional<io::ShotCheckpoint> state;
  if (world.is_root()) state = io::ShotCheckpoint::open_or_create(ckpt_dir, id, cfg.surgeon.shots, restart);
  world.barrier();
  if (!world.is_root()) state = io::ShotCheckpoint::open_read(ckpt_dir);
  return std::move(*state);
}

// The eval.sets evaluation of surgeon.eval_shots after `shot`, on the model holding its weights.
// Its progress is kept in the shot state's pointer file as {"shot", "config_hash", "done"}, done 0
// written with the shot's commit (pending_evaluation), so that a rerun after a stop between its
// sets, or a kill, evaluates the sets that were left before it goes on with the next shot (it went
// on without them). False when a stop signal ended it.
bool evaluate_shot(SurgeonRun& r, io::ShotCheckpoint& state, std::int64_t shot, const EvalInputs& eval_inputs) {
  Config c = r.cfg;
  c.eval.tasks.clear();
  nlohmann::json kept;
  if (r.world.is_root()) kept = state.pointer().value("evaluation", kept);
  if (!kept.is_object() || kept.value("shot", std::int64_t{-1}) != shot) kept = nullptr;
  auto resume = evaluation_resume(c, r.world, kept, [&state, shot](const nlohmann::json& e) {
    nlohmann::json k = e;
    if (!k.is_null()) k["shot"] = shot;
    state.record_evaluation(k);
  });
  return evaluate_config(r.m, eval_inputs, c, r.world, r.metrics,
                         {{"pruned", true}, {"shot", shot}, {"threads", r.threads}, {"config_hash", r.config_hash}},
                         evaluation_heartbeat(r.watchdog), evaluation_stop(r.world, r.config_hash, r.metrics),
                         resume);
}

// Whether surgeon.eval_shots asks for eval.sets after `shot` (the last shot's is the final
// evaluation, which has tasks too).
bool evaluates_after(const Config& cfg, std::int64_t shot) {
  const auto& e = cfg.surgeon.eval_shots;
  return shot < cfg.surgeon.shots && !cfg.eval.sets.empty() && std::count(e.begin(), e.end(), shot) > 0;
}

// The record of the eval_shots evaluation `shot` calls for, none done yet (null: none, or no
// metrics file to resume from), committed with the shot so that no kill falls between the two.
nlohmann::json pending_evaluation(const Config& cfg, std::int64_t shot) {
  if (!evaluates_after(cfg, shot) || cfg.output.metrics.empty()) return nullptr;
  Config c = cfg;
  c.eval.tasks.clear();
  return {{"config_hash", evaluation_key(c)}, {"done", 0}, {"shot", shot}};
}

// After a shot: its weights installed and committed, its record logged and written, and the
// evaluation of surgeon.eval_shots. False when a stop signal ended that evaluation (between its
// sets; the shot stays committed, and the rerun evaluates the sets left before the next shot).
bool commit_shot(SurgeonRun& r, io::ShotCheckpoint& state, std::int64_t shot, std::vector<Tensor>& wbs,
                 nlohmann::json rec, const EvalInputs& eval_inputs) {
  install(r.m, r.be, r.targets, wbs);
  Timer ct;
  if (r.world.is_root()) {
    // Per layer, what `scalpel inspect` sums as a layer checkpoint's pruned counts.
    std::vector<nlohmann::json> layer_metrics(static_cast<std::size_t>(r.m.spec().layers));
    for (const auto& t : r.targets)
      layer_metrics[static_cast<std::size_t>(t.layer)]["linears"][t.linear.name] = {
          {"pruned", rec["linears"][t.label()]["zero_w"]}, {"weights", t.linear.out * t.linear.in}};
    state.commit_shot(shot, shot_records(r.targets, wbs, r.m.spec().layers), {{"reached", rec["reached"]}},
                      layer_metrics, pending_evaluation(r.cfg, shot));
  }
  r.world.barrier();
  rec["seconds"]["commit_s"] = ct.seconds();
  rec["config_hash"] = r.config_hash;
  if (r.world.is_root()) log_shot(rec);
  r.metrics.write(rec);
  return !evaluates_after(r.cfg, shot) || evaluate_shot(r, state, shot, eval_inputs);
}

// The shot whose eval_shots evaluation the shot state's pointer says is under way (-1: none), on
// every rank.
std::int64_t pending_shot_evaluation(const io::ShotCheckpoint& state, dist::Comm& world) {
  std::int64_t shot = -1;
  if (world.is_root()) {
    const auto e = state.pointer().value("evaluation", nlohmann::json());
    if (e.is_object()) shot = e.value("shot", std::int64_t{-1});
  }
  world.broadcast(std::as_writable_bytes(std::span(&shot, 1)), 0);
  return shot;
}

// What every rank reads and checks alike before any work (on_every_rank: an error is printed once).
struct SurgeonInputs {
  std::shared_ptr<const io::HfCheckpoint> src;
  model::ModelSpec spec;
  sg::Options opt;
  std::unique_ptr<text::Tokenizer> tok;
  CalibrationWindows calib;
  std::vector<SurgeonTarget> targets;
};

SurgeonInputs surgeon_inputs(const Config& cfg, int ranks) {
  check_surgeon_config(cfg);
  const int data = dist::grid_data(ranks, 1, cfg.parallel.data);
  auto src = open_model(cfg);
  auto spec = model_spec(*src);
  const auto opt = surgeon_options(cfg);
  auto targets = targets_of(spec, cfg, opt);
  // The plan's memory model decides before any work whether the job fits, as `scalpel plan` does.
  if (cfg.parallel.memory_gb > 0) check_plan_fits(plan_of_job(cfg, ranks), cfg);
  auto tok = make_tokenizer(cfg);
  auto calib = calibration_windows(cfg, spec, *tok);
  (void)calibration_shard(calib.nseq, cfg.calibration.batch, data, 0);  // enough batches for the data ranks
  return {std::move(src), std::move(spec), opt, std::move(tok), std::move(calib), std::move(targets)};
}

}  // namespace

int run_surgeon(const Config& cfg, dist::Comm& world, const NodePlace& place, bool restart) {
  Timer total_timer;
  install_stop_signals();
  auto in = detail::on_every_rank(world, [&] { return surgeon_inputs(cfg, world.size()); });
  auto& [src, spec, opt, tok, calib, targets] = in;
  const auto grid = dist::make_grid(world, 1, cfg.parallel.data);
  auto backend = detail::on_every_rank(world, [&] { return make_rank_backend(cfg, place); });  // no GPU: said once
  Backend& be = *backend;
  detail::on_root(world, [&] { check_layer_tensors(cfg.model, spec); });
  const auto eval_inputs = check_run_end(world, cfg, spec, *tok);
  const auto shard = calibration_shard(calib.nseq, cfg.calibration.batch, grid.data, grid.data_index);
  const std::string config_hash = prune_config_hash(cfg, calib.ids);
  io::ShotCheckpoint state =
      open_shot_state(cfg, world, grid, spec, config_hash, prune_config_settings(cfg, calib.ids), restart);
  const auto K = cfg.surgeon.shots;

  model::Model m(spec, checkpoint_source(src), be, static_cast<std::size_t>(cfg.weight_cache_mb) << 20);
  std::vector<Tensor> wbs;
  for (const auto& t : targets) wbs.push_back(weight_with_bias(be, *m.layer_weights(t.layer), t.linear));
  const auto first = state.last_shot() + 1;
  if (first > 1) {
    wbs = read_shot(state.last(), targets);
    install(m, be, targets, wbs);
    log::info("checkpoint {}: shots 1..{} committed; {}", (fs::path(cfg.output.dir) / cfg.output.checkpoint).string(),
              first - 1, first > K ? std::string("every shot done, nothing to prune") : fmt::format("resuming at shot {}", first));
  }
  log::info("prune {} ({}, {} layers): LLM Surgeon ({} cost) {} to {:.1f}% in {} shots, {} linears; {} calibration "
            "windows x {} tokens from {}; {} rank(s), determinism {}",
            cfg.model, spec.model_type, spec.layers, cfg.surgeon.cost, cfg.prune.pattern,
            100 * final_sparsity(cfg, opt), K, targets.size(), calib.nseq, calib.seqlen, calib.source, world.size(),
            cfg.determinism);

  Metrics metrics;
  if (world.is_root() && !cfg.output.metrics.empty())
    metrics = Metrics((fs::path(cfg.output.dir) / cfg.output.metrics).string());
  Watchdog watchdog(cfg.parallel.watchdog_seconds, world.rank());
  SurgeonRun run{cfg, world, *grid.data_group, be, m, calib, shard, targets, opt,
                 cfg.determinism == "strict" ? prune::Accumulation::exact : prune::Accumulation::sum,
                 metrics, watchdog, config_hash, {}, threads_per_rank(cfg.threads, place.local_ranks)};
  // An eval_shots evaluation of the last committed shot that a stop or a kill cut short: its sets
  // left are evaluated first (the shot's weights are installed).
  if (first > 1 && evaluates_after(cfg, first - 1) && pending_shot_evaluation(state, world) == first - 1 &&
      !evaluate_shot(run, state, first - 1, eval_inputs))
    return kExitInterrupted;
  Progress progress("surgeon", K, "shots", cfg.log.progress_seconds, world.is_root(), first - 1);
  for (std::int64_t shot = first; shot <= K; ++shot) {
    const bool evaluated = commit_shot(run, state, shot, wbs, run_shot(run, shot, wbs), eval_inputs);
    progress.update(shot, 0);
    if (!evaluated) return kExitInterrupted;
    // After the last shot too: the rerun finds every shot committed and exports and evaluates.
    if (stop_requested(world, {"shot", shot, K, shot}, config_hash, metrics)) return kExitInterrupted;
  }
  progress.finish();
  run.wbs_final = std::move(wbs);
  return finish_surgeon(run, state, *src, spec, eval_inputs, total_timer, first);
}

}  // namespace scalpel::app
