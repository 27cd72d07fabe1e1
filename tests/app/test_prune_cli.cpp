// End-to-end tests of `scalpel prune`: a real SIGKILL at several points followed by a rerun
// of the same command ends bitwise equal to a run never interrupted; the export loads and has the
// requested sparsity and structure; a corrupted shard or a changed config is reported, not used.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

namespace fs = std::filesystem;

#include "prune_test_util.hpp"

namespace {

using namespace scalpel_test;

// A small but complete prune: 8 windows of 128 tokens of the calibration slice.
std::vector<std::string> prune_args(const fs::path& out, const std::string& model = "opt-mini",
                                    const std::vector<std::string>& extra = {}) {
  std::vector<std::string> a{kBin,
                             "prune",
                             "--model",
                             (kShared / "models" / model).string(),
                             "calibration.path=" + (kShared / "data/corpus/calib.txt").string(),
                             "calibration.nsamples=8",
                             "calibration.seqlen=128",
                             "calibration.batch=4",
                             "output.dir=" + out.string(),
                             "log.progress_seconds=0",
                             "threads=1"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

// An N:M pattern whose M does not divide a target's input width: the reference codes take N of
// the last, partial group, so 16:32 on llama-mini's down_proj (688 = 21 x 32 + 16 columns) zeroed
// its last 16 input columns whole and 1:3 on opt-mini's 256-wide linears their last column; it
// exits 0. Refused now, by the prune and by its plan, naming the linear and its width.
TEST(PruneCli, NmThatDoesNotDivideAWidthIsRefused) {
  NEED_SHARED();
  const auto dir = temp_dir("nm_width");
  const std::vector<std::tuple<std::string, std::string, std::string>> cases{{"llama-mini", "16:32", "688"},
                                                                            {"opt-mini", "1:3", "256"}};
  for (const auto& [model, pattern, width] : cases) {
    auto args = prune_args(dir, model, {"prune.method=magnitude", "prune.pattern=" + pattern});
    const auto r = run_capture(args);
    EXPECT_NE(r.find("exit=2"), std::string::npos) << r;
    EXPECT_NE(r.find("'prune.pattern' " + pattern + " does not divide the " + width + " input columns"),
              std::string::npos) << r;
    EXPECT_FALSE(fs::exists(dir / "ckpt")) << pattern;
    args[1] = "plan";
    const auto p = run_capture(args);
    EXPECT_NE(p.find("exit=2"), std::string::npos) << p;
    EXPECT_NE(p.find("does not divide the " + width + " input columns"), std::string::npos) << p;
  }
  fs::remove_all(dir);
}

// A copy of opt-mini with every byte of `tensor` set to 0xff (NaN in any float dtype).
fs::path model_with_nan(const fs::path& dir, const std::string& tensor) {
  const auto model = copy_opt_mini(dir / "model-nan");
  const auto [begin, end] = tensor_file_range(model, tensor);
  std::fstream f(model / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(begin));
  const std::string nan(end - begin, '\xff');
  f.write(nan.data(), static_cast<std::streamsize>(nan.size()));
  return model;
}

// A NaN in a tensor no pruner reads (a LayerNorm, the embeddings) surfaced as "the Hessian holds
// NaN ... (the layer's inputs overflowed?)" for the next linear: now the damaged tensor is named,
// exit 2, the layers before it committed and the one it is in not.
TEST(PruneCli, ANanOutsideTheLinearsIsNamed) {
  NEED_SHARED();
  const auto dir = temp_dir("nan_named");
  const std::vector<std::tuple<std::string, std::string, std::int64_t>> cases{
      {"model.decoder.layers.1.final_layer_norm.weight", "layer 1 final_layer_norm.weight", 1},
      {"model.decoder.embed_tokens.weight", "model.decoder.embed_tokens.weight: a row of the", 0},
      {"model.decoder.embed_positions.weight", "model.decoder.embed_positions.weight: a row of positions", 0}};
  for (const auto& [tensor, says, committed] : cases) {
    auto args = prune_args(dir / "run", "opt-mini", {"prune.method=sparsegpt"});
    args[3] = model_with_nan(dir, tensor).string();
    const auto r = run_capture(args);
    EXPECT_NE(r.find("exit=2"), std::string::npos) << tensor << r;
    EXPECT_NE(r.find(says), std::string::npos) << tensor << r;
    EXPECT_NE(r.find("NaN or infinite"), std::string::npos) << tensor << r;
    EXPECT_EQ(r.find("Hessian"), std::string::npos) << tensor << r;
    EXPECT_EQ(committed_layers(dir / "run/ckpt"), committed) << tensor;
    fs::remove_all(dir / "run");
  }
  fs::remove_all(dir);
}

TEST(PruneCli, SigkillAtAnyPointThenRerunIsBitwiseEqual) {
  NEED_SHARED();
  const auto ref = temp_dir("ref");
  ASSERT_EQ(run_to_end(prune_args(ref)), 0);
  const auto want = read_bytes(ref / "model/model.safetensors");
  ASSERT_GT(want.size(), 1000u);

  // Kill points: right away, after the first commit, after the third, and at a random instant.
  std::mt19937 rng(12345);
  int killed_mid_run = 0;
  for (int trial = 0; trial < 4; ++trial) {
    const auto dir = temp_dir("kill" + std::to_string(trial));
    const pid_t pid = spawn(prune_args(dir));
    const auto t0 = std::chrono::steady_clock::now();
    const std::int64_t wait_for = trial == 0 ? -1 : trial == 1 ? 1 : trial == 2 ? 3 : -2;
    const auto random_ms = std::uniform_int_distribution<int>(50, 1500)(rng);
    bool exited = false;
    while (true) {
      int st = 0;
      if (waitpid(pid, &st, WNOHANG) == pid) {
        exited = true;
        break;
      }
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
      if (wait_for == -1 && ms > 30) break;
      if (wait_for == -2 && ms > random_ms) break;
      if (wait_for > 0 && committed_layers(dir / "ckpt") >= wait_for) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (!exited) {
      kill(pid, SIGKILL);
      wait_exit(pid);
    }
    const auto done_before = committed_layers(dir / "ckpt");
    if (!exited && done_before < 4) ++killed_mid_run;
    ASSERT_EQ(run_to_end(prune_args(dir)), 0) << "trial " << trial;
    EXPECT_EQ(read_bytes(dir / "model/model.safetensors"), want)
        << "trial " << trial << ": killed with " << done_before << " layers committed";
    fs::remove_all(dir);
  }
  // The test means something only if the kills landed before the end of the run.
  EXPECT_GE(killed_mid_run, 3);
  fs::remove_all(ref);
}

TEST(PruneCli, TwoFourExportHasExactStructure) {
  NEED_SHARED();
  const auto dir = temp_dir("nm");
  // With a zero-shot task scored on the pruned model at the end.
  const std::string task = (fs::path(SCALPEL_SOURCE_DIR) / "tests/data/tasks/everyday_mc.jsonl").string();
  auto args = prune_args(dir, "llama-mini",
                         {"prune.pattern=2:4", "eval.tasks=[{name: everyday, preset: mc, path: " + task + "}]"});
  ASSERT_EQ(run_to_end(args), 0);
  std::ifstream metrics(dir / "metrics.jsonl");
  bool scored = false;
  for (std::string line; std::getline(metrics, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.value("event", "") != "task") continue;
    scored = true;
    EXPECT_EQ(j["task"], "everyday");
    EXPECT_EQ(j["pruned"], true);
    EXPECT_EQ(j["items"], 40);
    EXPECT_GE(j["acc"].get<double>(), 0.0);
  }
  EXPECT_TRUE(scored) << "no task record in " << (dir / "metrics.jsonl");
  const auto out = run_capture({kBin, "inspect", "--json", (dir / "model").string()});
  const auto j = nlohmann::json::parse(out.substr(0, out.rfind("exit=")));
  ASSERT_EQ(j["tensors"].size(), 28u);  // llama-mini: 4 layers x 7 linears
  for (const auto& t : j["tensors"]) {
    EXPECT_EQ(t["nm"], "2:4") << t["tensor"];
    EXPECT_DOUBLE_EQ(t["sparsity"].get<double>(), 0.5) << t["tensor"];
  }
  fs::remove_all(dir);
}

// A shard damaged inside is refused with the layer to restart from, and --restart-from that layer
// recomputes it and the later ones, keeping those before: the same model as the first run's. One
// missing (or of another size) is found at the opening, and the rerun computes it again alone.
TEST(PruneCli, ADamagedShardCostsOnlyItsLayerAndTheLaterOnes) {
  NEED_SHARED();
  const auto dir = temp_dir("corrupt");
  const auto args = prune_args(dir, "opt-mini", {"prune.method=wanda"});
  ASSERT_EQ(run_to_end(args), 0);
  const auto want = read_bytes(dir / "model/model.safetensors");
  const auto shard = dir / "ckpt/layer-00002.shard-00000.h5";
  ASSERT_TRUE(fs::exists(shard));
  std::string bytes = read_bytes(shard);
  for (std::size_t i = bytes.size() / 2; i < bytes.size() / 2 + 64; ++i) bytes[i] = static_cast<char>(~bytes[i]);
  std::ofstream(shard, std::ios::binary | std::ios::trunc) << bytes;
  const auto out = run_capture(args);
  EXPECT_NE(out.find("exit=2"), std::string::npos) << out;
  EXPECT_NE(out.find("layer-00002.shard-00000.h5"), std::string::npos) << out;
  EXPECT_NE(out.find("rerun the prune with --restart-from 2"), std::string::npos) << out;

  // Each rerun writes the export anew (removed here so that the comparisons below see its bytes).
  auto from2 = args;
  from2.insert(from2.end(), {"--restart-from", "2"});
  fs::remove_all(dir / "model");
  auto with_progress = from2;  // every progress line printed
  std::replace(with_progress.begin(), with_progress.end(), std::string("log.progress_seconds=0"),
               std::string("log.progress_seconds=0.000001"));
  const auto redo = run_capture(with_progress);
  EXPECT_NE(redo.find("exit=0"), std::string::npos) << redo;
  // The replay reports apart from the pruning, whose line counts the layers kept as done.
  EXPECT_NE(redo.find("replay of the committed layers: 2/2 layers (100%)"), std::string::npos) << redo;
  EXPECT_EQ(redo.find("prune: 1/4 layers"), std::string::npos) << redo;
  EXPECT_NE(redo.find("prune: 3/4 layers (75%)"), std::string::npos) << redo;
  EXPECT_NE(redo.find("--restart-from 2: 2 committed layer(s) from layer 2 on discarded, the 2 before it kept"),
            std::string::npos) << redo;
  EXPECT_NE(redo.find("resuming at layer 2"), std::string::npos) << redo;
  EXPECT_EQ(read_bytes(dir / "model/model.safetensors"), want);

  fs::remove(dir / "ckpt/layer-00003.shard-00000.h5");
  fs::remove_all(dir / "model");
  const auto missing = run_capture(args);
  EXPECT_NE(missing.find("exit=0"), std::string::npos) << missing;
  EXPECT_NE(missing.find("shard file of committed layer 3 is missing; layers 3 and after are computed again (3 "
                         "committed layer(s) before it kept)"), std::string::npos) << missing;
  EXPECT_NE(missing.find("resuming at layer 3"), std::string::npos) << missing;
  EXPECT_EQ(read_bytes(dir / "model/model.safetensors"), want);

  // Past the last layer, with --restart, or for LLM Surgeon's shots: refused, nothing discarded.
  auto past = args;
  past.insert(past.end(), {"--restart-from", "4"});
  const auto refused = run_capture(past);
  EXPECT_NE(refused.find("exit=2"), std::string::npos) << refused;
  EXPECT_NE(refused.find("--restart-from 4: the model has 4 layers (0..3)"), std::string::npos) << refused;
  auto both = from2;
  both.push_back("--restart");
  const auto excluded = run_capture(both);
  EXPECT_NE(excluded.find("excludes"), std::string::npos) << excluded;
  EXPECT_NE(excluded.find("exit=2"), std::string::npos) << excluded;
  auto surgeon = from2;
  surgeon.push_back("prune.method=surgeon");
  const auto shots = run_capture(surgeon);
  EXPECT_NE(shots.find("exit=2"), std::string::npos) << shots;
  EXPECT_NE(shots.find("LLM Surgeon's state is one model per shot"), std::string::npos) << shots;
  EXPECT_EQ(committed_layers(dir / "ckpt"), 4);
  fs::remove_all(dir);
}

TEST(PruneCli, ChangedConfigIsRefusedUntilRestart) {
  NEED_SHARED();
  const auto dir = temp_dir("cfg");
  ASSERT_EQ(run_to_end(prune_args(dir, "opt-mini", {"prune.method=magnitude"})), 0);
  const auto out = run_capture(prune_args(dir, "opt-mini", {"prune.method=magnitude", "prune.sparsity=0.6"}));
  EXPECT_NE(out.find("exit=2"), std::string::npos) << out;
  EXPECT_NE(out.find("(changed: prune.sparsity 0.5 -> 0.6)"), std::string::npos) << out;  // the key, not a hash alone
  auto again = prune_args(dir, "opt-mini", {"prune.method=magnitude", "prune.sparsity=0.6"});
  again.push_back("--restart");
  const auto restarted = run_capture(again);
  EXPECT_NE(restarted.find("exit=0"), std::string::npos) << restarted;
  // The layers --restart discards are said as such (it said "of an interrupted commit").
  EXPECT_NE(restarted.find("discarded 4 file(s) for --restart"), std::string::npos) << restarted;
  // Committed layers whose manifest was removed: a warning that they are computed again.
  fs::remove(dir / "ckpt/manifest.json");
  again.pop_back();
  const auto lost = run_capture(again);
  EXPECT_NE(lost.find("exit=0"), std::string::npos) << lost;
  EXPECT_NE(lost.find("[warning] checkpoint " + (dir / "ckpt").string() + ": removed 4 file(s) that no "
                      "manifest records (manifest.json is missing: the layers they held are computed again)"),
            std::string::npos) << lost;
  fs::remove_all(dir);
}

// A model with the same config and shapes but other weight values (trained further, one tensor
// replaced) is another model: its checkpoint is refused. An earlier release's fingerprint (config
// and headers only; "xxh3:5fe2299b132ffc6e" is what it recorded for opt-mini) is taken with a
// warning that the values cannot be checked, and the manifest then records the new one.
TEST(PruneCli, AModelWithOtherWeightValuesIsAnotherModel) {
  NEED_SHARED();
  const auto dir = temp_dir("values");
  const auto model = copy_opt_mini(dir / "model");
  auto args = prune_args(dir / "run", "opt-mini", {"prune.method=magnitude", "output.export="});
  args[3] = model.string();
  ASSERT_EQ(run_to_end(args), 0);
  const auto manifest = dir / "run/ckpt/manifest.json";
  const auto fingerprint = [&] { return nlohmann::json::parse(read_bytes(manifest))["model"]["fingerprint"]; };
  const std::string made = fingerprint();
  EXPECT_EQ(made.rfind("xxh3s:", 0), 0u) << made;

  // The earlier release's record of the same model: resumed (nothing left to do), with the warning.
  auto m = nlohmann::json::parse(read_bytes(manifest));
  m["model"]["fingerprint"] = "xxh3:5fe2299b132ffc6e";
  std::ofstream(manifest) << m.dump(2);
  const auto legacy = run_capture(args);
  EXPECT_NE(legacy.find("exit=0"), std::string::npos) << legacy;
  EXPECT_NE(legacy.find("recorded by an earlier release, whose model fingerprint covered config.json and the "
                        "weight files' headers but not the weights' values"), std::string::npos) << legacy;
  EXPECT_EQ(fingerprint(), made);
  // Another model's earlier fingerprint (llama-mini's) is refused as before.
  m["model"]["fingerprint"] = "xxh3:258cbbdd7187d4c1";
  std::ofstream(manifest) << m.dump(2);
  const auto other = run_capture(args);
  EXPECT_NE(other.find("exit=2"), std::string::npos) << other;
  EXPECT_NE(other.find("the checkpoint belongs to model"), std::string::npos) << other;
  m["model"]["fingerprint"] = made;
  std::ofstream(manifest) << m.dump(2);

  // One weight changed in place (the first of layer 2's fc1), same file size and header: refused.
  const auto bytes = read_bytes(model / "model.safetensors");
  const auto at = tensor_file_range(model, "model.decoder.layers.2.fc1.weight").first;
  {
    std::fstream f(model / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(at));
    const char c = static_cast<char>(bytes[at] ^ 0x01);
    f.write(&c, 1);
  }
  const auto edited = run_capture(args);
  EXPECT_NE(edited.find("exit=2"), std::string::npos) << edited;
  EXPECT_NE(edited.find("the checkpoint belongs to model"), std::string::npos) << edited;
  EXPECT_EQ(fingerprint(), made);
  fs::remove_all(dir);
}

// sparsegpt.split_width is part of the identity only where a target's factor reaches it: with the
// attention alone pruned (256 inputs), moving it between 512 and 2048 changes nothing and the
// checkpoint resumes; with fc2 pruned too (1024 inputs) the same move is a changed config.
TEST(PruneCli, SplitWidthCountsOnlyForTheTargetsFactors) {
  NEED_SHARED();
  const auto dir = temp_dir("split_ident");
  const std::string attn = "prune.targets=[self_attn.q_proj, self_attn.k_proj, self_attn.v_proj, self_attn.out_proj]";
  ASSERT_EQ(run_to_end(prune_args(dir, "opt-mini", {attn, "sparsegpt.split_width=512"})), 0);
  const auto same = run_capture(prune_args(dir, "opt-mini", {attn, "sparsegpt.split_width=2048"}));
  EXPECT_NE(same.find("exit=0"), std::string::npos) << same;
  EXPECT_NE(same.find("nothing to prune"), std::string::npos) << same;
  const auto all = temp_dir("split_ident_all");
  ASSERT_EQ(run_to_end(prune_args(all, "opt-mini", {"sparsegpt.split_width=512"})), 0);
  const auto changed = run_capture(prune_args(all, "opt-mini", {"sparsegpt.split_width=2048"}));
  EXPECT_NE(changed.find("exit=2"), std::string::npos) << changed;
  fs::remove_all(dir);
  fs::remove_all(all);
}

// output.reconstruction_error: false skips the error's GEMMs: the same pruned model, null fields.
TEST(PruneCli, TheReconstructionErrorCanBeSkipped) {
  NEED_SHARED();
  const auto dir = temp_dir("noerr");
  ASSERT_EQ(run_to_end(prune_args(dir / "with", "opt-mini", {"eval.sets=[]"})), 0);
  ASSERT_EQ(run_to_end(prune_args(dir / "without", "opt-mini", {"eval.sets=[]", "output.reconstruction_error=false"})),
            0);
  EXPECT_TRUE(read_bytes(dir / "with/model/model.safetensors") == read_bytes(dir / "without/model/model.safetensors"));
  const auto with = records(dir / "with/metrics.jsonl", "layer"), without = records(dir / "without/metrics.jsonl", "layer");
  ASSERT_EQ(without.size(), 4u);
  ASSERT_EQ(with.size(), 4u);
  for (std::size_t l = 0; l < 4; ++l)
    for (const auto& [name, lin] : without[l]["linears"].items()) {
      EXPECT_TRUE(lin["error"].is_null() && lin["error_rel"].is_null()) << name;
      EXPECT_GT(with[l]["linears"][name]["error"].get<double>(), 0.0) << name;
    }
  fs::remove_all(dir);
}

TEST(PruneCli, TargetsTrueSequentialAndDensePropagation) {
  NEED_SHARED();
  const auto dir = temp_dir("options");
  // Only the MLP input projections, statistics re-collected after each group, dense inputs.
  ASSERT_EQ(run_to_end(prune_args(dir, "llama-mini",
                                  {"prune.targets=[mlp.gate_proj, mlp.up_proj]", "prune.true_sequential=true",
                                   "prune.propagation=dense", "prune.sparsity=0.6"})),
            0);
  const auto out = run_capture({kBin, "inspect", "--json", (dir / "model").string()});
  const auto j = nlohmann::json::parse(out.substr(0, out.rfind("exit=")));
  int pruned = 0;
  for (const auto& t : j["tensors"]) {
    const auto name = t["tensor"].get<std::string>();
    const bool target = name.find("gate_proj") != std::string::npos || name.find("up_proj") != std::string::npos;
    if (target) {
      ++pruned;
      EXPECT_NEAR(t["sparsity"].get<double>(), 0.6, 0.01) << name;  // SparseGPT: int(rows*128*0.6) per block
    } else {
      EXPECT_LT(t["sparsity"].get<double>(), 0.001) << name;
    }
  }
  EXPECT_EQ(pruned, 8);  // 4 layers x (gate, up)
  // A glob that matches nothing is an error naming it.
  const auto bad = run_capture(prune_args(dir, "llama-mini", {"prune.targets=[fc9]", "--restart"}));
  EXPECT_NE(bad.find("exit=2"), std::string::npos) << bad;
  EXPECT_NE(bad.find("'fc9' matches no linear"), std::string::npos) << bad;
  fs::remove_all(dir);
}

// `scalpel inspect` of a checkpoint: a killed run's layers and where the rerun starts, a finished
// one's summary, and --verify reading every committed file back: a damaged byte is found (exit 2,
// naming the file) without running anything.
TEST(PruneCli, InspectTellsWhereACheckpointStandsAndVerifiesIt) {
  NEED_SHARED();
  const auto dir = temp_dir("inspect");
  const pid_t pid = spawn(prune_args(dir, "opt-mini", {"prune.method=sparsegpt"}));
  while (committed_layers(dir / "ckpt") < 2) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  kill(pid, SIGKILL);
  wait_exit(pid);
  const auto json_of = [](const std::string& out) { return nlohmann::json::parse(out.substr(0, out.rfind("exit="))); };
  const auto ckpt = (dir / "ckpt").string();
  const auto partial = run_capture({kBin, "inspect", "--json", "--verify", ckpt});
  ASSERT_NE(partial.find("exit=0"), std::string::npos) << partial;
  const auto p = json_of(partial);
  const auto done = static_cast<std::int64_t>(p["committed"]["layers"].size());
  EXPECT_GE(done, 2);
  EXPECT_EQ(done, committed_layers(dir / "ckpt"));
  EXPECT_FALSE(p["complete"].get<bool>());
  EXPECT_EQ(p["first_uncommitted"].get<std::int64_t>(), done);
  EXPECT_EQ(p["verified"]["layers"].get<std::int64_t>(), done);
  EXPECT_EQ(p["committed"]["pruned"].get<std::int64_t>(), done * 786432 / 2);  // half of each layer's linears
  if (done < 4) {
    EXPECT_GT(p["remaining_seconds_estimate"].get<double>(), 0);
    EXPECT_NE(run_capture({kBin, "inspect", ckpt}).find("the rerun starts at layer " + std::to_string(done)),
              std::string::npos);
  }
  // Finished: the summary; then one byte of layer 0's shard damaged.
  ASSERT_EQ(run_to_end(prune_args(dir, "opt-mini", {"prune.method=sparsegpt", "output.export="})), 0);
  const auto table = run_capture({kBin, "inspect", "--verify", ckpt});
  EXPECT_NE(table.find("4 of 4 committed"), std::string::npos) << table;
  EXPECT_NE(table.find("complete: sparsegpt unstructured 50%"), std::string::npos) << table;
  EXPECT_NE(table.find("every size, checksum and digest matches"), std::string::npos) << table;
  const auto shard = dir / "ckpt/layer-00000.shard-00000.h5";
  {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(fs::file_size(shard) / 2));
    const char c = static_cast<char>(f.get());
    f.seekp(static_cast<std::streamoff>(fs::file_size(shard) / 2));
    f.put(static_cast<char>(c ^ 0x5a));
  }
  const auto damaged = run_capture({kBin, "inspect", "--verify", ckpt});
  EXPECT_NE(damaged.find("exit=2"), std::string::npos) << damaged;
  EXPECT_NE(damaged.find("layer-00000.shard-00000.h5"), std::string::npos) << damaged;
  EXPECT_NE(damaged.find("verify FAILED after 0 good layer(s)"), std::string::npos) << damaged;
  // As JSON the report still comes (stdout alone here), saying what failed, with the same exit code.
  const auto damaged_json = run_capture({kBin, "inspect", "--json", "--verify", ckpt}, false);
  EXPECT_NE(damaged_json.find("exit=2"), std::string::npos) << damaged_json;
  const auto d = json_of(damaged_json);
  EXPECT_FALSE(d["verified"]["ok"].get<bool>());
  EXPECT_EQ(d["verified"]["exit_code"], 2);
  EXPECT_NE(d["verified"]["error"].get<std::string>().find("layer-00000.shard-00000.h5"), std::string::npos);
  // A manifest field of the wrong type (hand-edited) is an input error naming the folder (it was
  // an internal error, exit 4).
  fs::create_directories(dir / "edited");
  auto edited = nlohmann::json::parse(read_bytes(dir / "ckpt/manifest.json"));
  edited["grid"] = "x";
  std::ofstream(dir / "edited/manifest.json") << edited.dump();
  const auto wrong = run_capture({kBin, "inspect", (dir / "edited").string()});
  EXPECT_NE(wrong.find("exit=2"), std::string::npos) << wrong;
  EXPECT_NE(wrong.find("wrong type"), std::string::npos) << wrong;
  EXPECT_NE(run_capture({kBin, "inspect", ckpt}).find("exit=0"), std::string::npos);  // without --verify: the manifest
  // ... and a stat of each shard: one missing or of another size is said, exit 2 (it printed
  // "complete" with the manifest's sizes).
  fs::copy(dir / "ckpt", dir / "cut", fs::copy_options::recursive);
  fs::resize_file(dir / "cut/layer-00002.shard-00000.h5", 1000);
  const auto cut = run_capture({kBin, "inspect", (dir / "cut").string()});
  EXPECT_NE(cut.find("exit=2"), std::string::npos) << cut;
  EXPECT_NE(cut.find("DAMAGED (a stat of the shard files): " + (dir / "cut/layer-00002.shard-00000.h5").string() +
                     ": shard file of committed layer 2 has 1000 bytes"), std::string::npos) << cut;
  fs::remove(dir / "cut/layer-00002.shard-00000.h5");
  EXPECT_NE(run_capture({kBin, "inspect", (dir / "cut").string()}).find("is missing"), std::string::npos);
  // An export that meets the damage fails the same way and leaves no half-written folder.
  const auto re = run_capture({kBin, "export", "--checkpoint", ckpt, "--out", (dir / "re").string()});
  EXPECT_NE(re.find("exit=2"), std::string::npos) << re;
  EXPECT_FALSE(fs::exists(dir / "re"));
  EXPECT_FALSE(fs::exists(dir / "re.tmp-export"));
  // The run's folder itself (output.dir) is neither: the error says what it holds.
  const auto run_dir = run_capture({kBin, "inspect", dir.string()});
  EXPECT_NE(run_dir.find("exit=2"), std::string::npos) << run_dir;
  EXPECT_NE(run_dir.find("it holds ckpt (a checkpoint)"), std::string::npos) << run_dir;
  // Layer shards without their manifest (it said "missing config.json"): the folder, and the run's
  // folder holding it, say what it is and that nothing in it is committed.
  fs::create_directories(dir / "orphan/ckpt");
  fs::copy_file(dir / "ckpt/layer-00000.shard-00000.h5", dir / "orphan/ckpt/layer-00000.shard-00000.h5");
  const auto orphan = run_capture({kBin, "inspect", (dir / "orphan/ckpt").string()});
  EXPECT_NE(orphan.find("exit=2"), std::string::npos) << orphan;
  EXPECT_NE(orphan.find("but no manifest.json"), std::string::npos) << orphan;
  EXPECT_NE(orphan.find("nothing in it counts as committed"), std::string::npos) << orphan;
  const auto above = run_capture({kBin, "inspect", (dir / "orphan").string()});
  EXPECT_NE(above.find("exit=2"), std::string::npos) << above;
  EXPECT_NE(above.find("it holds ckpt (a checkpoint without its manifest.json"), std::string::npos) << above;
  fs::remove_all(dir);
}

// A stop signal after the last layer is honoured too (Slurm's preemption of a run in its export
// or evaluation): SIGUSR1 once the summary is written stops before the evaluation or between its
// sets, with exit code 75 and an "interrupted" record; the rerun prunes nothing and evaluates what
// is left. Then SIGUSR1 once set a is recorded (it stops after a or b).
TEST(PruneCli, AStopDuringTheFinalEvaluationIsHonoured) {
  NEED_SHARED();
  const auto dir = temp_dir("stop_eval");
  const auto heldout = (kShared / "data/corpus/heldout.txt").string();
  const std::vector<std::string> extra{"prune.method=magnitude", "eval.max_windows=40",
                                       eval_sets_arg({"a", "b", "c"}, heldout)};
  EXPECT_EQ(stop_after_record(spawn(prune_args(dir, "opt-mini", extra)), dir / "metrics.jsonl", "prune"), 75);
  const auto stops = records(dir / "metrics.jsonl", "interrupted");
  ASSERT_EQ(stops.size(), 1u);
  EXPECT_EQ(stops[0]["signal"], SIGUSR1);
  EXPECT_LE(records(dir / "metrics.jsonl", "eval").size(), 2u);  // stopped before set c
  fs::remove_all(dir);
  EXPECT_EQ(stop_after_record(spawn(prune_args(dir, "opt-mini", extra)), dir / "metrics.jsonl", "eval"), 75);
  const auto before = records(dir / "metrics.jsonl", "eval").size();
  ASSERT_GE(before, 1u);
  // The rerun goes on where the evaluation stopped: a set evaluated before the stop is not
  // evaluated again (a requeued job whose evaluation outlasted its time slot repeated it forever,
  // writing its record each time), so each set has exactly one record.
  const auto rerun = run_capture(prune_args(dir, "opt-mini", extra));
  ASSERT_NE(rerun.find("exit=0"), std::string::npos) << rerun;
  EXPECT_NE(rerun.find("nothing to prune"), std::string::npos) << rerun;
  EXPECT_NE(rerun.find("c: ppl"), std::string::npos) << rerun;
  EXPECT_EQ(rerun.find("a: ppl"), std::string::npos) << rerun;
  EXPECT_NE(rerun.find("a: evaluated by an earlier run of this checkpoint before it stopped"), std::string::npos)
      << rerun;
  const auto evals = records(dir / "metrics.jsonl", "eval");
  ASSERT_EQ(evals.size(), 3u);
  EXPECT_EQ(evals[0]["threads"], 1);  // as scalpel eval's records carry it
  EXPECT_EQ(evals[0]["set"], "a");
  EXPECT_EQ(evals[1]["set"], "b");
  EXPECT_EQ(evals[2]["set"], "c");
  // A finished evaluation leaves nothing behind: running the same command again evaluates all.
  const auto third = run_capture(prune_args(dir, "opt-mini", extra));
  for (const char* n : {"a: ppl", "b: ppl", "c: ppl"}) EXPECT_NE(third.find(n), std::string::npos) << third;
  EXPECT_FALSE(nlohmann::json::parse(read_bytes(dir / "ckpt/manifest.json"))["extra"].contains("evaluation"));
  fs::remove_all(dir);
}

// An empty calibration.path named no setting (": file not found").
TEST(PruneCli, AnEmptyCalibrationPathIsNamed) {
  NEED_SHARED();
  const auto dir = temp_dir("no_calib");
  const auto r = run_capture(prune_args(dir, "opt-mini", {"calibration.path="}));
  EXPECT_NE(r.find("exit=2"), std::string::npos) << r;
  EXPECT_NE(r.find("'calibration.path' is empty"), std::string::npos) << r;
  // An empty file is the calibration text, not "the evaluation text (preset text)" as it said.
  fs::create_directories(dir);
  std::ofstream(dir / "empty.txt").flush();
  const auto e = run_capture(prune_args(dir, "opt-mini", {"calibration.path=" + (dir / "empty.txt").string()}));
  EXPECT_NE(e.find("exit=2"), std::string::npos) << e;
  EXPECT_NE(e.find("'calibration.path' " + (dir / "empty.txt").string() + ": the calibration text is empty"),
            std::string::npos) << e;
  EXPECT_FALSE(fs::exists(dir / "ckpt"));
  fs::remove_all(dir);
}

// calibration.offsets replaces the seeded sampling: its windows are the run's, whatever nsamples
// says (8 here), and the first line says that nsamples and seed are not used.
TEST(PruneCli, AnOffsetsFileReplacesTheSeededWindows) {
  NEED_SHARED();
  const auto dir = temp_dir("offsets");
  fs::create_directories(dir);
  std::ofstream(dir / "offs.txt") << "# two windows\n0\n1000\n";
  const auto r = run_capture(prune_args(dir, "opt-mini", {"prune.method=wanda", "output.export=",
                                                          "calibration.offsets=" + (dir / "offs.txt").string()}));
  EXPECT_NE(r.find("exit=0"), std::string::npos) << r;
  EXPECT_NE(r.find("2 calibration windows x 128 tokens from " + (kShared / "data/corpus/calib.txt").string() +
                   " at the offsets in " + (dir / "offs.txt").string() + " (calibration.nsamples and seed not used)"),
            std::string::npos) << r;
  fs::remove_all(dir);
}

// True once `pid` catches SIGUSR1 (its SigCgt mask in /proc), i.e. once main has installed the
// stop handlers.
bool catches_sigusr1(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("SigCgt:", 0) == 0) return (std::stoull(line.substr(7), nullptr, 16) >> (SIGUSR1 - 1)) & 1;
  return false;
}

// A preemption that lands while the run starts (MPI, the model, the texts) is not a kill: the
// handlers go in first thing in main, and the run stops after its first layer with exit 75, so
// that the batch script requeues it (it died of SIGUSR1, exit 138, and was not requeued). Only
// the loading of the executable's libraries, before main, stays exposed.
TEST(PruneCli, AStopSignalDuringStartUpStopsAfterTheFirstLayer) {
  NEED_SHARED();
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);  // no restart of the process to set it (see run_control.hpp)
  const auto dir = temp_dir("early_stop");
  const auto log = dir / "run.log";
  const pid_t pid = spawn(prune_args(dir, "opt-mini", {"prune.method=sparsegpt"}), log);
  while (!catches_sigusr1(pid) && waitpid(pid, nullptr, WNOHANG) == 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  kill(pid, SIGUSR1);
  EXPECT_EQ(wait_exit(pid), 75);
  // Said at once, before MPI knew the rank: a process no launcher started is rank 0.
  EXPECT_NE(read_bytes(log).find("scalpel: SIGUSR1 received: stopping after the current step (it is kept, rerun "
                                 "to resume)"),
            std::string::npos)
      << read_bytes(log);
  const auto stops = records(dir / "metrics.jsonl", "interrupted");
  ASSERT_EQ(stops.size(), 1u);
  EXPECT_EQ(stops[0]["after_layer"], 0);
  EXPECT_EQ(committed_layers(dir / "ckpt"), 1);
  fs::remove_all(dir);
}

// A stop while a resume replays its committed layers (the forwards that rebuild the activations)
// names the last committed layer in its record, not the layer replayed (it said after_layer 0 with
// layers 0..2 committed), and the rerun still finishes.
TEST(PruneCli, AStopDuringTheReplayOfCommittedLayersNamesTheLastOne) {
  NEED_SHARED();
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  const auto dir = temp_dir("replay_stop");
  const std::vector<std::string> extra{"prune.method=sparsegpt", "output.export=", "eval.sets=[]", "eval.tasks=[]"};
  // Stopped once two layers are committed, so that a replay of layer 0 alone shows the difference.
  const pid_t first = spawn(prune_args(dir, "opt-mini", extra));
  while (records(dir / "metrics.jsonl", "layer").size() < 2 && waitpid(first, nullptr, WNOHANG) == 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  kill(first, SIGUSR1);
  EXPECT_EQ(wait_exit(first), 75);
  const auto kept = committed_layers(dir / "ckpt");
  ASSERT_GE(kept, 2);
  if (kept >= 4) GTEST_SKIP() << "the stop came after the last layer; nothing to replay";
  fs::remove(dir / "metrics.jsonl");
  const pid_t pid = spawn(prune_args(dir, "opt-mini", extra));
  while (!catches_sigusr1(pid) && waitpid(pid, nullptr, WNOHANG) == 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  kill(pid, SIGUSR1);  // taken at start-up: honoured after the first replayed layer
  EXPECT_EQ(wait_exit(pid), 75);
  const auto stops = records(dir / "metrics.jsonl", "interrupted");
  ASSERT_EQ(stops.size(), 1u);
  EXPECT_EQ(stops[0]["after_layer"], kept - 1);
  EXPECT_EQ(committed_layers(dir / "ckpt"), kept);
  EXPECT_EQ(run_to_end(prune_args(dir, "opt-mini", extra)), 0);
  EXPECT_EQ(committed_layers(dir / "ckpt"), 4);
  fs::remove_all(dir);
}

// Ctrl-C: the first stops after the layer under way as SIGTERM does (exit 75, an "interrupted"
// record naming SIGINT, the rerun resumes); a second one, once the first was taken, ends the
// process at once (killed by SIGINT, 130 in a shell) and the committed layers stay usable.
TEST(PruneCli, CtrlCStopsAfterTheLayerAndASecondOneAbortsAtOnce) {
  NEED_SHARED();
  const auto dir = temp_dir("ctrl_c");
  const std::vector<std::string> extra{"prune.method=sparsegpt"};
  const auto log = dir / "run.log";
  EXPECT_EQ(stop_after_record(spawn(prune_args(dir, "opt-mini", extra), log), dir / "metrics.jsonl", "layer", SIGINT),
            75);
  const auto stops = records(dir / "metrics.jsonl", "interrupted");
  ASSERT_EQ(stops.size(), 1u);
  EXPECT_EQ(stops[0]["signal"], SIGINT);
  EXPECT_NE(read_bytes(log).find("(it is kept, rerun to resume); Ctrl-C again to abort at once"), std::string::npos)
      << read_bytes(log);
  EXPECT_EQ(run_to_end(prune_args(dir, "opt-mini", extra)), 0);

  // Twice: the evaluation of one long set checks for a stop only after it, so the second Ctrl-C
  // lands while the first is still waiting to be honoured.
  const auto twice = temp_dir("ctrl_c_twice");
  const auto heldout = (kShared / "data/corpus/heldout.txt").string();
  const std::vector<std::string> long_eval{"prune.method=magnitude",
                                           "eval.sets=[{name: a, preset: text, path: " + heldout + "}]"};
  const auto log2 = twice / "run.log";
  const pid_t pid = spawn(prune_args(twice, "opt-mini", long_eval), log2);
  while (records(twice / "metrics.jsonl", "prune").empty() && waitpid(pid, nullptr, WNOHANG) == 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  kill(pid, SIGINT);
  const auto t0 = std::chrono::steady_clock::now();
  while (read_bytes(log2).find("Ctrl-C again") == std::string::npos &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  kill(pid, SIGINT);
  EXPECT_EQ(wait_exit(pid), 128 + SIGINT) << read_bytes(log2);
  EXPECT_TRUE(records(twice / "metrics.jsonl", "eval").empty());  // it did not wait for the set
  EXPECT_EQ(committed_layers(twice / "ckpt"), 4);
  fs::remove_all(dir);
  fs::remove_all(twice);
}

TEST(PruneCli, ExportCommandWritesTheCheckpointsModel) {
  NEED_SHARED();
  const auto dir = temp_dir("export");
  ASSERT_EQ(run_to_end(prune_args(dir, "opt-mini", {"prune.method=magnitude", "output.export="})), 0);
  EXPECT_FALSE(fs::exists(dir / "model"));
  const auto out = run_capture({kBin, "export", "--checkpoint", (dir / "ckpt").string(), "--out", (dir / "exp").string(),
                                "--shard-mb", "4"});
  ASSERT_NE(out.find("exit=0"), std::string::npos) << out;
  EXPECT_TRUE(fs::exists(dir / "exp/model.safetensors.index.json"));  // 10.8 MB in 4 MB shards
  const auto report = run_capture({kBin, "inspect", "--json", (dir / "exp").string()});
  const auto j = nlohmann::json::parse(report.substr(0, report.rfind("exit=")));
  // Magnitude prunes int(numel * 0.5) of each matrix exactly: the total is half of every linear.
  EXPECT_EQ(j["total"]["zeros"].get<std::int64_t>(), 3145728 / 2);
  // The same prune rerun with an export: every layer is committed, so no layer is run again (no
  // allocation, no forward); the export and the summary come from the checkpoint in one pass.
  // The layer loop, replaying committed layers, would end with its progress line (on here).
  const auto rerun = run_capture(
      prune_args(dir, "opt-mini", {"prune.method=magnitude", "output.export=model", "log.progress_seconds=60"}));
  ASSERT_NE(rerun.find("exit=0"), std::string::npos) << rerun;
  EXPECT_NE(rerun.find("all 4 layers committed; nothing to prune"), std::string::npos) << rerun;
  EXPECT_EQ(rerun.find("4/4 layers"), std::string::npos) << rerun;
  const auto layers = records(dir / "metrics.jsonl", "layer");
  EXPECT_EQ(layers.size(), 4u);  // the first run's
  for (const auto& l : layers) {  // the host-side phases are timed apart
    EXPECT_GE(l.at("load_s").get<double>(), 0.0);
    for (const auto& [name, lin] : l.at("linears").items()) EXPECT_GE(lin.at("gather_s").get<double>(), 0.0) << name;
  }
  const auto summaries = records(dir / "metrics.jsonl", "prune");
  ASSERT_EQ(summaries.size(), 2u);  // one summary per run
  EXPECT_TRUE(summaries[0].at("export_s").is_null());  // output.export= : none
  EXPECT_GT(summaries[1].at("export_s").get<double>(), 0.0);
  EXPECT_NE(rerun.find("pruned: 1572864 of 3145728 target weights zero"), std::string::npos) << rerun;
  // The rerun pruned nothing: its line and record repeat the summary of the run that did (they
  // gave the rerun's own 0.5 s and rank count).
  EXPECT_NE(rerun.find("by the run that completed the checkpoint"), std::string::npos) << rerun;
  EXPECT_EQ(summaries[1].at("summary").at("seconds"), summaries[0].at("summary").at("seconds"));
  EXPECT_TRUE(summaries[1].at("summary").value("complete_before_this_run", false));
  EXPECT_FALSE(summaries[0].at("summary").contains("complete_before_this_run"));
  const auto again_report = run_capture({kBin, "inspect", "--json", (dir / "model").string()});
  const auto ja = nlohmann::json::parse(again_report.substr(0, again_report.rfind("exit=")));
  EXPECT_EQ(ja["total"], j["total"]);

  // A checkpoint with a layer missing from the manifest is not exported.
  const auto partial = temp_dir("partial");
  const pid_t pid = spawn(prune_args(partial, "opt-mini", {"prune.method=sparsegpt"}));
  while (committed_layers(partial / "ckpt") < 1) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  kill(pid, SIGKILL);
  wait_exit(pid);
  const auto refused = run_capture({kBin, "export", "--checkpoint", (partial / "ckpt").string(), "--out",
                                    (partial / "exp").string()});
  EXPECT_NE(refused.find("exit=2"), std::string::npos) << refused;
  EXPECT_NE(refused.find("not complete"), std::string::npos) << refused;
  EXPECT_FALSE(fs::exists(partial / "exp"));
  // Folders the export would destroy are refused, and left as they were: the run folder, the
  // checkpoint it reads, a file, the source model.
  const auto file = dir / "a_file";
  std::ofstream(file) << "keep me";
  for (const auto& target : {dir, dir / "ckpt", file, kShared / "models/opt-mini"}) {
    const auto no = run_capture({kBin, "export", "--checkpoint", (dir / "ckpt").string(), "--out", target.string()});
    EXPECT_NE(no.find("exit=2"), std::string::npos) << target << no;
    EXPECT_NE(no.find("export to " + target.string()), std::string::npos) << no;
  }
  EXPECT_TRUE(fs::exists(dir / "ckpt/manifest.json"));
  EXPECT_TRUE(fs::exists(dir / "metrics.jsonl"));
  EXPECT_EQ(read_bytes(file).size(), 7u);
  // A model saved by other tools has an export's file names: without the scalpel-export.json
  // every export writes it is refused and left as it was (it was replaced). Beside a checkpoint,
  // in a run folder, a marker-less export is an earlier release's: replaced, as it always was.
  const auto saved = temp_dir("saved_model");
  fs::copy(dir / "model", saved);
  fs::remove(saved / "scalpel-export.json");
  const auto foreign = run_capture({kBin, "export", "--checkpoint", (dir / "ckpt").string(), "--out", saved.string()});
  EXPECT_NE(foreign.find("exit=2"), std::string::npos) << foreign;
  EXPECT_NE(foreign.find("a model that scalpel did not export"), std::string::npos) << foreign;
  EXPECT_FALSE(fs::exists(saved / "scalpel-export.json"));
  EXPECT_EQ(read_bytes(saved / "model.safetensors"), read_bytes(dir / "model/model.safetensors"));
  fs::remove(dir / "model/scalpel-export.json");  // as an earlier release left it
  const auto legacy = run_capture({kBin, "export", "--checkpoint", (dir / "ckpt").string(), "--out",
                                   (dir / "model").string()});
  EXPECT_NE(legacy.find("exit=0"), std::string::npos) << legacy;
  EXPECT_TRUE(fs::exists(dir / "model/scalpel-export.json"));
  fs::remove_all(saved);
  // A link is written through: the folder it points to gets the export, the link stays a link; a
  // link to nothing is refused (both were replaced by a folder).
  fs::create_symlink(dir / "model", dir / "latest");
  const auto linked = run_capture({kBin, "export", "--checkpoint", (dir / "ckpt").string(), "--out",
                                   (dir / "latest").string()});
  EXPECT_NE(linked.find("exit=0"), std::string::npos) << linked;
  EXPECT_TRUE(fs::is_symlink(dir / "latest"));
  EXPECT_TRUE(fs::exists(dir / "model/scalpel-export.json"));
  fs::create_symlink(dir / "nowhere", dir / "dangling");
  const auto dangling = run_capture({kBin, "export", "--checkpoint", (dir / "ckpt").string(), "--out",
                                     (dir / "dangling").string()});
  EXPECT_NE(dangling.find("exit=2"), std::string::npos) << dangling;
  EXPECT_NE(dangling.find("which does not exist"), std::string::npos) << dangling;
  EXPECT_TRUE(fs::is_symlink(dir / "dangling"));
  // A folder under a file is bad input (it was exit 3 naming the temporary folder), and a
  // temporary folder holding the user's files is not removed (it was, silently).
  const auto under = run_capture({kBin, "export", "--checkpoint", (dir / "ckpt").string(), "--out", (file / "x").string()});
  EXPECT_NE(under.find("exit=2"), std::string::npos) << under;
  EXPECT_NE(under.find(file.string() + " is a file, not a folder"), std::string::npos) << under;
  fs::create_directories(dir / "exp9.tmp-export");
  std::ofstream(dir / "exp9.tmp-export/important.txt") << "precious";
  const auto scratch = run_capture({kBin, "export", "--checkpoint", (dir / "ckpt").string(), "--out",
                                    (dir / "exp9").string()});
  EXPECT_NE(scratch.find("exit=2"), std::string::npos) << scratch;
  EXPECT_NE(scratch.find("holds 'important.txt'"), std::string::npos) << scratch;
  EXPECT_EQ(read_bytes(dir / "exp9.tmp-export/important.txt"), "precious");
  EXPECT_FALSE(fs::exists(dir / "exp9"));
  fs::remove(dir / "exp9.tmp-export/important.txt");
  std::ofstream(dir / "exp9.tmp-export/model.safetensors.tmp") << "half";  // an interrupted export's leftovers
  std::ofstream(dir / "exp9.tmp-export/config.json") << "{}";
  const auto leftover = run_capture({kBin, "export", "--checkpoint", (dir / "ckpt").string(), "--out",
                                     (dir / "exp9").string()});
  EXPECT_NE(leftover.find("exit=0"), std::string::npos) << leftover;
  EXPECT_FALSE(fs::exists(dir / "exp9.tmp-export"));
  // An output.dir that is a file: an input error before anything runs.
  const auto as_dir = run_capture(prune_args(file, "opt-mini", {"prune.method=magnitude"}));
  EXPECT_NE(as_dir.find("exit=2"), std::string::npos) << as_dir;
  EXPECT_NE(as_dir.find("is a file, not a folder"), std::string::npos) << as_dir;
  EXPECT_EQ(read_bytes(file).size(), 7u);
  // An output.export through a run folder not made yet ("../x") is judged before the run too (it
  // was let through, and refused after the whole prune).
  fs::create_directories(dir / "other");
  std::ofstream(dir / "other/notes.txt") << "mine";
  const auto up = run_capture(prune_args(dir / "new_run", "opt-mini", {"prune.method=magnitude", "output.export=../other"}));
  EXPECT_NE(up.find("exit=2"), std::string::npos) << up;
  EXPECT_NE(up.find("notes.txt"), std::string::npos) << up;
  EXPECT_FALSE(fs::exists(dir / "new_run/ckpt")) << up;
  // Impossible sizes are refused before anything is written.
  for (const char* bad : {"--shard-mb=0", "--writers=-1"}) {
    const auto no = run_capture({kBin, "export", "--checkpoint", (dir / "ckpt").string(), "--out",
                                 (dir / "bad").string(), bad});
    EXPECT_NE(no.find("exit=2"), std::string::npos) << bad << no;
    EXPECT_NE(no.find(std::string(bad).substr(0, std::string(bad).find('='))), std::string::npos) << no;
    EXPECT_FALSE(fs::exists(dir / "bad")) << bad;
  }
  // A folder inside the checkpoint, and an empty path (it wrote ".tmp-export" in the working
  // folder, then failed with exit 3).
  for (const auto& target : {(dir / "ckpt/x").string(), std::string()}) {
    const auto no = run_capture({kBin, "export", "--checkpoint", (dir / "ckpt").string(), "--out", target});
    EXPECT_NE(no.find("exit=2"), std::string::npos) << target << no;
    EXPECT_FALSE(fs::exists(dir / "ckpt/x"));
    EXPECT_FALSE(fs::exists(".tmp-export"));
  }
  // "exp2/", as shell completion writes it, is the folder exp2 (it failed after the export was
  // written, "cannot move the export into place"); so is output.export: model/ at the end of a prune.
  const auto slash = run_capture({kBin, "export", "--checkpoint", (dir / "ckpt").string(), "--out",
                                  (dir / "exp2").string() + "/"});
  EXPECT_NE(slash.find("exit=0"), std::string::npos) << slash;
  EXPECT_TRUE(fs::exists(dir / "exp2/model.safetensors"));
  EXPECT_FALSE(fs::exists(dir / "exp2/.tmp-export"));
  fs::remove_all(dir / "model");
  const auto rerun_slash = run_capture(prune_args(dir, "opt-mini", {"prune.method=magnitude", "output.export=model/"}));
  EXPECT_NE(rerun_slash.find("exit=0"), std::string::npos) << rerun_slash;
  EXPECT_EQ(read_bytes(dir / "model/model.safetensors"), read_bytes(dir / "exp2/model.safetensors"));
  // The manifest keeps the model path as given ("opt-mini", from the models folder): exported
  // from elsewhere, the message says where the path came from and how to name the model.
  const auto rel = dir / "relative";
  const auto made = run("cd " + (kShared / "models").string() + " && " + kBin + " prune --model opt-mini " +
                        "prune.method=magnitude calibration.path=" + (kShared / "data/corpus/calib.txt").string() +
                        " calibration.nsamples=4 calibration.seqlen=64 output.export= output.dir=" + rel.string());
  ASSERT_EQ(made.code, 0) << made.out;
  const auto away = run("cd / && " + kBin + " export --checkpoint " + (rel / "ckpt").string() + " --out " +
                        (rel / "exp").string());
  EXPECT_EQ(away.code, 2) << away.out;
  EXPECT_NE(away.out.find("its model 'opt-mini' (the path the prune was given"), std::string::npos) << away.out;
  EXPECT_NE(away.out.find("--model"), std::string::npos) << away.out;
  // --model naming a model whose config.json differs (one key added) is another model: refused,
  // saying what the fingerprint covers and what the checkpoint records, nothing written.
  const auto other = copy_opt_mini(dir / "other-model");
  auto conf = nlohmann::json::parse(read_bytes(other / "config.json"));
  conf["note"] = "edited";
  std::ofstream(other / "config.json") << conf.dump(2);
  const auto differs = run_capture({kBin, "export", "--checkpoint", (rel / "ckpt").string(), "--out",
                                    (rel / "exp").string(), "--model", other.string()});
  EXPECT_NE(differs.find("exit=2"), std::string::npos) << differs;
  EXPECT_NE(differs.find("was made from another model than " + other.string() + ": the fingerprint of its "
                         "config.json, weight file headers and sampled weights is xxh3s:"), std::string::npos) << differs;
  EXPECT_NE(differs.find("(opt-mini as the prune read it) had xxh3s:"), std::string::npos) << differs;
  EXPECT_FALSE(fs::exists(rel / "exp"));
  fs::remove_all(dir);
  fs::remove_all(partial);
}

}  // namespace

namespace {

// Two exports into one folder at once (two runs sharing an output folder): each removed the
// other's FOLDER.tmp-export and one or both failed with exit 3 (8 of 8 tries in a review). They
// take turns now: both succeed, the folder holds one whole export, no scratch folder is left.
TEST(PruneCli, TwoExportsIntoOneFolderTakeTurns) {
  NEED_SHARED();
  const auto dir = temp_dir("export_turns");
  ASSERT_EQ(run_to_end(prune_args(dir, "opt-mini", {"prune.method=magnitude", "output.export="})), 0);
  const std::vector<std::string> exp{kBin, "export", "--checkpoint", (dir / "ckpt").string(), "--out",
                                     (dir / "exp").string()};
  int waited = 0;
  for (int round = 0; round < 5; ++round) {
    const pid_t a = spawn(exp, dir / "a.log"), b = spawn(exp, dir / "b.log");
    EXPECT_EQ(wait_exit(a), 0) << read_bytes(dir / "a.log");
    EXPECT_EQ(wait_exit(b), 0) << read_bytes(dir / "b.log");
    for (const char* log : {"a.log", "b.log"})
      waited += read_bytes(dir / log).find("is under way; waiting for it to end") != std::string::npos;
    EXPECT_TRUE(fs::exists(dir / "exp/scalpel-export.json"));
    EXPECT_TRUE(fs::exists(dir / "exp/model.safetensors"));
    EXPECT_FALSE(fs::exists(dir / "exp.tmp-export"));
    EXPECT_FALSE(fs::exists(dir / "exp.old-export"));
  }
  // The exports overlapped (one waited for the other) at least once in five rounds: 3 of 3 by
  // hand here; the start-up (0.2 s) is short against an export of opt-mini.
  EXPECT_GE(waited, 1);
  fs::remove_all(dir);
}

// An export that fails leaves the checkpoint unfinished (every layer committed, not marked
// complete), and the rerun exports without pruning again. The failure: a file-size limit (4 MB)
// the layer shards (1.7 MB each) fit under and the 10.8 MB model.safetensors does not; a
// blocked export path is refused before the prune now.
TEST(PruneCli, AFailedExportIsRedoneByTheRerun) {
  NEED_SHARED();
  const auto dir = temp_dir("export_fails");
  fs::create_directories(dir);
  std::string cmd = "trap '' XFSZ; ulimit -f 4096; exec";
  for (const auto& a : prune_args(dir, "opt-mini", {"prune.method=magnitude"})) cmd += " '" + a + "'";
  const auto failed = run("bash -c \"" + cmd + "\"");
  EXPECT_EQ(failed.code, 3) << failed.out;
  EXPECT_NE(failed.out.find("model.safetensors.tmp: write failed: File too large"), std::string::npos) << failed.out;
  EXPECT_FALSE(fs::exists(dir / "model.tmp-export"));
  EXPECT_FALSE(fs::exists(dir / "model"));
  EXPECT_EQ(committed_layers(dir / "ckpt"), 4);
  const auto manifest = nlohmann::json::parse(read_bytes(dir / "ckpt/manifest.json"));
  EXPECT_FALSE(manifest.at("complete").get<bool>());
  const auto rerun = run_capture(prune_args(dir, "opt-mini", {"prune.method=magnitude", "output.export=model"}));
  ASSERT_NE(rerun.find("exit=0"), std::string::npos) << rerun;
  EXPECT_NE(rerun.find("nothing to prune"), std::string::npos) << rerun;
  EXPECT_TRUE(fs::exists(dir / "model/model.safetensors"));
  EXPECT_TRUE(nlohmann::json::parse(read_bytes(dir / "ckpt/manifest.json")).at("complete").get<bool>());
  fs::remove_all(dir);
}

TEST(PruneCli, BadEvaluationInputsStopBeforeAnyPruning) {
  NEED_SHARED();
  const auto dir = temp_dir("bad_eval");
  std::ofstream(dir / "bad.jsonl") << R"({"context": "a", "choices": ["b"], "label": 3})" << "\n";
  auto args = prune_args(dir / "run", "opt-mini", {"eval.tasks=[{preset: mc, path: " + (dir / "bad.jsonl").string() + "}]"});
  const auto out = run_capture(args);
  EXPECT_NE(out.find("exit=2"), std::string::npos) << out;
  EXPECT_NE(out.find("bad.jsonl: line 1"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir / "run" / "ckpt" / "manifest.json")) << "a checkpoint was started";
  auto sets = prune_args(dir / "run", "opt-mini", {"eval.sets=[{preset: text, path: /nonexistent/heldout.txt}]"});
  const auto out2 = run_capture(sets);
  EXPECT_NE(out2.find("exit=2"), std::string::npos) << out2;
  EXPECT_NE(out2.find("/nonexistent/heldout.txt"), std::string::npos) << out2;
  fs::remove_all(dir);
}

}  // namespace
