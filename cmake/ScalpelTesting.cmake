# Test helpers. scalpel_add_test(NAME SOURCES... LIBS ...) builds one GoogleTest executable and
# registers it with CTest; scalpel_add_mpi_test(NAME RANKS n... ) registers an executable again at
# several rank counts, as heFFTe does, so one test body checks rank-count invariance.
find_package(GTest REQUIRED)
include(GoogleTest)

function(scalpel_add_test name)
  cmake_parse_arguments(T "" "" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gtest GTest::gtest_main)
  target_compile_definitions(${name} PRIVATE
    SCALPEL_SHARED_DIR="${SCALPEL_SHARED_DIR}" SCALPEL_SOURCE_DIR="${SCALPEL_SOURCE_DIR}")
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES LABELS "${T_LABELS}")
endfunction()

# Runs `mpiexec -n R <command...>` for each R in RANKS. The command is an executable target or path.
function(scalpel_add_mpi_test name)
  cmake_parse_arguments(T "" "TIMEOUT" "RANKS;COMMAND;LABELS" ${ARGN})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  foreach(r IN LISTS T_RANKS)
    add_test(NAME ${name}.np${r}
      COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${r} --oversubscribe ${MPIEXEC_PREFLAGS}
              ${T_COMMAND} ${MPIEXEC_POSTFLAGS})
    set_tests_properties(${name}.np${r} PROPERTIES TIMEOUT ${T_TIMEOUT} PROCESSORS ${r}
      LABELS "mpi;${T_LABELS}"
      ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_rmaps_base_oversubscribe=1")
  endforeach()
endfunction()
