// DeviceArena: one cudaMalloc sized up front, handed out by bump allocation. The memory
// plan computes the size once; nothing is allocated or freed on the device while
// training runs. mark()/release() give stack-like scratch scopes (a layer's backward
// takes its temporaries and gives them back before returning).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace hysim::cuda {

class DeviceArena {
 public:
  static constexpr size_t kAlign = 256;  // cuBLASLt's preferred operand alignment; also 16 B vector loads

  DeviceArena() = default;
  explicit DeviceArena(size_t capacity_bytes, std::string name = "arena");
  ~DeviceArena();
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;
  DeviceArena(DeviceArena&& o) noexcept;
  DeviceArena& operator=(DeviceArena&& o) noexcept;

  // n elements of T, kAlign-aligned. Throws std::runtime_error naming the arena, `what`
  // and the sizes when it does not fit.
  template <class T> T* alloc(int64_t n, const char* what = "") {
    return static_cast<T*>(alloc_bytes(size_t(n) * sizeof(T), what));
  }
  void* alloc_bytes(size_t bytes, const char* what = "");

  size_t mark() const { return used_; }
  void release(size_t mark);  // free everything allocated after mark()
  void reset() { used_ = 0; }

  size_t capacity() const { return capacity_; }
  size_t used() const { return used_; }
  size_t peak() const { return peak_; }
  char* base() const { return base_; }

  static size_t round_up(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

 private:
  char* base_ = nullptr;
  size_t capacity_ = 0, used_ = 0, peak_ = 0;
  std::string name_;
};

// Releases the arena back to its mark when the scope ends.
class ArenaScope {
 public:
  explicit ArenaScope(DeviceArena& a) : arena_(a), mark_(a.mark()) {}
  ~ArenaScope() { arena_.release(mark_); }
  ArenaScope(const ArenaScope&) = delete;
  ArenaScope& operator=(const ArenaScope&) = delete;

 private:
  DeviceArena& arena_;
  size_t mark_;
};

}  // namespace hysim::cuda
