// Python-compatible random draws for calibration windows (see calibration.hpp).
#include "scalpel/text/calibration.hpp"

#include <fstream>

#include "scalpel/core/error.hpp"

namespace scalpel::text {

PythonRandom::PythonRandom(std::uint64_t seed) {
  // init_genrand(19650218) then init_by_array(key) with key = the seed's 32-bit words, least
  // significant first (CPython random_seed: abs(int) split into 32-bit chunks; 0 gives [0]).
  std::vector<std::uint32_t> key;
  do {
    key.push_back(static_cast<std::uint32_t>(seed & 0xffffffffu));
    seed >>= 32;
  } while (seed != 0);
  mt_[0] = 19650218u;
  for (int i = 1; i < 624; ++i) mt_[i] = 1812433253u * (mt_[i - 1] ^ (mt_[i - 1] >> 30)) + static_cast<std::uint32_t>(i);
  int i = 1;
  std::size_t j = 0;
  const std::size_t klen = key.size();
  for (std::size_t k = std::max<std::size_t>(624, klen); k > 0; --k) {
    mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1664525u)) + key[j] + static_cast<std::uint32_t>(j);
    ++i;
    ++j;
    if (i >= 624) {
      mt_[0] = mt_[623];
      i = 1;
    }
    if (j >= klen) j = 0;
  }
  for (int k = 623; k > 0; --k) {
    mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1566083941u)) - static_cast<std::uint32_t>(i);
    ++i;
    if (i >= 624) {
      mt_[0] = mt_[623];
      i = 1;
    }
  }
  mt_[0] = 0x80000000u;
  index_ = 624;
}

std::uint32_t PythonRandom::genrand_uint32() {
  if (index_ >= 624) {
    for (int k = 0; k < 624; ++k) {
      const std::uint32_t y = (mt_[k] & 0x80000000u) | (mt_[(k + 1) % 624] & 0x7fffffffu);
      mt_[k] = mt_[(k + 397) % 624] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
    }
    index_ = 0;
  }
  std::uint32_t y = mt_[index_++];
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= y >> 18;
  return y;
}

std::uint64_t PythonRandom::getrandbits(int k) {
  SCALPEL_CHECK(k >= 1 && k <= 64, "getrandbits({})", k);
  if (k <= 32) return genrand_uint32() >> (32 - k);
  // CPython fills 32-bit words least significant first; the last word keeps its top bits.
  const std::uint64_t lo = genrand_uint32();
  const std::uint64_t hi = genrand_uint32() >> (64 - k);
  return lo | (hi << 32);
}

std::int64_t PythonRandom::randint(std::int64_t a, std::int64_t b) {
  SCALPEL_CHECK(a <= b, "randint({}, {})", a, b);
  const std::uint64_t n = static_cast<std::uint64_t>(b - a) + 1;
  int k = 0;
  while ((n >> k) != 0 && k < 64) ++k;  // n.bit_length()
  std::uint64_t r = getrandbits(k);
  while (r >= n) r = getrandbits(k);
  return a + static_cast<std::int64_t>(r);
}

double PythonRandom::random() {
  const std::uint32_t a = genrand_uint32() >> 5, b = genrand_uint32() >> 6;
  return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0);
}

std::vector<std::int64_t> sample_window_offsets(std::int64_t numel, std::int64_t seqlen, std::int64_t nsamples,
                                                std::uint64_t seed, const std::string& what) {
  if (numel < seqlen + 1)
    SCALPEL_INPUT_ERROR("{}: the calibration text has {} tokens; windows of {} need at least {}", what, numel, seqlen,
                        seqlen + 1);
  PythonRandom rng(seed);
  std::vector<std::int64_t> out;
  out.reserve(static_cast<std::size_t>(nsamples));
  for (std::int64_t s = 0; s < nsamples; ++s) out.push_back(rng.randint(0, numel - seqlen - 1));
  return out;
}

std::vector<std::int64_t> read_window_offsets(const std::filesystem::path& file, std::int64_t numel,
                                              std::int64_t seqlen) {
  std::error_code ec;
  if (std::filesystem::is_directory(file, ec))
    SCALPEL_INPUT_ERROR("{}: is a folder, not a window offsets file", file.string());
  std::ifstream in(file);
  if (!in) SCALPEL_INPUT_ERROR("{}: cannot read the window offsets file", file.string());
  std::vector<std::int64_t> out;
  std::string line;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    const auto b = line.find_first_not_of(" \t\r");
    if (b == std::string::npos || line[b] == '#') continue;
    const auto e = line.find_last_not_of(" \t\r");
    const std::string tok = line.substr(b, e - b + 1);
    std::size_t pos = 0;
    long long v = -1;
    try {
      v = std::stoll(tok, &pos);
    } catch (const std::exception&) {
      pos = 0;
    }
    if (pos != tok.size() || v < 0)
      SCALPEL_INPUT_ERROR("{}:{}: '{}' is not a non-negative integer offset", file.string(), lineno, tok);
    if (v + seqlen > numel)
      SCALPEL_INPUT_ERROR("{}:{}: offset {} + seqlen {} runs past the {} tokens of the calibration text",
                          file.string(), lineno, v, seqlen, numel);
    out.push_back(v);
  }
  if (out.empty()) SCALPEL_INPUT_ERROR("{}: no offsets in the file", file.string());
  return out;
}

}  // namespace scalpel::text
