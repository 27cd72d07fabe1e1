// The backends a numerical test body runs on: cpu always, cuda whenever it was built in. On a
// machine without a GPU the cuda instances report SKIPPED with the reason (they must run green
// on a GPU machine before a change to the cuda backend lands).
#pragma once
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "scalpel/backend/backend.hpp"

namespace scalpel::test {

inline std::vector<std::string> test_backends() {
  std::vector<std::string> b{"cpu"};
  if (cuda_built()) b.push_back("cuda");
  return b;
}

// The backend `name` with `threads` (cpu), or a skip of the calling test when it cannot run here.
#define SCALPEL_BACKEND_OR_SKIP(var, name, threads)                                              \
  do {                                                                                           \
    if ((name) == std::string("cuda") && ::scalpel::cuda_devices() == 0)                         \
      GTEST_SKIP() << "cuda backend: no GPU here (" << ::scalpel::cuda_status() << ")";          \
    var = ::scalpel::make_backend((name), (threads));                                            \
  } while (0)

}  // namespace scalpel::test
