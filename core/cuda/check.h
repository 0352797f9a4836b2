// Error checks for CUDA runtime and cuBLASLt calls. A failure throws std::runtime_error
// whose message names the failing call as written, file:line, the library's own error
// string and, where the caller passes one, the shapes involved:
//
//   CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s));
//   CUBLAS_CHECK(cublasLtMatmul(...), shape_str("linear_forward", N, I, O));
//   CUDA_CHECK_LAUNCH("rmsnorm_forward", shape_str("N,C", N, C));   // after a <<<>>> launch
//
// Host-only header: usable from .cpp files compiled without nvcc.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

namespace hysim::cuda {

// "what [a, b, c]": shapes for error messages.
inline std::string shape_str(const std::string& what, std::initializer_list<int64_t> dims) {
  std::string s = what + " [";
  bool first = true;
  for (int64_t d : dims) {
    if (!first) s += ", ";
    s += std::to_string(d);
    first = false;
  }
  return s + "]";
}
template <class... D> std::string shape_str(const std::string& what, D... dims) {
  return shape_str(what, {int64_t(dims)...});
}

[[noreturn]] inline void throw_cuda_error(const char* call, const char* file, int line, const std::string& err,
                                          const std::string& shapes) {
  std::string msg = std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " + err;
  if (!shapes.empty()) msg += " (" + shapes + ")";
  throw std::runtime_error(msg);
}

inline void check_cuda(cudaError_t e, const char* call, const char* file, int line, const std::string& shapes = {}) {
  if (e != cudaSuccess)
    throw_cuda_error(call, file, line, std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ")", shapes);
}

inline void check_cublas(cublasStatus_t s, const char* call, const char* file, int line,
                         const std::string& shapes = {}) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw_cuda_error(call, file, line, std::string(cublasLtGetStatusName(s)) + " (" + cublasLtGetStatusString(s) + ")",
                       shapes);
}

}  // namespace hysim::cuda

// The optional second argument is a string naming the shapes (see shape_str).
#define CUDA_CHECK(call, ...) ::hysim::cuda::check_cuda((call), #call, __FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define CUBLAS_CHECK(call, ...) \
  ::hysim::cuda::check_cublas((call), #call, __FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
// After a kernel launch: launch-configuration errors surface here (execution errors at the next sync).
#define CUDA_CHECK_LAUNCH(kernel_name, ...) \
  ::hysim::cuda::check_cuda(cudaGetLastError(), "launch of " kernel_name, __FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
