// Export to a Hugging Face folder and sparsity inspection: replaced tensors come back with their
// names, dtypes and shapes, untouched ones byte for byte, shards and index past the size limit.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "scalpel/app/export.hpp"
#include "scalpel/core/error.hpp"
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

  // A read-only source (a shared model store): the copies are the owner's to write, so a later
  // export replaces them (config.json came out r--r--r--).
  const auto ro = fs::temp_directory_path() / ("scalpel_export_ro_" + std::to_string(::getpid()));
  fs::create_directories(ro);
  for (const auto& e : fs::directory_iterator(kShared / "models/opt-mini"))
    if (e.is_regular_file()) fs::copy_file(e.path(), ro / e.path().filename());
  for (const auto& e : fs::directory_iterator(ro)) fs::permissions(e.path(), fs::perms::owner_read | fs::perms::group_read);
  app::export_hf_folder(io::HfCheckpoint(ro), std::map<std::string, Tensor>{}, out, 0);
  for (const char* f : {"config.json", "tokenizer.json"})
    EXPECT_NE(fs::status(out / f).permissions() & fs::perms::owner_write, fs::perms::none) << f;
  fs::remove_all(ro);
  fs::remove_all(out);
}

// An earlier export is moved aside (FOLDER.old-export) before the new one is renamed in, and
// removed after: it used to be deleted file by file first, so a kill in that window left a folder
// of tokenizer files without weights or marker, which the next export refused as "a model that
// scalpel did not export". The folder a kill between the two renames leaves (the old export whole
// beside no FOLDER) is removed by the next export; one holding other files is refused, untouched.
TEST(Export, AnEarlierExportIsMovedAsideWholeAndItsLeftoverRemoved) {
  if (!fs::exists(kShared / "models/opt-mini/config.json")) GTEST_SKIP() << "../shared/models not present";
  io::HfCheckpoint src(kShared / "models/opt-mini");
  const std::string pruned = "model.decoder.layers.1.fc1.weight";
  const auto out = fs::temp_directory_path() / ("scalpel_export_aside_" + std::to_string(::getpid()));
  const fs::path old = out.string() + ".old-export", tmp = out.string() + ".tmp-export";
  app::export_hf_folder(src, std::map<std::string, Tensor>{}, out, 0);
  std::map<std::string, Tensor> replaced{{pruned, prune_2_4(src.view(pruned))}};
  app::export_hf_folder(src, replaced, out, 0);  // replaces the dense export
  EXPECT_FALSE(fs::exists(old));
  EXPECT_FALSE(fs::exists(tmp));
  const Tensor got = io::HfCheckpoint(out).view(pruned), want = replaced.at(pruned);
  EXPECT_EQ(std::memcmp(got.raw(), want.raw(), want.nbytes()), 0);

  // As a kill between the renames leaves it: the old export aside, no FOLDER. An export that then
  // fails (here a replacement of the wrong shape) puts it back first: it was removed and lost.
  fs::rename(out, old);
  const std::map<std::string, Tensor> wrong{{pruned, Tensor::zeros({2, 2}, DType::f16)}};
  EXPECT_THROW(app::export_hf_folder(src, wrong, out, 0), Error);
  EXPECT_FALSE(fs::exists(old));
  EXPECT_FALSE(fs::exists(tmp));
  const Tensor kept = io::HfCheckpoint(out).view(pruned);
  EXPECT_EQ(std::memcmp(kept.raw(), want.raw(), want.nbytes()), 0);
  // And one that succeeds replaces it as usual.
  fs::rename(out, old);
  app::export_hf_folder(src, std::map<std::string, Tensor>{}, out, 0);
  EXPECT_FALSE(fs::exists(old));
  EXPECT_TRUE(fs::exists(out / "scalpel-export.json"));
  // A path ending in ".." names the folder it resolves to: its scratch folders go beside it
  // (this wrote "sub/..tmp-export", created sub inside the export and failed).
  app::export_hf_folder(src, std::map<std::string, Tensor>{}, out / "sub" / "..", 0);
  EXPECT_TRUE(fs::exists(out / "scalpel-export.json"));
  EXPECT_FALSE(fs::exists(out / "sub"));
  EXPECT_FALSE(fs::exists(tmp));

  fs::create_directories(old);
  std::ofstream(old / "notes.txt") << "mine";
  try {
    app::export_hf_folder(src, std::map<std::string, Tensor>{}, out, 0);
    ADD_FAILURE() << "a leftover holding other files was not refused";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::input);
    EXPECT_NE(std::string(e.what()).find(old.string() + " holds 'notes.txt', which no export writes"),
              std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::exists(old / "notes.txt"));
  EXPECT_TRUE(fs::exists(out / "scalpel-export.json"));
  fs::remove_all(old);
  fs::remove_all(out);
}

// The zero count reads stored bits: it must say what comparing the widened fp32 value with 0
// says, for every 16-bit pattern of fp16 and bf16 (±0, subnormals, NaN, infinities included) and
// for fp32's edge values; sparsity_stats counts the same and finds zero rows and columns.
TEST(Export, ZerosCountedOnStoredBitsAgreeWithTheFloatComparison) {
  for (const DType dt : {DType::f16, DType::bf16}) {
    Tensor t = Tensor::empty({256, 256}, dt);
    auto* p = t.data<std::uint16_t>();
    for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<std::uint16_t>(i);
    const Tensor f = t.to_f32();
    std::int64_t want = 0;
    for (std::int64_t i = 0; i < f.numel(); ++i) want += f.data<float>()[i] == 0.0f;
    EXPECT_EQ(want, 2) << dtype_name(dt);  // +0 (0x0000) and -0 (0x8000)
    EXPECT_EQ(app::count_zeros(t), want) << dtype_name(dt);
    EXPECT_EQ(app::sparsity_stats(t).zeros, want) << dtype_name(dt);
  }
  const float edge[] = {0.0f, -0.0f, 1e-45f, -1e-45f, 1.0f, std::numeric_limits<float>::infinity(),
                        std::numeric_limits<float>::quiet_NaN(), 0.0f};
  Tensor t = Tensor::empty({2, 4}, DType::f32);
  std::memcpy(t.raw(), edge, sizeof edge);
  EXPECT_EQ(app::count_zeros(t), 3);  // 0, -0 and the last 0; not the subnormals, inf or NaN
  Tensor z = Tensor::zeros({3, 4}, DType::f16);
  z.data<std::uint16_t>()[5] = 0x3c00;  // 1.0 at row 1, column 1
  const auto s = app::sparsity_stats(z);
  EXPECT_EQ(s.zeros, 11);
  EXPECT_EQ(s.zero_rows, 2);
  EXPECT_EQ(s.zero_cols, 3);
}

}  // namespace
}  // namespace scalpel::test
