// Per-device execution context: one stream, the cuBLASLt handle with its workspace, a
// scratch arena for layers' temporaries, the cache of chosen GEMM algorithms and one
// device status word that kernels use to report invalid inputs (bad token ids).
// All work of a context is ordered on its stream; nothing here synchronizes unless
// asked (sync(), or a function documented to).
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>

#include "core/cuda/arena.h"

namespace hysim::cuda {

// Number of usable CUDA devices; 0 when there is no driver or no device (never throws).
int device_count();
// "NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.1 GiB"
std::string device_summary(int device = 0);

class Context {
 public:
  // cuBLASLt workspace: NVIDIA recommends 32 MiB on Hopper.
  static constexpr size_t kLtWorkspaceBytes = size_t(32) << 20;

  explicit Context(size_t scratch_bytes = size_t(256) << 20, int device = 0);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  void sync();  // wait for all work on the stream; surfaces asynchronous kernel errors

  int device = 0;
  cudaStream_t stream = nullptr;
  cublasLtHandle_t lt = nullptr;
  void* lt_workspace = nullptr;
  DeviceArena scratch;
  // Kernels report the first invalid input here with atomicMin on a packed
  // (position << 32 | value) word; ~0 means none. Read and reset by its user.
  unsigned long long* status = nullptr;
  // GEMM algorithm per problem (shapes, layouts, types, alignment), chosen once by
  // cuBLASLt's heuristic (see core/cuda/gemm.cpp).
  std::unordered_map<std::string, cublasLtMatmulHeuristicResult_t> gemm_algos;
};

}  // namespace hysim::cuda
