// Order-preserving keys of floats: selections (k-th smallest, histograms) work on the 32-bit keys,
// where larger floats have larger keys. Shared by the backend's selection and the distributed one,
// which must agree bit for bit.
#pragma once
#include <cstdint>
#include <cstring>

namespace scalpel {

// Order-preserving map of non-NaN floats to unsigned keys (-0 and +0 share the key of +0, as
// they compare equal), and back.
inline std::uint32_t order_key(float f) {
  std::uint32_t b;
  std::memcpy(&b, &f, 4);
  if ((b & 0x7fffffffu) == 0) b = 0;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
inline float key_value(std::uint32_t k) {
  const std::uint32_t b = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

}  // namespace scalpel
