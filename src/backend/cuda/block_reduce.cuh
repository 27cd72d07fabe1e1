// Block-wide sums and maxima for the row kernels: warp shuffles, then one warp over the warps'
// results. Every thread of the block must call them (they synchronise) and gets the result. The
// order of the additions is fixed by the block shape, so results repeat bit for bit.
#pragma once
#include <cuda_runtime.h>

namespace scalpel::cuda {

template <class T, class Op>
__device__ T block_reduce(T v, Op op, T identity) {
  __shared__ T part[32];
  __shared__ T result;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
  __syncthreads();  // part[] may still be read by a previous call
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? part[lane] : identity;
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
    if (lane == 0) result = v;
  }
  __syncthreads();
  return result;
}

struct SumOp {
  template <class T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

__device__ inline double block_sum(double v) { return block_reduce(v, SumOp{}, 0.0); }
__device__ inline float block_sum_f(float v) { return block_reduce(v, SumOp{}, 0.0f); }
__device__ inline float block_max(float v) { return block_reduce(v, MaxOp{}, -INFINITY); }

}  // namespace scalpel::cuda
