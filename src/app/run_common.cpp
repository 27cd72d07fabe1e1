// Shared services of the drivers (see run_common.hpp and scalpel/app/commands.hpp): the model,
// tokenizer and backend of a rank, the calibration windows, the checkpoint identities.
#include "run_common.hpp"

#include <sched.h>

#include <algorithm>
#include <thread>

#include "root_work.hpp"
#include "scalpel/app/commands.hpp"
#include "scalpel/app/plan.hpp"

#include "scalpel/app/run_control.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/core/log.hpp"
#include "scalpel/dist/comm.hpp"
#include "scalpel/io/manifest.hpp"
#include "scalpel/text/calibration.hpp"
#include "scalpel/text/eval_text.hpp"

namespace scalpel::app {
namespace {

class CheckpointSource final : public model::WeightSource {
 public:
  explicit CheckpointSource(std::shared_ptr<const io::HfCheckpoint> c) : ckpt_(std::move(c)) {}
  bool has(const std::string& name) const override { return ckpt_->has(name); }
  Tensor load(const std::string& name) const override { return ckpt_->view(name); }

 private:
  std::shared_ptr<const io::HfCheckpoint> ckpt_;
};

}  // namespace

std::shared_ptr<model::WeightSource> checkpoint_source(std::shared_ptr<const io::HfCheckpoint> ckpt) {
  return std::make_shared<CheckpointSource>(std::move(ckpt));
}

text::TokenizerMode tokenizer_mode(const std::string& mode) {
  if (mode == "transformers") return text::TokenizerMode::transformers;
  if (mode == "sentencepiece") return text::TokenizerMode::sentencepiece;
  SCALPEL_INPUT_ERROR("tokenizer mode '{}': expected transformers or sentencepiece", mode);
}

std::shared_ptr<const io::HfCheckpoint> open_model(const Config& cfg) {
  if (cfg.model.empty()) SCALPEL_INPUT_ERROR("config: 'model' (a Hugging Face model folder) is required");
  return std::make_shared<const io::HfCheckpoint>(cfg.model);
}

model::ModelSpec model_spec(const io::HfCheckpoint& src) {
  return model::ModelSpec::from_config(src.config(), (src.folder() / "config.json").string());
}

std::unique_ptr<text::Tokenizer> make_tokenizer(const Config& cfg) {
  return text::Tokenizer::from_folder(cfg.model, tokenizer_mode(cfg.tokenizer.mode));
}

int threads_per_rank(int configured, int local_ranks) {
  if (configured > 0) return configured;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // A rank the launcher bound to some cores (mpirun --bind-to, srun --cpu-bind, a Slurm
  // allocation) uses those; an unbound rank shares the node's cores with the others on it.
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    const int allowed = CPU_COUNT(&set);
    if (allowed > 0 && allowed < cores) return allowed;
  }
  return std::max(1, cores / std::max(1, local_ranks));
}

std::unique_ptr<Backend> make_rank_backend(const Config& cfg, const NodePlace& place) {
  BackendOptions o;
  o.threads = threads_per_rank(cfg.threads, place.local_ranks);
  o.local_rank = place.local_rank;
  o.tf32_forward = cfg.cuda.tf32 != "off";
  o.tf32_hessian = cfg.cuda.tf32 == "all";
  return make_backend(cfg.device, o);
}

CalibrationWindows calibration_windows(const Config& cfg, const model::ModelSpec& spec, const text::Tokenizer& tok) {
  if (cfg.calibration.path.empty())
    SCALPEL_INPUT_ERROR("config: 'calibration.path' is empty; name the calibration text file");
  const auto text = text::read_eval_text("text", cfg.calibration.path);
  if (text.empty())
    SCALPEL_INPUT_ERROR("config: 'calibration.path' {}: the calibration text is empty", cfg.calibration.path);
  const auto calib_ids = tok.encode(text);
  CalibrationWindows w;
  w.seqlen = cfg.calibration.seqlen > 0 ? cfg.calibration.seqlen : spec.max_positions;
  if (w.seqlen > spec.max_positions)
    SCALPEL_INPUT_ERROR("config: 'calibration.seqlen' {} exceeds the model's max_position_embeddings {}", w.seqlen,
                        spec.max_positions);
  const auto n = static_cast<std::int64_t>(calib_ids.size());
  const auto offsets = cfg.calibration.offsets.empty()
                           ? text::sample_window_offsets(n, w.seqlen, cfg.calibration.nsamples, cfg.calibration.seed,
                                                         cfg.calibration.path)
                           : text::read_window_offsets(cfg.calibration.offsets, n, w.seqlen);
  w.nseq = static_cast<std::int64_t>(offsets.size());
  w.source = cfg.calibration.offsets.empty()
                 ? cfg.calibration.path
                 : fmt::format("{} at the offsets in {} (calibration.nsamples and seed not used)",
                               cfg.calibration.path, cfg.calibration.offsets);
  w.ids.reserve(static_cast<std::size_t>(w.nseq * w.seqlen));
  for (auto o : offsets) w.ids.insert(w.ids.end(), calib_ids.begin() + o, calib_ids.begin() + o + w.seqlen);
  return w;
}

WindowRange calibration_shard(std::int64_t nseq, std::int64_t batch, int ranks, int index) {
  const std::int64_t nbatches = (nseq + batch - 1) / batch;
  if (nbatches < ranks)
    SCALPEL_INPUT_ERROR("config: {} calibration windows make {} batches of 'calibration.batch' {}, fewer than the {} "
                        "ranks of a data group: lower calibration.batch or use fewer ranks per stage",
                        nseq, nbatches, batch, ranks);
  const auto mine = dist::block_range(nbatches, ranks, index);
  return {mine.begin * batch, std::min(nseq, mine.end * batch)};
}

namespace {

// LLM Surgeon reads none of the layer-wise prune's keys (blocksize, dampening, true_sequential,
// propagation; sparsegpt, allocation, which it refuses) and of surgeon.structures only which of
// rows and columns are named, for the structured pattern alone: those keys take their defaults in
// its identity, so that changing them does not refuse a resume. The defaults keep the identity
// of the checkpoints made before.
void surgeon_identity_keys(Config& c) {
  const Config d;
  c.prune.blocksize = d.prune.blocksize;
  c.prune.dampening = d.prune.dampening;
  c.prune.true_sequential = d.prune.true_sequential;
  c.prune.propagation = d.prune.propagation;
  c.sparsegpt = d.sparsegpt;
  c.allocation = d.allocation;
  const auto named = [&](const char* s) {
    return std::find(c.surgeon.structures.begin(), c.surgeon.structures.end(), s) != c.surgeon.structures.end();
  };
  std::vector<std::string> canonical;
  for (const char* s : {"rows", "columns"})
    if (named(s)) canonical.emplace_back(s);
  c.surgeon.structures = c.prune.pattern == "structured" ? canonical : d.surgeon.structures;
}

}  // namespace

namespace {

// The configuration a checkpoint's identity covers.
Config identity_config(const Config& cfg, const std::vector<std::int32_t>& windows, std::int64_t widest_input) {
  // What decides the pruned weights: method, pattern, options, calibration windows. Not the
  // threads, output paths, logging, tokenizer mode (the windows' digest covers the ids) or
  // evaluation settings. `determinism` counts too (strict sums exactly, fast in floating point),
  // the grid does not: a run may resume at another rank count.
  Config c;
  c.prune = cfg.prune;
  c.surgeon = cfg.surgeon;
  c.surgeon.eval_shots.clear();
  c.allocation = cfg.allocation;
  c.allocation.traces.clear();  // where the estimate is cached, not what it is
  // The keys of the other rule decide nothing: their defaults (the identities of checkpoints made
  // before stay as they were for the settings that were left at their defaults).
  const Config::Allocation d;
  if (cfg.prune.allocation == "owl") {
    c.allocation.alpha = d.alpha;
    c.allocation.hutchinson_samples = d.hutchinson_samples;
    c.allocation.epsilon = d.epsilon;
    c.allocation.weighted = d.weighted;
    c.allocation.granularity = d.granularity;
  } else if (cfg.prune.allocation == "sensitivity") {
    c.allocation.owl_m = d.owl_m;
    c.allocation.owl_lambda = d.owl_lambda;
  }
  c.sparsegpt = cfg.sparsegpt;
  // A split width no factor reaches changes nothing: the identity of every factor made whole.
  if (cfg.prune.method != "sparsegpt" || widest_input < cfg.sparsegpt.split_width) c.sparsegpt.split_width = 0;
  c.calibration = cfg.calibration;
  c.calibration.path = io::digest_bytes(windows.data(), windows.size() * sizeof(std::int32_t));
  c.calibration.offsets.clear();
  c.determinism = cfg.determinism;
  if (cfg.prune.method == "surgeon") surgeon_identity_keys(c);
  return c;
}

std::string forward_key(DType forward) { return forward == DType::f32 ? "" : std::string(dtype_name(forward)); }

}  // namespace

std::string prune_config_hash(const Config& cfg, const std::vector<std::int32_t>& windows, DType forward,
                              std::int64_t widest_input) {
  return prune_identity_hash(identity_config(cfg, windows, widest_input), forward_key(forward));
}

nlohmann::json prune_config_settings(const Config& cfg, const std::vector<std::int32_t>& windows, DType forward,
                                     std::int64_t widest_input) {
  auto s = prune_identity_settings(identity_config(cfg, windows, widest_input), forward_key(forward));
  // The windows' digest stands for the text, the offsets and the tokenizer: named as such.
  if (s.contains("calibration.path")) {
    s["calibration windows (text, offsets, tokenizer)"] = s["calibration.path"];
    s.erase("calibration.path");
  }
  return s;
}

void check_nm_widths(const std::vector<model::LinearGroup>& groups, std::int64_t n, std::int64_t m) {
  for (const auto& g : groups)
    for (const auto& lin : g.linears)
      if (lin.in % m != 0)
        SCALPEL_INPUT_ERROR("config: 'prune.pattern' {}:{} does not divide the {} input columns of {}; exclude it "
                            "with prune.targets", n, m, lin.in, lin.name);
}

void check_layer_tensors(const io::HfCheckpoint& src, const model::ModelSpec& spec) {
  for (std::int64_t l = 0; l < spec.layers; ++l)
    for (const auto& [name, shape] : spec.layer_tensors(l)) {
      const auto& info = src.info(name);  // names the folder and the tensor when it is missing
      if (info.shape != shape)
        SCALPEL_INPUT_ERROR("{}: tensor '{}' has shape {}, but config.json implies {}", src.folder().string(), name,
                            nlohmann::json(info.shape).dump(), nlohmann::json(shape).dump());
      if (info.dtype != DType::f32 && info.dtype != DType::f16 && info.dtype != DType::bf16 && info.dtype != DType::f64)
        SCALPEL_INPUT_ERROR("{}: tensor '{}' has dtype {}, expected a float type", src.folder().string(), name,
                            dtype_name(info.dtype));
    }
}

void check_layer_tensors(const std::string& folder, const model::ModelSpec& spec) {
  check_layer_tensors(io::HfCheckpoint(folder), spec);
}

namespace {

// The plan's input for cfg's model at `world` ranks, the default rates.
PlanInput plan_input(const Config& cfg, int world, const PlanModel& pm) {
  PlanInput pin;
  pin.cfg = cfg;
  pin.world = world;
  pin.dtype_bytes = pm.dtype_bytes;
  pin.dtype_name = pm.dtype_name;
  pin.tensor_bytes = pm.tensor_bytes;
  return pin;
}

}  // namespace

nlohmann::json plan_of_job(const Config& cfg, int world) {
  const auto pm = load_plan_model(cfg.model);
  const auto pin = plan_input(cfg, world, pm);
  return cfg.prune.method == "surgeon" ? make_surgeon_plan(pm.spec, pin) : make_plan(pm.spec, pin);
}

nlohmann::json depth_plan_of_job(const Config& cfg, int world) {
  const auto pm = load_plan_model(cfg.model);
  return make_depth_plan(pm.spec, plan_input(cfg, world, pm));
}

DType forward_dtype(const Config& cfg, const std::string& device, DType stored) {
  const std::string& want = device == "cuda" ? cfg.cuda.forward_dtype : cfg.cpu.forward_dtype;
  if (want == "fp16") return DType::f16;
  if (want == "bf16") return DType::bf16;
  if (want == "auto" && low_precision(stored)) return stored;
  return DType::f32;
}

DType forward_dtype(const Config& cfg, const io::HfCheckpoint& src, const model::ModelSpec& spec) {
  return forward_dtype(cfg, cfg.device, src.info(spec.layer_prefix(0) + spec.linears().front().name + ".weight").dtype);
}

void check_layer_vectors(Backend& be, const model::LayerWeights& w, std::int64_t layer) {
  for (const auto& [name, t] : w.tensors) {
    if (t.dim() != 1) continue;
    Tensor f = t;
    if (t.dtype() != DType::f32 && t.dtype() != DType::f64) {
      f = be.empty(t.shape());
      be.convert(t, f);
    }
    if (!be.all_finite(f))
      SCALPEL_INPUT_ERROR("layer {} {}: the tensor holds NaN or infinite values (the model is damaged)", layer, name);
  }
}

Tensor to_forward(Backend& be, const Tensor& w, DType forward) {
  if (forward == DType::f32) return be.upload(w);
  if (w.dtype() == forward) return be.upload_exact(w);
  return as_dtype_on(be, w, forward);
}

Tensor to_storage(Backend& be, const Tensor& w, DType dtype) {
  const Tensor host = be.download(w);
  Tensor out = Tensor::empty(host.shape(), dtype);
  convert_from_f32(dtype, host.f32(), out.raw(), static_cast<std::size_t>(host.numel()));
  return out;
}

bool stop_requested(dist::Comm& world, const StopPoint& at, const std::string& config_hash, Metrics& metrics) {
  std::int64_t stop = stop_signal();
  world.allreduce_max(std::span<std::int64_t>(&stop, 1));
  if (stop == 0) return false;
  // A layer by its 0-based index, as every other message names it; shots and probes count from 1.
  const auto where = std::string_view(at.unit) == "layer"
                         ? fmt::format("layer {} ({}/{})", at.after, at.done, at.total)
                         : at.total > 0 ? fmt::format("{} {}/{}", at.unit, at.done, at.total)
                                        : fmt::format("{} {}", at.unit, at.done);  // a count not known ahead
  log::warn("signal {} received: stopping after {} ({}); rerun the same command to resume (exit code {})", stop,
            where, at.state, kExitInterrupted);
  metrics.write({{"event", "interrupted"},
                 {"signal", stop},
                 {fmt::format("after_{}", at.unit), at.after},
                 {"config_hash", config_hash}});
  return true;
}

EvalHeartbeat evaluation_heartbeat(Watchdog& watchdog) {
  return {[&watchdog] { watchdog.beat("evaluate", -1); },
          [&watchdog] { watchdog.suspend("waiting for the other ranks' share of the evaluation"); }};
}

std::function<bool(std::int64_t, std::int64_t)> evaluation_stop(dist::Comm& world, const std::string& config_hash,
                                                                Metrics& metrics) {
  return [&world, config_hash, &metrics](std::int64_t done, std::int64_t total) {
    return stop_requested(world, {"evaluation", done, total, done, "the results so far in the metrics"}, config_hash,
                          metrics);
  };
}

std::string evaluation_key(const Config& cfg) {
  // The log section changes no result: a rerun with --log-level debug or another progress
  // interval resumes too.
  Config keyed = cfg;
  keyed.log = {};
  return config_hash(keyed);
}

EvalResume evaluation_resume(const Config& cfg, dist::Comm& world, const nlohmann::json& kept,
                             std::function<void(const nlohmann::json&)> keep) {
  if (cfg.output.metrics.empty()) return {};
  const auto key = evaluation_key(cfg);
  std::int64_t skip = 0;
  if (world.is_root() && kept.is_object() && kept.value("config_hash", "") == key)
    skip = kept.value("done", std::int64_t{0});
  world.broadcast(std::as_writable_bytes(std::span(&skip, 1)), 0);
  const auto total = static_cast<std::int64_t>(cfg.eval.sets.size() + cfg.eval.tasks.size());
  return {std::clamp<std::int64_t>(skip, 0, total), [keep = std::move(keep), key, total](std::int64_t done) {
            keep(done >= total ? nlohmann::json() : nlohmann::json{{"config_hash", key}, {"done", done}});
          }};
}

EvalInputs check_run_end(dist::Comm& world, const Config& cfg, const model::ModelSpec& spec,
                         const text::Tokenizer& tok) {
  EvalInputs inputs;
  detail::on_root(world, [&] {
    inputs = read_eval_inputs(cfg, spec, tok);
    check_export_folder(cfg);
  });
  return inputs;
}

}  // namespace scalpel::app
