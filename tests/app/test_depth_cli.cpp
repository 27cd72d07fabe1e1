// End-to-end tests of `scalpel depth` on the shared mini models:
//   - BI and angular scores against a float64 reference forward (tests/common/reference_model.hpp);
//   - the export: config and renumbered tensors, `scalpel eval` of it equal to the original model
//     evaluated with those blocks skipped (computed here), and `scalpel prune` running on it;
//   - LaCo's exported block equal to the RDSC formula computed here from the checkpoint;
//   - --scores-only at 1, 2 and 4 ranks printing the same scores;
//   - stops (after a ppl round, a LaCo attempt, between evaluation sets) and reruns going on from
//     the progress kept to the result of a run never stopped;
//   - bad inputs: exit code 2, a message naming the key, nothing written.
// Every test skips when ../shared is absent.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numbers>
#include <sstream>
#include <thread>

#include "../../src/app/run_common.hpp"
#include "../common/reference_model.hpp"
#include "prune_test_util.hpp"
#include "scalpel/app/commands.hpp"
#include "scalpel/app/export.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/io/hf_checkpoint.hpp"
#include "scalpel/text/eval_text.hpp"

namespace {

using namespace scalpel_test;
using scalpel::test::Vec;

const std::string kCalib = (kShared / "data/corpus/calib.txt").string();
const std::string kHeldout = (kShared / "data/corpus/heldout.txt").string();

// A short calibration: 8 windows of 64 tokens (seed 0), 1 thread.
std::vector<std::string> calib_args(std::int64_t nsamples = 8, std::int64_t batch = 2) {
  return {"calibration.path=" + kCalib, "calibration.nsamples=" + std::to_string(nsamples), "calibration.seqlen=64",
          "calibration.batch=" + std::to_string(batch), "threads=1", "log.progress_seconds=0"};
}

std::vector<std::string> depth_args(const std::string& model, const fs::path& dir, const std::vector<std::string>& extra,
                                    std::int64_t nsamples = 8, std::int64_t batch = 2) {
  std::vector<std::string> a{kBin, "depth", "--model", (kShared / "models" / model).string(), "output.dir=" + dir.string()};
  for (const auto& s : calib_args(nsamples, batch)) a.push_back(s);
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

// The JSON line scalpel depth prints (the first line that starts with '{').
nlohmann::json printed(const std::string& out) {
  std::istringstream s(out);
  for (std::string line; std::getline(s, line);)
    if (!line.empty() && line[0] == '{') return nlohmann::json::parse(line);
  ADD_FAILURE() << "no JSON line in:\n" << out;
  return {};
}

// ---- scores against a float64 forward ----

// Hidden states x_0 (embeddings) .. x_L of one window in float64 ([T*d] each).
std::vector<Vec> ref_hidden(const scalpel::test::RefModel& m, std::span<const std::int32_t> ids) {
  const auto& s = m.spec;
  const auto T = static_cast<std::int64_t>(ids.size()), d = s.hidden, e = s.word_embed_proj_dim;
  Vec x(static_cast<std::size_t>(T * e));
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t j = 0; j < e; ++j) x[t * e + j] = m.embed_tokens[ids[t] * e + j];
  if (e != d) x = scalpel::test::ref_linear(x, m.project_in, nullptr, T, e, d);
  if (s.family == scalpel::model::Family::opt)
    for (std::int64_t t = 0; t < T; ++t)
      for (std::int64_t j = 0; j < d; ++j) x[t * d + j] += m.positions[(t + s.position_offset) * d + j];
  std::vector<Vec> xs{x};
  for (const auto& layer : m.layers) xs.push_back(scalpel::test::ref_forward(s, layer, xs.back(), 1, T));
  return xs;
}

double ref_cos(const double* a, const double* b, std::int64_t d) {
  double dot = 0, na = 0, nb = 0;
  for (std::int64_t i = 0; i < d; ++i) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return na == 0 || nb == 0 ? 0.5 : dot / std::sqrt(na * nb);
}

// scalpel's --scores-only scores of `criterion`, run in this process on one rank.
std::vector<double> scalpel_scores(const std::string& model, const std::string& criterion, std::int64_t remove) {
  const auto dir = temp_dir("ref_" + model + criterion);
  std::vector<std::string> o{"model=" + (kShared / "models" / model).string(), "output.dir=" + dir.string(),
                             "depth.criterion=" + criterion, "depth.remove=" + std::to_string(remove)};
  for (const auto& s : calib_args()) o.push_back(s);
  const auto cfg = scalpel::app::load_config("", o);
  scalpel::dist::SelfComm self;
  EXPECT_EQ(scalpel::app::run_depth(cfg, self, {}, true), 0);
  const auto recs = records(dir / "metrics.jsonl", "depth");
  EXPECT_EQ(recs.size(), 1u);
  fs::remove_all(dir);
  return recs.empty() ? std::vector<double>{} : recs[0]["scores"].get<std::vector<double>>();
}

void check_against_float64(const std::string& model) {
  const auto folder = kShared / "models" / model;
  const auto ref = scalpel::test::load_ref_model(folder);
  const std::int64_t L = ref.spec.layers, d = ref.spec.hidden, n = 2;
  auto cfg = scalpel::app::load_config("", {"model=" + folder.string(), "calibration.path=" + kCalib,
                                            "calibration.nsamples=8", "calibration.seqlen=64"});
  const auto tok = scalpel::app::make_tokenizer(cfg);
  const auto calib = scalpel::app::calibration_windows(cfg, ref.spec, *tok);
  const auto T = calib.seqlen;
  std::vector<double> cos_sum(static_cast<std::size_t>(L), 0.0), ang(static_cast<std::size_t>(L - n + 1), 0.0);
  for (std::int64_t w = 0; w < calib.nseq; ++w) {
    const auto xs = ref_hidden(ref, calib.windows(w, 1));
    for (std::int64_t l = 0; l < L; ++l)
      for (std::int64_t t = 0; t < T; ++t) cos_sum[l] += ref_cos(xs[l].data() + t * d, xs[l + 1].data() + t * d, d);
    for (std::int64_t l = 0; l + n <= L; ++l)
      ang[l] += std::acos(std::clamp(ref_cos(xs[l].data() + (T - 1) * d, xs[l + n].data() + (T - 1) * d, d), -1.0, 1.0)) /
                std::numbers::pi / static_cast<double>(calib.nseq);
  }
  const auto bi = scalpel_scores(model, "bi", n), angular = scalpel_scores(model, "angular", n);
  ASSERT_EQ(bi.size(), static_cast<std::size_t>(L));
  ASSERT_EQ(angular.size(), static_cast<std::size_t>(L - n + 1));
  // Tolerance: scalpel runs the blocks in fp32 (unit roundoff 6e-8; a hidden state after 4 blocks
  // carries a relative error of order 1e-7), and a cosine moves by at most about the relative
  // errors of its two vectors, averaged here over 512 tokens (BI) or 8 sequences (angular).
  // Measured: |scalpel - float64| <= 7e-9 on both models. 1e-6 leaves two orders of margin and is
  // still three orders below the gaps between blocks' scores (>= 1e-4) that decide the removal.
  for (std::int64_t l = 0; l < L; ++l) {
    const double want = 1.0 - cos_sum[l] / static_cast<double>(calib.nseq * T);
    EXPECT_NEAR(bi[l], want, 1e-6) << model << " BI of block " << l;
  }
  for (std::int64_t l = 0; l + n <= L; ++l) EXPECT_NEAR(angular[l], ang[l], 1e-6) << model << " d(" << l << ", 2)";
}

TEST(DepthCli, ScoresMatchAFloat64Forward) {
  NEED_SHARED();
  check_against_float64("opt-mini");
  check_against_float64("llama-mini");
}

// ---- export ----

// Mean NLL of the first `windows` windows of seqlen of the held-out text through the original
// model with only the `kept` blocks, computed here from the library's layers.
double mean_nll_skipping(const std::string& model, const std::vector<std::int64_t>& kept, std::int64_t seqlen,
                         std::int64_t windows) {
  const auto folder = kShared / "models" / model;
  auto ckpt = std::make_shared<const scalpel::io::HfCheckpoint>(folder);
  const auto spec = scalpel::model::ModelSpec::from_config(ckpt->config(), model);
  auto be = scalpel::make_cpu_backend(1);
  scalpel::model::Model m(spec, scalpel::app::checkpoint_source(ckpt), *be);
  const auto tok = scalpel::text::Tokenizer::from_folder(folder);
  const auto ids = tok->encode(scalpel::text::load_eval_text("text", kHeldout));
  double total = 0;
  std::vector<double> nll(static_cast<std::size_t>(seqlen - 1));
  for (std::int64_t w = 0; w < windows; ++w) {
    const auto win = std::span(ids).subspan(static_cast<std::size_t>(w * seqlen), static_cast<std::size_t>(seqlen));
    auto x = m.embed(win, 1, seqlen);
    for (const auto l : kept) m.layer_forward(l, x, 1, seqlen);
    m.head_nll(x, win, 1, seqlen, nll);
    for (const double v : nll) total += v;
  }
  return total / static_cast<double>(windows * (seqlen - 1));
}

TEST(DepthCli, ExportRenumbersEvaluatesAsSkippedBlocksAndPrunes) {
  NEED_SHARED();
  const auto dir = temp_dir("depth_export");
  const std::string sets = "eval.sets=[{name: heldout, preset: text, path: " + kHeldout + "}]";
  const auto out = run_capture(depth_args("llama-mini", dir, {"depth.criterion=bi", "depth.remove=2", sets,
                                                              "eval.seqlen=128", "eval.max_windows=4"}));
  ASSERT_NE(out.find("exit=0"), std::string::npos) << out;
  const auto depth = records(dir / "metrics.jsonl", "depth");
  ASSERT_EQ(depth.size(), 1u);
  const auto removed = depth[0]["removed"].get<std::vector<std::int64_t>>();
  const auto kept = depth[0]["kept"].get<std::vector<std::int64_t>>();
  ASSERT_EQ(removed.size(), 2u);
  ASSERT_EQ(kept.size(), 2u);
  EXPECT_EQ(depth[0]["remaining_blocks"], 2);

  // config.json and tensor names.
  const auto exp = dir / "model";
  scalpel::io::HfCheckpoint e(exp), src(kShared / "models/llama-mini");
  EXPECT_EQ(e.config()["num_hidden_layers"], 2);
  EXPECT_EQ(e.config()["scalpel_depth"]["removed"].get<std::vector<std::int64_t>>(), removed);
  EXPECT_EQ(e.config()["scalpel_depth"]["original_num_hidden_layers"], 4);
  EXPECT_EQ(e.config()["scalpel_depth"]["criterion"], "bi");
  std::size_t layer_tensors = 0;
  for (const auto& name : e.tensor_names()) {
    if (name.rfind("model.layers.", 0) != 0) continue;
    ++layer_tensors;
    const auto i = std::stoll(name.substr(13, name.find('.', 13) - 13));
    ASSERT_LT(i, 2) << name;
    const auto orig = "model.layers." + std::to_string(kept[i]) + name.substr(name.find('.', 13));
    const auto a = e.view(name), b = src.view(orig);
    ASSERT_EQ(a.nbytes(), b.nbytes()) << name;
    EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0) << name << " differs from " << orig;
  }
  EXPECT_EQ(layer_tensors, 2u * 9u);  // 7 linears + 2 norms per block
  EXPECT_TRUE(e.has("lm_head.weight"));
  EXPECT_TRUE(e.has("model.norm.weight"));
  // `scalpel inspect` of the export says what was removed (table and JSON).
  const auto table = run_capture({kBin, "inspect", exp.string()});
  EXPECT_NE(table.find("depth-pruned (bi): blocks " + nlohmann::json(removed).dump() + " of the 4 removed"),
            std::string::npos) << table;
  const auto js = run_capture({kBin, "inspect", "--json", exp.string()}, false);
  EXPECT_EQ(nlohmann::json::parse(js.substr(0, js.rfind("exit=")))["depth"]["removed"].get<std::vector<std::int64_t>>(),
            removed);
  // `scalpel inspect` of the run's state folder, or of the run folder, says what they are (it said
  // "missing config.json").
  const auto state = run_capture({kBin, "inspect", (dir / "ckpt").string()});
  EXPECT_NE(state.find("exit=2"), std::string::npos) << state;
  EXPECT_NE(state.find("a scalpel depth run's state (depth-state.json: scores of 4 blocks; the pruned model exported "
                       "to " + exp.string() + " (inspect that folder))"), std::string::npos) << state;
  const auto run_dir = run_capture({kBin, "inspect", dir.string()});
  EXPECT_NE(run_dir.find("ckpt (a depth run's state), model (a Hugging Face model)"), std::string::npos) << run_dir;

  // `scalpel eval` of the export = the original with those blocks skipped = depth's own eval.
  const auto ev = dir / "ev";
  const auto eout = run_capture({kBin, "eval", "--model", exp.string(), "--text", "text:" + kHeldout, "eval.seqlen=128",
                                 "eval.max_windows=4", "output.dir=" + ev.string(), "threads=1"});
  ASSERT_NE(eout.find("exit=0"), std::string::npos) << eout;
  const auto want = mean_nll_skipping("llama-mini", kept, 128, 4);
  const auto got = records(ev / "metrics.jsonl", "eval");
  const auto own = records(dir / "metrics.jsonl", "eval");
  ASSERT_EQ(got.size(), 1u);
  ASSERT_EQ(own.size(), 1u);
  EXPECT_NEAR(got[0]["mean_nll"].get<double>(), want, 1e-9 * want);
  EXPECT_NEAR(own[0]["mean_nll"].get<double>(), want, 1e-9 * want);

  // `scalpel prune` runs on the exported model.
  const auto pruned = dir / "pruned";
  const auto pout = run_capture({kBin, "prune", "--model", exp.string(), "prune.method=wanda", "calibration.path=" + kCalib,
                                 "calibration.nsamples=4", "calibration.seqlen=64", "output.dir=" + pruned.string(),
                                 "threads=1", "log.progress_seconds=0"});
  ASSERT_NE(pout.find("exit=0"), std::string::npos) << pout;
  scalpel::io::HfCheckpoint p(pruned / "model");
  EXPECT_EQ(p.config()["num_hidden_layers"], 2);
  const auto s = scalpel::app::sparsity_stats(p.view("model.layers.1.mlp.down_proj.weight"));
  EXPECT_NEAR(s.sparsity(), 0.5, 0.01);
  fs::remove_all(dir);
}

// Spawns `args` with its log in `log` and sends `sig` once the log holds `line` (the handlers are
// in place then); returns the exit code.
int stop_at_line(const std::vector<std::string>& args, const std::string& log, const std::string& line,
                 int sig = SIGUSR1) {
  fs::remove(log);  // the wait must not read an earlier run's log
  const pid_t pid = spawn(args, log);
  while (read_bytes(log).find(line) == std::string::npos) {
    if (waitpid(pid, nullptr, WNOHANG) == pid) {
      ADD_FAILURE() << "ended before '" << line << "':\n" << read_bytes(log);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  kill(pid, sig);
  return wait_exit(pid);
}

// The depth record without what differs between an interrupted and an uninterrupted run.
nlohmann::json choice_of(nlohmann::json rec) {
  // config_hash stays: it is the settings' hash, the same for a run in another output.dir (it
  // hashed the whole config, paths included, and differed).
  for (const char* k : {"seconds", "time", "resumed"}) rec.erase(k);
  return rec;
}

// SIGUSR1 (Slurm's preemption, as the batch scripts forward it) stops a depth run with exit code
// 75, which the scripts requeue on: after a ppl round, and the rerun goes on from the rounds kept
// in ckpt/depth-state.json to the same choice, scores and export as a run never stopped.
TEST(DepthCli, AStoppedPplGreedyGoesOnFromTheKeptRounds) {
  NEED_SHARED();
  const auto ref = temp_dir("depth_ppl_ref"), dir = temp_dir("depth_ppl_stop");
  const auto log = dir.string() + ".log";
  const std::vector<std::string> ppl{"depth.criterion=ppl", "depth.remove=2"};
  ASSERT_EQ(run_to_end(depth_args("opt-deep", ref, ppl)), 0);
  const auto want = records(ref / "metrics.jsonl", "depth");
  ASSERT_EQ(want.size(), 1u);

  // A round takes far longer than the 2 ms the wait polls: the stop comes after the first.
  EXPECT_EQ(stop_at_line(depth_args("opt-deep", dir, ppl), log, "criterion ppl"), 75) << read_bytes(log);
  const auto stops = records(dir / "metrics.jsonl", "interrupted");
  ASSERT_EQ(stops.size(), 1u);
  EXPECT_EQ(stops[0]["after_round"], 1);
  EXPECT_TRUE(records(dir / "metrics.jsonl", "depth").empty());  // no choice yet
  EXPECT_FALSE(fs::exists(dir / "model"));
  const auto state = nlohmann::json::parse(read_bytes(dir / "ckpt/depth-state.json"));
  EXPECT_EQ(state["kept"]["rounds"].size(), 1u);
  EXPECT_EQ(state["kept"]["rounds"][0]["ppl"].size(), 10u);  // blocks 1..10 (0 and 11 protected)

  const auto out = run_capture(depth_args("opt-deep", dir, ppl));
  ASSERT_NE(out.find("exit=0"), std::string::npos) << out;
  EXPECT_NE(out.find("ppl round 1: kept in"), std::string::npos) << out;
  const auto got = records(dir / "metrics.jsonl", "depth");
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0]["resumed"], true);
  EXPECT_EQ(want[0]["resumed"], false);
  EXPECT_EQ(choice_of(got[0]).dump(), choice_of(want[0]).dump());  // scores and rounds bit for bit
  EXPECT_EQ(stops[0]["config_hash"], got[0]["config_hash"]);
  EXPECT_EQ(read_bytes(dir / "model/model.safetensors"), read_bytes(ref / "model/model.safetensors"));
  EXPECT_EQ(read_bytes(dir / "model/config.json"), read_bytes(ref / "model/config.json"));

  // Other settings in the same folder start anew (the state is replaced, not refused); --restart
  // discards a state of the same settings.
  const auto other = run_capture(depth_args("opt-deep", dir, {"depth.criterion=ppl", "depth.remove=1"}));
  ASSERT_NE(other.find("exit=0"), std::string::npos) << other;
  EXPECT_NE(other.find("holds another model's or settings' progress; starting anew"), std::string::npos) << other;
  EXPECT_EQ(other.find("kept in"), std::string::npos) << other;
  auto args = depth_args("opt-deep", dir, {"depth.criterion=ppl", "depth.remove=1", "--restart"});
  const auto restarted = run_capture(args);
  ASSERT_NE(restarted.find("exit=0"), std::string::npos) << restarted;
  EXPECT_EQ(restarted.find("kept in"), std::string::npos) << restarted;
  EXPECT_EQ(records(dir / "metrics.jsonl", "depth").back()["resumed"], false);
  fs::remove_all(ref);
  fs::remove_all(dir);
  fs::remove(log);
}

// LaCo stopped after an attempt: the rerun reads the similarities kept, merges again only the
// groups accepted and exports the same model.
TEST(DepthCli, AStoppedLacoGoesOnFromTheKeptAttempts) {
  NEED_SHARED();
  const auto ref = temp_dir("depth_laco_ref"), dir = temp_dir("depth_laco_stop");
  const auto log = dir.string() + ".log";
  const std::vector<std::string> laco{"depth.criterion=laco", "depth.remove=3", "depth.threshold=0.9"};
  ASSERT_EQ(run_to_end(depth_args("opt-deep", ref, laco)), 0);
  EXPECT_EQ(stop_at_line(depth_args("opt-deep", dir, laco), log, "criterion laco"), 75) << read_bytes(log);
  const auto stops = records(dir / "metrics.jsonl", "interrupted");
  ASSERT_EQ(stops.size(), 1u);
  const auto kept = nlohmann::json::parse(read_bytes(dir / "ckpt/depth-state.json"))["kept"]["attempts"];
  EXPECT_GE(stops[0]["after_attempt"].get<std::size_t>(), 1u);
  EXPECT_EQ(kept.size(), stops[0]["after_attempt"].get<std::size_t>());
  const auto out = run_capture(depth_args("opt-deep", dir, laco));
  ASSERT_NE(out.find("exit=0"), std::string::npos) << out;
  EXPECT_NE(out.find("kept in"), std::string::npos) << out;
  const auto want = records(ref / "metrics.jsonl", "depth"), got = records(dir / "metrics.jsonl", "depth");
  ASSERT_EQ(want.size(), 1u);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(choice_of(got[0]).dump(), choice_of(want[0]).dump());
  EXPECT_FALSE(got[0]["merged"].empty());
  EXPECT_EQ(read_bytes(dir / "model/model.safetensors"), read_bytes(ref / "model/model.safetensors"));
  fs::remove_all(ref);
  fs::remove_all(dir);
  fs::remove(log);
}

// A stop between evaluation sets: the export is done and kept; the rerun evaluates the sets left,
// each once, and does not write the export again.
TEST(DepthCli, AStopBetweenEvaluationSetsResumesTheEvaluation) {
  NEED_SHARED();
  const auto dir = temp_dir("depth_eval_stop");
  const auto args = depth_args("opt-deep", dir, {"depth.criterion=bi", "depth.remove=2",
                                                 eval_sets_arg({"a", "b", "c"}, kHeldout), "eval.max_windows=40"});
  EXPECT_EQ(stop_after_record(spawn(args), dir / "metrics.jsonl", "eval"), 75);
  const auto evals = records(dir / "metrics.jsonl", "eval");
  ASSERT_GE(evals.size(), 1u);
  EXPECT_LE(evals.size(), 2u);  // a, and b if it had begun
  const auto stops = records(dir / "metrics.jsonl", "interrupted");
  ASSERT_EQ(stops.size(), 1u);
  EXPECT_EQ(stops[0]["after_evaluation"], evals.size());
  ASSERT_TRUE(fs::exists(dir / "model/config.json"));  // exported before the evaluation
  const auto written = fs::last_write_time(dir / "model/config.json");
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a rewrite would change the time

  const auto out = run_capture(args);
  ASSERT_NE(out.find("exit=0"), std::string::npos) << out;
  EXPECT_NE(out.find("not written again"), std::string::npos) << out;
  EXPECT_EQ(fs::last_write_time(dir / "model/config.json"), written);
  std::vector<std::string> names;
  for (const auto& e : records(dir / "metrics.jsonl", "eval")) {
    names.push_back(e["set"]);
    EXPECT_EQ(e["config_hash"], stops[0]["config_hash"]);  // records of one run tie together
    EXPECT_EQ(e["forward_dtype"], "F32");
    EXPECT_EQ(e["threads"], 1);  // as scalpel eval's records carry it
  }
  EXPECT_EQ(names, (std::vector<std::string>{"a", "b", "c"}));
  // The evaluation finished: its count is cleared, so a rerun evaluates everything again.
  EXPECT_FALSE(nlohmann::json::parse(read_bytes(dir / "ckpt/depth-state.json"))["kept"].contains("evaluation"));

  // An export replaced since (here: removed), or one of another shard size, is written again.
  fs::remove_all(dir / "model");
  const auto again = run_capture(args);
  ASSERT_NE(again.find("exit=0"), std::string::npos) << again;
  EXPECT_TRUE(fs::exists(dir / "model/config.json"));
  EXPECT_EQ(again.find("not written again"), std::string::npos) << again;
  auto sharded = args;
  sharded.push_back("output.export_shard_mb=5");
  const auto resharded = run_capture(sharded);
  ASSERT_NE(resharded.find("exit=0"), std::string::npos) << resharded;
  EXPECT_EQ(resharded.find("not written again"), std::string::npos) << resharded;
  EXPECT_TRUE(fs::exists(dir / "model/model.safetensors.index.json"));
  fs::remove_all(dir);
}

// Ctrl-C says what depth keeps, and does the same stop.
TEST(DepthCli, CtrlCSaysTheProgressIsKept) {
  NEED_SHARED();
  const auto dir = temp_dir("depth_sigint");
  const auto log = dir.string() + ".log";
  EXPECT_EQ(stop_at_line(depth_args("opt-deep", dir, {"depth.criterion=ppl", "depth.remove=2"}), log, "criterion ppl",
                         SIGINT), 75) << read_bytes(log);
  EXPECT_NE(read_bytes(log).find("the progress is kept: a rerun goes on from there"), std::string::npos)
      << read_bytes(log);
  EXPECT_FALSE(fs::exists(dir / "model"));
  fs::remove_all(dir);
  fs::remove(log);
}

TEST(DepthCli, DeepestRemovesTheBlocksBeforeTheLast) {
  NEED_SHARED();
  const auto dir = temp_dir("depth_deepest");
  const auto out = run_capture(depth_args("opt-deep", dir, {"depth.criterion=deepest", "depth.remove=3"}));
  ASSERT_NE(out.find("exit=0"), std::string::npos) << out;
  const auto rec = records(dir / "metrics.jsonl", "depth");
  ASSERT_EQ(rec.size(), 1u);
  EXPECT_EQ(rec[0]["removed"].get<std::vector<std::int64_t>>(), (std::vector<std::int64_t>{8, 9, 10}));
  scalpel::io::HfCheckpoint e(dir / "model"), src(kShared / "models/opt-deep");
  EXPECT_EQ(e.config()["num_hidden_layers"], 9);
  // The last block (11) is kept, renumbered 8.
  const std::string p = "model.decoder.layers.";
  EXPECT_EQ(e.view(p + "8.fc1.weight").to_f32().f32()[5], src.view(p + "11.fc1.weight").to_f32().f32()[5]);
  // No pass over the windows: no calibration text is read (a missing one was an error).
  const auto nocal = temp_dir("depth_deepest_nocal");
  const auto out2 = run_capture(depth_args("opt-deep", nocal, {"depth.criterion=deepest", "depth.remove=3",
                                                              "calibration.path=/nonexistent/calib.txt"}));
  ASSERT_NE(out2.find("exit=0"), std::string::npos) << out2;
  EXPECT_EQ(records(nocal / "metrics.jsonl", "depth").at(0)["removed"].get<std::vector<std::int64_t>>(),
            (std::vector<std::int64_t>{8, 9, 10}));
  fs::remove_all(nocal);
  // Block 9 protected: the rule cannot apply; refused, naming the key, nothing written.
  const auto bad_dir = temp_dir("depth_deepest_bad");
  const auto bad = run_capture(depth_args("opt-deep", bad_dir, {"depth.criterion=deepest", "depth.remove=3",
                                                                "depth.protect=[9]"}));
  EXPECT_NE(bad.find("exit=2"), std::string::npos) << bad;
  EXPECT_NE(bad.find("depth.protect"), std::string::npos) << bad;
  EXPECT_FALSE(fs::exists(bad_dir / "model"));
  fs::remove_all(dir);
  fs::remove_all(bad_dir);
}

// A depth run and a prune sharing one checkpoint folder wrote beside each other's state and
// replaced each other's export, and two depth runs on one folder both ran, recording every set
// twice. Now depth refuses a folder holding a prune's manifest, the prune refuses one holding
// depth's progress (--restart discards it), and depth holds checkpoint.lock as the prune does.
TEST(DepthCli, AnotherRunsFolderIsRefusedAndASecondRunLockedOut) {
  NEED_SHARED();
  const auto dir = temp_dir("depth_shared_folder");
  const std::vector<std::string> prune{kBin, "prune", "--model", (kShared / "models/opt-mini").string(),
                                       "prune.method=magnitude", "output.export=", "output.dir=" + dir.string(),
                                       "calibration.path=" + kCalib, "calibration.nsamples=4",
                                       "calibration.seqlen=64"};
  ASSERT_EQ(run_to_end(prune), 0);
  const auto deep = depth_args("opt-mini", dir, {"depth.criterion=deepest", "depth.remove=1"});
  const auto refused = run_capture(deep);
  EXPECT_NE(refused.find("exit=2"), std::string::npos) << refused;
  EXPECT_NE(refused.find((dir / "ckpt").string() + ": holds a prune checkpoint (manifest.json), not the progress "
                         "of a scalpel depth run"), std::string::npos) << refused;
  EXPECT_FALSE(fs::exists(dir / "ckpt/depth-state.json"));
  EXPECT_FALSE(fs::exists(dir / "model"));
  fs::remove_all(dir);

  ASSERT_NE(run_capture(deep).find("exit=0"), std::string::npos);
  ASSERT_TRUE(fs::exists(dir / "ckpt/depth-state.json"));
  const auto other = run_capture(prune);
  EXPECT_NE(other.find("exit=2"), std::string::npos) << other;
  EXPECT_NE(other.find("holds the progress of a scalpel depth run (depth-state.json), not a layer checkpoint"),
            std::string::npos) << other;
  EXPECT_FALSE(fs::exists(dir / "ckpt/manifest.json"));

  // A second depth run while the folder's lock is held (here by this process) stops at once.
  {
    const int fd = ::open((dir / "ckpt/checkpoint.lock").c_str(), O_RDWR | O_CREAT, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);
    const auto locked = run_capture(deep);
    ::close(fd);
    EXPECT_NE(locked.find("exit=2"), std::string::npos) << locked;
    EXPECT_NE(locked.find("another process is writing this checkpoint"), std::string::npos) << locked;
  }
  auto restart = prune;
  restart.push_back("--restart");
  EXPECT_EQ(run_to_end(restart), 0);
  EXPECT_FALSE(fs::exists(dir / "ckpt/depth-state.json"));
  EXPECT_TRUE(fs::exists(dir / "ckpt/manifest.json"));
  fs::remove_all(dir);
}

TEST(DepthCli, PplOneShotRemovesTheBestOfOneRound) {
  NEED_SHARED();
  const auto dir = temp_dir("depth_ppl_oneshot");
  const auto out = run_capture(depth_args("opt-deep", dir, {"depth.criterion=ppl", "depth.greedy=false",
                                                            "depth.remove=2", "output.export="}));
  ASSERT_NE(out.find("exit=0"), std::string::npos) << out;
  const auto rec = records(dir / "metrics.jsonl", "depth");
  ASSERT_EQ(rec.size(), 1u);
  EXPECT_EQ(rec[0]["rounds"].size(), 1u);  // one round, not one per block
  std::vector<std::pair<double, std::int64_t>> ranked;
  for (std::size_t l = 0; l < rec[0]["scores"].size(); ++l)
    if (!rec[0]["scores"][l].is_null()) ranked.emplace_back(rec[0]["scores"][l].get<double>(), l);
  EXPECT_EQ(ranked.size(), 10u);  // blocks 0 and 11 protected
  std::sort(ranked.begin(), ranked.end());
  std::vector<std::int64_t> want{ranked[0].second, ranked[1].second};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(rec[0]["removed"].get<std::vector<std::int64_t>>(), want);
  EXPECT_EQ(rec[0]["rounds"][0]["removed"].get<std::vector<std::int64_t>>(), want);  // the round's n, not one
  EXPECT_EQ(rec[0]["remove"], 2);
  fs::remove_all(dir);
}

TEST(DepthCli, LacoExportHoldsTheRdscMerge) {
  NEED_SHARED();
  const auto dir = temp_dir("depth_laco");
  // merge 3, threshold -1 (every merge accepted), remove 2: blocks 1, 2, 3 of opt-mini merge into 1.
  const auto out = run_capture(depth_args("opt-mini", dir, {"depth.criterion=laco", "depth.merge=3", "depth.threshold=-1",
                                                            "depth.remove=2", "depth.windows=2"}));
  ASSERT_NE(out.find("exit=0"), std::string::npos) << out;
  const auto rec = records(dir / "metrics.jsonl", "depth");
  ASSERT_EQ(rec.size(), 1u);
  EXPECT_EQ(rec[0]["removed"].get<std::vector<std::int64_t>>(), (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(rec[0]["windows"], 2);
  scalpel::io::HfCheckpoint e(dir / "model"), src(kShared / "models/opt-mini");
  EXPECT_EQ(e.config()["scalpel_depth"]["merged"], nlohmann::json::parse("[[1, 2, 3]]"));
  const std::string p = "model.decoder.layers.";
  for (const std::string t : {"fc1.weight", "fc2.bias", "self_attn.q_proj.weight", "self_attn_layer_norm.weight"}) {
    const auto got = e.view(p + "1." + t).to_f32();
    const auto a = src.view(p + "1." + t).to_f32(), b = src.view(p + "2." + t).to_f32(), c = src.view(p + "3." + t).to_f32();
    const bool norm = t.find("layer_norm") != std::string::npos;  // norms stay block 1's
    scalpel::Tensor want = scalpel::Tensor::empty(a.shape());
    for (std::int64_t i = 0; i < a.numel(); ++i) {
      const double base = a.f32()[i];
      want.f32()[i] = norm ? a.f32()[i] : static_cast<float>(base + (b.f32()[i] - base) + (c.f32()[i] - base));
    }
    scalpel::Tensor stored = scalpel::Tensor::empty(a.shape(), src.info(p + "1." + t).dtype);
    scalpel::convert_from_f32(stored.dtype(), want.f32(), stored.raw(), static_cast<std::size_t>(a.numel()));
    EXPECT_EQ(std::memcmp(stored.raw(), e.view(p + "1." + t).raw(), stored.nbytes()), 0) << t;
    (void)got;
  }
  EXPECT_FALSE(e.has(p + "2.fc1.weight"));

  // Depth-pruning that export again keeps its record under "previous".
  const auto again = dir / "again";
  std::vector<std::string> a2{kBin, "depth", "--model", (dir / "model").string(), "output.dir=" + again.string(),
                              "depth.criterion=bi", "depth.remove=1"};
  for (const auto& c : calib_args(8, 2)) a2.push_back(c);
  const auto out2 = run_capture(a2);
  ASSERT_NE(out2.find("exit=0"), std::string::npos) << out2;
  const auto sd = scalpel::io::HfCheckpoint(again / "model").config()["scalpel_depth"];
  EXPECT_EQ(sd["criterion"], "bi");
  EXPECT_EQ(sd["original_num_hidden_layers"], 2);
  EXPECT_EQ(sd["previous"]["merged"], nlohmann::json::parse("[[1, 2, 3]]"));
  EXPECT_EQ(sd["previous"]["original_num_hidden_layers"], 4);

  // A threshold no merge reaches (a cosine similarity of 1: the model itself): nothing removed, so nothing
  // exported, exit 2 naming the key; the attempts are in the metrics. depth.windows past the
  // calibration windows is said, not silently clamped.
  const auto none = dir / "none";
  const auto out3 = run_capture(depth_args("opt-mini", none, {"depth.criterion=laco", "depth.threshold=1",
                                                             "depth.remove=1", "depth.windows=50"}));
  EXPECT_NE(out3.find("exit=2"), std::string::npos) << out3;
  EXPECT_NE(out3.find("'depth.threshold' 1: laco kept no merge"), std::string::npos) << out3;
  EXPECT_NE(out3.find("depth.windows 50 exceeds the 8 calibration windows"), std::string::npos) << out3;
  EXPECT_FALSE(fs::exists(none / "model"));
  const auto none_rec = records(none / "metrics.jsonl", "depth");
  ASSERT_EQ(none_rec.size(), 1u);
  EXPECT_TRUE(none_rec[0]["removed"].empty());
  EXPECT_FALSE(none_rec[0]["attempts"].empty());
  fs::remove_all(dir);
}

// ---- ranks ----

TEST(DepthCli, ScoresOnlyIsTheSameAtOneTwoAndFourRanks) {
  NEED_SHARED();
  const auto dir = temp_dir("depth_ranks");
  for (const std::string criterion : {"bi", "ppl", "laco"}) {
    nlohmann::json first;
    for (const int np : {1, 2, 4}) {
      // --restart: each rank count scores anew (it would read the scores the run before kept).
      auto args = depth_args("opt-mini", dir, {"depth.criterion=" + criterion, "depth.remove=1", "depth.windows=4",
                                               "depth.threshold=0.5", "--scores-only", "--restart"}, 8, 1);
      args.insert(args.begin(), {kMpiexec, "-n", std::to_string(np), "--oversubscribe"});
      const auto out = run_capture(args);
      ASSERT_NE(out.find("exit=0"), std::string::npos) << out;
      auto j = printed(out);
      EXPECT_EQ(j["ranks"], np);
      j.erase("ranks");
      j.erase("seconds");
      if (np == 1) first = j;
      else EXPECT_EQ(j.dump(), first.dump()) << criterion << " at " << np << " ranks";
    }
    EXPECT_GT(first["scores"].size(), 0u) << criterion;
  }
  EXPECT_FALSE(fs::exists(dir / "model"));  // --scores-only writes no export
  fs::remove_all(dir);
}

// ---- bad inputs ----

TEST(DepthCli, BadInputsExitTwoNamingTheKeyAndWriteNothing) {
  NEED_SHARED();
  const auto dir = temp_dir("depth_bad");
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases{
      {{"depth.remove=4"}, "'depth.remove'"},                                        // every block of opt-mini
      {{"depth.protect=[4]"}, "'depth.protect'"},                                    // no block 4
      {{"depth.criterion=ppl", "depth.remove=3"}, "'depth.remove'"},                 // ppl protects 0 and 3
      {{"depth.criterion=angular", "depth.remove=2", "depth.protect=[1, 2]"}, "'depth.protect'"},
      {{"depth.criterion=shortest"}, "'depth.criterion'"},
      {{"parallel.stages=2"}, "'parallel.stages'"},
      {{"parallel.data=2"}, "'parallel.data' 2 = 2 ranks, but the job has 1"},  // it was ignored
      // The plan's memory model, before any work, as prune checks it (it was the plan's alone).
      {{"depth.criterion=deepest", "depth.remove=1", "parallel.memory_gb=0.01"}, "'parallel.memory_gb' is 0.01 GB"},
  };
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const auto& [extra, key] = cases[i];
    if (i < 2) {  // through the executable: the exit code
      const auto out = run_capture(depth_args("opt-mini", dir, extra));
      EXPECT_NE(out.find("exit=2"), std::string::npos) << out;
      EXPECT_NE(out.find(key), std::string::npos) << out;
    } else {  // the rest in this process: the same checks, without MPI's start-up
      std::vector<std::string> o{"model=" + (kShared / "models/opt-mini").string(), "output.dir=" + dir.string()};
      o.insert(o.end(), extra.begin(), extra.end());
      try {
        const auto cfg = scalpel::app::load_config("", o);
        scalpel::dist::SelfComm self;
        scalpel::app::run_depth(cfg, self, {}, false);
        ADD_FAILURE() << "no error for " << key;
      } catch (const scalpel::Error& e) {
        EXPECT_EQ(e.kind(), scalpel::ErrorKind::input) << e.what();
        EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
      }
    }
  }
  EXPECT_FALSE(fs::exists(dir / "model"));
  EXPECT_FALSE(fs::exists(dir / "model.tmp-export"));
  EXPECT_FALSE(fs::exists(dir / "metrics.jsonl"));
  // An output.dir under a file is refused before the model is scored, not when the metrics open.
  fs::create_directories(dir);
  std::ofstream(dir / "afile") << "x";
  const auto out = run_capture(depth_args("opt-mini", dir / "afile/out", {"depth.criterion=bi"}));
  EXPECT_NE(out.find("exit=2"), std::string::npos) << out;
  EXPECT_NE(out.find("'output.dir' " + (dir / "afile/out").string() + ": " + (dir / "afile").string() +
                     " is a file"), std::string::npos) << out;
  EXPECT_EQ(out.find("calibration windows x"), std::string::npos) << out;  // before the scoring began
  // laco's windows too few for the ranks name depth.windows (the message blamed calibration.batch).
  auto few = depth_args("opt-mini", dir / "few", {"depth.criterion=laco", "depth.windows=1"}, 4, 1);
  few.insert(few.begin(), {kMpiexec, "-n", "2", "--oversubscribe"});
  const auto windows = run_capture(few);
  EXPECT_NE(windows.find("exit=2"), std::string::npos) << windows;
  EXPECT_NE(windows.find("'depth.windows' 1 makes 1 batches"), std::string::npos) << windows;
  // An input rank 0 reads for every rank (an evaluation text that is not there) is reported once
  // (it was once per rank, with MPI_Abort's banner), with exit code 2.
  auto missing = depth_args("opt-mini", dir / "missing", {"eval.sets=[{name: a, preset: text, path: /nowhere.txt}]"});
  missing.insert(missing.begin(), {kMpiexec, "-n", "2", "--oversubscribe"});
  const auto once = run_capture(missing);
  EXPECT_NE(once.find("exit=2"), std::string::npos) << once;
  std::size_t said = 0;
  for (auto p = once.find("scalpel: error"); p != std::string::npos; p = once.find("scalpel: error", p + 1)) ++said;
  EXPECT_EQ(said, 1u) << once;
  EXPECT_NE(once.find("/nowhere.txt"), std::string::npos) << once;
  EXPECT_EQ(once.find("MPI_ABORT"), std::string::npos) << once;
  fs::remove_all(dir);
}

}  // namespace
