// Export to a Hugging Face folder and sparsity inspection: replaced tensors come back with their
// names, dtypes and shapes, untouched ones byte for byte, shards and index past the size limit.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "scalpel/app/export.hpp"
#include "scalpel/io/hf_checkpoint.hpp"

namespace fs = std::filesystem;

namespace scalpel::test {
namespace {

const fs::path kShared = SCALPEL_SHARED_DIR;

// A 2:4-pruned copy (in F16) of one opt-mini weight: in every 4 columns zero the first 2.
Tensor prune_2_4(const Tensor& w) {
  Tensor t = w.clone();
  auto* p = t.data<std::uint16_t>();
  for (std::int64_t i = 0; i < t.numel(); ++i)
    if (i % 4 < 2) p[i] = 0;
  return t;
}

TEST(Export, ShardedFolderRoundTripsAndInspectSeesTheSparsity) {
  if (!fs::exists(kShared / "models/opt-mini/config.json")) GTEST_SKIP() << "../shared/models not present";
  io::HfCheckpoint src(kShared / "models/opt-mini");
  const std::string pruned = "model.decoder.layers.1.fc1.weight";
  std::map<std::string, Tensor> replaced{{pruned, prune_2_4(src.view(pruned))}};
  const auto out = fs::temp_directory_path() / ("scalpel_export_" + std::to_string(::getpid()));
  app::export_hf_folder(src, replaced, out, 3 << 20);  // 3 MB shards: opt-mini (10.8 MB) needs 4
  ASSERT_TRUE(fs::exists(out / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(out.string() + ".tmp-export"));
  for (const char* f : {"config.json", "tokenizer.json", "vocab.json", "merges.txt"}) EXPECT_TRUE(fs::exists(out / f)) << f;

  io::HfCheckpoint back(out);
  EXPECT_EQ(back.tensor_names(), src.tensor_names());
  for (const auto& name : src.tensor_names()) {
    const Tensor a = src.view(name), b = back.view(name);
    ASSERT_EQ(a.shape(), b.shape()) << name;
    ASSERT_EQ(a.dtype(), b.dtype()) << name;
    const Tensor want = name == pruned ? replaced.at(name) : a;
    EXPECT_EQ(std::memcmp(want.raw(), b.raw(), want.nbytes()), 0) << name;
  }
  const auto report = app::inspect_hf_folder(out, false);
  bool seen = false;
  for (const auto& t : report["tensors"]) {
    if (t["tensor"] == pruned) {
      seen = true;
      EXPECT_DOUBLE_EQ(t["sparsity"].get<double>(), 0.5);
      EXPECT_EQ(t["nm"], "2:4");
    } else {
      EXPECT_TRUE(t["nm"].is_null());
    }
  }
  EXPECT_TRUE(seen);
  // Zeros counted here on the raw F16 words (+0 and -0) of every decoder linear of the export.
  std::int64_t zeros = 0;
  for (const auto& name : back.tensor_names()) {
    const bool linear =
        name.ends_with("proj.weight") || name.ends_with("fc1.weight") || name.ends_with("fc2.weight");
    if (name.find("layers.") == std::string::npos || !linear) continue;
    const Tensor t = back.view(name);
    for (std::int64_t i = 0; i < t.numel(); ++i) zeros += (t.data<std::uint16_t>()[i] & 0x7fff) == 0;
  }
  EXPECT_GE(zeros, 1024 * 256 / 2);
  EXPECT_EQ(report["total"]["zeros"].get<std::int64_t>(), zeros);
  EXPECT_EQ(report["total"]["weights"].get<std::int64_t>(), 3145728);
  fs::remove_all(out);
}

}  // namespace
}  // namespace scalpel::test
