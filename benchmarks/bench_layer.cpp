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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("Per-phase time of one OPT layer's SparseGPT prune on a backend, with same-run ceilings");
  std::string device = "cuda", out, tf32 = "off", forward_dtype = "fp16";
  std::int64_t hidden = 12288, ffn = 49152, heads = 96, seqlen = 2048, batch = 2, nsamples = 128, layers = 96;
  int repeats = 3, gpus = 8;
  double link_gbps = 150;
  std::int64_t split_width = 16384, tile = 1024;  // sparsegpt.split_width and .tile, as the prune
  app.add_option("--device", device, "cpu or cuda");
  app.add_option("--hidden", hidden);
  app.add_option("--ffn", ffn);
  app.add_option("--heads", heads);
  app.add_option("--seqlen", seqlen, "tokens per calibration sequence");
  app.add_option("--batch", batch, "sequences per timed batch");
  app.add_option("--nsamples", nsamples, "calibration sequences of the projected run");
  app.add_option("--layers", layers, "decoder layers of the projected model");
  app.add_option("--repeats", repeats);
  app.add_option("--gpus", gpus, "ranks of the multi-GPU projection");
  app.add_option("--link-gbps", link_gbps, "assumed all-reduce bus bandwidth between GPUs (GB/s), for the projection");
  app.add_option("--tf32", tf32, "off | forward | all (the backend's TF32 setting)");
  app.add_option("--forward-dtype", forward_dtype, "fp16 | bf16 | fp32: the forward's dtype (fp16: the reference's)")
      ->check(CLI::IsMember({"fp16", "bf16", "fp32"}));
  app.add_option("--split-width", split_width, "sparsegpt.split_width: wider factors take the shared path (0: none)");
  app.add_option("--tile", tile, "sparsegpt.tile: rows per panel of a shared factor");
  app.add_option("--out", out, "JSON file (default: stdout only)");
  CLI11_PARSE(app, argc, argv);

  BackendOptions bo;
  bo.tf32_forward = tf32 != "off";
  bo.tf32_hessian = tf32 == "all";
  auto bep = make_backend(device, bo);
  Backend& be = *bep;
  const DType fdt = forward_dtype == "fp16" ? DType::f16 : forward_dtype == "bf16" ? DType::bf16 : DType::f32;
  const std::int64_t tokens = batch * seqlen, batches = (nsamples + batch - 1) / batch;
  json r = {{"device", device},     {"backend", be.name()}, {"tf32", tf32},   {"forward_dtype", forward_dtype},
            {"hidden", hidden},
            {"ffn", ffn},           {"heads", heads},       {"seqlen", seqlen}, {"batch_tokens", tokens},
            {"nsamples", nsamples}, {"batches", batches},   {"repeats", repeats}};
  std::cerr << "bench_layer: " << device << " hidden " << hidden << " ffn " << ffn << ", batches of " << tokens
            << " tokens x " << batches << "\n";

  // ---- ceilings ----
  {
    const std::int64_t n = std::min<std::int64_t>(8192, hidden);
    Tensor a = random_on(be, {n, n}, 1), b = random_on(be, {n, n}, 2), c = be.empty({n, n});
    BackendOptions plain = bo;
    plain.tf32_forward = plain.tf32_hessian = false;
    auto fp32 = make_backend(device, plain);
    const double s = timed(*fp32, repeats, [&] { fp32->gemm(Trans::no, Trans::no, 1.0f, a, b, 0.0f, c); });
    r["ceiling"]["gemm_fp32_tflops"] = 2.0 * n * n * n / s / 1e12;
    if (tf32 != "off") {
      const double s2 = timed(be, repeats, [&] { be.gemm(Trans::no, Trans::no, 1.0f, a, b, 0.0f, c); });
      r["ceiling"]["gemm_tf32_tflops"] = 2.0 * n * n * n / s2 / 1e12;
    }
    if (fdt != DType::f32) {  // the tensor-core GEMM of 2-byte operands (fp32 sums), as linear runs it
      Tensor a2 = random_on(be, {n, n}, 1, 1.0f, fdt), b2 = random_on(be, {n, n}, 2, 1.0f, fdt);
      Tensor c2 = be.empty({n, n}, fdt);
      const double s3 = timed(be, repeats, [&] { be.linear(a2, b2, nullptr, c2); });
      r["ceiling"]["gemm_" + forward_dtype + "_tflops"] = 2.0 * n * n * n / s3 / 1e12;
    }
    const std::int64_t m = 256 << 20;  // 1 GiB of floats
    Tensor x = be.zeros({m}), y = be.empty({m});
    const double sc = timed(be, repeats, [&] { be.copy(x, y); });
    r["ceiling"]["copy_gbps"] = 2.0 * 4.0 * m / sc / 1e9;  // bytes read + written
    Tensor hh = Tensor::empty({64 << 20}, DType::f16);   // 128 MB of fp16, as a stored layer streams in
    std::memset(hh.raw(), 0, hh.nbytes());
    const double su = timed(be, repeats, [&] { be.upload(hh); });
    r["ceiling"]["upload_gbps"] = static_cast<double>(hh.nbytes()) / su / 1e9;
  }
  const double gemm_rate = r["ceiling"]["gemm_fp32_tflops"].get<double>() * 1e12;
  const double fwd_rate = (fdt != DType::f32 ? r["ceiling"]["gemm_" + forward_dtype + "_tflops"]
                           : tf32 != "off" ? r["ceiling"]["gemm_tf32_tflops"]
                                           : r["ceiling"]["gemm_fp32_tflops"])
                              .get<double>() *
                          1e12;
  const double copy_bw = r["ceiling"]["copy_gbps"].get<double>() * 1e9;
  std::cerr << "  ceilings: " << r["ceiling"].dump() << "\n";

  // ---- statistics: one batch's SYRK and f64 sum, for each input width ----
  double hess_layer = 0, sum_layer = 0;
  for (const auto& [d, count] : std::vector<std::pair<std::int64_t, int>>{{hidden, 3}, {ffn, 1}}) {
    Tensor x = random_on(be, {tokens, d}, 10 + d, 1.0f, fdt);
    Tensor h = be.empty({d, d});
    Tensor acc = be.zeros({d * (d + 1) / 2}, DType::f64);
    const double s_syrk = timed(be, repeats, [&] { be.syrk(1.0f, x, 0.0f, h); });
    const double s_sum = timed(be, repeats, [&] { be.accumulate_upper_f64(h, acc); });
    // Useful FLOPs (one triangle); the 2-byte path computes both triangles on tensor cores, so its
    // ceiling is half the tensor-core rate in these units.
    const double flops = static_cast<double>(tokens) * d * (d + 1);
    const double syrk_ceiling = fdt != DType::f32 ? fwd_rate / 2 : gemm_rate;
    const double bytes = 4.0 * d * d / 2 + 16.0 * d * (d + 1) / 2;  // read the upper fp32, read+write the f64
    r["hessian"].push_back({{"width", d},
                            {"per_layer", count},
                            {"syrk_s", s_syrk},
                            {"syrk_tflops", flops / s_syrk / 1e12},
                            {"syrk_vs_ceiling", flops / s_syrk / syrk_ceiling},
                            {"sum_s", s_sum},
                            {"sum_gbps", bytes / s_sum / 1e9},
                            {"sum_vs_copy", bytes / s_sum / copy_bw}});
    hess_layer += count * s_syrk * batches;
    sum_layer += count * s_sum * batches;
    std::cerr << "  hessian " << r["hessian"].back().dump() << "\n";
  }

  // ---- factorisation and sweep per weight ----
  double factor_layer = 0, sweep_layer = 0;
  struct Lin {
    const char* name;
    std::int64_t rows, cols;
  };
  const std::vector<Lin> lins = {{"q_proj", hidden, hidden}, {"k_proj", hidden, hidden}, {"v_proj", hidden, hidden},
                                 {"out_proj", hidden, hidden}, {"fc1", ffn, hidden},        {"fc2", hidden, ffn}};
  std::map<std::int64_t, std::pair<double, double>> fact_by_width;  // width -> (seconds, tflops)
  for (const std::int64_t d : {hidden, ffn}) {
    // A Hessian of a few thousand random tokens (rank-deficient at width ffn; the 1% damping of the
    // preparation makes it definite, as in a real run).
    Tensor x = random_on(be, {std::min<std::int64_t>(tokens, 2 * d), d}, 20 + d);
    Tensor h = be.empty({d, d}), work = be.empty({d, d});
    be.syrk(1.0f / static_cast<float>(x.size(0)), x, 0.0f, h);
    be.hessian_prepare(h, nullptr, 0.01f);
    // As the prune makes it: a factor at least split_width wide by the shared path (here on one
    // rank; the projection below divides its panels over the GPUs).
    const bool shared = split_width > 0 && d >= split_width;
    dist::SelfComm self;
    std::vector<double> t;
    for (int rep = 0; rep < repeats + 1; ++rep) {
      be.copy(h, work);
      be.synchronize();
      Timer tm;
      const bool ok =
          shared ? prune::shared_inverse_cholesky_upper(be, work, tile, self) : be.inverse_cholesky_upper(work);
      be.synchronize();
      if (!ok) {
        std::cerr << "factorisation failed at width " << d << "\n";
        return 1;
      }
      if (rep > 0) t.push_back(tm.seconds());  // the first is the warm-up
    }
    const double s = median(t);
    const double flops = 2.0 * d * static_cast<double>(d) * d / 3.0;  // potrf n³/3 + trtri n³/3
    fact_by_width[d] = {s, flops / s / 1e12};
    r["factor"].push_back({{"width", d}, {"s", s}, {"tflops", flops / s / 1e12}, {"vs_gemm", flops / s / gemm_rate},
                           {"shared", shared}});
    std::cerr << "  factor " << r["factor"].back().dump() << "\n";
    // The sweeps of the weights with this input width, against this factor.
    for (const auto& l : lins) {
      if (l.cols != d) continue;
      Tensor w0 = random_on(be, {l.rows, l.cols}, 30 + l.rows, 0.02f);
      Tensor w = be.empty({l.rows, l.cols}), mask = be.empty({l.rows, l.cols}, DType::u8);
      Tensor losses = be.zeros({l.rows}, DType::f64);
      prune::SweepOptions so;
      so.pattern = prune::Pattern::unstructured(0.5);
      so.blocksize = 128;
      std::vector<double> ts;
      for (int rep = 0; rep < repeats + 1; ++rep) {
        be.copy(w0, w);
        be.synchronize();
        Timer tm;
        prune::sparsegpt_sweep(be, w, work, so, mask, losses);
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
                            {"vs_gemm", flops / s / gemm_rate}});
      sweep_layer += s;
      std::cerr << "  sweep " << r["sweep"].back().dump() << "\n";
    }
  }

  // One factorisation per input group (q/k/v share theirs), as the prune does.
  factor_layer = 3 * fact_by_width[hidden].first + fact_by_width[ffn].first;

  // ---- forward of one batch through the layer (random weights) ----
  double fwd_layer = 0;
  {
    const auto spec = opt_spec(hidden, ffn, heads, seqlen);
    model::LayerWeights lw;
    std::uint64_t seed = 100;
    for (const auto& l : spec.linears()) {
      lw.tensors[l.name + ".weight"] = random_on(be, {l.out, l.in}, ++seed, 0.02f, fdt);
      if (l.bias) lw.tensors[l.name + ".bias"] = random_on(be, {l.out}, ++seed, 0.02f, fdt);
    }
    for (const auto& n : spec.layer_norm_tensors()) lw.tensors[n] = random_on(be, {hidden}, ++seed, 1.0f, fdt);
    Tensor x0 = random_on(be, {tokens, hidden}, 7, 1.0f, fdt), x = be.empty({tokens, hidden}, fdt);
    std::vector<double> t;
    for (int rep = 0; rep < repeats + 1; ++rep) {
      be.copy(x0, x);
      be.synchronize();
      Timer tm;
      model::decoder_layer_forward(be, spec, lw, x, batch, seqlen, nullptr, nullptr, nullptr);
      be.synchronize();
      if (rep > 0) t.push_back(tm.seconds());
    }
    const double s = median(t);
    const double lin_flops = 2.0 * tokens * (4.0 * hidden * hidden + 2.0 * hidden * ffn);
    const double att_flops = 4.0 * batch * seqlen * static_cast<double>(seqlen) * hidden;  // q·kᵀ and P·V, full square
    r["forward"] = {{"s", s},
                    {"tflops", (lin_flops + att_flops) / s / 1e12},
                    {"vs_gemm", (lin_flops + att_flops) / s / fwd_rate},
                    {"flops", lin_flops + att_flops}};
    fwd_layer = 2 * s * batches;  // statistics pass + propagation pass
    std::cerr << "  forward " << r["forward"].dump() << "\n";
  }

  // ---- the layer and the model ----
  const double layer_bytes = 2.0 * (4.0 * hidden * hidden + 2.0 * hidden * ffn);  // fp16 weights
  const double load = layer_bytes / (r["ceiling"]["upload_gbps"].get<double>() * 1e9);
  const double one = hess_layer + sum_layer + factor_layer + sweep_layer + fwd_layer + load;
  r["per_layer_1gpu_s"] = {{"hessian", hess_layer}, {"f64_sum", sum_layer}, {"factor", factor_layer},
                           {"sweep", sweep_layer},  {"forward", fwd_layer}, {"load", load},
                           {"total", one}};
  // N GPUs, data parallel: tokens (statistics, sums, forwards) and weight rows (sweeps) split N
  // ways; the factorisations as SharedFactors makes them: a shared factor (fc2's, at least
  // split_width wide) split by panels, its measured one-rank time scaled by its critical path at
  // N ranks (prune::shared_factor_cost; the broadcasts' latency is not counted), the whole ones
  // (the three of width hidden) each to the least loaded rank and broadcast from there (4 d²
  // bytes); every rank loads every weight; the float64 Hessians are all-reduced (ring: 2 (N-1)/N
  // of their bytes at the assumed link bandwidth) and the fp16 pruned rows all-gathered.
  const double hess_bytes = 8.0 * (3.0 * hidden * (hidden + 1) / 2 + ffn * (ffn + 1.0) / 2);
  std::vector<double> loads(static_cast<std::size_t>(gpus), 0.0), recv(static_cast<std::size_t>(gpus), 0.0);
  std::vector<std::pair<std::int64_t, double>> whole;  // (width, seconds) of the factors made whole
  for (const std::int64_t d : {hidden, hidden, hidden, ffn}) {
    if (split_width > 0 && d >= split_width) {
      const double all = prune::shared_factor_cost(d, tile, 1, 0).flops;
      for (int g = 0; g < gpus; ++g) {
        const auto c = prune::shared_factor_cost(d, tile, gpus, g);
        loads[static_cast<std::size_t>(g)] += fact_by_width[d].first * c.critical_flops / all;
        recv[static_cast<std::size_t>(g)] += c.recv_bytes;
      }
    } else {
      whole.push_back({d, fact_by_width[d].first});
    }
  }
  std::sort(whole.begin(), whole.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (const auto& [d, sec] : whole) {
    const auto g = static_cast<std::size_t>(std::min_element(loads.begin(), loads.end()) - loads.begin());
    loads[g] += sec;
    for (std::size_t o = 0; o < recv.size(); ++o)
      if (o != g) recv[o] += 4.0 * static_cast<double>(d) * static_cast<double>(d);
  }
  const double factor_share = *std::max_element(loads.begin(), loads.end());
  const double ring = 2.0 * (gpus - 1) / gpus;
  const double comm = (ring * hess_bytes + (gpus - 1.0) / gpus * layer_bytes + *std::max_element(recv.begin(), recv.end())) /
                      (link_gbps * 1e9);
  const double many = (hess_layer + sum_layer + fwd_layer + sweep_layer) / gpus + factor_share + load + comm;
  r["per_layer_ngpu_s"] = {{"gpus", gpus},
                           {"comm", comm},
                           {"factor_busiest_rank", factor_share},
                           {"total", many},
                           {"link_gbps_assumed", link_gbps}};
  r["projection"] = {{"layers", layers},
                     {"hours_1gpu", one * layers / 3600},
                     {"hours_ngpu", many * layers / 3600},
                     {"gpus", gpus},
                     {"reference", "SparseGPT: OPT-175B in about 4-4.5 h on one A100 80GB (Frantar & Alistarh 2023)"},
                     {"not_included", "reading the checkpoint from disk, the final evaluation"}};
  std::cout << r.dump(2) << "\n";
  if (!out.empty()) std::ofstream(out) << r.dump(2) << "\n";
  return 0;
}
