# Synthetic tasks for the expressivity experiments (issue 5): state tracking, recall,
# combined; the registry builds them by name from "key=value" arguments.
add_library(hysim_tasks STATIC synthetic_tasks/tasks.cpp synthetic_tasks/state_tracking.cpp
            synthetic_tasks/recall.cpp synthetic_tasks/combined.cpp synthetic_tasks/registry.cpp)
target_link_libraries(hysim_tasks PUBLIC hysim_data)

hysim_test(tasks LIBS hysim_tasks)
