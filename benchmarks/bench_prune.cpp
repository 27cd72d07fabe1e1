// One layer's SparseGPT prune split into its phases (statistics = syrk, factorisation = the
// inverse's upper Cholesky factor, OBS sweep = in-block BLAS-2 + lazy GEMMs), each timed against the
// OpenBLAS ceiling measured in the same run at the same sizes: ssyrk for the Hessian, spotrf for
// the factorisation, and the sweep's own lazy-update sgemm shapes for the sweep. Synthetic layers
// of real widths and the real linears of an opt-mini layer. Writes JSON (medians over repeats).
#include <cblas.h>
#include <lapacke.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "bench_common.hpp"
#include "scalpel/app/commands.hpp"
#include "scalpel/backend/profiling.hpp"
#include "scalpel/core/timer.hpp"
#include "scalpel/io/hf_checkpoint.hpp"
#include "scalpel/prune/pruner.hpp"
#include "scalpel/text/tokenizer.hpp"

namespace fs = std::filesystem;
using namespace scalpel;
using nlohmann::json;

namespace {

using bench::median;
using bench::median_seconds;

// Uniform values in [-1, 1) from a 64-bit LCG: synthetic data of 50M entries in well under a second.
void fill_random(float* p, std::int64_t n, std::uint64_t seed) {
  std::uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (std::int64_t i = 0; i < n; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    p[i] = static_cast<float>(static_cast<double>(s >> 40) / static_cast<double>(1ull << 23) - 1.0);
  }
}

// Ceilings: the bare library calls at the sizes the phases use.
double time_ssyrk(const Tensor& x, std::int64_t batch, int repeats) {
  const auto tokens = x.size(0), d = x.size(1);
  std::vector<float> h(static_cast<std::size_t>(d * d));
  return median_seconds(repeats, [&] {
    for (std::int64_t t0 = 0; t0 < tokens; t0 += batch) {
      const auto b = std::min(batch, tokens - t0);
      cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, static_cast<int>(d), static_cast<int>(b), 1.0f,
                  x.f32() + t0 * d, static_cast<int>(d), t0 ? 1.0f : 0.0f, h.data(), static_cast<int>(d));
    }
  });
}

double time_spotrf(const Tensor& spd, int repeats) {
  const auto d = spd.size(0);
  std::vector<double> t;
  std::vector<float> a(static_cast<std::size_t>(d * d));
  for (int r = 0; r < repeats; ++r) {
    std::copy(spd.f32(), spd.f32() + d * d, a.begin());
    Timer tm;
    LAPACKE_spotrf_work(LAPACK_COL_MAJOR, 'L', static_cast<lapack_int>(d), a.data(), static_cast<lapack_int>(d));
    t.push_back(tm.seconds());
  }
  return median(t);
}

// The reference's route with LAPACK as it comes: spotrf, spotri, spotrf (upper).
double time_lapack_route(const Tensor& spd, int repeats) {
  const auto d = spd.size(0);
  const auto n = static_cast<lapack_int>(d);
  std::vector<double> t;
  std::vector<float> a(static_cast<std::size_t>(d * d));
  for (int r = 0; r < repeats; ++r) {
    std::copy(spd.f32(), spd.f32() + d * d, a.begin());
    Timer tm;
    LAPACKE_spotrf_work(LAPACK_COL_MAJOR, 'L', n, a.data(), n);
    LAPACKE_spotri_work(LAPACK_COL_MAJOR, 'L', n, a.data(), n);
    for (std::int64_t i = 0; i < d; ++i)  // potri fills one triangle; potrf reads the other
      for (std::int64_t j = i + 1; j < d; ++j) a[static_cast<std::size_t>(j * d + i)] = a[static_cast<std::size_t>(i * d + j)];
    LAPACKE_spotrf_work(LAPACK_COL_MAJOR, 'U', n, a.data(), n);
    t.push_back(tm.seconds());
  }
  return median(t);
}

// The sweep's lazy updates as bare sgemm calls (same shapes, strides and layout).
double time_lazy_sgemms(std::int64_t rows, std::int64_t d, std::int64_t bs, int repeats, double* flops) {
  std::vector<float> w(static_cast<std::size_t>(rows * d), 0.5f), u(static_cast<std::size_t>(d * d), 0.001f),
      e(static_cast<std::size_t>(rows * bs), 0.25f);
  *flops = 0;
  for (std::int64_t c0 = 0; c0 < d; c0 += bs) {
    const auto c1 = std::min(d, c0 + bs);
    *flops += 2.0 * rows * (c1 - c0) * (d - c1);
  }
  return median_seconds(repeats, [&] {
    for (std::int64_t c0 = 0; c0 < d; c0 += bs) {
      const auto c1 = std::min(d, c0 + bs), width = c1 - c0;
      if (c1 == d) break;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(rows), static_cast<int>(d - c1),
                  static_cast<int>(width), -1.0f, e.data(), static_cast<int>(width), u.data() + c0 * d + c1,
                  static_cast<int>(d), 1.0f, w.data() + c1, static_cast<int>(d));
    }
  });
}

json phase(double seconds, double flops, double ceiling_seconds) {
  return {{"seconds", seconds},
          {"gflops", flops / seconds / 1e9},
          {"ceiling_seconds", ceiling_seconds},
          {"ceiling_gflops", flops / ceiling_seconds / 1e9},
          {"efficiency", ceiling_seconds / seconds}};
}

json op_breakdown(const ProfilingBackend& prof) {
  json ops;
  for (const auto& [name, s] : prof.stats())
    ops[name] = {{"calls", s.calls}, {"seconds", s.seconds}, {"gflops", s.flops > 0 ? s.flops / s.seconds / 1e9 : 0.0}};
  return ops;
}

struct Setup {
  int repeats = 3;
  std::int64_t batch = 4096;  // tokens per add_batch (one syrk)
  std::int64_t blocksize = 128;
  prune::Pattern pattern = prune::Pattern::unstructured(0.5);
  bool error = false;
};

// Statistics: the Hessian only (SparseGPT), in batches of s.batch tokens; `stats` keeps the last
// run's. Returns the median seconds.
double time_stats(ProfilingBackend& prof, const Tensor& x, std::int64_t seqlen, const Setup& s,
                  const std::string& name, std::unique_ptr<prune::InputStats>& stats) {
  const auto d = x.size(1), tokens = x.size(0);
  return median_seconds(s.repeats, [&] {
    stats = std::make_unique<prune::InputStats>(prof, d, prune::StatsKinds{true, false}, name);
    for (std::int64_t t0 = 0; t0 < tokens; t0 += s.batch) {
      const auto b = std::min(s.batch, tokens - t0);
      stats->add_batch(x.slice_rows(t0, t0 + b), std::max<std::int64_t>(1, b / seqlen));
    }
  });
}

struct Factorisation {
  prune::HinvFactor f;
  Tensor wf;                // the weight with its dead columns zeroed
  double seconds = 0;       // sparsegpt_factor, median
  double ceiling = 0;       // its FLOPs at spotrf's rate
  double potrf = 0;         // spotrf alone
  double lapack_route = 0;  // spotrf, spotri, spotrf
  json ops;
};

// Factorisation of the Hessian (and w's dead columns zeroed), with its ceilings.
Factorisation time_factorisation(Backend& cpu, ProfilingBackend& prof, const Tensor& w, const Tensor& hessian,
                                 const Setup& s, const std::string& name) {
  Factorisation r;
  prof.reset();
  r.wf = w.clone();
  r.seconds =
      median_seconds(s.repeats, [&] { r.f = prune::sparsegpt_factor(prof, hessian, &r.wf, 0.01, 10, name); });
  r.ops = op_breakdown(prof);
  Tensor damped = hessian.clone();
  cpu.hessian_prepare(damped, nullptr, 0.01f);
  r.potrf = time_spotrf(damped, s.repeats);
  // The ceiling for the whole factorisation: its FLOPs at spotrf's rate.
  r.ceiling = r.potrf * 2.0;
  // And the reference's route (4n³/3 FLOPs) through LAPACK, for comparison.
  r.lapack_route = time_lapack_route(damped, s.repeats);
  return r;
}

prune::SweepOptions sweep_options(const Setup& s) {
  prune::SweepOptions so;
  so.pattern = s.pattern;
  so.blocksize = s.blocksize;
  return so;
}

struct Sweep {
  double seconds = 0, ceiling = 0, lazy_flops = 0, inblock_flops = 0;
  std::int64_t blocksize = 0;
  json ops;
};

// Sweep (fresh copy of the dead-zeroed weight each repeat; the copy is outside the timing).
Sweep time_sweep(Backend& cpu, const Tensor& wf, const Tensor& hinv, const Setup& s) {
  const auto rows = wf.size(0), d = wf.size(1);
  const prune::SweepOptions so = sweep_options(s);
  Sweep r;
  r.blocksize = prune::sparsegpt_blocksize(s.blocksize, s.pattern);
  std::vector<double> ts;
  ProfilingBackend prof_sweep(cpu);
  for (int rep = 0; rep < s.repeats; ++rep) {
    Tensor ws = wf.clone();
    Tensor mask = cpu.empty({rows, d}, DType::u8), losses = cpu.zeros({rows}, DType::f64);
    prof_sweep.reset();
    Timer tm;
    prune::sparsegpt_sweep(prof_sweep, ws, hinv, so, mask, losses);
    ts.push_back(tm.seconds());
  }
  r.seconds = median(ts);
  r.ceiling = time_lazy_sgemms(rows, d, r.blocksize, s.repeats, &r.lazy_flops);
  r.inblock_flops = 1.0 * rows * d * (r.blocksize - 1);
  r.ops = op_breakdown(prof_sweep);
  return r;
}

// The reconstruction error of the pruned weight (pruned here, untimed), timed.
json time_error(Backend& cpu, const Tensor& w, const Factorisation& fa, const prune::InputStats& stats,
                const Setup& s) {
  const auto rows = w.size(0), d = w.size(1);
  const double dd = static_cast<double>(d);
  Tensor ws = fa.wf.clone();
  Tensor mask = cpu.empty({rows, d}, DType::u8), losses = cpu.zeros({rows}, DType::f64);
  prune::sparsegpt_sweep(cpu, ws, fa.f.hinv, sweep_options(s), mask, losses);
  prune::ReconstructionError e;
  const double t_err =
      median_seconds(s.repeats, [&] { e = prune::reconstruction_error(cpu, w, ws, stats.hessian(), stats.nsamples()); });
  return {{"seconds", t_err}, {"gflops", 4.0 * rows * dd * dd / t_err / 1e9}, {"relative", e.rel}};
}

// Times the three phases (and optionally the error) of SparseGPT on weight w [rows, d] with
// calibration tokens x [tokens, d] (sequences of `seqlen` tokens), plus the ceilings.
json bench_linear(Backend& cpu, const Tensor& w, const Tensor& x, std::int64_t seqlen, const Setup& s,
                  const std::string& name) {
  const auto rows = w.size(0), d = w.size(1), tokens = x.size(0);
  ProfilingBackend prof(cpu);
  std::cerr << "bench_prune: " << name << " (" << rows << " x " << d << ", " << tokens << " tokens)\n";

  std::unique_ptr<prune::InputStats> stats;
  const double t_stats = time_stats(prof, x, seqlen, s, name, stats);
  const json stats_ops = op_breakdown(prof);
  const double syrk_flops = 1.0 * tokens * d * (d + 1);
  const double c_stats = time_ssyrk(x, s.batch, s.repeats);

  const Factorisation fa = time_factorisation(cpu, prof, w, stats->hessian(), s, name);
  const double dd = static_cast<double>(d);
  const double fact_flops = 2.0 * dd * dd * dd / 3;  // potrf n³/3 + trtri n³/3

  const Sweep sw = time_sweep(cpu, fa.wf, fa.f.hinv, s);

  json j = {{"name", name},
            {"rows", rows},
            {"cols", d},
            {"tokens", tokens},
            {"tokens_per_syrk", std::min(s.batch, tokens)},
            {"pattern", s.pattern.str()},
            {"blocksize", sw.blocksize},
            {"stats", phase(t_stats, syrk_flops, c_stats)},
            {"factorisation", phase(fa.seconds, fact_flops, fa.ceiling)},
            {"sweep", phase(sw.seconds, sw.lazy_flops + sw.inblock_flops, sw.ceiling)},
            {"stats_ops", stats_ops},
            {"factorisation_ops", fa.ops},
            {"sweep_ops", sw.ops},
            {"spotrf_gflops", dd * dd * dd / 3 / fa.potrf / 1e9},
            {"lapack_route_seconds", fa.lapack_route},
            {"damping_tries", fa.f.tries}};
  j["factorisation"]["speedup_vs_lapack_route"] = fa.lapack_route / fa.seconds;
  // The sweep's ceiling covers only its BLAS-3 FLOPs (the in-block part has no GEMM to compare).
  j["sweep"]["ceiling_gflops"] = sw.lazy_flops / sw.ceiling / 1e9;
  j["sweep"]["lazy_flops"] = sw.lazy_flops;
  j["sweep"]["inblock_flops"] = sw.inblock_flops;
  if (s.error) j["error"] = time_error(cpu, w, fa, *stats, s);
  std::cerr << "  stats " << j["stats"]["efficiency"] << ", factorisation " << j["factorisation"]["efficiency"]
            << " (x" << j["factorisation"]["speedup_vs_lapack_route"] << " vs spotrf+spotri+spotrf)"
            << ", sweep " << j["sweep"]["efficiency"] << " of the ceiling\n";
  return j;
}

std::vector<std::int32_t> calibration_ids(const fs::path& model_dir, const fs::path& calib, std::int64_t windows,
                                          std::int64_t seqlen) {
  std::ifstream f(calib, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + calib.string());
  std::stringstream ss;
  ss << f.rdbuf();
  const auto ids = text::Tokenizer::from_folder(model_dir)->encode(ss.str());
  const auto n = static_cast<std::int64_t>(ids.size());
  if (n < seqlen + 1) throw std::runtime_error("calibration text too short");
  std::vector<std::int32_t> out;
  for (std::int64_t w = 0; w < windows; ++w) {
    const std::int64_t off = w * (n - seqlen) / windows;
    out.insert(out.end(), ids.begin() + off, ids.begin() + off + seqlen);
  }
  return out;
}

// The command line; the synthetic layers' sizes and the real layer's model, text and windows.
struct Options {
  std::vector<std::int64_t> cols{4096};
  std::int64_t rows = 4096, tokens = 4096, seqlen = 2048, windows = 16, calib_seqlen = 128;
  std::string model = fs::exists("../shared/models/opt-mini") ? "../shared/models/opt-mini" : "models/opt-mini";
  std::string calib = fs::exists("../shared/data/corpus/calib.txt") ? "../shared/data/corpus/calib.txt"
                                                                     : "data/corpus/calib.txt";
  std::string pattern = "unstructured", out;
  double sparsity = 0.5;
  std::int64_t layer = 0;
  int threads = 0;
  bool real = true, synthetic = true;
  Setup s;
};

void add_options(CLI::App& cli, Options& o) {
  cli.add_option("--cols", o.cols, "input widths of the synthetic layers (e.g. 4096 5120 12288)")
      ->check(CLI::PositiveNumber);
  cli.add_option("--rows", o.rows, "output rows of the synthetic layers")->check(CLI::PositiveNumber);
  cli.add_option("--tokens", o.tokens, "calibration tokens of the synthetic layers")->check(CLI::PositiveNumber);
  cli.add_option("--seqlen", o.seqlen, "tokens per sequence (the Hessian's n counts sequences)")
      ->check(CLI::PositiveNumber);
  cli.add_option("--batch", o.s.batch, "tokens per statistics batch (one syrk each)")->check(CLI::PositiveNumber);
  cli.add_option("--blocksize", o.s.blocksize, "SparseGPT block width")->check(CLI::PositiveNumber);
  cli.add_option("--pattern", o.pattern, "unstructured or N:M");
  cli.add_option("--sparsity", o.sparsity, "unstructured sparsity")->check(CLI::Range(0.0, 1.0));
  cli.add_option("--repeats", o.s.repeats, "timed runs per phase (median reported)")->check(CLI::PositiveNumber);
  cli.add_option("--threads", o.threads, "BLAS/OpenMP threads (0: all cores)")->check(CLI::NonNegativeNumber);
  cli.add_flag("--error,!--no-error", o.s.error, "also time the reconstruction error (4 rows d² FLOPs)");
  cli.add_option("--model", o.model, "Hugging Face folder of the real layer (opt-mini)");
  cli.add_option("--calib", o.calib, "calibration text for the real layer");
  cli.add_option("--layer", o.layer, "decoder layer of the real model")->check(CLI::NonNegativeNumber);
  cli.add_option("--windows", o.windows, "calibration windows for the real layer")->check(CLI::PositiveNumber);
  cli.add_flag("--real,!--no-real", o.real, "benchmark the real layer");
  cli.add_flag("--synthetic,!--no-synthetic", o.synthetic, "benchmark the synthetic layers");
  cli.add_option("--out", o.out, "JSON output file (default: stdout only)");
}

// The synthetic layers: random weights and tokens of each width in o.cols.
json bench_synthetic(Backend& cpu, const Options& o) {
  json synth = json::array();
  for (const auto d : o.cols) {
    Tensor x = Tensor::empty({o.tokens, d}), w = Tensor::empty({o.rows, d});
    fill_random(x.f32(), x.numel(), 1 + static_cast<std::uint64_t>(d));
    fill_random(w.f32(), w.numel(), 2 + static_cast<std::uint64_t>(d));
    synth.push_back(
        bench_linear(cpu, w, x, o.seqlen, o.s, "synthetic " + std::to_string(o.rows) + "x" + std::to_string(d)));
  }
  return synth;
}

// Every linear of the real model's decoder layer o.layer, on the inputs the calibration windows
// give it.
json bench_real(Backend& cpu, const Options& o) {
  const std::int64_t windows = o.windows, calib_seqlen = o.calib_seqlen, layer = o.layer;
  auto ckpt = std::make_shared<const io::HfCheckpoint>(o.model);
  const auto spec = model::ModelSpec::from_config(ckpt->config(), o.model);
  model::Model m(spec, app::checkpoint_source(ckpt), cpu);
  const auto ids = calibration_ids(o.model, o.calib, windows, calib_seqlen);
  Tensor x = m.embed(ids, windows, calib_seqlen);
  for (std::int64_t l = 0; l < layer; ++l) m.layer_forward(l, x, windows, calib_seqlen);
  std::map<int, Tensor> inputs;
  std::map<std::string, int> group_of;
  model::LinearTap tap = [&](int g, const std::vector<std::string>& names, const Tensor& in) {
    inputs[g] = in.clone();
    for (const auto& n : names) group_of[n] = g;
  };
  // The forward with taps, timed: what one calibration pass through the layer costs.
  Timer tf;
  m.layer_forward(layer, x, windows, calib_seqlen, &tap);
  const double t_forward = tf.seconds();
  const auto weights = m.layer_weights(layer);
  json lin = json::array();
  Setup sr = o.s;
  sr.batch = windows * calib_seqlen;
  for (const auto& l : spec.linears()) {
    const Tensor& w = weights->at(l.name + ".weight");
    lin.push_back(bench_linear(cpu, w, inputs.at(group_of.at(l.name)), calib_seqlen, sr,
                               "layer " + std::to_string(layer) + " " + l.name));
  }
  return {{"model", o.model}, {"layer", layer}, {"windows", windows}, {"seqlen", calib_seqlen},
          {"forward_seconds", t_forward}, {"linears", lin}};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"scalpel prune benchmark: SparseGPT phases against the OpenBLAS ceilings at the same sizes"};
  Options o;
  add_options(cli, o);
  CLI11_PARSE(cli, argc, argv);
  // A --model given is read (a missing one is an error); the default is skipped when absent.
  const bool model_given = cli.get_option("--model")->count() > 0;
  return bench::guarded("bench_prune", [&] {
    o.s.pattern = prune::Pattern::parse(o.pattern, o.sparsity, "--pattern");
    const int nthreads = app::threads_per_rank(o.threads, 1);
    auto cpu = make_cpu_backend(nthreads);
    json j = {{"benchmark", "prune"}, {"threads", nthreads}, {"repeats", o.s.repeats}, {"method", "sparsegpt"}};
    if (o.synthetic) j["synthetic"] = bench_synthetic(*cpu, o);
    if (o.real && (model_given || fs::exists(fs::path(o.model) / "config.json"))) j["real"] = bench_real(*cpu, o);
    else if (o.real) j["real"] = "skipped: no model at " + o.model + " (give --model)";
    j["provenance"] = bench::provenance(argc, argv);
    bench::emit_json(j, o.out);
    return 0;
  });
}
