// safetensors read/write: exact round trips through F32/F16/BF16 storage, the written layout
// (aligned, space-padded header; tensors contiguous in the given order), row slices, views that
// outlive their file object, unaligned data, and the writer's own argument checks.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "io_test_util.hpp"
#include "scalpel/io/safetensors.hpp"

namespace scalpel::io {
namespace {

using test::expect_input_error;
using test::TempDir;

// Inputs and the exact floats they become after a trip through each storage type (computed
// independently with IEEE round-to-nearest-even).
const std::vector<float> kValues = {1.0f, -2.5f, 0.1f, 1.0f / 3.0f, 3.14159f, 65504.0f, 1e-6f, -0.0f};
const std::vector<float> kAsF16 = {1.0f,     -2.5f,    0.0999755859375f, 0.333251953125f,
                                   3.140625f, 65504.0f, 1.0132789611816406e-06f, -0.0f};
const std::vector<float> kAsBF16 = {1.0f,      -2.5f,    0.10009765625f,         0.333984375f,
                                    3.140625f, 65536.0f, 9.98377799987793e-07f, -0.0f};
const std::vector<std::uint16_t> kF16Bits = {0x3c00, 0xc100, 0x2e66, 0x3555, 0x4248, 0x7bff, 0x0011, 0x8000};
const std::vector<std::uint16_t> kBF16Bits = {0x3f80, 0xc020, 0x3dcd, 0x3eab, 0x4049, 0x4780, 0x3586, 0x8000};

Tensor stored_as(DType dtype, const std::vector<float>& v, Shape shape) {
  Tensor f = Tensor::from(v, shape);
  Tensor t = Tensor::empty(shape, dtype);
  convert_from_f32(dtype, f.f32(), t.raw(), v.size());
  return t;
}

void expect_floats(const Tensor& t, const std::vector<float>& want) {
  ASSERT_EQ(t.dtype(), DType::f32);
  ASSERT_EQ(static_cast<std::size_t>(t.numel()), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    // Bitwise, so that -0.0 and exact rounding are both checked.
    std::uint32_t a, b;
    std::memcpy(&a, t.f32() + i, 4);
    std::memcpy(&b, &want[i], 4);
    EXPECT_EQ(a, b) << "element " << i << ": got " << t.f32()[i] << ", want " << want[i];
  }
}

TEST(Safetensors, RoundTripF32F16BF16) {
  TempDir dir;
  const auto path = dir / "m.safetensors";
  write_safetensors(path, {{"a.f32", stored_as(DType::f32, kValues, {2, 4})},
                           {"b.f16", stored_as(DType::f16, kValues, {4, 2})},
                           {"c.bf16", stored_as(DType::bf16, kValues, {8})}});
  const auto f = SafetensorsFile::open(path);
  ASSERT_EQ(f->header().tensors.size(), 3u);
  EXPECT_EQ(f->info("a.f32").dtype, DType::f32);
  EXPECT_EQ(f->info("b.f16").dtype, DType::f16);
  EXPECT_EQ(f->info("c.bf16").dtype, DType::bf16);
  EXPECT_EQ(f->info("a.f32").shape, (Shape{2, 4}));
  EXPECT_EQ(f->info("b.f16").shape, (Shape{4, 2}));
  EXPECT_EQ(f->info("c.bf16").shape, (Shape{8}));

  expect_floats(f->read_f32("a.f32"), kValues);
  expect_floats(f->read_f32("b.f16"), kAsF16);
  expect_floats(f->read_f32("c.bf16"), kAsBF16);

  // The views hold the stored bits, untouched.
  const Tensor vf16 = f->view("b.f16");
  EXPECT_EQ(vf16.dtype(), DType::f16);
  EXPECT_EQ(vf16.shape(), (Shape{4, 2}));
  for (std::size_t i = 0; i < kF16Bits.size(); ++i) EXPECT_EQ(vf16.data<std::uint16_t>()[i], kF16Bits[i]);
  const Tensor vbf16 = f->view("c.bf16");
  for (std::size_t i = 0; i < kBF16Bits.size(); ++i) EXPECT_EQ(vbf16.data<std::uint16_t>()[i], kBF16Bits[i]);
  // Zero-copy: the view points into the mapped file, right where the header says.
  const auto& info = f->info("c.bf16");
  const Tensor va = f->view("a.f32");
  EXPECT_EQ(static_cast<const char*>(vbf16.raw()) - static_cast<const char*>(va.raw()),
            static_cast<std::ptrdiff_t>(info.begin - f->info("a.f32").begin));
}

TEST(Safetensors, F64AndIntegerDtypesRoundTrip) {
  TempDir dir;
  const auto path = dir / "m.safetensors";
  Tensor d = Tensor::empty({3}, DType::f64);
  d.f64()[0] = 0.1;
  d.f64()[1] = -1e30;
  d.f64()[2] = 2.0;
  Tensor i64 = Tensor::empty({2}, DType::i64);
  i64.data<std::int64_t>()[0] = -7;
  i64.data<std::int64_t>()[1] = std::int64_t{1} << 40;
  Tensor u8 = Tensor::empty({3}, DType::u8);
  u8.data<std::uint8_t>()[0] = 0;
  u8.data<std::uint8_t>()[1] = 200;
  u8.data<std::uint8_t>()[2] = 255;
  Tensor b = Tensor::zeros({2}, DType::boolean);
  b.data<std::uint8_t>()[1] = 1;
  Tensor i32 = Tensor::empty({1}, DType::i32);
  i32.data<std::int32_t>()[0] = -123456;
  // Widest elements first, so that every view is aligned to its element size.
  write_safetensors(path, {{"d", d}, {"i64", i64}, {"i32", i32}, {"u8", u8}, {"b", b}});

  const auto f = SafetensorsFile::open(path);
  const Tensor rd = f->read_f32("d");
  EXPECT_EQ(rd.f32()[0], 0.1f);
  EXPECT_EQ(rd.f32()[1], static_cast<float>(-1e30));
  EXPECT_EQ(rd.f32()[2], 2.0f);
  EXPECT_EQ(f->view("d").f64()[1], -1e30);
  EXPECT_EQ(f->view("i64").data<std::int64_t>()[0], -7);
  EXPECT_EQ(f->view("i64").data<std::int64_t>()[1], std::int64_t{1} << 40);
  EXPECT_EQ(f->view("u8").data<std::uint8_t>()[1], 200);
  EXPECT_EQ(f->view("b").dtype(), DType::boolean);
  EXPECT_EQ(f->view("b").data<std::uint8_t>()[1], 1);
  EXPECT_EQ(f->view("i32").data<std::int32_t>()[0], -123456);
  // Integers do not silently become floats.
  expect_input_error([&] { f->read_f32("i64"); }, {path.string(), "'i64'", "I64"});
}

TEST(Safetensors, WrittenLayoutIsAlignedPaddedContiguousAndInOrder) {
  TempDir dir;
  const auto path = dir / "m.safetensors";
  // Given in non-sorted order, with an odd-sized F16 tensor so that later offsets are not round.
  write_safetensors(path,
                    {{"z", stored_as(DType::f32, {1, 2, 3}, {3})},
                     {"a", stored_as(DType::f16, {1, 2, 3}, {3})},
                     {"m", stored_as(DType::bf16, {1, 2, 3, 4}, {2, 2})}},
                    {{"format", "pt"}, {"note", "x y"}});
  EXPECT_FALSE(std::filesystem::exists(dir / "m.safetensors.tmp"));
  const std::string bytes = test::read_file(path);
  ASSERT_GE(bytes.size(), 8u);
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  EXPECT_EQ(n % 8, 0u);
  ASSERT_LE(8 + n, bytes.size());
  const std::string header = bytes.substr(8, n);
  const auto last = header.find_last_not_of(' ');
  EXPECT_EQ(header[last], '}');
  EXPECT_LT(header.size() - 1 - last, 8u);  // at most 7 spaces of padding
  const auto j = nlohmann::json::parse(header);
  EXPECT_EQ(j["__metadata__"]["format"], "pt");
  EXPECT_EQ(j["__metadata__"]["note"], "x y");
  EXPECT_EQ(j["z"]["data_offsets"], nlohmann::json::array({0, 12}));
  EXPECT_EQ(j["a"]["data_offsets"], nlohmann::json::array({12, 18}));
  EXPECT_EQ(j["m"]["data_offsets"], nlohmann::json::array({18, 26}));
  EXPECT_EQ(j["m"]["dtype"], "BF16");
  EXPECT_EQ(j["m"]["shape"], nlohmann::json::array({2, 2}));
  EXPECT_EQ(bytes.size(), 8 + n + 26);  // no gaps, nothing after the last tensor

  const auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->header().header_bytes, n);
  EXPECT_EQ(f->header().metadata.at("note"), "x y");
  ASSERT_EQ(f->header().tensors.size(), 3u);  // sorted by offset = the order written
  EXPECT_EQ(f->header().tensors[0].name, "z");
  EXPECT_EQ(f->header().tensors[1].name, "a");
  EXPECT_EQ(f->header().tensors[2].name, "m");
  // "m" starts at an offset of 18: 2-aligned for BF16, so fine; read it back anyway.
  expect_floats(f->read_f32("m"), {1, 2, 3, 4});
}

TEST(Safetensors, EmptyMetadataWritesNone) {
  TempDir dir;
  write_safetensors(dir / "m.safetensors", {{"x", Tensor::from(std::vector<float>{1, 2}, {2})}}, {});
  const auto f = SafetensorsFile::open(dir / "m.safetensors");
  EXPECT_TRUE(f->header().metadata.empty());
  EXPECT_EQ(test::read_file(dir / "m.safetensors").find("__metadata__"), std::string::npos);
}

TEST(Safetensors, OverwriteReplacesAtomically) {
  TempDir dir;
  const auto path = dir / "m.safetensors";
  write_safetensors(path, {{"x", Tensor::from(std::vector<float>{1, 2}, {2})}});
  const auto old = SafetensorsFile::open(path);
  const Tensor old_view = old->view("x");
  write_safetensors(path, {{"y", Tensor::from(std::vector<float>{3, 4, 5}, {3})}});
  const auto fresh = SafetensorsFile::open(path);
  EXPECT_EQ(fresh->find("x"), nullptr);
  expect_floats(fresh->read_f32("y"), {3, 4, 5});
  // rename() replaced the directory entry; the old mapping still sees the old inode.
  EXPECT_EQ(old_view.f32()[1], 2.0f);
}

TEST(Safetensors, RowSlices) {
  TempDir dir;
  const auto path = dir / "m.safetensors";
  std::vector<float> m(5 * 3), cube(4 * 2 * 3);
  for (std::size_t i = 0; i < m.size(); ++i) m[i] = static_cast<float>(i) * 0.5f;
  for (std::size_t i = 0; i < cube.size(); ++i) cube[i] = static_cast<float>(i) - 10.0f;
  write_safetensors(path, {{"m16", stored_as(DType::f16, m, {5, 3})},
                           {"cube", stored_as(DType::bf16, cube, {4, 2, 3})},
                           {"m32", Tensor::from(m, {5, 3})}});
  const auto f = SafetensorsFile::open(path);
  for (const char* name : {"m16", "m32"}) {
    const Tensor r = f->read_rows_f32(name, 1, 4);
    EXPECT_EQ(r.shape(), (Shape{3, 3}));
    expect_floats(r, std::vector<float>(m.begin() + 3, m.begin() + 12));
    const Tensor last = f->read_rows_f32(name, 4, 5);
    expect_floats(last, std::vector<float>(m.begin() + 12, m.end()));
    const Tensor none = f->read_rows_f32(name, 2, 2);
    EXPECT_EQ(none.shape(), (Shape{0, 3}));
  }
  const Tensor c = f->read_rows_f32("cube", 2, 4);
  EXPECT_EQ(c.shape(), (Shape{2, 2, 3}));
  expect_floats(c, std::vector<float>(cube.begin() + 12, cube.end()));

  expect_input_error([&] { f->read_rows_f32("m16", 3, 6); }, {path.string(), "'m16'", "rows [3, 6)"});
  expect_input_error([&] { f->read_rows_f32("m16", -1, 2); }, {path.string(), "'m16'"});
  expect_input_error([&] { f->read_rows_f32("m16", 3, 2); }, {path.string(), "'m16'"});
  expect_input_error([&] { f->read_rows_f32("nope", 0, 1); }, {path.string(), "'nope'"});
}

TEST(Safetensors, ScalarsAndEmptyTensors) {
  TempDir dir;
  const auto path = dir / "m.safetensors";
  write_safetensors(path, {{"s", stored_as(DType::f16, {0.1f}, {})},
                           {"e", Tensor::empty({0, 7}, DType::f32)},
                           {"t", stored_as(DType::f32, {4, 5}, {2})}});
  const auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->info("s").shape, Shape{});
  const Tensor s = f->read_f32("s");
  EXPECT_EQ(s.shape(), Shape{});
  expect_floats(s, {0.0999755859375f});
  expect_input_error([&] { f->read_rows_f32("s", 0, 1); }, {path.string(), "'s'", "scalar"});
  const Tensor e = f->read_f32("e");
  EXPECT_EQ(e.shape(), (Shape{0, 7}));
  EXPECT_EQ(f->view("e").numel(), 0);
  expect_floats(f->read_f32("t"), {4, 5});
}

TEST(Safetensors, ViewsKeepTheMapAlive) {
  TempDir dir;
  const auto path = dir / "m.safetensors";
  write_safetensors(path, {{"x", stored_as(DType::f16, kValues, {8})}});
  Tensor v;
  {
    auto f = SafetensorsFile::open(path);
    v = f->view("x");
  }  // the file object is gone; the mapping must not be (ASan would catch a use after unmap)
  for (std::size_t i = 0; i < kF16Bits.size(); ++i) EXPECT_EQ(v.data<std::uint16_t>()[i], kF16Bits[i]);
  expect_floats(v.to_f32(), kAsF16);
}

TEST(Safetensors, UnalignedDataIsReadCorrectly) {
  TempDir dir;
  const auto path = dir / "m.safetensors";
  // A hand-made file whose F32 tensor starts 1 byte into the data section and whose header is
  // not padded, so the data sit at odd addresses in the map.
  const std::string header =
      R"({"pad":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
      R"("x":{"dtype":"F32","shape":[2],"data_offsets":[1,9]},)"
      R"("h":{"dtype":"F16","shape":[1],"data_offsets":[9,11]}})";
  std::string data(11, '\0');
  const float xs[2] = {1.5f, -0.25f};
  std::memcpy(data.data() + 1, xs, 8);
  const std::uint16_t h = 0x2e66;
  std::memcpy(data.data() + 9, &h, 2);
  test::write_file(path, test::le64(header.size()) + header + data);
  const auto f = SafetensorsFile::open(path);
  expect_floats(f->read_f32("x"), {1.5f, -0.25f});
  expect_floats(f->read_rows_f32("x", 1, 2), {-0.25f});
  expect_floats(f->read_f32("h"), {0.0999755859375f});
}

TEST(Safetensors, HeaderParsesFromMemory) {
  // parse_safetensors_header needs no file: the fuzzer and callers with their own buffers use it.
  const std::string header = R"({"x":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}   )";
  const std::string bytes = test::st_bytes(header, 4);
  const auto h = parse_safetensors_header(
      std::span(reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()), "buffer");
  EXPECT_EQ(h.header_bytes, header.size());
  EXPECT_EQ(h.data_start(), 8 + header.size());
  ASSERT_EQ(h.tensors.size(), 1u);
  EXPECT_EQ(h.tensors[0].end, 4u);
}

TEST(Safetensors, WriterRejectsDuplicateAndReservedNames) {
  TempDir dir;
  const auto path = dir / "m.safetensors";
  const Tensor t = Tensor::from(std::vector<float>{1}, {1});
  expect_input_error([&] { write_safetensors(path, {{"a", t}, {"a", t}}); }, {path.string(), "'a'"});
  expect_input_error([&] { write_safetensors(path, {{"__metadata__", t}}); }, {path.string()});
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(dir / "m.safetensors.tmp"));
}

TEST(Safetensors, WriteIntoMissingFolderIsARuntimeError) {
  TempDir dir;
  const auto path = dir / "no" / "such" / "m.safetensors";
  try {
    write_safetensors(path, {{"a", Tensor::from(std::vector<float>{1}, {1})}});
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::runtime);
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace scalpel::io
