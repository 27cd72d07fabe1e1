// main() of the GoogleTest programs that run under mpiexec: MPI up, scalpel::test::g_world set,
// only rank 0 prints, and a failure on any rank fails the exit code of every rank. Include it once,
// in the test's .cpp, before the tests that use g_world (it defines main).
#pragma once
#include <gtest/gtest.h>

#include <memory>

#include "scalpel/dist/comm.hpp"

namespace scalpel::test {
inline std::unique_ptr<dist::MpiComm> g_world;
}

int main(int argc, char** argv) {
  scalpel::dist::MpiEnvironment env(&argc, &argv);
  scalpel::test::g_world = scalpel::dist::MpiComm::world();
  ::testing::InitGoogleTest(&argc, argv);
  if (scalpel::test::g_world->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int rc = RUN_ALL_TESTS();
  double worst[1] = {static_cast<double>(rc)};
  scalpel::test::g_world->allreduce_max(worst);
  scalpel::test::g_world.reset();
  return static_cast<int>(worst[0]);
}
