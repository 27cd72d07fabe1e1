// End-to-end tests of prune.allocation (owl, sensitivity) through `scalpel prune`: the allocation
// record comes before the layers and every linear is pruned at the sparsity it was given (OWL
// unstructured with Wanda, OWL's N:M rule with SparseGPT, sensitivity per matrix), the data-
// parallel runs at 1, 2 and 4 ranks allocate and prune identically, and bad settings exit 2
// naming the key with nothing exported.
#include <gtest/gtest.h>

#include "prune_test_util.hpp"

namespace {

using namespace scalpel_test;

// 8 windows of 64 tokens in batches of 2 (4 batches: up to 4 data ranks).
std::vector<std::string> alloc_args(const fs::path& out, const std::vector<std::string>& extra) {
  std::vector<std::string> a{kBin, "prune", "--model", (kShared / "models/opt-mini").string(),
                             "calibration.path=" + (kShared / "data/corpus/calib.txt").string(),
                             "calibration.nsamples=8", "calibration.seqlen=64", "calibration.batch=2",
                             "output.dir=" + out.string(), "log.progress_seconds=0", "threads=1"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

TEST(AllocationCli, OwlGivesEachBlockItsSparsityWithWanda) {
  NEED_SHARED();
  const auto dir = temp_dir("al_owl");
  ASSERT_EQ(run_to_end(alloc_args(dir, {"prune.method=wanda", "prune.sparsity=0.6", "prune.allocation=owl"})), 0);
  const auto alloc = records(dir / "metrics.jsonl", "allocation");
  ASSERT_EQ(alloc.size(), 1u);
  const auto& blocks = alloc[0]["blocks"];
  ASSERT_EQ(blocks.size(), 4u);
  double mean = 0;
  std::vector<double> s;
  for (const auto& b : blocks) {
    EXPECT_GT(b["score"].get<double>(), 0.0) << b.dump();
    s.push_back(b["sparsity"].get<double>());
    mean += s.back() / 4;
  }
  EXPECT_NEAR(mean, 0.6, 1e-12);  // OWL's rule is mean-preserving
  EXPECT_NEAR(*std::max_element(s.begin(), s.end()) - *std::min_element(s.begin(), s.end()), 0.16, 1e-12);  // 2λ
  const auto layers = records(dir / "metrics.jsonl", "layer");
  ASSERT_EQ(layers.size(), 4u);
  for (const auto& l : layers) {
    const double want = s.at(l["layer"].get<std::size_t>());
    for (const auto& [name, lm] : l["linears"].items()) {
      // Wanda prunes int(cols·s) of every row: within 1/cols (256 or 1024 columns) below s.
      const double got = lm["pruned"].get<double>() / lm["weights"].get<double>();
      EXPECT_LE(got, want) << name;
      EXPECT_GT(got, want - 1.0 / 256) << name;
    }
  }
  // A target below OWL's window: the blocks the clamp raises to 1% are named, not pruned silently.
  const auto low = dir / "low";
  const auto r = run(shell_command(alloc_args(low, {"prune.method=magnitude", "prune.sparsity=0",
                                                    "prune.allocation=owl", "output.export="})));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("would get a sparsity <= 0 (prune.sparsity 0 minus"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("OWL's clamp prunes them at 1%"), std::string::npos) << r.out;
  fs::remove_all(dir);
}

TEST(AllocationCli, OwlNmShiftsNPerBlock) {
  NEED_SHARED();
  const auto dir = temp_dir("al_nm");
  ASSERT_EQ(run_to_end(alloc_args(dir, {"prune.method=sparsegpt", "prune.pattern=4:8", "prune.allocation=owl",
                                        "allocation.owl_lambda=2"})),
            0);
  const auto alloc = records(dir / "metrics.jsonl", "allocation");
  ASSERT_EQ(alloc.size(), 1u);
  std::set<std::string> patterns;
  for (const auto& b : alloc[0]["blocks"]) patterns.insert(b["pattern"].get<std::string>());
  EXPECT_GE(patterns.size(), 2u) << alloc[0].dump();  // λ = 2 weights per group moves some blocks off 4:8
  for (const auto& l : records(dir / "metrics.jsonl", "layer")) {
    const auto& b = alloc[0]["blocks"][l["layer"].get<std::size_t>()];
    for (const auto& [name, lm] : l["linears"].items()) {
      EXPECT_EQ(lm["allocated"], b["pattern"]) << name;
      EXPECT_DOUBLE_EQ(lm["sparsity"].get<double>(), b["sparsity"].get<double>()) << name;  // N:M is exact
    }
  }
  const auto out = run_capture({kBin, "inspect", "--json", (dir / "model").string()});
  const auto j = nlohmann::json::parse(out.substr(0, out.rfind("exit=")));
  // The export holds each block's N zeros in every group of 8: inspect names 4:8 (or stronger)
  // where N >= 4 (it knows 1:2, 2:4 and 4:8 only).
  for (const auto& t : j["tensors"]) {
    const auto name = t["tensor"].get<std::string>();
    const auto layer = std::stoul(name.substr(std::string("model.decoder.layers.").size()));
    const auto& b = alloc[0]["blocks"][layer];
    EXPECT_GE(t["sparsity"].get<double>(), b["sparsity"].get<double>()) << name;
    if (b["sparsity"].get<double>() >= 0.5) {
      EXPECT_TRUE(t["nm"].is_string()) << name;
    }
  }
  fs::remove_all(dir);
}

TEST(AllocationCli, SensitivityPerMatrixWeightedHitsTheTarget) {
  NEED_SHARED();
  const auto dir = temp_dir("al_sens");
  const auto traces = (dir / "traces.json").string();
  ASSERT_EQ(run_to_end(alloc_args(dir, {"prune.method=sparsegpt", "prune.allocation=sensitivity",
                                        "allocation.granularity=matrix", "allocation.weighted=true",
                                        "allocation.hutchinson_samples=1", "allocation.traces=" + traces})),
            0);
  ASSERT_TRUE(fs::exists(traces));
  const auto alloc = records(dir / "metrics.jsonl", "allocation");
  ASSERT_EQ(alloc.size(), 1u);
  EXPECT_EQ(alloc[0]["matrices"].size(), 24u);
  EXPECT_NEAR(alloc[0]["weighted_sparsity"].get<double>(), 0.5, 1e-12);
  std::map<std::pair<std::int64_t, std::string>, double> want;
  for (const auto& m : alloc[0]["matrices"]) want[{m["layer"], m["linear"]}] = m["sparsity"].get<double>();
  for (const auto& l : records(dir / "metrics.jsonl", "layer"))
    for (const auto& [name, lm] : l["linears"].items()) {
      // SparseGPT prunes int(rows·128·s) per block of 128 columns: within 1/(rows·128) of s.
      const double s = want.at({l["layer"].get<std::int64_t>(), name});
      EXPECT_NEAR(lm["sparsity"].get<double>(), s, 1e-4) << name;
    }
  // A second run at another sparsity reads the cached traces: the same scores, no passes.
  const auto again = dir / "again";
  const auto r = run(shell_command(alloc_args(again, {"prune.method=sparsegpt", "prune.allocation=sensitivity",
                                                "allocation.granularity=matrix", "prune.sparsity=0.6",
                                                "allocation.hutchinson_samples=1", "allocation.traces=" + traces})));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("traces read from"), std::string::npos) << r.out;
  const auto second = records(again / "metrics.jsonl", "allocation").at(0);
  for (std::size_t i = 0; i < 24; ++i)
    EXPECT_EQ(second["matrices"][i]["score"], alloc[0]["matrices"][i]["score"]) << i;
  // parallel.memory_gb between the prune's planned peak (39.3 MB) and the estimate's (55.4 MB;
  // `scalpel plan --json` with these settings): with the estimate cached it is no phase of the
  // run, which goes through (it was refused); an estimate still to make is refused.
  const std::vector<std::string> tight{"prune.method=sparsegpt", "prune.allocation=sensitivity",
                                       "allocation.granularity=matrix", "parallel.memory_gb=0.047",
                                       "allocation.traces=" + traces};
  auto cached = tight;
  cached.push_back("allocation.hutchinson_samples=1");
  const auto fits = run(shell_command(alloc_args(dir / "tight", cached)));
  EXPECT_EQ(fits.code, 0) << fits.out;
  auto fresh = tight;
  fresh.push_back("allocation.hutchinson_samples=3");
  const auto refused = run(shell_command(alloc_args(dir / "tight3", fresh)));
  EXPECT_EQ(refused.code, 2) << refused.out;
  EXPECT_NE(refused.out.find("allocation (sensitivity)"), std::string::npos) << refused.out;
  // `scalpel plan` decides as the run does (it planned the estimate and refused the job the
  // prune ran).
  const auto planned = [&](const fs::path& out, std::vector<std::string> args) {
    args = alloc_args(out, args);
    args[1] = "plan";
    return run(shell_command(args));
  };
  const auto plan_fits = planned(dir / "tight", cached);
  EXPECT_EQ(plan_fits.code, 0) << plan_fits.out;
  EXPECT_NE(plan_fits.out.find("allocation (sensitivity): the estimate is read whole from " + traces),
            std::string::npos) << plan_fits.out;
  const auto plan_refused = planned(dir / "tight3", fresh);
  EXPECT_EQ(plan_refused.code, 2) << plan_refused.out;
  EXPECT_EQ(plan_refused.out.find("read whole"), std::string::npos) << plan_refused.out;
  // Other probes: estimated anew, and the file now holds those.
  const auto third = dir / "third";
  const auto r3 = run(shell_command(alloc_args(third, {"prune.method=sparsegpt", "prune.allocation=sensitivity",
                                                 "allocation.hutchinson_samples=2", "allocation.traces=" + traces})));
  ASSERT_EQ(r3.code, 0) << r3.out;
  EXPECT_NE(r3.out.find("estimating anew"), std::string::npos) << r3.out;
  // A file that is not a trace file is an input error naming the key.
  std::ofstream(dir / "bad.json") << "{not json";
  const auto bad = run(shell_command(alloc_args(dir / "bad", {"prune.allocation=sensitivity",
                                                        "allocation.traces=" + (dir / "bad.json").string()})));
  EXPECT_EQ(bad.code, 2) << bad.out;
  EXPECT_NE(bad.out.find("allocation.traces"), std::string::npos) << bad.out;
  // JSON that is not a trace file (an array; another program's object) is refused and left as it
  // is; a trace file of this identity whose arrays were cut is malformed; a path in a folder that
  // does not exist is refused before the estimate. All exit 2 naming the key, nothing pruned.
  nlohmann::json cut = nlohmann::json::parse(std::ifstream(traces));
  cut["estimate"]["trace"].erase(cut["estimate"]["trace"].begin() + 3, cut["estimate"]["trace"].end());
  std::ofstream(dir / "cut.json") << cut.dump();
  std::ofstream(dir / "array.json") << "[1, 2]";
  std::ofstream(dir / "other.json") << R"({"format": "x"})";
  int k = 0;
  for (const auto& [file, says] : std::vector<std::pair<fs::path, std::string>>{
           {dir / "array.json", "not a trace file"},
           {dir / "other.json", "not a trace file"},
           {dir / "cut.json", "malformed estimate"},
           {dir / "missing/traces.json", "does not exist"}}) {
    const auto before = fs::exists(file) ? read_bytes(file) : std::string();
    const auto out = dir / ("refused" + std::to_string(k++));
    const auto r4 = run(shell_command(alloc_args(out, {"prune.method=sparsegpt", "prune.allocation=sensitivity",
                                                       "allocation.hutchinson_samples=2",
                                                       "allocation.traces=" + file.string()})));
    EXPECT_EQ(r4.code, 2) << file << "\n" << r4.out;
    EXPECT_NE(r4.out.find("allocation.traces"), std::string::npos) << r4.out;
    EXPECT_NE(r4.out.find(says), std::string::npos) << r4.out;
    EXPECT_EQ(r4.out.find("estimating anew"), std::string::npos) << r4.out;
    EXPECT_EQ(committed_layers(out / "ckpt"), 0) << file;
    if (!before.empty()) {
      EXPECT_EQ(read_bytes(file), before) << file;
    }
  }
  fs::remove_all(dir);
}

// A stop signal during the sensitivity estimate ends the run after the probe under way (exit 75,
// the "interrupted" record says after which), not after the whole estimate and a layer: nothing
// is allocated, committed or written to allocation.traces. The probes done are kept in the
// checkpoint folder: the rerun computes only the others (it estimated all of them again), a
// prune resumed after a layer estimates none, and the export is bitwise that of a run never
// stopped.
TEST(AllocationCli, AStopSignalDuringTheSensitivityEstimateStopsAfterTheProbe) {
  NEED_SHARED();
  const auto dir = temp_dir("al_stop");
  const auto log = dir.string() + ".log";
  const auto traces = dir / "traces.json";
  const auto args = alloc_args(dir, {"prune.method=sparsegpt", "prune.allocation=sensitivity",
                                     "allocation.hutchinson_samples=4", "allocation.traces=" + traces.string()});
  const pid_t pid = spawn(args, log);
  while (read_bytes(log).find("calibration windows x") == std::string::npos) {  // the handlers are in place
    ASSERT_NE(waitpid(pid, nullptr, WNOHANG), pid) << read_bytes(log);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  kill(pid, SIGINT);  // a first Ctrl-C: the same stop, and it says what is kept
  ASSERT_EQ(wait_exit(pid), 75) << read_bytes(log);
  const auto stops = records(dir / "metrics.jsonl", "interrupted");
  ASSERT_EQ(stops.size(), 1u) << read_bytes(log);
  EXPECT_EQ(stops[0]["after_probe"], 1);  // the first check comes after the first of 4 probes
  EXPECT_EQ(stops[0]["signal"], SIGINT);
  EXPECT_NE(read_bytes(log).find("stopping after probe 1/4"), std::string::npos) << read_bytes(log);
  EXPECT_TRUE(records(dir / "metrics.jsonl", "allocation").empty());
  EXPECT_EQ(committed_layers(dir / "ckpt"), 0);
  EXPECT_FALSE(fs::exists(traces));
  EXPECT_FALSE(fs::exists(dir / "model"));
  const auto kept = dir / "ckpt/sensitivity-probes.json";
  ASSERT_TRUE(fs::exists(kept));
  EXPECT_EQ(nlohmann::json::parse(read_bytes(kept))["probes"].size(), 1u);
  // The rerun goes on from probe 2; stopped after its first committed layer, the next one reads
  // all four probes.
  const auto log2 = dir.string() + ".2.log";
  const int second = stop_after_record(spawn(args, log2), dir / "metrics.jsonl", "layer");
  EXPECT_NE(read_bytes(log2).find("1 of 4 probes kept in " + kept.string() + "; estimating the rest"),
            std::string::npos) << read_bytes(log2);
  EXPECT_EQ(nlohmann::json::parse(read_bytes(kept))["probes"].size(), 4u);
  fs::remove(traces);  // which the finished estimate wrote, and which would be read first
  const auto log3 = dir.string() + ".3.log";
  ASSERT_EQ(wait_exit(spawn(args, log3)), 0) << read_bytes(log3);
  if (second == 75) {  // else the second run finished every layer before the signal landed
    EXPECT_NE(read_bytes(log3).find("4 of 4 probes kept in " + kept.string() + "; none left to estimate"),
              std::string::npos) << read_bytes(log3);
  }
  EXPECT_EQ(records(dir / "metrics.jsonl", "allocation").size(), second == 75 ? 2u : 1u);
  EXPECT_TRUE(fs::exists(traces));
  const auto ref = temp_dir("al_stop_ref");
  ASSERT_EQ(run_to_end(alloc_args(ref, {"prune.method=sparsegpt", "prune.allocation=sensitivity",
                                        "allocation.hutchinson_samples=4"})), 0);
  EXPECT_EQ(read_bytes(dir / "model/model.safetensors"), read_bytes(ref / "model/model.safetensors"));
  EXPECT_EQ(records(dir / "metrics.jsonl", "allocation").back()["blocks"],
            records(ref / "metrics.jsonl", "allocation").back()["blocks"]);
  fs::remove_all(dir);
  fs::remove_all(ref);
  for (const auto& l : {log, log2, log3}) fs::remove(l);
}

TEST(AllocationCli, BadSettingsExit2NamingTheKey) {
  NEED_SHARED();
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases{
      {{"prune.allocation=owl", "prune.sparsity=0.9", "allocation.owl_lambda=0.2"}, "allocation.owl_lambda"},
      {{"prune.allocation=sensitivity", "allocation.alpha=0.6"}, "allocation.alpha"},
      {{"prune.allocation=sensitivity", "prune.pattern=2:4"}, "prune.allocation"},
      {{"prune.allocation=owl", "prune.method=surgeon"}, "prune.allocation"},
      {{"prune.allocation=owl", "allocation.granularity=matrix"}, "allocation.granularity"},
      {{"prune.allocation=sensitivity", "parallel.stages=2"}, "prune.allocation"},
      {{"prune.allocation=owls"}, "prune.allocation"},
      {{"allocation.hutchinson_samples=0"}, "allocation.hutchinson_samples"},
      {{"sparsegpt.saliency=isc", "prune.pattern=2:4"}, "sparsegpt.saliency"},
      {{"sparsegpt.saliency=isc", "prune.method=wanda"}, "sparsegpt.saliency"},
      // A traces file nothing can be written beside: before the estimate (it failed after it).
      {{"prune.allocation=sensitivity", "allocation.traces=/proc/scalpel-traces.json"},
       "'allocation.traces' /proc/scalpel-traces.json: cannot be written there"},
  };
  int i = 0;
  for (const auto& [extra, key] : cases) {
    const auto dir = temp_dir("al_bad" + std::to_string(i++));
    const auto r = run(shell_command(alloc_args(dir, extra)));
    EXPECT_EQ(r.code, 2) << key << "\n" << r.out;
    EXPECT_NE(r.out.find(key), std::string::npos) << key << "\n" << r.out;
    EXPECT_FALSE(fs::exists(dir / "model")) << key;
    EXPECT_EQ(committed_layers(dir / "ckpt"), 0) << key;
    fs::remove_all(dir);
  }
}

// Data ranks for both; OWL also through pipeline stages (2 stages of 1 and of 2 data ranks).
TEST(AllocationDist, OneTwoAndFourRanksAllocateAndPruneTheSame) {
  NEED_SHARED();
  for (const std::string alloc : {"owl", "sensitivity"}) {
    std::string want_model;
    nlohmann::json want_alloc;
    std::vector<std::pair<int, int>> grids{{1, 1}, {2, 1}, {4, 1}};  // ranks, stages
    if (alloc == "owl") grids.insert(grids.end(), {{2, 2}, {4, 2}});
    for (const auto& [ranks, stages] : grids) {
      const auto dir = temp_dir("al_mpi" + std::to_string(ranks) + "x" + std::to_string(stages));
      std::vector<std::string> a{kMpiexec, "-n", std::to_string(ranks), "--oversubscribe"};
      const auto rest = alloc_args(dir, {"prune.method=sparsegpt", "prune.allocation=" + alloc,
                                         "allocation.hutchinson_samples=1", "determinism=strict",
                                         "parallel.stages=" + std::to_string(stages)});
      a.insert(a.end(), rest.begin(), rest.end());
      const auto r = run(shell_command(a));
      ASSERT_EQ(r.code, 0) << r.out;
      auto rec = records(dir / "metrics.jsonl", "allocation").at(0);
      for (const char* k : {"time", "seconds", "passes_s"}) rec.erase(k);
      const auto model = read_bytes(dir / "model/model.safetensors");
      if (ranks == 1) {
        want_model = model;
        want_alloc = rec;
      } else {
        EXPECT_EQ(rec, want_alloc) << alloc << " at " << ranks << " ranks, " << stages << " stages";
        EXPECT_EQ(model, want_model) << alloc << " at " << ranks << " ranks, " << stages << " stages";
      }
      fs::remove_all(dir);
    }
  }
}

}  // namespace
