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

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"scalpel eval benchmark: tokens/s and GEMM efficiency against OpenBLAS at the same sizes"};
  std::string model = fs::exists("../shared/models/opt-mini") ? "../shared/models/opt-mini" : "models/opt-mini";
  std::string text_path = "data/corpus/heldout.txt", out = "";
  std::int64_t seqlen = 0, windows = 8, batch = 1;
  int repeats = 5, threads = 0;
  cli.add_option("--model", model, "Hugging Face model folder");
  cli.add_option("--text", text_path, "text to evaluate");
  cli.add_option("--seqlen", seqlen, "window length (0: the model's maximum)");
  cli.add_option("--windows", windows, "windows per timed pass");
  cli.add_option("--batch", batch, "windows per forward");
  cli.add_option("--repeats", repeats, "timed passes (median reported)");
  cli.add_option("--threads", threads, "BLAS/OpenMP threads (0: all cores)");
  cli.add_option("--out", out, "JSON output file (default: stdout only)");
  CLI11_PARSE(cli, argc, argv);

  try {
    const int nthreads = app::threads_per_rank(threads, 1);
    auto cpu = make_cpu_backend(nthreads);
    auto ckpt = std::make_shared<const io::HfCheckpoint>(model);
    const auto spec = model::ModelSpec::from_config(ckpt->config(), model);
    if (seqlen <= 0) seqlen = spec.max_positions;
    auto tok = text::Tokenizer::from_folder(model);
    auto ids = tok->encode(text::load_eval_text("text", text_path));
    windows = std::min<std::int64_t>(windows, static_cast<std::int64_t>(ids.size()) / seqlen);
    if (windows < 1) throw std::runtime_error("text too short for one window");
    dist::SelfComm self;

    // Throughput: whole passes, model weights resident (as in a normal eval).
    model::Model m(spec, app::checkpoint_source(ckpt), *cpu);
    app::evaluate_ids(m, ids, seqlen, batch, 1, self, "warmup", 0);
    std::vector<double> pass;
    for (int r = 0; r < repeats; ++r)
      pass.push_back(app::evaluate_ids(m, ids, seqlen, batch, windows, self, "bench", 0).seconds);
    const double t_pass = median(pass);
    const double tokens = static_cast<double>(windows * seqlen);

    // One profiled pass: where the time goes, and every GEMM shape.
    ProfilingBackend prof(*cpu);
    model::Model mp(spec, app::checkpoint_source(ckpt), prof);
    app::evaluate_ids(mp, ids, seqlen, batch, 1, self, "warmup", 0);
    prof.reset();
    Timer tp;
    app::evaluate_ids(mp, ids, seqlen, batch, windows, self, "profile", 0);
    const double t_prof = tp.seconds();

    // The same shapes, bare sgemm: the ceiling at these sizes.
    double ceiling_s = 0, gemm_flops = 0;
    nlohmann::json shapes = nlohmann::json::array();
    for (const auto& [shape, count] : prof.gemm_shapes()) {
      const auto [M, N, K] = shape;
      const double t = time_sgemm(M, N, K, repeats);
      ceiling_s += t * static_cast<double>(count);
      gemm_flops += 2.0 * M * N * K * static_cast<double>(count);
      shapes.push_back({{"m", M}, {"n", N}, {"k", K}, {"calls", count}, {"sgemm_gflops", 2.0 * M * N * K / t / 1e9}});
    }
    const auto& st = prof.stats();
    const double lin_s = st.count("linear") ? st.at("linear").seconds : 0;
    const double lin_flops = st.count("linear") ? st.at("linear").flops : 0;
    nlohmann::json ops;
    for (const auto& [name, s] : st)
      ops[name] = {{"calls", s.calls}, {"seconds", s.seconds}, {"share", s.seconds / t_prof},
                   {"gflops", s.flops > 0 ? s.flops / s.seconds / 1e9 : 0.0}};
    const double peak_s = time_sgemm(2048, 2048, 2048, 3);

    nlohmann::json j = {
        {"benchmark", "eval"},
        {"model", model},
        {"model_type", spec.model_type},
        {"threads", nthreads},
        {"seqlen", seqlen},
        {"windows", windows},
        {"batch", batch},
        {"repeats", repeats},
        {"pass_seconds_median", t_pass},
        {"tokens_per_second", tokens / t_pass},
        {"linear_gflops_in_forward", lin_flops / lin_s / 1e9},
        {"sgemm_gflops_same_shapes", gemm_flops / ceiling_s / 1e9},
        {"gemm_efficiency", (lin_flops / lin_s) / (gemm_flops / ceiling_s)},
        {"linear_share_of_forward", lin_s / t_prof},
        {"sgemm_gflops_2048_cube", 2.0 * 2048.0 * 2048 * 2048 / peak_s / 1e9},
        {"ops", ops},
        {"gemm_shapes", shapes},
    };
    std::cout << j.dump(2) << std::endl;
    if (!out.empty()) std::ofstream(out) << j.dump(2) << '\n';
  } catch (const std::exception& e) {
    std::cerr << "bench_eval: error: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
