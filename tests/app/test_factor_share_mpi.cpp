// Shared SparseGPT factors over the ranks of MPI_COMM_WORLD (registered at 1, 2 and 4 ranks): the
// greedy owner assignment, every rank receiving bitwise the factor it would have made itself, and a
// factorisation that fails on its owner failing on every rank with the owner's message and error
// kind (detail::owned_work, which LLM Surgeon's scores and updates use too); and the input checks
// every rank makes alike (detail::on_every_rank), whose error every rank raises once.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "../../src/app/factor_share.hpp"
#include "../../src/app/root_work.hpp"
#include "../common/mpi_test_main.hpp"
#include "../common/reference.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/prune/split_factor.hpp"

namespace scalpel::test {
namespace {

// An SPD Hessian of width d.
Tensor spd(std::int64_t d, unsigned seed) { return to_tensor(random_spd(d, seed), {d, d}); }

// SPD Hessians of the given widths (seeds seed, seed + 1, ...) and a factor job for each, named
// "job i"; the jobs point into `hessians`, which must outlive them.
std::vector<app::FactorJob> spd_jobs(const std::vector<std::int64_t>& widths, unsigned seed,
                                     std::vector<Tensor>& hessians) {
  hessians.clear();
  for (std::size_t i = 0; i < widths.size(); ++i) hessians.push_back(spd(widths[i], seed + static_cast<unsigned>(i)));
  std::vector<app::FactorJob> jobs;
  for (std::size_t i = 0; i < widths.size(); ++i)
    jobs.push_back({static_cast<int>(i), "job " + std::to_string(i), &hessians[i]});
  return jobs;
}

TEST(FactorOwners, LargestFirstToTheLeastLoadedRank) {
  const std::vector<std::int64_t> opt{256, 256, 256, 1024};  // q/k/v, out_proj, fc1, fc2 of opt-mini
  EXPECT_EQ(app::factor_owners(opt, 1), (std::vector<int>{0, 0, 0, 0}));
  EXPECT_EQ(app::factor_owners(opt, 2), (std::vector<int>{1, 1, 1, 0}));
  EXPECT_EQ(app::factor_owners(opt, 4), (std::vector<int>{1, 2, 3, 0}));
  EXPECT_EQ(app::factor_owners({100, 100}, 2), (std::vector<int>{0, 1}));  // ties: the lower rank first
}

TEST(SharedFactors, EveryRankGetsTheFactorItWouldHaveMade) {
  auto be = make_cpu_backend(1);
  const std::vector<std::int64_t> widths{48, 96, 48, 160};
  std::vector<Tensor> hs;
  const auto jobs = spd_jobs(widths, 10, hs);
  for (const bool isc : {false, true}) {
    app::FactorSettings s;
    s.isc = isc;
    app::SharedFactors shared(*be, *g_world, jobs, s);
    for (std::size_t i = 0; i < widths.size(); ++i) {
      const auto own = prune::sparsegpt_factor(*be, hs[i], nullptr, s.percdamp, s.max_tries, "own", isc);
      const auto& got = shared.get(static_cast<int>(i));
      ASSERT_EQ(got.hinv.numel(), own.hinv.numel());
      EXPECT_EQ(std::memcmp(got.hinv.raw(), own.hinv.raw(), own.hinv.nbytes()), 0) << "job " << i;
      if (isc) {
        EXPECT_EQ(std::memcmp(got.hdiag.raw(), own.hdiag.raw(), own.hdiag.nbytes()), 0) << "job " << i;
      }
      EXPECT_EQ(got.damping, own.damping);
      EXPECT_EQ(got.tries, own.tries);
    }
    const auto rec = shared.record();
    EXPECT_EQ(rec.at("owners").get<std::vector<int>>(), app::factor_owners(widths, g_world->size()));
  }
}

// Factors at least split_width wide are made by all ranks together, panel by panel: every rank
// gets bitwise the factor one rank makes alone (so the prune does not depend on the rank count),
// and the narrower ones still go whole to their owners. Tile 32: 160 and 130 wide are 5 panels
// (the last of 130 two rows), spread unevenly over 2 and 4 ranks.
TEST(SharedFactors, WideFactorsAreMadeByAllRanksWithTheOneRankBits) {
  auto be = make_cpu_backend(1);
  const std::vector<std::int64_t> widths{48, 160, 96, 130};
  std::vector<Tensor> hs;
  const auto jobs = spd_jobs(widths, 30, hs);
  app::FactorSettings s;
  s.split_width = 100;
  s.tile = 32;
  app::SharedFactors shared(*be, *g_world, jobs, s);
  dist::SelfComm self;
  const auto alone = [&](Tensor& h) { return prune::shared_inverse_cholesky_upper(*be, h, s.tile, self); };
  for (std::size_t i = 0; i < widths.size(); ++i) {
    const bool split = widths[i] >= s.split_width;
    const auto own = prune::sparsegpt_factor(*be, hs[i], nullptr, s.percdamp, s.max_tries, "own", false,
                                             split ? std::function<bool(Tensor&)>(alone) : nullptr);
    const auto& got = shared.get(static_cast<int>(i));
    ASSERT_EQ(got.hinv.numel(), own.hinv.numel());
    EXPECT_EQ(std::memcmp(got.hinv.raw(), own.hinv.raw(), own.hinv.nbytes()), 0) << "job " << i;
    EXPECT_EQ(got.damping, own.damping);
  }
  const auto owners = shared.record().at("owners").get<std::vector<int>>();
  const auto whole = app::factor_owners({48, 96}, g_world->size());
  EXPECT_EQ(owners, (std::vector<int>{whole[0], -1, whole[1], -1}));
}

// A pivot that no damping fixes, in panel 2 of a shared factor (owned by rank 1 at 2 ranks, by
// rank 2 at 4): every rank stops with the same error, none waits for a panel.
TEST(SharedFactors, AnIndefiniteSharedFactorFailsEveryRankAlike) {
  auto be = make_cpu_backend(1);
  Tensor h = spd(128, 40);
  h.f32()[40 * 128 + 40] = -1000.0f;  // row 40 is the flipped matrix's row 87: panel 2 of 4 (tile 32)
  std::vector<app::FactorJob> jobs{{0, "layer 9 fc2", &h}};
  app::FactorSettings s;
  s.split_width = 100;
  s.tile = 32;
  s.max_tries = 2;
  try {
    app::SharedFactors shared(*be, *g_world, jobs, s);
    shared.get(0);
    FAIL() << "no error on rank " << g_world->rank();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("layer 9 fc2: the Hessian could not be factorised after 2 tries"), std::string::npos) << msg;
  }
}

TEST(SharedFactors, AFailureOnItsOwnerFailsEveryRank) {
  auto be = make_cpu_backend(1);
  Tensor good = spd(32, 1), bad = spd(64, 2);
  bad.f32()[5] = std::numeric_limits<float>::quiet_NaN();
  // The bad (wider) job goes to rank 0, the good one to rank 1 when there are two ranks or more.
  std::vector<app::FactorJob> jobs{{0, "layer 7 fc1", &good}, {1, "layer 7 fc2", &bad}};
  try {
    app::SharedFactors shared(*be, *g_world, jobs, {});
    shared.get(0);
    shared.get(1);
    FAIL() << "no error on rank " << g_world->rank();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("layer 7 fc2"), std::string::npos) << msg;
    EXPECT_NE(msg.find("NaN or infinite"), std::string::npos) << msg;
    if (g_world->size() > 1) {
      EXPECT_NE(msg.find("factorised on data rank 0"), std::string::npos) << msg;
    }
    // The owner's error kind (a non-finite Hessian is an input error, exit 2) at any rank count.
    EXPECT_EQ(e.kind(), ErrorKind::input) << msg;
  }
}

TEST(OnEveryRank, ReturnsTheResultWhenEveryRankPasses) {
  const int r = app::detail::on_every_rank(*g_world, [] { return g_world->rank() * 10; });
  EXPECT_EQ(r, g_world->rank() * 10);
  int calls = 0;
  app::detail::on_every_rank(*g_world, [&] { ++calls; });
  EXPECT_EQ(calls, 1);
}

TEST(OnEveryRank, AnErrorEveryRankMeetsIsOneSharedErrorWithRankZerosMessage) {
  try {
    app::detail::on_every_rank(*g_world, [] {
      SCALPEL_INPUT_ERROR("config: 'prune.sparsity' is wrong on rank {}", g_world->rank());
    });
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {  // one rank: the check's own Error, printed by its only rank
    EXPECT_EQ(e.kind(), ErrorKind::input);
    const auto* shared = dynamic_cast<const SharedError*>(&e);
    ASSERT_EQ(shared != nullptr, g_world->size() > 1);
    // main prints it once, on rank 0, with no MPI_Abort.
    if (shared) {
      EXPECT_EQ(shared->ranks(), g_world->size());
    }
    EXPECT_STREQ(e.what(), "config: 'prune.sparsity' is wrong on rank 0");  // the lowest rank's, no rank named
  }
}

TEST(OnEveryRank, AnErrorOnSomeRanksNamesTheLowestAndKeepsItsKind) {
  const int size = g_world->size();
  if (size == 1) GTEST_SKIP() << "needs 2 or more ranks (registered at 2 and 4)";
  try {
    app::detail::on_every_rank(*g_world, [&] {
      if (g_world->rank() >= size / 2) SCALPEL_RUNTIME_ERROR("cannot read shard on rank {}", g_world->rank());
      return 1;
    });
    ADD_FAILURE() << "no error";
  } catch (const SharedError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::runtime);
    EXPECT_EQ(std::string(e.what()), fmt::format("cannot read shard on rank {0} (on rank {0})", size / 2));
  }
  // Every rank is still in step: a collective after the error completes.
  std::int64_t one = 1;
  g_world->allreduce_sum(std::span(&one, 1));
  EXPECT_EQ(one, size);
}

}  // namespace
}  // namespace scalpel::test
