// The zero-shot task presets against lm-evaluation-harness's templates (lm_eval/tasks/*/*.yaml,
// utils.py), written out by hand here for one item of each: the exact (context, continuation)
// strings, the gold index and the choices acc_norm divides by. Then the HFLM encoding rules on
// the shared tokenizers, the metrics and their standard errors, and every bad-input message.
#include <gtest/gtest.h>

#include <cmath>

#include "scalpel/text/tasks.hpp"
#include "scalpel/text/tokenizer.hpp"
#include "text_test_util.hpp"

namespace scalpel::text {
namespace {

using testing::expect_input_error;
using testing::shared_dir;
using testing::TempDir;
using testing::write_file;
using Ids = std::vector<std::int32_t>;
using Req = std::pair<std::string, std::string>;

std::vector<TaskDoc> docs_of(const std::string& preset, const std::string& jsonl, std::int64_t max_items = 0) {
  TempDir d;
  write_file(d / "items.jsonl", jsonl);
  return load_task_docs(task_preset(preset), d / "items.jsonl", max_items);
}

TaskDoc one(const std::string& preset, const std::string& line) {
  auto docs = docs_of(preset, line + "\n");
  EXPECT_EQ(docs.size(), 1u);
  return docs.at(0);
}

TEST(TaskPresets, Piqa) {
  const auto d = one("piqa", R"({"goal": "Keep bread fresh", "sol1": "Seal it in a bag.", "sol2": "Leave it wet.", "label": 0})");
  EXPECT_EQ(d.requests, (std::vector<Req>{{"Question: Keep bread fresh\nAnswer:", " Seal it in a bag."},
                                          {"Question: Keep bread fresh\nAnswer:", " Leave it wet."}}));
  EXPECT_EQ(d.choices, (std::vector<std::string>{"Seal it in a bag.", "Leave it wet."}));
  EXPECT_EQ(d.gold, 0);
}

TEST(TaskPresets, HellaswagPreprocessing) {
  // query = preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()); preprocess strips,
  // turns " [title]" into ". ", drops [bracketed] text (not across a newline), then "  " -> " ".
  const auto d = one("hellaswag",
                     R"({"activity_label": "Baking cookies", "ctx_a": "A woman [header] mixes flour  and eggs.",)"
                     R"( "ctx_b": "then SHE rolls", "endings": [" the dough [title] flat.", "a ball [step]",)"
                     R"( "x [no\nclose] y", "jumps."], "label": "2"})");
  const std::string q = "Baking cookies: A woman mixes flour and eggs. Then she rolls";
  EXPECT_EQ(d.requests, (std::vector<Req>{{q, " the dough. flat."}, {q, " a ball "}, {q, " x [no\nclose] y"}, {q, " jumps."}}));
  EXPECT_EQ(d.choices[0], "the dough. flat.");
  EXPECT_EQ(d.gold, 2);
}

TEST(TaskPresets, ArcAndOpenBookQa) {
  const std::string choices = R"("choices": {"text": ["iron", "wood", "glass"], "label": ["A", "B", "C"]})";
  const auto arc = one("arc_easy", R"({"question": "Which is a metal?", )" + choices + R"(, "answerKey": "A"})");
  EXPECT_EQ(arc.requests.at(1), (Req{"Question: Which is a metal?\nAnswer:", " wood"}));
  EXPECT_EQ(arc.gold, 0);
  const auto ch = one("arc_challenge", R"({"question": "Q?", "choices": {"text": ["a", "b", "c", "d"], "label": ["1", "2", "3", "4"]}, "answerKey": "3"})");
  EXPECT_EQ(ch.gold, 2);
  // openbookqa: the stem alone, and answerKey.lstrip().
  const auto ob = one("openbookqa", R"({"question_stem": "Metal conducts", )" + choices + R"(, "answerKey": " A"})");
  EXPECT_EQ(ob.requests.at(0), (Req{"Metal conducts", " iron"}));
  EXPECT_EQ(ob.gold, 0);
}

TEST(TaskPresets, WinograndeScoresTheSharedSuffix) {
  const auto d = one("winogrande", R"({"sentence": "The cup fell off the table because _ was tipped.", )"
                                   R"("option1": "the cup", "option2": "the table", "answer": "2"})");
  EXPECT_EQ(d.requests, (std::vector<Req>{{"The cup fell off the table because the cup", " was tipped."},
                                          {"The cup fell off the table because the table", " was tipped."}}));
  EXPECT_EQ(d.choices.at(1), "The cup fell off the table because the table");  // acc_norm's lengths
  EXPECT_EQ(d.gold, 1);
}

TEST(TaskPresets, BoolqRteCopa) {
  const auto b = one("boolq", R"({"passage": "Cats are mammals.", "question": "is a cat a mammal", "label": 1})");
  EXPECT_EQ(b.requests.at(1), (Req{"Cats are mammals.\nQuestion: is a cat a mammal?\nAnswer:", " yes"}));
  EXPECT_EQ(b.gold, 1);
  EXPECT_EQ(one("boolq", R"({"passage": "p", "question": "q", "label": true})").gold, 1);
  const auto r = one("rte", R"({"sentence1": "A dog ran.", "sentence2": "An animal ran.", "label": 0})");
  EXPECT_EQ(r.requests, (std::vector<Req>{{"A dog ran.\nQuestion: An animal ran. True or False?\nAnswer:", " True"},
                                          {"A dog ran.\nQuestion: An animal ran. True or False?\nAnswer:", " False"}}));
  EXPECT_EQ(one("rte", R"({"premise": "P.", "hypothesis": "H.", "label": 1})").requests.at(0).first,
            "P.\nQuestion: H. True or False?\nAnswer:");
  // copa: premise without its final character + connector; choices with their first letter
  // lowered and a leading space, then the target delimiter's space: two spaces, as the harness.
  const auto c = one("copa", R"({"premise": " The man broke his toe. ", "choice1": "He dropped a hammer on his foot.",)"
                             R"( "choice2": "His sock had a hole.", "question": "cause", "label": 0})");
  EXPECT_EQ(c.requests.at(0), (Req{"The man broke his toe because", "  he dropped a hammer on his foot."}));
  EXPECT_EQ(c.choices.at(1), " his sock had a hole.");
  EXPECT_EQ(one("copa", R"({"premise": "It rained.", "choice1": "A", "choice2": "B", "question": "effect", "label": 1})")
                .requests.at(1), (Req{"It rained therefore", "  b"}));
  // Gold is choices.index(target): with two equal choices, the first.
  EXPECT_EQ(one("copa", R"({"premise": "P.", "choice1": "Same.", "choice2": "same.", "question": "cause", "label": 1})")
                .gold, 0);
}

TEST(TaskPresets, LambadaAndMc) {
  const auto l = one("lambada", R"({"text": "He looked at the  old clock"})");
  EXPECT_EQ(l.requests, (std::vector<Req>{{"He looked at the  old", " clock"}}));
  EXPECT_EQ(one("lambada", R"({"text": "Alone"})").requests.at(0), (Req{"", " Alone"}));
  const auto m = one("mc", R"({"context": "Two plus two is", "choices": ["four", "five"], "label": 0})");
  EXPECT_EQ(m.requests, (std::vector<Req>{{"Two plus two is", " four"}, {"Two plus two is", " five"}}));
  // Blank lines skipped, CRLF accepted, max_items honoured.
  const char* two = "\n{\"context\": \"a\", \"choices\": [\"b\"], \"label\": 0}\n\n"
                    "{\"context\": \"c\", \"choices\": [\"d\"], \"label\": 0}\r\n";
  EXPECT_EQ(docs_of("mc", two).size(), 2u);
  EXPECT_EQ(docs_of("mc", two, 1).size(), 1u);
}

TEST(TaskPresets, BadItemsNameFileLineAndField) {
  TempDir d;
  auto bad = [&](const std::string& preset, const std::string& text, std::vector<std::string> needles) {
    write_file(d / "t.jsonl", text);
    needles.insert(needles.begin(), "t.jsonl");
    expect_input_error([&] { (void)load_task_docs(task_preset(preset), d / "t.jsonl"); }, needles);
  };
  const std::string ok = R"({"context": "c", "choices": ["a", "b"], "label": 1})";
  bad("mc", ok + "\n" + R"({"context": "c", "choices": ["a", "b"]})", {"line 2", "'label'", "missing"});
  bad("mc", R"({"context": "c", "choices": ["a", "b"], "label": 2})", {"line 1", "'label'", "out of range"});
  bad("mc", R"({"context": "c", "choices": [], "label": 0})", {"line 1", "'choices'", "empty"});
  bad("mc", R"({"context": "c", "choices": ["a", ""], "label": 0})", {"line 1", "'choices[1]'", "empty"});
  bad("mc", R"({"context": 3, "choices": ["a"], "label": 0})", {"line 1", "'context'", "string"});
  bad("mc", ok + "\n" + "{\"context\": \"caf\xE9\", \"choices\": [\"a\"], \"label\": 0}", {"line 2", "UTF-8"});
  bad("mc", R"({"context": "c", "choices": ["a"], "label": 0)", {"line 1", "malformed JSON"});
  bad("mc", "\n\n", {"no items"});
  bad("piqa", R"({"goal": "g", "sol1": "a", "sol2": "b", "label": -1})", {"'label'", "out of range"});
  bad("hellaswag", R"({"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "endings": ["x"], "label": ""})",
      {"'label'", "integer"});
  bad("arc_easy", R"({"question": "q", "choices": {"text": ["a"], "label": ["A"]}, "answerKey": "E"})",
      {"'answerKey'", "\"E\""});
  bad("winogrande", R"({"sentence": "no blank", "option1": "a", "option2": "b", "answer": "1"})", {"'sentence'", "blank"});
  bad("copa", R"({"premise": "p", "choice1": "", "choice2": "b", "question": "cause", "label": 0})", {"'choice1'", "empty"});
  bad("copa", R"({"premise": "p", "choice1": "a", "choice2": "b", "question": "why", "label": 0})", {"'question'"});
  // Raw-field labels take integers (and booleans, as Python would), not strings; HellaSwag's
  // rendered label takes digits but not a leading zero (literal_eval refuses "01").
  bad("piqa", R"({"goal": "g", "sol1": "a", "sol2": "b", "label": "1"})", {"'label'", "integer"});
  bad("hellaswag", R"({"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "endings": ["x", "y"], "label": "01"})",
      {"'label'", "leading zero"});
  // Values past any integer type are quoted as written, and out of range (it said -1).
  bad("hellaswag",
      R"({"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "endings": ["x", "y"], "label": "99999999999999999999"})",
      {"'label' is \"99999999999999999999\", out of range for 2 choices"});
  bad("mc", R"({"context": "c", "choices": ["a", "b"], "label": 18446744073709551615})",
      {"'label' is 18446744073709551615, out of range"});
  bad("boolq", R"({"passage": "p", "question": "q", "answer": true})", {"'label'", "missing"});
  expect_input_error([&] { (void)task_preset("mmlu"); }, {"mmlu", "piqa", "lambada"});
  expect_input_error([&] { (void)load_task_docs(task_preset("mc"), d / "absent.jsonl"); }, {"absent.jsonl"});
}

// The HFLM rules on real tokenizers, stated once more here: the continuation's ids are the tail of
// the whole text's ids, after the context's trailing whitespace moved over.
class Encoding : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const auto dir = shared_dir() / "models" / GetParam();
    if (!fs::exists(dir / "config.json")) GTEST_SKIP() << dir << " not found (set SCALPEL_SHARED_DIR)";
    tok = Tokenizer::from_folder(dir);
  }
  std::unique_ptr<Tokenizer> tok;
};

TEST_P(Encoding, FollowsTheHarness) {
  const HarnessEncoding enc{false, 2048};
  const auto r = encode_request(*tok, "Question: why?\nAnswer: ", "because", enc);
  const Ids ctx = tok->encode_plain("Question: why?\nAnswer:"), whole = tok->encode_plain("Question: why?\nAnswer: because");
  EXPECT_EQ(r.ids, whole);  // no special tokens without add_bos
  EXPECT_EQ(r.continuation, static_cast<std::int64_t>(whole.size() - ctx.size()));
  // add_bos: the tokenizer's own special tokens (OPT's </s>, LLaMA's <s>) in front.
  const auto b = encode_request(*tok, "Question: why?\nAnswer: ", "because", {true, 2048});
  EXPECT_EQ(b.ids, tok->encode("Question: why?\nAnswer: because"));
  EXPECT_EQ(b.continuation, r.continuation);
  // Empty context: the BOS id (OPT: </s> = 2, LLaMA: <s> = 1) conditions the continuation.
  const auto e = encode_request(*tok, "", " hello", enc);
  const Ids hello = tok->encode_plain(" hello");
  EXPECT_EQ(e.ids.front(), tok->bos_token_id());
  EXPECT_EQ(Ids(e.ids.begin() + 1, e.ids.end()), hello);
  EXPECT_EQ(e.continuation, static_cast<std::int64_t>(hello.size()));
  // Longer than the context: cut on the left, the continuation kept whole.
  const auto t = encode_request(*tok, "one two three four five six seven eight", " nine ten", {false, 6});
  EXPECT_EQ(t.ids.size(), 7u);
  const Ids all = tok->encode_plain("one two three four five six seven eight nine ten");
  EXPECT_EQ(t.ids, Ids(all.end() - 7, all.end()));
  expect_input_error([&] { (void)encode_request(*tok, "a", " b c d e f g h i j k l m n o p", {false, 4}); },
                     {"continuation", "context of 4"});
  // Where the harness stops on an assertion, so does scalpel.
  expect_input_error([&] { (void)encode_request(*tok, " \n ", " word", enc); }, {"only whitespace"});
  expect_input_error([&] { (void)encode_request(*tok, "", "", enc); }, {"both empty"});
  // add_bos, but the text already starts with the BOS text: no second BOS (has_bos_prefix).
  const std::string bos = tok->decode({tok->bos_token_id()});
  const auto p = encode_request(*tok, bos + "Hello", " world", {true, 2048});
  EXPECT_EQ(p.ids, tok->encode_plain(bos + "Hello world"));
}

INSTANTIATE_TEST_SUITE_P(SharedModels, Encoding, ::testing::Values("opt-mini", "llama-mini"),
                         [](const auto& info) { return info.param == "opt-mini" ? "OptMini" : "LlamaMini"; });

TEST(TaskScores, AccAccNormAndStandardErrors) {
  // Three items of two choices; lengths 1 and 4 characters ("é" is one character, two bytes).
  const auto docs = docs_of("mc", R"({"context": "c", "choices": ["é", "abcd"], "label": 1})"
                                  "\n"
                                  R"({"context": "c", "choices": ["é", "abcd"], "label": 0})"
                                  "\n"
                                  R"({"context": "c", "choices": ["é", "abcd"], "label": 1})");
  // Item 1: -2 vs -4: acc picks 0 (wrong); per character -2 vs -1: acc_norm picks 1 (right).
  // Item 2: a tie, -3 vs -3: the first choice (right); norm -3 vs -0.75 picks 1 (wrong).
  // Item 3: -5 vs -1: both pick 1 (right).
  const auto s = score_task(task_preset("mc"), docs, {-2, -4, -3, -3, -5, -1}, {0, 0, 0, 0, 0, 0});
  EXPECT_EQ(s.items, 3);
  EXPECT_DOUBLE_EQ(s.acc, 2.0 / 3);
  EXPECT_DOUBLE_EQ(s.acc_norm, 2.0 / 3);
  // sample standard deviation of {0, 1, 1} over sqrt(3): sqrt(1/3) / sqrt(3) = 1/3.
  EXPECT_NEAR(s.acc_stderr, 1.0 / 3, 1e-15);
  EXPECT_TRUE(std::isnan(s.ppl));
}

TEST(TaskScores, LambadaPerplexityAndGreedyAccuracy) {
  const auto docs = docs_of("lambada", "{\"text\": \"a b\"}\n{\"text\": \"c d\"}\n");
  const auto s = score_task(task_preset("lambada"), docs, {-1.0, -3.0}, {1, 0});
  EXPECT_DOUBLE_EQ(s.ppl, std::exp(2.0));
  EXPECT_DOUBLE_EQ(s.acc, 0.5);
  EXPECT_NEAR(s.acc_stderr, 0.5, 1e-15);
  // lm-eval's bootstrap_stderr(perplexity, ll, 100000), run by CPython 3.11 with the harness's
  // algorithm (random.Random(i).choices per chunk of 1000) on the same log-likelihoods:
  // 6.464890884236977. The draws are the same; Python 3.11 sums the 100,000 resamples naively and
  // scalpel as 3.12+ does (compensated), which moves the result by up to ~1e5 * 2^-53 relative.
  EXPECT_NEAR(s.ppl_stderr, 6.464890884236977, 1e-10);
  const auto five = docs_of("lambada", "{\"text\": \"a b\"}\n{\"text\": \"a b\"}\n{\"text\": \"a b\"}\n"
                                       "{\"text\": \"a b\"}\n{\"text\": \"a b\"}\n");
  const auto f = score_task(task_preset("lambada"), five, {-1.5, -2.25, -0.5, -3.0, -1.0}, {0, 0, 0, 0, 0});
  EXPECT_NEAR(f.ppl, 5.206979827179849, 1e-12);
  EXPECT_NEAR(f.ppl_stderr, 2.3538103653187283, 1e-10);
  const auto single = score_task(task_preset("lambada"), {docs[0]}, {-1.0}, {1});
  EXPECT_TRUE(std::isnan(single.acc_stderr));
}

}  // namespace
}  // namespace scalpel::text
