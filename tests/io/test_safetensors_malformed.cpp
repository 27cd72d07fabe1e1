// Malformed safetensors files, one test per defect: each must be refused with an input Error whose
// message names the file and what is wrong (and the tensor, where one is concerned). Nothing here
// may crash; the fuzzer covers the bytes these hand-made cases do not.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "io_test_util.hpp"
#include "scalpel/io/safetensors.hpp"

namespace scalpel::io {
namespace {

using test::expect_input_error;
using test::st_bytes;
using test::TempDir;

class Malformed : public ::testing::Test {
 protected:
  // Writes `bytes` as a file and expects opening it to fail naming the file and `needles`.
  void expect_refused(const std::string& bytes, std::initializer_list<std::string> needles) {
    test::write_file(path_, bytes);
    std::vector<std::string> all{path_.string()};
    all.insert(all.end(), needles.begin(), needles.end());
    try {
      SafetensorsFile::open(path_);
      ADD_FAILURE() << "expected an input Error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::input) << e.what();
      for (const auto& n : all)
        EXPECT_NE(std::string(e.what()).find(n), std::string::npos)
            << "message lacks \"" << n << "\": " << e.what();
    }
  }
  // A header holding one tensor entry `entry` (JSON text) under the name "w".
  static std::string one(const std::string& entry, std::size_t data_bytes) {
    return st_bytes("{\"w\":" + entry + "}", data_bytes);
  }

  TempDir dir_;
  std::filesystem::path path_ = dir_ / "bad.safetensors";
};

TEST_F(Malformed, EmptyFile) { expect_refused("", {"0 bytes", "shorter than"}); }

TEST_F(Malformed, ShorterThanEightBytes) { expect_refused(std::string("\x10\0\0\0\0", 5), {"5 bytes", "shorter than"}); }

TEST_F(Malformed, HeaderLengthPastEndOfFile) {
  expect_refused(test::le64(1000) + "{}", {"header length 1000", "past the end of the file"});
}

TEST_F(Malformed, HeaderLengthHuge) {
  expect_refused(test::le64(~std::uint64_t{0}) + "{}      ",
                 {"header length 18446744073709551615", "past the end of the file"});
}

TEST_F(Malformed, HeaderLengthOverLimitEvenInsideTheFile) {
  // A sparse file large enough to hold the claimed header, so only the size cap refuses it.
  const std::uint64_t n = kMaxSafetensorsHeaderBytes + 8;
  test::write_file(path_, test::le64(n) + "{}");
  std::filesystem::resize_file(path_, 8 + n);
  expect_input_error([&] { SafetensorsFile::open(path_); },
                     {path_.string(), "exceeds", std::to_string(n)});
}

TEST_F(Malformed, HeaderNotJson) { expect_refused(st_bytes("{not json", 0), {"not valid JSON"}); }

TEST_F(Malformed, HeaderTrailingGarbage) { expect_refused(st_bytes("{} x", 0), {"not valid JSON"}); }

TEST_F(Malformed, HeaderInvalidUtf8) {
  expect_refused(st_bytes("{\"\xff\xfe\":{}}", 0), {"not valid JSON"});
}

TEST_F(Malformed, HeaderNotAnObject) {
  expect_refused(st_bytes("[1, 2, 3]", 0), {"array", "not an object"});
  expect_refused(st_bytes("5       ", 0), {"number", "not an object"});
}

TEST_F(Malformed, HeaderNestedTooDeep) {
  expect_refused(st_bytes(std::string(50, '[') + std::string(50, ']'), 0), {"deeper"});
}

TEST_F(Malformed, EntryNotAnObject) { expect_refused(one("5", 0), {"'w'", "not a JSON object"}); }

TEST_F(Malformed, MissingDtype) {
  expect_refused(one(R"({"shape":[1],"data_offsets":[0,4]})", 4), {"'w'", "no \"dtype\""});
}

TEST_F(Malformed, MissingShape) {
  expect_refused(one(R"({"dtype":"F32","data_offsets":[0,4]})", 4), {"'w'", "no \"shape\""});
}

TEST_F(Malformed, MissingDataOffsets) {
  expect_refused(one(R"({"dtype":"F32","shape":[1]})", 4), {"'w'", "no \"data_offsets\""});
}

TEST_F(Malformed, DtypeWrongType) {
  expect_refused(one(R"({"dtype":16,"shape":[1],"data_offsets":[0,4]})", 4),
                 {"'w'", "\"dtype\" is a number"});
}

TEST_F(Malformed, ShapeWrongType) {
  expect_refused(one(R"({"dtype":"F32","shape":"1","data_offsets":[0,4]})", 4),
                 {"'w'", "\"shape\" is a string"});
}

TEST_F(Malformed, DataOffsetsWrongType) {
  expect_refused(one(R"({"dtype":"F32","shape":[1],"data_offsets":{"a":0}})", 4),
                 {"'w'", "data_offsets"});
  expect_refused(one(R"({"dtype":"F32","shape":[1],"data_offsets":[0]})", 4), {"'w'", "data_offsets"});
  expect_refused(one(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4,8]})", 8),
                 {"'w'", "data_offsets"});
  expect_refused(one(R"({"dtype":"F32","shape":[1],"data_offsets":[0,"4"]})", 4),
                 {"'w'", "data_offsets end", "not an integer"});
  expect_refused(one(R"({"dtype":"F32","shape":[1],"data_offsets":[-4,4]})", 4),
                 {"'w'", "data_offsets begin", "negative"});
}

TEST_F(Malformed, UnknownDtype) {
  expect_refused(one(R"({"dtype":"F8","shape":[1],"data_offsets":[0,1]})", 1),
                 {"'w'", "unknown dtype \"F8\""});
}

TEST_F(Malformed, NegativeShapeDim) {
  expect_refused(one(R"({"dtype":"F32","shape":[2,-1],"data_offsets":[0,0]})", 0),
                 {"'w'", "shape dimension 1", "negative"});
}

TEST_F(Malformed, NonIntegerShapeDim) {
  expect_refused(one(R"({"dtype":"F32","shape":[2.5],"data_offsets":[0,8]})", 8),
                 {"'w'", "shape dimension 0", "not an integer"});
  expect_refused(one(R"({"dtype":"F32","shape":["2"],"data_offsets":[0,8]})", 8),
                 {"'w'", "shape dimension 0", "not an integer"});
  expect_refused(one(R"({"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,8]})", 8),
                 {"'w'", "shape dimension 0", "not an integer"});
  expect_refused(one(R"({"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,8]})", 8),
                 {"'w'", "shape dimension 0", "too large"});
}

TEST_F(Malformed, BeginAfterEnd) {
  expect_refused(one(R"({"dtype":"U8","shape":[0],"data_offsets":[4,0]})", 4),
                 {"'w'", "begin 4 > end 0"});
}

TEST_F(Malformed, RangePastDataSection) {
  expect_refused(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})", 4),
                 {"'w'", "past the end of the data section (4 bytes)"});
}

TEST_F(Malformed, OverlappingRanges) {
  expect_refused(st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                          12),
                 {"'a'", "'b'", "overlapping"});
  // A range nested inside a longer one, with a third tensor between them in offset order.
  expect_refused(st_bytes(R"({"big":{"dtype":"U8","shape":[16],"data_offsets":[0,16]},)"
                          R"("mid":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},)"
                          R"("end":{"dtype":"U8","shape":[2],"data_offsets":[10,12]}})",
                          16),
                 {"'big'", "overlapping"});
}

TEST_F(Malformed, ShapeTimesDtypeSizeMismatch) {
  expect_refused(one(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})", 8),
                 {"'w'", "[3]", "F32", "needs 12 bytes", "hold 8"});
}

TEST_F(Malformed, ShapeProductOverflows) {
  expect_refused(one(R"({"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]})", 0),
                 {"'w'", "overflows"});
  // Element count times dtype size overflows although the element count alone does not.
  expect_refused(one(R"({"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,0]})", 0),
                 {"'w'", "overflows"});
  // No elements, but the row length of this empty tensor would still overflow.
  expect_refused(one(R"({"dtype":"F32","shape":[0,4294967296,4294967296],"data_offsets":[0,0]})", 0),
                 {"'w'", "overflows"});
}

TEST_F(Malformed, MetadataNotAnObjectOfStrings) {
  expect_refused(st_bytes(R"({"__metadata__":[1]})", 0), {"__metadata__", "not an object"});
  expect_refused(st_bytes(R"({"__metadata__":{"format":1}})", 0),
                 {"__metadata__", "'format'", "not a string"});
}

TEST_F(Malformed, MissingFileAndDirectory) {
  expect_input_error([&] { SafetensorsFile::open(dir_ / "absent.safetensors"); },
                     {(dir_ / "absent.safetensors").string(), "cannot open"});
  expect_input_error([&] { SafetensorsFile::open(dir_.path()); },
                     {dir_.path().string(), "not a regular file"});
}

TEST_F(Malformed, ParseNamesTheCallersDescription) {
  const std::string bytes = "abc";
  expect_input_error(
      [&] {
        parse_safetensors_header(std::span(reinterpret_cast<const std::byte*>(bytes.data()), 3),
                                 "shard 7 of /x");
      },
      {"shard 7 of /x", "shorter than"});
}

// The edges of what is valid, so the checks above are not stricter than the format.
TEST(SafetensorsValidEdges, Accepted) {
  TempDir dir;
  const auto path = dir / "ok.safetensors";
  // No tensors at all; padding with spaces; an empty tensor sitting inside another's range; a
  // gap between tensors; integers written as such but large.
  test::write_file(path, st_bytes("{}      ", 0));
  EXPECT_TRUE(SafetensorsFile::open(path)->header().tensors.empty());
  test::write_file(path, st_bytes(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
                                  R"("e":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]},)"
                                  R"("g":{"dtype":"U8","shape":[2],"data_offsets":[10,12]}}   )",
                                  12));
  const auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->header().tensors.size(), 3u);
  EXPECT_EQ(f->read_f32("e").shape(), (Shape{0, 3}));
}

}  // namespace
}  // namespace scalpel::io
