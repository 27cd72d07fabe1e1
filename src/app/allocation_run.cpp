// Layer-wise sparsity allocation passes (see allocation_run.hpp).
#include "allocation_run.hpp"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>

#include "scalpel/app/progress.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/core/log.hpp"
#include "scalpel/core/timer.hpp"
#include "scalpel/io/checkpoint_shard.hpp"
#include "scalpel/io/manifest.hpp"
#include "scalpel/prune/allocation.hpp"
#include "root_work.hpp"

namespace scalpel::app {
namespace {

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

constexpr int kOwlTag = 11;  // the pipe's message tag of OWL's dense activations

struct TargetRef {
  std::int64_t layer = 0;
  model::LinearSpec lin;
};

std::vector<TargetRef> target_list(const AllocationContext& c) {
  std::vector<TargetRef> out;
  for (std::int64_t l = 0; l < c.model.spec().layers; ++l)
    for (const auto& g : c.groups)
      for (const auto& lin : g.linears) out.push_back({l, lin});
  return out;
}

double rms(Backend& be, const Tensor& w) {
  const Tensor h = be.download(w).to_f32();
  double s = 0;
  for (std::int64_t i = 0; i < h.numel(); ++i) s += static_cast<double>(h.f32()[i]) * h.f32()[i];
  const double r = std::sqrt(s / static_cast<double>(std::max<std::int64_t>(1, h.numel())));
  return r > 0 ? r : 1.0;
}

// The Rademacher direction of target i for one probe, made on demand (the same bits each time)
// rather than held for every target at once: it costs a hash per 64 weights.
using Direction = std::function<Tensor(std::size_t i)>;

// Installs W ± step·σ·V for every target (the dense weights otherwise), layer by layer: the
// model lets go of a layer's previous perturbed copy before the next layer's is made, so the
// perturbed copies add one layer's targets at most to what the model already held.
void install_perturbed(AllocationContext& c, const std::vector<TargetRef>& targets, const Direction& dir,
                       const std::vector<std::shared_ptr<const model::LayerWeights>>& dense,
                       const std::vector<double>& sigma, double step) {
  auto& be = c.model.backend();
  for (std::size_t i = 0; i < targets.size();) {  // targets are in layer order
    const auto l = static_cast<std::size_t>(targets[i].layer);
    auto layer = std::make_shared<model::LayerWeights>(*dense[l]);
    for (; i < targets.size() && static_cast<std::size_t>(targets[i].layer) == l; ++i) {
      const auto name = targets[i].lin.name + ".weight";
      const Tensor& w = dense[l]->at(name);
      Tensor p = be.empty(w.shape());
      be.copy(dir(i), p);
      be.scale(p, static_cast<float>(step * sigma[i]));
      be.add(p, w);
      layer->tensors[name] = p;
    }
    c.model.set_layer_weights(static_cast<std::int64_t>(l), std::move(layer));
  }
}

// v·∇_W (Σ_windows L) for every target at the installed weights: per calibration batch
// Σ_t g_t·(V a_t), gathered over the data ranks by batch and summed in batch order.
std::vector<double> directional_grads(AllocationContext& c, const std::vector<TargetRef>& targets,
                                      const Direction& dir) {
  auto& be = c.model.backend();
  const auto n = targets.size();
  // Keeping every layer's intermediates (and every V a_t until its gradient arrives) saves a
  // forward per pass when it fits in keep_activations_mb.
  std::int64_t y_bytes = 0;
  for (const auto& t : targets) y_bytes += t.lin.out * c.batch * c.calib.seqlen * 4;
  const bool keep = c.model.layer_cache_bytes(c.batch, c.calib.seqlen) * c.model.spec().layers + y_bytes <=
                    (c.keep_activations_mb << 20);
  std::map<std::pair<std::int64_t, std::string>, std::size_t> index;
  for (std::size_t i = 0; i < n; ++i) index[{targets[i].layer, targets[i].lin.name}] = i;
  const std::int64_t batches = (c.calib.nseq + c.batch - 1) / c.batch;
  std::vector<double> per(static_cast<std::size_t>(batches) * n, 0.0);
  std::map<std::size_t, Tensor> ys;  // V a_t of the layer being differentiated
  std::int64_t bi = 0;
  model::BackwardTaps taps;
  taps.input = [&](std::int64_t l, int, const std::vector<std::string>& names, const Tensor& x) {
    for (const auto& name : names) {
      const auto it = index.find({l, name});
      if (it == index.end()) continue;
      Tensor y = be.empty({x.size(0), targets[it->second].lin.out});
      be.gemm(Trans::no, Trans::yes, 1.0f, x, dir(it->second), 0.0f, y);
      ys[it->second] = std::move(y);
    }
  };
  taps.grad = [&](std::int64_t l, const std::string& name, const Tensor& g) {
    const auto it = index.find({l, name});
    if (it == index.end()) return;
    std::vector<double> rows(static_cast<std::size_t>(g.size(0)));
    be.rowwise_dot(g, ys.at(it->second), rows);
    double s = 0;
    for (const double r : rows) s += r;
    per[static_cast<std::size_t>(bi) * n + it->second] += s;
    ys.erase(it->second);
  };
  for (std::int64_t s = c.shard.begin; s < c.shard.end; s += c.batch) {
    const auto b = std::min(c.batch, c.shard.end - s);
    bi = s / c.batch;
    c.model.backward(c.calib.windows(s, b), b, c.calib.seqlen, taps, keep);
  }
  c.group.allreduce_sum(std::span<double>(per));  // one rank holds each batch's value: exact
  std::vector<double> d(n, 0.0);
  for (std::int64_t b = 0; b < batches; ++b)
    for (std::size_t i = 0; i < n; ++i) d[i] += per[static_cast<std::size_t>(b) * n + i];
  return d;
}

}  // namespace

const prune::Pattern& Allocation::of(std::int64_t layer, const std::string& name) const {
  if (patterns.empty()) return base;
  return patterns.at(static_cast<std::size_t>(layer)).at(name);
}

std::pair<double, double> Allocation::range() const {
  if (patterns.empty()) return {base.target(), base.target()};
  double lo = 1, hi = 0;
  for (const auto& layer : patterns)
    for (const auto& [name, p] : layer) lo = std::min(lo, p.target()), hi = std::max(hi, p.target());
  return {lo, hi};
}

Tensor probe_direction(std::uint64_t seed, std::int64_t probe, std::int64_t index, std::int64_t rows,
                       std::int64_t cols) {
  Tensor v = Tensor::empty({rows, cols});
  const std::uint64_t key =
      splitmix64(seed ^ splitmix64(static_cast<std::uint64_t>(probe) * 0x100000001B3ULL + static_cast<std::uint64_t>(index)));
  const std::int64_t n = rows * cols;
  for (std::int64_t w = 0; w * 64 < n; ++w) {
    const std::uint64_t bits = splitmix64(key + static_cast<std::uint64_t>(w));
    for (std::int64_t j = w * 64; j < std::min(n, (w + 1) * 64); ++j)
      v.f32()[j] = ((bits >> (j - w * 64)) & 1ULL) ? 1.0f : -1.0f;
  }
  return v;
}

namespace {

// This stage's dense input: the embedded windows (stage 0) or the stage before's output.
Tensor stage_input(AllocationContext& c) {
  auto& be = c.model.backend();
  const auto seqlen = c.calib.seqlen, mine = c.shard.count();
  if (c.stage == 0) return c.model.embed(c.calib.windows(c.shard.begin, mine), mine, seqlen);
  Tensor host = Tensor::empty({mine * seqlen, c.model.spec().hidden});
  c.pipe->recv(std::span<std::byte>(static_cast<std::byte*>(host.raw()), static_cast<std::size_t>(host.nbytes())),
               c.stage - 1, kOwlTag);
  return be.upload(host);
}

}  // namespace

std::vector<double> owl_outlier_ratios(AllocationContext& c, double owl_m) {
  auto& m = c.model;
  auto& be = m.backend();
  const auto seqlen = c.calib.seqlen, mine = c.shard.count();
  Tensor x = stage_input(c);
  prune::StatsKinds kinds;
  kinds.hessian = false;
  kinds.col_norms = true;
  std::vector<double> ratios(static_cast<std::size_t>(m.spec().layers), 0.0);
  const auto layers = dist::block_range(m.spec().layers, c.stages, c.stage);
  for (std::int64_t layer = layers.begin; layer < layers.end; ++layer) {
    std::map<int, std::unique_ptr<prune::InputStats>> stats;
    for (const auto& g : c.groups)
      stats[g.input_group] = std::make_unique<prune::InputStats>(
          be, g.linears.front().in, kinds, fmt::format("layer {} input {} (OWL)", layer, g.linears.front().name),
          c.accumulation, c.calib.nseq);
    std::int64_t seqs = 0;
    model::LinearTap tap = [&](int group, const std::vector<std::string>&, const Tensor& in) {
      if (auto it = stats.find(group); it != stats.end()) it->second->add_batch(in, seqs);
    };
    for (std::int64_t s = 0; s < mine; s += c.batch) {  // dense propagation: x becomes the layer's output
      seqs = std::min(c.batch, mine - s);
      Tensor slice = x.slice_rows(s * seqlen, (s + seqs) * seqlen);
      m.layer_forward(layer, slice, seqs, seqlen, &tap);
    }
    prune::OutlierCounter counter;
    const auto w = m.layer_weights(layer);
    for (const auto& g : c.groups) {
      auto& st = *stats.at(g.input_group);
      st.reduce(c.group);
      const Tensor norms = be.download(st.col_norms());
      for (const auto& lin : g.linears) counter.add(be.download(w->at(lin.name + ".weight")), norms);
    }
    ratios[static_cast<std::size_t>(layer)] = counter.ratio(owl_m);
  }
  if (c.stages == 1) return ratios;
  if (c.stage + 1 < c.stages) {
    const Tensor host = be.download(x);
    c.pipe->send(std::span<const std::byte>(static_cast<const std::byte*>(host.raw()),
                                            static_cast<std::size_t>(host.nbytes())),
                 c.stage + 1, kOwlTag);
  }
  // Each stage's first data rank gives its layers' ratios; the others add zeros (exact).
  if (c.group.rank() != 0) std::fill(ratios.begin(), ratios.end(), 0.0);
  c.world->allreduce_sum(std::span<double>(ratios));
  return ratios;
}

TraceEstimate hessian_traces(AllocationContext& c, std::int64_t probes, double epsilon, std::uint64_t seed,
                             const std::vector<std::vector<double>>& done,
                             const std::function<void(const TraceEstimate&)>& after_probe) {
  Timer timer;
  auto& m = c.model;
  auto& be = m.backend();
  const auto targets = target_list(c);
  std::vector<std::shared_ptr<const model::LayerWeights>> dense;
  for (std::int64_t l = 0; l < m.spec().layers; ++l) dense.push_back(m.layer_weights(l));
  TraceEstimate est;
  for (const auto& t : targets) {
    est.layer.push_back(t.layer);
    est.linear.push_back(t.lin.name);
    est.numel.push_back(t.lin.out * t.lin.in);
    est.sigma.push_back(rms(be, dense[static_cast<std::size_t>(t.layer)]->at(t.lin.name + ".weight")));
  }
  est.trace.assign(targets.size(), 0.0);
  // Kept probes count in the same order as computed ones: the sum, and so the allocation, is the
  // same bits as an estimate never stopped.
  SCALPEL_CHECK(static_cast<std::int64_t>(done.size()) <= probes, "{} kept probes of {}", done.size(), probes);
  for (const auto& row : done) {
    SCALPEL_CHECK(row.size() == targets.size(), "a kept probe of {} entries, {} targets", row.size(), targets.size());
    for (std::size_t i = 0; i < targets.size(); ++i) est.trace[i] += row[i] / static_cast<double>(probes);
    est.probes.push_back(row);
  }
  const auto first = static_cast<std::int64_t>(done.size());
  Progress progress("sensitivity", probes, "probes", c.progress_seconds, c.group.rank() == 0, first);
  for (std::int64_t k = first; k < probes; ++k) {
    const Direction dir = [&](std::size_t i) {
      return be.upload(probe_direction(seed, k, static_cast<std::int64_t>(i), targets[i].lin.out, targets[i].lin.in));
    };
    install_perturbed(c, targets, dir, dense, est.sigma, epsilon);
    const auto plus = directional_grads(c, targets, dir);
    install_perturbed(c, targets, dir, dense, est.sigma, -epsilon);
    const auto minus = directional_grads(c, targets, dir);
    std::vector<double> row(targets.size());
    for (std::size_t i = 0; i < targets.size(); ++i) {
      row[i] = (plus[i] - minus[i]) / (2 * epsilon * est.sigma[i] * static_cast<double>(c.calib.nseq));
      if (!std::isfinite(row[i]))
        SCALPEL_RUNTIME_ERROR("sensitivity: probe {} of layer {} {} is not finite (the loss or its gradient overflowed)",
                              k, targets[i].layer, targets[i].lin.name);
      est.trace[i] += row[i] / static_cast<double>(probes);
    }
    est.probes.push_back(std::move(row));
    if (after_probe) after_probe(est);
    progress.update(k + 1, 2 * (k + 1 - first) * c.calib.nseq * c.calib.seqlen);
    if (c.stop && k + 1 < probes && c.stop(k + 1, probes)) {
      est.stopped = true;
      break;
    }
  }
  if (!est.stopped && first < probes) progress.finish();
  for (std::int64_t l = 0; l < m.spec().layers; ++l) m.set_layer_weights(l, dense[static_cast<std::size_t>(l)]);
  est.seconds = timer.seconds();
  return est;
}

namespace {

// Every target linear of `layer` gets `p`.
void set_layer(Allocation& a, const AllocationContext& c, std::int64_t layer, const prune::Pattern& p) {
  for (const auto& g : c.groups)
    for (const auto& lin : g.linears) a.patterns.at(static_cast<std::size_t>(layer))[lin.name] = p;
}

nlohmann::json allocate_owl(const Config& cfg, Allocation& a, AllocationContext& c) {
  const auto d = owl_outlier_ratios(c, cfg.allocation.owl_m);
  nlohmann::json blocks = nlohmann::json::array();
  const auto& base = a.base;
  if (base.is_nm()) {
    const auto n = prune::owl_nm(d, base.n, base.m, cfg.allocation.owl_lambda);
    // Each block's N is rounded, as the reference rounds it: the mean can miss N/M. Said, not fixed.
    double mean = 0;
    for (const auto k : n) mean += static_cast<double>(k) / static_cast<double>(base.m) / static_cast<double>(n.size());
    if (std::abs(mean - base.target()) > 1e-12 && c.group.rank() == 0 && (c.world == nullptr || c.world->rank() == 0))
      log::warn("allocation owl: the blocks' N:{} patterns average {:.4f}, not the {}'s {:.4f} (each block's N is "
                "rounded, as the reference rounds it; a smaller allocation.owl_lambda keeps them closer)",
                base.m, mean, base.str(), base.target());
    for (std::size_t l = 0; l < d.size(); ++l) {
      const auto p = n[l] > 0 ? prune::Pattern::nm(n[l], base.m) : prune::Pattern::unstructured(0);
      set_layer(a, c, static_cast<std::int64_t>(l), p);
      blocks.push_back({{"layer", l}, {"score", d[l]}, {"sparsity", p.target()}, {"pattern", p.str()}});
    }
  } else {
    std::vector<std::size_t> clamped;
    const auto s = prune::owl_sparsities(d, base.sparsity, cfg.allocation.owl_lambda, "allocation.owl_lambda", &clamped);
    if (!clamped.empty() && c.group.rank() == 0 && (c.world == nullptr || c.world->rank() == 0))
      log::warn("allocation owl: block(s) {} would get a sparsity <= 0 (prune.sparsity {} minus up to 2 x "
                "allocation.owl_lambda {}); OWL's clamp prunes them at 1%", nlohmann::json(clamped).dump(),
                base.sparsity, cfg.allocation.owl_lambda);
    for (std::size_t l = 0; l < d.size(); ++l) {
      set_layer(a, c, static_cast<std::int64_t>(l), prune::Pattern::unstructured(s[l]));
      blocks.push_back({{"layer", l}, {"score", d[l]}, {"sparsity", s[l]}});
    }
  }
  return {{"blocks", blocks}};
}

// What a trace estimate depends on: the model, the windows, the targets, the probes.
nlohmann::json trace_identity(const Config& cfg, const std::vector<model::LinearGroup>& groups,
                              const CalibrationWindows& calib) {
  nlohmann::json targets = nlohmann::json::array();
  for (const auto& g : groups)
    for (const auto& lin : g.linears) targets.push_back(lin.name);
  return {{"model", io::model_fingerprint(cfg.model)},
          {"windows", io::digest_bytes(calib.ids.data(), calib.ids.size() * sizeof(std::int32_t))},
          {"targets", targets},
          {"probes", cfg.allocation.hutchinson_samples},
          {"epsilon", cfg.allocation.epsilon},
          {"seed", cfg.calibration.seed}};
}

// A trace file's estimate, checked against the targets it must describe: one entry per target
// matrix in order (layer, linear, its size), finite traces, one row per probe. Input errors name
// the key and the file.
TraceEstimate read_estimate(const nlohmann::json& t, const std::vector<TargetRef>& targets, std::int64_t probes,
                            const std::string& path) {
  TraceEstimate est;
  try {
    t.at("layer").get_to(est.layer);
    t.at("linear").get_to(est.linear);
    t.at("numel").get_to(est.numel);
    t.at("sigma").get_to(est.sigma);
    t.at("probes").get_to(est.probes);
    t.at("trace").get_to(est.trace);
  } catch (const std::exception& e) {
    SCALPEL_INPUT_ERROR("config: 'allocation.traces' {}: malformed estimate ({})", path, e.what());
  }
  const auto n = targets.size();
  if (est.layer.size() != n || est.linear.size() != n || est.numel.size() != n || est.sigma.size() != n ||
      est.trace.size() != n || est.probes.size() != static_cast<std::size_t>(probes))
    SCALPEL_INPUT_ERROR("config: 'allocation.traces' {}: malformed estimate (entries for {} target matrices and {} "
                        "probes expected)", path, n, probes);
  for (std::size_t i = 0; i < n; ++i) {
    const auto& want = targets[i];
    if (est.layer[i] != want.layer || est.linear[i] != want.lin.name || est.numel[i] != want.lin.out * want.lin.in ||
        !std::isfinite(est.trace[i]))
      SCALPEL_INPUT_ERROR("config: 'allocation.traces' {}: malformed estimate (entry {} is not layer {} {} with {} "
                          "weights and a finite trace)", path, i, want.layer, want.lin.name, want.lin.out * want.lin.in);
  }
  for (const auto& row : est.probes)
    if (row.size() != n) SCALPEL_INPUT_ERROR("config: 'allocation.traces' {}: malformed estimate (a probe row of {} "
                                             "entries, {} expected)", path, row.size(), n);
  return est;
}

// The probes kept in c.probes_path for this identity, read on the first data rank and shared with
// the others (all start from the same probe); none when the file is absent or another
// estimate's, and none with a warning when it cannot be read (estimated anew: it is only a cache).
std::vector<std::vector<double>> kept_probes(AllocationContext& c, const nlohmann::json& identity,
                                             const std::string& model, std::int64_t probes, std::size_t targets) {
  std::vector<double> flat;
  if (c.group.rank() == 0 && !c.probes_path.empty() && std::filesystem::exists(c.probes_path)) {
    try {
      const auto j = nlohmann::json::parse(std::ifstream(c.probes_path));
      if (io::kept_identity_matches(j.at("identity"), identity, model, c.probes_path)) {
        const auto rows = j.at("probes").get<std::vector<std::vector<double>>>();
        if (static_cast<std::int64_t>(rows.size()) > probes) throw std::runtime_error("more probes than asked");
        for (const auto& row : rows) {
          if (row.size() != targets) throw std::runtime_error("a probe row of another size");
          for (double v : row)
            if (!std::isfinite(v)) throw std::runtime_error("a non-finite entry");
          flat.insert(flat.end(), row.begin(), row.end());
        }
      } else {
        log::info("allocation sensitivity: {} holds another estimate's probes; estimating anew", c.probes_path);
      }
    } catch (const std::exception& e) {
      log::warn("allocation sensitivity: {} cannot be read ({}); estimating anew", c.probes_path, e.what());
      flat.clear();
    }
  }
  detail::broadcast_vector(flat, c.group);
  std::vector<std::vector<double>> rows;
  for (std::size_t at = 0; targets > 0 && at < flat.size(); at += targets)
    rows.emplace_back(flat.begin() + static_cast<std::ptrdiff_t>(at),
                      flat.begin() + static_cast<std::ptrdiff_t>(at + targets));
  return rows;
}

// The estimate from allocation.traces when it holds this identity's, else computed (and written
// there by the first data rank, atomically). A file that is not a trace file is not overwritten.
// The probes go on from those kept in c.probes_path, which gets every new one.
TraceEstimate cached_traces(const Config& cfg, AllocationContext& c) {
  const auto& path = cfg.allocation.traces;
  const auto identity = path.empty() && c.probes_path.empty() ? nlohmann::json() : trace_identity(cfg, c.groups, c.calib);
  if (!path.empty() && std::filesystem::exists(path)) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(std::ifstream(path));
    } catch (const std::exception& e) {
      SCALPEL_INPUT_ERROR("config: 'allocation.traces' {}: not a trace file ({})", path, e.what());
    }
    if (!j.is_object() || !j.contains("identity") || !j.contains("estimate") || !j["estimate"].is_object())
      SCALPEL_INPUT_ERROR("config: 'allocation.traces' {}: not a trace file (no identity and estimate objects); it "
                          "is left as it is: name another file or remove it",
                          path);
    if (io::kept_identity_matches(j["identity"], identity, cfg.model, path)) {
      auto est = read_estimate(j["estimate"], target_list(c), cfg.allocation.hutchinson_samples, path);
      log::info("allocation sensitivity: traces read from {}", path);
      return est;
    }
    log::info("allocation sensitivity: {} holds another model's, windows' or probes' traces; estimating anew", path);
  }
  const auto probes = cfg.allocation.hutchinson_samples;
  // Written (a temporary file renamed over it) once the estimate is made: a folder that takes no
  // file fails now, naming the key, not after minutes of probes. Every rank learns of it.
  if (!path.empty())
    detail::on_root(c.group, [&] {
      const auto tmp = path + ".tmp";
      if (!std::ofstream(tmp, std::ios::app))
        SCALPEL_INPUT_ERROR("config: 'allocation.traces' {}: cannot be written there ({}); name a writable place",
                            path, std::strerror(errno));
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
    });
  const auto kept = kept_probes(c, identity, cfg.model, probes, target_list(c).size());
  if (!kept.empty() && c.group.rank() == 0)
    log::info("allocation sensitivity: {} of {} probes kept in {}; {}", kept.size(), probes, c.probes_path,
              static_cast<std::int64_t>(kept.size()) == probes ? "none left to estimate" : "estimating the rest");
  std::function<void(const TraceEstimate&)> keep;
  if (!c.probes_path.empty() && c.group.rank() == 0)
    keep = [&](const TraceEstimate& e) {
      io::write_file_atomic(c.probes_path, nlohmann::json{{"identity", identity}, {"probes", e.probes}}.dump() + "\n",
                            "sensitivity probes");
    };
  auto est = hessian_traces(c, probes, cfg.allocation.epsilon, cfg.calibration.seed, kept, keep);
  if (!path.empty() && c.group.rank() == 0 && !est.stopped) {
    const nlohmann::json t = {{"layer", est.layer}, {"linear", est.linear}, {"numel", est.numel},
                              {"sigma", est.sigma}, {"probes", est.probes},   {"trace", est.trace},
                              {"seconds", est.seconds}};
    io::write_file_atomic(path, nlohmann::json{{"identity", identity}, {"estimate", t}}.dump() + "\n", "traces");
  }
  return est;
}

nlohmann::json allocate_sensitivity(const Config& cfg, Allocation& a, AllocationContext& c) {
  const auto& ac = cfg.allocation;
  const auto est = cached_traces(cfg, c);
  if (est.stopped) {
    a.stopped = true;
    return {};
  }
  const bool per_matrix = ac.granularity == "matrix";
  std::vector<double> trace, sens;
  std::vector<std::int64_t> params;
  for (std::size_t i = 0; i < est.trace.size(); ++i) {
    const auto unit = per_matrix ? i : static_cast<std::size_t>(est.layer[i]);
    if (unit >= trace.size()) trace.resize(unit + 1, 0.0), params.resize(unit + 1, 0);
    trace[unit] += est.trace[i];
    params[unit] += est.numel[i];
  }
  for (std::size_t u = 0; u < trace.size(); ++u) sens.push_back(trace[u] / static_cast<double>(params[u]));
  if (c.group.rank() == 0 && !sens.empty() && std::all_of(sens.begin(), sens.end(), [&](double x) { return x == sens[0]; }))
    log::warn("allocation sensitivity: every unit has the same sensitivity ({}), so the allocation is uniform; a trace "
              "of 0 everywhere says allocation.epsilon is too small for fp32 (or allocation.hutchinson_samples too "
              "few)", sens[0]);
  const auto s = prune::sensitivity_sparsities(sens, a.base.sparsity, ac.alpha, ac.weighted, params);
  nlohmann::json units = nlohmann::json::array();
  for (std::size_t u = 0; u < s.size(); ++u) {
    nlohmann::json e = {{"score", sens[u]}, {"trace", trace[u]}, {"sparsity", s[u]}, {"weights", params[u]}};
    if (per_matrix) {
      e["layer"] = est.layer[u];
      e["linear"] = est.linear[u];
      a.patterns.at(static_cast<std::size_t>(est.layer[u]))[est.linear[u]] = prune::Pattern::unstructured(s[u]);
    } else {
      e["layer"] = u;
      set_layer(a, c, static_cast<std::int64_t>(u), prune::Pattern::unstructured(s[u]));
    }
    units.push_back(e);
  }
  return {{per_matrix ? "matrices" : "blocks", units},
          {"probes", ac.hutchinson_samples},
          {"epsilon", ac.epsilon},
          {"weighted_rule", ac.weighted},
          {"passes_s", est.seconds}};
}

}  // namespace

bool sensitivity_estimate_kept(const Config& cfg, const std::vector<model::LinearGroup>& groups,
                               const CalibrationWindows& calib, const std::string& probes_path) {
  if (cfg.prune.allocation != "sensitivity") return false;
  const auto identity = trace_identity(cfg, groups, calib);
  const auto holds = [&](const std::string& path, const char* key) {
    std::error_code ec;
    if (path.empty() || !std::filesystem::exists(path, ec)) return false;
    try {
      const auto j = nlohmann::json::parse(std::ifstream(path));
      if (!io::kept_identity_matches(j.at("identity"), identity, cfg.model, path)) return false;
      return std::string(key) == "estimate" ||
             static_cast<std::int64_t>(j.at("probes").size()) == cfg.allocation.hutchinson_samples;
    } catch (const std::exception&) {
      return false;  // unreadable: the run estimates (and says so)
    }
  };
  return holds(cfg.allocation.traces, "estimate") || holds(probes_path, "probes");
}

Allocation allocate_sparsity(const Config& cfg, const prune::Pattern& base, AllocationContext& c) {
  Allocation a;
  a.method = cfg.prune.allocation;
  a.base = base;
  if (a.method == "uniform") return a;
  Timer timer;
  a.patterns.resize(static_cast<std::size_t>(c.model.spec().layers));
  nlohmann::json rec = a.method == "owl" ? allocate_owl(cfg, a, c) : allocate_sensitivity(cfg, a, c);
  if (a.stopped) {
    a.patterns.clear();
    return a;
  }
  double weights = 0, pruned = 0, mean = 0;
  std::int64_t count = 0;
  for (std::size_t l = 0; l < a.patterns.size(); ++l)
    for (const auto& g : c.groups)
      for (const auto& lin : g.linears) {
        const double t = a.patterns[l].at(lin.name).target();
        weights += static_cast<double>(lin.out * lin.in);
        pruned += t * static_cast<double>(lin.out * lin.in);
        mean += t;
        ++count;
      }
  a.seconds = timer.seconds();
  rec["event"] = "allocation";
  rec["method"] = a.method;
  rec["granularity"] = a.method == "owl" ? "block" : cfg.allocation.granularity;
  rec["target"] = base.target();
  rec["mean_sparsity"] = count ? mean / static_cast<double>(count) : 0.0;
  rec["weighted_sparsity"] = weights > 0 ? pruned / weights : 0.0;
  rec["seconds"] = a.seconds;
  a.record = std::move(rec);
  return a;
}

}  // namespace scalpel::app
