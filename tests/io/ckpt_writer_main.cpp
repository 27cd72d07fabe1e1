// Test helper for the SIGKILL tests: writes a checkpoint of N layers of deterministic tensors the
// way a prune does (W writers' row slices per layer, then the commit), resuming at
// first_uncommitted(). The test kills it at random instants or has it kill itself at a named
// durability point, reruns it, and compares the result with an uninterrupted run.
//
//   ckpt_writer DIR LAYERS WRITERS SLEEP_US [--crash-at POINT:N]
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "scalpel/core/error.hpp"
#include "scalpel/io/checkpoint.hpp"

namespace {

using scalpel::DType;
using scalpel::Shape;
using scalpel::Tensor;
using nlohmann::json;

// The tensors of a layer: F16 and F32 (and one BF16 without mask), shapes whose column counts
// are not multiples of 8 so mask slices start mid-byte, big enough that a write takes a while.
struct Spec {
  const char* name;
  DType dtype;
  std::int64_t rows, cols;
  bool mask;
};
constexpr Spec kSpecs[] = {
    {"self_attn.q_proj.weight", DType::f16, 96, 77, true},
    {"self_attn.o_proj.weight", DType::bf16, 77, 96, false},
    {"mlp.fc1.weight", DType::f32, 192, 77, true},
    {"mlp.fc2.weight", DType::f32, 77, 192, true},
};

std::uint64_t mix(std::uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Element (r, c) of tensor t of layer l depends only on (l, t, r, c), so any split of the rows
// among writers yields the same whole tensor. About half the weights are pruned (exact zeros).
std::vector<scalpel::io::TensorRecord> layer_records(std::int64_t l, std::int64_t w, std::int64_t writers) {
  std::vector<scalpel::io::TensorRecord> out;
  for (std::size_t t = 0; t < std::size(kSpecs); ++t) {
    const Spec& s = kSpecs[t];
    const std::int64_t r0 = s.rows * w / writers, r1 = s.rows * (w + 1) / writers;
    Tensor f = Tensor::empty({r1 - r0, s.cols});
    std::vector<std::uint8_t> keep(static_cast<std::size_t>((r1 - r0) * s.cols));
    for (std::int64_t r = r0; r < r1; ++r)
      for (std::int64_t c = 0; c < s.cols; ++c) {
        const std::uint64_t h = mix((static_cast<std::uint64_t>(l) << 40) ^ (t << 32) ^ (r << 16) ^ c);
        const bool kept = (h >> 63) != 0;
        const float v = kept ? static_cast<float>(static_cast<std::int64_t>(h % 20001) - 10000) / 4096.0f : 0.0f;
        f.f32()[(r - r0) * s.cols + c] = v;
        keep[(r - r0) * s.cols + c] = kept;
      }
    scalpel::io::TensorRecord rec;
    rec.name = s.name;
    rec.data = f;
    if (s.dtype != DType::f32) {
      rec.data = Tensor::empty(f.shape(), s.dtype);
      scalpel::convert_from_f32(s.dtype, f.f32(), rec.data.raw(), static_cast<std::size_t>(f.numel()));
    }
    if (s.mask) rec.packed_mask = scalpel::io::pack_mask(keep);
    rec.row_begin = r0;
    rec.row_end = r1;
    rec.total_rows = s.rows;
    rec.metrics = {{"kept", std::count(keep.begin(), keep.end(), 1)}};
    out.push_back(std::move(rec));
  }
  return out;
}

std::string g_crash_point;
long g_crash_count = 0;

// Raises SIGKILL at the N-th time the checkpoint code passes g_crash_point: no destructor, no
// flush, no atexit runs, exactly as if the node died there (minus the page cache loss).
void crash_hook(std::string_view point) {
  if (point == g_crash_point && --g_crash_count == 0) ::raise(SIGKILL);
}

void pause_us(long us) {
  if (us > 0) std::this_thread::sleep_for(std::chrono::microseconds(us));
}

}  // namespace

int main(int argc, char** argv) {
  using namespace scalpel;
  using namespace scalpel::io;
  if (argc != 5 && argc != 7) {
    std::fprintf(stderr, "usage: %s DIR LAYERS WRITERS SLEEP_US [--crash-at POINT:N]\n", argv[0]);
    return 64;
  }
  const std::string dir = argv[1];
  const std::int64_t layers = std::atoll(argv[2]);
  const std::int64_t writers = std::atoll(argv[3]);
  const long sleep_us = std::atol(argv[4]);
  if (argc == 7) {
    const std::string spec = argv[6];
    const auto colon = spec.rfind(':');
    if (std::strcmp(argv[5], "--crash-at") != 0 || colon == std::string::npos) {
      std::fprintf(stderr, "bad option %s %s\n", argv[5], argv[6]);
      return 64;
    }
    g_crash_point = spec.substr(0, colon);
    g_crash_count = std::atol(spec.c_str() + colon + 1);
    detail::set_crash_hook(crash_hook);
  }
  try {
    // The grid varies between reruns (a resume at another writer count); the identity does not.
    CheckpointIdentity id{"kill-test-model", "xxh3:00000000000000aa", "cfg-kill-test",
                          {{"stages", 1}, {"data", writers}}, layers};
    Checkpoint ckpt = Checkpoint::open_or_create(dir, id);
    for (std::int64_t l = ckpt.first_uncommitted(); l < layers; ++l) {
      std::vector<ShardInfo> shards;
      for (std::int64_t w = 0; w < writers; ++w) {
        pause_us(sleep_us);
        shards.push_back(ckpt.write_layer_shard(l, w, layer_records(l, w, writers),
                                                {{"writer", w}, {"of", writers}}));
      }
      pause_us(sleep_us);
      // Deterministic and independent of the writer count, like a real layer's error metric.
      ckpt.commit_layer(l, shards, {{"layer", l}, {"error", static_cast<double>(mix(l) % 1000) / 7.0}});
    }
    if (!ckpt.complete()) ckpt.mark_complete({{"layers", layers}});
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "ckpt_writer: %s (%s)\n", e.what(), e.where().c_str());
    return 1;
  }
}
