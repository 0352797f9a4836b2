#include "layers/embedding.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace hysim {

template <class T> void embedding_forward(T* out, const int32_t* tokens, const T* wte, int64_t N, int64_t D, int64_t V) {
  // Check all tokens before the parallel loop: an exception must not leave an OpenMP region.
  for (int64_t n = 0; n < N; ++n)
    if (tokens[n] < 0 || tokens[n] >= V)
      throw std::out_of_range("embedding: token " + std::to_string(tokens[n]) + " at position " + std::to_string(n) +
                              " is outside the vocabulary [0, " + std::to_string(V) + ")");
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) std::copy(wte + int64_t(tokens[n]) * D, wte + int64_t(tokens[n] + 1) * D, out + n * D);
}

template <class T> void embedding_backward(T* dwte, const T* dout, const int32_t* tokens, int64_t N, int64_t D) {
  // Parallel over column blocks, serial over positions: two positions with the same token
  // never race, and every entry sums its contributions in position order.
  constexpr int64_t kCols = 64;
  const int64_t n_blocks = (D + kCols - 1) / kCols;
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < n_blocks; ++blk) {
    const int64_t c0 = blk * kCols, c1 = std::min(D, c0 + kCols);
    for (int64_t n = 0; n < N; ++n) {
      T* dst = dwte + int64_t(tokens[n]) * D;
      const T* src = dout + n * D;
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  }
}

#define INSTANTIATE(T)                                                                                  \
  template void embedding_forward<T>(T*, const int32_t*, const T*, int64_t, int64_t, int64_t);         \
  template void embedding_backward<T>(T*, const T*, const int32_t*, int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace hysim
