// `scalpel prune` and `scalpel eval` with a low-precision forward (cpu.forward_dtype: the GPU's
// fp16/bf16 precision model computed on the CPU): the masks and the pruned model's perplexity stay
// with the fp32 prune's, the forward dtype is part of the checkpoint's identity, LLM Surgeon
// refuses it, and the evaluation runs in it.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

namespace fs = std::filesystem;

#include "prune_test_util.hpp"
#include "mask_agreement.hpp"

namespace {

using namespace scalpel_test;

// 32 windows of 128 tokens; the held-out perplexity over its first 40 windows of 128.
std::vector<std::string> prune_args(const fs::path& out, const std::string& model,
                                    const std::vector<std::string>& extra) {
  std::vector<std::string> a{kBin, "prune", "--model", (kShared / "models" / model).string(),
                             "calibration.path=" + (kShared / "data/corpus/calib.txt").string(),
                             "calibration.nsamples=32", "calibration.seqlen=128", "calibration.batch=8",
                             "output.dir=" + out.string(), "log.progress_seconds=0", "threads=2",
                             "eval.sets=[{name: heldout, preset: text, path: " +
                                 (kShared / "data/corpus/heldout.txt").string() + "}]",
                             "eval.seqlen=128", "eval.max_windows=40"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

double heldout_ppl(const fs::path& dir) {
  for (const auto& r : records(dir / "metrics.jsonl", "eval"))
    if (r.value("set", "") == "heldout") return r.at("ppl").get<double>();
  ADD_FAILURE() << "no heldout eval record in " << dir;
  return 0;
}


class LowpPrune : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(LowpPrune, MasksAndPerplexityStayWithTheFp32Prune) {
  NEED_SHARED();
  const auto& [model, method] = GetParam();
  const auto base = temp_dir("lowp_" + model + "_" + method);
  const std::vector<std::string> opts{"prune.method=" + method};
  ASSERT_EQ(run_to_end(prune_args(base / "fp32", model, opts)), 0);
  auto low = opts;
  low.push_back("cpu.forward_dtype=fp16");
  const auto out = run_capture(prune_args(base / "fp16", model, low));
  ASSERT_NE(out.find("exit=0"), std::string::npos) << out;
  EXPECT_NE(out.find("F16 forward"), std::string::npos) << out;
  for (const auto& r : records(base / "fp16/metrics.jsonl", "eval")) EXPECT_EQ(r.value("forward_dtype", ""), "F16");
  const double p32 = heldout_ppl(base / "fp32"), p16 = heldout_ppl(base / "fp16");
  // The bound: the pruned perplexity within 0.5% (measured: within 0.002% on all three).
  EXPECT_NEAR(p16, p32, 0.005 * p32);
  // fp16 activations move the Hessian by ~1e-3 relative, which flips the choice between weights
  // whose scores are that close. Measured agreement: SparseGPT 99.92% (opt-mini) and 99.91%
  // (llama-mini; a flip also changes the updates of the row's later columns), Wanda 99.997%.
  const double agree = mask_agreement(base / "fp32/ckpt", base / "fp16/ckpt", 4);
  EXPECT_GT(agree, method == "wanda" ? 0.9995 : 0.998) << "mask agreement";
  EXPECT_LT(agree, 1.0) << "the fp16 forward gave the fp32 masks: did it round at all?";
  fs::remove_all(base);
}

INSTANTIATE_TEST_SUITE_P(All, LowpPrune,
                         ::testing::Values(std::make_tuple("opt-mini", "sparsegpt"),
                                           std::make_tuple("llama-mini", "sparsegpt"),
                                           std::make_tuple("opt-mini", "wanda")),
                         [](const auto& info) {
                           std::string m = std::get<0>(info.param);
                           for (auto& c : m)
                             if (c == '-') c = '_';
                           return m + "_" + std::get<1>(info.param);
                         });

// `scalpel eval` (and the prune's own evaluation) runs in the forward dtype too, as the reference
// evaluates an fp16 model: the held-out perplexity of opt-mini moves by what 2-byte activations
// justify (measured on the whole text at 512: fp16 4e-7, bf16 3e-5 relative; here 40 windows of 128).
TEST(LowpEval, TheEvaluationRunsInTheForwardDtype) {
  NEED_SHARED();
  const auto dir = temp_dir("lowp_eval");
  auto eval = [&](const std::string& dt) {
    const auto out = run_capture({kBin, "eval", "--model", (kShared / "models/opt-mini").string(), "--text",
                                  "text:" + (kShared / "data/corpus/heldout.txt").string(), "eval.seqlen=128",
                                  "eval.max_windows=40", "log.progress_seconds=0", "threads=2",
                                  "output.dir=" + (dir / dt).string(), "cpu.forward_dtype=" + dt});
    EXPECT_NE(out.find("exit=0"), std::string::npos) << out;
    const auto recs = records(dir / dt / "metrics.jsonl", "eval");
    EXPECT_EQ(recs.size(), 1u) << out;
    return recs.empty() ? nlohmann::json::object() : recs.front();
  };
  const auto f32 = eval("fp32"), f16 = eval("fp16"), bf16 = eval("bf16");
  EXPECT_EQ(f16.value("forward_dtype", ""), "F16");
  EXPECT_EQ(bf16.value("forward_dtype", ""), "BF16");
  const double p = f32.value("ppl", 0.0);
  ASSERT_GT(p, 0.0);
  EXPECT_NEAR(f16.value("ppl", 0.0), p, 1e-5 * p);
  EXPECT_NEAR(bf16.value("ppl", 0.0), p, 3e-4 * p);
  EXPECT_NE(f16.value("ppl", 0.0), p) << "the fp16 evaluation gave the fp32 bits: did it round?";
  fs::remove_all(dir);
}

TEST(LowpPruneErrors, TheForwardDtypeIsPartOfTheCheckpointsIdentity) {
  NEED_SHARED();
  const auto dir = temp_dir("lowp_identity");
  const std::vector<std::string> mag{"prune.method=magnitude", "eval.sets=[]"};
  ASSERT_EQ(run_to_end(prune_args(dir, "opt-mini", mag)), 0);
  auto low = mag;
  low.push_back("cpu.forward_dtype=bf16");
  const auto out = run_capture(prune_args(dir, "opt-mini", low));
  EXPECT_NE(out.find("exit=2"), std::string::npos) << out;
  EXPECT_NE(out.find("config"), std::string::npos) << out;
  fs::remove_all(dir);
}

TEST(LowpPruneErrors, BadValuesAndLlmSurgeonAreRefused) {
  NEED_SHARED();
  const auto dir = temp_dir("lowp_errors");
  auto out = run_capture(prune_args(dir, "opt-mini", {"cpu.forward_dtype=fp8"}));
  EXPECT_NE(out.find("exit=2"), std::string::npos) << out;
  EXPECT_NE(out.find("cpu.forward_dtype"), std::string::npos) << out;
  out = run_capture(prune_args(dir, "opt-mini", {"cuda.forward_dtype=half"}));
  EXPECT_NE(out.find("exit=2"), std::string::npos) << out;
  EXPECT_NE(out.find("cuda.forward_dtype"), std::string::npos) << out;
  out = run_capture(prune_args(dir, "opt-mini", {"prune.method=surgeon", "cpu.forward_dtype=fp16"}));
  EXPECT_NE(out.find("exit=2"), std::string::npos) << out;
  EXPECT_NE(out.find("fp32 forward"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir / "ckpt" / "manifest.json"));
  fs::remove_all(dir);
}

}  // namespace
