// Model::prefetch: a layer read (and, on a GPU, copied to the device) on the background thread gives
// the same weights as one read when asked for, on every backend and forward dtype, a read error there surfaces (naming the tensor) when the layer is asked for, and a
// prefetched layer replaced before use is dropped.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <tuple>

#include "../common/backends.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/model/model.hpp"

namespace scalpel::test {
namespace {

// A tiny OPT (2 layers, hidden 8, ffn 16) whose tensors are filled from their names; one name
// can be made to fail, and reads are counted.
class SyntheticSource final : public model::WeightSource {
 public:
  explicit SyntheticSource(const model::ModelSpec& spec) {
    const auto add = [&](const std::string& n, Shape s) { shapes_[n] = std::move(s); };
    add(spec.embed_tokens_name(), {spec.vocab_size, spec.hidden});
    add("model.decoder.embed_positions.weight", {spec.max_positions + spec.position_offset, spec.hidden});
    add(spec.final_norm_prefix() + ".weight", {spec.hidden});
    add(spec.final_norm_prefix() + ".bias", {spec.hidden});
    for (std::int64_t l = 0; l < spec.layers; ++l) {
      const auto p = spec.layer_prefix(l);
      for (const auto& lin : spec.linears()) {
        add(p + lin.name + ".weight", {lin.out, lin.in});
        add(p + lin.name + ".bias", {lin.out});
      }
      for (const auto& n : spec.layer_norm_tensors()) add(p + n, {spec.hidden});
    }
  }
  bool has(const std::string& name) const override { return shapes_.count(name) > 0; }
  Tensor load(const std::string& name) const override {
    ++reads;
    if (name == failing) {
      failed = true;
      SCALPEL_INPUT_ERROR("synthetic: cannot read '{}'", name);
    }
    Tensor t = Tensor::empty(shapes_.at(name));
    const auto h = std::hash<std::string>{}(name);
    for (std::int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = static_cast<float>((h + 7 * i) % 1000) / 1000.0f;
    if (!float64) return t;
    Tensor d = Tensor::empty(t.shape(), DType::f64);
    for (std::int64_t i = 0; i < t.numel(); ++i) d.f64()[i] = t.f32()[i];
    return d;
  }
  std::string failing;
  bool float64 = false;  // store every tensor as F64
  mutable std::atomic<int> reads{0};
  mutable std::atomic<bool> failed{false};

 private:
  std::map<std::string, Shape> shapes_;
};

model::ModelSpec tiny() {
  const nlohmann::json cfg = {{"model_type", "opt"}, {"hidden_size", 8}, {"ffn_dim", 16}, {"num_attention_heads", 2},
                              {"num_hidden_layers", 2}, {"vocab_size", 32}, {"max_position_embeddings", 16},
                              {"word_embed_proj_dim", 8}, {"do_layer_norm_before", true},
                              {"activation_function", "relu"}, {"enable_bias", true}};
  return model::ModelSpec::from_config(cfg, "tiny");
}

bool same(Backend& be, const model::LayerWeights& a, const model::LayerWeights& b) {
  if (a.tensors.size() != b.tensors.size()) return false;
  for (const auto& [n, t] : a.tensors) {
    if (!b.find(n) || b.at(n).nbytes() != t.nbytes() || b.at(n).dtype() != t.dtype()) return false;
    const Tensor x = be.download(t), y = be.download(b.at(n));
    if (std::memcmp(x.raw(), y.raw(), x.nbytes()) != 0) return false;
  }
  return true;
}

// On each backend (the cuda one copies through its Uploader's pinned buffers and copy stream),
// in fp32 and in a 2-byte forward dtype (the stored tensors are then rounded on the device), from
// F32 and from F64 stored tensors.
class ModelPrefetchOn : public ::testing::TestWithParam<std::tuple<std::string, DType, bool>> {};

TEST_P(ModelPrefetchOn, SameWeightsAsAReadOnDemand) {
  const auto spec = tiny();
  std::unique_ptr<Backend> be;
  SCALPEL_BACKEND_OR_SKIP(be, std::get<0>(GetParam()), 1);
  auto src = std::make_shared<SyntheticSource>(spec);
  src->float64 = std::get<2>(GetParam());
  model::Model plain(spec, src, *be, 0), pre(spec, src, *be, 0);
  plain.set_forward_dtype(std::get<1>(GetParam()));
  pre.set_forward_dtype(std::get<1>(GetParam()));
  const int before = src->reads;
  pre.prefetch(1);
  pre.prefetch(1);  // already pending: no second read
  const auto w = pre.layer_weights(1);
  // 6 linears with biases and 2 norms of 2 tensors: 16 reads, all made by the prefetch.
  EXPECT_EQ(src->reads - before, 16);
  EXPECT_EQ(w->at("fc1.weight").device(), be->device());
  EXPECT_EQ(w->at("fc1.weight").dtype(), std::get<1>(GetParam()));
  EXPECT_TRUE(same(*be, *w, *plain.layer_weights(1)));
  pre.prefetch(5);  // no such layer: nothing
}

INSTANTIATE_TEST_SUITE_P(All, ModelPrefetchOn,
                         ::testing::Combine(::testing::ValuesIn(test_backends()),
                                            ::testing::Values(DType::f32, DType::f16), ::testing::Bool()),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" + std::string(dtype_name(std::get<1>(info.param))) +
                                  (std::get<2>(info.param) ? "_storedF64" : "");
                         });

TEST(ModelPrefetch, AReadErrorSurfacesWhenTheLayerIsAskedFor) {
  const auto spec = tiny();
  auto be = make_cpu_backend(1);
  auto src = std::make_shared<SyntheticSource>(spec);
  model::Model m(spec, src, *be, 0);
  src->failing = spec.layer_prefix(1) + "fc2.weight";
  m.prefetch(1);
  while (!src->failed) std::this_thread::yield();
  src->failing.clear();  // a read now would succeed: the error must come from the prefetch
  try {
    m.layer_weights(1);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot read 'model.decoder.layers.1.fc2.weight'"), std::string::npos)
        << e.what();
  }
  EXPECT_NO_THROW(m.layer_weights(1));  // the failed prefetch is gone; this read succeeds
}

TEST(ModelPrefetch, AReplacedLayerDropsItsPrefetch) {
  const auto spec = tiny();
  auto be = make_cpu_backend(1);
  auto src = std::make_shared<SyntheticSource>(spec);
  model::Model m(spec, src, *be, 0);
  auto replacement = std::make_shared<model::LayerWeights>(*m.layer_weights(0));
  m.prefetch(0);
  m.set_layer_weights(0, replacement);
  EXPECT_EQ(m.layer_weights(0).get(), replacement.get());
}

}  // namespace
}  // namespace scalpel::test
