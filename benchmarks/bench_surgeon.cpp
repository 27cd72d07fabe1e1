// LLM Surgeon's phases on one OPT decoder layer of any width (default OPT-13B: hidden 5120, ffn
// 20480, 40 heads) on the CPU backend, each against a ceiling measured in the same run:
//   forward, backward  the layer's forward with its cache and its backward on one batch, vs the
//                      sgemm rate applied to their GEMM FLOPs (2·params·tokens each: the backward
//                      forms input gradients only);
//   factors            the Kronecker factor sums of every linear (A per input group, G per linear)
//                      over that batch, vs ssyrk of the same shapes;
//   inverses           the float64 damped inverses of every linear's A and G (n³ FLOPs each), vs
//                      those FLOPs at the rate of LAPACK's dpotrf on the same matrix (threaded);
//   costs, selection   element costs of every linear and the global selection, vs nth_element
//                      over as many values (the least a selection can do);
//   updates            the correlated element updates at --sparsity with --max-correlate chunks,
//                      vs the chunks' factorisations alone, at the throughput of single-threaded
//                      spotrf calls side by side on every thread (as the chunks are factorised).
// Medians over --repeats (the inverses and updates once: minutes at 20480); JSON on stdout and
// --out. Synthetic, well-conditioned data (random inputs, weights and gradients).
#include <cblas.h>
#include <lapacke.h>
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <vector>

#include "bench_common.hpp"
#include "scalpel/app/run_control.hpp"
#include "scalpel/backend/backend.hpp"
#include "scalpel/core/timer.hpp"
#include "scalpel/model/model.hpp"
#include "scalpel/prune/kfac.hpp"
#include "scalpel/prune/surgeon.hpp"

using namespace scalpel;
using nlohmann::json;
namespace sg = prune::surgeon;

namespace {

void fill_random(float* p, std::int64_t n, std::uint64_t seed, float scale) {
  std::uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (std::int64_t i = 0; i < n; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    p[i] = scale * (static_cast<float>(static_cast<std::int64_t>(s >> 40)) / 8388608.0f - 1.0f);
  }
}

Tensor random(Shape shape, std::uint64_t seed, float scale = 1.0f) {
  Tensor h = Tensor::empty(std::move(shape));
  fill_random(h.f32(), h.numel(), seed, scale);
  return h;
}

template <class F>
double timed(int repeats, F&& f) {
  return bench::median_seconds(repeats, f);
}

model::ModelSpec opt_spec(std::int64_t hidden, std::int64_t ffn, std::int64_t heads, std::int64_t seqlen) {
  const json cfg = {{"model_type", "opt"}, {"hidden_size", hidden}, {"ffn_dim", ffn}, {"num_attention_heads", heads},
                    {"num_hidden_layers", 1}, {"vocab_size", 50272}, {"max_position_embeddings", seqlen},
                    {"word_embed_proj_dim", hidden}, {"do_layer_norm_before", true},
                    {"activation_function", "relu"}, {"enable_bias", true}};
  return model::ModelSpec::from_config(cfg, "bench_surgeon");
}

double sgemm_rate(int repeats) {
  const int n = 4096;
  std::vector<float> a(static_cast<std::size_t>(n) * n, 0.5f), b(a), c(a.size());
  const double s = timed(repeats, [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
  });
  return 2.0 * n * n * n / s;
}

// Damped SPD matrix X Xᵀ/k + 0.1 I of size n, float64.
Tensor spd64(std::int64_t n, std::uint64_t seed) {
  const std::int64_t k = std::max<std::int64_t>(n, 256);
  const Tensor x = random({n, k}, seed);
  std::vector<float> h(static_cast<std::size_t>(n * n));
  cblas_ssyrk(CblasRowMajor, CblasUpper, CblasNoTrans, static_cast<int>(n), static_cast<int>(k), 1.0f / k, x.f32(),
              static_cast<int>(k), 0.0f, h.data(), static_cast<int>(n));
  Tensor out = Tensor::empty({n, n}, DType::f64);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = i; j < n; ++j)
      out.f64()[i * n + j] = out.f64()[j * n + i] = h[static_cast<std::size_t>(i * n + j)] + (i == j ? 0.1 : 0.0);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  app::ensure_passive_wait_policy(argv);
  CLI::App app("Per-phase time of LLM Surgeon on one OPT layer (CPU), with same-run ceilings");
  std::int64_t hidden = 5120, ffn = 20480, heads = 40, seqlen = 512, max_correlate = 2000;
  double sparsity = 0.5;
  int repeats = 3;
  std::string out;
  app.add_option("--hidden", hidden);
  app.add_option("--ffn", ffn);
  app.add_option("--heads", heads);
  app.add_option("--seqlen", seqlen, "tokens of the timed batch (one sequence)");
  app.add_option("--sparsity", sparsity, "fraction removed by the timed update");
  app.add_option("--max-correlate", max_correlate);
  app.add_option("--repeats", repeats);
  app.add_option("--out", out, "JSON file");
  CLI11_PARSE(app, argc, argv);

  auto bep = make_cpu_backend(0);
  Backend& be = *bep;
  const auto spec = opt_spec(hidden, ffn, heads, seqlen);
  const int threads = omp_get_max_threads();
  json r = {{"hidden", hidden}, {"ffn", ffn}, {"heads", heads}, {"tokens", seqlen}, {"sparsity", sparsity},
            {"max_correlate", max_correlate}, {"threads", threads}, {"repeats", repeats}};
  const double gemm = sgemm_rate(repeats);
  r["ceiling"]["sgemm_gflops"] = gemm / 1e9;
  std::cerr << "bench_surgeon: hidden " << hidden << " ffn " << ffn << ", sgemm " << gemm / 1e9 << " GFLOP/s\n";

  // ---- forward and backward of one layer ----
  model::LayerWeights w;
  for (const auto& l : spec.linears()) {
    w.tensors[l.name + ".weight"] = be.upload(random({l.out, l.in}, 10 + l.out, 1.0f / std::sqrt(float(l.in))));
    w.tensors[l.name + ".bias"] = be.upload(random({l.out}, 20 + l.out, 0.01f));
  }
  for (const auto& n : spec.layer_norm_tensors()) {
    Tensor t = Tensor::empty({hidden});
    for (std::int64_t i = 0; i < hidden; ++i) t.f32()[i] = n.ends_with(".weight") ? 1.0f : 0.0f;
    w.tensors[n] = be.upload(t);
  }
  const Tensor x0 = random({seqlen, hidden}, 3);
  double layer_params = 0;
  for (const auto& l : spec.linears()) layer_params += static_cast<double>(l.out) * static_cast<double>(l.in);
  model::LayerCache cache;
  const double fwd = timed(repeats, [&] {
    Tensor x = x0.clone();
    cache = model::LayerCache();
    model::decoder_layer_forward(be, spec, w, x, 1, seqlen, nullptr, nullptr, &cache);
  });
  const Tensor dy = random({seqlen, hidden}, 4);
  std::map<std::string, Tensor> grads;
  model::GradTap tap = [&](const std::string& name, const Tensor& g) { grads[name] = g.clone(); };
  const double bwd = timed(repeats, [&] {
    Tensor dx = dy.clone();
    model::decoder_layer_backward(be, spec, w, cache, dx, 1, seqlen, nullptr, &tap);
  });
  const double lin_flops = 2.0 * layer_params * static_cast<double>(seqlen);
  r["phases"]["forward"] = {{"seconds", fwd}, {"ceiling_s", lin_flops / gemm}, {"ratio", lin_flops / gemm / fwd}};
  r["phases"]["backward"] = {{"seconds", bwd}, {"ceiling_s", lin_flops / gemm}, {"ratio", lin_flops / gemm / bwd}};

  // ---- factor sums over the batch: A per input group, G per linear ----
  dist::SelfComm self;
  double syrk_flops = 0;
  std::vector<std::pair<std::int64_t, const Tensor*>> inputs{{hidden, &cache.norm1}, {hidden, &cache.attn},
                                                             {hidden, &cache.norm2}, {ffn, &cache.ffn_act}};
  const double fac = timed(repeats, [&] {
    syrk_flops = 0;
    for (const auto& [d, x] : inputs) {
      prune::KroneckerFactor a(be, d, true, prune::Accumulation::sum, "A");
      a.add(*x);
      syrk_flops += static_cast<double>(d) * d * seqlen;
    }
    for (const auto& l : spec.linears()) {
      prune::KroneckerFactor g(be, l.out, false, prune::Accumulation::sum, "G");
      g.add(grads.at(l.name));
      syrk_flops += static_cast<double>(l.out) * l.out * seqlen;
    }
  });
  const double syrk_ceiling = timed(repeats, [&] {
    for (const auto& [d, x] : inputs) {
      std::vector<float> h(static_cast<std::size_t>(d * d));
      cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, static_cast<int>(d), static_cast<int>(seqlen), 1.0f,
                  x->f32(), static_cast<int>(d), 0.0f, h.data(), static_cast<int>(d));
    }
    for (const auto& l : spec.linears()) {
      std::vector<float> h(static_cast<std::size_t>(l.out * l.out));
      cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, static_cast<int>(l.out), static_cast<int>(seqlen), 1.0f,
                  grads.at(l.name).f32(), static_cast<int>(l.out), 0.0f, h.data(), static_cast<int>(l.out));
    }
  });
  r["phases"]["factors"] = {{"seconds", fac}, {"ceiling_s", syrk_ceiling}, {"ratio", syrk_ceiling / fac},
                            {"gflops", syrk_flops / fac / 1e9}};

  // ---- float64 inverses: one per distinct factor size of the layer's linears (A: in + 1, G: out) ----
  std::map<std::int64_t, int> sizes;
  for (const auto& l : spec.linears()) {
    ++sizes[l.in + 1];
    ++sizes[l.out];
  }
  double inv_s = 0, inv_ceiling = 0;
  json per_size = json::array();
  for (const auto& [n, count] : sizes) {
    const Tensor m = spd64(n, 5 + n);
    Tensor a = m.clone();
    Timer t;
    if (!be.spd_inverse_f64(a)) std::cerr << "inverse failed at " << n << "\n";
    const double mine = t.seconds();
    // Ceiling: the inverse's n³ FLOPs (Cholesky, triangular inverse, LᵀL: n³/3 each) at the rate
    // of LAPACK's own float64 Cholesky (dpotrf, threaded OpenBLAS) on the same matrix.
    Tensor b = m.clone();
    Timer t2;
    LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', static_cast<int>(n), b.f64(), static_cast<int>(n));
    const double potrf = t2.seconds();
    const double ceiling = 3 * potrf;
    inv_s += mine * count;
    inv_ceiling += ceiling * count;
    per_size.push_back({{"n", n}, {"count", count}, {"seconds", mine}, {"dpotrf_s", potrf},
                        {"dpotrf_gflops", std::pow(static_cast<double>(n), 3) / 3 / potrf / 1e9}});
  }
  r["phases"]["inverses_f64"] = {{"seconds", inv_s}, {"ceiling_s", inv_ceiling}, {"ratio", inv_ceiling / inv_s},
                                 {"sizes", per_size}};

  // ---- costs, selection and updates of every linear (inverses from synthetic factors) ----
  sg::Options o;
  o.max_correlate = max_correlate;
  std::vector<sg::Linear> lins;
  for (const auto& l : spec.linears()) {
    sg::Linear x;
    x.name = l.name;
    x.w = random({l.out, l.in + 1}, 30 + l.out, 1.0f / std::sqrt(float(l.in)));
    x.has_bias = true;
    x.a = spd64(l.in + 1, 40 + l.in);
    x.g = spd64(l.out, 50 + l.out);
    lins.push_back(std::move(x));
  }
  std::vector<sg::Scored> sc;
  Timer ts;
  for (auto& l : lins) sc.push_back(sg::score(be, l, o));
  const double score_s = ts.seconds();
  r["phases"]["costs"] = {{"seconds", std::max(0.0, score_s - inv_s)}, {"note", "score() minus the inverses"}};
  double tau = 0;
  std::vector<sg::Removal> rem;
  std::int64_t ncost = 0;
  for (const auto& s : sc) ncost += static_cast<std::int64_t>(s.cost.size());
  const double sel = timed(repeats, [&] { rem = sg::select(lins, sc, o, sparsity, tau); });
  const double nth = timed(repeats, [&] {
    std::vector<float> all;
    all.reserve(static_cast<std::size_t>(ncost));
    for (const auto& s : sc) all.insert(all.end(), s.cost.begin(), s.cost.end());
    std::nth_element(all.begin(), all.begin() + static_cast<std::int64_t>(sparsity * ncost), all.end());
  });
  r["phases"]["selection"] = {{"seconds", sel}, {"ceiling_s", nth}, {"ratio", nth / sel}, {"values", ncost}};
  // Ceiling of the updates: every chunk's factorisation at the single-threaded spotrf rate.
  std::int64_t removed = 0;
  for (const auto& x : rem) removed += x.removed;
  const Tensor c64 = spd64(max_correlate, 7);
  std::vector<float> c32(static_cast<std::size_t>(max_correlate * max_correlate));
  for (std::size_t i = 0; i < c32.size(); ++i) c32[i] = static_cast<float>(c64.f64()[i]);
  // Throughput of single-threaded spotrf calls running side by side on every thread, as the
  // chunks are factorised: seconds per matrix.
  const int side_by_side = 2 * threads;
  const double batch_s = timed(repeats, [&] {
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < side_by_side; ++i) {
      std::vector<float> m = c32;
      LAPACKE_spotrf(LAPACK_ROW_MAJOR, 'L', static_cast<int>(max_correlate), m.data(), static_cast<int>(max_correlate));
    }
  });
  const double potrf1 = batch_s / side_by_side;
  Timer tu;
  for (std::size_t i = 0; i < lins.size(); ++i) sg::update(be, lins[i], sc[i], rem[i], o);
  const double upd = tu.seconds();
  const double chunks = static_cast<double>(removed) / static_cast<double>(max_correlate);
  const double upd_ceiling = chunks * potrf1;
  r["phases"]["updates"] = {{"seconds", upd}, {"ceiling_s", upd_ceiling}, {"ratio", upd_ceiling / upd},
                            {"removed", removed}, {"chunks_at_full_size", chunks}, {"spotrf_per_chunk_s", potrf1}};
  std::cout << r.dump(2) << "\n";
  if (!out.empty()) std::ofstream(out) << r.dump(2) << "\n";
  return 0;
}
