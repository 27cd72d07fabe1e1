// LLM Surgeon's phases on one OPT decoder layer of any width (default OPT-13B: hidden 5120, ffn
// 20480, 40 heads) on the CPU backend (--device cuda: the GPU's), each against a ceiling measured
// in the same run on the same device:
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
// On cuda the ceilings are the backend's own: its sgemm rate, its syrk, three times its fp32
// Cholesky (cuSOLVER spotrf) for the float64 inverse (an H100's FP64 tensor-core rate equals its
// FP32 one), and the per-matrix time of its batched chunk factorisation.
// Medians over --repeats (the inverses and updates once: minutes at 20480); JSON on stdout and
// --out. Synthetic, well-conditioned data (random inputs, weights and gradients).
#include <cblas.h>
#include <lapacke.h>
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
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

// Median seconds of f, the device's queue drained before each clock stops.
template <class F>
double timed(Backend& be, int repeats, F&& f) {
  return bench::median_seconds(repeats, [&] {
    f();
    be.synchronize();
  });
}

model::ModelSpec opt_spec(std::int64_t hidden, std::int64_t ffn, std::int64_t heads, std::int64_t seqlen) {
  const json cfg = {{"model_type", "opt"}, {"hidden_size", hidden}, {"ffn_dim", ffn}, {"num_attention_heads", heads},
                    {"num_hidden_layers", 1}, {"vocab_size", 50272}, {"max_position_embeddings", seqlen},
                    {"word_embed_proj_dim", hidden}, {"do_layer_norm_before", true},
                    {"activation_function", "relu"}, {"enable_bias", true}};
  return model::ModelSpec::from_config(cfg, "bench_surgeon");
}

// The backend's sgemm rate (FLOP/s) on square matrices (4096 on cpu, 8192 on a GPU), warmed up.
double sgemm_rate(Backend& be, int repeats) {
  const std::int64_t n = be.device() == Device::cpu ? 4096 : 8192;
  const Tensor a = be.upload(random({n, n}, 1)), b = be.upload(random({n, n}, 2));
  Tensor c = be.empty({n, n});
  be.gemm(Trans::no, Trans::no, 1.0f, a, b, 0.0f, c);
  const double s = timed(be, repeats, [&] { be.gemm(Trans::no, Trans::no, 1.0f, a, b, 0.0f, c); });
  return 2.0 * static_cast<double>(n) * n * n / s;
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

struct Setup {
  Backend& be;
  model::ModelSpec spec;
  std::int64_t hidden, ffn, seqlen, max_correlate;
  double sparsity;
  int repeats;
};

// The layer's weights on the backend (random, scaled by 1/sqrt(fan-in); norms at 1 and 0).
model::LayerWeights layer_weights(const Setup& st) {
  model::LayerWeights w;
  for (const auto& l : st.spec.linears()) {
    w.tensors[l.name + ".weight"] = st.be.upload(random({l.out, l.in}, 10 + l.out, 1.0f / std::sqrt(float(l.in))));
    w.tensors[l.name + ".bias"] = st.be.upload(random({l.out}, 20 + l.out, 0.01f));
  }
  for (const auto& n : st.spec.layer_norm_tensors()) {
    Tensor t = Tensor::empty({st.hidden});
    for (std::int64_t i = 0; i < st.hidden; ++i) t.f32()[i] = n.ends_with(".weight") ? 1.0f : 0.0f;
    w.tensors[n] = st.be.upload(t);
  }
  return w;
}

// Forward with its cache and backward of one sequence; the cache and the linears' output
// gradients are left for the factor sums.
void phase_passes(const Setup& st, double gemm, model::LayerCache& cache, std::map<std::string, Tensor>& grads,
                  json& r) {
  Backend& be = st.be;
  const auto w = layer_weights(st);
  const Tensor x0 = be.upload(random({st.seqlen, st.hidden}, 3)), dy = be.upload(random({st.seqlen, st.hidden}, 4));
  double layer_params = 0;
  for (const auto& l : st.spec.linears()) layer_params += static_cast<double>(l.out) * static_cast<double>(l.in);
  const double fwd = timed(be, st.repeats, [&] {
    Tensor x = clone_on(be, x0);
    cache = model::LayerCache();
    model::decoder_layer_forward(be, st.spec, w, x, 1, st.seqlen, nullptr, nullptr, &cache);
  });
  model::GradTap tap = [&](const std::string& name, const Tensor& g) { grads[name] = clone_on(be, g); };
  const double bwd = timed(be, st.repeats, [&] {
    Tensor dx = clone_on(be, dy);
    model::decoder_layer_backward(be, st.spec, w, cache, dx, 1, st.seqlen, nullptr, &tap);
  });
  const double ceiling = 2.0 * layer_params * static_cast<double>(st.seqlen) / gemm;
  r["phases"]["forward"] = {{"seconds", fwd}, {"ceiling_s", ceiling}, {"ratio", ceiling / fwd}};
  r["phases"]["backward"] = {{"seconds", bwd}, {"ceiling_s", ceiling}, {"ratio", ceiling / bwd}};
}

// Kronecker factor sums over the batch (A per input group, G per linear) vs plain syrk of the same
// shapes: OpenBLAS on cpu, the backend's syrk on a GPU.
void phase_factors(const Setup& st, const model::LayerCache& cache, const std::map<std::string, Tensor>& grads,
                   json& r) {
  Backend& be = st.be;
  std::vector<const Tensor*> xs{&cache.norm1, &cache.attn, &cache.norm2, &cache.ffn_act};
  for (const auto& l : st.spec.linears()) xs.push_back(&grads.at(l.name));
  double flops = 0;
  for (const auto* x : xs) flops += static_cast<double>(x->size(1)) * x->size(1) * st.seqlen;
  const double fac = timed(be, st.repeats, [&] {
    for (std::size_t i = 0; i < xs.size(); ++i) {
      prune::KroneckerFactor f(be, xs[i]->size(1), i < 4, prune::Accumulation::sum, "factor");
      f.add(*xs[i]);
    }
  });
  const double ceiling = timed(be, st.repeats, [&] {
    for (const auto* x : xs) {
      const auto d = x->size(1);
      if (be.device() == Device::cpu) {
        std::vector<float> h(static_cast<std::size_t>(d * d));
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, static_cast<int>(d), static_cast<int>(st.seqlen), 1.0f,
                    x->f32(), static_cast<int>(d), 0.0f, h.data(), static_cast<int>(d));
      } else {
        Tensor h = be.empty({d, d});
        be.syrk(1.0f, *x, 0.0f, h);
      }
    }
  });
  r["phases"]["factors"] = {{"seconds", fac}, {"ceiling_s", ceiling}, {"ratio", ceiling / fac},
                            {"gflops", flops / fac / 1e9}};
}

// Seconds of one Cholesky factorisation of the n x n SPD m: LAPACK's dpotrf (threaded) on cpu,
// the backend's fp32 one (cuSOLVER spotrf) on a GPU.
double potrf_seconds(Backend& be, const Tensor& m) {
  const auto n = m.size(0);
  if (be.device() == Device::cpu) {
    Tensor b = m.clone();
    Timer t;
    LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', static_cast<int>(n), b.f64(), static_cast<int>(n));
    return t.seconds();
  }
  Tensor b = be.upload(m);
  be.synchronize();
  Timer t;
  be.cholesky(b, false);
  be.synchronize();
  return t.seconds();
}

// The float64 damped inverses: one per distinct factor size of the layer's linears (A: in + 1,
// G: out), each against three factorisations of the same matrix (n³ FLOPs in all).
double phase_inverses(const Setup& st, json& r) {
  std::map<std::int64_t, int> sizes;
  for (const auto& l : st.spec.linears()) {
    ++sizes[l.in + 1];
    ++sizes[l.out];
  }
  double inv_s = 0, inv_ceiling = 0;
  json per_size = json::array();
  for (const auto& [n, count] : sizes) {
    const Tensor m = spd64(n, 5 + n);
    Tensor a = m.clone();
    Timer t;
    if (!st.be.spd_inverse_f64(a)) std::cerr << "inverse failed at " << n << "\n";
    const double mine = t.seconds();
    const double potrf = potrf_seconds(st.be, m);
    inv_s += mine * count;
    inv_ceiling += 3 * potrf * count;
    per_size.push_back({{"n", n}, {"count", count}, {"seconds", mine}, {"potrf_s", potrf},
                        {"potrf_gflops", std::pow(static_cast<double>(n), 3) / 3 / potrf / 1e9}});
  }
  r["phases"]["inverses_f64"] = {{"seconds", inv_s}, {"ceiling_s", inv_ceiling}, {"ratio", inv_ceiling / inv_s},
                                 {"ceiling", st.be.device() == Device::cpu ? "3 x LAPACK dpotrf" : "3 x cuSOLVER spotrf"},
                                 {"sizes", per_size}};
  return inv_s;
}

// Seconds per chunk factorisation of size n: single-threaded spotrf calls side by side on every
// thread (cpu), or the backend's batched factorisation of 8 chunks (GPU).
double chunk_potrf_seconds(const Setup& st, std::int64_t n) {
  const Tensor c64 = spd64(n, 7);
  Tensor c32 = Tensor::empty({n, n});
  for (std::int64_t i = 0; i < n * n; ++i) c32.f32()[i] = static_cast<float>(c64.f64()[i]);
  if (st.be.device() == Device::cpu) {
    const int side_by_side = 2 * omp_get_max_threads();
    const double batch_s = timed(st.be, st.repeats, [&] {
#pragma omp parallel for schedule(dynamic, 1)
      for (int i = 0; i < side_by_side; ++i) {
        Tensor m = c32.clone();
        LAPACKE_spotrf(LAPACK_ROW_MAJOR, 'L', static_cast<int>(n), m.f32(), static_cast<int>(n));
      }
    });
    return batch_s / side_by_side;
  }
  constexpr int kBatch = 8;
  std::vector<Tensor> ms(kBatch);
  std::vector<std::uint8_t> ok(kBatch);
  const double batch_s = timed(st.be, st.repeats, [&] {
    for (auto& m : ms) m = st.be.upload(c32);
    st.be.cholesky_batch(ms, ok);
  });
  return batch_s / kBatch;
}

// Costs, the global selection and the element updates of every linear, from synthetic factors.
void phase_updates(const Setup& st, double inv_s, json& r) {
  sg::Options o;
  o.max_correlate = st.max_correlate;
  std::vector<sg::Linear> lins;
  for (const auto& l : st.spec.linears()) {
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
  for (auto& l : lins) sc.push_back(sg::score(st.be, l, o));
  r["phases"]["costs"] = {{"seconds", std::max(0.0, ts.seconds() - inv_s)}, {"note", "score() minus the inverses"}};
  for (auto& l : lins) l.a = l.g = Tensor();
  double tau = 0;
  std::vector<sg::Removal> rem;
  std::int64_t ncost = 0;
  for (const auto& s : sc) ncost += static_cast<std::int64_t>(s.cost.size());
  const double sel = timed(st.be, st.repeats, [&] { rem = sg::select(lins, sc, o, st.sparsity, tau); });
  const double nth = timed(st.be, st.repeats, [&] {
    std::vector<float> all;
    all.reserve(static_cast<std::size_t>(ncost));
    for (const auto& s : sc) all.insert(all.end(), s.cost.begin(), s.cost.end());
    std::nth_element(all.begin(), all.begin() + static_cast<std::int64_t>(st.sparsity * ncost), all.end());
  });
  r["phases"]["selection"] = {{"seconds", sel}, {"ceiling_s", nth}, {"ratio", nth / sel}, {"values", ncost}};
  std::int64_t removed = 0;
  for (const auto& x : rem) removed += x.removed;
  const double potrf1 = chunk_potrf_seconds(st, st.max_correlate);
  Timer tu;
  for (std::size_t i = 0; i < lins.size(); ++i) sg::update(st.be, lins[i], sc[i], rem[i], o);
  st.be.synchronize();
  const double upd = tu.seconds();
  const double chunks = static_cast<double>(removed) / static_cast<double>(st.max_correlate);
  r["phases"]["updates"] = {{"seconds", upd}, {"ceiling_s", chunks * potrf1}, {"ratio", chunks * potrf1 / upd},
                            {"removed", removed}, {"chunks_at_full_size", chunks}, {"potrf_per_chunk_s", potrf1}};
}

}  // namespace

int main(int argc, char** argv) {
  app::ensure_passive_wait_policy(argv);
  CLI::App app("Per-phase time of LLM Surgeon on one OPT layer, with same-run ceilings");
  std::int64_t hidden = 5120, ffn = 20480, heads = 40, seqlen = 512, max_correlate = 2000;
  double sparsity = 0.5;
  int repeats = 3;
  std::string out, device = "cpu";
  app.add_option("--hidden", hidden)->check(CLI::PositiveNumber);
  app.add_option("--ffn", ffn)->check(CLI::PositiveNumber);
  app.add_option("--heads", heads)->check(CLI::PositiveNumber);
  app.add_option("--seqlen", seqlen, "tokens of the timed batch (one sequence)")->check(CLI::PositiveNumber);
  app.add_option("--sparsity", sparsity,
                 "fraction removed by the timed update (the update grows with it: at OPT-13B widths 0.01 takes "
                 "minutes on 2 cores, 0.5 hours)")->check(CLI::Range(0.0, 1.0));
  app.add_option("--max-correlate", max_correlate)->check(CLI::PositiveNumber);
  app.add_option("--repeats", repeats)->check(CLI::PositiveNumber);
  app.add_option("--device", device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--out", out, "JSON file (default: stdout only)");
  CLI11_PARSE(app, argc, argv);
  return bench::guarded("bench_surgeon", [&] {
    auto bep = make_backend(device, 0);
    const Setup st{*bep, opt_spec(hidden, ffn, heads, seqlen), hidden, ffn, seqlen, max_correlate, sparsity, repeats};
    json r = {{"device", device}, {"hidden", hidden}, {"ffn", ffn}, {"heads", heads}, {"tokens", seqlen},
              {"sparsity", sparsity}, {"max_correlate", max_correlate}, {"threads", omp_get_max_threads()},
              {"repeats", repeats}};
    const double gemm = sgemm_rate(st.be, repeats);
    r["ceiling"]["sgemm_gflops"] = gemm / 1e9;
    std::cerr << "bench_surgeon: " << device << ", hidden " << hidden << " ffn " << ffn << ", sgemm " << gemm / 1e9
              << " GFLOP/s\n";
    {
      model::LayerCache cache;
      std::map<std::string, Tensor> grads;
      phase_passes(st, gemm, cache, grads, r);
      phase_factors(st, cache, grads, r);
    }
    const double inv_s = phase_inverses(st, r);
    phase_updates(st, inv_s, r);
    r["provenance"] = bench::provenance(argc, argv);
    bench::emit_json(r, out);
    return 0;
  });
}
