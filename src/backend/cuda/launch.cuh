// Launch shapes shared by the kernel files: grid-stride loops over n elements and one block per
// row (capped; the kernels loop over what a capped grid leaves).
#pragma once
#include <cuda_runtime.h>

#include "kernels.hpp"

namespace scalpel::cuda {

constexpr int kThreads = 256;

inline unsigned blocks_for(i64 n, int threads = kThreads) {
  const i64 b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 * 8 ? 65535 * 8 : b));
}
inline unsigned row_blocks(i64 rows) {
  return static_cast<unsigned>(rows < 65535 * 4 ? (rows < 1 ? 1 : rows) : 65535 * 4);
}

}  // namespace scalpel::cuda

#define GRID_STRIDE(i, n)                                                                     \
  for (::scalpel::cuda::i64 i = blockIdx.x * static_cast<::scalpel::cuda::i64>(blockDim.x) + \
                                threadIdx.x;                                                  \
       i < (n); i += static_cast<::scalpel::cuda::i64>(gridDim.x) * blockDim.x)
