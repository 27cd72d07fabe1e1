# Third-party libraries, all from Debian packages (scripts/setup.sh installs them).
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)
find_package(OpenMP REQUIRED)
find_package(MPI REQUIRED COMPONENTS C)
find_package(nlohmann_json 3 REQUIRED)
find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)
find_package(yaml-cpp REQUIRED)
find_package(HDF5 REQUIRED COMPONENTS C)
# XXH3-64 digests of checkpoint tensors: 10-17 GB/s here against 1.7 GB/s for OpenSSL SHA-256,
# so digesting a 3.6 GB OPT-175B layer costs ~0.3 s instead of ~2 s (the threat is media damage,
# not an adversary, so a non-cryptographic hash is enough).
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)
# OpenBLAS built on OpenMP shares one thread pool with our OpenMP loops; the pthread build and
# libgomp spin against each other on few cores (measured: 6x slower elementwise ops with 2
# threads). Debian installs it beside the default variant, so link it by path with an rpath.
set(SCALPEL_OPENBLAS_DIR "/usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp" CACHE PATH "OpenMP OpenBLAS")
find_library(SCALPEL_OPENBLAS_LIB openblas PATHS ${SCALPEL_OPENBLAS_DIR} NO_DEFAULT_PATH)
if(SCALPEL_OPENBLAS_LIB)
  add_library(scalpel_openblas INTERFACE)
  target_link_libraries(scalpel_openblas INTERFACE ${SCALPEL_OPENBLAS_LIB})
  target_include_directories(scalpel_openblas INTERFACE /usr/include/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp)
  # RPATH (not RUNPATH) so liblapacke's own liblapack/libopenblas lookups resolve there too.
  target_link_options(scalpel_openblas INTERFACE "LINKER:--disable-new-dtags" "LINKER:-rpath,${SCALPEL_OPENBLAS_DIR}")
  add_library(PkgConfig::OPENBLAS ALIAS scalpel_openblas)
else()
  message(WARNING "OpenMP OpenBLAS not found (apt-get install libopenblas-openmp-dev); using the default variant")
  pkg_check_modules(OPENBLAS REQUIRED IMPORTED_TARGET GLOBAL openblas)
endif()
pkg_check_modules(LAPACKE REQUIRED IMPORTED_TARGET lapacke)
pkg_check_modules(SENTENCEPIECE REQUIRED IMPORTED_TARGET sentencepiece)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
find_path(CLI11_INCLUDE_DIR CLI/CLI.hpp REQUIRED)
add_library(scalpel_cli11 INTERFACE)
target_include_directories(scalpel_cli11 INTERFACE ${CLI11_INCLUDE_DIR})
