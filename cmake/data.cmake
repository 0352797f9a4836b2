# Data sources (task interface, text and token-shard readers), AdamW and learning-rate
# schedules (issue 4): synthetic_tasks/{task.h,text_data,token_shards}, core/{optimizer,schedule}.
add_library(hysim_data STATIC synthetic_tasks/text_data.cpp synthetic_tasks/token_shards.cpp
            core/optimizer.cpp core/schedule.cpp)
target_link_libraries(hysim_data PUBLIC hysim_core)

hysim_test(data LIBS hysim_data)
hysim_test(optimizer LIBS hysim_data)
hysim_test(schedule LIBS hysim_data)
if(TARGET test_data)
  # test_data also reads data/tinyshakespeare.txt from the source tree
  target_compile_definitions(test_data PRIVATE HYSIM_SOURCE_DIR="${CMAKE_CURRENT_SOURCE_DIR}")
endif()
