// Dtype names and bulk conversions between storage types and fp32.
#include "scalpel/core/dtype.hpp"

#include "scalpel/core/error.hpp"

namespace scalpel {

std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f16: return 2;
    case DType::bf16: return 2;
    case DType::f64: return 8;
    case DType::i32: return 4;
    case DType::i64: return 8;
    case DType::u8: return 1;
    case DType::boolean: return 1;
  }
  return 0;
}

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f16: return "F16";
    case DType::bf16: return "BF16";
    case DType::f64: return "F64";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
    case DType::u8: return "U8";
    case DType::boolean: return "BOOL";
  }
  return "?";
}

std::optional<DType> dtype_from_safetensors(std::string_view s) {
  if (s == "F32") return DType::f32;
  if (s == "F16") return DType::f16;
  if (s == "BF16") return DType::bf16;
  if (s == "F64") return DType::f64;
  if (s == "I32") return DType::i32;
  if (s == "I64") return DType::i64;
  if (s == "U8") return DType::u8;
  if (s == "BOOL") return DType::boolean;
  return std::nullopt;
}

void convert_to_f32(DType from, const void* src, float* dst, std::size_t n) {
  switch (from) {
    case DType::f32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::f16: {
      const auto* s = static_cast<const std::uint16_t*>(src);
#pragma omp parallel for if (n > (1u << 16)) schedule(static)
      for (std::size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case DType::bf16: {
      const auto* s = static_cast<const std::uint16_t*>(src);
#pragma omp parallel for if (n > (1u << 16)) schedule(static)
      for (std::size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::f64: {
      const auto* s = static_cast<const double*>(src);
      for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]);
      return;
    }
    default:
      SCALPEL_CHECK(false, "cannot convert {} to F32", dtype_name(from));
  }
}

void convert_from_f32(DType to, const float* src, void* dst, std::size_t n) {
  switch (to) {
    case DType::f32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::f16: {
      auto* d = static_cast<std::uint16_t*>(dst);
#pragma omp parallel for if (n > (1u << 16)) schedule(static)
      for (std::size_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
    case DType::bf16: {
      auto* d = static_cast<std::uint16_t*>(dst);
#pragma omp parallel for if (n > (1u << 16)) schedule(static)
      for (std::size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::f64: {
      auto* d = static_cast<double*>(dst);
      for (std::size_t i = 0; i < n; ++i) d[i] = src[i];
      return;
    }
    default:
      SCALPEL_CHECK(false, "cannot convert F32 to {}", dtype_name(to));
  }
}

}  // namespace scalpel
