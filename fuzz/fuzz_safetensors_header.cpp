// libFuzzer target for the safetensors header parser: any bytes must either parse or be refused
// with a scalpel::Error; a crash, sanitizer report, leak or other exception is a bug.
// Seeds: fuzz/corpus/safetensors_header/.
#include <cstddef>
#include <cstdint>
#include <span>

#include "scalpel/core/error.hpp"
#include "scalpel/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto h = scalpel::io::parse_safetensors_header(
        std::span(reinterpret_cast<const std::byte*>(data), size), "fuzz input");
    // What the parser accepted must hold up: every range lies inside the data section.
    for (const auto& t : h.tensors)
      if (t.begin > t.end || h.data_start() + t.end > size) __builtin_trap();
  } catch (const scalpel::Error&) {
    // Refusing malformed input is the expected outcome.
  }
  return 0;
}
