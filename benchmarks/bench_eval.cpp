// Eval throughput and the forward pass's GEMM efficiency. The forward runs through a
// ProfilingBackend that records every GEMM shape; the same shapes are then timed as bare OpenBLAS
// sgemm calls in the same run, so the efficiency is measured against this machine's ceiling at
// those sizes, not against a number from elsewhere. Writes JSON (medians over repeats).
#include <cblas.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <vector>

#include "bench_common.hpp"
#include "scalpel/app/commands.hpp"
#include "scalpel/backend/profiling.hpp"
#include "scalpel/core/timer.hpp"
#include "scalpel/io/hf_checkpoint.hpp"
#include "scalpel/text/eval_text.hpp"
#include "scalpel/text/tokenizer.hpp"

namespace fs = std::filesystem;
using namespace scalpel;

namespace {

using bench::median;

// Median seconds of one x·W^T sgemm of shape (M, N, K), as the cpu backend's linear calls it.
double time_sgemm(std::int64_t m, std::int64_t n, std::int64_t k, int repeats) {
  std::vector<float> a(static_cast<std::size_t>(m * k), 0.5f), b(static_cast<std::size_t>(n * k), 0.25f),
      c(static_cast<std::size_t>(m * n));
  auto once = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k),
                1.0f, a.data(), static_cast<int>(k), b.data(), static_cast<int>(k), 0.0f, c.data(), static_cast<int>(n));
  };
  once();  // warm-up
  std::vector<double> t;
  for (int r = 0; r < repeats; ++r) {
    Timer tm;
    once();
    t.push_back(tm.seconds());
  }
  return median(t);
}

// The command line.
struct Options {
  std::string model = fs::exists("../shared/models/opt-mini") ? "../shared/models/opt-mini" : "models/opt-mini";
  std::string text_path = "data/corpus/heldout.txt", out = "";
  std::int64_t seqlen = 0, windows = 8, batch = 1;
  int repeats = 5, threads = 0;
};

void add_options(CLI::App& cli, Options& o) {
  cli.add_option("--model", o.model, "Hugging Face model folder");
  cli.add_option("--text", o.text_path, "text to evaluate");
  cli.add_option("--seqlen", o.seqlen, "window length (0: the model's maximum)")->check(CLI::NonNegativeNumber);
  cli.add_option("--windows", o.windows, "windows per timed pass")->check(CLI::PositiveNumber);
  cli.add_option("--batch", o.batch, "windows per forward")->check(CLI::PositiveNumber);
  cli.add_option("--repeats", o.repeats, "timed passes (median reported)")->check(CLI::PositiveNumber);
  cli.add_option("--threads", o.threads, "BLAS/OpenMP threads (0: all cores)")->check(CLI::NonNegativeNumber);
  cli.add_option("--out", o.out, "JSON output file (default: stdout only)");
}

// Throughput: the median seconds of whole passes, model weights resident (as in a normal eval).
double pass_seconds(model::Model& m, const std::vector<std::int32_t>& ids, const Options& o, dist::Comm& self) {
  app::evaluate_ids(m, ids, o.seqlen, o.batch, 1, self, "warmup", 0);
  std::vector<double> pass;
  for (int r = 0; r < o.repeats; ++r)
    pass.push_back(app::evaluate_ids(m, ids, o.seqlen, o.batch, o.windows, self, "bench", 0).seconds);
  return median(pass);
}

// One profiled pass of mp (whose backend is prof): where the time goes, and every GEMM shape.
double profiled_pass_seconds(model::Model& mp, ProfilingBackend& prof, const std::vector<std::int32_t>& ids,
                             const Options& o, dist::Comm& self) {
  app::evaluate_ids(mp, ids, o.seqlen, o.batch, 1, self, "warmup", 0);
  prof.reset();
  Timer tp;
  app::evaluate_ids(mp, ids, o.seqlen, o.batch, o.windows, self, "profile", 0);
  return tp.seconds();
}

struct GemmCeiling {
  double seconds = 0, flops = 0;  // the bare sgemms of every call the forward made
  nlohmann::json shapes = nlohmann::json::array();
};

// The same shapes, bare sgemm: the ceiling at these sizes.
GemmCeiling gemm_ceiling(const ProfilingBackend& prof, int repeats) {
  GemmCeiling c;
  for (const auto& [shape, count] : prof.gemm_shapes()) {
    const auto [M, N, K] = shape;
    const double t = time_sgemm(M, N, K, repeats);
    c.seconds += t * static_cast<double>(count);
    c.flops += 2.0 * M * N * K * static_cast<double>(count);
    c.shapes.push_back({{"m", M}, {"n", N}, {"k", K}, {"calls", count}, {"sgemm_gflops", 2.0 * M * N * K / t / 1e9}});
  }
  return c;
}

// Each op of the profiled pass: calls, seconds, share of the pass and rate.
nlohmann::json op_shares(const ProfilingBackend& prof, double t_prof) {
  nlohmann::json ops;
  for (const auto& [name, s] : prof.stats())
    ops[name] = {{"calls", s.calls}, {"seconds", s.seconds}, {"share", s.seconds / t_prof},
                 {"gflops", s.flops > 0 ? s.flops / s.seconds / 1e9 : 0.0}};
  return ops;
}

// Times the passes, the profiled pass and the ceilings, and returns the report.
nlohmann::json run_benchmark(Backend& cpu, int nthreads, Options& o) {
  auto ckpt = std::make_shared<const io::HfCheckpoint>(o.model);
  const auto spec = model::ModelSpec::from_config(ckpt->config(), o.model);
  if (o.seqlen <= 0) o.seqlen = spec.max_positions;
  auto tok = text::Tokenizer::from_folder(o.model);
  auto ids = tok->encode(text::load_eval_text("text", o.text_path));
  o.windows = std::min<std::int64_t>(o.windows, static_cast<std::int64_t>(ids.size()) / o.seqlen);
  if (o.windows < 1) throw std::runtime_error("text too short for one window");
  dist::SelfComm self;

  model::Model m(spec, app::checkpoint_source(ckpt), cpu);
  const double t_pass = pass_seconds(m, ids, o, self);
  const double tokens = static_cast<double>(o.windows * o.seqlen);

  ProfilingBackend prof(cpu);
  model::Model mp(spec, app::checkpoint_source(ckpt), prof);
  const double t_prof = profiled_pass_seconds(mp, prof, ids, o, self);

  const GemmCeiling c = gemm_ceiling(prof, o.repeats);
  const auto& st = prof.stats();
  const double lin_s = st.count("linear") ? st.at("linear").seconds : 0;
  const double lin_flops = st.count("linear") ? st.at("linear").flops : 0;
  const nlohmann::json ops = op_shares(prof, t_prof);
  const double peak_s = time_sgemm(2048, 2048, 2048, 3);

  return {
      {"benchmark", "eval"},
      {"model", o.model},
      {"model_type", spec.model_type},
      {"threads", nthreads},
      {"seqlen", o.seqlen},
      {"windows", o.windows},
      {"batch", o.batch},
      {"repeats", o.repeats},
      {"pass_seconds_median", t_pass},
      {"tokens_per_second", tokens / t_pass},
      {"linear_gflops_in_forward", lin_flops / lin_s / 1e9},
      {"sgemm_gflops_same_shapes", c.flops / c.seconds / 1e9},
      {"gemm_efficiency", (lin_flops / lin_s) / (c.flops / c.seconds)},
      {"linear_share_of_forward", lin_s / t_prof},
      {"sgemm_gflops_2048_cube", 2.0 * 2048.0 * 2048 * 2048 / peak_s / 1e9},
      {"ops", ops},
      {"gemm_shapes", c.shapes},
  };
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"scalpel eval benchmark: tokens/s and GEMM efficiency against OpenBLAS at the same sizes"};
  Options o;
  add_options(cli, o);
  CLI11_PARSE(cli, argc, argv);
  return bench::guarded("bench_eval", [&] {
    const int nthreads = app::threads_per_rank(o.threads, 1);
    auto cpu = make_cpu_backend(nthreads);
    nlohmann::json j = run_benchmark(*cpu, nthreads, o);
    j["provenance"] = bench::provenance(argc, argv);
    bench::emit_json(j, o.out);
    return 0;
  });
}
