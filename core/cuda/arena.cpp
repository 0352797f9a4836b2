#include "core/cuda/arena.h"

#include <cuda_runtime.h>

#include <stdexcept>
#include <utility>

#include "core/cuda/check.h"

namespace hysim::cuda {

DeviceArena::DeviceArena(size_t capacity_bytes, std::string name) : capacity_(round_up(capacity_bytes)), name_(std::move(name)) {
  if (capacity_ > 0) CUDA_CHECK(cudaMalloc(&base_, capacity_), name_ + ": " + std::to_string(capacity_) + " bytes");
}

DeviceArena::~DeviceArena() {
  if (base_) cudaFree(base_);  // no throw from a destructor; a failure here has nothing left to protect
}

DeviceArena::DeviceArena(DeviceArena&& o) noexcept
    : base_(std::exchange(o.base_, nullptr)),
      capacity_(std::exchange(o.capacity_, 0)),
      used_(std::exchange(o.used_, 0)),
      peak_(std::exchange(o.peak_, 0)),
      name_(std::move(o.name_)) {}

DeviceArena& DeviceArena::operator=(DeviceArena&& o) noexcept {
  if (this != &o) {
    if (base_) cudaFree(base_);
    base_ = std::exchange(o.base_, nullptr);
    capacity_ = std::exchange(o.capacity_, 0);
    used_ = std::exchange(o.used_, 0);
    peak_ = std::exchange(o.peak_, 0);
    name_ = std::move(o.name_);
  }
  return *this;
}

void* DeviceArena::alloc_bytes(size_t bytes, const char* what) {
  const size_t need = round_up(bytes);
  if (used_ + need > capacity_)
    throw std::runtime_error("DeviceArena '" + name_ + "': cannot allocate " + std::to_string(bytes) + " bytes for '" +
                             what + "' (" + std::to_string(used_) + " of " + std::to_string(capacity_) +
                             " bytes in use)");
  void* p = base_ + used_;
  used_ += need;
  if (used_ > peak_) peak_ = used_;
  return p;
}

void DeviceArena::release(size_t mark) {
  if (mark > used_) throw std::logic_error("DeviceArena '" + name_ + "': release past the top of the arena");
  used_ = mark;
}

}  // namespace hysim::cuda
