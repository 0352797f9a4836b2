// Dense projections on the CPU through Eigen. Weights use PyTorch's Linear layout
// W[out, in] (so imported checkpoints need no transposes); activations are row-major
// [N, features]. Eigen parallelises the GEMM itself with OpenMP (and runs serially when
// called from inside a parallel region).
#pragma once
#include <Eigen/Core>
#include <cstdint>

namespace hysim::cpu {

template <class T> using MatRM = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T> using MapRM = Eigen::Map<MatRM<T>>;
template <class T> using CMapRM = Eigen::Map<const MatRM<T>>;

// y[N, O] = x[N, I] W[O, I]^T  (accumulate = true: y += ...)
template <class T>
void linear_forward(T* y, const T* x, const T* W, int64_t N, int64_t I, int64_t O, bool accumulate = false) {
  MapRM<T> Y(y, N, O);
  CMapRM<T> X(x, N, I), Wm(W, O, I);
  if (accumulate) Y.noalias() += X * Wm.transpose();
  else Y.noalias() = X * Wm.transpose();
}

// dx[N, I] = dy W (overwritten; or += with accumulate_dx; skipped if dx == nullptr);
// dW[O, I] += dy^T x (parameter gradients always accumulate).
template <class T>
void linear_backward(T* dx, T* dW, const T* dy, const T* x, const T* W, int64_t N, int64_t I, int64_t O,
                     bool accumulate_dx = false) {
  CMapRM<T> dY(dy, N, O), X(x, N, I), Wm(W, O, I);
  if (dx) {
    MapRM<T> dX(dx, N, I);
    if (accumulate_dx) dX.noalias() += dY * Wm;
    else dX.noalias() = dY * Wm;
  }
  if (dW) {
    MapRM<T> dWm(dW, O, I);
    dWm.noalias() += dY.transpose() * X;
  }
}

}  // namespace hysim::cpu
