# Writes a header defining NAME as the commit the build is made from (git describe --always
# --dirty; "unknown" outside a git checkout), rewriting it only when it changed, so that the
# benchmarks' JSON results and `scalpel --version` name their commit without rebuilding on every
# build. Run as: cmake -DSRC=<source dir> -DOUT=<header> -DNAME=<macro> -P commit_id.cmake
execute_process(COMMAND git -C "${SRC}" describe --always --dirty --abbrev=12
                OUTPUT_VARIABLE commit OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE failed)
if(failed OR commit STREQUAL "")
  set(commit "unknown")
endif()
set(text "#pragma once\n#define ${NAME} \"${commit}\"\n")
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
endif()
if(NOT old STREQUAL text)
  file(WRITE "${OUT}" "${text}")
endif()
