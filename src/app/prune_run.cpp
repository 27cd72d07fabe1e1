// `scalpel prune`: the sequential layer-by-layer prune of DESIGN.md section 3. Calibration windows
// flow through the decoder one layer at a time; each layer's linears are pruned from the
// statistics of their inputs, the pruned layer is written to the checkpoint and committed, and its
// outputs feed the next layer. A rerun of the same command resumes after the last committed layer
// and, because committed layers are replayed from their stored (bitwise) weights through the same
// batched forward, ends bitwise equal to a run that never stopped.
#include <fnmatch.h>

#include <cmath>
#include <filesystem>
#include <set>

#include "scalpel/app/commands.hpp"
#include "scalpel/app/export.hpp"
#include "scalpel/app/progress.hpp"
#include "scalpel/backend/backend.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/core/log.hpp"
#include "scalpel/io/checkpoint.hpp"
#include "scalpel/io/hf_checkpoint.hpp"
#include "scalpel/prune/pruner.hpp"
#include "scalpel/text/calibration.hpp"
#include "scalpel/text/eval_text.hpp"
#include "scalpel/text/tokenizer.hpp"

namespace fs = std::filesystem;

namespace scalpel::app {
namespace {

// The linears of a layer this run prunes, in forward order, grouped by shared input.
struct TargetGroup {
  int group = 0;
  std::vector<model::LinearSpec> linears;
};

std::vector<TargetGroup> target_groups(const model::ModelSpec& spec, const std::vector<std::string>& globs) {
  std::vector<TargetGroup> out;
  std::set<std::string> matched_globs;
  for (const auto& l : spec.linears()) {
    bool take = globs.empty();
    for (const auto& g : globs)
      if (fnmatch(g.c_str(), l.name.c_str(), 0) == 0) {
        take = true;
        matched_globs.insert(g);
      }
    if (!take) continue;
    if (out.empty() || out.back().group != l.input_group) out.push_back({l.input_group, {}});
    out.back().linears.push_back(l);
  }
  for (const auto& g : globs)
    if (!matched_globs.count(g)) {
      std::string names;
      for (const auto& l : spec.linears()) names += (names.empty() ? "" : ", ") + l.name;
      SCALPEL_INPUT_ERROR("config: 'prune.targets' entry '{}' matches no linear of this model ({})", g, names);
    }
  return out;
}

// Digest of the calibration windows, so a changed text or offsets file is a different run.
std::string ids_digest(const std::vector<std::int32_t>& ids) {
  return io::digest_bytes(ids.data(), ids.size() * sizeof(std::int32_t));
}

std::string prune_config_hash(const Config& cfg, const std::string& calib_digest) {
  // What decides the pruned weights: method, pattern, options, calibration windows. Not the
  // threads, output paths, logging or evaluation sets.
  Config c;
  c.prune = cfg.prune;
  c.calibration = cfg.calibration;
  c.calibration.path = calib_digest;
  c.calibration.offsets.clear();
  return config_hash(c);
}

// Runs x [batch*seqlen rows per batch] through one layer in place, batch by batch.
void forward_layer(Backend& be, const model::ModelSpec& spec, const model::LayerWeights& w, Tensor& x,
                   std::int64_t nseq, std::int64_t seqlen, std::int64_t batch, const model::RopeTables* rope,
                   const model::LinearTap* tap) {
  for (std::int64_t s = 0; s < nseq; s += batch) {
    const std::int64_t b = std::min(batch, nseq - s);
    Tensor xb = x.slice_rows(s * seqlen, (s + b) * seqlen);
    model::decoder_layer_forward(be, spec, w, xb, b, seqlen, rope, tap);
  }
}

// Collects the statistics of the given groups' inputs with one pass over the calibration windows
// (the layer's outputs are discarded: x is copied per batch).
std::map<int, std::unique_ptr<prune::InputStats>> collect_stats(Backend& be, const model::ModelSpec& spec,
                                                                const model::LayerWeights& w, const Tensor& x,
                                                                std::int64_t nseq, std::int64_t seqlen,
                                                                std::int64_t batch, const model::RopeTables* rope,
                                                                const std::vector<TargetGroup>& groups,
                                                                prune::StatsKinds kinds, std::int64_t layer) {
  std::map<int, std::unique_ptr<prune::InputStats>> stats;
  for (const auto& g : groups) {
    std::string names;
    for (const auto& l : g.linears) names += (names.empty() ? "" : "/") + l.name;
    stats[g.group] = std::make_unique<prune::InputStats>(be, g.linears.front().in, kinds,
                                                         fmt::format("layer {} {}", layer, names));
  }
  std::int64_t seqs_in_batch = 0;
  model::LinearTap tap = [&](int group, const std::vector<std::string>&, const Tensor& in) {
    auto it = stats.find(group);
    if (it != stats.end()) it->second->add_batch(in, seqs_in_batch);
  };
  for (std::int64_t s = 0; s < nseq; s += batch) {
    seqs_in_batch = std::min(batch, nseq - s);
    Tensor xb = be.empty({seqs_in_batch * seqlen, spec.hidden});
    be.copy(x.slice_rows(s * seqlen, (s + seqs_in_batch) * seqlen), xb);
    model::decoder_layer_forward(be, spec, w, xb, seqs_in_batch, seqlen, rope, &tap);
  }
  return stats;
}

// fp32 weight -> the checkpoint's stored dtype, on the host.
Tensor to_storage(Backend& be, const Tensor& w, DType dtype) {
  const Tensor host = be.download(w);
  Tensor out = Tensor::empty(host.shape(), dtype);
  convert_from_f32(dtype, host.f32(), out.raw(), static_cast<std::size_t>(host.numel()));
  return out;
}

}  // namespace

std::map<std::string, Tensor> pruned_tensors(const io::Checkpoint& ckpt, const io::HfCheckpoint& src,
                                             const model::ModelSpec& spec, std::int64_t* zeros, std::int64_t* total) {
  std::map<std::string, Tensor> replaced;
  for (std::int64_t layer = 0; layer < spec.layers; ++layer) {
    const auto data = ckpt.read_layer(layer);
    for (const auto& t : data.tensors) {
      const auto name = src.resolve(spec.layer_prefix(layer) + t.name);
      if (name.empty())
        SCALPEL_INPUT_ERROR("checkpoint {}: layer {} tensor '{}' is not in the model {}", ckpt.dir().string(), layer,
                            t.name, src.folder().string());
      replaced[name] = t.data;
      const auto s = sparsity_stats(t.data);
      if (zeros) *zeros += s.zeros;
      if (total) *total += s.rows * s.cols;
    }
  }
  return replaced;
}

int run_export(const std::string& checkpoint_dir, const std::string& model_override, const std::string& out,
               std::int64_t shard_mb) {
  const auto ckpt = io::Checkpoint::open_read(checkpoint_dir);
  if (!ckpt.complete())
    SCALPEL_INPUT_ERROR("checkpoint {}: not complete ({} of {} layers committed); finish the prune first (rerun "
                        "the same scalpel prune command)",
                        checkpoint_dir, ckpt.committed_count(), ckpt.num_layers());
  const std::string model =
      model_override.empty() ? ckpt.manifest().at("model").at("name").get<std::string>() : model_override;
  const io::HfCheckpoint src(model);
  if (io::model_fingerprint(model) != ckpt.manifest().at("model").at("fingerprint").get<std::string>())
    SCALPEL_INPUT_ERROR("checkpoint {} was made from another model than {} (fingerprints differ)", checkpoint_dir,
                        model);
  const auto spec = model::ModelSpec::from_config(src.config(), (fs::path(model) / "config.json").string());
  const auto replaced = pruned_tensors(ckpt, src, spec, nullptr, nullptr);
  export_hf_folder(src, replaced, out, shard_mb << 20);
  fmt::print("exported {} pruned tensors of {} to {}\n", replaced.size(), model, out);
  return kExitOk;
}

int run_prune(const Config& cfg, dist::Comm& comm, int local_ranks, bool restart) {
  if (cfg.model.empty()) SCALPEL_INPUT_ERROR("config: 'model' (a Hugging Face model folder) is required");
  if (comm.size() > 1)
    SCALPEL_INPUT_ERROR("scalpel prune runs on one MPI rank in this version ({} were started); "
                        "distributed pruning is the next milestone (see README)", comm.size());
  Timer total_timer;
  const int threads = threads_per_rank(cfg.threads, local_ranks);
  auto backend = make_backend(cfg.device, threads);
  Backend& be = *backend;
  auto src = std::make_shared<const io::HfCheckpoint>(cfg.model);
  const auto spec =
      model::ModelSpec::from_config(src->config(), (fs::path(cfg.model) / "config.json").string());
  const auto pattern = prune::Pattern::parse(cfg.prune.pattern, cfg.prune.sparsity, "config: 'prune.pattern'");
  const auto method = prune::parse_method(cfg.prune.method, "config: 'prune.method'");
  const auto groups = target_groups(spec, cfg.prune.targets);

  // Calibration windows.
  auto tok = text::Tokenizer::from_folder(cfg.model);
  const auto calib_ids = tok->encode(text::load_eval_text("text", cfg.calibration.path));
  const std::int64_t seqlen = cfg.calibration.seqlen > 0 ? cfg.calibration.seqlen : spec.max_positions;
  if (seqlen > spec.max_positions)
    SCALPEL_INPUT_ERROR("config: 'calibration.seqlen' {} exceeds the model's max_position_embeddings {}", seqlen,
                        spec.max_positions);
  const auto offsets =
      cfg.calibration.offsets.empty()
          ? text::sample_window_offsets(static_cast<std::int64_t>(calib_ids.size()), seqlen, cfg.calibration.nsamples,
                                        cfg.calibration.seed, cfg.calibration.path)
          : text::read_window_offsets(cfg.calibration.offsets, static_cast<std::int64_t>(calib_ids.size()), seqlen);
  const auto nseq = static_cast<std::int64_t>(offsets.size());
  std::vector<std::int32_t> windows;
  windows.reserve(static_cast<std::size_t>(nseq * seqlen));
  for (auto o : offsets) windows.insert(windows.end(), calib_ids.begin() + o, calib_ids.begin() + o + seqlen);

  const fs::path out_dir = cfg.output.dir;
  const fs::path ckpt_dir = out_dir / cfg.output.checkpoint;
  io::CheckpointIdentity id;
  id.model = cfg.model;
  id.model_fingerprint = io::model_fingerprint(cfg.model);
  id.config_hash = prune_config_hash(cfg, ids_digest(windows));
  id.grid = {{"stages", 1}, {"data", comm.size()}};
  id.num_layers = spec.layers;
  io::CheckpointOptions copt;
  copt.restart = restart;
  auto ckpt = io::Checkpoint::open_or_create(ckpt_dir, id, copt);
  const auto resume_from = ckpt.first_uncommitted();

  log::info("prune {} ({}, {} layers): {} {}, {} calibration windows x {} tokens from {}, {} thread(s)", cfg.model,
            spec.model_type, spec.layers, cfg.prune.method, pattern.str(), nseq, seqlen, cfg.calibration.path,
            threads);
  if (resume_from > 0)
    log::info("checkpoint {}: layers 0..{} committed; resuming at layer {}", ckpt_dir.string(), resume_from - 1,
              resume_from);

  Metrics metrics;
  if (!cfg.output.metrics.empty()) metrics = Metrics((out_dir / cfg.output.metrics).string());
  model::Model m(spec, checkpoint_source(src), be, static_cast<std::size_t>(cfg.weight_cache_mb) << 20);
  const model::RopeTables rope_tables =
      spec.family == model::Family::llama ? model::make_rope_tables(be, spec, seqlen) : model::RopeTables{};
  const model::RopeTables* rope = spec.family == model::Family::llama ? &rope_tables : nullptr;
  const bool dense_propagation = cfg.prune.propagation == "dense";
  prune::StatsKinds kinds;
  kinds.hessian = true;  // SparseGPT's input, and every method's reconstruction error
  kinds.col_norms = method == prune::Method::wanda;

  Tensor x = m.embed(windows, nseq, seqlen);
  const std::int64_t batch = cfg.calibration.batch;
  Progress progress("prune", spec.layers, "layers", cfg.log.progress_seconds, comm.is_root());
  std::int64_t pruned_total = 0, weights_total = 0;

  for (std::int64_t layer = 0; layer < spec.layers; ++layer) {
    Timer layer_timer;
    const auto dense = m.layer_weights(layer);
    auto working = std::make_shared<model::LayerWeights>(*dense);
    if (ckpt.committed(layer)) {
      // Replay: the stored weights are the ones the original run propagated with.
      const auto data = ckpt.read_layer(layer);
      for (const auto& t : data.tensors) working->tensors[t.name] = be.upload(t.data);
      m.set_layer_weights(layer, working);
      forward_layer(be, spec, dense_propagation ? *dense : *working, x, nseq, seqlen, batch, rope, nullptr);
      progress.update(layer + 1, (layer + 1) * nseq * seqlen);
      continue;
    }
    std::vector<io::TensorRecord> records;
    nlohmann::json lin_metrics = nlohmann::json::object();
    double stats_s = 0;
    // true_sequential: statistics of each group are taken after the groups before it are pruned.
    const std::vector<std::vector<TargetGroup>> passes =
        cfg.prune.true_sequential ? [&] {
          std::vector<std::vector<TargetGroup>> p;
          for (const auto& g : groups) p.push_back({g});
          return p;
        }()
                                  : std::vector<std::vector<TargetGroup>>{groups};
    for (const auto& pass : passes) {
      Timer st;
      auto stats = collect_stats(be, spec, *working, x, nseq, seqlen, batch, rope, pass, kinds, layer);
      stats_s += st.seconds();
      for (const auto& g : pass) {
        for (const auto& lin : g.linears) {
          const std::string wname = lin.name + ".weight";
          prune::PruneOptions opt;
          opt.method = method;
          opt.pattern = pattern;
          opt.blocksize = cfg.prune.blocksize;
          opt.percdamp = cfg.prune.dampening;
          opt.name = fmt::format("layer {} {}", layer, lin.name);
          const auto r = prune::prune_linear(be, working->at(wname), stats.at(g.group).get(), opt);
          const auto stored_dtype = src->info(spec.layer_prefix(layer) + wname).dtype;
          Tensor stored = to_storage(be, r.weight, stored_dtype);
          working->tensors[wname] = be.upload(stored);
          const nlohmann::json lm = {{"error", r.error},          {"error_rel", r.error_rel}, {"sparsity", r.sparsity},
                                     {"pruned", r.pruned},        {"weights", r.total},       {"damping", r.damping},
                                     {"percdamp", r.percdamp},    {"damping_tries", r.damping_tries},
                                     {"dead_inputs", r.dead},     {"factor_s", r.seconds.factorisation},
                                     {"sweep_s", r.seconds.sweep}, {"error_s", r.seconds.error}};
          if (!std::isfinite(r.sparsity)) SCALPEL_RUNTIME_ERROR("layer {} {}: non-finite result", layer, lin.name);
          lin_metrics[lin.name] = lm;
          pruned_total += r.pruned;
          weights_total += r.total;
          io::TensorRecord rec;
          rec.name = wname;
          rec.data = stored;
          rec.packed_mask = io::pack_mask(be.download(r.mask));
          rec.metrics = lm;
          records.push_back(std::move(rec));
        }
      }
    }
    m.set_layer_weights(layer, working);
    forward_layer(be, spec, dense_propagation ? *dense : *working, x, nseq, seqlen, batch, rope, nullptr);
    const nlohmann::json layer_metrics = {{"layer", layer}, {"seconds", layer_timer.seconds()}, {"stats_s", stats_s},
                                          {"linears", lin_metrics}};
    const auto info = ckpt.write_layer_shard(layer, 0, records, nullptr);
    ckpt.commit_layer(layer, {info}, layer_metrics);
    double err_sum = 0;
    for (const auto& [k, v] : lin_metrics.items()) err_sum += v["error_rel"].is_number() ? v["error_rel"].get<double>() : 0;
    log::info("layer {}/{} committed: {} linears, mean relative error {:.4g}, {:.1f} s", layer + 1, spec.layers,
              lin_metrics.size(), lin_metrics.empty() ? 0.0 : err_sum / lin_metrics.size(), layer_timer.seconds());
    nlohmann::json rec = layer_metrics;
    rec["event"] = "layer";
    rec["config_hash"] = id.config_hash;
    metrics.write(rec);
    progress.update(layer + 1, (layer + 1) * nseq * seqlen);
  }
  progress.finish();
  x = Tensor();

  // Every layer is committed: read the whole result back through the checkpoint (digests checked)
  // for the export, so what is exported is exactly what the manifest vouches for.
  std::int64_t zeros = 0, total = 0;
  const auto replaced = pruned_tensors(ckpt, *src, spec, &zeros, &total);
  const nlohmann::json summary = {{"method", cfg.prune.method}, {"pattern", pattern.str()}, {"zeros", zeros},
                                  {"weights", total}, {"sparsity", total ? double(zeros) / double(total) : 0.0},
                                  {"seconds", total_timer.seconds()}};
  if (!ckpt.complete()) ckpt.mark_complete(summary);
  log::info("pruned {} of {} target weights ({:.2f}%) in {:.1f} s", zeros, total,
            total ? 100.0 * zeros / total : 0.0, total_timer.seconds());
  if (!cfg.output.export_dir.empty()) {
    const auto dest = out_dir / cfg.output.export_dir;
    export_hf_folder(*src, replaced, dest, cfg.output.export_shard_mb << 20);
    log::info("exported the pruned model to {}", dest.string());
  }
  metrics.write({{"event", "prune"}, {"config_hash", id.config_hash}, {"summary", summary}});

  for (const auto& set : cfg.eval.sets) {
    auto ids = tok->encode(text::load_eval_text(set.preset, set.path));
    const std::int64_t eseq = cfg.eval.seqlen > 0 ? cfg.eval.seqlen : spec.max_positions;
    const auto limit = text::preset_token_limit(set.preset, eseq);
    if (limit >= 0 && static_cast<std::int64_t>(ids.size()) > limit) ids.resize(static_cast<std::size_t>(limit));
    const auto r = evaluate_ids(m, ids, eseq, cfg.eval.batch, cfg.eval.max_windows, comm, set.name,
                                cfg.log.progress_seconds);
    fmt::print("{}: ppl {:.4f} (pruned; mean nll {:.6f}; {} windows x {} tokens; {:.1f} s)\n", r.name, r.ppl,
               r.mean_nll, r.windows, r.seqlen, r.seconds);
    std::fflush(stdout);
    metrics.write({{"event", "eval"}, {"set", r.name}, {"preset", set.preset}, {"path", set.path}, {"pruned", true},
                   {"ppl", r.ppl}, {"mean_nll", r.mean_nll}, {"windows", r.windows}, {"seqlen", r.seqlen},
                   {"config_hash", id.config_hash}});
  }
  return kExitOk;
}

}  // namespace scalpel::app
