# Third-party libraries. Everything comes from Debian packages (installed by build.sh) except
# LibTorch, which comes from PyPI's torch wheel in .venv (or a Torch_DIR / CMAKE_PREFIX_PATH the
# user gives, which wins). Machines that cannot install (the GPU machine) pass
# DSTRAIN_DEPS_PREFIX pointing at unpacked -dev packages.
find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)

pkg_check_modules(ZSTD REQUIRED IMPORTED_TARGET libzstd)

# xxHash is used header-only (XXH_INLINE_ALL), so only its header is needed.
find_path(XXHASH_INCLUDE_DIR xxhash.h REQUIRED)
add_library(ds_xxhash INTERFACE)
target_include_directories(ds_xxhash SYSTEM INTERFACE ${XXHASH_INCLUDE_DIR})
target_compile_definitions(ds_xxhash INTERFACE XXH_INLINE_ALL)

# liburing is optional: without it the pwrite thread pool serves all I/O, and logs say so.
find_path(LIBURING_INCLUDE_DIR liburing.h)
find_library(LIBURING_LIBRARY NAMES liburing.a uring)
if(LIBURING_INCLUDE_DIR AND LIBURING_LIBRARY)
  set(DSTRAIN_HAVE_LIBURING 1)
  message(STATUS "dstrain: io_uring backend enabled (${LIBURING_LIBRARY})")
else()
  set(DSTRAIN_HAVE_LIBURING 0)
  message(STATUS "dstrain: liburing not found: only the pwrite backend will be built")
endif()

set(HDF5_PREFER_PARALLEL OFF)
find_package(HDF5 REQUIRED COMPONENTS C)
find_package(nlohmann_json 3 REQUIRED)
find_package(CLI11 REQUIRED)

if(DSTRAIN_TESTS)
  find_package(GTest REQUIRED)
endif()
if(DSTRAIN_BENCH)
  find_package(benchmark QUIET)
endif()

if(DSTRAIN_ENGINE)
  if(NOT Torch_DIR AND DSTRAIN_PYTHON)
    execute_process(
      COMMAND ${DSTRAIN_PYTHON} -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
      OUTPUT_VARIABLE DSTRAIN_TORCH_PREFIX OUTPUT_STRIP_TRAILING_WHITESPACE
      RESULT_VARIABLE torch_rc ERROR_QUIET)
    if(torch_rc EQUAL 0)
      list(APPEND CMAKE_PREFIX_PATH ${DSTRAIN_TORCH_PREFIX})
    endif()
  endif()
  if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST} AND NOT TORCH_CUDA_ARCH_LIST)
    set(ENV{TORCH_CUDA_ARCH_LIST} "9.0")  # Hopper (H100/H200); quiets torch's probe here
  endif()
  find_package(Torch REQUIRED)
  # c10d's Gloo process group includes Gloo's headers; libtorch carries Gloo itself, so only
  # the headers are taken (from Debian's libgloo-dev), never its library.
  find_path(GLOO_INCLUDE_DIR gloo/config.h REQUIRED)
  # LibTorch built with CUDA: compile and link the NCCL parts too (here even without a GPU, so
  # CI proves they build). nccl.h comes from the same wheel set as torch when it can.
  if(TORCH_CUDA_LIBRARIES OR CAFFE2_USE_CUDA)
    set(DSTRAIN_TORCH_HAS_CUDA ON)
    find_path(NCCL_INCLUDE_DIR nccl.h REQUIRED
      HINTS ${TORCH_INSTALL_PREFIX}/../nvidia/nccl/include ${CUDAToolkit_INCLUDE_DIRS})
    # Our own CUDA kernels (engine/model/cross_entropy_kernels.cu) need nvcc; without it (or
    # with -DDSTRAIN_CUDA_KERNELS=OFF) the engine builds with LibTorch's kernels alone.
    option(DSTRAIN_CUDA_KERNELS "Build dstrain's own CUDA kernels where nvcc is found" ON)
    if(DSTRAIN_CUDA_KERNELS)
      include(CheckLanguage)
      check_language(CUDA)
    endif()
    if(DSTRAIN_CUDA_KERNELS AND CMAKE_CUDA_COMPILER)
      if(NOT CMAKE_CUDA_ARCHITECTURES)
        set(CMAKE_CUDA_ARCHITECTURES 90)  # Hopper (sm_90 code, and PTX for newer GPUs)
      endif()
      enable_language(CUDA)
    else()
      set(DSTRAIN_CUDA_KERNELS OFF)
    endif()
  else()
    set(DSTRAIN_TORCH_HAS_CUDA OFF)
    set(DSTRAIN_CUDA_KERNELS OFF)
  endif()
  message(STATUS "dstrain: LibTorch ${Torch_VERSION} from ${Torch_DIR} (CUDA: ${DSTRAIN_TORCH_HAS_CUDA}, own kernels: ${DSTRAIN_CUDA_KERNELS})")
endif()
