// `scalpel plan`: the per-rank figures against hand calculations on opt-mini (bytes read equal to
// the safetensors tensors' bytes, Hessians, gathered weights, communication, FLOPs), how the grid
// moves them (data ranks halve the activations, stages split the layers), OPT-175B on 8 x 8 GPUs
// fitting 80 GB per rank, refusals naming parallel.memory_gb, and the command end to end.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <numeric>

#include "scalpel/app/config.hpp"
#include "scalpel/app/export.hpp"
#include "scalpel/app/plan.hpp"
#include "scalpel/io/hf_checkpoint.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/io/safetensors.hpp"
#include "prune_test_util.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using I = std::int64_t;

namespace scalpel::test {
namespace {

using scalpel_test::Run;
using scalpel_test::run;

const fs::path kSource = SCALPEL_SOURCE_DIR;
const fs::path kOptMini = kSource / "models/opt-mini";
const fs::path kOpt175 = kSource / "configs/opt-175b";
const fs::path kYaml175 = kSource / "configs/opt-175b-8x8-gpu.yaml";

app::PlanInput input_for(const app::PlanModel& pm, app::Config cfg, int world) {
  app::PlanInput in;
  in.cfg = std::move(cfg);
  in.world = world;
  in.dtype_bytes = pm.dtype_bytes;
  in.dtype_name = pm.dtype_name;
  in.tensor_bytes = pm.tensor_bytes;
  return in;
}

// opt-mini with SparseGPT defaults: 128 windows x 512 tokens in chunks of 8.
app::Config mini_cfg(const std::vector<std::string>& extra = {}) {
  std::vector<std::string> overrides{"model=" + kOptMini.string(), "calibration.seqlen=512"};
  overrides.insert(overrides.end(), extra.begin(), extra.end());
  return app::load_config("", overrides);
}

json plan_of(const fs::path& model, const app::Config& cfg, int world) {
  const auto pm = app::load_plan_model(model.string());
  return app::make_plan(pm.spec, input_for(pm, cfg, world));
}

I mem(const json& p, int rank, const char* term) { return p["ranks"][rank]["memory"][term].get<I>(); }

std::string input_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::input) << e.what();
    return e.what();
  }
  return "no error";
}

TEST(Plan, OptMiniFiguresMatchHandCalculations) {
  const auto cfg = mini_cfg();
  const auto p = plan_of(kOptMini, cfg, 1);
  EXPECT_EQ(p["model"]["sizes_from"], "safetensors headers");
  const I d = 256, ffn = 1024, T = 512, tokens = 128 * T;

  // Bytes read by the only rank: exactly the bytes of the tensors in model.safetensors (the file
  // holds the layers, the embeddings and the final norm; the head is tied).
  const auto st = io::SafetensorsFile::open(kOptMini / "model.safetensors");
  I layer_bytes = 0, other_bytes = 0;
  for (const auto& t : st->header().tensors)
    (t.name.find(".layers.") != std::string::npos ? layer_bytes : other_bytes) += static_cast<I>(t.end - t.begin);
  const auto& io = p["ranks"][0]["io"];
  EXPECT_EQ(io["read_layers_bytes"].get<I>(), layer_bytes);
  EXPECT_EQ(io["read_embeddings_head_bytes"].get<I>(), other_bytes);
  EXPECT_EQ(io["read_bytes"].get<I>(), 10776576);  // the data section of model.safetensors
  EXPECT_EQ(p["model"]["stored_bytes"].get<I>(), 10776576);

  // (a) 128 x 512 tokens x 256 x fp32.
  EXPECT_EQ(mem(p, 0, "activations"), tokens * d * 4);
  // (b) the layer's parameters (linears, biases, 4 norm vectors) in fp32, twice.
  const I layer_params = 4 * d * d + 2 * d * ffn + 4 * d + ffn + d + 4 * d;
  EXPECT_EQ(mem(p, 0, "layer_weights"), 2 * layer_params * 4);
  // The next layer, prefetched as stored while this one works (4 layers of equal size).
  const I next_layer = layer_bytes / 4;
  EXPECT_EQ(mem(p, 0, "next_layer"), next_layer);
  EXPECT_EQ(mem(p, 0, "forward_temporaries"), 8 * T * ffn * 4 * 3);  // max(3 x 256, 1024) = ffn
  EXPECT_EQ(mem(p, 0, "attention_scores"), 8 * 4 * T * T * 4);
  // (c) Hessians of q/k/v, out_proj, fc1 (256 x 256) and fc2 (1024 x 1024), all at once: while
  // collected, a fp32 d x d batch scratch and the float64 sum over the upper triangle (8 bytes x
  // d(d+1)/2) each; then the fp32 Hessians.
  const I hessians = (3 * d * d + ffn * ffn) * 4;
  const I sums = 3 * 4 * d * (d + 1) + 4 * ffn * (ffn + 1);
  EXPECT_EQ(mem(p, 0, "statistics"), hessians + sums);
  // (d) the largest factorisation copy (fc2) and the largest row slice (one rank: whole matrices;
  // fc1 1024 x 256 and fc2 256 x 1024 tie): weights + mask + Err (rows x 128 blocksize).
  EXPECT_EQ(mem(p, 0, "factorisation"), ffn * ffn * 4);
  EXPECT_EQ(mem(p, 0, "sweep"), std::max(ffn * d * 5 + ffn * 128 * 4, d * ffn * 5 + d * 128 * 4));
  // (e) the gathered pruned weight: fp16 rows and 1-byte mask on the host, fp32 on the device.
  EXPECT_EQ(mem(p, 0, "gathered"), ffn * d * 7);
  // fp32 embeddings + positions (514 rows) + final norm; 4 layers fit the default 8 GB cache.
  EXPECT_EQ(mem(p, 0, "embeddings_head"), (8192 * d + 514 * d + 2 * d) * 4);
  EXPECT_EQ(mem(p, 0, "weight_cache"), 3 * layer_params * 4);
  // The peak: the statistics pass or the prune of fc2, whichever is larger.
  const I base = tokens * d * 4 + 2 * layer_params * 4 + next_layer + (8192 * d + 514 * d + 2 * d) * 4 + 3 * layer_params * 4;
  const I stats_phase = base + hessians + sums + 8 * T * ffn * 4 * 3 + 8 * 4 * T * T * 4;
  const I fc2_phase = base + hessians + ffn * ffn * 4 + (d * ffn * 5 + d * 128 * 4) + ffn * d * 7;
  EXPECT_EQ(mem(p, 0, "peak"), std::max(stats_phase, fc2_phase));
  EXPECT_EQ(p["peak"]["phase"], stats_phase > fc2_phase ? "statistics" : "prune fc2");

  // Communication: nothing to reduce or gather on one rank, but the buffers are what they are.
  const auto& c = p["ranks"][0]["comm_per_layer"];
  EXPECT_EQ(c["allreduce_bytes"].get<I>(), sums);  // the float64 sums
  EXPECT_EQ(c["allgather_bytes"].get<I>(), (4 * d * d + 2 * d * ffn) * 3);  // fp16 rows + 1-byte masks
  EXPECT_EQ(c["allreduce_sent_bytes"].get<double>(), 0);
  EXPECT_EQ(c["allgather_received_bytes"].get<double>(), 0);

  // FLOPs per layer: two forwards, syrk per group, 2/3 d^3 per group.
  const auto& f = p["ranks"][0]["flops_per_layer"];
  const double lin = 4.0 * d * d + 2.0 * d * ffn;
  EXPECT_DOUBLE_EQ(f["forward"].get<double>(), 2 * (2.0 * tokens * lin + 4.0 * tokens * T * d));
  EXPECT_DOUBLE_EQ(f["statistics"].get<double>(), double(tokens) * (3.0 * d * d + 1.0 * ffn * ffn));
  EXPECT_DOUBLE_EQ(f["factorisation"].get<double>(), 2.0 / 3 * (3.0 * d * d * d + 1.0 * ffn * ffn * ffn));
  EXPECT_TRUE(p["fits"].get<bool>());

  // Time: the reads of layers 1-3 overlap the work of the layer before (the prefetch), so a layer
  // costs the longer of its work and a read, and the whole job hides 3 of the 4 layer reads'
  // overlap with the work.
  const auto& sl = p["ranks"][0]["seconds_per_layer"];
  const double work = sl["compute"].get<double>() + sl["comm"].get<double>(), read = sl["read"].get<double>();
  EXPECT_DOUBLE_EQ(sl["total"].get<double>(), std::max(work, read));
  const auto& sj = p["ranks"][0]["seconds"];
  EXPECT_DOUBLE_EQ(sj["read_hidden"].get<double>(), 3 * std::min(work, read));
  EXPECT_NEAR(sj["total"].get<double>(),
              sj["compute"].get<double>() + sj["comm"].get<double>() + sj["read"].get<double>() - 3 * std::min(work, read),
              1e-12);
}

TEST(Plan, ConfigJsonAloneGivesTheSameBytesAsTheHeaders) {
  // A folder with only config.json: sizes from torch_dtype (float16) agree with the headers.
  const auto dir = fs::temp_directory_path() / ("scalpel_plan_cfgonly_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy_file(kOptMini / "config.json", dir / "config.json");
  const auto cfg = mini_cfg();
  const auto a = plan_of(kOptMini, cfg, 1), b = plan_of(dir, cfg, 1);
  EXPECT_EQ(b["model"]["sizes_from"], "config.json");
  EXPECT_EQ(b["model"]["dtype_bytes"].get<int>(), 2);
  EXPECT_EQ(b["ranks"][0]["io"]["read_bytes"], a["ranks"][0]["io"]["read_bytes"]);
  EXPECT_EQ(b["ranks"][0]["memory"]["peak"], a["ranks"][0]["memory"]["peak"]);
  fs::remove_all(dir);
}

TEST(Plan, DoublingDataRanksHalvesActivationsAndRowSlices) {
  const auto cfg = mini_cfg();
  const auto p2 = plan_of(kOptMini, cfg, 2), p4 = plan_of(kOptMini, cfg, 4);
  ASSERT_EQ(p2["grid"]["data"].get<int>(), 2);
  ASSERT_EQ(p4["grid"]["data"].get<int>(), 4);
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(p4["ranks"][r]["sequences"].get<I>(), 32);
    EXPECT_EQ(2 * mem(p4, r, "activations"), mem(p2, r / 2, "activations"));
    EXPECT_EQ(2 * p4["ranks"][r]["tokens"].get<I>(), p2["ranks"][r / 2]["tokens"].get<I>());
  }
  // Every rank of a stage reads the whole layers; the statistics are not split.
  EXPECT_EQ(p4["ranks"][3]["io"]["read_bytes"], p2["ranks"][0]["io"]["read_bytes"]);
  EXPECT_EQ(mem(p4, 0, "statistics"), mem(p2, 0, "statistics"));
  // Row slices: fc1's 1024 rows over 4 ranks = 256 rows x 256 inputs x (4 + 1) + Err 256 x 128 x 4.
  EXPECT_EQ(mem(p4, 0, "sweep"), std::max<I>(256 * 256 * 5 + 256 * 128 * 4, 64 * 1024 * 5 + 64 * 128 * 4));
  // The ring all-reduce sends 2 (D-1)/D of the Hessians; the all-gather receives (D-1)/D.
  const double h = p4["per_layer"]["allreduce_bytes"].get<double>();
  EXPECT_DOUBLE_EQ(p4["ranks"][0]["comm_per_layer"]["allreduce_sent_bytes"].get<double>(), 2 * 0.75 * h);
  EXPECT_DOUBLE_EQ(p4["ranks"][0]["comm_per_layer"]["allgather_received_bytes"].get<double>(),
                   0.75 * p4["per_layer"]["allgather_bytes"].get<double>());
  // Uneven: 16 chunks of 8 over 3 ranks = 6, 5, 5 chunks.
  const auto p3 = plan_of(kOptMini, cfg, 3);
  EXPECT_EQ(p3["ranks"][0]["sequences"].get<I>(), 48);
  EXPECT_EQ(p3["ranks"][2]["sequences"].get<I>(), 40);
  EXPECT_EQ(p3["peak"]["rank"].get<int>(), 0);
}

// SparseGPT's factors split over the data ranks (opt-mini's groups: q/k/v, out_proj and fc1 take
// 256 inputs, fc2 1024): at 2 ranks rank 0 factorises fc2 and receives the three 256-wide factors,
// rank 1 the reverse; every rank holds all four during the prune of the pass.
TEST(Plan, DataRanksSplitTheFactorisations) {
  const auto cfg = mini_cfg();
  const auto p1 = plan_of(kOptMini, cfg, 1), p2 = plan_of(kOptMini, cfg, 2);
  const double small = 2.0 / 3.0 * 256.0 * 256 * 256, big = 2.0 / 3.0 * 1024.0 * 1024 * 1024;
  const auto flops = [](const json& p, int r) { return p["ranks"][r]["flops_per_layer"]["factorisation"].get<double>(); };
  const auto recv = [](const json& p, int r) {
    return p["ranks"][r]["comm_per_layer"]["factor_broadcast_received_bytes"].get<I>();
  };
  EXPECT_DOUBLE_EQ(flops(p1, 0), 3 * small + big);
  EXPECT_DOUBLE_EQ(flops(p2, 0), big);
  EXPECT_DOUBLE_EQ(flops(p2, 1), 3 * small);
  EXPECT_EQ(recv(p1, 0), 0);
  EXPECT_EQ(recv(p2, 0), 3 * 256 * 256 * 4);
  EXPECT_EQ(recv(p2, 1), 1024 * 1024 * 4);
  EXPECT_EQ(mem(p1, 0, "factorisation"), 1024 * 1024 * 4);
  EXPECT_EQ(mem(p2, 0, "factorisation"), (3 * 256 * 256 + 1024 * 1024) * 4);
}

// A factor at least sparsegpt.split_width wide is made by every data rank: fc2 of opt-mini (1024)
// in 4 panels of 256 rows, dealt 0, 1, 1, 0 at two ranks. Hand count in units of w³ = 256³ (see
// split_factor.hpp's shared_factor_cost): every rank inverts the 4 diagonal tiles (4/3), a
// panel's owner factors its tile (1/3), and for each earlier panel j of a later panel i it owns,
// in each of the two phases, 2 (j + 1) + 2 (c_j = 256 j). Rank 0 (panels 0, 3): 4/3 + 2/3 +
// (8 + 12 + 16) = 38; rank 1 (panels 1, 2): 4/3 + 2/3 + 8 + (8 + 12) = 30; one rank: 4/3 + 4/3
// + 3 x 8 + 2 x 12 + 16 = 66 + 2/3. Received: the other rank's panels of L and L⁻¹, w (c_j + w)
// each.
TEST(Plan, SharedFactorsSplitTheirPanelsOverTheDataRanks) {
  const auto cfg = mini_cfg({"sparsegpt.split_width=1024", "sparsegpt.tile=256"});
  const auto p1 = plan_of(kOptMini, cfg, 1), p2 = plan_of(kOptMini, cfg, 2);
  const double w3 = 256.0 * 256 * 256, small = 2.0 / 3.0 * w3;
  const auto flops = [](const json& p, int r) { return p["ranks"][r]["flops_per_layer"]["factorisation"].get<double>(); };
  const auto recv = [](const json& p, int r) {
    return p["ranks"][r]["comm_per_layer"]["factor_broadcast_received_bytes"].get<I>();
  };
  EXPECT_DOUBLE_EQ(flops(p1, 0), 3 * small + (66.0 + 2.0 / 3.0) * w3);
  // The three 256-wide factors stay whole: ranks 0, 1, 0.
  EXPECT_DOUBLE_EQ(flops(p2, 0), 2 * small + 38 * w3);
  EXPECT_DOUBLE_EQ(flops(p2, 1), small + 30 * w3);
  EXPECT_EQ(recv(p1, 0), 0);
  const I w = 256;
  EXPECT_EQ(recv(p2, 0), w * w * 4 + 2 * (w * (w + w) + w * (2 * w + w)) * 4);    // panels 1, 2
  EXPECT_EQ(recv(p2, 1), 2 * w * w * 4 + 2 * (w * w + w * (3 * w + w)) * 4);      // panels 0, 3
  // + three scratch tiles and the inverses of the rank's 4 diagonal tiles.
  EXPECT_EQ(mem(p1, 0, "factorisation"), (1024 * 1024 + 7 * w * w) * 4);
  // Time: the ranks meet at every panel, so per panel and phase its owner's tile (1/3 each: the
  // Cholesky factor, the inverse), then the busiest rank's work on later panels. Two ranks, in
  // w³: panel 0: 2/3 + 2 x 8 (rank 1 has panels 1, 2); panel 1: 2/3 + 2 x 6; panel 2: 2/3 + 2 x 8;
  // panel 3: 2/3: 46 + 2/3. One rank: its own FLOPs.
  const auto path = [](const json& p, int r) {
    return p["ranks"][r]["flops_per_layer"]["factorisation_critical_path"].get<double>();
  };
  EXPECT_DOUBLE_EQ(path(p1, 0), flops(p1, 0));
  EXPECT_DOUBLE_EQ(path(p2, 0), 2 * small + (46.0 + 2.0 / 3.0) * w3);
  EXPECT_DOUBLE_EQ(path(p2, 1), small + (46.0 + 2.0 / 3.0) * w3);
}

// LLM Surgeon: each pruned linear is scored and updated by one rank, so a rank holds the inverses
// of its share. opt-mini per layer: 4 x (256² + 257²) + (1024² + 257²) + (256² + 1025²) fp32 entries.
TEST(Plan, SurgeonRanksSplitTheInversesAndSolves) {
  const auto cfg = mini_cfg({"prune.method=surgeon"});
  const auto pm = app::load_plan_model(kOptMini.string());
  const auto p1 = app::make_surgeon_plan(pm.spec, input_for(pm, cfg, 1));
  const auto p2 = app::make_surgeon_plan(pm.spec, input_for(pm, cfg, 2));
  const I per_layer = (4 * (256 * 256 + 257 * 257) + (1024 * 1024 + 257 * 257) + (256 * 256 + 1025 * 1025)) * 4;
  EXPECT_EQ(p1["memory"]["inverses"].get<I>(), 4 * per_layer);
  const auto inv2 = p2["memory"]["inverses"].get<I>();
  EXPECT_LT(inv2, 4 * per_layer * 6 / 10);  // the busiest rank's share, about half
  EXPECT_GE(inv2, 4 * per_layer / 2 - 1024 * 1024 * 4);
  EXPECT_LT(p2["solve_flops_all_shots"].get<double>(), 0.6 * p1["solve_flops_all_shots"].get<double>());
  // The peak's breakdown names the terms of its phase, which add up to it.
  const auto& mem = p1["memory"];
  const bool curvature = p1["peak"]["phase"] == "curvature";
  EXPECT_EQ(p1["peak"]["bytes"].get<I>(),
            curvature ? mem["weights"].get<I>() + mem["factor_sums"].get<I>() + mem["activations"].get<I>()
                      : mem["weights"].get<I>() + mem["inverses"].get<I>() + mem["factors"].get<I>() +
                            mem["chunks"].get<I>());
  EXPECT_EQ(p1["peak"]["breakdown"].get<std::string>().find(curvature ? "inverses" : "activations"),
            std::string::npos);
}

// prune.allocation runs before the layers: the sensitivity estimate holds the whole fp32 model, a
// perturbed copy of every target (and one layer's next copy), two probe directions and a backward
// pass's activations, and it can be the run's peak; OWL's dense forward is smaller than a layer's
// statistics phase. Both add their time to the job's.
TEST(Plan, TheAllocationPassIsPlannedAndCanBeThePeak) {
  const auto uniform = plan_of(kOptMini, mini_cfg({"prune.method=wanda"}), 1);
  EXPECT_TRUE(uniform["allocation"].is_null());
  const auto p = plan_of(kOptMini, mini_cfg({"prune.method=wanda", "prune.allocation=sensitivity"}), 1);
  const auto& a = p["allocation"];
  ASSERT_FALSE(a.is_null());
  EXPECT_EQ(a["passes"].get<I>(), 16);  // 8 probes (the default), two passes each
  // opt-mini's targets per layer: q, k, v, out 256x256, fc1 1024x256, fc2 256x1024 (fp32).
  const I layer_targets = (4 * 256 * 256 + 2 * 1024 * 256) * 4;
  const I dense = app::load_plan_model(kOptMini.string()).spec.total_params() * 4;
  const I activations = a["bytes"].get<I>() - dense - 5 * layer_targets - 2 * 1024 * 256 * 4;
  // Kept (8 GB allows it): 4 layers' intermediates of a batch of 8 x 512 and every target's V.a.
  EXPECT_EQ(a["activations_mode"], "keep");
  EXPECT_GT(activations, 4 * 8 * 512 * (6 * 256 + 2 * 1024) * 4);
  EXPECT_EQ(p["peak"]["phase"], "allocation (sensitivity)");
  EXPECT_EQ(p["peak"]["bytes"], a["bytes"]);
  EXPECT_NEAR(p["totals"]["seconds"].get<double>(),
              uniform["totals"]["seconds"].get<double>() + a["seconds"].get<double>(), 1e-9);
  // A smaller keep_activations_mb recomputes the forward: less memory, more FLOPs.
  const auto r = plan_of(kOptMini, mini_cfg({"prune.method=wanda", "prune.allocation=sensitivity",
                                             "surgeon.keep_activations_mb=64"}), 1);
  EXPECT_EQ(r["allocation"]["activations_mode"], "recompute");
  EXPECT_LT(r["allocation"]["bytes"].get<I>(), a["bytes"].get<I>());
  EXPECT_GT(r["allocation"]["flops"].get<double>(), a["flops"].get<double>());
  // Over parallel.memory_gb, the refusal names the allocation.
  auto cfg = mini_cfg({"prune.method=wanda", "prune.allocation=sensitivity", "parallel.memory_gb=0.5"});
  const auto msg = input_error([&] { app::check_plan_fits(plan_of(kOptMini, cfg, 1), cfg); });
  EXPECT_NE(msg.find("allocation (sensitivity)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("perturbed targets"), std::string::npos) << msg;
  // OWL: one forward, below the prune's own peak.
  const auto o = plan_of(kOptMini, mini_cfg({"prune.method=wanda", "prune.allocation=owl"}), 1);
  EXPECT_EQ(o["allocation"]["method"], "owl");
  EXPECT_LT(o["allocation"]["bytes"].get<I>(), o["peak"]["bytes"].get<I>());
  EXPECT_EQ(o["peak"]["phase"], uniform["peak"]["phase"]);
  EXPECT_GT(o["allocation"]["seconds"].get<double>(), 0);
}

// surgeon.cost kobd scores from the factors' diagonals (no inverses, chunk systems or solves),
// magnitude needs no curvature (no factor sums, no backward); an N:M the targets' widths do not
// take is refused as the run refuses it.
TEST(Plan, SurgeonCostsPlanOnlyWhatTheyCompute) {
  const auto pm = app::load_plan_model(kOptMini.string());
  const auto plan = [&](const std::vector<std::string>& extra) {
    auto o = extra;
    o.push_back("prune.method=surgeon");
    return app::make_surgeon_plan(pm.spec, input_for(pm, mini_cfg(o), 1));
  };
  const auto sg = plan({}), kobd = plan({"surgeon.cost=kobd"}), mag = plan({"surgeon.cost=magnitude"});
  EXPECT_GT(sg["memory"]["inverses"].get<I>(), 0);
  EXPECT_GT(sg["solve_flops_all_shots"].get<double>(), 0);
  EXPECT_EQ(kobd["memory"]["inverses"].get<I>(), 0);
  EXPECT_EQ(kobd["memory"]["chunks"].get<I>(), 0);
  EXPECT_EQ(kobd["solve_flops_all_shots"].get<double>(), 0);
  EXPECT_EQ(kobd["per_shot_flops"]["inverses_f64"].get<double>(), 0);
  EXPECT_EQ(kobd["memory"]["factor_sums"], sg["memory"]["factor_sums"]);  // the curvature pass is the same
  EXPECT_LT(kobd["seconds"].get<double>(), sg["seconds"].get<double>());
  EXPECT_EQ(mag["memory"]["factor_sums"].get<I>(), 0);
  EXPECT_LT(mag["memory"]["activations"].get<I>(), sg["memory"]["activations"].get<I>());
  EXPECT_LT(mag["peak"]["bytes"].get<I>(), kobd["peak"]["bytes"].get<I>());
  EXPECT_EQ(mag["peak"]["bytes"], mag["memory"]["weights"].get<I>() + mag["memory"]["activations"].get<I>());
  const auto msg = input_error([&] { plan({"prune.pattern=3:7"}); });
  EXPECT_NE(msg.find("'prune.pattern' 3:7 does not divide the 256 input columns"), std::string::npos) << msg;
  // max_correlate 0 ("all"): each linear's removed weights are one system. The largest, fc1 with
  // its bias column (1024 x 257), has 131584 at 50%: a 131584² fp32 matrix; the solves grow as
  // (s_k n)³ / 3 (it was planned at 0 bytes and 0 FLOPs, and the run never finished).
  const auto all = plan({"surgeon.max_correlate=0", "prune.sparsity=0.5"});
  EXPECT_EQ(all["memory"]["chunks"].get<I>(), I{131584} * 131584 * 4);
  EXPECT_GT(all["solve_flops_all_shots"].get<double>(), 1e3 * sg["solve_flops_all_shots"].get<double>());
}

TEST(Plan, StagesSplitTheLayers) {
  const auto p = plan_of(kOptMini, mini_cfg({"parallel.stages=2"}), 2);
  ASSERT_EQ(p["grid"]["stages"].get<int>(), 2);
  ASSERT_EQ(p["grid"]["data"].get<int>(), 1);
  EXPECT_EQ(p["ranks"][0]["layers"], json::array({0, 2}));
  EXPECT_EQ(p["ranks"][1]["layers"], json::array({2, 4}));
  const auto one = plan_of(kOptMini, mini_cfg(), 1);
  const I all_layers = one["ranks"][0]["io"]["read_layers_bytes"].get<I>();
  EXPECT_EQ(p["ranks"][0]["io"]["read_layers_bytes"].get<I>(), all_layers / 2);
  EXPECT_EQ(p["ranks"][1]["io"]["read_layers_bytes"].get<I>(), all_layers / 2);
  // Stage 0 reads the embeddings; the last stage the final norm and the (tied) head.
  const I embed = 8192 * 256 * 2, positions = 514 * 256 * 2, norm = 2 * 256 * 2;
  EXPECT_EQ(p["ranks"][0]["io"]["read_embeddings_head_bytes"].get<I>(), embed + positions);
  EXPECT_EQ(p["ranks"][1]["io"]["read_embeddings_head_bytes"].get<I>(), norm + embed);
  // Activations cross the boundary once, all of them (one data rank).
  EXPECT_EQ(p["ranks"][0]["stage_boundary"]["send_bytes"].get<I>(), 128 * 512 * 256 * 4);
  EXPECT_EQ(p["ranks"][1]["stage_boundary"]["recv_bytes"].get<I>(), 128 * 512 * 256 * 4);
  // Stages run one after another.
  EXPECT_DOUBLE_EQ(p["totals"]["seconds"].get<double>(),
                   p["stages"][0]["seconds"].get<double>() + p["stages"][1]["seconds"].get<double>());
  // OPT-175B's 96 layers over 5 stages: 20, 19, 19, 19, 19.
  const auto q = plan_of(kOpt175, app::load_config("", {"parallel.stages=5"}), 5);
  EXPECT_EQ(q["ranks"][0]["layers"], json::array({0, 20}));
  EXPECT_EQ(q["ranks"][4]["layers"], json::array({77, 96}));
}

TEST(Plan, TrueSequentialHoldsOneGroupAtATimeAndRunsMorePasses) {
  const auto a = plan_of(kOptMini, mini_cfg(), 1);
  const auto b = plan_of(kOptMini, mini_cfg({"prune.true_sequential=true"}), 1);
  EXPECT_EQ(mem(b, 0, "statistics"), 1024 * 1024 * 4 + 4 * 1024 * 1025);  // fc2's alone
  EXPECT_EQ(b["per_layer"]["forward_passes"].get<I>(), 5);  // 4 groups + propagation
  EXPECT_DOUBLE_EQ(b["ranks"][0]["flops_per_layer"]["forward"].get<double>(),
                   2.5 * a["ranks"][0]["flops_per_layer"]["forward"].get<double>());
  // Strict determinism: 3 int64 bins over the upper triangle, 12 d (d+1) bytes per Hessian, summed
  // as such; held besides a d x d fp32 scratch per batch (then the fp32 Hessian).
  const auto s = plan_of(kOptMini, mini_cfg({"determinism=strict"}), 2);
  const I exact = 3 * 12 * 256 * 257 + 12 * 1024 * 1025;
  // At 2 ranks, plus SparseGPT's block selections: 3 histograms (6144 int64) per 128-column block.
  const I select = (3 * 2 + 2 + 2 + 8) * 6144 * 8;  // q/k/v, out_proj, fc1: 2 blocks each; fc2: 8
  EXPECT_EQ(s["per_layer"]["allreduce_bytes"].get<I>(), exact + select);
  EXPECT_EQ(mem(s, 0, "statistics"), (3 * 256 * 256 + 1024 * 1024) * 4 + exact);
  // Wanda: no factorisation, a d-vector per group; dense propagation: two activation copies.
  const auto w = plan_of(kOptMini, mini_cfg({"prune.method=wanda", "prune.propagation=dense"}), 1);
  EXPECT_EQ(mem(w, 0, "factorisation"), 0);
  EXPECT_EQ(mem(w, 0, "statistics"), (3 * 256 * 256 + 1024 * 1024) * 4 + 4 * (3 * 256 * 257 + 1024 * 1025) +
                                         (3 * 256 + 1024) * (4 + 8));
  EXPECT_EQ(mem(w, 0, "activations"), 2 * mem(a, 0, "activations"));
  // Without the reconstruction error Wanda collects its vectors alone (no Hessian, no syrk), and
  // magnitude nothing: no statistics pass, one forward (propagation).
  const auto wv = plan_of(kOptMini, mini_cfg({"prune.method=wanda", "output.reconstruction_error=false"}), 2);
  EXPECT_EQ(mem(wv, 0, "statistics"), (3 * 256 + 1024) * (4 + 8));
  EXPECT_EQ(wv["per_layer"]["allreduce_bytes"].get<I>(), (3 * 256 + 1024) * 8);
  EXPECT_DOUBLE_EQ(wv["ranks"][0]["flops_per_layer"]["statistics"].get<double>(),
                   64.0 * 512 * 2 * (3 * 256 + 1024));  // 64 sequences per rank: 2 t d per group
  const auto mv = plan_of(kOptMini, mini_cfg({"prune.method=magnitude", "output.reconstruction_error=false"}), 1);
  EXPECT_EQ(mem(mv, 0, "statistics"), 0);
  EXPECT_EQ(mv["per_layer"]["forward_passes"].get<I>(), 1);
}

TEST(Plan, LlamaGroupsGateAndUpAndReadsTheUntiedHeadOnTheLastStage) {
  // LLaMA-2-7B's config.json alone.
  const auto dir = fs::temp_directory_path() / ("scalpel_plan_llama_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << R"({"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": false, "torch_dtype": "bfloat16"})";
  const auto cfg = app::load_config("", {"model=" + dir.string(), "parallel.stages=2", "calibration.seqlen=2048"});
  const auto p = plan_of(dir, cfg, 2);
  EXPECT_NEAR(p["model"]["params"].get<double>() / 1e9, 6.74, 0.01);
  const auto& g = p["per_layer"]["groups"];
  ASSERT_EQ(g.size(), 4u);
  EXPECT_EQ(g[0]["label"], "q_proj/k_proj/v_proj");
  EXPECT_EQ(g[1]["label"], "o_proj");
  EXPECT_EQ(g[2]["label"], "gate_proj/up_proj");
  EXPECT_EQ(g[3]["label"], "down_proj");
  const I h = 4096, ffn = 11008;
  EXPECT_EQ(mem(p, 0, "statistics"), (3 * h * h + ffn * ffn) * 4 + 4 * (3 * h * (h + 1) + ffn * (ffn + 1)));
  // bf16: stage 0 reads the embeddings, stage 1 the final norm and lm_head.
  EXPECT_EQ(p["ranks"][0]["io"]["read_embeddings_head_bytes"].get<I>(), 32000 * h * 2);
  EXPECT_EQ(p["ranks"][1]["io"]["read_embeddings_head_bytes"].get<I>(), (h + 32000 * h) * 2);
  EXPECT_EQ(p["ranks"][1]["io"]["read_layers_bytes"].get<I>(), 16 * (4 * h * h + 3 * h * ffn + 2 * h) * 2);
  fs::remove_all(dir);
}

TEST(Plan, GridErrorsNameTheKeys) {
  const auto pm = app::load_plan_model(kOptMini.string());
  auto err = [&](const app::Config& c, int world) {
    return input_error([&] { app::make_plan(pm.spec, input_for(pm, c, world)); });
  };
  EXPECT_NE(err(mini_cfg({"parallel.stages=4"}), 6).find("'parallel.stages' 4 does not divide the 6 ranks"),
            std::string::npos);
  EXPECT_NE(err(mini_cfg({"parallel.stages=2", "parallel.data=3"}), 8).find("'parallel.data' 3"), std::string::npos);
  EXPECT_NE(err(mini_cfg({"parallel.stages=8"}), 8).find("exceeds the model's 4 layers"), std::string::npos);
  EXPECT_NE(err(mini_cfg({"calibration.seqlen=1024"}), 1).find("calibration.seqlen"), std::string::npos);
  EXPECT_NE(err(mini_cfg({"prune.targets=[nothing]"}), 1).find("prune.targets"), std::string::npos);
  // Idle data ranks are refused, as the prune refuses them: 16 chunks over 32 ranks.
  EXPECT_NE(err(mini_cfg(), 32).find("16 batches of 'calibration.batch' 8, fewer than the 32 ranks"),
            std::string::npos);
  EXPECT_NO_THROW(app::make_plan(pm.spec, input_for(pm, mini_cfg(), 16)));  // one batch each: accepted
}

// cuda.activations host: the GPU holds one batch's input and output, the rest is host memory; auto
// with parallel.memory_gb plans what the run does (host when the GPU's peak would pass 90% of it).
// OPT-175B on one GPU with 1024 windows: 51.5 GB of fp16 activations (it was refused at 80 GB,
// host staging not considered).
TEST(Plan, HostActivationsLeaveOneBatchOnTheGpu) {
  const auto pm = app::load_plan_model(kOpt175.string());
  const auto cfg = [&](const std::string& act, double gb) {
    return app::load_config(kSource.string() + "/configs/opt-175b-1gpu.yaml",
                            {"model=" + kOpt175.string(), "calibration.nsamples=1024", "cuda.activations=" + act,
                             "parallel.memory_gb=" + std::to_string(gb)});
  };
  const auto dev = app::make_plan(pm.spec, input_for(pm, cfg("device", 80), 1));
  const auto host = app::make_plan(pm.spec, input_for(pm, cfg("host", 80), 1));
  const auto autop = app::make_plan(pm.spec, input_for(pm, cfg("auto", 80), 1));
  const I tokens = I{1024} * 2048, batch = dev["calibration"]["batch"].get<I>();
  EXPECT_EQ(mem(dev, 0, "activations"), tokens * 12288 * 2);
  EXPECT_EQ(mem(host, 0, "activations"), 2 * batch * 2048 * 12288 * 2);
  EXPECT_EQ(mem(host, 0, "activations_host"), tokens * 12288 * 2);
  EXPECT_FALSE(dev["fits"].get<bool>());
  EXPECT_TRUE(host["fits"].get<bool>());
  EXPECT_EQ(autop["peak"], host["peak"]);  // auto stages them, as the run would
  EXPECT_NE(autop["job"]["activations"].get<std::string>().find("host"), std::string::npos);
  const auto msg = input_error([&] { app::check_plan_fits(dev, cfg("device", 80)); });
  EXPECT_NE(msg.find("cuda.activations: host"), std::string::npos) << msg;
  // Room on the GPU: auto keeps them there.
  const auto roomy = app::make_plan(pm.spec, input_for(pm, cfg("auto", 141), 1));
  EXPECT_EQ(roomy["peak"], dev["peak"]);
}

TEST(Plan, Opt175bOn8x8GpusFits80GB) {
  const auto cfg = app::load_config(kYaml175.string(), {"model=" + kOpt175.string()});
  ASSERT_EQ(cfg.parallel.memory_gb, 80);
  const auto pm = app::load_plan_model(kOpt175.string());
  EXPECT_EQ(pm.dtype_bytes, 2);
  EXPECT_TRUE(pm.tensor_bytes.empty());  // config.json only
  EXPECT_NEAR(pm.spec.total_params() / 1e9, 174.6, 1.0);  // DESIGN.md section 7: 174 B params
  auto in = input_for(pm, cfg, 64);
  const auto p = app::make_plan(pm.spec, in);
  EXPECT_EQ(p["grid"]["world"].get<int>(), 64);
  EXPECT_TRUE(p["fits"].get<bool>()) << p["peak"].dump();
  EXPECT_NO_THROW(app::check_plan_fits(p, cfg));
  EXPECT_TRUE(p["warnings"].empty()) << p["warnings"].dump();
  EXPECT_NEAR(p["model"]["stored_bytes"].get<double>() / 1e9, 349, 2);  // 348 GB fp16
  // DESIGN.md section 7: 604 MB per d-input Hessian, 9.7 GB for fc2.
  const auto& g = p["per_layer"]["groups"];
  ASSERT_EQ(g.size(), 4u);
  EXPECT_EQ(g[0]["statistics_kept_bytes"].get<I>(), I{12288} * 12288 * 4);
  EXPECT_EQ(g[3]["statistics_kept_bytes"].get<I>(), I{49152} * 49152 * 4);
  // While collected: the batch scratch and the float64 sum over the upper triangle besides.
  EXPECT_EQ(g[3]["statistics_bytes"].get<I>(), I{49152} * 49152 * 4 + I{4} * 49152 * 49153);
  // Each of the 64 ranks reads all 96 layers (every rank runs the forward).
  EXPECT_NEAR(p["ranks"][63]["io"]["read_layers_bytes"].get<double>() / 1e9, 348, 3);

  // The whole calibration set on one rank: the per-layer FLOPs of DESIGN.md section 7 (Hessians
  // 1.5e15, half with syrk; two forwards 1.9e15; sweep about 5e13; factorisation 2/3 d^3 per group
  // here, where the table's 1.6e14 counts 4/3 d^3).
  auto one = cfg;
  one.parallel.data = 1;
  const auto q = app::make_plan(pm.spec, input_for(pm, one, 1));
  const auto& f = q["ranks"][0]["flops_per_layer"];
  EXPECT_NEAR(f["statistics"].get<double>(), 0.75e15, 0.05e15);
  EXPECT_NEAR(f["forward"].get<double>(), 1.95e15, 0.1e15);
  EXPECT_NEAR(f["sweep"].get<double>(), 4.5e13, 0.5e13);
  // fc2's factor (49152 wide) is made in 48 panels of 1024 rows (sparsegpt.split_width 16384),
  // whose products with explicit tile inverses add about 3 x 1024 / 49152 of 2/3 d^3: 8.77e13.
  EXPECT_NEAR(f["factorisation"].get<double>(), 8.77e13, 0.01e13);
  auto whole = one;
  whole.sparsegpt.split_width = 0;  // every factor whole
  const auto w = app::make_plan(pm.spec, input_for(pm, whole, 1));
  EXPECT_NEAR(w["ranks"][0]["flops_per_layer"]["factorisation"].get<double>(), 1.6e14 / 2, 0.05e14);
}

// The export's shards as the plan packs them are the files the exporter writes (opt-mini in
// 2 MB shards), shared out in turn over the writers: output.export_writers per node.
TEST(Plan, ExportShardsAreTheExportersAndTheWritersShareThem) {
  const auto pm = app::load_plan_model(kOptMini.string());
  const auto dir = scalpel_test::temp_dir("plan_export");
  app::export_hf_folder(io::HfCheckpoint(kOptMini), std::map<std::string, Tensor>{}, dir / "m", I{2} << 20);
  std::vector<I> sizes;  // tensor bytes per shard file, in shard order
  for (int i = 1;; ++i) {
    const auto f = dir / "m" / fmt::format("model-{:05}-of-{:05}.safetensors", i, 6);
    if (!fs::exists(f)) break;
    I bytes = 0;
    for (const auto& t : io::SafetensorsFile::open(f)->header().tensors) bytes += static_cast<I>(t.end - t.begin);
    sizes.push_back(bytes);
  }
  fs::remove_all(dir);
  ASSERT_EQ(sizes.size(), 6u) << "opt-mini's 10.8 MB in 2 MB shards";
  const auto plan_with = [&](int world, int ranks_per_node, std::vector<std::string> extra) {
    extra.push_back("output.export_shard_mb=2");
    auto in = input_for(pm, mini_cfg(extra), world);
    in.ranks_per_node = ranks_per_node;
    return app::make_plan(pm.spec, in)["export"];
  };
  const auto one = plan_with(1, 0, {});
  EXPECT_EQ(one["shards"].get<I>(), 6);
  EXPECT_EQ(one["writers"].get<int>(), 1);
  EXPECT_EQ(one["writer_bytes"].get<I>(), std::accumulate(sizes.begin(), sizes.end(), I{0}));
  EXPECT_EQ(one["writer_memory_bytes"].get<I>(), *std::max_element(sizes.begin(), sizes.end()));
  // Read and written once each at 2 GB/s.
  EXPECT_NEAR(one["seconds"].get<double>(), 2 * one["writer_bytes"].get<double>() / 2e9, 1e-9);
  // 4 ranks, every one writing: writer 0 has shards 0 and 4, writer 1 shards 1 and 5.
  const auto all = plan_with(4, 0, {"output.export_writers=0"});
  EXPECT_EQ(all["writers"].get<int>(), 4);
  EXPECT_EQ(all["writer_bytes"].get<I>(), std::max(sizes[0] + sizes[4], sizes[1] + sizes[5]));
  // 5 ranks on nodes of 2 (2 + 2 + 1), 2 writers per node: 5; one per node: 3.
  EXPECT_EQ(plan_with(5, 2, {"output.export_writers=2"})["writers"].get<int>(), 5);
  EXPECT_EQ(plan_with(5, 2, {})["writers"].get<int>(), 3);
  EXPECT_EQ(plan_with(5, 0, {})["writers"].get<int>(), 1);  // one node
  EXPECT_TRUE(plan_with(1, 0, {"output.export="}).is_null());
}

TEST(Plan, OverTheMemoryLimitIsRefusedNamingTheKey) {
  // One rank with the exact (strict) accumulators and chunks of 8 windows: about 110 GB at its peak.
  const auto cfg = app::load_config(kYaml175.string(), {"model=" + kOpt175.string(), "parallel.data=1",
                                                        "determinism=strict", "calibration.batch=8"});
  const auto pm = app::load_plan_model(kOpt175.string());
  const auto p = app::make_plan(pm.spec, input_for(pm, cfg, 1));
  EXPECT_FALSE(p["fits"].get<bool>());
  const auto msg = input_error([&] { app::check_plan_fits(p, cfg); });
  EXPECT_NE(msg.find("'parallel.memory_gb' is 80 GB"), std::string::npos) << msg;
  EXPECT_NE(msg.find("rank 0 (stage 0"), std::string::npos) << msg;
  EXPECT_NE(msg.find(fmt::format("{:.2f} GB", p["peak"]["gb"].get<double>())), std::string::npos) << msg;
  // memory_gb 0: no limit.
  auto unlimited = cfg;
  unlimited.parallel.memory_gb = 0;
  EXPECT_NO_THROW(app::check_plan_fits(p, unlimited));
}

// scalpel depth's plan on opt-mini (4 blocks of 789760 parameters: 4 x (256² + 256) for q/k/v/out,
// 1024 x 256 + 1024 and 256 x 1024 + 256 for fc1/fc2, 4 x 256 for the norms), 128 windows of 512
// in batches of 8. Block passes of one window: bi L = 4 per window; ppl removing 2 with the first
// and last block protected: round 1 runs the 4 blocks and each of its 2 candidates on average half
// of the 3 blocks after it (4 + 2 x 3/2 = 7), round 2 3 + 1 x 2/2 = 4, so 11 per window and 3 head
// passes; one-shot ppl (depth.greedy false) round 1 alone; laco with merge 3 at most 4 - 3 + 1 = 2
// attempts and the dense pass, 3 x 4 blocks, over depth.windows 16. Two data ranks halve the
// windows.
TEST(Plan, DepthPlansTheCriterionsPassesAndTheWholeModel) {
  const auto pm = app::load_plan_model(kOptMini.string());
  auto plan = [&](std::vector<std::string> extra, int world = 1) {
    return app::make_depth_plan(pm.spec, input_for(pm, mini_cfg(extra), world));
  };
  const auto bi = plan({"depth.criterion=bi", "depth.remove=2"});
  EXPECT_EQ(bi["kind"], "depth");
  EXPECT_DOUBLE_EQ(bi["work"]["block_passes"].get<double>(), 4 * 128);
  EXPECT_DOUBLE_EQ(bi["work"]["flops"].get<double>(), 4 * 128 * (2.0 * 789760 * 512 + 2.0 * 512 * 512 * 256));
  EXPECT_EQ(bi["memory"]["blocks_fp32"].get<I>(), 789760 * 4 * 4);
  const I x = 8 * 512 * 256 * 4;  // a batch's residual stream
  EXPECT_EQ(bi["memory"]["activations"].get<I>(), 3 * x);  // and two host snapshots of it
  EXPECT_DOUBLE_EQ(plan({"depth.criterion=bi"}, 2)["work"]["block_passes"].get<double>(), 4 * 64);
  const auto ppl = plan({"depth.criterion=ppl", "depth.remove=2"});
  EXPECT_DOUBLE_EQ(ppl["work"]["block_passes"].get<double>(), 11 * 128);
  EXPECT_DOUBLE_EQ(ppl["work"]["head_passes"].get<double>(), 3 * 128);
  EXPECT_EQ(ppl["job"]["protected"].get<I>(), 2);
  // Every kept block's input, the candidate's copy and one window's 511 x 8192 logits.
  EXPECT_EQ(ppl["memory"]["activations"].get<I>(), x + 4 * x + x + 511 * 8192 * 4 + 8 * 511 * 8);
  const auto once = plan({"depth.criterion=ppl", "depth.remove=2", "depth.greedy=false"});
  EXPECT_DOUBLE_EQ(once["work"]["block_passes"].get<double>(), 7 * 128);
  const auto laco = plan({"depth.criterion=laco", "depth.remove=1", "depth.merge=3", "depth.windows=16"});
  EXPECT_DOUBLE_EQ(laco["work"]["block_passes"].get<double>(), 3 * 4 * 16);
  // The dense final states of its 16 windows, n + 1 = 2 merged blocks, the batch and the first
  // attempt's dense pass beside it.
  EXPECT_EQ(laco["memory"]["activations"].get<I>(), x + 16 * 512 * 256 * 4 + 2 * 789760 * 4 + 2 * x);
  // Too few of laco's windows for the ranks: the run's message, naming depth.windows.
  EXPECT_NE(input_error([&] { plan({"depth.criterion=laco", "depth.windows=8"}, 2); }).find("'depth.windows' 8"),
            std::string::npos);
  const auto deepest = plan({"depth.criterion=deepest", "depth.remove=1"});
  EXPECT_DOUBLE_EQ(deepest["work"]["flops"].get<double>(), 0);
  EXPECT_EQ(deepest["peak"]["bytes"].get<I>(),
            deepest["memory"]["blocks_fp32"].get<I>() + deepest["memory"]["embeddings_head"].get<I>());
  // The export is the model less the 2 removed blocks (fp16: 2 bytes a parameter); none without one.
  EXPECT_DOUBLE_EQ(bi["io"]["read_bytes"].get<double>() - bi["io"]["export_bytes"].get<double>(), 2.0 * 789760 * 2);
  EXPECT_DOUBLE_EQ(plan({"depth.criterion=bi", "output.export="})["io"]["export_bytes"].get<double>(), 0);
  // The run's refusals, with its messages.
  EXPECT_NE(input_error([&] { plan({"parallel.stages=2"}); }).find("'parallel.stages' 2"), std::string::npos);
  EXPECT_NE(input_error([&] { plan({"depth.remove=4"}); }).find("depth.remove"), std::string::npos);
  EXPECT_NE(input_error([&] { plan({"calibration.nsamples=8"}, 2); }).find("calibration.batch"), std::string::npos);
}

// ---- the command ----

Run run_here(const std::string& cmd) { return run("cd " + kSource.string() + " && " + cmd); }

using scalpel_test::kBin;

std::size_t count(const std::string& s, const std::string& what) {
  std::size_t n = 0;
  for (auto p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

TEST(PlanCli, Opt175bTableAndJson) {
  const auto r = run_here(kBin + " plan configs/opt-175b-8x8-gpu.yaml --ranks 64");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("64 rank(s) = 1 stage(s) x 64 data"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("parallel.memory_gb 80: fits"), std::string::npos) << r.out;
  // On one process the grid of the config is the default.
  const auto j = run_here(kBin + " plan configs/opt-175b-8x8-gpu.yaml --json --gflops 1000 --net-gbps 25");
  ASSERT_EQ(j.code, 0) << j.out;
  const auto p = json::parse(j.out);
  EXPECT_EQ(p["grid"]["world"].get<int>(), 64);
  EXPECT_EQ(p["rates"]["gflops"].get<double>(), 1000);
  EXPECT_EQ(p["rates"]["net_gbps"].get<double>(), 25);
  EXPECT_EQ(p["ranks"].size(), 64u);
}

// The one-GPU OPT-175B job: fits 80 GB with the activations on the GPU (12288 x 128 x 2048 fp32 =
// 12.88 GB), which is what cuda.activations: auto then chooses (peak < 90% of 80 GB).
TEST(PlanCli, Opt175bFitsOneEightyGigabyteGpu) {
  const auto j = run_here(kBin + " plan configs/opt-175b-1gpu.yaml --json");
  ASSERT_EQ(j.code, 0) << j.out;
  const auto p = json::parse(j.out);
  EXPECT_EQ(p["grid"]["world"].get<int>(), 1);
  // cuda.forward_dtype auto on an fp16 checkpoint: 2-byte activations, forward FLOPs at 16x.
  EXPECT_NEAR(p["ranks"][0]["memory"]["activations"].get<double>(), 12288.0 * 128 * 2048 * 2, 1.0);
  EXPECT_EQ(p["rates"]["forward_bytes"].get<int>(), 2);
  EXPECT_DOUBLE_EQ(p["rates"]["forward_gflops"].get<double>(), 16 * p["rates"]["gflops"].get<double>());
  const double peak = p["peak"]["bytes"].get<double>();
  EXPECT_LT(peak, 0.9 * 80e9);
  EXPECT_GT(peak, 40e9);  // the fc2 Hessian (9.7 GB), its float64 sum (9.7 GB) and its batch scratch alone are 29 GB
  EXPECT_TRUE(p["fits"].get<bool>());
  const auto f32 = run_here(kBin + " plan configs/opt-175b-1gpu.yaml --json cuda.forward_dtype=fp32");
  ASSERT_EQ(f32.code, 0) << f32.out;
  const auto q = json::parse(f32.out);
  EXPECT_NEAR(q["ranks"][0]["memory"]["activations"].get<double>(), 12288.0 * 128 * 2048 * 4, 1.0);
  EXPECT_GT(q["ranks"][0]["seconds_per_layer"]["compute"].get<double>(),
            p["ranks"][0]["seconds_per_layer"]["compute"].get<double>());
}

// An offsets file gives the plan as many windows as the run reads from it: '#' lines are comments
// (the plan counted them as windows), and a line that is no offset is the run's error.
TEST(PlanCli, AnOffsetsFileCountsItsOffsetsAsTheRunReadsThem) {
  const auto dir = scalpel_test::temp_dir("plan_offsets");
  std::ofstream(dir / "offsets.txt") << "# windows of the calibration text\n0\n\n512\n  # another\n1024\n";
  const auto j = run_here(kBin + " plan --json --model " + kOptMini.string() + " calibration.offsets=" +
                          (dir / "offsets.txt").string());
  ASSERT_EQ(j.code, 0) << j.out;
  EXPECT_EQ(json::parse(j.out)["calibration"]["nsamples"], 3);
  std::ofstream(dir / "bad.txt") << "0\nten\n";
  const auto bad = run_here(kBin + " plan --model " + kOptMini.string() + " calibration.offsets=" +
                            (dir / "bad.txt").string());
  EXPECT_EQ(bad.code, 2) << bad.out;
  EXPECT_NE(bad.out.find("bad.txt:2: 'ten' is not a non-negative integer offset"), std::string::npos) << bad.out;
  fs::remove_all(dir);
}

// A config with a depth: section and no prune: section is planned as the depth job it describes
// (it was planned as a SparseGPT prune); --depth asks for it whatever the sections.
TEST(PlanCli, ADepthConfigIsPlannedAsDepth) {
  const auto r = run_here(kBin + " plan configs/depth-opt-deep.yaml model=" + kOptMini.string() +
                          " calibration.nsamples=16 depth.remove=1");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("depth plan: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("job: depth.criterion bi, remove 1 block(s)"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("sparsegpt"), std::string::npos) << r.out;
  const auto j = run_here(kBin + " plan --depth --json --model " + kOptMini.string() + " depth.criterion=ppl");
  ASSERT_EQ(j.code, 0) << j.out;
  EXPECT_EQ(json::parse(j.out)["kind"], "depth");
  const auto prune = run_here(kBin + " plan configs/prune-opt-mini.yaml model=" + kOptMini.string());
  ASSERT_EQ(prune.code, 0) << prune.out;
  EXPECT_EQ(prune.out.find("depth plan"), std::string::npos) << prune.out;
  const auto over = run_here(kBin + " plan --depth --model " + kOptMini.string() + " parallel.memory_gb=0.01");
  EXPECT_EQ(over.code, 2) << over.out;
  EXPECT_NE(over.out.find("'parallel.memory_gb' is 0.01 GB per rank"), std::string::npos) << over.out;
  EXPECT_NE(over.out.find("scalpel depth holds the whole model"), std::string::npos) << over.out;
}

TEST(PlanCli, RefusesWhatDoesNotFitWithExitCode2) {
  const auto r = run_here(kBin + " plan configs/opt-175b-8x8-gpu.yaml --ranks 1 parallel.data=0 parallel.memory_gb=40");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("'parallel.memory_gb' is 40 GB per rank, but rank 0"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("does NOT fit"), std::string::npos) << r.out;  // the table came first
  const auto g = run_here(kBin + " plan configs/opt-175b-8x8-gpu.yaml --ranks 63");
  EXPECT_EQ(g.code, 2) << g.out;
  EXPECT_NE(g.out.find("'parallel.data' 64"), std::string::npos) << g.out;
  const auto m = run_here(kBin + " plan --model /nowhere/model");
  EXPECT_EQ(m.code, 2) << m.out;
  EXPECT_NE(m.out.find("/nowhere/model"), std::string::npos) << m.out;
}

TEST(PlanCli, UnderMpiOnlyRankZeroPrintsAndRanksDefaultToTheWorld) {
  const auto r = run_here("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " + std::string(SCALPEL_MPIEXEC) +
                     " -n 2 --oversubscribe " + kBin + " plan --model " +
                     kOptMini.string() + " calibration.seqlen=128");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(count(r.out, "scalpel plan:"), 1u) << r.out;
  EXPECT_NE(r.out.find("2 rank(s) = 1 stage(s) x 2 data"), std::string::npos) << r.out;
  // A refusal on rank 0 ends the whole job with exit code 2.
  const auto x = run_here("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " + std::string(SCALPEL_MPIEXEC) +
                     " -n 2 --oversubscribe " + kBin + " plan configs/opt-175b-8x8-gpu.yaml parallel.data=0 " +
                     "parallel.memory_gb=40");
  EXPECT_EQ(x.code, 2) << x.out;
  EXPECT_NE(x.out.find("'parallel.memory_gb' is 40 GB per rank"), std::string::npos) << x.out;
}

}  // namespace
}  // namespace scalpel::test
