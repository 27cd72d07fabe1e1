// Rank-count invariance of perplexity: the windows split over the ranks of MPI_COMM_WORLD give the
// same perplexity as one process walking every window (SelfComm), to 1e-6 relative (in practice
// bitwise: per-window sums are combined in window order). Zero-shot tasks: every request's
// log-likelihood bitwise equal (the batches, not the ranks, decide each forward pass).
// Registered at 1, 2 and 4 ranks.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "scalpel/app/commands.hpp"
#include "scalpel/backend/backend.hpp"
#include "scalpel/io/hf_checkpoint.hpp"
#include "scalpel/text/eval_text.hpp"
#include "scalpel/text/tokenizer.hpp"

#include "../common/mpi_test_main.hpp"

namespace scalpel::test {
namespace {

// A shared model on a 1-thread cpu backend (at 4 ranks the 2 cores are already oversubscribed).
struct Loaded {
  std::shared_ptr<const io::HfCheckpoint> ckpt;
  model::ModelSpec spec;
  std::unique_ptr<text::Tokenizer> tok;
  std::unique_ptr<Backend> be;
  std::unique_ptr<model::Model> m;
};

std::unique_ptr<Loaded> load(const std::string& name) {
  const auto folder = std::filesystem::path(SCALPEL_SHARED_DIR) / "models" / name;
  if (!std::filesystem::exists(folder / "config.json")) return nullptr;
  auto l = std::make_unique<Loaded>();
  l->ckpt = std::make_shared<const io::HfCheckpoint>(folder);
  l->spec = model::ModelSpec::from_config(l->ckpt->config(), name);
  l->tok = text::Tokenizer::from_folder(folder);
  l->be = make_cpu_backend(1);
  l->m = std::make_unique<model::Model>(l->spec, app::checkpoint_source(l->ckpt), *l->be);
  return l;
}

void check_model(const std::string& name) {
  const std::filesystem::path shared = SCALPEL_SHARED_DIR;
  const auto l = load(name);
  if (!l) GTEST_SKIP() << name << " not present: ../shared/models is needed for this test";
  auto& tok = l->tok;
  auto& m = *l->m;
  const auto ids = tok->encode(text::load_eval_text("text", (shared / "data/corpus/heldout.txt").string()));
  const std::int64_t seqlen = 128, windows = 12;  // 12 windows: uneven splits at 4 ranks... and at 5+
  const auto dist_r = app::evaluate_ids(m, ids, seqlen, 2, windows, *g_world, name, 0);
  dist::SelfComm self;
  const auto one = app::evaluate_ids(m, ids, seqlen, 1, windows, self, name, 0);
  EXPECT_EQ(dist_r.windows, windows);
  EXPECT_NEAR(dist_r.ppl, one.ppl, 1e-6 * one.ppl) << "ranks " << g_world->size();
  EXPECT_GT(one.ppl, 1.0);
  // Every rank holds the same result.
  double v[1] = {dist_r.ppl}, mx[1] = {dist_r.ppl};
  g_world->allreduce_max(mx);
  EXPECT_EQ(v[0], mx[0]);
}

void check_tasks(const std::string& name) {
  const std::filesystem::path source = SCALPEL_SOURCE_DIR;
  const auto l = load(name);
  if (!l) GTEST_SKIP() << name << " not present: ../shared/models is needed for this test";
  auto& tok = l->tok;
  auto& m = *l->m;
  const auto& spec = l->spec;
  dist::SelfComm self;
  const std::vector<app::EvalTask> tasks{
      {"everyday", "mc", (source / "tests/data/tasks/everyday_mc.jsonl").string()},
      {"lambada", "lambada", (source / "data/tasks/brown_lambada.jsonl").string()}};
  for (const auto& task : tasks) {
    // 3 requests a batch: 27 or 40 requests make uneven blocks at 2 and 4 ranks.
    const app::TaskOptions opt{3, 20, false, spec.max_positions, 0};
    const auto dist_r = app::evaluate_task(m, g_world->rank() == 0 ? tok.get() : nullptr, task, opt, *g_world);
    const auto one = app::evaluate_task(m, tok.get(), task, opt, self);
    EXPECT_EQ(dist_r.requests, one.requests);
    if (g_world->rank() != 0) continue;
    EXPECT_EQ(dist_r.loglik, one.loglik) << task.name << " at " << g_world->size() << " ranks";
    auto same = [](double a, double b) { return std::isnan(a) ? std::isnan(b) : a == b; };
    EXPECT_TRUE(same(dist_r.scores.acc, one.scores.acc));
    EXPECT_TRUE(same(dist_r.scores.acc_norm, one.scores.acc_norm));
    EXPECT_TRUE(same(dist_r.scores.ppl, one.scores.ppl));
    EXPECT_EQ(dist_r.scores.items, 20);
  }
}

TEST(EvalMpi, OptMiniPerplexityIsRankCountInvariant) { check_model("opt-mini"); }
TEST(EvalMpi, OptMiniTasksAreRankCountInvariant) { check_tasks("opt-mini"); }
TEST(EvalMpi, LlamaMiniTasksAreRankCountInvariant) { check_tasks("llama-mini"); }
TEST(EvalMpi, LlamaMiniPerplexityIsRankCountInvariant) { check_model("llama-mini"); }

TEST(EvalMpi, BlockRangeCoversEveryItemOnce) {
  for (int parts = 1; parts <= 5; ++parts)
    for (std::int64_t n = 0; n < 13; ++n) {
      std::int64_t next = 0;
      for (int p = 0; p < parts; ++p) {
        const auto r = dist::block_range(n, parts, p);
        EXPECT_EQ(r.begin, next);
        EXPECT_LE(r.end - r.begin, n / parts + 1);
        next = r.end;
      }
      EXPECT_EQ(next, n);
    }
}

}  // namespace
}  // namespace scalpel::test
