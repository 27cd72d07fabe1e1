// Calibration windows: the Python-compatible generator against draws made with CPython 3.11's
// `random` module (an independent implementation), and the offsets file reader.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "scalpel/core/error.hpp"
#include "scalpel/text/calibration.hpp"

namespace scalpel::text {
namespace {

// Expected values printed by CPython 3.11:
//   random.seed(0); [random.randint(0, 100000-512-1) for _ in range(5)]
//   random.seed(12345678901); [random.randint(0, 2**40) for _ in range(3)], random.random()
//   random.seed(7); random.getrandbits(40), random.getrandbits(64)
TEST(Calibration, MatchesCPythonRandom) {
  EXPECT_EQ(sample_window_offsets(100000, 512, 5, 0, "t"),
            (std::vector<std::int64_t>{50494, 99346, 55125, 5306, 33936}));
  PythonRandom big(12345678901ull);  // a seed wider than 32 bits: two key words
  EXPECT_EQ(big.randint(0, std::int64_t{1} << 40), 779037448238);
  EXPECT_EQ(big.randint(0, std::int64_t{1} << 40), 456872185470);
  EXPECT_EQ(big.randint(0, std::int64_t{1} << 40), 598501690241);
  EXPECT_DOUBLE_EQ(big.random(), 0.5242446845468234);
  PythonRandom seven(7);
  EXPECT_EQ(seven.getrandbits(40), 1040772936760u);
  EXPECT_EQ(seven.getrandbits(64), 7283207964119141687u);
}

TEST(Calibration, TooShortTextIsAnInputError) {
  EXPECT_THROW(sample_window_offsets(512, 512, 4, 0, "calib.txt"), Error);
}

TEST(Calibration, OffsetsFileIsReadAndChecked) {
  const auto dir = std::filesystem::temp_directory_path() / ("scalpel_offsets_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "ok.txt") << "# from a paper run\n0\n\n17\n  4000 \n";
  EXPECT_EQ(read_window_offsets(dir / "ok.txt", 5000, 1000), (std::vector<std::int64_t>{0, 17, 4000}));
  std::ofstream(dir / "past.txt") << "10\n4500\n";
  try {
    read_window_offsets(dir / "past.txt", 5000, 1000);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("past.txt:2"), std::string::npos) << e.what();
  }
  std::ofstream(dir / "bad.txt") << "12x\n";
  EXPECT_THROW(read_window_offsets(dir / "bad.txt", 5000, 10), Error);
  EXPECT_THROW(read_window_offsets(dir / "missing.txt", 5000, 10), Error);
  // A folder opened as a file read as empty: "no offsets in the file".
  try {
    read_window_offsets(dir, 5000, 10);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is a folder, not a window offsets file"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace scalpel::text
