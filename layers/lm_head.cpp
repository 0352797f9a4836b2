#include "layers/lm_head.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/cpu/gemm.h"

namespace hysim {

template <class T>
LmHeadStats lm_head_loss(T* dx, T* dW, const T* x, const T* W, const int32_t* targets, const float* loss_mask,
                         int64_t N, int64_t D, int64_t V, double z_loss, int64_t chunk_rows, bool compute_grad) {
  // The mean needs sum m_i before the first chunk's gradients; targets are checked here
  // too, outside any parallel region.
  LmHeadStats st;
  for (int64_t n = 0; n < N; ++n) {
    const double m = loss_mask ? double(loss_mask[n]) : 1.0;
    if (m == 0) continue;
    if (targets[n] < 0 || targets[n] >= V)
      throw std::out_of_range("lm_head: target " + std::to_string(targets[n]) + " at position " + std::to_string(n) +
                              " is outside the vocabulary [0, " + std::to_string(V) + ")");
    st.weight_sum += m;
  }
  if (st.weight_sum == 0) {
    if (compute_grad && dx) std::fill(dx, dx + N * D, T(0));
    return st;
  }
  const double inv_w = 1.0 / st.weight_sum;
  const int64_t R = chunk_rows > 0 ? std::min(chunk_rows, N) : N;
  std::vector<T> logits(R * V);                  // logits, then exp(l - max), then dJ/dlogits
  std::vector<double> row_ce(R), row_z(R);       // per-row weighted terms, summed in row order
  std::vector<char> row_correct(R);
  double sum_ce = 0, sum_z = 0;

  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rows = std::min(R, N - r0);
    const T* xc = x + r0 * D;
    cpu::linear_forward(logits.data(), xc, W, rows, D, V);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t n = r0 + i;
      const double m = loss_mask ? double(loss_mask[n]) : 1.0;
      T* l = logits.data() + i * V;
      row_ce[i] = row_z[i] = 0;
      row_correct[i] = 0;
      if (m == 0) {
        if (compute_grad) std::fill(l, l + V, T(0));
        continue;
      }
      const int64_t t = targets[n];
      T mx = l[0];
      int64_t argmax = 0;
      for (int64_t j = 1; j < V; ++j)
        if (l[j] > mx) mx = l[j], argmax = j;
      const double l_target = double(l[t]);
      double s = 0;  // the sum of exponentials in double: cheap, and lse is what the loss reports
      for (int64_t j = 0; j < V; ++j) {
        const T e = std::exp(l[j] - mx);
        l[j] = e;
        s += double(e);
      }
      const double lse = double(mx) + std::log(s);
      row_ce[i] = m * (lse - l_target);
      row_z[i] = m * z_loss * lse * lse;
      row_correct[i] = argmax == t;
      if (compute_grad) {
        // d/dl_j of m/W (lse - l_t + z lse^2) = m/W ((1 + 2 z lse) p_j - [j == t]), p_j = e_j / s
        const double scale = m * inv_w;
        const T a = T(scale * (1.0 + 2.0 * z_loss * lse) / s);
        for (int64_t j = 0; j < V; ++j) l[j] *= a;
        l[t] -= T(scale);
      }
    }
    for (int64_t i = 0; i < rows; ++i) {
      sum_ce += row_ce[i];
      sum_z += row_z[i];
      st.n_correct += row_correct[i];
    }
    // dx_chunk = dlogits W (overwrite), dW += dlogits^T x_chunk.
    if (compute_grad) cpu::linear_backward(dx ? dx + r0 * D : nullptr, dW, logits.data(), xc, W, rows, D, V);
  }
  st.loss = sum_ce * inv_w;
  st.z_loss_term = sum_z * inv_w;
  return st;
}

template <class T> void lm_head_logits(T* logits, const T* x, const T* W, int64_t N, int64_t D, int64_t V) {
  cpu::linear_forward(logits, x, W, N, D, V);
}

#define INSTANTIATE(T)                                                                                           \
  template LmHeadStats lm_head_loss<T>(T*, T*, const T*, const T*, const int32_t*, const float*, int64_t, int64_t, \
                                       int64_t, double, int64_t, bool);                                          \
  template void lm_head_logits<T>(T*, const T*, const T*, int64_t, int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace hysim
