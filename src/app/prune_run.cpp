// `scalpel prune`: the sequential layer-by-layer prune of DESIGN.md section 3, over the process
// grid of section 2. Calibration windows flow through the decoder one layer at a time; each rank
// holds the windows of its calibration shard (whole batches of `calibration.batch` sequences, so
// every batch is the same at any rank count). Per layer, the statistics of each linear's inputs
// are summed over the data group, each weight is pruned by rows across the group (the unstructured
// thresholds chosen over all rows at once) and the pruned rows are all-gathered; the layer's
// owner writes it to the checkpoint and the manifest owner (world rank 0) commits it. With stages,
// each stage owns contiguous layers and hands its activations to the next stage.
//
// A rerun resumes after the last committed layer: committed layers are replayed from their stored
// (bitwise) weights through the same batched forward, so it ends bitwise equal to a run that
// never stopped, at any rank count with `determinism: strict`. SIGTERM/SIGUSR1 stop the run after
// the current layer is committed (exit code 75); a watchdog aborts a hung rank.
#include <array>
#include <cstdlib>
#include <cmath>
#include <filesystem>
#include <optional>
#include <set>
#include <tuple>

#include "scalpel/app/commands.hpp"
#include "scalpel/app/export.hpp"
#include "scalpel/app/plan.hpp"
#include "scalpel/app/progress.hpp"
#include "scalpel/app/run_control.hpp"
#include "scalpel/backend/backend.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/core/log.hpp"
#include "scalpel/core/paths.hpp"
#include "scalpel/io/checkpoint.hpp"
#include "scalpel/io/hf_checkpoint.hpp"
#include "scalpel/io/shot_checkpoint.hpp"
#include "scalpel/prune/pruner.hpp"
#include "scalpel/prune/select.hpp"
#include "scalpel/text/calibration.hpp"
#include "scalpel/text/eval_text.hpp"
#include "scalpel/text/tokenizer.hpp"
#include "allocation_run.hpp"
#include "factor_share.hpp"
#include "pruned_export.hpp"
#include "root_work.hpp"
#include "run_common.hpp"

namespace fs = std::filesystem;

namespace scalpel::app {
namespace {

using TargetGroup = model::LinearGroup;  // the linears of a layer this run prunes

// Runs x [batch*seqlen rows per batch] through one layer in place, batch by batch. x lives on the
// backend's device, or in host memory (cuda.activations: host), and then each batch is staged to
// the device and back.
void forward_layer(Backend& be, const model::ModelSpec& spec, const model::LayerWeights& w, Tensor& x,
                   std::int64_t nseq, std::int64_t seqlen, std::int64_t batch, const model::RopeTables* rope,
                   const model::LinearTap* tap) {
  const bool staged = x.device() != be.device();
  for (std::int64_t s = 0; s < nseq; s += batch) {
    const std::int64_t b = std::min(batch, nseq - s);
    Tensor slice = x.slice_rows(s * seqlen, (s + b) * seqlen);
    Tensor xb = staged ? clone_on(be, slice) : slice;
    model::decoder_layer_forward(be, spec, w, xb, b, seqlen, rope, tap);
    if (staged) be.copy(xb, slice);
  }
  if (staged) be.synchronize();
}

// Where the calibration activations stay between layers: on the GPU when cuda.activations says
// device, or says auto and the plan's per-rank peak (activations included) fits in 90% of the
// GPU's memory; otherwise in host memory, a batch at a time on the GPU.
bool activations_on_host(Backend& be, const Config& cfg, const dist::Comm& world) {
  if (be.memory_bytes() == 0 || cfg.cuda.activations == "device") return false;
  if (cfg.cuda.activations == "host") return true;
  Config on_device = cfg;  // the peak with the activations on the GPU (the plan's auto would decide itself)
  on_device.cuda.activations = "device";
  const auto plan = plan_of_job(on_device, world.size());
  const double peak = plan.at("peak").at("bytes").get<double>();
  const bool host = peak > 0.9 * static_cast<double>(be.memory_bytes());
  if (world.is_root())
    log::info("cuda.activations auto: planned peak {:.2f} GB per rank against {:.2f} GB of GPU memory: activations "
              "on the {}",
              peak / 1e9, static_cast<double>(be.memory_bytes()) / 1e9, host ? "host (staged per batch)" : "GPU");
  return host;
}

// The embedded calibration windows of this rank in the forward dtype, on the device or in host
// memory, made a batch at a time (the fp32 embeddings of one batch exist at once, never all).
Tensor embed_windows(Backend& be, model::Model& m, std::span<const std::int32_t> ids, std::int64_t nseq,
                     std::int64_t seqlen, std::int64_t batch, std::int64_t hidden, bool on_host) {
  Tensor x = on_host ? Tensor::empty({nseq * seqlen, hidden}, m.forward_dtype())
                     : be.empty({nseq * seqlen, hidden}, m.forward_dtype());
  for (std::int64_t s = 0; s < nseq; s += batch) {
    const std::int64_t b = std::min(batch, nseq - s);
    Tensor slice = x.slice_rows(s * seqlen, (s + b) * seqlen);
    be.copy(m.embed(ids.subspan(static_cast<std::size_t>(s * seqlen), static_cast<std::size_t>(b * seqlen)), b, seqlen),
            slice);
  }
  be.synchronize();
  return x;
}

// The next layer's weights are read in the background unless SCALPEL_PREFETCH=0 (for benchmarks).
bool prefetch_layers() {
  const char* v = std::getenv("SCALPEL_PREFETCH");
  return v == nullptr || std::string(v) != "0";
}

// One factor job per input group of the pass: its Hessian, named by its linears.
std::vector<FactorJob> factor_jobs(const std::vector<TargetGroup>& pass,
                                   const std::map<int, std::unique_ptr<prune::InputStats>>& stats, std::int64_t layer) {
  std::vector<FactorJob> jobs;
  for (const auto& g : pass) {
    std::string names;
    for (const auto& lin : g.linears) names += (names.empty() ? "" : "+") + lin.name;
    jobs.push_back({g.input_group, fmt::format("layer {} {}", layer, names), &stats.at(g.input_group)->hessian()});
  }
  return jobs;
}

FactorSettings factor_settings(const Config& cfg) {
  FactorSettings s;
  s.percdamp = cfg.prune.dampening;
  s.max_tries = prune::PruneOptions{}.max_damping_tries;
  s.isc = cfg.sparsegpt.saliency == "isc";
  s.split_width = cfg.sparsegpt.split_width;
  s.tile = cfg.sparsegpt.tile;
  return s;
}

// Collects the statistics of the given groups' inputs with one pass over the calibration windows
// (the layer's outputs are discarded: x is copied per batch); none, and no pass, when `kinds`
// asks for nothing (magnitude without the reconstruction error).
std::map<int, std::unique_ptr<prune::InputStats>> collect_stats(Backend& be, const model::ModelSpec& spec,
                                                                const model::LayerWeights& w, const Tensor& x,
                                                                std::int64_t nseq, std::int64_t seqlen,
                                                                std::int64_t batch, const model::RopeTables* rope,
                                                                const std::vector<TargetGroup>& groups,
                                                                prune::StatsKinds kinds, std::int64_t layer,
                                                                prune::Accumulation mode, std::int64_t total) {
  std::map<int, std::unique_ptr<prune::InputStats>> stats;
  if (!kinds.hessian && !kinds.col_norms) return stats;
  for (const auto& g : groups) {
    std::string names;
    for (const auto& l : g.linears) names += (names.empty() ? "" : "/") + l.name;
    stats[g.input_group] = std::make_unique<prune::InputStats>(be, g.linears.front().in, kinds,
                                                         fmt::format("layer {} {}", layer, names), mode, total);
  }
  std::int64_t seqs_in_batch = 0;
  model::LinearTap tap = [&](int group, const std::vector<std::string>&, const Tensor& in) {
    auto it = stats.find(group);
    if (it != stats.end()) it->second->add_batch(in, seqs_in_batch);
  };
  for (std::int64_t s = 0; s < nseq; s += batch) {
    seqs_in_batch = std::min(batch, nseq - s);
    Tensor xb = be.empty({seqs_in_batch * seqlen, spec.hidden}, x.dtype());
    be.copy(x.slice_rows(s * seqlen, (s + seqs_in_batch) * seqlen), xb);
    model::decoder_layer_forward(be, spec, w, xb, seqs_in_batch, seqlen, rope, &tap);
  }
  return stats;
}

// Weights of the pruned model: the checkpoint's tensors where it has them, the source model's
// otherwise. Layers are read lazily, one at a time (the Model asks for a layer's tensors in turn),
// with every digest checked.
class PrunedSource final : public model::WeightSource {
 public:
  PrunedSource(io::Checkpoint ckpt, std::shared_ptr<const io::HfCheckpoint> src, const model::ModelSpec& spec)
      : ckpt_(std::move(ckpt)), src_(std::move(src)) {
    for (std::int64_t l = 0; l < spec.layers; ++l) prefixes_.push_back(spec.layer_prefix(l));
  }
  bool has(const std::string& name) const override { return src_->has(name); }
  Tensor load(const std::string& name) const override {
    for (std::int64_t l = 0; l < static_cast<std::int64_t>(prefixes_.size()); ++l) {
      const auto& pre = prefixes_[static_cast<std::size_t>(l)];
      if (name.compare(0, pre.size(), pre) != 0 || !ckpt_.committed(l)) continue;
      const auto rel = name.substr(pre.size());
      if (!ckpt_.layer_entry(l).tensors.count(rel)) break;
      if (layer_ != l) {
        data_ = ckpt_.read_layer(l);
        layer_ = l;
      }
      return data_.at(rel).data;
    }
    return src_->view(name);
  }

 private:
  io::Checkpoint ckpt_;
  std::shared_ptr<const io::HfCheckpoint> src_;
  std::vector<std::string> prefixes_;
  mutable std::int64_t layer_ = -1;
  mutable io::LayerData data_;
};

// Concatenates the row slices of a host tensor held by the ranks of `group` (rank order). A
// one-rank group holds them all already: no copy (an OPT-175B layer is 5.4 GB of weights and masks).
Tensor gather_rows(dist::Comm& group, const Tensor& mine, std::int64_t rows) {
  if (group.size() == 1) {
    SCALPEL_CHECK(mine.size(0) == rows, "gather_rows: {} rows held of {}", mine.size(0), rows);
    return mine;
  }
  const auto cols = mine.size(1);
  const auto row_bytes = static_cast<std::int64_t>(dtype_size(mine.dtype())) * cols;
  std::vector<std::int64_t> counts;
  for (int r = 0; r < group.size(); ++r) {
    const auto rr = dist::block_range(rows, group.size(), r);
    counts.push_back((rr.end - rr.begin) * row_bytes);
  }
  Tensor all = Tensor::empty({rows, cols}, mine.dtype());
  group.allgatherv(std::span<const std::byte>(static_cast<const std::byte*>(mine.raw()),
                                              static_cast<std::size_t>(mine.nbytes())),
                   std::span<std::byte>(static_cast<std::byte*>(all.raw()), static_cast<std::size_t>(all.nbytes())),
                   counts);
  return all;
}

// The same for device tensors, through the group's NCCL communicator (`all` preallocated).
void gather_rows_device(dist::Comm& group, const Tensor& mine, Tensor& all, std::int64_t rows) {
  const auto row_bytes = static_cast<std::int64_t>(dtype_size(mine.dtype())) * mine.size(1);
  std::vector<std::int64_t> counts;
  for (int r = 0; r < group.size(); ++r) {
    const auto rr = dist::block_range(rows, group.size(), r);
    counts.push_back((rr.end - rr.begin) * row_bytes);
  }
  group.allgatherv_device(static_cast<const std::byte*>(mine.raw()), static_cast<std::byte*>(all.raw()), counts);
}

// A pruned matrix met on every rank of the data group: in the stored dtype and its mask on the
// writer's host (data rank 0; undefined elsewhere), and the copy the next forward uses, on the
// device in the forward dtype.
struct GatheredLinear {
  Tensor stored, mask, next;
};

GatheredLinear gather_pruned(Backend& be, dist::Comm& group, const prune::PruneResult& r, std::int64_t rows,
                             std::int64_t cols, DType stored_dtype, DType fwd) {
  GatheredLinear out;
  // Rounded to the stored dtype where the rows are (on a GPU: half the bytes of fp32 to move; the
  // device's and the host's conversions both round to nearest even, the same bits).
  const Tensor mine = as_dtype_on(be, r.weight, stored_dtype);
  if (be.device() != Device::cpu && group.device_collectives()) {
    // NCCL: the rows meet on the GPUs; only the writer downloads the whole matrix.
    Tensor all = be.empty({rows, cols}, stored_dtype), all_mask = be.empty({rows, cols}, DType::u8);
    gather_rows_device(group, mine, all, rows);
    gather_rows_device(group, r.mask, all_mask, rows);
    out.next = as_dtype_on(be, all, fwd);  // widened to fp32 on the GPU, or kept
    if (group.rank() == 0) {
      out.stored = be.download(all);
      out.mask = be.download(all_mask);
    }
  } else if (group.size() == 1) {
    // One rank holds every row: the next forward's copy comes from the device's, not uploaded back.
    out.stored = be.download(mine);
    out.mask = r.host_mask;
    out.next = as_dtype_on(be, mine, fwd);
  } else {
    out.stored = gather_rows(group, be.download(mine), rows);
    out.mask = gather_rows(group, r.host_mask, rows);
    out.next = to_forward(be, out.stored, fwd);
  }
  return out;
}

// What pruning the linears of one layer shares: the run's settings and services.
struct LinearJob {
  Backend& be;
  dist::Comm& group;
  const Config& cfg;
  const io::HfCheckpoint& src;
  const model::ModelSpec& spec;
  prune::Method method;
  const Allocation& allocation;
  DType fwd;
  std::int64_t layer;
  Watchdog& watchdog;
};

// One linear: this rank's row slice pruned (its input's statistics, the group's shared factor
// when SparseGPT), the whole pruned matrix gathered into `working` for the next forward, rounded
// to the stored dtype (what a resumed run reads back), and on data rank 0 its record for the
// shard appended to `records`. Returns its metrics (sums over the ranks).
nlohmann::json prune_one(const LinearJob& j, const model::LinearSpec& lin, const prune::InputStats* stats,
                         const prune::HinvFactor* factor, model::LayerWeights& working,
                         std::vector<io::TensorRecord>& records) {
  j.watchdog.beat("prune", j.layer);
  const std::string wname = lin.name + ".weight";
  const Tensor& w = working.at(wname);
  const auto rows = w.size(0);
  const auto rr = dist::block_range(rows, j.group.size(), j.group.rank());
  prune::PruneOptions opt;
  opt.method = j.method;
  opt.pattern = j.allocation.of(j.layer, lin.name);
  opt.isc = j.cfg.sparsegpt.saliency == "isc";
  opt.blocksize = j.cfg.prune.blocksize;
  opt.percdamp = j.cfg.prune.dampening;
  opt.compute_error = j.cfg.output.reconstruction_error;
  opt.name = fmt::format("layer {} {}", j.layer, lin.name);
  opt.factor = factor;
  opt.total_rows = rows;
  opt.row_offset = rr.begin;
  if (j.group.size() > 1) opt.select = prune::group_select(j.group);
  const auto r = prune::prune_linear(j.be, as_dtype_on(j.be, w.slice_rows(rr.begin, rr.end), DType::f32), stats, opt);
  j.watchdog.beat("gather", j.layer);
  Timer gather_timer;  // the rows' download, conversion and gather, the next forward's copy, the mask's packing
  const auto stored_dtype = j.src.info(j.spec.layer_prefix(j.layer) + wname).dtype;
  auto g = gather_pruned(j.be, j.group, r, rows, w.size(1), stored_dtype, j.fwd);
  std::array<double, 2> err{std::isfinite(r.error) ? r.error : 0.0, std::isfinite(r.dense) ? r.dense : 0.0};
  std::array<std::int64_t, 2> counts{r.pruned, r.total};
  j.group.allreduce_sum(std::span<double>(err));
  j.group.allreduce_sum(std::span<std::int64_t>(counts));
  working.tensors[wname] = g.next;
  const double sparsity = counts[1] ? double(counts[0]) / double(counts[1]) : 0.0;
  const double error_rel = err[1] > 0 ? err[0] / err[1] : 0.0;
  nlohmann::json lm = {{"error", err[0]},           {"error_rel", error_rel},
                       {"sparsity", sparsity},       {"pruned", counts[0]},
                       {"weights", counts[1]},       {"damping", r.damping},
                       {"percdamp", r.percdamp},     {"damping_tries", r.damping_tries},
                       {"dead_inputs", r.dead},      {"factor_s", r.seconds.factorisation},
                       {"sweep_s", r.seconds.sweep}, {"error_s", r.seconds.error}};
  if (!j.allocation.patterns.empty()) lm["allocated"] = opt.pattern.str();
  if (!j.cfg.output.reconstruction_error) lm["error"] = lm["error_rel"] = nullptr;
  if (!std::isfinite(sparsity) || !std::isfinite(err[0]))
    SCALPEL_RUNTIME_ERROR("layer {} {}: non-finite result", j.layer, lin.name);
  std::vector<std::uint8_t> packed_mask;
  if (j.group.rank() == 0) packed_mask = io::pack_mask(g.mask);
  lm["gather_s"] = gather_timer.seconds();
  if (j.group.rank() == 0) {
    io::TensorRecord rec;
    rec.name = wname;
    rec.data = g.stored;
    rec.packed_mask = std::move(packed_mask);
    rec.metrics = lm;
    records.push_back(std::move(rec));
  }
  return lm;
}

// This rank's calibration activations at a layer's input and how its statistics are taken.
struct CalibrationPass {
  const Tensor& x;
  std::int64_t my_nseq, seqlen, batch, total_nseq;
  const model::RopeTables* rope;
  prune::StatsKinds kinds;
  prune::Accumulation accumulation;
};

// The prune of one layer's target linears: per pass (all groups at once, or one group at a time
// with true_sequential, after the groups before it are pruned), the statistics through the
// layer's current weights, summed over the data ranks, SparseGPT's shared factors, then every
// linear. Returns the layer's metrics (without its wall time); records as prune_one.
nlohmann::json prune_layer(const LinearJob& j, const CalibrationPass& c, const std::vector<TargetGroup>& groups,
                           model::LayerWeights& working, std::vector<io::TensorRecord>& records) {
  nlohmann::json lin_metrics = nlohmann::json::object(), factor_records = nlohmann::json::array();
  const dist::CommBytes comm_before = j.group.bytes();
  double stats_s = 0, reduce_s = 0;
  std::vector<std::vector<TargetGroup>> passes;
  if (j.cfg.prune.true_sequential)
    for (const auto& g : groups) passes.push_back({g});
  else
    passes.push_back(groups);
  for (const auto& pass : passes) {
    j.watchdog.beat("statistics", j.layer);
    Timer st;
    auto stats = collect_stats(j.be, j.spec, working, c.x, c.my_nseq, c.seqlen, c.batch, c.rope, pass, c.kinds, j.layer,
                               c.accumulation, c.total_nseq);
    stats_s += st.seconds();
    j.watchdog.beat("reduce statistics", j.layer);
    for (auto& [g, s] : stats) {
      s->reduce(j.group);
      reduce_s += s->reduce_seconds();
    }
    std::optional<SharedFactors> factors;
    if (j.method == prune::Method::sparsegpt) {
      j.watchdog.beat("factorise", j.layer);
      factors.emplace(j.be, j.group, factor_jobs(pass, stats, j.layer), factor_settings(j.cfg),
                      [&] { j.watchdog.suspend("waiting for the other ranks' factors"); });
    }
    for (const auto& g : pass) {
      for (const auto& lin : g.linears)
        lin_metrics[lin.name] = prune_one(j, lin, stats.count(g.input_group) ? stats.at(g.input_group).get() : nullptr,
                                          factors ? &factors->get(g.input_group) : nullptr, working, records);
      if (factors) factors->release(g.input_group);
    }
    if (factors) factor_records.push_back(factors->record());
  }
  const auto& cb = j.group.bytes();
  nlohmann::json m = {{"layer", j.layer},
                      {"stats_s", stats_s},
                      {"reduce_s", reduce_s},
                      {"ranks", j.group.size()},
                      {"comm_bytes",
                       {{"allreduce", cb.allreduce - comm_before.allreduce},
                        {"allgather", cb.allgather - comm_before.allgather},
                        {"broadcast", cb.broadcast - comm_before.broadcast}}},
                      {"linears", lin_metrics}};
  if (!factor_records.empty()) m["factors"] = factor_records;
  return m;
}

int stage_of(std::int64_t layer, std::int64_t layers, int stages) {
  for (int s = 0; s < stages; ++s) {
    const auto r = dist::block_range(layers, stages, s);
    if (layer >= r.begin && layer < r.end) return s;
  }
  return stages - 1;
}

void send_tensor(dist::Comm& c, const Tensor& t, int dest, int tag) {
  c.send(std::span<const std::byte>(static_cast<const std::byte*>(t.raw()), static_cast<std::size_t>(t.nbytes())),
         dest, tag);
}

void send_json(dist::Comm& c, const nlohmann::json& j, int dest, int tag) {
  const std::string s = j.dump();
  const std::int64_t n = static_cast<std::int64_t>(s.size());
  c.send(std::as_bytes(std::span(&n, 1)), dest, tag);
  c.send(std::as_bytes(std::span(s.data(), s.size())), dest, tag);
}

nlohmann::json recv_json(dist::Comm& c, int source, int tag) {
  std::int64_t n = 0;
  c.recv(std::as_writable_bytes(std::span(&n, 1)), source, tag);
  std::string s(static_cast<std::size_t>(n), '\0');
  c.recv(std::as_writable_bytes(std::span(s.data(), s.size())), source, tag);
  return nlohmann::json::parse(s);
}

}  // namespace

// A layer of this rank's stage: loaded (with prefetch_next, the next layer's read starts then),
// pruned (a committed one replayed from the checkpoint), then propagated through x, this layer's
// outputs and the next layer's inputs (before the commit, so that the layer's seconds count all
// of its work). On the data group's first rank an uncommitted layer is written as its shard, and
// {shard, metrics} returned for the manifest; null elsewhere.
nlohmann::json own_layer(const LinearJob& j, const CalibrationPass& c, Tensor& x, model::Model& m,
                         io::Checkpoint& ckpt, bool committed, bool prefetch_next,
                         const std::vector<TargetGroup>& groups, const Timer& layer_timer) {
  j.watchdog.beat("load layer", j.layer);
  Timer load_timer;  // the layer's read and upload, or the wait for its prefetch
  const auto dense = m.layer_weights(j.layer);
  if (prefetch_next) m.prefetch(j.layer + 1);  // its reads and uploads overlap this layer's work
  auto working = std::make_shared<model::LayerWeights>(*dense);
  const double load_s = load_timer.seconds();
  if (committed) {
    // Replay: the stored weights are the ones the original run propagated with.
    const auto data = ckpt.read_layer(j.layer);
    for (const auto& t : data.tensors) working->tensors[t.name] = to_forward(j.be, t.data, j.fwd);
  }
  std::vector<io::TensorRecord> records;
  nlohmann::json layer_metrics;
  if (!committed) {
    check_layer_vectors(j.be, *dense, j.layer);
    layer_metrics = prune_layer(j, c, groups, *working, records);
  }
  j.watchdog.beat("forward", j.layer);
  Timer forward_timer;
  const bool dense_propagation = j.cfg.prune.propagation == "dense";
  forward_layer(j.be, j.spec, dense_propagation ? *dense : *working, x, c.my_nseq, c.seqlen, c.batch, c.rope, nullptr);
  if (committed || j.group.rank() != 0) return nullptr;
  layer_metrics["forward_s"] = forward_timer.seconds();
  layer_metrics["load_s"] = load_s;
  layer_metrics["seconds"] = layer_timer.seconds();
  j.watchdog.beat("write shard", j.layer);
  const auto info = io::write_shard_file(ckpt.dir(), j.layer, 0, records, nullptr);
  return {{"shard", info.to_json()}, {"metrics", layer_metrics}};
}

// The allocation's metrics record and log line (rank 0 logs).
void record_allocation(const Allocation& allocation, const std::string& config_hash, Metrics& metrics, bool log_it) {
  nlohmann::json rec = allocation.record;
  rec["config_hash"] = config_hash;
  metrics.write(rec);
  const auto [lo, hi] = allocation.range();
  if (log_it)
    log::info("allocation {}: sparsities from {:.4f} to {:.4f}, mean {:.4f}, parameter-weighted {:.4f} ({:.1f} s)",
              allocation.method, lo, hi, allocation.record.at("mean_sparsity").get<double>(),
              allocation.record.at("weighted_sparsity").get<double>(), allocation.seconds);
}

// What the checkpoint must match to be resumed: the model, what decides the weights, the grid.
// The widest factor is that of the widest target's input (split_width changes nothing below it).
io::CheckpointIdentity prune_identity(const Config& cfg, const dist::Grid& grid, const model::ModelSpec& spec,
                                      const std::vector<TargetGroup>& groups, const std::vector<std::int32_t>& windows,
                                      DType fwd) {
  io::CheckpointIdentity id;
  id.model = cfg.model;
  id.model_fingerprint = io::model_fingerprint(cfg.model);
  std::int64_t widest = 0;
  for (const auto& g : groups)
    for (const auto& l : g.linears) widest = std::max(widest, l.in);
  id.config_hash = prune_config_hash(cfg, windows, fwd, widest);
  id.settings = prune_config_settings(cfg, windows, fwd, widest);
  id.grid = {{"stages", grid.stages}, {"data", grid.data}, {"determinism", cfg.determinism}};
  id.num_layers = spec.layers;
  return id;
}

// World rank 0 owns the manifest (creates, validates, cleans, commits); the others read it once
// rank 0 is done with that.
std::optional<io::Checkpoint> open_checkpoint(dist::Comm& world, const fs::path& dir, const io::CheckpointIdentity& id,
                                              bool restart, std::int64_t restart_from) {
  std::optional<io::Checkpoint> ckpt;
  if (world.is_root()) {
    io::CheckpointOptions copt;
    copt.restart = restart;
    copt.restart_from = restart_from;
    ckpt = io::Checkpoint::open_or_create(dir, id, copt);
    if (restart) fs::remove(dir / kSensitivityProbesFile);  // --restart starts every estimate anew too
  }
  world.barrier();
  if (!world.is_root()) ckpt = io::Checkpoint::open_read(dir);
  return ckpt;
}

// World rank 0: the owner's shard of `layer` into the manifest ({shard, metrics} as the owner
// sent them), a log line and the metrics record.
void commit_layer(io::Checkpoint& ckpt, std::int64_t layer, std::int64_t layers, const nlohmann::json& msg,
                  const std::string& config_hash, Metrics& metrics) {
  const auto info = io::ShardInfo::from_json(msg.at("shard"), fmt::format("layer {} shard", layer));
  const auto& layer_metrics = msg.at("metrics");
  ckpt.commit_layer(layer, {info}, layer_metrics);
  double err_sum = 0;
  std::size_t errs = 0;
  const auto& lins = layer_metrics.at("linears");
  for (const auto& [k, v] : lins.items())
    if (v["error_rel"].is_number()) {
      err_sum += v["error_rel"].get<double>();
      ++errs;
    }
  // Layers are named by their 0-based index everywhere (resume, errors, metrics, inspect); the
  // count says how far the prune is.
  log::info("layer {} committed ({}/{}): {} linears, {}, {:.1f} s", layer, layer + 1, layers, lins.size(),
            errs ? fmt::format("mean relative error {:.4g}", err_sum / static_cast<double>(errs))
                 : std::string("reconstruction error not computed"),
            layer_metrics.at("seconds").get<double>());
  nlohmann::json rec = layer_metrics;
  rec["event"] = "layer";
  rec["config_hash"] = config_hash;
  metrics.write(rec);
}

// What a summary's seconds cover when its run resumed a checkpoint ("" otherwise).
std::string resumed_note(const nlohmann::json& summary, std::int64_t layers) {
  const auto from = summary.value("resumed_at_layer", std::int64_t{0});
  if (from <= 0) return "";
  if (from >= layers) return " (every layer committed before: this run exported)";
  return fmt::format(" (layers {}..{}: the run resumed)", from, layers - 1);
}

// Every layer committed: the whole result read back through the checkpoint (digests checked) for
// the export and the summary, in one pass, so that what is exported is exactly what the manifest
// vouches for. The writers (output.export_writers per node) write their shares of the export's
// shards and count the zeros of what they read; without an export rank 0 counts. Rank 0 then
// marks the checkpoint complete, after the export: a run that fails while exporting exports again
// when rerun. first_layer: the first layer this run pruned (its seconds count from there; the
// summary says so when it is not 0). A checkpoint complete before this run keeps the summary of
// the run that completed it, and this run's log line and record repeat that one.
void summarise_and_export(const Config& cfg, io::Checkpoint& ckpt, const io::HfCheckpoint& src,
                          const model::ModelSpec& spec, const prune::Pattern& pattern, double seconds,
                          std::int64_t first_layer, dist::Comm& world, const NodePlace& place,
                          const std::string& config_hash, Metrics& metrics) {
  PrunedReader reader(ckpt, src, spec);
  const bool exporting = !cfg.output.export_dir.empty();
  const auto dest = fs::path(cfg.output.dir) / cfg.output.export_dir;
  // Every rank knows whether there is an export, so all or none make the writers' split.
  Timer export_timer;
  if (exporting)
    export_by_writers(src, reader.lazy(), dest, cfg.output.export_shard_mb << 20, world, place,
                      cfg.output.export_writers);
  std::array<std::int64_t, 2> count{0, 0};
  if (exporting || world.is_root()) std::tie(count[0], count[1]) = exporting ? reader.counted() : reader.count();
  world.allreduce_sum(std::span<std::int64_t>(count));
  if (!world.is_root()) return;
  const double export_s = export_timer.seconds();
  if (exporting) log::info("exported the pruned model to {} ({:.1f} s)", dest.string(), export_s);
  const auto [zeros, total] = count;
  nlohmann::json summary = {{"method", cfg.prune.method}, {"pattern", pattern.str()},
                            {"zeros", zeros},             {"weights", total},
                            {"sparsity", total ? double(zeros) / double(total) : 0.0},
                            {"seconds", seconds},         {"ranks", world.size()}};
  if (first_layer > 0) summary["resumed_at_layer"] = first_layer;
  const bool was_complete = ckpt.complete();
  if (was_complete && ckpt.manifest().contains("summary") && ckpt.manifest()["summary"].is_object())
    summary = ckpt.manifest()["summary"];
  if (!was_complete) ckpt.mark_complete(summary);
  log::info("pruned: {} of {} target weights zero ({:.2f}%) in {:.1f} s on {} rank(s){}{}", zeros, total,
            total ? 100.0 * zeros / total : 0.0, summary.value("seconds", 0.0), summary.value("ranks", 0),
            resumed_note(summary, spec.layers), was_complete ? ", by the run that completed the checkpoint" : "");
  if (was_complete) summary["complete_before_this_run"] = true;
  metrics.write({{"event", "prune"},
                 {"config_hash", config_hash},
                 {"summary", summary},
                 {"export_s", exporting ? nlohmann::json(export_s) : nlohmann::json(nullptr)}});
}

// What every rank reads and checks alike before any work, from the config, the model folder and the
// calibration text (every rank tokenizes it: cheaper than shipping the ids around). Built by
// on_every_rank: an error is printed once.
struct PruneInputs {
  PruneInputs(const Config& c, int ranks, const NodePlace& place, bool restart, std::int64_t restart_from)
      : threads(threads_per_rank(c.threads, place.local_ranks)), backend(make_rank_backend(c, place)),
        src(open_model(c)),
        spec(model_spec(*src)),
        pattern(prune::Pattern::parse(c.prune.pattern, c.prune.sparsity, "config: 'prune.pattern'")),
        method(prune::parse_method(c.prune.method, "config: 'prune.method'")),
        groups(spec.linear_groups(c.prune.targets, "config: 'prune.targets'")), fwd(forward_dtype(c, *src, spec)) {
    const int data = dist::grid_data(ranks, c.parallel.stages, c.parallel.data);
    if (restart_from >= spec.layers)  // before any work (the checkpoint's opening checks it again)
      SCALPEL_INPUT_ERROR("--restart-from {}: the model has {} layers (0..{})", restart_from, spec.layers,
                          spec.layers - 1);
    if (c.parallel.stages > spec.layers)
      SCALPEL_INPUT_ERROR("config: 'parallel.stages' {} exceeds the {} decoder layers of {}", c.parallel.stages,
                          spec.layers, c.model);
    if (pattern.is_nm()) check_nm_widths(groups, pattern.n, pattern.m);
    tok = make_tokenizer(c);
    calib = calibration_windows(c, spec, *tok);
    (void)calibration_shard(calib.nseq, c.calibration.batch, data, 0);  // enough batches for a stage's ranks
    if (c.parallel.memory_gb > 0) check_memory(c, ranks, restart);
  }

  // The plan's memory model decides before any work whether the job fits (the same check as
  // `scalpel plan`, which prints the terms). A sensitivity estimate the run will read whole (its
  // allocation.traces, or every probe kept in the checkpoint) is no phase of this run.
  void check_memory(const Config& cfg, int ranks, bool restart) const {
    const auto probes = restart ? std::string() : (fs::path(cfg.output.dir) / cfg.output.checkpoint /
                                                   kSensitivityProbesFile).string();
    Config planned = cfg;
    if (sensitivity_estimate_kept(cfg, groups, calib, probes)) planned.prune.allocation = Config{}.prune.allocation;
    check_plan_fits(plan_of_job(planned, ranks), cfg);
  }

  int threads;
  std::unique_ptr<Backend> backend;
  std::shared_ptr<const io::HfCheckpoint> src;
  model::ModelSpec spec;
  prune::Pattern pattern;
  prune::Method method;
  std::vector<TargetGroup> groups;
  DType fwd;
  std::unique_ptr<text::Tokenizer> tok;
  CalibrationWindows calib;
};

// What every step of a layer-by-layer prune reads: the checked inputs, the grid with this rank's
// shard of the calibration windows, and (rank 0) the evaluation texts. Built with every input
// check that can run before any work.
struct PruneSession : PruneInputs {
  PruneSession(const Config& c, dist::Comm& w, const NodePlace& place, bool restart, std::int64_t restart_from)
      : PruneInputs(
            detail::on_every_rank(w, [&] { return PruneInputs(c, w.size(), place, restart, restart_from); })),
        cfg(c), world(w), grid(dist::make_grid(w, c.parallel.stages, c.parallel.data)) {
    detail::on_root(w, [&] { check_layer_tensors(c.model, spec); });
    // A typo in the evaluation settings or an export folder that would be refused must not
    // surface only after hours of pruning.
    eval_inputs = check_run_end(w, c, spec, *tok);
    shard = calibration_shard(calib.nseq, c.calibration.batch, grid.data, grid.data_index);
  }

  const Config& cfg;
  dist::Comm& world;
  dist::Grid grid;
  EvalInputs eval_inputs;  // rank 0
  WindowRange shard;
};

// The layer loop's state: the checkpoint, the model, this stage's activations x and the services.
struct LayerLoop {
  const PruneSession& s;
  io::Checkpoint& ckpt;
  const io::CheckpointIdentity& id;
  model::Model& m;
  const Allocation& allocation;
  const model::RopeTables* rope;
  prune::StatsKinds kinds;
  prune::Accumulation accumulation;
  bool host_activations;
  Tensor x;
  Metrics& metrics;
  Watchdog& watchdog;
};

constexpr int kTagActivations = 1, kTagCommit = 2;

// This rank's part of one layer: the owning stage prunes it (the data group's first rank sends
// the commit message to world rank 0 unless that is itself) and, after its last layer, sends its
// activations on; the next stage receives them. Returns the commit message on the rank that has it.
nlohmann::json layer_work(LayerLoop& l, std::int64_t layer, const Timer& layer_timer) {
  const auto& s = l.s;
  const auto& grid = s.grid;
  dist::Comm& group = *grid.data_group;
  const int owner = stage_of(layer, s.spec.layers, grid.stages);
  const bool committed = l.ckpt.committed(layer);
  const auto my_layers = dist::block_range(s.spec.layers, grid.stages, grid.stage);
  nlohmann::json commit_msg;
  // Errors name the layer (the rank is added by main): "layer 3: ...".
  try {
    if (owner == grid.stage) {
      Backend& be = *s.backend;
      const LinearJob job{be, group, s.cfg, *s.src, s.spec, s.method, l.allocation, s.fwd, layer, l.watchdog};
      const CalibrationPass pass{l.x,  s.shard.count(), s.calib.seqlen, s.cfg.calibration.batch, s.calib.nseq,
                                 l.rope, l.kinds,          l.accumulation};
      const bool prefetch_next = layer + 1 < my_layers.end && prefetch_layers();
      commit_msg = own_layer(job, pass, l.x, l.m, l.ckpt, committed, prefetch_next, s.groups, layer_timer);
      if (!committed && group.rank() == 0 && !s.world.is_root()) send_json(s.world, commit_msg, 0, kTagCommit);
      if (layer == my_layers.end - 1 && grid.stage < grid.stages - 1) {
        l.watchdog.beat("send activations", layer);
        send_tensor(*grid.pipe, be.download(l.x), grid.stage + 1, kTagActivations);
        l.x = Tensor();
      }
    }
  } catch (const Error& e) {
    const std::string what = e.what();
    if (what.find(fmt::format("layer {}", layer)) != std::string::npos) throw;
    throw Error(e.kind(), fmt::format("layer {}: {}", layer, what), __FILE__, __LINE__);
  }
  // The stage before hands its activations over after its last layer (both sides here, before
  // the layer's world-wide stop check, so neither waits on the other).
  if (grid.stage > 0 && layer == my_layers.begin - 1) {
    l.watchdog.beat("receive activations", layer);
    Tensor host = Tensor::empty({s.shard.count() * s.calib.seqlen, s.spec.hidden}, s.fwd);
    grid.pipe->recv(std::span<std::byte>(static_cast<std::byte*>(host.raw()), static_cast<std::size_t>(host.nbytes())),
                    grid.stage - 1, kTagActivations);
    l.x = l.host_activations ? host : s.backend->upload_exact(host);  // in the forward dtype
  }
  return commit_msg;
}

// Every layer in order: its work, the commit by world rank 0 (the owner's shard into the
// manifest), progress, and the world-wide stop check after the commit. kExitInterrupted on a stop.
int prune_layers(LayerLoop& l) {
  const auto& s = l.s;
  const auto layers = s.spec.layers;
  // A resume's replay of its committed layers (forwards only) reports apart: its lines said
  // "prune: 2/4 layers" at a pace the pruning then did not keep.
  const std::int64_t resume_at = l.ckpt.first_uncommitted();
  const auto interval = s.cfg.log.progress_seconds;
  const auto tokens = s.calib.nseq * s.calib.seqlen;  // a layer's
  Progress replay("replay of the committed layers", resume_at, "layers", interval, s.world.is_root());
  Progress progress("prune", layers, "layers", interval, s.world.is_root(), resume_at);
  for (std::int64_t layer = 0; layer < layers; ++layer) {
    if (layer == resume_at) progress = Progress("prune", layers, "layers", interval, s.world.is_root(), resume_at);
    Timer layer_timer;
    const bool committed = l.ckpt.committed(layer);
    nlohmann::json commit_msg = layer_work(l, layer, layer_timer);
    if (s.world.is_root() && !committed) {
      l.watchdog.beat("commit", layer);
      const int owner = stage_of(layer, layers, s.grid.stages);
      if (owner != 0) commit_msg = recv_json(s.world, s.grid.world_rank_of(owner, 0), kTagCommit);
      commit_layer(l.ckpt, layer, layers, commit_msg, l.id.config_hash, l.metrics);
    }
    if (layer < resume_at) replay.update(layer + 1, (layer + 1) * tokens);
    else progress.update(layer + 1, (layer + 1 - resume_at) * tokens);
    l.watchdog.beat("stop check", layer);
    // A stop while a resume replays committed layers (their forwards rebuild the activations)
    // names the last layer committed, not the one replayed (it said "after layer 0" with 0..2 kept).
    std::int64_t kept = layer;
    if (committed)
      while (kept + 1 < layers && l.ckpt.committed(kept + 1)) ++kept;
    // After the last layer too: the export and the evaluation are redone by the rerun.
    if (stop_requested(s.world, {"layer", kept + 1, layers, kept}, l.id.config_hash, l.metrics))
      return kExitInterrupted;
  }
  progress.finish();
  return kExitOk;
}

// The evaluation's resume state, in the checkpoint manifest's "extra" (see evaluation_resume).
EvalResume manifest_evaluation_resume(const PruneSession& s, io::Checkpoint& ckpt) {
  nlohmann::json kept;
  if (s.world.is_root()) kept = ckpt.manifest().value("extra", nlohmann::json::object()).value("evaluation", kept);
  return evaluation_resume(s.cfg, s.world, kept, [&ckpt](const nlohmann::json& e) {
    auto extra = ckpt.manifest().value("extra", nlohmann::json::object());
    if (e.is_null()) extra.erase("evaluation");
    else extra["evaluation"] = e;
    ckpt.set_extra(extra);
  });
}

// The evaluation of the pruned model over every rank, layers read from the checkpoint one at a
// time; false when a signal stopped it between two sets or tasks (the rerun goes on from there).
bool evaluate_pruned(const PruneSession& s, io::Checkpoint& ckpt, const std::string& config_hash, Metrics& metrics,
                     Watchdog& watchdog) {
  model::Model pruned(s.spec, std::make_shared<PrunedSource>(io::Checkpoint::open_read(ckpt.dir()), s.src, s.spec),
                      *s.backend, static_cast<std::size_t>(s.cfg.weight_cache_mb) << 20);
  pruned.set_forward_dtype(s.fwd);  // evaluated as it was pruned: the reference's fp16 eval on a GPU
  return evaluate_config(
      pruned, s.eval_inputs, s.cfg, s.world, metrics,
      {{"pruned", true}, {"threads", s.threads}, {"config_hash", config_hash}, {"forward_dtype", dtype_name(s.fwd)}},
      evaluation_heartbeat(watchdog), evaluation_stop(s.world, config_hash, metrics),
      manifest_evaluation_resume(s, ckpt));
}

void log_prune_start(const PruneSession& s, std::int64_t resume_from, const fs::path& ckpt_dir) {
  const auto& cfg = s.cfg;
  log::info("prune {} ({}, {} layers): {} {}, {} calibration windows x {} tokens from {}; {} rank(s) = {} stage(s) x "
            "{} data, device {} ({} forward), {} thread(s) per rank, determinism {}",
            cfg.model, s.spec.model_type, s.spec.layers, cfg.prune.method, s.pattern.str(), s.calib.nseq,
            s.calib.seqlen, s.calib.source, s.world.size(), s.grid.stages, s.grid.data, s.backend->name(),
            dtype_name(s.fwd), s.threads, cfg.determinism);
  if (resume_from >= s.spec.layers)
    log::info("checkpoint {}: all {} layers committed; nothing to prune", ckpt_dir.string(), s.spec.layers);
  else if (resume_from > 0)
    log::info("checkpoint {}: layers 0..{} committed; resuming at layer {}", ckpt_dir.string(), resume_from - 1,
              resume_from);
}

int run_prune(const Config& cfg, dist::Comm& world, const NodePlace& place, bool restart, std::int64_t restart_from) {
  SCALPEL_CHECK(cfg.prune.method != "surgeon", "LLM Surgeon's shots are run_surgeon's, not the layer loop's");
  Timer total_timer;
  install_stop_signals();
  const PruneSession s(cfg, world, place, restart, restart_from);
  Backend& be = *s.backend;
  const auto& spec = s.spec;
  const fs::path out_dir = cfg.output.dir;
  const fs::path ckpt_dir = out_dir / cfg.output.checkpoint;
  const io::CheckpointIdentity id = prune_identity(cfg, s.grid, spec, s.groups, s.calib.ids, s.fwd);
  std::optional<io::Checkpoint> ckpt = open_checkpoint(world, ckpt_dir, id, restart, restart_from);
  const std::int64_t first_layer = ckpt->first_uncommitted();
  log_prune_start(s, first_layer, ckpt_dir);

  Metrics metrics;
  if (world.is_root() && !cfg.output.metrics.empty()) metrics = Metrics((out_dir / cfg.output.metrics).string());
  model::Model m(spec, checkpoint_source(s.src), be, static_cast<std::size_t>(cfg.weight_cache_mb) << 20);
  const std::int64_t seqlen = s.calib.seqlen, batch = cfg.calibration.batch;
  const model::RopeTables rope_tables =
      spec.family == model::Family::llama ? model::make_rope_tables(be, spec, seqlen) : model::RopeTables{};
  prune::StatsKinds kinds;
  // The Hessian is SparseGPT's input and every method's reconstruction error; Wanda needs only
  // the column norms, magnitude nothing (no statistics pass at all without the error).
  kinds.hessian = s.method == prune::Method::sparsegpt || cfg.output.reconstruction_error;
  kinds.col_norms = s.method == prune::Method::wanda;
  const auto accumulation = cfg.determinism == "strict" ? prune::Accumulation::exact : prune::Accumulation::sum;

  Watchdog watchdog(cfg.parallel.watchdog_seconds, world.rank());
  // Every rank reads the same manifest, so all agree whether any layer is left.
  if (ckpt->first_uncommitted() < spec.layers) {
    // No heartbeat until the first layer: the allocation's passes and the embedding take as long
    // as they take (the layer loop's first beat restarts the countdown).
    watchdog.suspend("allocation");
    // The allocation is recomputed on a resumed run too: it depends on the dense model and the
    // calibration windows only, so it comes out the same.
    AllocationContext actx{m, s.groups, s.calib, s.shard, batch, *s.grid.data_group, accumulation,
                           cfg.surgeon.keep_activations_mb, s.grid.stage, s.grid.stages, s.grid.pipe.get(), &world};
    actx.progress_seconds = cfg.log.progress_seconds;
    actx.probes_path = (ckpt_dir / kSensitivityProbesFile).string();
    actx.stop = [&](std::int64_t done, std::int64_t total) {
      return stop_requested(world, {"probe", done, total, done, "the probes done are kept in the checkpoint folder: the "
                                    "rerun goes on from there"}, id.config_hash, metrics);
    };
    if (cfg.prune.allocation == "sensitivity") set_interrupt_note(kSensitivityInterruptNote);
    const Allocation allocation = allocate_sparsity(cfg, s.pattern, actx);
    set_interrupt_note(nullptr);  // the layers keep what they commit
    if (allocation.stopped) return kExitInterrupted;
    if (!allocation.record.empty()) {
      record_allocation(allocation, id.config_hash, metrics, world.is_root());
      if (stop_requested(world, {"allocation", 1, 1, 1, "the allocation in the metrics; the rerun computes it again"},
                         id.config_hash, metrics))
        return kExitInterrupted;
    }

    // The allocation ran the fp32 forward; the layers run in the forward dtype from here.
    m.set_forward_dtype(s.fwd);
    // The stage's first layer is read and uploaded while its inputs are embedded (the later ones
    // while the layer before them works).
    if (prefetch_layers()) m.prefetch(dist::block_range(spec.layers, s.grid.stages, s.grid.stage).begin);
    LayerLoop loop{s,     *ckpt, id, m, allocation, spec.family == model::Family::llama ? &rope_tables : nullptr,
                   kinds, accumulation, activations_on_host(be, cfg, world), Tensor(), metrics, watchdog};
    if (s.grid.stage == 0)
      loop.x = embed_windows(be, m, s.calib.windows(s.shard.begin, s.shard.count()), s.shard.count(), seqlen, batch,
                             spec.hidden, loop.host_activations);
    if (const int code = prune_layers(loop); code != kExitOk) return code;
  }
  // The ranks read the checkpoint back and write the export's shards (hundreds of GB for the
  // largest models) with no heartbeat to give in between, so no countdown.
  watchdog.suspend("summary and export");
  // Once rank 0 has committed the last layer, the other ranks read the manifest again (theirs is
  // the one they opened at the start).
  world.barrier();
  if (!world.is_root()) ckpt = io::Checkpoint::open_read(ckpt_dir);
  summarise_and_export(cfg, *ckpt, *s.src, spec, s.pattern, total_timer.seconds(), first_layer, world, place,
                       id.config_hash, metrics);
  world.barrier();  // the checkpoint is marked complete
  if (cfg.eval.sets.empty() && cfg.eval.tasks.empty()) return kExitOk;
  if (stop_requested(world, {"layer", spec.layers, spec.layers, spec.layers - 1, "committed and exported"},
                     id.config_hash, metrics))
    return kExitInterrupted;
  watchdog.beat("evaluate", -1);
  return evaluate_pruned(s, *ckpt, id.config_hash, metrics, watchdog) ? kExitOk : kExitInterrupted;
}

}  // namespace scalpel::app
