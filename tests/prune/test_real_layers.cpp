// The three methods on the real linears of layers 0 and 1 of opt-mini and llama-mini, with inputs
// collected through the model's LinearTap over calibration windows. The papers' ordering of the
// reconstruction error, at 50% unstructured and 2:4: SparseGPT below Wanda and magnitude on every
// linear; Wanda below magnitude on each layer's mean, and on every linear whose input is not a
// normalisation's output (attention output, FFN activation: where outlier features live). After a
// LayerNorm/RMSNorm the column norms of these small models are nearly uniform (the printed cv of
// sqrt(s_j) is 0.06-0.25), Wanda then reduces to per-row magnitude, and magnitude's whole-matrix
// threshold is sometimes slightly better (measured: by up to 6%), so no order is asserted there.
// Skips when ${SCALPEL_SHARED_DIR}/models is absent.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>

#include "scalpel/io/hf_checkpoint.hpp"
#include "scalpel/model/model.hpp"
#include "scalpel/prune/pruner.hpp"
#include "scalpel/text/tokenizer.hpp"

namespace scalpel::test {
namespace {

namespace fs = std::filesystem;
using namespace scalpel::prune;

constexpr std::int64_t kWindows = 16, kSeqlen = 128;

class FolderSource final : public model::WeightSource {
 public:
  explicit FolderSource(const fs::path& folder) : ckpt_(folder) {}
  bool has(const std::string& name) const override { return ckpt_.has(name); }
  Tensor load(const std::string& name) const override { return ckpt_.read_f32(name); }
  const io::HfCheckpoint& checkpoint() const { return ckpt_; }

 private:
  io::HfCheckpoint ckpt_;
};

// 16 windows of 128 tokens at fixed, evenly spread offsets of the tokenized calibration text.
std::vector<std::int32_t> calibration_ids(const fs::path& model_dir, const fs::path& calib) {
  std::ifstream f(calib, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  const auto ids = text::Tokenizer::from_folder(model_dir)->encode(ss.str());
  const auto n = static_cast<std::int64_t>(ids.size());
  EXPECT_GT(n, kWindows * kSeqlen);
  std::vector<std::int32_t> out;
  for (std::int64_t w = 0; w < kWindows; ++w) {
    const std::int64_t off = w * (n - kSeqlen) / kWindows;
    out.insert(out.end(), ids.begin() + off, ids.begin() + off + kSeqlen);
  }
  return out;
}

void check_model(const std::string& name) {
  const fs::path shared = SCALPEL_SHARED_DIR;
  const fs::path dir = shared / "models" / name, calib = shared / "data/corpus/calib.txt";
  if (!fs::exists(dir / "config.json") || !fs::exists(calib))
    GTEST_SKIP() << name << " or calib.txt not found under " << shared
                 << " (set SCALPEL_SHARED_DIR to the folder holding models/ and data/)";
  auto be = make_cpu_backend(1);  // ctest runs two tests at once on two cores
  auto src = std::make_shared<FolderSource>(dir);
  const auto spec = model::ModelSpec::from_config(src->checkpoint().config(), dir.string());
  model::Model m(spec, src, *be);
  const auto ids = calibration_ids(dir, calib);
  Tensor x = m.embed(ids, kWindows, kSeqlen);

  std::printf("%-10s %-5s %-18s %-16s %8s %10s %10s %10s\n", "model", "layer", "linear", "pattern", "cv", "magnitude",
              "wanda", "sparsegpt");
  for (std::int64_t layer = 0; layer < 2; ++layer) {
    std::map<int, std::unique_ptr<InputStats>> stats;
    std::vector<std::pair<std::string, int>> linears;
    model::LinearTap tap = [&](int group, const std::vector<std::string>& names, const Tensor& in) {
      auto& s = stats[group];
      if (!s)
        s = std::make_unique<InputStats>(*be, in.size(1), StatsKinds{true, true},
                                         "layer " + std::to_string(layer) + " input " + std::to_string(group));
      s->add_batch(in, kWindows);  // one syrk over all 2048 tokens
      for (const auto& n : names) linears.emplace_back(n, group);
    };
    m.layer_forward(layer, x, kWindows, kSeqlen, &tap);  // x becomes the (dense) next input
    const auto weights = m.layer_weights(layer);
    ASSERT_EQ(linears.size(), spec.linears().size());
    for (const auto& p : {Pattern::unstructured(0.5), Pattern::nm(2, 4)}) {
      double mean[3] = {0, 0, 0};
      for (const auto& [lin, group] : linears) {
        const Tensor& w = weights->at(lin + ".weight");
        const InputStats& st = *stats.at(group);
        // Spread of Wanda's column weights sqrt(s_j): coefficient of variation.
        const Tensor cn = be->download(st.col_norms());
        double mu = 0, m2 = 0;
        for (std::int64_t j = 0; j < cn.numel(); ++j) {
          const double v = std::sqrt(static_cast<double>(cn.f32()[j]));
          mu += v / static_cast<double>(cn.numel());
          m2 += v * v / static_cast<double>(cn.numel());
        }
        const double cv = std::sqrt(std::max(0.0, m2 - mu * mu)) / mu;
        double err[3];
        int i = 0;
        for (const auto method : {Method::magnitude, Method::wanda, Method::sparsegpt}) {
          PruneOptions o;
          o.method = method;
          o.pattern = p;
          o.name = "layer " + std::to_string(layer) + " " + lin;
          const auto r = prune_linear(*be, w, &st, o);
          EXPECT_EQ(r.pruned, expected_pruned(w.size(0), w.size(1), p, method)) << o.name;
          mean[i] += r.error_rel / static_cast<double>(linears.size());
          err[i++] = r.error_rel;
        }
        std::printf("%-10s %-5lld %-18s %-16s %8.3f %10.5f %10.5f %10.5f\n", name.c_str(), static_cast<long long>(layer),
                    lin.c_str(), p.str().c_str(), cv, err[0], err[1], err[2]);
        const std::string what = name + " layer " + std::to_string(layer) + " " + lin + " " + p.str();
        EXPECT_LT(err[2], err[1]) << what << ": SparseGPT should beat Wanda";
        EXPECT_LT(err[2], err[0]) << what << ": SparseGPT should beat magnitude";
        // Input groups 1 and 3 (out/o_proj; fc2/down_proj) read un-normalised activations.
        if (group == 1 || group == 3) {
          EXPECT_LT(err[1], err[0]) << what << ": Wanda should beat magnitude";
        }
      }
      std::printf("%-10s %-5lld %-18s %-16s %8s %10.5f %10.5f %10.5f\n", name.c_str(), static_cast<long long>(layer),
                  "(mean)", p.str().c_str(), "", mean[0], mean[1], mean[2]);
      EXPECT_LT(mean[2], mean[1]) << name << " layer " << layer << " " << p.str();
      EXPECT_LT(mean[1], mean[0]) << name << " layer " << layer << " " << p.str() << ": Wanda should beat magnitude";
    }
  }
}

TEST(RealLayers, OptMiniErrorsOrderSparseGptWandaMagnitude) { check_model("opt-mini"); }
TEST(RealLayers, LlamaMiniErrorsOrderSparseGptWandaMagnitude) { check_model("llama-mini"); }

}  // namespace
}  // namespace scalpel::test
