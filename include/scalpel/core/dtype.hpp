// Element types of stored and computed tensors, and the f16/bf16 <-> f32 conversions that turn
// checkpoint storage into fp32 compute.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace scalpel {

enum class DType : std::uint8_t { f32, f16, bf16, f64, i32, i64, u8, boolean };

std::size_t dtype_size(DType t);
// The 2-byte float types a forward may run in (fp16, bf16).
inline bool low_precision(DType t) { return t == DType::f16 || t == DType::bf16; }
std::string_view dtype_name(DType t);  // "F32", "F16", ... (safetensors spelling)
std::optional<DType> dtype_from_safetensors(std::string_view s);

inline float f16_to_f32(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t man = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        man <<= 1;
      } while ((man & 0x400u) == 0);
      bits = sign | (static_cast<std::uint32_t>(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even, with overflow to inf and NaN preserved.
inline std::uint16_t f32_to_f16(float f) {
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  const std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) return sign | (absx > 0x7f800000u ? 0x7e00u : 0x7c00u);
  if (absx >= 0x477ff000u) return sign | 0x7c00u;  // rounds past 65504
  if (absx < 0x38800000u) {                        // subnormal or zero in f16
    if (absx < 0x33000000u) return sign;
    const std::uint32_t man = (absx & 0x7fffffu) | 0x800000u;
    const int shift = 126 - static_cast<int>(absx >> 23);  // 14..24
    std::uint32_t r = man >> shift;
    const std::uint32_t rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return sign | static_cast<std::uint16_t>(r);
  }
  std::uint32_t r = absx - 0x38000000u;  // rebias exponent 127 -> 15
  const std::uint32_t rem = r & 0x1fffu;
  r >>= 13;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return sign | static_cast<std::uint16_t>(r);
}

inline float bf16_to_f32(std::uint16_t h) {
  const std::uint32_t bits = static_cast<std::uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline std::uint16_t f32_to_bf16(float f) {
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>(x >> 16);
}

// v rounded to t's precision and widened back (the identity for f32).
inline float round_to(DType t, float v) {
  if (t == DType::f16) return f16_to_f32(f32_to_f16(v));
  if (t == DType::bf16) return bf16_to_f32(f32_to_bf16(v));
  return v;
}

// Converts n elements of `src` (of type `from`) into fp32.
void convert_to_f32(DType from, const void* src, float* dst, std::size_t n);
// Converts n fp32 values into `to` storage (f32, f16, bf16).
void convert_from_f32(DType to, const float* src, void* dst, std::size_t n);

}  // namespace scalpel
