// Helpers for the text tests: a self-deleting temporary folder, file writing, the shared-data
// paths, and a tiny byte-level BPE vocabulary built from GPT-2's byte alphabet.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "scalpel/core/error.hpp"
#include "scalpel/text/bpe.hpp"
#include "scalpel/text/unicode.hpp"

namespace scalpel::text {
namespace fs = std::filesystem;  // for the test files, which live in scalpel::text
}

namespace scalpel::text::testing {

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("scalpel_text_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

inline void write_file(const fs::path& p, const std::string& content) {
  std::ofstream out(p, std::ios::binary);
  out << content;
  ASSERT_TRUE(out.good()) << p;
}

inline std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline fs::path shared_dir() { return fs::path(SCALPEL_SHARED_DIR); }

// GPT-2's vocabulary string for a run of bytes.
inline std::string byte_level(std::string_view bytes) {
  std::string out;
  for (unsigned char b : bytes) append_utf8(out, gpt2_byte_to_char(b));
  return out;
}

// Runs `f`, expecting an input Error whose message contains every one of `needles`.
template <class F>
void expect_input_error(F&& f, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "expected an input Error mentioning " << (needles.empty() ? "" : needles[0]);
  } catch (const scalpel::Error& e) {
    EXPECT_EQ(e.kind(), scalpel::ErrorKind::input) << e.what();
    for (const auto& n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << "'" << n << "' not in: " << e.what();
  }
}

}  // namespace scalpel::text::testing
