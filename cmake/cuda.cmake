# CUDA backend (HYSIM_CUDA=ON, preset `cuda`): core/cuda runtime + GEMMs, each layer's
# layers/<name>.cu as layer_<name>_cuda, GPU tests (ctest label `gpu`) and GPU benchmarks.
# Built here (no GPU needed), run on the GPU machine by scripts/gpu_test.
if(HYSIM_CUDA)
  # CMake 3.25 knows nvcc's flags only up to C++17; nvcc 12+ takes -std=c++20 (and has
  # no GNU dialects, hence extensions off).
  set(CMAKE_CUDA_EXTENSIONS OFF)
  if(NOT DEFINED CMAKE_CUDA20_STANDARD_COMPILE_OPTION OR CMAKE_CUDA20_STANDARD_COMPILE_OPTION STREQUAL "")
    set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
  endif()
  # The project's warning/arch flags (add_compile_options) are host-compiler flags that
  # nvcc rejects; pass them to CUDA sources through -Xcompiler instead.
  function(hysim_cuda_host_flags tgt)
    get_target_property(opts ${tgt} COMPILE_OPTIONS)
    if(NOT opts)
      return()
    endif()
    set(fixed)
    foreach(o ${opts})
      list(APPEND fixed "$<$<COMPILE_LANGUAGE:CUDA>:SHELL:-Xcompiler ${o}>" "$<$<NOT:$<COMPILE_LANGUAGE:CUDA>>:${o}>")
    endforeach()
    set_property(TARGET ${tgt} PROPERTY COMPILE_OPTIONS ${fixed})
  endfunction()

  file(GLOB HYSIM_CUDA_SRCS CONFIGURE_DEPENDS core/cuda/*.cu core/cuda/*.cpp)
  add_library(hysim_cuda STATIC ${HYSIM_CUDA_SRCS})
  target_link_libraries(hysim_cuda PUBLIC hysim_core CUDA::cudart CUDA::cublasLt)
  hysim_cuda_host_flags(hysim_cuda)

  # layer_<name>_cuda: layers/<name>.cu on top of the CPU layer (its header and config).
  function(hysim_layer_cuda name)
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/layers/${name}.cu)
      return()
    endif()
    add_library(layer_${name}_cuda STATIC layers/${name}.cu)
    target_link_libraries(layer_${name}_cuda PUBLIC hysim_cuda layer_${name})
    hysim_cuda_host_flags(layer_${name}_cuda)
  endfunction()
  foreach(l rmsnorm swiglu_mlp embedding lm_head attention)
    hysim_layer_cuda(${l})
  endforeach()

  # GPU tests: tests/test_cuda_<name>.cpp, label gpu; each exits 0 with a skip message
  # when no GPU is present.
  function(hysim_cuda_test name)
    cmake_parse_arguments(T "" "" "LIBS" ${ARGN})
    set(src ${CMAKE_CURRENT_SOURCE_DIR}/tests/test_cuda_${name}.cpp)
    if(NOT EXISTS ${src})
      return()
    endif()
    add_executable(test_cuda_${name} ${src})
    target_link_libraries(test_cuda_${name} PRIVATE ${T_LIBS} hysim_cuda doctest::doctest)
    add_test(NAME cuda_${name} COMMAND test_cuda_${name})
    set_tests_properties(cuda_${name} PROPERTIES LABELS gpu ENVIRONMENT "OMP_NUM_THREADS=2")
  endfunction()
  hysim_cuda_test(runtime)
  hysim_cuda_test(rmsnorm LIBS layer_rmsnorm_cuda)
  hysim_cuda_test(swiglu_mlp LIBS layer_swiglu_mlp_cuda)
  hysim_cuda_test(embedding LIBS layer_embedding_cuda)
  hysim_cuda_test(lm_head LIBS layer_lm_head_cuda)
  hysim_cuda_test(attention LIBS layer_attention_cuda)

  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/bench/gpu/bench_gemm.cpp)
    add_executable(bench_gpu_gemm bench/gpu/bench_gemm.cpp)
    target_link_libraries(bench_gpu_gemm PRIVATE layer_swiglu_mlp_cuda layer_rmsnorm_cuda)
  endif()
  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/bench/gpu/bench_attention.cpp)
    add_executable(bench_gpu_attention bench/gpu/bench_attention.cpp)
    target_link_libraries(bench_gpu_attention PRIVATE layer_attention_cuda)
  endif()
endif()
