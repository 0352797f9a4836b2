# CPU microbenchmarks (bench/*.cpp): each prints its peer/peak ratio in the same run.
if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/bench/bench_layers.cpp)
  add_executable(bench_layers bench/bench_layers.cpp)
  target_link_libraries(bench_layers PRIVATE layer_model)
endif()
