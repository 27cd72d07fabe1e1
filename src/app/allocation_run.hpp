// Layer-wise sparsity allocation for the layer-by-layer prune (prune.allocation: owl |
// sensitivity): the statistics each rule needs, gathered over the calibration windows of every
// data rank, and the per-linear patterns that result. Private to app; the rules themselves are
// prune/allocation.hpp.
//  - OWL: one dense pass (dense propagation through every layer): the Wanda column norms of each
//    block's inputs, summed over the data ranks, give the block's outlier ratio.
//  - sensitivity: Hutchinson estimates of each target matrix's Hessian trace with Rademacher
//    probes v and finite-difference Hessian-vector products, two backward passes per probe.
// Both are computed identically on every rank and do not depend on the rank count.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "run_common.hpp"
#include "scalpel/app/config.hpp"
#include "scalpel/dist/comm.hpp"
#include "scalpel/model/model.hpp"
#include "scalpel/prune/mask.hpp"
#include "scalpel/prune/stats.hpp"

namespace scalpel::app {

// The sensitivity estimate's kept probes, in the prune's checkpoint folder.
inline constexpr const char* kSensitivityProbesFile = "sensitivity-probes.json";

// What the allocation passes read: the dense model, its target linears, and this rank's windows.
struct AllocationContext {
  model::Model& model;
  std::vector<model::LinearGroup> groups;  // the targets of every layer
  const CalibrationWindows& calib;
  WindowRange shard;  // this data rank's windows
  std::int64_t batch = 1;
  dist::Comm& group;  // the data ranks
  prune::Accumulation accumulation = prune::Accumulation::sum;
  std::int64_t keep_activations_mb = 8192;  // sensitivity: keep the forward's intermediates up to this
  // Pipeline stages (OWL only): this rank's stage takes its layers of the block split, its dense
  // activations come from the stage before and go to the one after through `pipe`, and the
  // stages' ratios meet over `world`.
  int stage = 0, stages = 1;
  dist::Comm* pipe = nullptr;
  dist::Comm* world = nullptr;
  // Sensitivity: a progress line per probe (interval 0: none; rank 0 prints), and `stop`, asked on
  // every rank after each probe (every rank agreeing): true ends the estimate there.
  double progress_seconds = 0;
  std::function<bool(std::int64_t done, std::int64_t total)> stop{};
  // Sensitivity: where the probes done so far are kept (rank 0 rewrites it after each probe, with
  // the estimate's identity), so that a stopped, killed or resumed prune goes on from the last
  // probe instead of estimating anew; empty: nowhere. The prune puts it in its checkpoint folder.
  std::string probes_path{};
};

struct Allocation {
  std::string method = "uniform";
  prune::Pattern base;
  std::vector<std::map<std::string, prune::Pattern>> patterns;  // per layer, per linear (owl, sensitivity)
  nlohmann::json record;  // the metrics record {"event": "allocation", ...} (empty for uniform)
  double seconds = 0;
  bool stopped = false;  // a stop signal ended the sensitivity estimate: no patterns, nothing kept
  // The pattern linear `name` of `layer` is pruned with.
  const prune::Pattern& of(std::int64_t layer, const std::string& name) const;
  // The smallest and largest sparsity handed out.
  std::pair<double, double> range() const;
};

// Whether prune.allocation sensitivity will read its whole estimate instead of computing it: the
// allocation.traces file, or the probes kept at probes_path, hold this model's, windows' and
// settings' estimate (complete). The memory check then leaves the estimate's phase out.
bool sensitivity_estimate_kept(const Config& cfg, const std::vector<model::LinearGroup>& groups,
                               const CalibrationWindows& calib, const std::string& probes_path);

// The allocation cfg.prune.allocation asks for (uniform: `base` everywhere, no pass). The model's
// layer weights are the dense ones before and after.
Allocation allocate_sparsity(const Config& cfg, const prune::Pattern& base, AllocationContext& ctx);

// ---- pieces, exposed for the tests ----

// OWL's outlier ratio D_l of every block (one dense pass).
std::vector<double> owl_outlier_ratios(AllocationContext& ctx, double owl_m);

// The Hutchinson estimate of each target matrix's trace of the Hessian of the mean window loss
// (LLM Surgeon's per-window mean cross-entropy, averaged over the windows).
struct TraceEstimate {
  std::vector<std::int64_t> layer;
  std::vector<std::string> linear;
  std::vector<std::int64_t> numel;
  std::vector<double> sigma;                 // the step scale of each matrix: the RMS of its weights
  std::vector<std::vector<double>> probes;   // [probe][matrix]: vᵀ(H D v) restricted to the matrix / σ
  std::vector<double> trace;                 // mean over the probes
  double seconds = 0;
  bool stopped = false;  // ctx.stop said so after probes.size() probes: the estimate is incomplete
};
// Probe k perturbs every target W by ±ε·σ_W·V_k,W (V Rademacher from `seed`, the same on every
// rank); v·∇_W L at both points from the linears' inputs and output gradients (Σ_t g_t·V a_t, no
// weight gradient formed); (d₊ − d₋)/(2ε σ_W) estimates tr(H_WW).
// `done`: rows of probes 0.. computed before (a kept state), not computed again; `after_probe`,
// when set, gets the estimate after each new probe (rank 0 keeps it).
TraceEstimate hessian_traces(AllocationContext& ctx, std::int64_t probes, double epsilon, std::uint64_t seed,
                             const std::vector<std::vector<double>>& done = {},
                             const std::function<void(const TraceEstimate&)>& after_probe = {});
// The Rademacher direction of probe k for matrix `index` (in TraceEstimate order): ±1, fp32 host.
Tensor probe_direction(std::uint64_t seed, std::int64_t probe, std::int64_t index, std::int64_t rows,
                       std::int64_t cols);

}  // namespace scalpel::app
