// Path relations the commands check before they write (an export inside its own checkpoint, a
// run folder inside an export): component by component, on paths the caller has normalised
// (lexically, or resolved through links) as its check needs.
#pragma once

#include <filesystem>

namespace scalpel {

// True when `inner` is `outer` or lies inside it, comparing whole components ("a/bc" is not
// inside "a/b"); a trailing separator of `outer` (an empty last component) is ignored.
inline bool path_within(const std::filesystem::path& outer, const std::filesystem::path& inner) {
  auto oi = outer.begin(), ii = inner.begin();
  for (; oi != outer.end() && !oi->empty(); ++oi, ++ii)
    if (ii == inner.end() || *oi != *ii) return false;
  return true;
}

}  // namespace scalpel
