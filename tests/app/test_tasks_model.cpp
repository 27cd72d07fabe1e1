// Zero-shot scoring end to end on the shared models: one hand-written item of every preset goes
// through app::evaluate_task (the Backend's fp32 forward, batched and padded), and each request's
// log-likelihood is compared with a float64 forward of the same model (weights read straight from
// model.safetensors, tests/common/reference_model.hpp) on the ids the harness's encoding gives;
// the scores must be the ones the float64 log-likelihoods give. One test body per backend.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "../common/backends.hpp"
#include "../common/reference_model.hpp"
#include "scalpel/app/commands.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/dist/comm.hpp"
#include "scalpel/io/hf_checkpoint.hpp"

namespace scalpel::test {
namespace {

namespace fs = std::filesystem;

// One item per preset, written for this test in the field names of the datasets' HF exports.
const std::vector<std::pair<std::string, std::string>> kItems = {
    {"piqa", R"({"goal": "How do I keep bread fresh?", "sol1": "Seal it in a bag.", "sol2": "Leave it in the rain.", "label": 0})"},
    {"hellaswag", R"({"activity_label": "Cooking", "ctx_a": "A man puts a pan on the stove.", "ctx_b": "he", "endings": ["cracks two eggs into it.", "swims across the lake [title] quickly.", "sings to the moon.", "reads a book about trains."], "label": "0"})"},
    {"arc_easy", R"({"question": "Which of these is a metal?", "choices": {"text": ["iron", "wood", "glass", "paper"], "label": ["A", "B", "C", "D"]}, "answerKey": "A"})"},
    {"arc_challenge", R"({"question": "What do plants need to make food?", "choices": {"text": ["sunlight", "sand"], "label": ["1", "2"]}, "answerKey": "1"})"},
    {"winogrande", R"({"sentence": "The ball broke the window because _ was thrown hard.", "option1": "the ball", "option2": "the window", "answer": "1"})"},
    {"boolq", R"({"passage": "The river flows to the sea and carries fresh water.", "question": "does the river flow to the sea", "label": 1})"},
    {"rte", R"({"sentence1": "The old man walked his dog in the park.", "sentence2": "A man was in the park.", "label": 0})"},
    {"openbookqa", R"({"question_stem": "The sun is a", "choices": {"text": ["star", "planet", "moon", "comet"], "label": ["A", "B", "C", "D"]}, "answerKey": "A"})"},
    {"copa", R"({"premise": "The man lost his keys.", "choice1": "He could not open the door.", "choice2": "He ate an apple.", "question": "effect", "label": 0})"},
    {"lambada", R"({"text": "She opened the door and looked out at the long and empty street"})"},
    {"mc", R"({"context": "It was a dark and stormy", "choices": ["night.", "banana.", "seven"], "label": 0})"},
};

class TaskModel : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {
 protected:
  void SetUp() override {
    SCALPEL_BACKEND_OR_SKIP(be, std::get<0>(GetParam()), 2);
    folder = fs::path(SCALPEL_SHARED_DIR) / "models" / std::get<1>(GetParam());
    if (!fs::exists(folder / "config.json")) GTEST_SKIP() << folder << " not found (set SCALPEL_SHARED_DIR)";
    dir = fs::temp_directory_path() / ("scalpel_tasks_model_" + std::to_string(::getpid()));
    fs::create_directories(dir);
  }
  void TearDown() override {
    std::error_code ec;
    if (!dir.empty()) fs::remove_all(dir, ec);
  }
  std::unique_ptr<Backend> be;
  fs::path folder, dir;
};

TEST_P(TaskModel, EveryPresetMatchesAFloat64Forward) {
  auto ckpt = std::make_shared<const io::HfCheckpoint>(folder);
  const auto spec = model::ModelSpec::from_config(ckpt->config(), "config.json");
  model::Model m(spec, app::checkpoint_source(ckpt), *be);
  const auto ref = load_ref_model(folder);
  const auto tok = text::Tokenizer::from_folder(folder);
  dist::SelfComm self;
  // batch 3 pads requests of different lengths together; max_length as the model's context.
  const app::TaskOptions opt{3, 0, false, spec.max_positions, 0};
  double worst = 0;
  for (const auto& [preset, line] : kItems) {
    const fs::path file = dir / (preset + ".jsonl");
    std::ofstream(file) << line << "\n";
    const auto r = app::evaluate_task(m, tok.get(), {preset, preset, file.string()}, opt, self);
    const auto docs = text::load_task_docs(text::task_preset(preset), file);
    std::vector<double> ll;
    std::vector<std::uint8_t> greedy;
    for (const auto& [ctx, cont] : docs.at(0).requests) {
      const auto e = text::encode_request(*tok, ctx, cont, {false, spec.max_positions});
      const auto n = static_cast<std::int64_t>(e.ids.size());
      const auto s = ref_model_scores(ref, e.ids, n - e.continuation - 1);
      double sum = 0;
      bool all = true;
      for (std::size_t i = 0; i < s.logp.size(); ++i) sum += s.logp[i], all = all && s.argmax[i];
      ll.push_back(sum);
      greedy.push_back(all);
    }
    ASSERT_EQ(r.loglik.size(), ll.size()) << preset;
    for (std::size_t i = 0; i < ll.size(); ++i) {
      // fp32 activations through 4 layers and an fp32 LM head: each token's log-probability
      // carries ~1e-6 relative error, so a continuation of a few to 20 tokens (log-likelihoods
      // of -5 to -100) is within 2e-4 (the cpu shows below 1e-5); the gaps that decide acc
      // between choices are far larger, and the scores are checked equal below.
      EXPECT_NEAR(r.loglik[i], ll[i], 2e-4) << preset << " request " << i;
      worst = std::max(worst, std::abs(r.loglik[i] - ll[i]));
    }
    const auto want = text::score_task(text::task_preset(preset), docs, ll, greedy);
    EXPECT_EQ(r.scores.acc, want.acc) << preset;
    if (!std::isnan(want.acc_norm)) {
      EXPECT_EQ(r.scores.acc_norm, want.acc_norm) << preset;
    }
    if (!std::isnan(want.ppl)) {
      EXPECT_NEAR(r.scores.ppl, want.ppl, want.ppl * 2e-4) << preset;
    }
  }
  std::printf("largest |loglik - float64| on %s: %.3g\n", folder.filename().c_str(), worst);
}

// A run reads its evaluation inputs before its work (app::read_eval_inputs) and evaluates from
// them at its end: the files changing or vanishing in between must change nothing. The records of
// an evaluation from inputs read before the text file was removed and the task file overwritten
// with garbage equal those of an evaluation with the files in place.
TEST_P(TaskModel, EvaluatesTheInputsReadBeforeTheWork) {
  auto ckpt = std::make_shared<const io::HfCheckpoint>(folder);
  const auto spec = model::ModelSpec::from_config(ckpt->config(), "config.json");
  model::Model m(spec, app::checkpoint_source(ckpt), *be);
  const auto tok = text::Tokenizer::from_folder(folder);
  dist::SelfComm self;
  const fs::path text = dir / "text.txt", task = dir / "mc.jsonl";
  std::ofstream(text) << "The river runs to the sea. The sea is wide and deep, and the ships sail on it all "
                         "day and all night, from one shore to the other, carrying wheat and wool.\n";
  std::ofstream(task) << kItems.back().second << "\n" << kItems.back().second << "\n";
  app::Config cfg;
  cfg.model = folder.string();
  cfg.eval.seqlen = 8;
  cfg.eval.sets = {{"text", "text", text.string()}};
  cfg.eval.tasks = {{"mc", "mc", task.string()}};
  const auto records = [&](const app::EvalInputs& in, const std::string& name) {
    {
      app::Metrics metrics((dir / name).string());
      EXPECT_TRUE(app::evaluate_config(m, in, cfg, self, metrics, nlohmann::json::object()));
    }
    std::vector<nlohmann::json> out;
    std::ifstream f(dir / name);
    for (std::string line; std::getline(f, line);) {
      auto j = nlohmann::json::parse(line);
      for (const char* k : {"time", "seconds"}) j.erase(k);
      out.push_back(j);
    }
    return out;
  };
  const auto before = records(app::read_eval_inputs(cfg, spec, *tok), "before.jsonl");
  const auto inputs = app::read_eval_inputs(cfg, spec, *tok);
  fs::remove(text);
  std::ofstream(task) << "not json\n";
  const auto after = records(inputs, "after.jsonl");
  ASSERT_EQ(before.size(), 2u);
  EXPECT_EQ(after, before);
  EXPECT_GT(before[0].at("windows").get<std::int64_t>(), 0);
  EXPECT_EQ(before[1].at("requests").get<std::int64_t>(), 6);  // 2 items x 3 choices
  // And read now, the files are refused, naming them.
  try {
    (void)app::read_eval_inputs(cfg, spec, *tok);
    ADD_FAILURE() << "a removed eval text was read";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(text.string()), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(All, TaskModel,
                         ::testing::Combine(::testing::ValuesIn(test_backends()),
                                            ::testing::Values("opt-mini", "llama-mini")),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" +
                                  (std::get<1>(info.param) == "opt-mini" ? "OptMini" : "LlamaMini");
                         });

}  // namespace
}  // namespace scalpel::test
