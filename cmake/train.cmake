# The trainer (core/trainer.cpp) and the hysim CLI (experiments/main.cpp).
if(TARGET hysim_config AND TARGET hysim_io AND TARGET hysim_data AND TARGET hysim_tasks)
  add_library(hysim_train STATIC core/trainer.cpp)
  target_link_libraries(hysim_train PUBLIC layer_model hysim_config hysim_io hysim_data hysim_tasks)
  add_executable(hysim experiments/main.cpp experiments/expressivity.cpp)
  target_link_libraries(hysim PRIVATE hysim_train)
  hysim_test(trainer LIBS hysim_train)
  if(TARGET test_trainer)
    target_compile_definitions(test_trainer PRIVATE HYSIM_SOURCE_DIR="${CMAKE_CURRENT_SOURCE_DIR}"
                                              HYSIM_BIN="$<TARGET_FILE:hysim>")
    add_dependencies(test_trainer hysim)
  endif()
endif()
