// The pieces of a distributed prune, at every rank count it is registered with (1, 2, 3, 4): exact
// sums and exact statistics are bitwise the same however their inputs are spread over ranks; the
// distributed selection gives every rank exactly its rows of the whole-matrix mask; and a row-split
// SparseGPT / magnitude prune equals the one-process prune of the whole matrix, bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "../common/reference.hpp"
#include "scalpel/prune/exact_sum.hpp"
#include "scalpel/prune/pruner.hpp"
#include "scalpel/prune/select.hpp"
#include "scalpel/prune/stats.hpp"

#include "../common/mpi_test_main.hpp"

namespace scalpel::test {
namespace {

// Values of very different magnitudes and signs, so that float sums depend on the order.
std::vector<float> wild_values(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::uniform_int_distribution<int> e(-30, 30);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(std::ldexp(u(g), e(g)));
  return v;
}

TEST(DistPieces, ExactSumIsTheSameAtAnySplitAndOrder) {
  const std::size_t n = 1000;
  const int chunks = 23;
  std::vector<std::vector<float>> data;
  for (int c = 0; c < chunks; ++c) data.push_back(wild_values(n, 100 + static_cast<std::uint64_t>(c)));
  // One process, every chunk, in reverse order.
  prune::ExactSum all(n);
  for (int c = chunks - 1; c >= 0; --c) all.add(data[static_cast<std::size_t>(c)].data());
  std::vector<float> want(n);
  all.result(want.data(), 1.0);
  // This rank's chunks (round robin), summed over the ranks.
  prune::ExactSum mine(n);
  for (int c = g_world->rank(); c < chunks; c += g_world->size()) mine.add(data[static_cast<std::size_t>(c)].data());
  mine.allreduce(*g_world);
  std::vector<float> got(n);
  mine.result(got.data(), 1.0);
  EXPECT_EQ(std::memcmp(got.data(), want.data(), n * sizeof(float)), 0);
  // And close to the float64 sum (the exact sum rounded once; the window keeps 64 bits below the
  // largest value, so only float rounding of the result remains).
  for (std::size_t i = 0; i < n; ++i) {
    long double s = 0;
    for (const auto& d : data) s += d[i];
    EXPECT_NEAR(got[i], static_cast<double>(s), 1e-6 * std::fabs(static_cast<double>(s)) + 1e-30) << i;
  }
}

TEST(DistPieces, ExactStatisticsAreTheSameAtAnyRankCount) {
  auto be = make_cpu_backend(1);
  const std::int64_t cols = 48, seqlen = 16, chunks = 7, per_chunk = 2;
  const std::int64_t total = chunks * per_chunk;
  auto chunk = [&](std::int64_t c) {
    return be->upload(to_tensor(random_vec(static_cast<std::size_t>(per_chunk * seqlen * cols), 500 + c),
                                {per_chunk * seqlen, cols}));
  };
  prune::StatsKinds kinds{true, true};
  prune::InputStats ref(*be, cols, kinds, "ref", prune::Accumulation::exact, total);
  for (std::int64_t c = 0; c < chunks; ++c) ref.add_batch(chunk(c), per_chunk);
  dist::SelfComm self;
  ref.reduce(self);
  prune::InputStats mine(*be, cols, kinds, "mine", prune::Accumulation::exact, total);
  const auto r = dist::block_range(chunks, g_world->size(), g_world->rank());
  for (std::int64_t c = r.end - 1; c >= r.begin; --c) mine.add_batch(chunk(c), per_chunk);
  mine.reduce(*g_world);
  EXPECT_EQ(mine.nsamples(), total);
  const Tensor a = be->download(ref.hessian()), b = be->download(mine.hessian());
  EXPECT_EQ(std::memcmp(a.raw(), b.raw(), static_cast<std::size_t>(a.nbytes())), 0) << "Hessian";
  const Tensor na = be->download(ref.col_norms()), nb = be->download(mine.col_norms());
  EXPECT_EQ(std::memcmp(na.raw(), nb.raw(), static_cast<std::size_t>(na.nbytes())), 0) << "column norms";
  // The running (reference) statistics agree to float accuracy.
  prune::InputStats run(*be, cols, kinds, "running");
  for (std::int64_t c = 0; c < chunks; ++c) run.add_batch(chunk(c), per_chunk);
  EXPECT_REL_NEAR(to_vec(be->download(run.hessian())), to_vec(a), Tol::f32);
  // Summed (fast) statistics agree to float reassociation.
  prune::InputStats fast(*be, cols, kinds, "fast", prune::Accumulation::sum, total);
  for (std::int64_t c = r.begin; c < r.end; ++c) fast.add_batch(chunk(c), per_chunk);
  fast.reduce(*g_world);
  EXPECT_REL_NEAR(to_vec(be->download(fast.hessian())), to_vec(a), Tol::f32);
}

TEST(DistPieces, SelectionGivesEachRankItsRowsOfTheWholeMask) {
  auto be = make_cpu_backend(1);
  const std::int64_t rows = 37, cols = 29;
  // Scores with many exact ties (a few distinct values) and some zeros.
  std::vector<double> s(static_cast<std::size_t>(rows * cols));
  std::mt19937 g(7);
  for (auto& x : s) x = static_cast<double>(g() % 9) * 0.25;
  const Tensor all = be->upload(to_tensor(s, {rows, cols}));
  const auto r = dist::block_range(rows, g_world->size(), g_world->rank());
  Tensor mine = be->empty({r.end - r.begin, cols});
  be->copy(all.slice_rows(r.begin, r.end), mine);
  for (const std::int64_t k : {std::int64_t{0}, std::int64_t{1}, std::int64_t{200}, std::int64_t{537},
                               rows * cols - 1, rows * cols}) {
    Tensor want = be->empty({rows, cols}, DType::u8), got = be->empty({r.end - r.begin, cols}, DType::u8);
    be->mask_threshold(all, be->kth_threshold(all, k), want, 0);
    be->mask_threshold(mine, prune::select_over(*g_world, *be, mine, k), got, 0);
    const Tensor w = want.slice_rows(r.begin, r.end);
    EXPECT_EQ(std::memcmp(got.raw(), w.raw(), static_cast<std::size_t>(got.nbytes())), 0) << "k " << k;
  }
}

TEST(DistPieces, RowSplitPruneEqualsWholeMatrixPrune) {
  auto be = make_cpu_backend(1);
  const std::int64_t rows = 90, cols = 160, tokens = 640;
  const Tensor x = be->upload(to_tensor(random_vec(static_cast<std::size_t>(tokens * cols), 31), {tokens, cols}));
  const Tensor w = be->upload(to_tensor(random_vec(static_cast<std::size_t>(rows * cols), 32), {rows, cols}));
  prune::InputStats stats(*be, cols, {true, false}, "x", prune::Accumulation::sum, 8);
  stats.add_batch(x, 8);
  dist::SelfComm self;
  stats.reduce(self);
  const auto r = dist::block_range(rows, g_world->size(), g_world->rank());
  Tensor slice = be->empty({r.end - r.begin, cols});
  be->copy(w.slice_rows(r.begin, r.end), slice);
  for (const auto& [method, pattern] : {std::pair{prune::Method::sparsegpt, "unstructured"},
                                        std::pair{prune::Method::sparsegpt, "2:4"},
                                        std::pair{prune::Method::magnitude, "unstructured"}}) {
    prune::PruneOptions o;
    o.method = method;
    o.pattern = prune::Pattern::parse(pattern, 0.6, "pattern");
    o.blocksize = 64;
    const auto whole = prune::prune_linear(*be, w, &stats, o);
    o.total_rows = rows;
    o.row_offset = r.begin;  // where the slice lies: its rows are computed in the whole matrix's calls
    o.select = prune::group_select(*g_world);
    const auto part = prune::prune_linear(*be, slice, &stats, o);
    const Tensor ww = whole.weight.slice_rows(r.begin, r.end), wm = whole.mask.slice_rows(r.begin, r.end);
    EXPECT_EQ(std::memcmp(part.weight.raw(), ww.raw(), static_cast<std::size_t>(ww.nbytes())), 0)
        << prune::method_name(method) << " " << pattern << ": weights";
    EXPECT_EQ(std::memcmp(part.mask.raw(), wm.raw(), static_cast<std::size_t>(wm.nbytes())), 0)
        << prune::method_name(method) << " " << pattern << ": mask";
    std::int64_t pruned = part.pruned;
    g_world->allreduce_sum(std::span<std::int64_t>(&pruned, 1));
    EXPECT_EQ(pruned, whole.pruned);
  }
}

}  // namespace
}  // namespace scalpel::test
