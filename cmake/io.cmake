# HDF5 I/O: generic file/group/dataset wrappers, checkpoints, run results (issue 4).
add_library(hysim_io STATIC core/hdf5_io.cpp core/checkpoint.cpp core/results.cpp)
target_include_directories(hysim_io PUBLIC ${HDF5_INCLUDE_DIRS})
target_link_libraries(hysim_io PUBLIC hysim_core ${HDF5_C_LIBRARIES})

hysim_test(hdf5_io LIBS hysim_io)
hysim_test(checkpoint LIBS hysim_io)
hysim_test(results LIBS hysim_io)
if(TARGET test_results)
  # test_results runs scripts/read_results.py (skipped when python3 has no h5py).
  target_compile_definitions(test_results PRIVATE HYSIM_SOURCE_DIR="${CMAKE_CURRENT_SOURCE_DIR}")
endif()
