# The CUDA toolkit: nvcc (check_language), cuBLAS, cuSOLVER and NCCL. Sets SCALPEL_HAVE_CUDA.
# Without nvcc (or with SCALPEL_CUDA=OFF) the build is the CPU build, unchanged.
set(SCALPEL_HAVE_CUDA OFF)
if(NOT SCALPEL_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # Ampere (A100) and Hopper (H100/H200) machine code; a newer GPU runs the sm_90 PTX.
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 80-real 90-real 90-virtual)
    endif()
    enable_language(CUDA)
    set(CMAKE_CUDA_STANDARD 17)  # the kernels need no more; CMake 3.25 knows no CUDA20 for nvcc
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)
    find_path(SCALPEL_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
    find_library(SCALPEL_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR})
    if(NOT SCALPEL_NCCL_INCLUDE_DIR OR NOT SCALPEL_NCCL_LIBRARY)
      message(FATAL_ERROR "CUDA found (${CMAKE_CUDA_COMPILER}) but not NCCL (nccl.h, libnccl): install NCCL or "
                          "configure with -DSCALPEL_CUDA=OFF")
    endif()
    add_library(scalpel_nccl INTERFACE)
    target_include_directories(scalpel_nccl INTERFACE ${SCALPEL_NCCL_INCLUDE_DIR})
    target_link_libraries(scalpel_nccl INTERFACE ${SCALPEL_NCCL_LIBRARY} CUDA::cudart)
    set(SCALPEL_HAVE_CUDA ON)
    message(STATUS "scalpel: CUDA backend ON (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures "
                   "${CMAKE_CUDA_ARCHITECTURES}, NCCL ${SCALPEL_NCCL_LIBRARY})")
  elseif(SCALPEL_CUDA STREQUAL "ON")
    message(FATAL_ERROR "SCALPEL_CUDA=ON but no CUDA compiler was found (is nvcc on PATH or CUDACXX set?)")
  else()
    message(STATUS "scalpel: CUDA backend OFF (no nvcc found)")
  endif()
endif()
