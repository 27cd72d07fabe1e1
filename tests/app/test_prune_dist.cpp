// End-to-end tests of the distributed `scalpel prune` under mpiexec (oversubscribed on this
// machine's 2 cores):
//  - rank-count invariance: SparseGPT unstructured and 2:4 and Wanda at 1, 2, 3 and 4 ranks give
//    bitwise equal exports with determinism: strict, and equal to 1e-6 relative with fast; so do
//    pipeline stages (2 x 1, 2 x 2) and llama-mini;
//  - failures: SIGKILL of one rank ends the job within seconds and a rerun at another rank count
//    resumes, bitwise equal to an uninterrupted run; SIGUSR1 stops after a committed layer with
//    exit code 75 and the rerun finishes the same model; a stopped (hung) rank trips the watchdog;
//    an error on the ranks ends the job with the rank, the layer and the cause;
//  - exports: written by several ranks (the prune's, `scalpel export`'s), the same files.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>

#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <sstream>
#include <thread>

#include "prune_test_util.hpp"
#include "scalpel/core/dtype.hpp"
#include "scalpel/io/hf_checkpoint.hpp"

namespace {

using namespace scalpel_test;
using Clock = std::chrono::steady_clock;

// 16 windows of 128 tokens in batches of 2: 8 batches, so 4 ranks get 2 each.
std::vector<std::string> prune_cmd(int ranks, const fs::path& out, const std::vector<std::string>& extra,
                                   const std::string& model = "opt-mini") {
  // Unbound: Open MPI pins two ranks to this machine's two cores, and a test running beside them
  // then slowed one rank alone, which waited for the other at the evaluation's end past the 5 s
  // watchdog of TheWatchdogStaysQuietThroughExportAndEvaluation (reproduced with two busy loops).
  std::vector<std::string> a{kMpiexec, "-n", std::to_string(ranks), "--oversubscribe", "--bind-to", "none", kBin, "prune",
                             "--model", (kShared / "models" / model).string(),
                             "calibration.path=" + (kShared / "data/corpus/calib.txt").string(),
                             "calibration.nsamples=16", "calibration.seqlen=128", "calibration.batch=2",
                             "output.dir=" + out.string(), "log.progress_seconds=0"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

// Largest relative Frobenius difference over the tensors of two exported models.
double max_rel_diff(const fs::path& a, const fs::path& b) {
  const scalpel::io::HfCheckpoint x(a), y(b);
  double worst = 0;
  for (const auto& name : x.tensor_names()) {
    const auto ta = x.view(name).to_f32(), tb = y.view(name).to_f32();
    double num = 0, den = 0;
    for (std::int64_t i = 0; i < ta.numel(); ++i) {
      const double d = static_cast<double>(ta.f32()[i]) - tb.f32()[i];
      num += d * d;
      den += static_cast<double>(ta.f32()[i]) * ta.f32()[i];
    }
    if (den > 0) worst = std::max(worst, std::sqrt(num / den));
  }
  return worst;
}

// The pids of the scalpel ranks mpiexec started (its children), by MPI rank.
std::map<int, pid_t> rank_pids(pid_t mpiexec) {
  std::map<int, pid_t> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const auto name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(e.path() / "stat");
    std::string line;
    std::getline(stat, line);
    const auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    char state;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid != mpiexec) continue;
    std::ifstream env(e.path() / "environ", std::ios::binary);
    std::string var;
    while (std::getline(env, var, '\0'))
      if (var.rfind("OMPI_COMM_WORLD_RANK=", 0) == 0) out[std::stoi(var.substr(21))] = std::stoi(name);
  }
  return out;
}

bool wait_committed(const fs::path& ckpt, std::int64_t n, pid_t pid, double seconds) {
  const auto t0 = Clock::now();
  while (committed_layers(ckpt) < n) {
    if (waitpid(pid, nullptr, WNOHANG) == pid) return false;
    if (std::chrono::duration<double>(Clock::now() - t0).count() > seconds) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

class PruneDist : public ::testing::Test {
 protected:
  void SetUp() override {
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  }
};

// One prune at several rank counts: strict exports equal bit for bit, fast ones to 1e-6.
void check_invariance(const std::string& tag, const std::vector<std::string>& extra) {
  const auto base = temp_dir("inv_" + tag);
  auto strict = extra;
  strict.push_back("determinism=strict");
  ASSERT_EQ(run_to_end(prune_cmd(1, base / "s1", strict)), 0);
  const auto want = read_bytes(base / "s1/model/model.safetensors");
  ASSERT_GT(want.size(), 1000u);
  for (int ranks : {2, 3, 4}) {
    const auto out = base / fmt::format("s{}", ranks);
    ASSERT_EQ(run_to_end(prune_cmd(ranks, out, strict)), 0) << ranks << " ranks";
    EXPECT_TRUE(read_bytes(out / "model/model.safetensors") == want) << tag << ": strict at " << ranks << " ranks";
  }
  ASSERT_EQ(run_to_end(prune_cmd(1, base / "f1", extra)), 0);
  ASSERT_EQ(run_to_end(prune_cmd(3, base / "f3", extra)), 0);
  EXPECT_LE(max_rel_diff(base / "f1/model", base / "f3/model"), 1e-6) << tag << ": fast at 1 and 3 ranks";
  fs::remove_all(base);
}

TEST_F(PruneDist, SparseGptUnstructuredIsRankCountInvariant) {
  NEED_SHARED();
  check_invariance("sgpt", {"prune.method=sparsegpt", "prune.sparsity=0.5"});
}

TEST_F(PruneDist, SparseGpt24IsRankCountInvariant) {
  NEED_SHARED();
  check_invariance("sgpt24", {"prune.method=sparsegpt", "prune.pattern=2:4"});
}

// A sharded export is written by output.export_writers ranks per node, each its share of the
// shards (writer w: shards w, w + writers, ...), and the summary counts every tensor once: the
// same files from one rank, from 3 writers (0: every rank) and from one writer of 3 ranks.
TEST_F(PruneDist, AShardedExportIsTheSameWrittenByThreeRanks) {
  NEED_SHARED();
  const auto base = temp_dir("shard_export");
  const std::vector<std::string> extra{"prune.method=magnitude", "output.export_shard_mb=2"};
  auto all_write = extra;
  all_write.push_back("output.export_writers=0");
  ASSERT_EQ(run_to_end(prune_cmd(1, base / "r1", extra)), 0);
  ASSERT_EQ(run_to_end(prune_cmd(3, base / "r3", all_write)), 0);
  ASSERT_EQ(run_to_end(prune_cmd(3, base / "r3one", extra)), 0);
  int shards = 0;
  for (const auto& e : fs::directory_iterator(base / "r1/model")) {
    const auto name = e.path().filename().string();
    shards += name.rfind("model-", 0) == 0;
    EXPECT_TRUE(read_bytes(e.path()) == read_bytes(base / "r3/model" / name)) << name;
    EXPECT_TRUE(read_bytes(e.path()) == read_bytes(base / "r3one/model" / name)) << name;
  }
  EXPECT_GE(shards, 5);  // 10.8 MB in 2 MB shards
  const auto files = [&](const char* run) {
    return std::distance(fs::directory_iterator(base / run / "model"), fs::directory_iterator());
  };
  EXPECT_EQ(files("r3"), files("r1"));
  EXPECT_EQ(files("r3one"), files("r1"));
  for (const char* run : {"r1", "r3", "r3one"}) {
    EXPECT_FALSE(fs::exists(base / run / "model.tmp-export")) << run;
    const auto summary = records(base / run / "metrics.jsonl", "prune");
    ASSERT_EQ(summary.size(), 1u) << run;
    EXPECT_EQ(summary[0]["summary"]["zeros"], 3145728 / 2) << run;  // magnitude: half of every linear
    EXPECT_EQ(summary[0]["summary"]["weights"], 3145728) << run;
  }
  fs::remove_all(base);
}

// `scalpel export` under mpiexec shares the shards out as the prune's export does: the folder
// written by 3 ranks (every rank, then 2 of them) is the one the prune wrote on its own rank.
TEST_F(PruneDist, TheExportCommandWritesTheSameFolderFromThreeRanks) {
  NEED_SHARED();
  const auto base = temp_dir("export_cmd");
  ASSERT_EQ(run_to_end(prune_cmd(1, base / "r1", {"prune.method=magnitude", "output.export_shard_mb=2"})), 0);
  const auto exported = [&](const char* name, const char* writers) {
    return run_to_end({kMpiexec, "-n", "3", "--oversubscribe", kBin, "export", "--checkpoint",
                       (base / "r1/ckpt").string(), "--out", (base / name).string(), "--shard-mb", "2",
                       "--writers", writers});
  };
  ASSERT_EQ(exported("all", "0"), 0);
  ASSERT_EQ(exported("two", "2"), 0);
  int files = 0;
  for (const auto& e : fs::directory_iterator(base / "r1/model")) {
    const auto name = e.path().filename();
    ++files;
    EXPECT_TRUE(read_bytes(e.path()) == read_bytes(base / "all" / name)) << name;
    EXPECT_TRUE(read_bytes(e.path()) == read_bytes(base / "two" / name)) << name;
  }
  EXPECT_GE(files, 7);  // >= 5 shards, the index, config.json
  for (const char* run : {"all", "two"}) {
    EXPECT_EQ(std::distance(fs::directory_iterator(base / run), fs::directory_iterator()), files) << run;
    EXPECT_FALSE(fs::exists(base / (std::string(run) + ".tmp-export"))) << run;
  }
  // A checkpoint shard that no longer reads (bytes flipped in its data) fails the writer that
  // reads it, here not rank 0: the error is printed once, and no half-written folder is left
  // (rank 0 removed it only after its own failures, so 2 of 3 writers' shards stayed behind).
  const auto shard = base / "r1/ckpt/layer-00003.shard-00000.h5";
  auto bytes = read_bytes(shard);
  for (std::size_t i = bytes.size() / 2; i < bytes.size() / 2 + 64; ++i) bytes[i] = static_cast<char>(~bytes[i]);
  std::ofstream(shard, std::ios::binary | std::ios::trunc) << bytes;
  const auto out = run_capture({kMpiexec, "-n", "3", "--oversubscribe", kBin, "export", "--checkpoint",
                                (base / "r1/ckpt").string(), "--out", (base / "bad").string(), "--shard-mb", "2"});
  EXPECT_EQ(out.find("exit=0"), std::string::npos) << out;
  EXPECT_NE(out.find("layer-00003.shard-00000.h5"), std::string::npos) << out;
  EXPECT_NE(out.find("(on rank "), std::string::npos) << out;
  EXPECT_EQ(out.find("(on rank 0)"), std::string::npos) << out;
  std::size_t said = 0;
  for (auto p = out.find("scalpel: error"); p != std::string::npos; p = out.find("scalpel: error", p + 1)) ++said;
  EXPECT_EQ(said, 1u) << out;
  EXPECT_FALSE(fs::exists(base / "bad.tmp-export"));
  EXPECT_FALSE(fs::exists(base / "bad"));
  fs::remove_all(base);
}

// The layer records' broadcast bytes are what rank 0 received (they counted what it sent as the
// root too: 4,980,960 a layer at 2 ranks, 4 MB of them its own fc2 factor): at 2 ranks rank 0
// factorises fc2 and receives the three 256-wide factors, 3 x 256 x 256 x 4 bytes, as the plan
// says (plus a few bytes of the factors' descriptions).
TEST_F(PruneDist, BroadcastBytesAreTheFactorsRankZeroReceived) {
  NEED_SHARED();
  const auto out = temp_dir("bcast");
  ASSERT_EQ(run_to_end(prune_cmd(2, out, {"prune.method=sparsegpt", "output.export="})), 0);
  const auto layers = records(out / "metrics.jsonl", "layer");
  ASSERT_EQ(layers.size(), 4u);
  for (const auto& l : layers) {
    const auto b = l.at("comm_bytes").at("broadcast").get<std::int64_t>();
    EXPECT_GE(b, 3 * 256 * 256 * 4) << l.dump();
    EXPECT_LE(b, 3 * 256 * 256 * 4 + 4096) << l.dump();
  }
  fs::remove_all(out);
}

// Wanda and magnitude need no Hessian for their masks: with output.reconstruction_error false
// none is collected or all-reduced (the float64 sums of fc2's alone would be 8 x 1024 x 1025 / 2
// bytes = 4.2 MB per layer). Wanda reduces its column norms (8 bytes x 1792 inputs), magnitude only
// the threshold histograms of its global selection (6144 int64 per matrix). The masks are the same.
TEST_F(PruneDist, WandaAndMagnitudeWithoutTheErrorReduceNoHessian) {
  NEED_SHARED();
  const auto out = temp_dir("noerr_dist");
  for (const std::string method : {"wanda", "magnitude"}) {
    std::vector<std::vector<nlohmann::json>> layers;
    for (const std::string err : {"true", "false"}) {
      const auto dir = out / (method + "_err_" + err);
      ASSERT_EQ(run_to_end(prune_cmd(2, dir, {"eval.sets=[]", "prune.method=" + method,
                                              "output.reconstruction_error=" + err})), 0) << method << " " << err;
      layers.push_back(records(dir / "metrics.jsonl", "layer"));
    }
    EXPECT_TRUE(read_bytes(out / (method + "_err_true/model/model.safetensors")) ==
                read_bytes(out / (method + "_err_false/model/model.safetensors"))) << method;
    ASSERT_EQ(layers[1].size(), 4u);
    for (const auto& l : layers[1])
      EXPECT_LT(l["comm_bytes"]["allreduce"].get<std::int64_t>(), method == "wanda" ? 16 * 1024 : 6 * 6144 * 8 + 1024)
          << method << " layer " << l["layer"];
    EXPECT_GT(layers[0][0]["comm_bytes"]["allreduce"].get<std::int64_t>(), 4'000'000) << method;  // with the Hessians
  }
  fs::remove_all(out);
}

TEST_F(PruneDist, WandaIsRankCountInvariant) {
  NEED_SHARED();
  check_invariance("wanda", {"prune.method=wanda", "prune.sparsity=0.5"});
}

TEST_F(PruneDist, StagesAndLlamaAreRankCountInvariant) {
  NEED_SHARED();
  const auto base = temp_dir("stages");
  for (const std::string model : {"opt-mini", "llama-mini"}) {
    const std::vector<std::string> strict{"determinism=strict", "prune.method=sparsegpt"};
    ASSERT_EQ(run_to_end(prune_cmd(1, base / (model + "1"), strict, model)), 0);
    const auto want = read_bytes(base / (model + "1") / "model/model.safetensors");
    auto two = strict;
    two.push_back("parallel.stages=2");
    ASSERT_EQ(run_to_end(prune_cmd(2, base / (model + "2x1"), two, model)), 0);
    EXPECT_TRUE(read_bytes(base / (model + "2x1") / "model/model.safetensors") == want) << model << " 2 stages x 1";
    ASSERT_EQ(run_to_end(prune_cmd(4, base / (model + "2x2"), two, model)), 0);
    EXPECT_TRUE(read_bytes(base / (model + "2x2") / "model/model.safetensors") == want) << model << " 2 stages x 2";
  }
  fs::remove_all(base);
}

// The fp16 calibration forward (the GPU's precision model, on the CPU) keeps the invariance: data
// ranks and pipeline stages (whose hand-over carries 2-byte activations) give the same bits.
TEST_F(PruneDist, Fp16ForwardIsRankAndStageInvariant) {
  NEED_SHARED();
  const auto base = temp_dir("fp16");
  const std::vector<std::string> strict{"determinism=strict", "prune.method=sparsegpt", "cpu.forward_dtype=fp16"};
  ASSERT_EQ(run_to_end(prune_cmd(1, base / "one", strict)), 0);
  const auto want = read_bytes(base / "one/model/model.safetensors");
  ASSERT_GT(want.size(), 1000u);
  ASSERT_EQ(run_to_end(prune_cmd(2, base / "data2", strict)), 0);
  EXPECT_TRUE(read_bytes(base / "data2/model/model.safetensors") == want) << "2 data ranks";
  auto stages = strict;
  stages.push_back("parallel.stages=2");
  ASSERT_EQ(run_to_end(prune_cmd(4, base / "2x2", stages)), 0);
  EXPECT_TRUE(read_bytes(base / "2x2/model/model.safetensors") == want) << "2 stages x 2";
  fs::remove_all(base);
}

// fc2's 1024-wide factor made by all data ranks together (sparsegpt.split_width below its width;
// 4 panels of 256 rows, shared unevenly by 3 ranks): the same bytes at 1, 2 and 3 ranks, with the
// factor's metrics saying it was shared (owner -1).
TEST_F(PruneDist, SharedFactorisationIsRankInvariant) {
  NEED_SHARED();
  const auto base = temp_dir("splitfac");
  const std::vector<std::string> opts{"determinism=strict", "prune.method=sparsegpt", "sparsegpt.split_width=1024",
                                      "sparsegpt.tile=256"};
  ASSERT_EQ(run_to_end(prune_cmd(1, base / "one", opts)), 0);
  const auto want = read_bytes(base / "one/model/model.safetensors");
  ASSERT_GT(want.size(), 1000u);
  for (const int ranks : {2, 3}) {
    const auto dir = base / ("ranks" + std::to_string(ranks));
    ASSERT_EQ(run_to_end(prune_cmd(ranks, dir, opts)), 0);
    EXPECT_TRUE(read_bytes(dir / "model/model.safetensors") == want) << ranks << " data ranks";
  }
  const auto metrics = read_bytes(base / "ranks3/metrics.jsonl");
  // q/k/v, out_proj and fc1 whole to ranks 0, 1, 2; fc2 by all.
  EXPECT_NE(metrics.find("\"owners\":[0,1,2,-1]"), std::string::npos) << metrics.substr(0, 2000);
  fs::remove_all(base);
}

TEST_F(PruneDist, SigkillOfOneRankEndsTheJobAndAnotherRankCountResumes) {
  NEED_SHARED();
  const auto base = temp_dir("kill");
  const std::vector<std::string> strict{"determinism=strict"};
  ASSERT_EQ(run_to_end(prune_cmd(1, base / "ref", strict)), 0);
  const auto out = base / "run";
  const pid_t job = spawn(prune_cmd(2, out, strict));
  ASSERT_TRUE(wait_committed(out / "ckpt", 1, job, 120)) << "no layer committed";
  const auto pids = rank_pids(job);
  ASSERT_EQ(pids.size(), 2u);
  const auto t0 = Clock::now();
  kill(pids.at(1), SIGKILL);
  const int code = wait_exit(job);
  const double ended = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_NE(code, 0);
  EXPECT_LT(ended, 30.0) << "the job outlived its killed rank";
  const auto done = committed_layers(out / "ckpt");
  EXPECT_GE(done, 1);
  // Resume at 3 ranks: the checkpoint is per layer, not per rank.
  const auto log = base / "resume.log";
  ASSERT_EQ(wait_exit(spawn(prune_cmd(3, out, strict), log)), 0) << read_bytes(log);
  if (done < 4) {
    EXPECT_NE(read_bytes(log).find("resuming at layer"), std::string::npos) << read_bytes(log);
    // The summary's seconds and ranks are the resumed run's: it says from which layer.
    const auto manifest = nlohmann::json::parse(read_bytes(out / "ckpt/manifest.json"));
    EXPECT_EQ(manifest.at("summary").at("resumed_at_layer").get<std::int64_t>(), done) << manifest.dump();
    EXPECT_EQ(manifest.at("summary").at("ranks").get<int>(), 3);
  }
  EXPECT_TRUE(read_bytes(out / "model/model.safetensors") == read_bytes(base / "ref/model/model.safetensors"));
  fs::remove_all(base);
}

TEST_F(PruneDist, Sigusr1StopsAfterACommittedLayerWithExit75AndTheRerunFinishes) {
  NEED_SHARED();
  const auto base = temp_dir("usr1");
  ASSERT_EQ(run_to_end(prune_cmd(1, base / "ref", {})), 0);
  const auto out = base / "run";
  const auto log = base / "stop.log";
  const pid_t job = spawn(prune_cmd(2, out, {}), log);
  ASSERT_TRUE(wait_committed(out / "ckpt", 1, job, 120)) << "no layer committed";
  kill(job, SIGUSR1);  // mpiexec forwards SIGUSR1 to the ranks
  EXPECT_EQ(wait_exit(job), 75) << read_bytes(log);
  const auto done = committed_layers(out / "ckpt");
  EXPECT_GE(done, 1);
  EXPECT_LT(done, 4) << "the stop came after the last layer; nothing to check";
  EXPECT_NE(read_bytes(log).find("stopping after layer"), std::string::npos) << read_bytes(log);
  // The signal is acknowledged at once, by rank 0 alone (both ranks received it).
  const auto said = read_bytes(log);
  const std::string ack = "scalpel: SIGUSR1 received: stopping after the current step";
  ASSERT_NE(said.find(ack), std::string::npos) << said;
  EXPECT_EQ(said.find(ack, said.find(ack) + 1), std::string::npos) << said;
  const auto stops = records(out / "metrics.jsonl", "interrupted");  // the last committed layer, 0-based
  ASSERT_EQ(stops.size(), 1u);
  EXPECT_EQ(stops[0]["signal"], SIGUSR1);
  EXPECT_EQ(stops[0]["after_layer"], done - 1);
  EXPECT_FALSE(fs::exists(out / "model/model.safetensors"));
  ASSERT_EQ(run_to_end(prune_cmd(2, out, {})), 0);
  EXPECT_TRUE(read_bytes(out / "model/model.safetensors") == read_bytes(base / "ref/model/model.safetensors"));
  fs::remove_all(base);
}

TEST_F(PruneDist, AHungRankTripsTheWatchdog) {
  NEED_SHARED();
  const auto base = temp_dir("hang");
  const auto out = base / "run";
  const auto log = base / "hang.log";
  const pid_t job = spawn(prune_cmd(2, out, {"parallel.watchdog_seconds=3"}), log);
  ASSERT_TRUE(wait_committed(out / "ckpt", 1, job, 120)) << "no layer committed";
  const auto pids = rank_pids(job);
  ASSERT_EQ(pids.size(), 2u);
  kill(pids.at(1), SIGSTOP);  // a peer that stops answering: rank 0 waits in a collective
  const auto t0 = Clock::now();
  const int code = wait_exit(job);
  const double ended = std::chrono::duration<double>(Clock::now() - t0).count();
  kill(pids.at(1), SIGKILL);  // in case the launcher left it
  EXPECT_NE(code, 0);
  EXPECT_LT(ended, 30.0);
  const auto text = read_bytes(log);
  EXPECT_NE(text.find("watchdog: no progress"), std::string::npos) << text;
  EXPECT_NE(text.find("(rank 0)"), std::string::npos) << text;
  fs::remove_all(base);
}

// After the last layer the watchdog must not mistake the long phases for a hang: the evaluation
// (here about 900 windows, 15 s or more, well over the 5 s timeout) beats once per batch, and the export
// written by rank 0 alone suspends the countdown.
TEST_F(PruneDist, TheWatchdogStaysQuietThroughExportAndEvaluation) {
  NEED_SHARED();
  const auto base = temp_dir("quiet");
  const auto out = base / "run";
  const auto log = base / "quiet.log";
  const pid_t job = spawn(prune_cmd(2, out,
                                    {"parallel.watchdog_seconds=5", "eval.seqlen=128", "eval.batch=4",
                                     "eval.sets=[{preset: text, path: " +
                                         (kShared / "data/corpus/heldout.txt").string() + "}]"}),
                          log);
  const auto t0 = Clock::now();
  const int code = wait_exit(job);
  const double took = std::chrono::duration<double>(Clock::now() - t0).count();
  const auto text = read_bytes(log);
  EXPECT_EQ(code, 0) << text;
  EXPECT_EQ(text.find("watchdog"), std::string::npos) << text;
  EXPECT_NE(text.find("text: ppl"), std::string::npos) << text;
  std::printf("prune + export + evaluation took %.1f s under a 5 s watchdog\n", took);
  fs::remove_all(base);
}

TEST_F(PruneDist, AnErrorOnTheRanksNamesRankAndLayerAndEndsTheJob) {
  NEED_SHARED();
  // A copy of opt-mini whose layer 2 fc1 weight holds a NaN.
  const auto base = temp_dir("nan");
  const auto model = copy_opt_mini(base / "models/opt-mini");
  {
    const scalpel::io::HfCheckpoint src(model);
    const auto name = src.resolve("model.decoder.layers.2.fc1.weight");
    ASSERT_FALSE(name.empty());
    const auto bytes = read_bytes(model / "model.safetensors");
    std::uint64_t header = 0;
    std::memcpy(&header, bytes.data(), 8);
    const auto meta = nlohmann::json::parse(bytes.substr(8, header));
    const auto offset = 8 + header + meta.at(name).at("data_offsets")[0].get<std::uint64_t>();
    ASSERT_EQ(meta.at(name).at("dtype"), "F16");
    std::fstream f(model / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(offset + 2 * 1000));
    const unsigned char nan16[2] = {0x00, 0x7e};
    f.write(reinterpret_cast<const char*>(nan16), 2);
  }
  auto cmd = prune_cmd(2, base / "run", {});
  const auto flag = std::find(cmd.begin(), cmd.end(), std::string("--model"));
  ASSERT_NE(flag, cmd.end());
  *(flag + 1) = model.string();
  const auto log = base / "nan.log";
  const auto t0 = Clock::now();
  const int code = wait_exit(spawn(cmd, log));
  const double ended = std::chrono::duration<double>(Clock::now() - t0).count();
  const auto text = read_bytes(log);
  EXPECT_EQ(code, 2) << text;
  EXPECT_LT(ended, 60.0);
  // Every rank holds the owner's error (the factorisation is shared): printed once, naming the
  // rank that factorised it.
  EXPECT_NE(text.find("(factorised on data rank "), std::string::npos) << text;
  EXPECT_NE(text.find("layer 2"), std::string::npos) << text;
  EXPECT_NE(text.find("NaN"), std::string::npos) << text;
  // Layers 0 and 1 are committed, layer 2 is not.
  EXPECT_EQ(committed_layers(base / "run/ckpt"), 2);
  fs::remove_all(base);
}

TEST_F(PruneDist, AJobThatDoesNotFitTheMemoryLimitIsRefusedBeforeItStarts) {
  NEED_SHARED();
  const auto base = temp_dir("mem");
  auto cmd = prune_cmd(2, base / "run", {"parallel.memory_gb=0.02"});  // 20 MB: the plan says 39.4 MB
  const auto out = run_capture(cmd);
  EXPECT_NE(out.find("exit=2"), std::string::npos) << out;
  EXPECT_NE(out.find("parallel.memory_gb"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(base / "run/ckpt/manifest.json")) << "nothing may be started";
  fs::remove_all(base);
}

// An input check every rank makes alike (the config, the model folder, the calibration text, the
// grid, an export's checkpoint) is printed once, by rank 0, with exit code 2 and no MPI_Abort
// banner; each was printed once per rank under MPI_Abort's banner.
TEST_F(PruneDist, InputErrorsEveryRankMeetsArePrintedOnce) {
  NEED_SHARED();
  const auto base = temp_dir("once");
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases{
      {prune_cmd(2, base / "a", {"prune.sparsityy=0.5"}), "unknown key 'prune.sparsityy'"},
      {prune_cmd(2, base / "b", {"calibration.path=/nowhere.txt"}), "/nowhere.txt"},
      {prune_cmd(2, base / "c", {"prune.pattern=3:5"}), "'prune.pattern' 3:5"},
      {prune_cmd(2, base / "d", {"parallel.stages=3"}), "'parallel.stages' 3 does not divide the 2 ranks"},
      {prune_cmd(2, base / "e", {"prune.method=surgeon", "calibration.seqlen=4096"}), "'calibration.seqlen' 4096"},
      {{kMpiexec, "-n", "2", "--oversubscribe", kBin, "eval", "--model", (base / "nomodel").string(), "--text",
        "text:" + (kShared / "data/corpus/heldout.txt").string()},
       (base / "nomodel").string()},
      {{kMpiexec, "-n", "2", "--oversubscribe", kBin, "export", "--checkpoint", (base / "nockpt").string(), "--out",
        (base / "x").string()},
       "manifest.json is missing"},
  };
  for (const auto& [cmd, says] : cases) {
    const auto out = run_capture(cmd);
    EXPECT_NE(out.find("exit=2"), std::string::npos) << out;
    EXPECT_NE(out.find(says), std::string::npos) << out;
    std::size_t said = 0;
    for (auto p = out.find("scalpel: error"); p != std::string::npos; p = out.find("scalpel: error", p + 1)) ++said;
    EXPECT_EQ(said, 1u) << out;
    EXPECT_EQ(out.find("MPI_ABORT"), std::string::npos) << out;
  }
  EXPECT_FALSE(fs::exists(base / "a")) << "nothing may be written";
  fs::remove_all(base);
}

}  // namespace
