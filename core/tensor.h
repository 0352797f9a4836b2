// Tensor shapes, dtype tags and a minimal bf16 type.
//
// hysim keeps layer math on raw pointers with explicit shapes (llm.c style); a
// TensorView is just a pointer plus a shape, used where code is generic over tensors
// (checkpoints, arenas, printing). Layouts are row-major and contiguous.
#pragma once
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <numeric>
#include <string>
#include <vector>

namespace hysim {

using Shape = std::vector<int64_t>;

inline int64_t numel(const Shape& s) {
  return std::accumulate(s.begin(), s.end(), int64_t{1}, [](int64_t a, int64_t b) { return a * b; });
}

inline std::string shape_str(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// bfloat16: the upper 16 bits of an IEEE float; conversion rounds to nearest even.
struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  explicit bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) { bits = uint16_t((u >> 16) | 0x40); return; }  // NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    bits = uint16_t(u >> 16);
  }
  explicit operator float() const {
    uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

enum class DType { f32, f64, bf16 };
template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<bf16>() { return DType::bf16; }
inline const char* dtype_name(DType d) { return d == DType::f32 ? "f32" : d == DType::f64 ? "f64" : "bf16"; }

template <class T> struct TensorView {
  T* data = nullptr;
  Shape shape;
  int64_t size() const { return numel(shape); }
};

}  // namespace hysim
