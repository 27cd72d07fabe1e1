// One OPT decoder layer's SparseGPT prune at any width on any backend (written for the GPU at
// OPT-175B widths: hidden 12288, ffn 49152, 96 heads), split into its phases, each against a
// ceiling measured in the same run on the same device:
//   hessian   = XᵀX of a calibration batch (3 inputs of width hidden, 1 of width ffn): fp32 SYRK
//               vs the fp32 GEMM rate, or, with a 2-byte forward, the tensor-core GEMM of the
//               2-byte activations vs the tensor-core rate;
//   f64 sum   = adding that batch's fp32 Hessian into the float64 sum vs device copy bandwidth;
//   factor    = SparseGPT's factor U = chol(H⁻¹), once per input group (3 of width hidden, 1 of
//               ffn; a width of at least --split-width by the shared path, as the prune), vs the
//               fp32 GEMM rate;
//   sweep     = the OBS sweep of the six weights (q, k, v, out, fc1, fc2) vs the fp32 GEMM rate;
//   forward   = the decoder layer on a batch (random weights) in the forward dtype (--forward-dtype,
//               default fp16 as the reference runs an fp16 checkpoint) vs that dtype's GEMM rate;
//   load      = the layer's fp16 weights host -> device vs the measured upload bandwidth.
// Times are medians over repeats of synchronised runs. The calibration set (default 128 x 2048
// tokens) is timed on one batch and scaled by the number of batches (SYRK, the sums and the
// forward are linear in the tokens); the JSON says so. The projection for the whole model on 1
// and on N GPUs follows from the measured phases (see the "projection" field for its terms).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>
#include <vector>

#include "bench_common.hpp"
#include "scalpel/backend/backend.hpp"
#include "scalpel/core/timer.hpp"
#include "scalpel/model/model.hpp"
#include "scalpel/prune/pruner.hpp"
#include "scalpel/prune/split_factor.hpp"

using namespace scalpel;
using nlohmann::json;

namespace {

using bench::median;

void fill_random(float* p, std::int64_t n, std::uint64_t seed, float scale) {
  std::uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (std::int64_t i = 0; i < n; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    p[i] = scale * (static_cast<float>(static_cast<std::int64_t>(s >> 40)) / 8388608.0f - 1.0f);
  }
}

Tensor random_on(Backend& be, Shape shape, std::uint64_t seed, float scale = 1.0f, DType dt = DType::f32) {
  Tensor h = Tensor::empty(std::move(shape));
  fill_random(h.f32(), h.numel(), seed, scale);
  const Tensor f = be.upload(h);
  if (dt == DType::f32) return f;
  Tensor out = be.empty(f.shape(), dt);
  be.convert(f, out);
  return out;
}

// Median seconds of f over `repeats` runs after one warm-up, the device drained around each.
template <class F>
double timed(Backend& be, int repeats, F&& f) {
  f();
  be.synchronize();
  std::vector<double> t;
  for (int r = 0; r < repeats; ++r) {
    be.synchronize();
    Timer tm;
    f();
    be.synchronize();
    t.push_back(tm.seconds());
  }
  return median(t);
}

model::ModelSpec opt_spec(std::int64_t hidden, std::int64_t ffn, std::int64_t heads, std::int64_t seqlen) {
  const nlohmann::json cfg = {{"model_type", "opt"},
                              {"hidden_size", hidden},
                              {"ffn_dim", ffn},
                              {"num_attention_heads", heads},
                              {"num_hidden_layers", 1},
                              {"vocab_size", 50272},
                              {"max_position_embeddings", seqlen},
                              {"word_embed_proj_dim", hidden},
                              {"do_layer_norm_before", true},
                              {"activation_function", "relu"},
                              {"enable_bias", true},
                              {"layer_norm_elementwise_affine", true}};
  return model::ModelSpec::from_config(cfg, "bench_layer");
}

// The command line (defaults: an OPT-175B layer on the GPU, as the reference prunes it).
struct Options {
  std::string device = "cuda", out, tf32 = "off", forward_dtype = "fp16";
  std::int64_t hidden = 12288, ffn = 49152, heads = 96, seqlen = 2048, batch = 2, nsamples = 128, layers = 96;
  int repeats = 3, gpus = 8;
  double link_gbps = 150;
  std::int64_t split_width = 16384, tile = 1024;  // sparsegpt.split_width and .tile, as the prune
};

void add_options(CLI::App& app, Options& o) {
  const auto positive = CLI::PositiveNumber;
  app.add_option("--device", o.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--hidden", o.hidden)->check(positive);
  app.add_option("--ffn", o.ffn)->check(positive);
  app.add_option("--heads", o.heads)->check(positive);
  app.add_option("--seqlen", o.seqlen, "tokens per calibration sequence")->check(positive);
  app.add_option("--batch", o.batch, "sequences per timed batch")->check(positive);
  app.add_option("--nsamples", o.nsamples, "calibration sequences of the projected run")->check(positive);
  app.add_option("--layers", o.layers, "decoder layers of the projected model")->check(positive);
  app.add_option("--repeats", o.repeats)->check(positive);
  app.add_option("--gpus", o.gpus, "ranks of the multi-GPU projection")->check(positive);
  app.add_option("--link-gbps", o.link_gbps,
                 "assumed all-reduce bus bandwidth between GPUs (GB/s), for the projection")->check(positive);
  app.add_option("--tf32", o.tf32, "off | forward | all (the backend's TF32 setting)")
      ->check(CLI::IsMember({"off", "forward", "all"}));
  app.add_option("--forward-dtype", o.forward_dtype, "fp16 | bf16 | fp32: the forward's dtype (fp16: the reference's)")
      ->check(CLI::IsMember({"fp16", "bf16", "fp32"}));
  app.add_option("--split-width", o.split_width,
                 "sparsegpt.split_width: wider factors take the shared path (0: none)")->check(CLI::NonNegativeNumber);
  app.add_option("--tile", o.tile, "sparsegpt.tile: rows per panel of a shared factor")->check(positive);
  app.add_option("--out", o.out, "JSON file (default: stdout only)");
}

// What every phase needs: the options, the backend (and the options it was made with), the
// forward's dtype, the tokens of one timed batch and the batches of the projected run.
struct Setup {
  const Options& o;
  const BackendOptions& bo;
  Backend& be;
  DType fdt;
  std::int64_t tokens, batches;
};

// The measured ceilings in FLOP/s (fp32 GEMM; the forward dtype's GEMM) and bytes/s (copy).
struct Rates {
  double gemm, fwd, copy;
};

// Seconds per layer of each phase over the whole calibration set, on one GPU.
struct LayerTimes {
  double hessian = 0, f64_sum = 0, factor = 0, sweep = 0, forward = 0;
};

using FactorTimes = std::map<std::int64_t, std::pair<double, double>>;  // width -> (seconds, tflops)

// ---- ceilings ----
// The fp32 GEMM rate (and TF32, and the 2-byte forward dtype's), the copy bandwidth on the device
// and the upload bandwidth to it (the keys of r["ceiling"]).
json measure_ceilings(const Setup& st) {
  const Options& o = st.o;
  Backend& be = st.be;
  json c;
  const std::int64_t n = std::min<std::int64_t>(8192, o.hidden);
  Tensor a = random_on(be, {n, n}, 1), b = random_on(be, {n, n}, 2), out = be.empty({n, n});
  BackendOptions plain = st.bo;
  plain.tf32_forward = plain.tf32_hessian = false;
  auto fp32 = make_backend(o.device, plain);
  const double s = timed(*fp32, o.repeats, [&] { fp32->gemm(Trans::no, Trans::no, 1.0f, a, b, 0.0f, out); });
  c["gemm_fp32_tflops"] = 2.0 * n * n * n / s / 1e12;
  if (o.tf32 != "off") {
    const double s2 = timed(be, o.repeats, [&] { be.gemm(Trans::no, Trans::no, 1.0f, a, b, 0.0f, out); });
    c["gemm_tf32_tflops"] = 2.0 * n * n * n / s2 / 1e12;
  }
  if (st.fdt != DType::f32) {  // the tensor-core GEMM of 2-byte operands (fp32 sums), as linear runs it
    Tensor a2 = random_on(be, {n, n}, 1, 1.0f, st.fdt), b2 = random_on(be, {n, n}, 2, 1.0f, st.fdt);
    Tensor c2 = be.empty({n, n}, st.fdt);
    const double s3 = timed(be, o.repeats, [&] { be.linear(a2, b2, nullptr, c2); });
    c["gemm_" + o.forward_dtype + "_tflops"] = 2.0 * n * n * n / s3 / 1e12;
  }
  const std::int64_t m = 256 << 20;  // 1 GiB of floats
  Tensor x = be.zeros({m}), y = be.empty({m});
  const double sc = timed(be, o.repeats, [&] { be.copy(x, y); });
  c["copy_gbps"] = 2.0 * 4.0 * m / sc / 1e9;         // bytes read + written
  Tensor hh = Tensor::empty({64 << 20}, DType::f16);  // 128 MB of fp16, as a stored layer streams in
  std::memset(hh.raw(), 0, hh.nbytes());
  const double su = timed(be, o.repeats, [&] { be.upload(hh); });
  c["upload_gbps"] = static_cast<double>(hh.nbytes()) / su / 1e9;
  return c;
}

// The rates each phase is compared against, from the measured ceilings.
Rates rates_of(const Setup& st, const json& c) {
  const Options& o = st.o;
  const double gemm_rate = c.at("gemm_fp32_tflops").get<double>() * 1e12;
  const double fwd_rate = (st.fdt != DType::f32 ? c.at("gemm_" + o.forward_dtype + "_tflops")
                           : o.tf32 != "off"    ? c.at("gemm_tf32_tflops")
                                                : c.at("gemm_fp32_tflops"))
                              .get<double>() *
                          1e12;
  const double copy_bw = c.at("copy_gbps").get<double>() * 1e9;
  return {gemm_rate, fwd_rate, copy_bw};
}

// ---- statistics: one batch's SYRK and f64 sum, for each input width ----
void phase_statistics(const Setup& st, const Rates& rate, json& r, LayerTimes& lt) {
  Backend& be = st.be;
  const std::int64_t tokens = st.tokens;
  for (const auto& [d, count] : std::vector<std::pair<std::int64_t, int>>{{st.o.hidden, 3}, {st.o.ffn, 1}}) {
    Tensor x = random_on(be, {tokens, d}, 10 + d, 1.0f, st.fdt);
    Tensor h = be.empty({d, d});
    Tensor acc = be.zeros({d * (d + 1) / 2}, DType::f64);
    const double s_syrk = timed(be, st.o.repeats, [&] { be.syrk(1.0f, x, 0.0f, h); });
    const double s_sum = timed(be, st.o.repeats, [&] { be.accumulate_upper_f64(h, acc); });
    // Useful FLOPs (one triangle); the 2-byte path computes both triangles on tensor cores, so its
    // ceiling is half the tensor-core rate in these units.
    const double flops = static_cast<double>(tokens) * d * (d + 1);
    const double syrk_ceiling = st.fdt != DType::f32 ? rate.fwd / 2 : rate.gemm;
    const double bytes = 4.0 * d * d / 2 + 16.0 * d * (d + 1) / 2;  // read the upper fp32, read+write the f64
    r["hessian"].push_back({{"width", d},
                            {"per_layer", count},
                            {"syrk_s", s_syrk},
                            {"syrk_tflops", flops / s_syrk / 1e12},
                            {"syrk_vs_ceiling", flops / s_syrk / syrk_ceiling},
                            {"sum_s", s_sum},
                            {"sum_gbps", bytes / s_sum / 1e9},
                            {"sum_vs_copy", bytes / s_sum / rate.copy}});
    lt.hessian += count * s_syrk * st.batches;
    lt.f64_sum += count * s_sum * st.batches;
    std::cerr << "  hessian " << r["hessian"].back().dump() << "\n";
  }
}

struct Lin {
  const char* name;
  std::int64_t rows, cols;
};

// Median seconds of U = chol(H⁻¹) of h, left in work, after a warm-up; nullopt (said on stderr)
// when the factorisation fails.
std::optional<double> factor_seconds(const Setup& st, const Tensor& h, Tensor& work, bool shared, std::int64_t d) {
  Backend& be = st.be;
  dist::SelfComm self;
  std::vector<double> t;
  for (int rep = 0; rep < st.o.repeats + 1; ++rep) {
    be.copy(h, work);
    be.synchronize();
    Timer tm;
    const bool ok =
        shared ? prune::shared_inverse_cholesky_upper(be, work, st.o.tile, self) : be.inverse_cholesky_upper(work);
    be.synchronize();
    if (!ok) {
      std::cerr << "factorisation failed at width " << d << "\n";
      return std::nullopt;
    }
    if (rep > 0) t.push_back(tm.seconds());  // the first is the warm-up
  }
  return median(t);
}

// The OBS sweep of the weight l against the factor `hinv`: appended to r["sweep"]; returns its seconds.
double phase_sweep(const Setup& st, const Rates& rate, const Lin& l, const Tensor& hinv, json& r) {
  Backend& be = st.be;
  Tensor w0 = random_on(be, {l.rows, l.cols}, 30 + l.rows, 0.02f);
  Tensor w = be.empty({l.rows, l.cols}), mask = be.empty({l.rows, l.cols}, DType::u8);
  Tensor losses = be.zeros({l.rows}, DType::f64);
  prune::SweepOptions so;
  so.pattern = prune::Pattern::unstructured(0.5);
  so.blocksize = 128;
  std::vector<double> ts;
  for (int rep = 0; rep < st.o.repeats + 1; ++rep) {
    be.copy(w0, w);
    be.synchronize();
    Timer tm;
    prune::sparsegpt_sweep(be, w, hinv, so, mask, losses);
    be.synchronize();
    if (rep > 0) ts.push_back(tm.seconds());
  }
  const double s = median(ts);
  const double flops = static_cast<double>(l.rows) * l.cols * l.cols;  // lazy updates (GEMM) + in-block updates
  r["sweep"].push_back({{"linear", l.name},
                        {"rows", l.rows},
                        {"cols", l.cols},
                        {"s", s},
                        {"tflops", flops / s / 1e12},
                        {"vs_gemm", flops / s / rate.gemm}});
  std::cerr << "  sweep " << r["sweep"].back().dump() << "\n";
  return s;
}

// ---- factorisation and sweep per weight ----
// False when a factorisation failed.
bool phase_factors_and_sweeps(const Setup& st, const Rates& rate, json& r, LayerTimes& lt,
                              FactorTimes& fact_by_width) {
  Backend& be = st.be;
  const std::int64_t hidden = st.o.hidden, ffn = st.o.ffn;
  const std::vector<Lin> lins = {{"q_proj", hidden, hidden}, {"k_proj", hidden, hidden}, {"v_proj", hidden, hidden},
                                 {"out_proj", hidden, hidden}, {"fc1", ffn, hidden},        {"fc2", hidden, ffn}};
  for (const std::int64_t d : {hidden, ffn}) {
    // A Hessian of a few thousand random tokens (rank-deficient at width ffn; the 1% damping of the
    // preparation makes it definite, as in a real run).
    Tensor x = random_on(be, {std::min<std::int64_t>(st.tokens, 2 * d), d}, 20 + d);
    Tensor h = be.empty({d, d}), work = be.empty({d, d});
    be.syrk(1.0f / static_cast<float>(x.size(0)), x, 0.0f, h);
    be.hessian_prepare(h, nullptr, 0.01f);
    // As the prune makes it: a factor at least split_width wide by the shared path (here on one
    // rank; the projection below divides its panels over the GPUs).
    const bool shared = st.o.split_width > 0 && d >= st.o.split_width;
    const auto s = factor_seconds(st, h, work, shared, d);
    if (!s) return false;
    const double flops = 2.0 * d * static_cast<double>(d) * d / 3.0;  // potrf n³/3 + trtri n³/3
    fact_by_width[d] = {*s, flops / *s / 1e12};
    r["factor"].push_back({{"width", d},
                           {"s", *s},
                           {"tflops", flops / *s / 1e12},
                           {"vs_gemm", flops / *s / rate.gemm},
                           {"shared", shared}});
    std::cerr << "  factor " << r["factor"].back().dump() << "\n";
    // The sweeps of the weights with this input width, against this factor.
    for (const auto& l : lins)
      if (l.cols == d) lt.sweep += phase_sweep(st, rate, l, work, r);
  }
  // One factorisation per input group (q/k/v share theirs), as the prune does.
  lt.factor = 3 * fact_by_width[hidden].first + fact_by_width[ffn].first;
  return true;
}

// The layer's random weights (and norms) on the backend in the forward dtype.
model::LayerWeights random_layer_weights(const Setup& st, const model::ModelSpec& spec) {
  model::LayerWeights lw;
  std::uint64_t seed = 100;
  for (const auto& l : spec.linears()) {
    lw.tensors[l.name + ".weight"] = random_on(st.be, {l.out, l.in}, ++seed, 0.02f, st.fdt);
    if (l.bias) lw.tensors[l.name + ".bias"] = random_on(st.be, {l.out}, ++seed, 0.02f, st.fdt);
  }
  for (const auto& n : spec.layer_norm_tensors()) lw.tensors[n] = random_on(st.be, {st.o.hidden}, ++seed, 1.0f, st.fdt);
  return lw;
}

// ---- forward of one batch through the layer (random weights) ----
// Returns the layer's forward seconds over the calibration set.
double phase_forward(const Setup& st, const Rates& rate, json& r) {
  Backend& be = st.be;
  const Options& o = st.o;
  const std::int64_t tokens = st.tokens, hidden = o.hidden;
  const auto spec = opt_spec(hidden, o.ffn, o.heads, o.seqlen);
  const model::LayerWeights lw = random_layer_weights(st, spec);
  Tensor x0 = random_on(be, {tokens, hidden}, 7, 1.0f, st.fdt), x = be.empty({tokens, hidden}, st.fdt);
  std::vector<double> t;
  for (int rep = 0; rep < o.repeats + 1; ++rep) {
    be.copy(x0, x);
    be.synchronize();
    Timer tm;
    model::decoder_layer_forward(be, spec, lw, x, o.batch, o.seqlen, nullptr, nullptr, nullptr);
    be.synchronize();
    if (rep > 0) t.push_back(tm.seconds());
  }
  const double s = median(t);
  const double lin_flops = 2.0 * tokens * (4.0 * hidden * hidden + 2.0 * hidden * o.ffn);
  // q·kᵀ and P·V, full square
  const double att_flops = 4.0 * o.batch * o.seqlen * static_cast<double>(o.seqlen) * hidden;
  r["forward"] = {{"s", s},
                  {"tflops", (lin_flops + att_flops) / s / 1e12},
                  {"vs_gemm", (lin_flops + att_flops) / s / rate.fwd},
                  {"flops", lin_flops + att_flops}};
  std::cerr << "  forward " << r["forward"].dump() << "\n";
  return 2 * s * st.batches;  // statistics pass + propagation pass
}

// The factorisations at N ranks as SharedFactors makes them: the busiest rank's seconds, and
// the most factor bytes any rank receives (see project_ngpu).
std::pair<double, double> factor_shares(const Options& o, const FactorTimes& fact_by_width) {
  const int gpus = o.gpus;
  std::vector<double> loads(static_cast<std::size_t>(gpus), 0.0), recv(static_cast<std::size_t>(gpus), 0.0);
  std::vector<std::pair<std::int64_t, double>> whole;  // (width, seconds) of the factors made whole
  for (const std::int64_t d : {o.hidden, o.hidden, o.hidden, o.ffn}) {
    if (o.split_width > 0 && d >= o.split_width) {
      const double all = prune::shared_factor_cost(d, o.tile, 1, 0).flops;
      for (int g = 0; g < gpus; ++g) {
        const auto c = prune::shared_factor_cost(d, o.tile, gpus, g);
        loads[static_cast<std::size_t>(g)] += fact_by_width.at(d).first * c.critical_flops / all;
        recv[static_cast<std::size_t>(g)] += c.recv_bytes;
      }
    } else {
      whole.push_back({d, fact_by_width.at(d).first});
    }
  }
  std::sort(whole.begin(), whole.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (const auto& [d, sec] : whole) {
    const auto g = static_cast<std::size_t>(std::min_element(loads.begin(), loads.end()) - loads.begin());
    loads[g] += sec;
    for (std::size_t other = 0; other < recv.size(); ++other)
      if (other != g) recv[other] += 4.0 * static_cast<double>(d) * static_cast<double>(d);
  }
  return {*std::max_element(loads.begin(), loads.end()), *std::max_element(recv.begin(), recv.end())};
}

// ---- the layer and the model ----
void project(const Options& o, const LayerTimes& lt, const FactorTimes& fact_by_width, json& r) {
  const std::int64_t hidden = o.hidden, ffn = o.ffn;
  const int gpus = o.gpus;
  const double layer_bytes = 2.0 * (4.0 * hidden * hidden + 2.0 * hidden * ffn);  // fp16 weights
  const double load = layer_bytes / (r["ceiling"]["upload_gbps"].get<double>() * 1e9);
  const double one = lt.hessian + lt.f64_sum + lt.factor + lt.sweep + lt.forward + load;
  r["per_layer_1gpu_s"] = {{"hessian", lt.hessian}, {"f64_sum", lt.f64_sum}, {"factor", lt.factor},
                           {"sweep", lt.sweep},     {"forward", lt.forward}, {"load", load},
                           {"total", one}};
  // N GPUs, data parallel: tokens (statistics, sums, forwards) and weight rows (sweeps) split N
  // ways; the factorisations as SharedFactors makes them: a shared factor (fc2's, at least
  // split_width wide) split by panels, its measured one-rank time scaled by its critical path at
  // N ranks (prune::shared_factor_cost; the broadcasts' latency is not counted), the whole ones
  // (the three of width hidden) each to the least loaded rank and broadcast from there (4 d²
  // bytes); every rank loads every weight; the float64 Hessians are all-reduced (ring: 2 (N-1)/N
  // of their bytes at the assumed link bandwidth) and the fp16 pruned rows all-gathered.
  const double hess_bytes = 8.0 * (3.0 * hidden * (hidden + 1) / 2 + ffn * (ffn + 1.0) / 2);
  const auto [factor_share, max_recv] = factor_shares(o, fact_by_width);
  const double ring = 2.0 * (gpus - 1) / gpus;
  const double comm = (ring * hess_bytes + (gpus - 1.0) / gpus * layer_bytes + max_recv) / (o.link_gbps * 1e9);
  const double many = (lt.hessian + lt.f64_sum + lt.forward + lt.sweep) / gpus + factor_share + load + comm;
  r["per_layer_ngpu_s"] = {{"gpus", gpus},
                           {"comm", comm},
                           {"factor_busiest_rank", factor_share},
                           {"total", many},
                           {"link_gbps_assumed", o.link_gbps}};
  r["projection"] = {{"layers", o.layers},
                     {"hours_1gpu", one * o.layers / 3600},
                     {"hours_ngpu", many * o.layers / 3600},
                     {"gpus", gpus},
                     {"reference", "SparseGPT: OPT-175B in about 4-4.5 h on one A100 80GB (Frantar & Alistarh 2023)"},
                     {"not_included", "reading the checkpoint from disk, the final evaluation"}};
}

// The benchmark: ceilings, then each phase, then the projection; 1 when a factorisation failed.
int run(const Options& o, int argc, char** argv) {
  BackendOptions bo;
  bo.tf32_forward = o.tf32 != "off";
  bo.tf32_hessian = o.tf32 == "all";
  auto bep = make_backend(o.device, bo);
  const DType fdt = o.forward_dtype == "fp16" ? DType::f16 : o.forward_dtype == "bf16" ? DType::bf16 : DType::f32;
  const Setup st{o, bo, *bep, fdt, o.batch * o.seqlen, (o.nsamples + o.batch - 1) / o.batch};
  json r = {{"device", o.device},     {"backend", st.be.name()}, {"tf32", o.tf32},
            {"forward_dtype", o.forward_dtype},
            {"hidden", o.hidden},
            {"ffn", o.ffn},           {"heads", o.heads},        {"seqlen", o.seqlen}, {"batch_tokens", st.tokens},
            {"nsamples", o.nsamples}, {"batches", st.batches},   {"repeats", o.repeats}};
  std::cerr << "bench_layer: " << o.device << " hidden " << o.hidden << " ffn " << o.ffn << ", batches of "
            << st.tokens << " tokens x " << st.batches << "\n";

  r["ceiling"] = measure_ceilings(st);
  const Rates rate = rates_of(st, r["ceiling"]);
  std::cerr << "  ceilings: " << r["ceiling"].dump() << "\n";
  LayerTimes lt;
  phase_statistics(st, rate, r, lt);
  FactorTimes fact_by_width;
  if (!phase_factors_and_sweeps(st, rate, r, lt, fact_by_width)) return 1;
  lt.forward = phase_forward(st, rate, r);
  project(o, lt, fact_by_width, r);
  r["provenance"] = bench::provenance(argc, argv);
  bench::emit_json(r, o.out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("Per-phase time of one OPT layer's SparseGPT prune on a backend, with same-run ceilings");
  Options o;
  add_options(app, o);
  CLI11_PARSE(app, argc, argv);
  return bench::guarded("bench_layer", [&] { return run(o, argc, argv); });
}
