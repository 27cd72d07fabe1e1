// The decoder layer's backward pass against float64 central differences of the float64 layer
// forward (reference_model.hpp) on random weights, for OPT pre- and post-LayerNorm and LLaMA with
// GQA and RoPE: the gradient at the layer's input and at every linear's output, for a random
// cotangent r of the layer's output. Tolerance Tol::f32_deep (1e-4 relative): the fp32 backward
// runs a dozen kernels in a row (~1e-6 each), the finite differences carry ~1e-10.
#include <gtest/gtest.h>

#include <map>

#include "../common/backends.hpp"
#include "../common/finite_diff.hpp"
#include "../common/reference_model.hpp"
#include "scalpel/model/model.hpp"
#include "small_layers.hpp"

namespace scalpel::test {
namespace {

using model::Family;

class DecoderBackward : public ::testing::TestWithParam<std::tuple<std::string, int>> {
 protected:
  void SetUp() override { SCALPEL_BACKEND_OR_SKIP(be, std::get<0>(GetParam()), 2); }
  std::unique_ptr<Backend> be;
};

TEST_P(DecoderBackward, InputAndEveryLinearOutputMatchFiniteDifferences) {
  const int which = std::get<1>(GetParam());
  const auto s = small_spec(which == 2 ? Family::llama : Family::opt, which != 1);
  const std::int64_t B = 2, T = 5, n = B * T, d = s.hidden;
  const auto ref = random_layer(s, 300);
  model::LayerWeights w;
  for (const auto& [name, v] : ref.w) {
    Shape shape{static_cast<std::int64_t>(v.size())};
    for (const auto& l : s.linears())
      if (name == l.name + ".weight") shape = {l.out, l.in};
    w.tensors[name] = be->upload(to_tensor(v, shape));
  }
  const Vec x0 = random_vec(static_cast<std::size_t>(n * d), 31), r = random_vec(static_cast<std::size_t>(n * d), 32);
  const auto rope = model::make_rope_tables(*be, s, T);
  model::LayerCache cache;
  Tensor x = be->upload(to_tensor(x0, {n, d}));
  model::decoder_layer_forward(*be, s, w, x, B, T, &rope, nullptr, &cache);
  std::map<std::string, Vec> grads;
  model::GradTap tap = [&](const std::string& name, const Tensor& g) {
    EXPECT_FALSE(grads.count(name)) << name << " reported twice";
    grads[name] = to_vec(be->download(g));
  };
  Tensor dx = be->upload(to_tensor(r, {n, d}));
  model::decoder_layer_backward(*be, s, w, cache, dx, B, T, &rope, &tap);

  const auto f = [&](const Vec& in) { return ref_forward(s, ref, in, B, T); };
  EXPECT_REL_NEAR(to_vec(be->download(dx)), fd_gradient(f, x0, r), Tol::f32_deep);
  ASSERT_EQ(grads.size(), s.linears().size());
  for (const auto& l : s.linears()) {
    SCOPED_TRACE(l.name);
    const auto g = [&](const Vec& off) {
      const OutputOffsets o{{l.name, off}};
      return ref_forward(s, ref, x0, B, T, &o);
    };
    EXPECT_REL_NEAR(grads.at(l.name), fd_gradient(g, Vec(static_cast<std::size_t>(n * l.out), 0.0), r),
                    Tol::f32_deep);
  }
}

std::string case_name(const ::testing::TestParamInfo<std::tuple<std::string, int>>& info) {
  static const char* const names[] = {"opt_pre_norm", "opt_post_norm", "llama_gqa"};
  return std::get<0>(info.param) + "_" + names[std::get<1>(info.param)];
}

INSTANTIATE_TEST_SUITE_P(Layers, DecoderBackward,
                         ::testing::Combine(::testing::ValuesIn(test_backends()), ::testing::Values(0, 1, 2)), case_name);

}  // namespace
}  // namespace scalpel::test
