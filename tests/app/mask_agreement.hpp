// The fraction of mask entries on which two prunes of the same model agree, read from their
// checkpoints (the first `layers` layers, every pruned tensor). For the tests that compare a
// low-precision or GPU prune with another.
#pragma once
#include <filesystem>

#include "scalpel/io/checkpoint.hpp"
#include "scalpel/io/checkpoint_shard.hpp"

namespace scalpel_test {

inline double mask_agreement(const std::filesystem::path& a_ckpt, const std::filesystem::path& b_ckpt,
                             std::int64_t layers) {
  const auto ca = scalpel::io::Checkpoint::open_read(a_ckpt);
  const auto cb = scalpel::io::Checkpoint::open_read(b_ckpt);
  std::int64_t same = 0, total = 0;
  for (std::int64_t l = 0; l < layers; ++l) {
    const auto la = ca.read_layer(l), lb = cb.read_layer(l);
    for (const auto& t : la.tensors) {
      const auto n = t.data.numel();
      const auto ma = scalpel::io::unpack_mask(t.packed_mask, n);
      const auto mb = scalpel::io::unpack_mask(lb.at(t.name).packed_mask, n);
      for (std::int64_t i = 0; i < n; ++i) same += ma[i] == mb[i];
      total += n;
    }
  }
  return total ? static_cast<double>(same) / static_cast<double>(total) : 0.0;
}

}  // namespace scalpel_test
