# Configuration (INI + command-line overrides, validation) and model accounting
# (parameter counts, FLOPs, memory): core/config.{h,cpp}, scaling/accounting.{h,cpp}.
add_library(hysim_config STATIC core/config.cpp scaling/accounting.cpp)
target_link_libraries(hysim_config PUBLIC hysim_core Boost::program_options)

hysim_test(config LIBS hysim_config)
hysim_test(accounting LIBS hysim_config)
# the tests read experiments/configs/*.ini from the source tree
foreach(t test_config test_accounting)
  if(TARGET ${t})
    target_compile_definitions(${t} PRIVATE HYSIM_SOURCE_DIR="${CMAKE_CURRENT_SOURCE_DIR}")
  endif()
endforeach()
