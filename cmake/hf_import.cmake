# Import of HuggingFace OlmoHybridForCausalLM weights into hysim checkpoints
# (core/hf_import.{h,cpp}); its test compares hysim's logits with HF's on the fixtures
# tests/fixtures/olmo_hybrid_tiny_{rope,nope}.h5 (scripts/hf_fixture.py, scripts/npz_to_h5.py).
add_library(hysim_hf_import STATIC core/hf_import.cpp)
target_link_libraries(hysim_hf_import PUBLIC hysim_io hysim_config layer_model)

hysim_test(hf_import LIBS hysim_hf_import)
if(TARGET test_hf_import)
  target_compile_definitions(test_hf_import PRIVATE HYSIM_SOURCE_DIR="${CMAKE_CURRENT_SOURCE_DIR}")
endif()
