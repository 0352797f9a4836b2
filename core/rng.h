// Counter-based random numbers: every value is a pure function of (seed, stream,
// index), so results do not depend on thread count or on the order of evaluation.
#pragma once
#include <cmath>
#include <cstdint>
#include <string_view>

namespace hysim {

// SplitMix64 finaliser: a strong 64-bit mixing function.
inline uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// FNV-1a: names (parameter paths) to stream ids.
inline uint64_t hash_name(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) { h ^= c; h *= 0x100000001b3ull; }
  return h;
}

struct CounterRng {
  uint64_t key;
  CounterRng(uint64_t seed, uint64_t stream) : key(mix64(seed ^ mix64(stream))) {}
  uint64_t bits(uint64_t i) const { return mix64(key ^ mix64(i)); }
  // Uniform in (0, 1): never exactly 0 or 1.
  double uniform(uint64_t i) const { return (double(bits(i) >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
  // Standard normal by Box-Muller on two independent uniforms.
  double normal(uint64_t i) const {
    double u1 = uniform(2 * i), u2 = uniform(2 * i + 1);
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  uint64_t below(uint64_t i, uint64_t n) const { return bits(i) % n; }
};

}  // namespace hysim
