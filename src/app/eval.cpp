// `scalpel eval` and `scalpel tokenize`: the perplexity protocol of the SparseGPT and Wanda papers,
// spread over MPI ranks by window, and the token dump users check tokenization with.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "scalpel/app/commands.hpp"
#include "scalpel/app/progress.hpp"
#include "root_work.hpp"
#include "run_common.hpp"
#include "scalpel/backend/backend.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/core/log.hpp"
#include "scalpel/io/hf_checkpoint.hpp"
#include "scalpel/io/manifest.hpp"
#include "scalpel/text/eval_text.hpp"
#include "scalpel/text/tokenizer.hpp"

namespace scalpel::app {

EvalResult evaluate_ids(model::Model& m, const std::vector<std::int32_t>& ids, std::int64_t seqlen,
                        std::int64_t batch, std::int64_t max_windows, dist::Comm& comm, const std::string& name,
                        double progress_seconds, const EvalHeartbeat& heartbeat) {
  Timer timer;
  EvalResult r;
  r.name = name;
  r.seqlen = seqlen;
  r.tokens = static_cast<std::int64_t>(ids.size());
  std::int64_t nwin = r.tokens / seqlen;
  if (nwin == 0)
    SCALPEL_INPUT_ERROR("{}: the text has {} tokens, fewer than one window of seqlen {}", name, r.tokens, seqlen);
  if (max_windows > 0) nwin = std::min(nwin, max_windows);
  r.windows = nwin;

  // Whole batches per rank, as the tasks split theirs: a batch (one forward pass) is then made of
  // the same windows at any rank count, and a window's bits cannot depend on its neighbours'
  // (OpenBLAS computes a row with bits that depend on its place in the GEMM).
  const auto batches = dist::block_range((nwin + batch - 1) / batch, comm.size(), comm.rank());
  const dist::Range mine{std::min(nwin, batches.begin * batch), std::min(nwin, batches.end * batch)};
  std::vector<double> sums(static_cast<std::size_t>(mine.end - mine.begin), 0.0);
  std::vector<double> nll;
  Progress progress(fmt::format("eval {}", name), mine.end - mine.begin,
                    comm.size() > 1 ? "windows of rank 0" : "windows", progress_seconds, comm.is_root());
  for (std::int64_t w = mine.begin; w < mine.end; w += batch) {
    const std::int64_t b = std::min(batch, mine.end - w);
    nll.assign(static_cast<std::size_t>(b * (seqlen - 1)), 0.0);
    m.window_nll(std::span(ids).subspan(static_cast<std::size_t>(w * seqlen), static_cast<std::size_t>(b * seqlen)),
                 b, seqlen, nll);
    for (std::int64_t i = 0; i < b; ++i) {
      double s = 0;  // summed in position order: the same on any rank count
      for (std::int64_t t = 0; t < seqlen - 1; ++t) s += nll[static_cast<std::size_t>(i * (seqlen - 1) + t)];
      if (!std::isfinite(s))
        SCALPEL_RUNTIME_ERROR("{}: window {} has a non-finite NLL ({}): the weights hold a NaN or an infinity (a damaged checkpoint?) or the activations overflow", name,
                              w + i, s);
      sums[static_cast<std::size_t>(w + i - mine.begin)] = s;
    }
    progress.update(w + b - mine.begin, (w + b - mine.begin) * seqlen);
    if (heartbeat.beat) heartbeat.beat();
  }
  if (heartbeat.wait && comm.size() > 1) heartbeat.wait();
  // Window order, not arrival order: the total is bitwise the same for any number of ranks.
  const auto all = comm.gatherv(sums, 0);
  double total = 0;
  if (comm.is_root())
    for (double s : all) total += s;
  comm.broadcast(std::as_writable_bytes(std::span(&total, 1)), 0);
  if (heartbeat.beat) heartbeat.beat();  // the countdown again, for what comes before the next set's batches
  r.mean_nll = total / static_cast<double>(nwin * (seqlen - 1));
  r.ppl = std::exp(r.mean_nll);
  r.seconds = timer.seconds();
  return r;
}

namespace {

// null for NaN (a metric that does not apply, or the standard error of a single item).
nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); }

std::string with_stderr(double v, double se) {
  return std::isfinite(se) ? fmt::format("{:.4f} (± {:.4f})", v, se) : fmt::format("{:.4f} (± n/a)", v);
}

void report_task(const TaskResult& r, const text::TaskPreset& preset, const Config& cfg, dist::Comm& comm,
                 Metrics& metrics, const nlohmann::json& extra) {
  const auto& s = r.scores;
  const std::string scores =
      preset.output == text::TaskOutput::loglikelihood
          ? fmt::format("ppl {} acc {}", with_stderr(s.ppl, s.ppl_stderr), with_stderr(s.acc, s.acc_stderr))
          : fmt::format("acc {} acc_norm {}", with_stderr(s.acc, s.acc_stderr),
                        with_stderr(s.acc_norm, s.acc_norm_stderr));
  fmt::print("{}: {}; {} items; {:.1f} s\n", r.name, scores, s.items, r.seconds);
  std::fflush(stdout);
  nlohmann::json rec{{"event", "task"}, {"task", r.name}, {"preset", r.preset}, {"path", r.path},
                     {"model", cfg.model}, {"items", s.items}, {"requests", r.requests}, {"tokens", r.tokens},
                     {"acc", s.acc}, {"acc_stderr", number_or_null(s.acc_stderr)},
                     {"acc_norm", number_or_null(s.acc_norm)}, {"acc_norm_stderr", number_or_null(s.acc_norm_stderr)},
                     {"ppl", number_or_null(s.ppl)}, {"ppl_stderr", number_or_null(s.ppl_stderr)},
                     {"reported", preset.reported}, {"add_bos", cfg.eval.add_bos},
                     {"tokenizer_mode", cfg.tokenizer.mode}, {"seconds", r.seconds}, {"ranks", comm.size()}};
  rec.update(extra);
  metrics.write(rec);
}

// The perplexity windows' length: eval.seqlen, or the model's context when 0.
std::int64_t eval_seqlen(const Config& cfg, const model::ModelSpec& spec) {
  if (cfg.eval.seqlen > spec.max_positions)
    SCALPEL_INPUT_ERROR("config: 'eval.seqlen' {} exceeds the model's max_position_embeddings {}", cfg.eval.seqlen,
                        spec.max_positions);
  return cfg.eval.seqlen > 0 ? cfg.eval.seqlen : spec.max_positions;
}

// The harness's context is the model's (max_position_embeddings), whatever eval.seqlen says;
// inputs longer than it lose tokens on the left.
TaskOptions task_options(const Config& cfg, const model::ModelSpec& spec) {
  return {cfg.eval.batch, cfg.eval.max_items, cfg.eval.add_bos, spec.max_positions, cfg.log.progress_seconds};
}

}  // namespace

EvalInputs read_eval_inputs(const Config& cfg, const model::ModelSpec& spec, const text::Tokenizer& tok) {
  const std::int64_t seqlen = eval_seqlen(cfg, spec);
  EvalInputs in;
  for (const auto& set : cfg.eval.sets) {
    auto ids = tok.encode(text::load_eval_text(set.preset, set.path));
    const auto n = static_cast<std::int64_t>(ids.size());
    if (n < seqlen)
      SCALPEL_INPUT_ERROR("{}: eval set '{}': the text has {} tokens, fewer than one window of eval.seqlen {}",
                          set.path, set.name, n, seqlen);
    const auto limit = text::preset_token_limit(set.preset, seqlen);  // c4: the first 256 windows only
    if (limit >= 0 && n > limit) ids.resize(static_cast<std::size_t>(limit));
    in.sets.push_back(std::move(ids));
  }
  for (const auto& task : cfg.eval.tasks) in.tasks.push_back(encode_task(tok, task, task_options(cfg, spec)));
  return in;
}

namespace {

// The line and the metrics record of one evaluation set (rank 0).
void report_set(const EvalResult& r, const EvalSet& set, const Config& cfg, dist::Comm& comm, Metrics& metrics,
                const nlohmann::json& extra) {
  fmt::print("{}: ppl {:.4f} (mean nll {:.6f}; {} windows x {} tokens of {}; {:.1f} s, {:.0f} tok/s)\n", r.name,
             r.ppl, r.mean_nll, r.windows, r.seqlen, r.tokens, r.seconds,
             r.windows * r.seqlen / std::max(r.seconds, 1e-9));
  std::fflush(stdout);
  nlohmann::json rec{{"event", "eval"}, {"set", r.name}, {"preset", set.preset}, {"path", set.path},
                     {"model", cfg.model}, {"ppl", r.ppl}, {"mean_nll", r.mean_nll}, {"windows", r.windows},
                     {"seqlen", r.seqlen}, {"tokens", r.tokens}, {"seconds", r.seconds},
                     {"tokenizer_mode", cfg.tokenizer.mode}, {"ranks", comm.size()}};
  rec.update(extra);
  metrics.write(rec);
}

}  // namespace

bool evaluate_config(model::Model& m, const EvalInputs& inputs, const Config& cfg, dist::Comm& comm,
                     Metrics& metrics, const nlohmann::json& extra, const EvalHeartbeat& heartbeat,
                     const std::function<bool(std::int64_t, std::int64_t)>& stop, const EvalResume& resume) {
  const auto& spec = m.spec();
  const std::int64_t seqlen = eval_seqlen(cfg, spec);
  const auto nsets = cfg.eval.sets.size(), ntasks = cfg.eval.tasks.size();
  SCALPEL_CHECK(!comm.is_root() || (inputs.sets.size() == nsets && inputs.tasks.size() >= ntasks),
                "evaluate_config: inputs for {} sets and {} tasks, the config has {} and {}", inputs.sets.size(),
                inputs.tasks.size(), nsets, ntasks);
  const auto total = static_cast<std::int64_t>(nsets + ntasks);
  std::int64_t done = 0;
  const auto stopped = [&] {
    ++done;
    if (resume.done && comm.is_root()) resume.done(done);
    return stop && done < total && stop(done, total);
  };
  // Evaluated before a stop: said once, not repeated (their records are in the metrics).
  const auto skipped = [&](const std::string& name) {
    if (done >= resume.skip) return false;
    if (comm.is_root())
      log::info("{}: evaluated by an earlier run of this checkpoint before it stopped (its record is in the "
                "metrics); not repeated", name);
    ++done;
    return true;
  };
  for (std::size_t i = 0; i < nsets; ++i) {
    const auto& set = cfg.eval.sets[i];
    if (skipped(set.name)) continue;
    std::vector<std::int32_t> ids;
    if (comm.is_root()) ids = inputs.sets[i];
    detail::broadcast_vector(ids, comm);  // already cut to the preset's limit by read_eval_inputs
    const auto r = evaluate_ids(m, ids, seqlen, cfg.eval.batch, cfg.eval.max_windows, comm, set.name,
                                cfg.log.progress_seconds, heartbeat);
    if (comm.is_root()) report_set(r, set, cfg, comm, metrics, extra);
    if (stopped()) return false;
  }
  const TaskOptions opt = task_options(cfg, spec);
  for (std::size_t i = 0; i < ntasks; ++i) {
    const auto& task = cfg.eval.tasks[i];
    if (skipped(task.name)) continue;
    const auto r = evaluate_encoded_task(m, comm.is_root() ? &inputs.tasks[i] : nullptr, task, opt, comm, heartbeat);
    if (comm.is_root()) report_task(r, text::task_preset(task.preset), cfg, comm, metrics, extra);
    if (stopped()) return false;
  }
  return true;
}

int run_eval(const Config& cfg, dist::Comm& comm, const NodePlace& place) {
  const int threads = threads_per_rank(cfg.threads, place.local_ranks);
  struct Opened {
    std::unique_ptr<Backend> backend;
    std::shared_ptr<const io::HfCheckpoint> ckpt;
    model::ModelSpec spec;
    DType fwd;
  };
  // What every rank checks alike (an error is printed once).
  const auto [backend, ckpt, spec, fwd] = detail::on_every_rank(comm, [&] {
    auto src = open_model(cfg);
    if (cfg.eval.sets.empty() && cfg.eval.tasks.empty())
      SCALPEL_INPUT_ERROR("config: 'eval.sets' and 'eval.tasks' are empty: nothing to evaluate (e.g. --text "
                          "wikitext2:FILE or --task piqa:FILE)");
    auto be = make_rank_backend(cfg, place);
    auto sp = model_spec(*src);
    const auto dt = forward_dtype(cfg, *src, sp);
    return Opened{std::move(be), std::move(src), std::move(sp), dt};
  });
  // The texts and task files, read and encoded, before anything is written or run (a missing file
  // left an empty metrics file; a text too short or a request that cannot be encoded stopped the
  // run after the sets before it, their records written).
  EvalInputs inputs;
  detail::on_root(comm, [&] { inputs = read_eval_inputs(cfg, spec, *make_tokenizer(cfg)); });
  log::info("model {} ({}, {} layers, hidden {}, {:.2f}M params), {} rank(s) x {} thread(s), backend {} ({} forward)",
            cfg.model, spec.model_type, spec.layers, spec.hidden, spec.total_params() / 1e6, comm.size(), threads,
            backend->name(), dtype_name(fwd));
  model::Model m(spec, checkpoint_source(ckpt), *backend,
                 static_cast<std::size_t>(cfg.weight_cache_mb) << 20);
  m.set_forward_dtype(fwd);
  Metrics metrics;
  if (comm.is_root() && !cfg.output.metrics.empty())
    metrics = Metrics((std::filesystem::path(cfg.output.dir) / cfg.output.metrics).string());
  evaluate_config(m, inputs, cfg, comm, metrics,
                  {{"threads", threads}, {"config_hash", config_hash(cfg)}, {"forward_dtype", dtype_name(fwd)}});
  return kExitOk;
}

namespace {

// The files `tokenize --output` writes (the ids, their .json, and the .tmp each is written to
// first) must not be the input text or a folder: refused before anything is written.
void check_tokenize_output(const std::filesystem::path& out, const std::string& input) {
  const std::string o = out.string();
  if (o.empty()) SCALPEL_INPUT_ERROR("--output: the path is empty; name the file to write");
  for (const auto& f : {o, o + ".tmp", o + ".json", o + ".json.tmp"}) {
    std::error_code ec;
    if (std::filesystem::is_directory(f, ec))
      SCALPEL_INPUT_ERROR("--output {}: {} is a folder; name the file to write", o, f);
    if (std::filesystem::equivalent(f, input, ec))
      SCALPEL_INPUT_ERROR("--output {}: writing {} would overwrite the --input text {}; name another file", o, f,
                          input);
  }
}

}  // namespace

int run_tokenize(const std::string& model, const std::string& input, const std::string& preset,
                 const std::string& output, const std::string& mode, dist::Comm& comm) {
  if (!comm.is_root()) return kExitOk;
  const std::filesystem::path out(output);
  check_tokenize_output(out, input);
  auto tok = text::Tokenizer::from_folder(model, tokenizer_mode(mode));
  const auto ids = tok->encode(text::read_eval_text(preset, input));
  // int32 little-endian, as the x86/ARM hosts store them; each file written whole, then renamed.
  io::write_file_atomic(out, std::string_view(reinterpret_cast<const char*>(ids.data()), ids.size() * 4), "tokenize");
  const nlohmann::json meta{{"count", ids.size()}, {"dtype", "int32-le"}, {"tokenizer", tok->kind()},
                            {"model", model}, {"input", input}, {"preset", preset}};
  io::write_file_atomic(out.string() + ".json", meta.dump(2) + "\n", "tokenize");
  fmt::print("{} tokens -> {} (int32 little-endian; count in {}.json)\n", ids.size(), output, output);
  return kExitOk;
}

}  // namespace scalpel::app
