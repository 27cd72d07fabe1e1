// Calibration windows: nsamples windows of seqlen tokens drawn from a tokenized text exactly as the
// SparseGPT and Wanda loaders draw them (Python's random.seed(seed), then random.randint(0,
// numel - seqlen - 1) per window), or read from a file of start offsets, so that a run can
// reproduce the calibration set of another tool or paper run.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace scalpel::text {

// CPython's random.Random: MT19937 seeded with init_by_array over the seed's 32-bit words, and
// randint via getrandbits with rejection, reproducing Python's draws bit for bit.
class PythonRandom {
 public:
  explicit PythonRandom(std::uint64_t seed);
  std::uint32_t genrand_uint32();
  std::uint64_t getrandbits(int k);                       // 1 <= k <= 64
  std::int64_t randint(std::int64_t a, std::int64_t b);  // a <= x <= b
  double random();                                       // [0, 1), 53 bits

 private:
  std::uint32_t mt_[624];
  int index_ = 624;
};

// Start offsets of `nsamples` windows of `seqlen` tokens in a text of `numel` tokens, drawn as
// SparseGPT's get_wikitext2 does. Input Error when the text is shorter than seqlen + 1 tokens.
std::vector<std::int64_t> sample_window_offsets(std::int64_t numel, std::int64_t seqlen, std::int64_t nsamples,
                                                std::uint64_t seed, const std::string& what);

// Reads one start offset per line (blank lines and lines starting with '#' are skipped); each must
// leave room for seqlen tokens. Input Error naming the file and line otherwise.
std::vector<std::int64_t> read_window_offsets(const std::filesystem::path& file, std::int64_t numel,
                                              std::int64_t seqlen);

}  // namespace scalpel::text
