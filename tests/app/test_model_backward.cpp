// Model::backward on the shared mini models (OPT and LLaMA) against an independent float64
// computation: the window losses against the float64 forward read from model.safetensors, and the
// gradient at every linear's output of the first and last layer against float64 central
// differences of that forward's loss along random directions (<g, v> = dL(y + εv)/dε).
#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "../common/backends.hpp"
#include "../common/finite_diff.hpp"
#include "../common/reference_model.hpp"
#include "scalpel/app/commands.hpp"
#include "scalpel/io/hf_checkpoint.hpp"

namespace scalpel::test {
namespace {

namespace fs = std::filesystem;

class ModelBackward : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {
 protected:
  void SetUp() override {
    SCALPEL_BACKEND_OR_SKIP(be, std::get<0>(GetParam()), 2);
    folder = fs::path(SCALPEL_SHARED_DIR) / "models" / std::get<1>(GetParam());
    if (!fs::exists(folder / "config.json")) GTEST_SKIP() << folder << " not found (set SCALPEL_SHARED_DIR)";
  }
  std::unique_ptr<Backend> be;
  fs::path folder;
};

TEST_P(ModelBackward, LossesAndLinearGradientsMatchFloat64) {
  auto ckpt = std::make_shared<const io::HfCheckpoint>(folder);
  const auto spec = model::ModelSpec::from_config(ckpt->config(), "config.json");
  model::Model m(spec, app::checkpoint_source(ckpt), *be);
  const auto ref = load_ref_model(folder);
  const std::int64_t B = 2, T = 20;
  std::mt19937 rng(7);
  std::vector<std::int32_t> ids(static_cast<std::size_t>(B * T));
  for (auto& t : ids) t = static_cast<std::int32_t>(rng() % static_cast<std::uint32_t>(spec.vocab_size));

  const std::int64_t last = spec.layers - 1;
  std::map<std::pair<std::int64_t, std::string>, Vec> grads;
  model::BackwardTaps taps;
  taps.grad = [&](std::int64_t layer, const std::string& name, const Tensor& g) {
    if (layer == 0 || layer == last) grads[{layer, name}] = to_vec(be->download(g));
  };
  const auto losses = m.backward(ids, B, T, taps);
  ASSERT_EQ(losses.size(), 2u);
  // Keeping every layer's cache instead of recomputing it gives the same bits.
  const auto recomputed = grads;
  grads.clear();
  EXPECT_EQ(m.backward(ids, B, T, taps, /*keep_caches=*/true), losses);
  EXPECT_EQ(grads, recomputed);

  // Loss: fp32 forward against float64, as the task test's tolerance (2e-4 relative on a mean NLL).
  for (std::int64_t b = 0; b < B; ++b) {
    const std::vector<std::int32_t> win(ids.begin() + b * T, ids.begin() + (b + 1) * T);
    EXPECT_NEAR(losses[b], ref_window_loss(ref, win), 2e-4 * ref_window_loss(ref, win));
  }
  // Gradients: per (layer, linear, window) the directional derivative along a random v. The list
  // of them is compared as one vector at 1e-3 relative: a whole fp32 forward and backward (4 layers, the
  // 8192-wide head) rounds each at ~1e-5 to 1e-4; a missing or wrong term in any path is O(1).
  Vec got, want;
  std::uint64_t seed = 100;
  for (const std::int64_t layer : {std::int64_t{0}, last})
    for (const auto& l : spec.linears())
      for (std::int64_t b = 0; b < B; ++b) {
        const auto& g = grads.at({layer, l.name});
        const Vec v = random_vec(static_cast<std::size_t>(T * l.out), seed++);
        double gv = 0;
        for (std::int64_t i = 0; i < T * l.out; ++i) gv += g[b * T * l.out + i] * v[i];
        const std::vector<std::int32_t> win(ids.begin() + b * T, ids.begin() + (b + 1) * T);
        const double fd = fd_directional([&](double eps) {
          Vec off = v;
          for (auto& e : off) e *= eps;
          const OutputOffsets o{{l.name, off}};
          return ref_window_loss(ref, win, layer, &o);
        });
        got.push_back(gv);
        want.push_back(fd);
      }
  EXPECT_REL_NEAR(got, want, 1e-3);
  for (std::size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 2e-3 * std::abs(want[i]) + 1e-7) << i;
}

INSTANTIATE_TEST_SUITE_P(SharedModels, ModelBackward,
                         ::testing::Combine(::testing::ValuesIn(test_backends()),
                                            ::testing::Values("opt-mini", "llama-mini")));

}  // namespace
}  // namespace scalpel::test
