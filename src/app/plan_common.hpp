// Shared by the plans of the kinds of run (plan.cpp: a prune layer by layer; plan_surgeon.cpp: LLM
// Surgeon's shots; plan_depth.cpp: scalpel depth): units, default rates and the formatting of bytes,
// FLOPs and seconds.
// Private to app.
#pragma once
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <thread>

#include "scalpel/app/plan.hpp"
#include "scalpel/model/spec.hpp"

namespace scalpel::app::plan_detail {

inline constexpr double kGB = 1e9;                 // GB are SI: parallel.memory_gb 80 = 80e9 bytes
inline constexpr double kCpuGflopsPerThread = 95;  // DESIGN.md section 9: sgemm 190 GFLOP/s on 2 cores
inline constexpr double kCudaGflops = 19500;       // A100 FP32 peak without TF32

inline std::string bytes_str(double b) {
  if (b < 1e3) return fmt::format("{:.0f} B", b);
  if (b < 1e6) return fmt::format("{:.1f} kB", b / 1e3);
  if (b < 1e9) return fmt::format("{:.1f} MB", b / 1e6);
  if (b < 1e12) return fmt::format("{:.2f} GB", b / 1e9);
  return fmt::format("{:.2f} TB", b / 1e12);
}

inline std::string flops_str(double f) {
  if (f <= 0) return "0";
  if (f < 1e9) return fmt::format("{:.1f} MFLOP", f / 1e6);
  if (f < 1e12) return fmt::format("{:.1f} GFLOP", f / 1e9);
  if (f < 1e15) return fmt::format("{:.1f} TFLOP", f / 1e12);
  return fmt::format("{:.2f} PFLOP", f / 1e15);
}

inline std::string seconds_str(double s) {
  if (s <= 0) return "0 s";
  if (s < 1e-3) return fmt::format("{:.0f} us", s * 1e6);
  if (s < 1) return fmt::format("{:.1f} ms", s * 1e3);
  if (s < 120) return fmt::format("{:.2f} s", s);
  if (s < 7200) return fmt::format("{:.1f} min", s / 60);
  return fmt::format("{:.2f} h", s / 3600);
}

// FLOP rate per rank of the whole-model plans (LLM Surgeon, depth): --gflops, the CUDA default, or
// the CPU's per-thread rate times the threads a rank gets (config threads, else the cores split
// over the ranks); `note` says which.
inline double rank_gflops(const Config& cfg, const PlanInput& in, std::string& note) {
  if (in.gflops > 0) {
    note = "given";
    return in.gflops;
  }
  if (cfg.device == "cuda") {
    note = "cuda default: an A100's FP32 peak without TF32";
    return kCudaGflops;
  }
  const int cores = std::max(1u, std::thread::hardware_concurrency());
  const int threads = cfg.threads > 0 ? cfg.threads : std::max(1, cores / std::min(cores, in.world));
  note = fmt::format("cpu default: {} GFLOP/s x {} thread(s)", kCpuGflopsPerThread, threads);
  return kCpuGflopsPerThread * threads;
}

// A backward pass's activations (model::Model::backward, fp32) for batches of B windows of T
// tokens: every layer's forward intermediates kept when they and `kept_extra` (what a caller keeps
// alongside, per layer pass) fit in keep_mb, else each layer's input and one layer's
// intermediates (recomputed); plus a window's logits and the residual stream and its gradient.
struct BackwardActivations {
  std::int64_t layer_cache = 0, bytes = 0;
  bool keep = false;
};
inline BackwardActivations backward_activations(const model::ModelSpec& spec, std::int64_t B, std::int64_t T,
                                                std::int64_t keep_mb, std::int64_t kept_extra = 0) {
  using I = std::int64_t;
  const I d = spec.hidden, L = spec.layers;
  const I qdim = spec.heads * spec.head_dim, kvdim = spec.kv_heads * spec.head_dim;
  // As Model::layer_cache_bytes counts them.
  const I cache_floats = B * T * d * (spec.pre_norm ? 4 : 6) + 2 * B * T * qdim + 2 * B * T * kvdim +
                         B * spec.heads * T * T + B * T * spec.ffn * (spec.family == model::Family::llama ? 3 : 2);
  BackwardActivations a;
  a.layer_cache = cache_floats * 4;
  a.keep = L * a.layer_cache + kept_extra <= (keep_mb << 20);
  a.bytes = (a.keep ? L * a.layer_cache + kept_extra : L * B * T * d * 4 + a.layer_cache) + T * spec.vocab_size * 4 +
            2 * B * T * d * 4;
  return a;
}

}  // namespace scalpel::app::plan_detail
