// Shared by the plans of the two kinds of prune run (plan.cpp: layer by layer; plan_surgeon.cpp:
// LLM Surgeon's shots): units, default rates and the formatting of bytes, FLOPs and seconds.
// Private to app.
#pragma once
#include <fmt/format.h>

#include <cstdint>
#include <string>

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

}  // namespace scalpel::app::plan_detail
