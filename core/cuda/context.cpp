#include "core/cuda/context.h"

#include <cstdio>

#include "core/cuda/check.h"

namespace hysim::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error so later calls see a clean state
    return 0;
  }
  return n;
}

std::string device_summary(int device) {
  cudaDeviceProp p{};
  CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  char buf[512];
  std::snprintf(buf, sizeof buf, "%s, sm_%d%d, %d SMs, %.1f GiB", p.name, p.major, p.minor, p.multiProcessorCount,
                double(p.totalGlobalMem) / double(1ull << 30));
  return buf;
}

Context::Context(size_t scratch_bytes, int dev) : device(dev) {
  CUDA_CHECK(cudaSetDevice(device));
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  CUBLAS_CHECK(cublasLtCreate(&lt));
  CUDA_CHECK(cudaMalloc(&lt_workspace, kLtWorkspaceBytes));
  CUDA_CHECK(cudaMalloc(&status, sizeof(unsigned long long)));
  CUDA_CHECK(cudaMemset(status, 0xff, sizeof(unsigned long long)));
  scratch = DeviceArena(scratch_bytes, "scratch");
}

Context::~Context() {
  // Best effort: destructors must not throw.
  if (stream) cudaStreamSynchronize(stream);
  if (status) cudaFree(status);
  if (lt_workspace) cudaFree(lt_workspace);
  if (lt) cublasLtDestroy(lt);
  if (stream) cudaStreamDestroy(stream);
}

void Context::sync() { CUDA_CHECK(cudaStreamSynchronize(stream)); }

}  // namespace hysim::cuda
