// Rank-count invariance of perplexity: the windows split over the ranks of MPI_COMM_WORLD give the
// same perplexity as one process walking every window (SelfComm), to 1e-6 relative (in practice
// bitwise: per-window sums are combined in window order). Registered at 1, 2 and 4 ranks.
#include <gtest/gtest.h>

#include <filesystem>

#include "scalpel/app/commands.hpp"
#include "scalpel/backend/backend.hpp"
#include "scalpel/io/hf_checkpoint.hpp"
#include "scalpel/text/eval_text.hpp"
#include "scalpel/text/tokenizer.hpp"

#include "../common/mpi_test_main.hpp"

namespace scalpel::test {
namespace {

void check_model(const std::string& name) {
  const std::filesystem::path shared = SCALPEL_SHARED_DIR;
  const auto folder = shared / "models" / name;
  if (!std::filesystem::exists(folder / "config.json"))
    GTEST_SKIP() << folder << " not present: ../shared/models is needed for this test";
  auto ckpt = std::make_shared<const io::HfCheckpoint>(folder);
  const auto spec = model::ModelSpec::from_config(ckpt->config(), name);
  auto tok = text::Tokenizer::from_folder(folder);
  const auto ids = tok->encode(text::load_eval_text("text", (shared / "data/corpus/heldout.txt").string()));
  // 1 thread per rank: at 4 ranks the 2 cores are already oversubscribed.
  auto be = make_cpu_backend(1);
  model::Model m(spec, app::checkpoint_source(ckpt), *be);
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

TEST(EvalMpi, OptMiniPerplexityIsRankCountInvariant) { check_model("opt-mini"); }
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
